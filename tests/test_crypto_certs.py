"""Certificates and IKEv1 signatures (gdoiserver.crypto.certs): RFC 2409 section 5.1, RFC 4754, RFC 4945.

RSA signatures are checked against an independent computation written out here (EMSA-PKCS1-v1_5 type 1 padding
without DigestInfo and ``pow`` with the private exponent) and against the openssl command line; ECDSA signatures
against ``cryptography``'s own DER form and the openssl command line.  Chains come from tests/pki.py.
"""

import datetime
import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.codec.constants import CertEncoding, IDType, NotifyType, OakleyAuth, OakleyHash
from gdoiserver.codec.payload import Context, decode_chain, encode_chain
from gdoiserver.codec.payloads import Certificate, CertificateRequest, Identification, Nonce
from gdoiserver.crypto import certs
from gdoiserver.crypto.prf import hash_algorithm
from tests import pki, tshark
from tests.interop import strongswan as sw

AUTH_FOR_KIND = {
    "rsa2048": OakleyAuth.RSA_SIGNATURES,
    "p256": OakleyAuth.ECDSA_SHA256_P256,
    "p384": OakleyAuth.ECDSA_SHA384_P384,
    "p521": OakleyAuth.ECDSA_SHA512_P521,
}
#: r and s are each as long as the curve's field (RFC 4754 section 7).
ECDSA_SIZES = {"p256": 32, "p384": 48, "p521": 66}
ECDSA_HASH = {"p256": "sha256", "p384": "sha384", "p521": "sha512"}


def credentials(kind: str) -> certs.Credentials:
    h = pki.hierarchy(kind)
    return certs.Credentials(h.leaf.certificate, (h.intermediate.certificate,), h.leaf.key)


def hash_of(kind: str, label: bytes = b"HASH_I") -> bytes:
    """A stand-in HASH_I of the length the method signs (SHA-1 size for RSA: any length works there)."""
    return hashlib.new(ECDSA_HASH.get(kind, "sha1"), label).digest()


def independent_rsa_signature(private_key, h: bytes) -> bytes:
    """RSASP1 over EM = 0x00 0x01 PS 0x00 H, PS all 0xff (RFC 8017 section 9.2 without the DigestInfo step)."""
    numbers = private_key.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    k = (n.bit_length() + 7) // 8
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(h)) + b"\x00" + h
    return pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise unittest.SkipTest(f"missing tool: {tool}")
    return path


class RSASignatureTests(unittest.TestCase):
    """Auth method 3: the raw HASH in a PKCS#1 v1.5 type 1 block, no DigestInfo (strongSwan, libreswan)."""

    def setUp(self):
        self.creds = credentials("rsa2048")
        self.cert = self.creds.certificate

    def test_round_trip(self):
        """sign() output verifies for SHA-1, SHA-256 and SHA-512 sized HASH values and is modulus-sized."""
        for h in (hash_of("rsa2048"), hashlib.sha256(b"x").digest(), hashlib.sha512(b"x").digest()):
            sig = certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, h)
            self.assertEqual(len(sig), 256)
            self.assertTrue(certs.verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, sig))

    def test_known_answer_independent_computation(self):
        """The signature equals padding by hand plus pow(m, d, n), and signing is deterministic."""
        h = hash_of("rsa2048")
        sig = certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, h)
        self.assertEqual(sig, independent_rsa_signature(self.creds.private_key, h))
        self.assertEqual(sig, certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, h))

    def test_recover_without_digest_info(self):
        """Public-key recovery of the signature yields exactly the HASH: no DigestInfo in front of it."""
        h = hashlib.sha256(b"HASH_R").digest()
        sig = certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, h)
        recovered = self.cert.public_key().recover_data_from_signature(sig, padding.PKCS1v15(), NoDigestInfo())
        self.assertEqual(recovered, h)
        block = pow(int.from_bytes(sig, "big"), 65537, self.cert.public_key().public_numbers().n).to_bytes(256, "big")
        self.assertEqual(block[:2], b"\x00\x01")
        self.assertEqual(block[2:-33], b"\xff" * (256 - 3 - 32))
        self.assertEqual(block[-33:], b"\x00" + h)

    def test_openssl_pkeyutl_gives_identical_bytes(self):
        """`openssl pkeyutl -sign -pkeyopt rsa_padding_mode:pkcs1` over the raw HASH gives the same signature."""
        openssl = need("openssl")
        key_path = pki.write_key(self.mktemp(), self.creds.private_key)
        in_path = self.mktemp()
        with open(in_path, "wb") as f:
            f.write(hash_of("rsa2048"))
        out = subprocess.run(
            [openssl, "pkeyutl", "-sign", "-inkey", key_path, "-pkeyopt", "rsa_padding_mode:pkcs1", "-in", in_path],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
        self.assertEqual(certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, hash_of("rsa2048")), out)

    def test_bad_signatures_are_false(self):
        """A flipped bit, another HASH, a short or long signature, or a DigestInfo form all verify False."""
        h = hash_of("rsa2048")
        sig = certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, h)
        verify = certs.verify
        self.assertFalse(verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, flip(sig, 100)))
        self.assertFalse(verify(self.cert, OakleyAuth.RSA_SIGNATURES, hash_of("rsa2048", b"other"), sig))
        self.assertFalse(verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, sig[1:]))
        self.assertFalse(verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, b"\x00" + sig))
        self.assertFalse(verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, b""))
        sha1 = hashlib.sha1(b"x").digest()
        with_digest_info = self.creds.private_key.sign(sha1, padding.PKCS1v15(), Prehashed(hashes.SHA1()))
        self.assertFalse(verify(self.cert, OakleyAuth.RSA_SIGNATURES, sha1, with_digest_info))

    @settings(max_examples=40, deadline=None)
    @given(h=st.binary(min_size=16, max_size=64), bit=st.integers(min_value=0, max_value=2047))
    def test_property_matches_independent_and_rejects_any_bit_flip(self, h, bit):
        """For any HASH of 16..64 octets the signature matches the independent one, and no bit flip verifies."""
        sig = certs.sign(self.creds, OakleyAuth.RSA_SIGNATURES, h)
        self.assertEqual(sig, independent_rsa_signature(self.creds.private_key, h))
        self.assertTrue(certs.verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, sig))
        tampered = (int.from_bytes(sig, "big") ^ (1 << bit)).to_bytes(256, "big")
        self.assertFalse(certs.verify(self.cert, OakleyAuth.RSA_SIGNATURES, h, tampered))


class ECDSASignatureTests(unittest.TestCase):
    """Auth methods 9, 10, 11 (RFC 4754): r | s over the HASH itself, as strongSwan's SIGN_ECDSA_WITH_NULL."""

    def test_round_trip_and_size(self):
        """Each curve: the signature is 2 x field size (64, 96, 132 octets) and verifies."""
        for kind, size in ECDSA_SIZES.items():
            creds = credentials(kind)
            h = hash_of(kind)
            sig = certs.sign(creds, AUTH_FOR_KIND[kind], h)
            self.assertEqual(len(sig), 2 * size, kind)
            self.assertTrue(certs.verify(creds.certificate, AUTH_FOR_KIND[kind], h, sig), kind)

    def test_r_s_is_ecdsa_over_the_hash_as_digest(self):
        """r | s re-encoded as DER verifies with cryptography over the HASH taken as the digest (no re-hashing)."""
        for kind, size in ECDSA_SIZES.items():
            creds = credentials(kind)
            h = hash_of(kind)
            sig = certs.sign(creds, AUTH_FOR_KIND[kind], h)
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            digest = {"p256": hashes.SHA256(), "p384": hashes.SHA384(), "p521": hashes.SHA512()}[kind]
            creds.certificate.public_key().verify(der, h, ec.ECDSA(Prehashed(digest)))

    def test_openssl_verifies_signature(self):
        """`openssl pkeyutl -verify` with the certificate's public key accepts each signature over the raw HASH."""
        openssl = need("openssl")
        for kind, size in ECDSA_SIZES.items():
            creds = credentials(kind)
            h = hash_of(kind)
            sig = certs.sign(creds, AUTH_FOR_KIND[kind], h)
            paths = {name: self.mktemp() for name in ("pub", "in", "sig")}
            public = creds.certificate.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            for name, data in (("pub", public), ("in", h), ("sig", der)):
                with open(paths[name], "wb") as f:
                    f.write(data)
            argv = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["pub"], "-in", paths["in"]]
            ok = subprocess.run(argv + ["-sigfile", paths["sig"]], capture_output=True, timeout=30)
            self.assertEqual(ok.returncode, 0, (kind, ok.stdout, ok.stderr))
            with open(paths["in"], "wb") as f:
                f.write(flip(h, 0))
            bad = subprocess.run(argv + ["-sigfile", paths["sig"]], capture_output=True, timeout=30)
            self.assertNotEqual(bad.returncode, 0, kind)

    def test_bad_signatures_are_false(self):
        """A flipped bit in r or s, another HASH, a wrong length, or r = s = 0 verify False."""
        creds = credentials("p256")
        h = hash_of("p256")
        sig = certs.sign(creds, OakleyAuth.ECDSA_SHA256_P256, h)
        cert = creds.certificate
        auth = OakleyAuth.ECDSA_SHA256_P256
        self.assertFalse(certs.verify(cert, auth, h, flip(sig, 5)))
        self.assertFalse(certs.verify(cert, auth, h, flip(sig, 40)))
        self.assertFalse(certs.verify(cert, auth, hash_of("p256", b"other"), sig))
        self.assertFalse(certs.verify(cert, auth, h, sig[:-1]))
        self.assertFalse(certs.verify(cert, auth, h, sig + b"\x00"))
        self.assertFalse(certs.verify(cert, auth, h, bytes(64)))

    def test_hash_of_wrong_length_raises(self):
        """Signing or verifying a HASH that is not the method's digest size is a caller error (ValueError)."""
        creds = credentials("p384")
        with self.assertRaises(ValueError):
            certs.sign(creds, OakleyAuth.ECDSA_SHA384_P384, hashlib.sha256(b"x").digest())
        with self.assertRaises(ValueError):
            certs.verify(creds.certificate, OakleyAuth.ECDSA_SHA384_P384, hashlib.sha256(b"x").digest(), bytes(96))

    def test_signatures_are_randomized(self):
        """Two ECDSA signatures of one HASH differ (fresh k) and both verify."""
        creds = credentials("p256")
        h = hash_of("p256")
        a = certs.sign(creds, OakleyAuth.ECDSA_SHA256_P256, h)
        b = certs.sign(creds, OakleyAuth.ECDSA_SHA256_P256, h)
        self.assertNotEqual(a, b)
        self.assertTrue(certs.verify(creds.certificate, OakleyAuth.ECDSA_SHA256_P256, h, b))


class MethodAndKeyMismatchTests(unittest.TestCase):
    """The key type must fit the authentication method."""

    def test_verify_wrong_key_type_is_false(self):
        """An EC certificate under RSA signatures, RSA under ECDSA, or P-384 under ECDSA-256 verify False."""
        rsa_creds, p256, p384 = credentials("rsa2048"), credentials("p256"), credentials("p384")
        rsa_sig = certs.sign(rsa_creds, OakleyAuth.RSA_SIGNATURES, hash_of("p256"))
        p256_sig = certs.sign(p256, OakleyAuth.ECDSA_SHA256_P256, hash_of("p256"))
        self.assertFalse(certs.verify(p256.certificate, OakleyAuth.RSA_SIGNATURES, hash_of("p256"), rsa_sig))
        self.assertFalse(certs.verify(rsa_creds.certificate, OakleyAuth.ECDSA_SHA256_P256, hash_of("p256"), p256_sig))
        self.assertFalse(certs.verify(p384.certificate, OakleyAuth.ECDSA_SHA256_P256, hash_of("p256"), p256_sig))

    def test_verify_unsupported_method_is_false(self):
        """Pre-shared key, DSS and RSA encryption are not signature methods here: verify gives False."""
        creds = credentials("rsa2048")
        sig = certs.sign(creds, OakleyAuth.RSA_SIGNATURES, hash_of("rsa2048"))
        for auth in (OakleyAuth.PRE_SHARED_KEY, OakleyAuth.DSS_SIGNATURES, OakleyAuth.RSA_ENCRYPTION, 99):
            self.assertFalse(certs.verify(creds.certificate, auth, hash_of("rsa2048"), sig), auth)

    def test_sign_with_wrong_key_raises(self):
        """sign() refuses an EC key for RSA signatures, an RSA key or the wrong curve for ECDSA, and DSS."""
        rsa_creds, p256 = credentials("rsa2048"), credentials("p256")
        with self.assertRaises(certs.CredentialsError):
            certs.sign(p256, OakleyAuth.RSA_SIGNATURES, hash_of("p256"))
        with self.assertRaises(certs.CredentialsError):
            certs.sign(rsa_creds, OakleyAuth.ECDSA_SHA256_P256, hash_of("p256"))
        with self.assertRaises(certs.CredentialsError):
            certs.sign(p256, OakleyAuth.ECDSA_SHA384_P384, hash_of("p384"))
        with self.assertRaises(certs.CredentialsError):
            certs.sign(rsa_creds, OakleyAuth.DSS_SIGNATURES, hash_of("rsa2048"))

    def test_hash_for_auth(self):
        """HASH_I/HASH_R use SHA-256/384/512 with ECDSA-256/384/521 whatever was negotiated, else the negotiated."""
        sha1 = hash_algorithm(OakleyHash.SHA)
        self.assertIs(certs.hash_for_auth(OakleyAuth.RSA_SIGNATURES, sha1), sha1)
        self.assertIs(certs.hash_for_auth(OakleyAuth.PRE_SHARED_KEY, sha1), sha1)
        expected = {
            OakleyAuth.ECDSA_SHA256_P256: OakleyHash.SHA2_256,
            OakleyAuth.ECDSA_SHA384_P384: OakleyHash.SHA2_384,
            OakleyAuth.ECDSA_SHA512_P521: OakleyHash.SHA2_512,
        }
        for auth, number in expected.items():
            self.assertEqual(certs.hash_for_auth(auth, sha1).number, number)

    def test_credentials_auth_method(self):
        """Credentials name the method their key signs with."""
        for kind, auth in AUTH_FOR_KIND.items():
            self.assertEqual(credentials(kind).auth_method, auth)


class ChainTests(unittest.TestCase):
    """validate_chain: RFC 5280 path validation at a given time, with the Notify that fits each failure."""

    def setUp(self):
        self.h = pki.hierarchy("p256")
        self.trust = certs.TrustStore((self.h.root.certificate,))

    def assertRefused(self, notify, leaf, intermediates, now=pki.NOW, trust=None):
        with self.assertRaises(certs.CertificateError) as cm:
            certs.validate_chain(trust or self.trust, leaf, intermediates, now)
        self.assertEqual(cm.exception.notify, notify, cm.exception.reason)
        return cm.exception

    def test_good_chain(self):
        """root -> intermediate -> leaf validates for RSA, P-256, P-384 and P-521, returning the leaf."""
        for kind in pki.KINDS:
            h = pki.hierarchy(kind)
            trust = certs.TrustStore((h.root.certificate,))
            got = certs.validate_chain(trust, h.leaf.certificate, [h.intermediate.certificate], pki.NOW)
            self.assertEqual(got, h.leaf.certificate)

    def test_leaf_issued_by_root_and_epoch_time(self):
        """A leaf issued by the trusted CA needs no intermediate; now may be epoch seconds."""
        leaf = pki.issue("direct", pki.key("p256", 3), self.h.root, sans=("d.example.org",)).certificate
        certs.validate_chain(self.trust, leaf, [], pki.NOW.timestamp())

    def test_extra_and_reordered_intermediates(self):
        """Unrelated certificates among the intermediates do no harm."""
        other = pki.issue("Other CA", pki.key("p384", 5), ca=True).certificate
        certs.validate_chain(self.trust, self.h.leaf.certificate, [other, self.h.intermediate.certificate], pki.NOW)

    def test_validity_boundaries(self):
        """notAfter itself is still valid, one second later is expired (RFC 5280 4.1.2.5); likewise notBefore."""
        leaf = self.h.leaf.certificate
        second = pki.datetime.timedelta(seconds=1)
        certs.validate_chain(self.trust, leaf, [self.h.intermediate.certificate], leaf.not_valid_after_utc)
        certs.validate_chain(self.trust, leaf, [self.h.intermediate.certificate], leaf.not_valid_before_utc)
        e = self.assertRefused(
            NotifyType.INVALID_CERTIFICATE, leaf, [self.h.intermediate.certificate], leaf.not_valid_after_utc + second
        )
        self.assertIn("expired", e.reason)
        e = self.assertRefused(
            NotifyType.INVALID_CERTIFICATE, leaf, [self.h.intermediate.certificate], leaf.not_valid_before_utc - second
        )
        self.assertIn("not valid before", e.reason)

    def test_expired_leaf(self):
        """A leaf whose notAfter lies before now: INVALID-CERTIFICATE."""
        old = pki.issue("old", pki.key("p256", 3), self.h.intermediate, not_before=pki.NOW - 30 * pki.DAY,
                        not_after=pki.NOW - pki.DAY)  # fmt: skip
        e = self.assertRefused(NotifyType.INVALID_CERTIFICATE, old.certificate, [self.h.intermediate.certificate])
        self.assertIn("expired", e.reason)

    def test_not_yet_valid_leaf(self):
        """A leaf whose notBefore lies after now: INVALID-CERTIFICATE."""
        new = pki.issue("new", pki.key("p256", 3), self.h.intermediate, not_before=pki.NOW + pki.DAY,
                        not_after=pki.NOW + 30 * pki.DAY)  # fmt: skip
        e = self.assertRefused(NotifyType.INVALID_CERTIFICATE, new.certificate, [self.h.intermediate.certificate])
        self.assertIn("not valid before", e.reason)

    def test_expired_intermediate(self):
        """An intermediate outside its validity period breaks the chain: INVALID-CERTIFICATE."""
        inter = pki.issue(
            "Test Intermediate CA p256", pki.key("p256", 1), self.h.root, ca=True,
            not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY,
        )  # fmt: skip
        self.assertRefused(NotifyType.INVALID_CERTIFICATE, self.h.leaf.certificate, [inter.certificate])

    def test_unknown_ca(self):
        """A chain to a root that is not configured: INVALID-CERT-AUTHORITY."""
        other = pki.hierarchy("p384")
        e = self.assertRefused(
            NotifyType.INVALID_CERT_AUTHORITY, other.leaf.certificate, [other.intermediate.certificate]
        )
        self.assertIn("no configured CA", e.reason)

    def test_missing_intermediate(self):
        """Without the intermediate the leaf's issuer is unknown: INVALID-CERT-AUTHORITY."""
        self.assertRefused(NotifyType.INVALID_CERT_AUTHORITY, self.h.leaf.certificate, [])

    def test_no_trust_anchors(self):
        """An empty trust store trusts nothing: INVALID-CERT-AUTHORITY."""
        self.assertRefused(
            NotifyType.INVALID_CERT_AUTHORITY, self.h.leaf.certificate, [self.h.intermediate.certificate],
            trust=certs.TrustStore(()),
        )  # fmt: skip

    def test_wrong_issuer_signature(self):
        """A leaf naming the intermediate as issuer but signed by another key: INVALID-CERTIFICATE."""
        forged = pki.issue(
            "forged", pki.key("p256", 3), self.h.intermediate, signing_key=pki.key("p256", 4)
        ).certificate
        self.assertRefused(NotifyType.INVALID_CERTIFICATE, forged, [self.h.intermediate.certificate])

    def test_intermediate_without_ca_flag(self):
        """An issuer with basicConstraints cA=FALSE cannot issue: INVALID-CERTIFICATE."""
        inter = pki.issue("Test Intermediate CA p256", pki.key("p256", 1), self.h.root, ca=False)
        leaf = pki.issue("gw", pki.key("p256", 2), inter).certificate
        e = self.assertRefused(NotifyType.INVALID_CERTIFICATE, leaf, [inter.certificate])
        self.assertIn("basicConstraints", e.reason)

    def test_intermediate_without_basic_constraints(self):
        """An issuer without basicConstraints at all cannot issue (RFC 5280 section 6.1.4 (k))."""
        inter = pki.issue("Test Intermediate CA p256", pki.key("p256", 1), self.h.root, ca=None, key_usage=None)
        leaf = pki.issue("gw", pki.key("p256", 2), inter).certificate
        self.assertRefused(NotifyType.INVALID_CERTIFICATE, leaf, [inter.certificate])

    def test_intermediate_without_key_cert_sign(self):
        """An issuer whose keyUsage lacks keyCertSign cannot issue (RFC 5280 section 4.2.1.3)."""
        inter = pki.issue(
            "Test Intermediate CA p256", pki.key("p256", 1), self.h.root, ca=True, key_usage=pki.EE_KEY_USAGE
        )
        leaf = pki.issue("gw", pki.key("p256", 2), inter).certificate
        e = self.assertRefused(NotifyType.INVALID_CERTIFICATE, leaf, [inter.certificate])
        self.assertIn("keyCertSign", e.reason)

    def test_path_length_constraint(self):
        """A root with pathLenConstraint 0 may not have an intermediate below it."""
        root = pki.issue("Strict Root", pki.key("p256", 0), ca=True, path_length=0)
        inter = pki.issue("Sub CA", pki.key("p256", 1), root, ca=True)
        leaf = pki.issue("gw", pki.key("p256", 2), inter).certificate
        trust = certs.TrustStore((root.certificate,))
        self.assertRefused(NotifyType.INVALID_CERTIFICATE, leaf, [inter.certificate], trust=trust)
        direct = pki.issue("gw2", pki.key("p256", 2), root).certificate
        certs.validate_chain(trust, direct, [], pki.NOW)

    def test_leaf_key_usage_without_signature(self):
        """An end entity whose keyUsage allows neither digitalSignature nor nonRepudiation (RFC 4945 5.1.3.2)."""
        leaf = pki.issue("enc only", pki.key("p256", 3), self.h.intermediate, key_usage=pki.CA_KEY_USAGE).certificate
        self.assertRefused(NotifyType.INVALID_CERTIFICATE, leaf, [self.h.intermediate.certificate])

    def test_too_many_intermediates(self):
        """More intermediates than MAX_INTERMEDIATES are refused before any chain building."""
        many = [self.h.intermediate.certificate] * (certs.MAX_INTERMEDIATES + 1)
        self.assertRefused(NotifyType.INVALID_CERTIFICATE, self.h.leaf.certificate, many)


def dn_der(*rdns) -> bytes:
    """DER of a Name from (oid_der, string_tag, text) triples, one per RDN."""

    def tlv(tag: int, content: bytes) -> bytes:
        assert len(content) < 128
        return bytes((tag, len(content))) + content

    # Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue ::= SEQUENCE {OID, value})
    atvs = (tlv(0x30, tlv(0x06, oid) + tlv(tag, text.encode())) for oid, tag, text in rdns)
    return tlv(0x30, b"".join(tlv(0x31, atv) for atv in atvs))


OID_C, OID_O, OID_CN = bytes.fromhex("550406"), bytes.fromhex("55040a"), bytes.fromhex("550403")
PRINTABLE, UTF8 = 0x13, 0x0C


class IdentityTests(unittest.TestCase):
    """identity_matches: the ID payload against subjectAltName or the subject DN (RFC 4945 section 5.1.2)."""

    def setUp(self):
        self.cert = pki.issue(
            pki.name("gw p256"), pki.key("p256", 2), pki.hierarchy("p256").intermediate,
            sans=("gw.example.org", "*.vpn.example.org", ipaddress.ip_address("192.0.2.10"),
                  ipaddress.ip_address("2001:db8::10"), "Alice.Smith@Example.ORG"),
        ).certificate  # fmt: skip

    def match(self, id_type, data: bytes) -> bool:
        return certs.identity_matches(self.cert, Identification(id_type, 0, 0, data))

    def test_fqdn(self):
        """ID_FQDN matches a dNSName case-insensitively and by wildcard; other names do not."""
        self.assertTrue(self.match(IDType.FQDN, b"gw.example.org"))
        self.assertTrue(self.match(IDType.FQDN, b"GW.Example.ORG"))
        self.assertTrue(self.match(IDType.FQDN, b"east.vpn.example.org"))
        self.assertFalse(self.match(IDType.FQDN, b"a.b.vpn.example.org"))
        self.assertFalse(self.match(IDType.FQDN, b"other.example.org"))
        self.assertFalse(self.match(IDType.FQDN, b"192.0.2.10"))
        self.assertFalse(self.match(IDType.FQDN, "gw.example.org\u00e9".encode()))
        self.assertFalse(self.match(IDType.FQDN, b""))

    def test_ipv4_and_ipv6(self):
        """ID_IPV4_ADDR and ID_IPV6_ADDR match iPAddress entries exactly."""
        self.assertTrue(self.match(IDType.IPV4_ADDR, ipaddress.ip_address("192.0.2.10").packed))
        self.assertFalse(self.match(IDType.IPV4_ADDR, ipaddress.ip_address("192.0.2.11").packed))
        self.assertTrue(self.match(IDType.IPV6_ADDR, ipaddress.ip_address("2001:db8::10").packed))
        self.assertFalse(self.match(IDType.IPV6_ADDR, ipaddress.ip_address("2001:db8::11").packed))
        self.assertFalse(self.match(IDType.IPV4_ADDR, b"\x01\x02\x03"))

    def test_user_fqdn(self):
        """ID_USER_FQDN matches an rfc822Name: local part exact, domain case-insensitive."""
        self.assertTrue(self.match(IDType.USER_FQDN, b"Alice.Smith@Example.ORG"))
        self.assertTrue(self.match(IDType.USER_FQDN, b"Alice.Smith@example.org"))
        self.assertFalse(self.match(IDType.USER_FQDN, b"alice.smith@example.org"))
        self.assertFalse(self.match(IDType.USER_FQDN, b"Alice.Smith@example.com"))
        self.assertFalse(self.match(IDType.USER_FQDN, b"example.org"))
        self.assertFalse(self.match(IDType.USER_FQDN, b"@example.org"))
        self.assertFalse(self.match(IDType.USER_FQDN, b"Alice.Smith@Example.ORG\xff"))

    def test_der_asn1_dn_exact(self):
        """ID_DER_ASN1_DN equal to the subject's DER matches; another CN does not."""
        self.assertTrue(self.match(IDType.DER_ASN1_DN, self.cert.subject.public_bytes()))
        self.assertFalse(self.match(IDType.DER_ASN1_DN, pki.name("gw p384").public_bytes()))

    def test_der_asn1_dn_normalized(self):
        """A DN differing only in case, spacing and string type matches (RFC 5280 section 7.1 style)."""
        # The subject is C=CH (PrintableString), O=gdoiserver tests, CN=gw p256 (UTF8String).
        variant = dn_der(
            (OID_C, UTF8, "ch"),  # countryName as UTF8String, lower case
            (OID_O, PRINTABLE, "GDOISERVER   tests "),  # organizationName, upper case, extra spaces
            (OID_CN, UTF8, " gw  P256"),  # commonName, leading and doubled spaces
        )
        self.assertNotEqual(variant, self.cert.subject.public_bytes())
        self.assertTrue(self.match(IDType.DER_ASN1_DN, variant))

    def test_der_asn1_dn_mismatch_and_garbage(self):
        """Another value, another RDN order, trailing octets or malformed DER do not match."""
        self.assertFalse(self.match(IDType.DER_ASN1_DN, dn_der((OID_C, PRINTABLE, "CH"), (OID_O, UTF8, "x"),
                                                                (OID_CN, UTF8, "gw p256"))))  # fmt: skip
        self.assertFalse(self.match(IDType.DER_ASN1_DN, dn_der((OID_CN, UTF8, "gw p256"),
                                                                (OID_O, UTF8, "gdoiserver tests"),
                                                                (OID_C, PRINTABLE, "CH"))))  # fmt: skip
        self.assertFalse(self.match(IDType.DER_ASN1_DN, self.cert.subject.public_bytes() + b"\x00"))
        self.assertFalse(self.match(IDType.DER_ASN1_DN, b"\x30\x05\x31\x03\x30"))
        self.assertFalse(self.match(IDType.DER_ASN1_DN, b"\xff"))

    def test_other_id_types_do_not_match(self):
        """KEY_ID, subnets and ranges never match a certificate."""
        self.assertFalse(self.match(IDType.KEY_ID, b"gw.example.org"))
        self.assertFalse(self.match(IDType.IPV4_ADDR_SUBNET, bytes.fromhex("c0000200ffffff00")))
        self.assertFalse(self.match(IDType.DER_ASN1_GN, b"\x30\x00"))

    def test_certificate_without_san(self):
        """Without subjectAltName only the DN can match."""
        bare = pki.issue("bare", pki.key("p256", 3), pki.hierarchy("p256").intermediate).certificate
        self.assertFalse(certs.identity_matches(bare, Identification.of("gw.example.org")))
        self.assertFalse(certs.identity_matches(bare, Identification.of("a@example.org")))
        self.assertFalse(certs.identity_matches(bare, Identification.of(ipaddress.ip_address("192.0.2.10"))))
        dn = Identification(IDType.DER_ASN1_DN, 0, 0, bare.subject.public_bytes())
        self.assertTrue(certs.identity_matches(bare, dn))


class PayloadTests(unittest.TestCase):
    """CERT and CR payloads (RFC 2408 sections 3.9, 3.10 and 5.6)."""

    def setUp(self):
        self.h = pki.hierarchy("rsa2048")

    def test_certificate_payload_round_trip(self):
        """A CERT payload carries encoding 4 then the DER certificate, and decodes back to it."""
        payload = certs.certificate_payload(self.h.leaf.certificate)
        der = self.h.leaf.certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(payload, Certificate(CertEncoding.X509_SIGNATURE, der))
        wire = encode_chain([payload], Context())
        self.assertEqual(wire[4], 4)  # Cert Encoding octet after the 4-octet generic header
        self.assertEqual(wire[5:], der)
        decoded, _ = decode_chain(payload.payload_type, wire, Context())
        self.assertEqual(certs.certificates_from_payloads(decoded), (self.h.leaf.certificate,))

    def test_certificates_from_payloads(self):
        """X.509 CERT payloads come back in order; other payloads and other encodings are skipped."""
        leaf, inter = certs.certificate_payload(self.h.leaf.certificate), certs.certificate_payload(
            self.h.intermediate.certificate
        )
        crl = Certificate(CertEncoding.CRL, b"\x30\x00")
        got = certs.certificates_from_payloads([Nonce(bytes(16)), leaf, crl, inter])
        self.assertEqual(got, (self.h.leaf.certificate, self.h.intermediate.certificate))
        self.assertEqual(certs.certificates_from_payloads([Nonce(bytes(16))]), ())

    def test_only_unsupported_encodings(self):
        """CERT payloads none of which is X.509 signature: CERT-TYPE-UNSUPPORTED."""
        with self.assertRaises(certs.CertificateError) as cm:
            certs.certificates_from_payloads([Certificate(CertEncoding.PGP, b"p"), Certificate(CertEncoding.CRL, b"x")])
        self.assertEqual(cm.exception.notify, NotifyType.CERT_TYPE_UNSUPPORTED)

    def test_garbage_certificate_data(self):
        """Encoding 4 with data that is not a DER certificate: INVALID-CERTIFICATE."""
        with self.assertRaises(certs.CertificateError) as cm:
            certs.certificates_from_payloads([Certificate(CertEncoding.X509_SIGNATURE, b"\x30\x03\x02\x01\x00")])
        self.assertEqual(cm.exception.notify, NotifyType.INVALID_CERTIFICATE)

    def test_certificate_request(self):
        """One CR per trust anchor, encoding 4 with the CA's DER DN; duplicates give one."""
        other = pki.hierarchy("p256").root.certificate
        trust = certs.TrustStore((self.h.root.certificate, other, self.h.root.certificate))
        self.assertEqual(
            certs.certificate_request(trust),
            (
                CertificateRequest(CertEncoding.X509_SIGNATURE, self.h.root.certificate.subject.public_bytes()),
                CertificateRequest(CertEncoding.X509_SIGNATURE, other.subject.public_bytes()),
            ),
        )
        self.assertEqual(certs.certificate_request(certs.TrustStore(())), ())


class LoadTests(unittest.TestCase):
    """Credentials.load and TrustStore.load read PEM and DER files; the key file must be 0600 or stricter."""

    def setUp(self):
        self.h = pki.hierarchy("p256")

    def test_load_pem_with_chain(self):
        """PEM certificate, PEM key (0600) and a chain file give the credentials."""
        cert = pki.write_certificates(self.mktemp(), self.h.leaf.certificate)
        chain = pki.write_certificates(self.mktemp(), self.h.intermediate.certificate)
        key = pki.write_key(self.mktemp(), self.h.leaf.key)
        creds = certs.Credentials.load(cert, key, [chain])
        self.assertEqual(creds.certificate, self.h.leaf.certificate)
        self.assertEqual(creds.chain, (self.h.intermediate.certificate,))
        self.assertEqual(creds.private_key.private_numbers(), self.h.leaf.key.private_numbers())

    def test_load_der_and_bundle(self):
        """DER certificate and key (0400) load; a PEM bundle's further certificates join the chain."""
        key = pki.write_key(self.mktemp(), self.h.leaf.key, der=True, mode=0o400)
        der = pki.write_certificates(self.mktemp(), self.h.leaf.certificate, der=True)
        self.assertEqual(certs.Credentials.load(der, key).chain, ())
        bundle = pki.write_certificates(self.mktemp(), self.h.leaf.certificate, self.h.intermediate.certificate)
        self.assertEqual(certs.Credentials.load(bundle, key).chain, (self.h.intermediate.certificate,))

    def test_key_file_permissions(self):
        """A key readable by group or others, or with the execute bit, is refused and the error names the file."""
        cert = pki.write_certificates(self.mktemp(), self.h.leaf.certificate)
        for mode in (0o644, 0o640, 0o604, 0o700):
            key = pki.write_key(self.mktemp(), self.h.leaf.key, mode=mode)
            with self.assertRaises(certs.CredentialsError) as cm:
                certs.Credentials.load(cert, key)
            self.assertIn(key, str(cm.exception))
            self.assertIn("0600", str(cm.exception))

    def test_mismatched_encrypted_and_garbage(self):
        """A key of another certificate, an encrypted key, or files that are no key/certificate are refused."""
        cert = pki.write_certificates(self.mktemp(), self.h.leaf.certificate)
        with self.assertRaises(certs.CredentialsError):
            certs.Credentials.load(cert, pki.write_key(self.mktemp(), pki.key("p256", 4)))
        with self.assertRaises(certs.CredentialsError):
            certs.Credentials.load(cert, pki.write_key(self.mktemp(), self.h.leaf.key, password=b"secret"))
        garbage = self.mktemp()
        with open(garbage, "wb") as f:
            f.write(b"not a key")
        os.chmod(garbage, 0o600)
        with self.assertRaises(certs.CredentialsError):
            certs.Credentials.load(cert, garbage)
        with self.assertRaises(certs.CredentialsError):
            certs.Credentials.load(garbage, pki.write_key(self.mktemp(), self.h.leaf.key))

    def test_unsupported_curve_refused(self):
        """A key on a curve no ECDSA method uses (secp256k1) cannot make credentials."""
        k = ec.generate_private_key(ec.SECP256K1())
        cert = pki.issue("k1", k, self.h.intermediate).certificate
        with self.assertRaises(certs.CredentialsError):
            certs.Credentials(cert, (), k)

    def test_repr_hides_private_key(self):
        """The private key never shows in a repr."""
        creds = certs.Credentials(self.h.leaf.certificate, (), self.h.leaf.key)
        self.assertNotIn("private_key", repr(creds))
        self.assertNotIn(str(self.h.leaf.key.private_numbers().private_value), repr(creds))

    def test_trust_store_load(self):
        """A PEM bundle of two CAs and a DER file give three trust anchors, in order."""
        other = pki.hierarchy("p384")
        bundle = pki.write_certificates(self.mktemp(), self.h.root.certificate, other.root.certificate)
        der = pki.write_certificates(self.mktemp(), other.intermediate.certificate, der=True)
        trust = certs.TrustStore.load([bundle, der])
        self.assertEqual(
            trust.certificates, (self.h.root.certificate, other.root.certificate, other.intermediate.certificate)
        )
        certs.validate_chain(trust, self.h.leaf.certificate, [self.h.intermediate.certificate], pki.NOW)


class RevocationTests(unittest.TestCase):
    """CRLs in the trust store (RFC 5280 sections 5 and 6.3, RFC 4945 section 5.2): a certificate listed by a CRL of
    its issuer is refused; a CRL must be signed by that issuer and current, or the certificate is refused too."""

    def setUp(self):
        self.h = pki.hierarchy("p256")
        self.chain = [self.h.intermediate.certificate]

    def trust(self, *crls):
        return certs.TrustStore((self.h.root.certificate,), crls)

    def assertRefused(self, trust, leaf=None, now=pki.NOW) -> str:
        with self.assertRaises(certs.CertificateError) as cm:
            certs.validate_chain(trust, leaf or self.h.leaf.certificate, self.chain, now)
        self.assertEqual(cm.exception.notify, NotifyType.INVALID_CERTIFICATE, cm.exception.reason)
        return cm.exception.reason

    def test_revoked_leaf(self):
        """The leaf's serial in a current CRL of the intermediate: refused, and the reason names the certificate,
        its serial, the CRL's issuer and the CRL reason code."""
        leaf = self.h.leaf.certificate
        listed = pki.crl(self.h.intermediate, [(leaf, x509.ReasonFlags.key_compromise)])
        reason = self.assertRefused(self.trust(listed))
        self.assertIn(f"certificate {leaf.subject.rfc4514_string()} (serial {leaf.serial_number:x}) was revoked by "
                      f"{self.h.intermediate.certificate.subject.rfc4514_string()}", reason)
        self.assertIn("reason keyCompromise", reason)

    def test_unlisted_leaf_and_other_issuers(self):
        """A CRL that lists other serials passes the leaf; CRLs of unrelated CAs play no part; an issuer without a
        CRL is not checked."""
        other = pki.issue("other gw", pki.key("p256", 3), self.h.intermediate).certificate
        unrelated = pki.hierarchy("p384")
        crls = (pki.crl(self.h.intermediate, [other]), pki.crl(unrelated.intermediate, [self.h.leaf.certificate]))
        for trust in (self.trust(*crls), self.trust(crls[1]), self.trust()):
            self.assertEqual(certs.validate_chain(trust, self.h.leaf.certificate, self.chain, pki.NOW),
                             self.h.leaf.certificate)

    def test_revoked_intermediate(self):
        """The root's CRL lists the intermediate: every leaf under it is refused."""
        reason = self.assertRefused(self.trust(pki.crl(self.h.root, [self.h.intermediate.certificate])))
        self.assertIn(self.h.intermediate.certificate.subject.rfc4514_string(), reason)
        self.assertIn("was revoked by", reason)

    def test_revoke_helper(self):
        """tests.pki.revoke gives a leaf that validates without its CRL and is refused with it."""
        r = pki.revoke("revoked gw", pki.key("p256", 3), self.h.intermediate)
        certs.validate_chain(self.trust(), r.leaf.certificate, self.chain, pki.NOW)
        self.assertIn("was revoked", self.assertRefused(self.trust(r.crl), r.leaf.certificate))

    def test_expired_crl_is_an_error(self):
        """A CRL past its nextUpdate leaves the revocation status unknown: the leaf is refused, not passed; one
        second before nextUpdate it still counts."""
        stale = pki.crl(self.h.intermediate, [], this_update=pki.NOW - 8 * pki.DAY, next_update=pki.NOW - pki.DAY)
        reason = self.assertRefused(self.trust(stale))
        self.assertIn(f"expired at {stale.next_update_utc}", reason)
        self.assertIn("revocation status", reason)
        at_end = stale.next_update_utc
        certs.validate_chain(self.trust(stale), self.h.leaf.certificate, self.chain, at_end)
        self.assertRefused(self.trust(stale), now=at_end + pki.datetime.timedelta(seconds=1))

    def test_crl_not_yet_valid(self):
        """A CRL whose thisUpdate lies after now is refused the same way."""
        future = pki.crl(self.h.intermediate, [], this_update=pki.NOW + pki.DAY, next_update=pki.NOW + 8 * pki.DAY)
        self.assertIn("not valid before", self.assertRefused(self.trust(future)))

    def test_newest_crl_decides_currency(self):
        """With an old expired CRL and a current one, the current one counts; a serial listed by either is
        revoked."""
        stale = pki.crl(self.h.intermediate, [self.h.leaf.certificate], this_update=pki.NOW - 30 * pki.DAY,
                        next_update=pki.NOW - 20 * pki.DAY)
        fresh = pki.crl(self.h.intermediate, [], number=2)
        certs.validate_chain(self.trust(fresh, pki.crl(self.h.intermediate, [], this_update=pki.NOW - 9 * pki.DAY,
                                                       next_update=pki.NOW - 2 * pki.DAY)),
                             self.h.leaf.certificate, self.chain, pki.NOW)
        self.assertIn("was revoked", self.assertRefused(self.trust(stale, fresh)))

    def test_crl_not_signed_by_the_issuer(self):
        """A CRL with the intermediate's name signed by another key is no CRL of the intermediate: the status is
        unknown and the leaf refused (an intermediate comes from the peer, so this shows only at validation)."""
        forged = pki.crl(self.h.intermediate, [], signing_key=pki.key("p256", 4))
        self.assertIn("no CRL of", self.assertRefused(self.trust(forged)))

    def test_issuer_without_crl_sign(self):
        """An intermediate whose keyUsage lacks cRLSign may not sign CRLs (RFC 5280 section 6.3.3 (f))."""
        usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                              encipher_only=False, decipher_only=False)
        inter = pki.issue("Test Intermediate CA p256", pki.key("p256", 1), self.h.root, ca=True, key_usage=usage)
        leaf = pki.issue("gw", pki.key("p256", 2), inter).certificate
        self.chain = [inter.certificate]
        self.assertIn("no CRL of", self.assertRefused(self.trust(pki.crl(inter, [])), leaf))

    def test_forged_crl_of_an_anchor_refused_when_added(self):
        """A CRL naming a trust anchor but not signed by it cannot even join the store: CredentialsError."""
        forged = pki.crl(self.h.root, [], signing_key=pki.key("p256", 4))
        with self.assertRaises(certs.CredentialsError) as cm:
            self.trust(forged)
        self.assertIn("not signed by the CA certificate", str(cm.exception))
        self.trust(pki.crl(self.h.root, []))

    def test_crls_that_cannot_be_applied(self):
        """No nextUpdate, a delta CRL (critical DeltaCRLIndicator) or a critical entry extension: CredentialsError
        when the store is made."""
        no_next = pki.crl(self.h.intermediate, [], next_update=None)
        self.assertIsNone(no_next.next_update_utc)
        delta = pki.crl(self.h.intermediate, [], extensions=[(x509.DeltaCRLIndicator(1), True)])
        for bad, words in ((no_next, "nextUpdate"), (delta, "critical extensions 2.5.29.27")):
            with self.assertRaises(certs.CredentialsError) as cm:
                self.trust(bad)
            self.assertIn(words, str(cm.exception))

    def test_load_pem_bundle_and_der(self):
        """TrustStore.load reads CRLs from a PEM file of two CRLs and a DER file; with_crls adds a file's CRLs and
        names the file when one is refused; garbage is refused."""
        leaf = self.h.leaf.certificate
        pem = pki.write_crls(self.mktemp(), pki.crl(self.h.root, []), pki.crl(self.h.intermediate, [leaf]))
        der = pki.write_crls(self.mktemp(), pki.crl(self.h.intermediate, [], number=2), der=True)
        root_pem = pki.write_certificates(self.mktemp(), self.h.root.certificate)
        trust = certs.TrustStore.load([root_pem], [pem, der])
        self.assertEqual(len(trust.crls), 3)
        self.assertIn("was revoked", self.assertRefused(trust))
        self.assertEqual(certs.TrustStore.load([root_pem]).with_crls(der).crls, trust.crls[2:])
        forged = pki.write_crls(self.mktemp(), pki.crl(self.h.root, [], signing_key=pki.key("p256", 4)))
        garbage = self.mktemp()
        with open(garbage, "wb") as f:
            f.write(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
        for path, words in ((forged, "not signed by"), (garbage, "not a PEM or DER X.509 CRL"),
                            (root_pem, "not a PEM or DER X.509 CRL")):
            with self.assertRaises(certs.CredentialsError) as cm:
                certs.TrustStore.load([root_pem]).with_crls(path)
            self.assertIn(path, str(cm.exception))
            self.assertIn(words, str(cm.exception))

    def test_openssl_agrees(self):
        """`openssl verify -crl_check` refuses the revoked leaf ("certificate revoked") and accepts another leaf of
        the same intermediate, with the same CRL."""
        openssl = need("openssl")
        r = pki.revoke("revoked gw", pki.key("p256", 3), self.h.intermediate)
        good = pki.issue("good gw", pki.key("p256", 4), self.h.intermediate).certificate
        root = pki.write_certificates(self.mktemp(), self.h.root.certificate)
        inter = pki.write_certificates(self.mktemp(), self.h.intermediate.certificate)
        crl = pki.write_crls(self.mktemp(), r.crl)
        trust = certs.TrustStore.load([root], [crl])
        for leaf, ok in ((r.leaf.certificate, False), (good, True)):
            path = pki.write_certificates(self.mktemp(), leaf)
            proc = subprocess.run([openssl, "verify", "-attime", str(int(pki.NOW.timestamp())), "-crl_check",
                                   "-CAfile", root, "-untrusted", inter, "-CRLfile", crl, path],
                                  capture_output=True, text=True, timeout=30)
            self.assertEqual(proc.returncode == 0, ok, proc.stdout + proc.stderr)
            if ok:
                certs.validate_chain(trust, leaf, self.chain, pki.NOW)
            else:
                self.assertIn("certificate revoked", proc.stdout + proc.stderr)
                self.assertIn("was revoked", self.assertRefused(trust, leaf))


#: One strongSwan connection per key type; both negotiate SHA-1, so the ECDSA HASH_I shows its own prf (SHA-256).
STRONGSWAN_CONNECTION = """
  mm-{kind} {{
    version = 1
    local_addrs = {local}
    remote_addrs = {remote}
    {port}
    proposals = aes128-sha1-ecp256
    rekey_time = 0
    dpd_delay = 0
    send_cert = always
    local {{
      auth = pubkey
      certs = {kind}-{side}.pem
      id = {kind}-{side}.test
    }}
    remote {{
      auth = pubkey
      id = {kind}-{other}.test
    }}
    children {{
      qm {{
        mode = tunnel
        local_ts = 127.0.0.1/32
        remote_ts = 127.0.0.1/32
        esp_proposals = aes128gcm16
        rekey_time = 0
      }}
    }}
  }}
"""


class StrongSwanSignatureTests(unittest.TestCase):
    """strongSwan 5.9's own IKEv1 SIG payloads verify with verify() over the HASH_I and HASH_R it logged."""

    def test_strongswan_signatures_verify(self):
        """charon signs HASH_I/HASH_R raw (RSA, no DigestInfo) and as the ECDSA digest, with HMAC-SHA-256 for ECDSA.

        Two Main Mode connections negotiate aes128-sha1-ecp256, one authenticated with RSA-2048 certificates and
        one with ECDSA P-256 certificates.  charon's log (ike level 4) gives SKEYID, each HASH's input and value;
        tshark decrypts the capture with charon's Ka and gives the SIG payloads.
        """
        sw.require()
        tshark.require_tshark()
        now = datetime.datetime.now(datetime.timezone.utc)
        valid = dict(not_before=now - pki.DAY, not_after=now + pki.DAY)
        pem = serialization.Encoding.PEM
        files, issued = {}, {}
        for kind in ("rsa2048", "p256"):
            root = pki.issue("strongSwan test CA " + kind, pki.key(kind, 0), ca=True, **valid)
            for side, slot in ((sw.INITIATOR, 1), (sw.RESPONDER, 2)):
                leaf = pki.issue(f"{kind} {side}", pki.key(kind, slot), root, sans=(f"{kind}-{side}.test",), **valid)
                issued[kind, side] = leaf.certificate
                files[f"{side}/x509ca/{kind}-ca.pem"] = root.certificate.public_bytes(pem)
                files[f"{side}/x509/{kind}-{side}.pem"] = leaf.certificate.public_bytes(pem)
                files[f"{side}/private/{kind}-{side}.key"] = leaf.key.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
        workdir = tempfile.mkdtemp(prefix="gdoi-sig")
        self.addCleanup(shutil.rmtree, workdir, True)
        dirs = sw.prepare(workdir, profiles=("rsa",), files=files)
        for side, other, local, remote, port in (
            (sw.INITIATOR, sw.RESPONDER, "127.0.0.1", "127.0.0.2", "remote_port = 500"),
            (sw.RESPONDER, sw.INITIATOR, "127.0.0.2", "127.0.0.1", ""),
        ):
            conns = "".join(
                STRONGSWAN_CONNECTION.format(kind=k, side=side, other=other, local=local, remote=remote, port=port)
                for k in ("rsa2048", "p256")
            )
            (dirs[side] / "swanctl.conf").write_text("connections {" + conns + "}\n")
        run = sw.run(workdir, initiate=("mm-rsa2048", "mm-p256"))
        run.check_established()

        # The initiator's log: {(connection, label): octets} for SKEYID and both HASHes with their inputs.
        logged = {}
        for label in ("SKEYID", "HASH_I data", "HASH_I", "HASH_R data", "HASH_R"):
            for tag, data in sw._logged_chunks(run.logs[sw.INITIATOR], label):
                logged[tag.partition("|")[0], label] = data
        uat = [f"-ouat:ikev1_decryption_table:{cky.hex()},{ka.hex()}" for cky, ka in run.encryption_keys().items()]
        self.assertEqual(len(uat), 2, run.tails())
        proc = subprocess.run(
            [tshark.TSHARK, "-n", "-r", str(run.pcap), *uat, "-Y", "isakmp.sig", "-T", "fields", "-e", "ip.src",
             "-e", "isakmp.sig"],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=workdir),
        )  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stderr)
        fields = proc.stdout.split()
        signatures = {(src, len(bytes.fromhex(sig))): bytes.fromhex(sig) for src, sig in zip(fields[::2], fields[1::2])}
        sha1 = hash_algorithm(OakleyHash.SHA)
        cases = (("rsa2048", OakleyAuth.RSA_SIGNATURES, 256), ("p256", OakleyAuth.ECDSA_SHA256_P256, 64))
        for kind, auth, size in cases:
            conn = f"mm-{kind}"
            prf = certs.hash_for_auth(auth, sha1)
            for side, address, label in ((sw.INITIATOR, "127.0.0.1", "HASH_I"), (sw.RESPONDER, "127.0.0.2", "HASH_R")):
                h = logged[conn, label]
                self.assertEqual(h, prf.prf(logged[conn, "SKEYID"], logged[conn, label + " data"]), (kind, label))
                self.assertEqual(len(h), 20 if kind == "rsa2048" else 32)
                sig = signatures[address, size]
                self.assertTrue(certs.verify(issued[kind, side], auth, h, sig), (kind, label))
                self.assertFalse(certs.verify(issued[kind, side], auth, flip(h, 0), sig), (kind, label))
