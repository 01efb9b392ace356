"""Tests for gdoiserver.codec.cipher: IKEv1 CBC encryption, padding and the chained IV (RFC 2409 appendix B)."""

import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.codec.cipher import (
    CIPHERS,
    IVChain,
    TripleDES,
    UnsupportedCipher,
    cipher_for,
    decrypt_message,
    encrypt_message,
    pad,
    phase1_iv,
    phase2_iv,
)
from gdoiserver.codec.constants import (
    DOI,
    ExchangeType,
    Flags,
    IDType,
    NotifyType,
    OakleyEncryption,
    OakleyHash,
    PayloadType,
    ProtocolID,
)
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.message import HEADER_SIZE, Message, decode_message
from gdoiserver.codec.payloads import Hash, Identification, Nonce, Notification
from gdoiserver.crypto.errors import UnsupportedHash

AES128 = cipher_for(OakleyEncryption.AES_CBC, 128)
AES192 = cipher_for(OakleyEncryption.AES_CBC, 192)
AES256 = cipher_for(OakleyEncryption.AES_CBC, 256)
TDES = cipher_for(OakleyEncryption.TRIPLEDES_CBC)

ICOOKIE = bytes.fromhex("0123456789abcdef")
RCOOKIE = bytes.fromhex("fedcba9876543210")

# RFC 3602 section 4, case #1: an AES-128 key and IV, reused below wherever a fixed key is enough.
RFC3602_KEY1 = bytes.fromhex("06a9214036b8a15b512e03d534120006")
RFC3602_IV1 = bytes.fromhex("3dafba429d9eb430b422da802c9fac41")


def reference_cbc(algorithm, key: bytes, iv: bytes, data: bytes) -> bytes:
    """CBC-encrypt with the cryptography package directly: the oracle the module under test is checked against."""
    e = Cipher(algorithm(key), modes.CBC(iv)).encryptor()
    return e.update(data) + e.finalize()


def reference_cbc_decrypt(algorithm, key: bytes, iv: bytes, data: bytes) -> bytes:
    d = Cipher(algorithm(key), modes.CBC(iv)).decryptor()
    return d.update(data) + d.finalize()


def zero_padded(body: bytes, block_size: int) -> bytes:
    """The padding rule written out by hand: 0x00 octets up to the next multiple of the block size."""
    return body + b"\x00" * ((block_size - len(body) % block_size) % block_size)


class CipherTableTests(SynchronousTestCase):
    """The table of Oakley encryption algorithms and key lengths."""

    def test_aes_key_lengths(self):
        """AES-CBC (Oakley 7) comes with 128, 192 and 256-bit keys and 16-octet blocks (RFC 3602)."""
        for bits, spec in ((128, AES128), (192, AES192), (256, AES256)):
            self.assertEqual(spec.encryption_algorithm, OakleyEncryption.AES_CBC)
            self.assertEqual(spec.key_size, bits // 8)
            self.assertEqual(spec.block_size, 16)
        self.assertEqual(len(CIPHERS), 4)

    def test_3des_fixed_key_length(self):
        """3DES-CBC (Oakley 5) has a 24-octet key and 8-octet blocks, with or without a Key Length of 192."""
        self.assertEqual((TDES.key_size, TDES.block_size), (24, 8))
        self.assertIs(cipher_for(OakleyEncryption.TRIPLEDES_CBC, 192), TDES)

    def test_des_is_refused(self):
        """Single DES (Oakley 1) raises UnsupportedCipher naming DES."""
        e = self.assertRaises(UnsupportedCipher, cipher_for, OakleyEncryption.DES_CBC)
        self.assertIn("DES-CBC", str(e))
        self.assertIsInstance(e, ValueError)

    def test_aes_needs_key_length(self):
        """AES-CBC without a Key Length attribute is refused (RFC 3602 section 5.3 makes it mandatory)."""
        e = self.assertRaises(UnsupportedCipher, cipher_for, OakleyEncryption.AES_CBC)
        self.assertIn("Key Length", str(e))

    def test_unknown_combinations(self):
        """Unknown algorithms and key lengths that do not fit the algorithm are refused."""
        for algo, bits in (
            (OakleyEncryption.AES_CBC, 512),
            (OakleyEncryption.AES_CBC, 64),
            (OakleyEncryption.TRIPLEDES_CBC, 128),
            (OakleyEncryption.IDEA_CBC, None),
            (OakleyEncryption.CAST_CBC, 128),
            (99, 128),
        ):
            self.assertRaises(UnsupportedCipher, cipher_for, algo, bits)

    def test_wrong_key_or_iv_size(self):
        """A key or IV of the wrong size is a caller's error (ValueError), for encryption and decryption."""
        self.assertRaises(ValueError, AES128.encrypt, bytes(15), bytes(16), bytes(16))
        self.assertRaises(ValueError, AES128.encrypt, bytes(16), bytes(8), bytes(16))
        self.assertRaises(ValueError, TDES.decrypt, bytes(24), bytes(16), bytes(8))

    def test_encrypt_needs_whole_blocks(self):
        """The raw cipher encrypts whole blocks only; padding is the message layer's job."""
        self.assertRaises(ValueError, AES128.encrypt, RFC3602_KEY1, RFC3602_IV1, bytes(17))


class KnownAnswerTests(SynchronousTestCase):
    """The raw CBC ciphers against published vectors."""

    def check(self, spec, key, iv, plaintext, ciphertext):
        self.assertEqual(spec.encrypt(key, iv, plaintext), ciphertext)
        self.assertEqual(spec.decrypt(key, iv, ciphertext), plaintext)

    def test_rfc3602_case1(self):
        """RFC 3602 section 4 case #1: one block, AES-128-CBC."""
        self.check(
            AES128,
            RFC3602_KEY1,
            RFC3602_IV1,
            b"Single block msg",
            bytes.fromhex("e353779c1079aeb82708942dbe77181a"),
        )

    def test_rfc3602_case2(self):
        """RFC 3602 section 4 case #2: two blocks, AES-128-CBC."""
        self.check(
            AES128,
            bytes.fromhex("c286696d887c9aa0611bbb3e2025a45a"),
            bytes.fromhex("562e17996d093d28ddb3ba695a2e6f58"),
            bytes(range(32)),
            bytes.fromhex("d296cd94c2cccf8a3a863028b5e1dc0a" "7586602d253cfff91b8266bea6d61ab1"),
        )

    def test_rfc3602_case3(self):
        """RFC 3602 section 4 case #3: three blocks of ASCII, AES-128-CBC."""
        self.check(
            AES128,
            bytes.fromhex("6c3ea0477630ce21a2ce334aa746c2cd"),
            bytes.fromhex("c782dc4c098c66cbd9cd27d825682c81"),
            b"This is a 48-byte message (exactly 3 AES blocks)",
            bytes.fromhex(
                "d0a02b3836451753d493665d33f0e886" "2dea54cdb293abc7506939276772f8d5" "021c19216bad525c8579695d83ba2684"
            ),
        )

    def test_rfc3602_case4(self):
        """RFC 3602 section 4 case #4: four blocks (octets 0xa0..0xdf), AES-128-CBC."""
        self.check(
            AES128,
            bytes.fromhex("56e47a38c5598974bc46903dba290349"),
            bytes.fromhex("8ce82eefbea0da3c44699ed7db51b7d9"),
            bytes(range(0xA0, 0xE0)),
            bytes.fromhex(
                "c30e32ffedc0774e6aff6af0869f71aa"
                "0f3af07a9a31a9c684db207eb0ef8e4e"
                "35907aa632c3ffdf868bb7b29d3d46ad"
                "83ce9f9a102ee99d49a53e87f4c3da55"
            ),
        )

    def test_nist_aes192_aes256(self):
        """NIST SP 800-38A F.2.3 and F.2.5 (first two blocks): AES-192-CBC and AES-256-CBC, which RFC 3602 lacks."""
        iv = bytes(range(16))
        plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51")
        self.check(
            AES192,
            bytes.fromhex("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"),
            iv,
            plaintext,
            bytes.fromhex("4f021db243bc633d7178183a9fa071e8" "b4d9ada9ad7dedf4e5e738763f69145a"),
        )
        self.check(
            AES256,
            bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"),
            iv,
            plaintext,
            bytes.fromhex("f58c4c04d6e5f1ba779eabfb5f7bfbd6" "9cfc4e967edb808d679f777bc6702c7d"),
        )

    def test_3des_cbc(self):
        """3DES-CBC with three distinct keys: OpenSSL's evptests vector ("7654321 Now is the time for ")."""
        self.check(
            TDES,
            bytes.fromhex("0123456789abcdeff1e0d3c2b5a49786fedcba9876543210"),
            bytes.fromhex("fedcba9876543210"),
            bytes.fromhex("37363534333231204e6f77206973207468652074696d6520666f722000000000"),
            bytes.fromhex("3fe301c962ac01d02213763c1cbd4cdc799657c064ecf5d41c673812cfde9675"),
        )


class IVDerivationTests(SynchronousTestCase):
    """Phase 1 and Phase 2 IVs (RFC 2409 appendix B), against values computed without this module."""

    def test_phase1_iv_published_digests(self):
        """Phase 1 IV = hash(g^xi | g^xr) truncated to the block size.

        With g^xi = b"ab" and g^xr = b"c" the hash input is b"abc", whose digests are published: FIPS 180-2
        appendix A/B/C/D (SHA-1 a9993e36..., SHA-256 ba7816bf..., SHA-384 cb00753f..., SHA-512 ddaf35a1...) and
        RFC 1321 appendix A.5 (MD5 900150983cd24fb0...).  The expected IVs are their first 16 octets (AES) or
        first 8 (3DES), copied from those documents, not computed here.
        """
        cases = (
            (OakleyHash.MD5, 16, "900150983cd24fb0d6963f7d28e17f72"),
            (OakleyHash.SHA, 16, "a9993e364706816aba3e25717850c26c"),
            (OakleyHash.SHA, 8, "a9993e364706816a"),
            (OakleyHash.SHA2_256, 16, "ba7816bf8f01cfea414140de5dae2223"),
            (OakleyHash.SHA2_256, 8, "ba7816bf8f01cfea"),
            (OakleyHash.SHA2_384, 16, "cb00753f45a35e8bb5a03d699ac65007"),
            (OakleyHash.SHA2_512, 16, "ddaf35a193617abacc417349ae204131"),
        )
        for hash_algorithm, block_size, expected in cases:
            self.assertEqual(phase1_iv(hash_algorithm, b"ab", b"c", block_size).hex(), expected)

    def test_phase1_chain_starts_from_phase1_iv(self):
        """IVChain.phase1 holds the hash(g^xi | g^xr) IV: SHA-256("abc") cut to 16 octets for AES."""
        chain = IVChain.phase1(AES256, bytes(32), OakleyHash.SHA2_256, b"ab", b"c")
        self.assertEqual(chain.iv.hex(), "ba7816bf8f01cfea414140de5dae2223")

    def test_phase2_iv_sha256_aes(self):
        """Phase 2 IV = hash(last Phase 1 CBC output block | M-ID) truncated.

        Inputs: last block e353779c1079aeb82708942dbe77181a (RFC 3602 case #1 ciphertext), M-ID 0xdeadbeef in
        network order.  Expected, computed outside the module with
        hashlib.sha256(bytes.fromhex("e353779c1079aeb82708942dbe77181a" "deadbeef")).hexdigest()
        = 1678963a990b978db7281c3724dcc11beb78322a417e649c3c4a4ea52dc11f97, first 16 octets.
        """
        last = bytes.fromhex("e353779c1079aeb82708942dbe77181a")
        self.assertEqual(
            phase2_iv(OakleyHash.SHA2_256, last, 0xDEADBEEF, 16).hex(), "1678963a990b978db7281c3724dcc11b"
        )
        chain = IVChain(AES128, RFC3602_KEY1, OakleyHash.SHA2_256, last).for_message_id(0xDEADBEEF)
        self.assertEqual(chain.iv.hex(), "1678963a990b978db7281c3724dcc11b")

    def test_phase2_iv_sha1_3des(self):
        """Phase 2 IV with SHA-1 and 3DES's 8-octet block.

        Inputs: last block 3fe301c962ac01d0 (first block of the 3DES vector above), M-ID 1 written as 00000001.
        Expected from hashlib.sha1(bytes.fromhex("3fe301c962ac01d0" "00000001")).hexdigest()
        = eedd3c6b43f1ab5a57fed9e185649b485db24e37, first 8 octets.
        """
        last = bytes.fromhex("3fe301c962ac01d0")
        self.assertEqual(phase2_iv(OakleyHash.SHA, last, 1, 8).hex(), "eedd3c6b43f1ab5a")

    def test_unsupported_hash(self):
        """Tiger (Oakley hash 3) and unknown hashes raise UnsupportedHash, also when a chain is built."""
        self.assertRaises(UnsupportedHash, phase1_iv, OakleyHash.TIGER, b"a", b"b", 16)
        self.assertRaises(UnsupportedHash, phase2_iv, 77, bytes(16), 1, 16)
        self.assertRaises(UnsupportedHash, IVChain, AES128, RFC3602_KEY1, OakleyHash.TIGER, bytes(16))

    def test_message_id_zero_is_phase1(self):
        """for_message_id refuses M-ID 0 (Phase 1's) and values beyond 32 bits."""
        chain = IVChain(AES128, RFC3602_KEY1, OakleyHash.SHA, bytes(16))
        self.assertRaises(ValueError, chain.for_message_id, 0)
        self.assertRaises(ValueError, chain.for_message_id, 1 << 32)

    def test_chain_checks_sizes(self):
        """An IVChain with a key or IV of the wrong size is refused at construction."""
        self.assertRaises(ValueError, IVChain, AES256, RFC3602_KEY1, OakleyHash.SHA, bytes(16))
        self.assertRaises(ValueError, IVChain, TDES, bytes(24), OakleyHash.SHA, bytes(16))

    def test_chain_repr_hides_key(self):
        """The repr of a chain (which may reach a log) does not show the key."""
        key = bytes.fromhex("00112233445566778899aabbccddeeff")
        text = repr(IVChain(AES128, key, OakleyHash.SHA, bytes(16)))
        self.assertNotIn(repr(key), text)
        self.assertNotIn("key=", text)


class MessageEncryptionTests(SynchronousTestCase):
    """encrypt_message and decrypt_message on whole ISAKMP messages."""

    def dpd_message(self, **kw):
        # An Informational exchange carrying HASH(1) and an R-U-THERE (RFC 3706) notification.
        return Message(
            ICOOKIE,
            RCOOKIE,
            ExchangeType.INFORMATIONAL,
            message_id=0x01020304,
            payloads=(
                Hash(b"\xaa" * 20),
                Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE, ICOOKIE + RCOOKIE, b"\0\0\0\1"),
            ),
            **kw,
        )

    def test_golden_message(self):
        """An encrypted Informational message: header, padded plaintext and ciphertext, octet by octet."""
        plaintext = bytes.fromhex(
            # Hash payload: next payload 11 (N), RESERVED, length 24, 20 octets of hash data
            "0b000018" + "aa" * 20
            # Notification payload: next payload 0, RESERVED, length 32
            + "00000020"
            # DOI 1 (IPsec), protocol 1 (ISAKMP), SPI size 16, type 36136 (R-U-THERE)
            + "00000001" + "01" + "10" + "8d28"
            # SPI: the two cookies, then notification data: sequence number 1
            + "0123456789abcdef" + "fedcba9876543210" + "00000001"
            # 56 octets so far: 8 octets of 0x00 reach 64, a multiple of AES's 16 (RFC 2409 appendix B)
            + "0000000000000000"
        )
        self.assertEqual(len(plaintext), 64)
        header = bytes.fromhex(
            "0123456789abcdef"  # initiator cookie
            "fedcba9876543210"  # responder cookie
            "08"  # next payload: 8 (HASH)
            "10"  # version 1.0
            "05"  # exchange type 5 (Informational)
            "01"  # flags: Encryption
            "01020304"  # message ID
            "0000005c"  # length: 28 + 64 = 92
        )
        ciphertext = reference_cbc(algorithms.AES, RFC3602_KEY1, RFC3602_IV1, plaintext)
        wire, next_iv = encrypt_message(self.dpd_message(), RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertEqual(wire, header + ciphertext)
        self.assertEqual(next_iv, ciphertext[-16:])
        decrypted, iv2 = decrypt_message(decode_message(wire), RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertEqual(decrypted.payloads, self.dpd_message().payloads)
        self.assertEqual(decrypted.padding, bytes(8))
        self.assertEqual(iv2, next_iv)

    def test_other_flags_kept(self):
        """The Encryption flag is added to whatever flags the message had (here Commit)."""
        wire, _ = encrypt_message(self.dpd_message(flags=Flags.COMMIT), RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertEqual(wire[19], Flags.COMMIT | Flags.ENCRYPTION)
        self.assertTrue(decode_message(wire).encrypted)

    def test_refuses_wrong_states(self):
        """No payloads is an EncodeError; encrypting ciphertext or decrypting cleartext is a caller's error."""
        empty = Message(ICOOKIE, RCOOKIE, ExchangeType.INFORMATIONAL, message_id=1)
        self.assertRaises(EncodeError, encrypt_message, empty, RFC3602_KEY1, RFC3602_IV1, AES128)
        wire, _ = encrypt_message(self.dpd_message(), RFC3602_KEY1, RFC3602_IV1, AES128)
        still_encrypted = decode_message(wire)
        self.assertRaises(ValueError, encrypt_message, still_encrypted, RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertRaises(ValueError, decrypt_message, self.dpd_message(), RFC3602_KEY1, RFC3602_IV1, AES128)


class PaddingTests(SynchronousTestCase):
    """Padding as written (fewest 0x00 octets) and as read (anything after Next Payload 0)."""

    def message(self, hash_length, padding=b""):
        # One Hash payload: the body is 4 + hash_length octets.
        payloads = (Hash(b"h" * hash_length),)
        return Message(ICOOKIE, RCOOKIE, ExchangeType.IDENTITY_PROTECTION, payloads=payloads, padding=padding)

    def plaintext_of(self, wire, algorithm, key, iv):
        return reference_cbc_decrypt(algorithm, key, iv, wire[HEADER_SIZE:])

    def test_pad_helper(self):
        """pad() appends 0..block-1 octets of 0x00, none when already aligned."""
        self.assertEqual(pad(b"", 16), b"")
        self.assertEqual(pad(b"x" * 16, 16), b"x" * 16)
        self.assertEqual(pad(b"x" * 17, 16), b"x" * 17 + bytes(15))
        self.assertEqual(pad(b"x" * 7, 8), b"x" * 7 + b"\0")

    def test_aligned_body_gets_no_padding(self):
        """A body of whole blocks is sent as it is: 32 octets under AES, 16 under 3DES."""
        wire, _ = encrypt_message(self.message(28), RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertEqual(len(wire), HEADER_SIZE + 32)
        key3 = bytes(range(24))
        wire, _ = encrypt_message(self.message(12), key3, bytes(8), TDES)
        self.assertEqual(len(wire), HEADER_SIZE + 16)
        # Hash payload: next payload 0, RESERVED, length 16, then 12 octets: exactly two 3DES blocks
        self.assertEqual(self.plaintext_of(wire, TripleDES, key3, bytes(8)), bytes.fromhex("00000010") + b"h" * 12)

    def test_unaligned_body_zero_padded(self):
        """Every body length 5..40 is padded with exactly (-length mod block) octets of 0x00."""
        for spec, algorithm, key in ((AES128, algorithms.AES, RFC3602_KEY1), (TDES, TripleDES, bytes(range(24)))):
            iv = bytes(spec.block_size)
            for hash_length in range(1, 37):
                body = b"\0\0" + (4 + hash_length).to_bytes(2, "big") + b"h" * hash_length
                wire, _ = encrypt_message(self.message(hash_length), key, iv, spec)
                self.assertEqual(self.plaintext_of(wire, algorithm, key, iv), zero_padded(body, spec.block_size))

    def test_charon_style_padding_on_request(self):
        """With Message.padding = b"\\0" the body ends in 1..block octets of 0x00, as strongSwan's charon writes."""
        for hash_length, expected_pad in ((12, 16), (13, 15), (27, 1), (28, 16)):
            wire, _ = encrypt_message(self.message(hash_length, padding=b"\0"), RFC3602_KEY1, RFC3602_IV1, AES128)
            plaintext = self.plaintext_of(wire, algorithms.AES, RFC3602_KEY1, RFC3602_IV1)
            self.assertEqual(len(plaintext) - (4 + hash_length), expected_pad)
            self.assertEqual(plaintext[4 + hash_length :], bytes(expected_pad))

    def test_peer_padding_kept_and_reproduced(self):
        """Padding a peer wrote (charon's whole zero block, racoon's random octets with a count) is read past,
        kept in Message.padding, and written again octet for octet."""
        chain = bytes.fromhex("00000014") + b"h" * 16  # one Hash payload of 20 octets
        paddings = (
            bytes(12),  # fewest zeros (libreswan, us)
            bytes(12) + bytes(16),  # charon: never none, here 12 + a block
            bytes.fromhex("5a17c3e9028fb6d14e7b33") + b"\x0b",  # racoon: random, last octet = count - 1
        )
        for padding in paddings:
            ciphertext = reference_cbc(algorithms.AES, RFC3602_KEY1, RFC3602_IV1, chain + padding)
            wire = Message(ICOOKIE, RCOOKIE, 2, Flags.ENCRYPTION, ciphertext=ciphertext, next_payload=8).encode()
            decrypted, _ = decrypt_message(decode_message(wire), RFC3602_KEY1, RFC3602_IV1, AES128)
            self.assertEqual(decrypted.payloads, (Hash(b"h" * 16),))
            self.assertEqual(decrypted.padding, padding)
            again, _ = encrypt_message(decrypted, RFC3602_KEY1, RFC3602_IV1, AES128)
            self.assertEqual(again, wire)


class MalformedCiphertextTests(SynchronousTestCase):
    """Ciphertext that cannot be right raises DecodeError(PAYLOAD-MALFORMED)."""

    def setUp(self):
        # Body: Hash (4 + 40 octets) then Nonce (4 + 16) = 64 octets, four AES blocks, no padding.
        self.message = Message(
            ICOOKIE, RCOOKIE, ExchangeType.QUICK_MODE, message_id=7, payloads=(Hash(b"h" * 40), Nonce(b"n" * 16))
        )
        self.wire, _ = encrypt_message(self.message, RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertEqual(len(self.wire), HEADER_SIZE + 64)

    def decrypt_body(self, body):
        received = decode_message(self.wire)
        cut = Message(ICOOKIE, RCOOKIE, received.exchange_type, received.flags, 7, ciphertext=body, next_payload=8)
        return decrypt_message(decode_message(cut.encode()), RFC3602_KEY1, RFC3602_IV1, AES128)

    def test_misaligned(self):
        """Ciphertext lengths that are not whole blocks (1, 15, 17, 47, 63 octets) are PAYLOAD-MALFORMED."""
        body = self.wire[HEADER_SIZE:]
        for length in (1, 15, 17, 47, 63):
            e = self.assertRaises(DecodeError, self.decrypt_body, body[:length])
            self.assertEqual(e.notify, NotifyType.PAYLOAD_MALFORMED)

    def test_empty(self):
        """An encrypted message with no body, or an empty ciphertext handed over directly, is PAYLOAD-MALFORMED."""
        header_only = self.wire[:24] + HEADER_SIZE.to_bytes(4, "big")
        e = self.assertRaises(DecodeError, decode_message, header_only)
        self.assertEqual(e.notify, NotifyType.PAYLOAD_MALFORMED)
        empty = Message(ICOOKIE, RCOOKIE, 32, Flags.ENCRYPTION, 7, ciphertext=b"", next_payload=8)
        e = self.assertRaises(DecodeError, decrypt_message, empty, RFC3602_KEY1, RFC3602_IV1, AES128)
        self.assertEqual(e.notify, NotifyType.PAYLOAD_MALFORMED)

    def test_truncated_to_whole_blocks(self):
        """Cut to two whole blocks, the body decrypts but the Hash payload overruns it: PAYLOAD-MALFORMED."""
        e = self.assertRaises(DecodeError, self.decrypt_body, self.wire[HEADER_SIZE : HEADER_SIZE + 32])
        self.assertEqual(e.notify, NotifyType.PAYLOAD_MALFORMED)

    def test_truncated_datagram(self):
        """A datagram cut short (header Length left as sent) fails in decode_message with a DecodeError."""
        self.assertRaises(DecodeError, decode_message, self.wire[:-5])

    def test_wrong_key(self):
        """Decrypting under the wrong key yields garbage that fails as a DecodeError, not anything else."""
        self.assertRaises(DecodeError, decrypt_message, decode_message(self.wire), bytes(16), RFC3602_IV1, AES128)


class ChainTests(SynchronousTestCase):
    """IV chaining through exchanges, both directions, and retransmissions."""

    GXI = bytes(range(1, 33))
    GXR = bytes(range(101, 133))
    KEY = bytes(range(32))

    def main_mode_tail(self):
        """MM5 (initiator) and MM6 (responder): the encrypted Main Mode messages."""
        id_i = Identification(IDType.IPV4_ADDR, 17, 500, bytes([127, 0, 0, 1]))
        id_r = Identification(IDType.IPV4_ADDR, 17, 500, bytes([127, 0, 0, 2]))
        mm5 = Message(ICOOKIE, RCOOKIE, ExchangeType.IDENTITY_PROTECTION, payloads=(id_i, Hash(b"i" * 32)))
        mm6 = Message(ICOOKIE, RCOOKIE, ExchangeType.IDENTITY_PROTECTION, payloads=(id_r, Hash(b"r" * 32)))
        return mm5, mm6

    def phase1(self):
        return IVChain.phase1(AES256, self.KEY, OakleyHash.SHA2_256, self.GXI, self.GXR)

    def test_phase1_both_directions(self):
        """MM5 uses hash(g^xi | g^xr); MM6 uses MM5's last ciphertext block; both sides end on MM6's last block."""
        mm5, mm6 = self.main_mode_tail()
        initiator = responder = self.phase1()
        self.assertEqual(initiator.iv, hashlib.sha256(self.GXI + self.GXR).digest()[:16])
        wire5, initiator = initiator.encrypt(mm5)
        got5, responder = responder.decrypt(decode_message(wire5))
        self.assertEqual(got5.payloads, mm5.payloads)
        self.assertEqual(responder.iv, wire5[-16:])
        self.assertEqual(initiator, responder)
        wire6, responder = responder.encrypt(mm6)
        got6, initiator = initiator.decrypt(decode_message(wire6))
        self.assertEqual(got6.payloads, mm6.payloads)
        self.assertEqual(initiator.iv, wire6[-16:])
        self.assertEqual(initiator, responder)

    def test_quick_mode_three_messages(self):
        """QM1, QM2 and QM3 chain from hash(last Phase 1 block | M-ID), each IV the previous last block.

        Checked against one CBC pass of the cryptography package over the three padded bodies: chaining per
        message is the same as encrypting them back to back.
        """
        mid = 0x5EED1234
        last_phase1_block = bytes.fromhex("00112233445566778899aabbccddeeff")
        phase1 = IVChain(AES256, self.KEY, OakleyHash.SHA2_256, last_phase1_block)
        qm_iv0 = hashlib.sha256(last_phase1_block + mid.to_bytes(4, "big")).digest()[:16]

        def qm(*payloads):
            return Message(ICOOKIE, RCOOKIE, ExchangeType.QUICK_MODE, message_id=mid, payloads=payloads)

        qm1 = qm(Hash(b"1" * 32), Nonce(b"a" * 32))
        qm2 = qm(Hash(b"2" * 32), Nonce(b"b" * 24))
        qm3 = qm(Hash(b"3" * 32))
        initiator = phase1.for_message_id(mid)
        responder = phase1.for_message_id(mid)
        self.assertEqual(initiator.iv, qm_iv0)

        wire1, initiator = initiator.encrypt(qm1)
        got1, responder = responder.decrypt(decode_message(wire1))
        wire2, responder = responder.encrypt(qm2)
        got2, initiator = initiator.decrypt(decode_message(wire2))
        wire3, initiator = initiator.encrypt(qm3)
        got3, responder = responder.decrypt(decode_message(wire3))

        self.assertEqual((got1.payloads, got2.payloads, got3.payloads), (qm1.payloads, qm2.payloads, qm3.payloads))
        self.assertEqual(initiator, responder)
        self.assertEqual(initiator.iv, wire3[-16:])
        bodies = b"".join(zero_padded(m.body(), 16) for m in (qm1, qm2, qm3))
        expected = reference_cbc(algorithms.AES, self.KEY, qm_iv0, bodies)
        self.assertEqual(wire1[HEADER_SIZE:] + wire2[HEADER_SIZE:] + wire3[HEADER_SIZE:], expected)

    def test_phase2_from_end_of_phase1(self):
        """After MM6, the Quick Mode IV is hash(MM6's last ciphertext block | M-ID), the same on both sides."""
        mm5, mm6 = self.main_mode_tail()
        chain = self.phase1()
        _, chain = chain.encrypt(mm5)
        wire6, chain = chain.encrypt(mm6)
        expected = hashlib.sha256(wire6[-16:] + (0x0A0B0C0D).to_bytes(4, "big")).digest()[:16]
        self.assertEqual(chain.for_message_id(0x0A0B0C0D).iv, expected)

    def test_exchanges_are_independent(self):
        """Two Phase 2 exchanges (different M-IDs) have separate chains; interleaving does not disturb them."""
        phase1 = IVChain(AES128, RFC3602_KEY1, OakleyHash.SHA, RFC3602_IV1)
        a_out, b_out = phase1.for_message_id(1), phase1.for_message_id(2)
        self.assertNotEqual(a_out.iv, b_out.iv)
        msg_a = Message(ICOOKIE, RCOOKIE, 32, message_id=1, payloads=(Hash(b"a" * 20),))
        msg_b = Message(ICOOKIE, RCOOKIE, 32, message_id=2, payloads=(Hash(b"b" * 20),))
        wire_a, _ = a_out.encrypt(msg_a)
        wire_b, _ = b_out.encrypt(msg_b)
        # The receiver handles B first, then A, each with its own chain.
        got_b, _ = phase1.for_message_id(2).decrypt(decode_message(wire_b))
        got_a, _ = phase1.for_message_id(1).decrypt(decode_message(wire_a))
        self.assertEqual((got_a.payloads, got_b.payloads), (msg_a.payloads, msg_b.payloads))

    def test_retransmission_does_not_advance_twice(self):
        """A resent MM5 decrypted with the chain held before it gives the same message and the same next chain;
        with the advanced chain its first block comes out wrong.  The responder's MM6 still chains correctly."""
        mm5, mm6 = self.main_mode_tail()
        initiator0 = responder0 = self.phase1()
        wire5, initiator1 = initiator0.encrypt(mm5)
        got5, responder1 = responder0.decrypt(decode_message(wire5))

        # The same datagram again: decrypt with the chain kept from before MM5.
        again5, responder1_again = responder0.decrypt(decode_message(wire5))
        self.assertEqual(again5, got5)
        self.assertEqual(responder1_again, responder1)
        self.assertEqual(responder0.iv, hashlib.sha256(self.GXI + self.GXR).digest()[:16])

        # Using the chain that already moved on garbles the first block only (CBC), so the chain must not move.
        body = wire5[HEADER_SIZE:]
        right = reference_cbc_decrypt(algorithms.AES, self.KEY, responder0.iv, body)
        wrong = reference_cbc_decrypt(algorithms.AES, self.KEY, responder1.iv, body)
        self.assertNotEqual(wrong[:16], right[:16])
        self.assertEqual(wrong[16:], right[16:])

        # Our own retransmission is the stored datagram: encrypting MM5 anew on the moved chain differs.
        self.assertEqual(initiator0.encrypt(mm5)[0], wire5)
        self.assertNotEqual(initiator1.encrypt(mm5)[0], wire5)

        wire6, responder2 = responder1.encrypt(mm6)
        got6, initiator2 = initiator1.decrypt(decode_message(wire6))
        self.assertEqual(got6.payloads, mm6.payloads)
        self.assertEqual(initiator2, responder2)

    def test_failed_message_leaves_chain(self):
        """A message that fails to decrypt changes nothing: the held chain then decrypts the genuine one."""
        mm5, _ = self.main_mode_tail()
        chain = self.phase1()
        wire5, _ = chain.encrypt(mm5)
        forged = Message(ICOOKIE, RCOOKIE, 2, Flags.ENCRYPTION, ciphertext=os.urandom(47), next_payload=5)
        self.assertRaises(DecodeError, chain.decrypt, forged)
        got, _ = chain.decrypt(decode_message(wire5))
        self.assertEqual(got.payloads, mm5.payloads)


# Hypothesis strategies: ciphers with matching random keys and IVs, and chains of Hash/Nonce/Notification.
specs = st.sampled_from(sorted(CIPHERS.values(), key=lambda s: s.name))


@st.composite
def keyed(draw):
    spec = draw(specs)
    return spec, draw(st.binary(min_size=spec.key_size, max_size=spec.key_size)), draw(
        st.binary(min_size=spec.block_size, max_size=spec.block_size)
    )


payload = st.one_of(
    st.builds(Hash, st.binary(min_size=1, max_size=64)),
    st.builds(Nonce, st.binary(min_size=8, max_size=64)),
    st.builds(
        Notification,
        st.sampled_from([DOI.ISAKMP, DOI.IPSEC, DOI.GDOI]),
        st.integers(0, 255),
        st.integers(0, 0xFFFF),
        st.binary(max_size=16),
        st.binary(max_size=32),
    ),
)

messages = st.builds(
    Message,
    st.binary(min_size=8, max_size=8).filter(any),
    st.binary(min_size=8, max_size=8),
    st.sampled_from([ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE, ExchangeType.INFORMATIONAL, 32, 33]),
    st.sampled_from([0, Flags.COMMIT, Flags.AUTHENTICATION_ONLY]),
    st.integers(0, 0xFFFFFFFF),
    st.lists(payload, min_size=1, max_size=5).map(tuple),
)


class PropertyTests(SynchronousTestCase):
    """Round trips and robustness over random messages, keys and IVs."""

    @settings(max_examples=300, deadline=None)
    @given(messages, keyed())
    def test_round_trip(self, message, key_material):
        """Encrypt, decode, decrypt gives the payloads back with 0..block-1 zero octets of padding; both sides
        agree on the next IV; encrypting the decrypted message with the same IV gives the same datagram."""
        spec, key, iv = key_material
        wire, next_iv = encrypt_message(message, key, iv, spec)
        body_length = len(message.body())
        self.assertEqual(len(wire), HEADER_SIZE + body_length + (-body_length % spec.block_size))
        self.assertEqual(next_iv, wire[-spec.block_size :])
        received = decode_message(wire)
        self.assertTrue(received.encrypted)
        decrypted, their_next_iv = decrypt_message(received, key, iv, spec)
        self.assertEqual(decrypted.payloads, message.payloads)
        self.assertEqual(decrypted.padding, bytes(-body_length % spec.block_size))
        self.assertEqual(their_next_iv, next_iv)
        self.assertEqual(encrypt_message(decrypted, key, iv, spec), (wire, next_iv))

    @settings(max_examples=200, deadline=None)
    @given(messages, keyed(), st.binary(max_size=40), st.integers(0, 2))
    def test_peer_padding_round_trip(self, message, key_material, filler, extra_blocks):
        """Whatever padding a peer appends (any octets, up to whole extra blocks) is kept and reproduced."""
        spec, key, iv = key_material
        body = message.body()
        padding = (filler + bytes(64))[: (-len(body) % spec.block_size) + extra_blocks * spec.block_size]
        ciphertext = spec.encrypt(key, iv, body + padding)
        sent = Message(
            message.initiator_cookie, message.responder_cookie, message.exchange_type, Flags.ENCRYPTION,
            message.message_id, ciphertext=ciphertext, next_payload=message.payloads[0].payload_type,
        ).encode()
        decrypted, _ = decrypt_message(decode_message(sent), key, iv, spec)
        self.assertEqual((decrypted.payloads, decrypted.padding), (message.payloads, padding))
        self.assertEqual(encrypt_message(decrypted, key, iv, spec)[0], sent)

    @settings(max_examples=300, deadline=None)
    @given(keyed(), st.binary(max_size=130), st.integers(0, 255), st.sampled_from([DOI.IPSEC, DOI.GDOI]))
    def test_random_ciphertext_only_decode_error(self, key_material, ciphertext, first_payload, doi):
        """Arbitrary ciphertext (any length, any first payload type) decrypts to a message or raises DecodeError,
        never another exception."""
        spec, key, iv = key_material
        message = Message(ICOOKIE, RCOOKIE, 32, Flags.ENCRYPTION, 1, ciphertext=ciphertext, next_payload=first_payload)
        try:
            decrypted, next_iv = decrypt_message(message, key, iv, spec, doi)
        except DecodeError:
            return
        self.assertEqual(len(ciphertext) % spec.block_size, 0)
        self.assertEqual(next_iv, ciphertext[-spec.block_size :])
        self.assertIsNone(decrypted.ciphertext)

    @settings(max_examples=200, deadline=None)
    @given(messages, keyed(), st.integers(1, 200))
    def test_truncated_datagram_only_decode_error(self, message, key_material, cut):
        """A datagram cut anywhere (header Length fixed up or not) fails only with DecodeError."""
        spec, key, iv = key_material
        wire, _ = encrypt_message(message, key, iv, spec)
        short = wire[: max(0, len(wire) - cut)]
        fixed = short[:24] + len(short).to_bytes(4, "big") + short[28:] if len(short) >= HEADER_SIZE else short
        for datagram in (short, fixed):
            try:
                decrypt_message(decode_message(datagram), key, iv, spec)
            except DecodeError:
                pass
