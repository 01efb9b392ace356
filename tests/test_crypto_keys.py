"""IKEv1 keying (gdoiserver.crypto.keys, RFC 2409 section 5 and appendix B) against values computed here.

Every expected value is computed inside the test with Python's hmac/hashlib, step by step as the RFC writes
it, or is a hex literal produced outside Python by the openssl command line (see the comment at each).
"""

import hashlib
import hmac

import attrs
from twisted.trial import unittest

from gdoiserver.codec.constants import OakleyHash
from gdoiserver.crypto import keys
from gdoiserver.crypto.prf import hash_algorithm

SHA1 = hash_algorithm(OakleyHash.SHA)
SHA256 = hash_algorithm(OakleyHash.SHA2_256)
MD5 = hash_algorithm(OakleyHash.MD5)

PSK = b"gdoiserver test psk"
NI_B = bytes(range(0x10, 0x24))  # 20-octet initiator nonce body
NR_B = bytes(range(0x40, 0x60))  # 32-octet responder nonce body
CKY_I = bytes.fromhex("0102030405060708")
CKY_R = bytes.fromhex("a1a2a3a4a5a6a7a8")
G_XY = bytes(range(256))  # stands for a 2048-bit g^xy
G_XI = b"\x5a" * 256
G_XR = b"\xa5" * 256
SAI_B = bytes.fromhex("00000001 00000001 00000020 01010001".replace(" ", ""))
IDII_B = bytes.fromhex("01000000c0000201")  # ID_IPV4_ADDR 192.0.2.1
IDIR_B = bytes.fromhex("01000000c0000202")  # ID_IPV4_ADDR 192.0.2.2


def mac(name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, name).digest()


class SkeyidTests(unittest.TestCase):
    """SKEYID for the two authentication methods (RFC 2409 section 5)."""

    def test_preshared_key(self):
        """SKEYID = prf(pre-shared-key, Ni_b | Nr_b) with HMAC-SHA-1 and HMAC-SHA-256."""
        self.assertEqual(keys.skeyid_preshared(SHA1, PSK, NI_B, NR_B), mac("sha1", PSK, NI_B + NR_B))
        self.assertEqual(keys.skeyid_preshared(SHA256, PSK, NI_B, NR_B), mac("sha256", PSK, NI_B + NR_B))

    def test_signature(self):
        """SKEYID = prf(Ni_b | Nr_b, g^xy): the nonces are the key, g^xy the data."""
        self.assertEqual(keys.skeyid_signature(SHA1, NI_B, NR_B, G_XY), mac("sha1", NI_B + NR_B, G_XY))
        self.assertNotEqual(keys.skeyid_signature(SHA1, NI_B, NR_B, G_XY), mac("sha1", G_XY, NI_B + NR_B))

    def test_openssl_vector(self):
        """SHA-1 SKEYID, SKEYID_d/a/e and an AES-256 key equal values computed with the openssl CLI.

        Produced by a shell script: each step `printf HEX | xxd -r -p | openssl dgst -sha1 -mac HMAC -macopt
        hexkey:KEY -r`, with the inputs of this module (PSK "gdoiserver test psk", NI_B, NR_B, G_XY, CKY_I,
        CKY_R); Ka = K1 | K2 with K1 = prf(SKEYID_e, 00), K2 = prf(SKEYID_e, K1), first 32 octets.
        """
        skeyid = keys.skeyid_preshared(SHA1, PSK, NI_B, NR_B)
        k = keys.derive_phase1_keys(SHA1, skeyid, G_XY, CKY_I, CKY_R, G_XI, G_XR, key_length=32, block_size=16)
        self.assertEqual(k.skeyid.hex(), "08cae88b79ef3a646fdf2d16fa7684125a33d5a5")
        self.assertEqual(k.skeyid_d.hex(), "c1fe99e5e64ae6d01c2bda6058e2a5da0701fa90")
        self.assertEqual(k.skeyid_a.hex(), "8c8ab625211174356885c7c9609f9bfdb0882965")
        self.assertEqual(k.skeyid_e.hex(), "6109ad3e4bb277d401fcf872611ea4737d915127")
        self.assertEqual(k.enc_key.hex(), "6c23238789df51f6d4df6266986b0a4269fefb100986eac51f2e6331663aaf00")


class Phase1KeyTests(unittest.TestCase):
    """SKEYID_d/a/e, the cipher key with appendix B expansion, and the first IV."""

    def test_sha1_aes256_needs_expansion(self):
        """SHA-1 (20 octets) and AES-256 (32): every value step by step, the key as K1 | K2 truncated."""
        skeyid = mac("sha1", PSK, NI_B + NR_B)
        d = mac("sha1", skeyid, G_XY + CKY_I + CKY_R + b"\x00")
        a = mac("sha1", skeyid, d + G_XY + CKY_I + CKY_R + b"\x01")
        e = mac("sha1", skeyid, a + G_XY + CKY_I + CKY_R + b"\x02")
        k1 = mac("sha1", e, b"\x00")
        k2 = mac("sha1", e, k1)
        iv = hashlib.sha1(G_XI + G_XR).digest()[:16]

        k = keys.derive_phase1_keys(SHA1, skeyid, G_XY, CKY_I, CKY_R, G_XI, G_XR, key_length=32, block_size=16)
        self.assertEqual((k.skeyid, k.skeyid_d, k.skeyid_a, k.skeyid_e), (skeyid, d, a, e))
        self.assertEqual(k.enc_key, (k1 + k2)[:32])
        self.assertEqual(k.iv, iv)

    def test_md5_3des_needs_expansion(self):
        """MD5 (16 octets) and 3DES (24 octets, 8-octet blocks): key K1 | K2 truncated to 24, IV 8 octets."""
        skeyid = mac("md5", PSK, NI_B + NR_B)
        d = mac("md5", skeyid, G_XY + CKY_I + CKY_R + b"\x00")
        a = mac("md5", skeyid, d + G_XY + CKY_I + CKY_R + b"\x01")
        e = mac("md5", skeyid, a + G_XY + CKY_I + CKY_R + b"\x02")
        k1 = mac("md5", e, b"\x00")
        k2 = mac("md5", e, k1)

        k = keys.derive_phase1_keys(MD5, skeyid, G_XY, CKY_I, CKY_R, G_XI, G_XR, key_length=24, block_size=8)
        self.assertEqual(k.enc_key, (k1 + k2)[:24])
        self.assertEqual(k.iv, hashlib.md5(G_XI + G_XR).digest()[:8])

    def test_sha256_no_expansion(self):
        """SHA-256 with AES-128 and AES-256: SKEYID_e is long enough, so the key is its first octets."""
        skeyid = mac("sha256", NI_B + NR_B, G_XY)
        d = mac("sha256", skeyid, G_XY + CKY_I + CKY_R + b"\x00")
        a = mac("sha256", skeyid, d + G_XY + CKY_I + CKY_R + b"\x01")
        e = mac("sha256", skeyid, a + G_XY + CKY_I + CKY_R + b"\x02")
        for length in (16, 32):
            k = keys.derive_phase1_keys(SHA256, skeyid, G_XY, CKY_I, CKY_R, G_XI, G_XR, length, 16)
            self.assertEqual(k.skeyid_e, e)
            self.assertEqual(k.enc_key, e[:length])
            self.assertEqual(k.iv, hashlib.sha256(G_XI + G_XR).digest()[:16])

    def test_expand_key_three_blocks(self):
        """expand_key to 50 octets from a 20-octet SKEYID_e chains K1 = prf(e, 0), K2 = prf(e, K1), K3."""
        e = bytes(range(20))
        k1 = mac("sha1", e, b"\x00")
        k2 = mac("sha1", e, k1)
        k3 = mac("sha1", e, k2)
        self.assertEqual(keys.expand_key(SHA1, e, 50), (k1 + k2 + k3)[:50])
        self.assertEqual(keys.expand_key(SHA1, e, 20), e)
        self.assertEqual(keys.expand_key(SHA1, e, 21), k1 + k2[:1])

    def test_argument_checks(self):
        """Cookies other than 8 octets, a block larger than the hash and a zero key length are ValueErrors."""
        args = dict(skeyid=b"k" * 20, g_xy=G_XY, g_xi=G_XI, g_xr=G_XR, key_length=16, block_size=16)
        self.assertRaises(ValueError, keys.derive_phase1_keys, SHA1, cky_i=CKY_I[:7], cky_r=CKY_R, **args)
        self.assertRaises(ValueError, keys.derive_phase1_keys, SHA1, cky_i=CKY_I, cky_r=CKY_R + b"\0", **args)
        self.assertRaises(ValueError, keys.phase1_iv, MD5, G_XI, G_XR, 32)
        self.assertRaises(ValueError, keys.phase1_iv, SHA1, G_XI, G_XR, 0)
        self.assertRaises(ValueError, keys.expand_key, SHA1, b"e" * 20, 0)
        self.assertRaises(ValueError, keys.keymat, SHA1, b"d" * 20, 3, b"1234", NI_B, NR_B, 0)


class Phase1KeysReprTests(unittest.TestCase):
    """Phase1Keys never shows key bytes."""

    def test_repr_shows_no_key_material(self):
        """repr and str hold no field's bytes, in hex or as a bytes literal; every field has repr=False."""
        k = keys.derive_phase1_keys(SHA1, b"\x99" * 20, G_XY, CKY_I, CKY_R, G_XI, G_XR, 32, 16)
        for text in (repr(k), str(k)):
            self.assertIn("Phase1Keys", text)
            for value in attrs.astuple(k):
                self.assertNotIn(value.hex(), text)
                self.assertNotIn(repr(value)[2:12], text)
        self.assertEqual([f.name for f in attrs.fields(keys.Phase1Keys) if f.repr], [])

    def test_frozen(self):
        """Fields cannot be reassigned after derivation."""
        k = keys.derive_phase1_keys(SHA1, b"\x99" * 20, G_XY, CKY_I, CKY_R, G_XI, G_XR, 32, 16)
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, k, "enc_key", b"")


class AuthHashTests(unittest.TestCase):
    """HASH_I and HASH_R (RFC 2409 section 5)."""

    def test_hash_i_and_hash_r(self):
        """HASH_I = prf(SKEYID, g^xi|g^xr|CKY-I|CKY-R|SAi_b|IDii_b); HASH_R swaps g^x and cookies, uses IDir_b."""
        skeyid = mac("sha1", PSK, NI_B + NR_B)
        expected_i = mac("sha1", skeyid, G_XI + G_XR + CKY_I + CKY_R + SAI_B + IDII_B)
        expected_r = mac("sha1", skeyid, G_XR + G_XI + CKY_R + CKY_I + SAI_B + IDIR_B)
        self.assertEqual(keys.hash_i(SHA1, skeyid, G_XI, G_XR, CKY_I, CKY_R, SAI_B, IDII_B), expected_i)
        self.assertEqual(keys.hash_r(SHA1, skeyid, G_XI, G_XR, CKY_I, CKY_R, SAI_B, IDIR_B), expected_r)
        # With the same ID the two still differ: the order of the fields matters.
        self.assertNotEqual(
            keys.hash_i(SHA1, skeyid, G_XI, G_XR, CKY_I, CKY_R, SAI_B, IDII_B),
            keys.hash_r(SHA1, skeyid, G_XI, G_XR, CKY_I, CKY_R, SAI_B, IDII_B),
        )


class KeymatTests(unittest.TestCase):
    """Quick Mode KEYMAT (RFC 2409 section 5.5)."""

    SKEYID_D = bytes.fromhex("c1fe99e5e64ae6d01c2bda6058e2a5da0701fa90")
    SPI = bytes.fromhex("12345678")

    def test_without_pfs_one_block(self):
        """KEYMAT of 16 octets = prf(SKEYID_d, protocol | SPI | Ni_b | Nr_b) truncated."""
        expected = mac("sha1", self.SKEYID_D, b"\x03" + self.SPI + NI_B + NR_B)[:16]
        self.assertEqual(keys.keymat(SHA1, self.SKEYID_D, 3, self.SPI, NI_B, NR_B, 16), expected)

    def test_without_pfs_expanded(self):
        """64 octets from SHA-1: K1 | K2 | K3 | K4 truncated, K(n+1) = prf(SKEYID_d, Kn | protocol | SPI | Ni | Nr)."""
        seed = b"\x03" + self.SPI + NI_B + NR_B
        blocks = [mac("sha1", self.SKEYID_D, seed)]
        for _ in range(3):
            blocks.append(mac("sha1", self.SKEYID_D, blocks[-1] + seed))
        expected = b"".join(blocks)[:64]
        self.assertEqual(keys.keymat(SHA1, self.SKEYID_D, 3, self.SPI, NI_B, NR_B, 64), expected)

    def test_with_pfs(self):
        """With PFS, g(qm)^xy comes first in every block's input: K1 = prf(d, gqm | p | SPI | Ni | Nr)."""
        g_qm = b"\x77" * 256
        seed = g_qm + b"\x02" + self.SPI + NI_B + NR_B
        k1 = mac("sha1", self.SKEYID_D, seed)
        k2 = mac("sha1", self.SKEYID_D, k1 + seed)
        got = keys.keymat(SHA1, self.SKEYID_D, 2, self.SPI, NI_B, NR_B, 36, g_qm_xy=g_qm)
        self.assertEqual(got, (k1 + k2)[:36])
        self.assertNotEqual(got, keys.keymat(SHA1, self.SKEYID_D, 2, self.SPI, NI_B, NR_B, 36))

    def test_openssl_vector(self):
        """40 octets of KEYMAT for ESP (3), SPI 12345678, equal the value computed with the openssl CLI.

        Produced like SkeyidTests.test_openssl_vector's values, from SKEYID_d = c1fe99e5...: K1 = HMAC-SHA-1
        over 03 12345678 | NI_B | NR_B, K2 over K1 | the same, first 40 octets of K1 | K2.
        """
        self.assertEqual(
            keys.keymat(SHA1, self.SKEYID_D, 3, self.SPI, NI_B, NR_B, 40).hex(),
            "173bc6e4bba21de19226d034756cd6b8c8642eca1ae60e2e64313274ac4cd4288cbba799e1c416ec",
        )
