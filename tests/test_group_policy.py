"""Group policy objects (gdoiserver.group.policy): group names, member rules, TEK and KEK policies, rekey transport."""

import ipaddress

from cryptography.hazmat.primitives.asymmetric import dsa, ed25519
from cryptography.hazmat.primitives.serialization import load_der_public_key
from twisted.trial import unittest

from gdoiserver.codec.constants import AuthAlgorithm, ESPTransformID, IDType, NotifyType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import SigAlgorithm
from gdoiserver.codec.payloads import Identification
from gdoiserver.group.policy import (
    CertificateAttributes,
    ExactIdentity,
    GAPPolicy,
    GroupId,
    GroupPolicy,
    IdentityPattern,
    KEKPolicy,
    Member,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
    identity_text,
    oid_der,
    oid_dotted,
)
from tests import pki

NET, IP = ipaddress.ip_network, ipaddress.ip_address
MULTICAST_V4 = TrafficSelector(NET("0.0.0.0/0"), NET("239.1.1.1/32"))
MULTICAST_V6 = TrafficSelector(NET("2001:db8::/32"), NET("ff3e::1234/128"), 17, 0, 5004)


def cbc(name="cbc", **kw):
    return TEKPolicy(name, TEKTransform.AES_CBC, MULTICAST_V4, integrity="hmac-sha256", **kw)


class GroupIdTests(unittest.TestCase):
    def test_number_identification(self):
        """A group number becomes ID_KEY_ID with four octets in network order, and reads back (RFC 6407 5.1.1)."""
        ident = GroupId(number=1234).identification()
        self.assertEqual((ident.id_type, ident.data), (IDType.KEY_ID, b"\x00\x00\x04\xd2"))
        self.assertEqual(GroupId.from_identification(ident), GroupId(number=1234))

    def test_oid_identification(self):
        """An OID becomes ID_OID (13) carrying the whole DER encoding, tag and length included (RFC 8052 section 4,
        as read by the IEC 61850 implementation docs/wire-format.md names)."""
        gid = GroupId(oid="1.2.840.10070.61850.8.1.2")
        ident = gid.identification()
        self.assertEqual(ident.id_type, IDType.OID)
        self.assertEqual(ident.data, bytes.fromhex("060b2a8648ce5683e31a080102"))
        self.assertEqual(GroupId.from_identification(ident), gid)

    def test_refused_identifications(self):
        """IDs that name no group are INVALID-ID-INFORMATION: another type, a 3-octet KEY_ID, a bad DER OID."""
        for ident in (Identification.of("gm.example.org"), Identification(IDType.KEY_ID, 0, 0, b"\1\2\3"),
                      Identification(IDType.OID, 0, 0, b"\x06\x05\x2a"), Identification(IDType.OID, 0, 0,
                                                                                       oid_der("1.2.3") + b"\0")):
            e = self.assertRaises(DecodeError, GroupId.from_identification, ident)
            self.assertEqual(e.notify, NotifyType.INVALID_ID_INFORMATION)

    def test_exactly_one_name(self):
        """A GroupId is a number or an OID, not both or neither; numbers fit 32 bits."""
        self.assertRaises(ValueError, GroupId)
        self.assertRaises(ValueError, GroupId, 1, "1.2.3")
        self.assertRaises(ValueError, GroupId, 1 << 32)
        self.assertRaises(ValueError, GroupId, None, "not.an.oid")

    def test_oid_round_trip(self):
        """oid_der and oid_dotted are inverse; trailing octets are refused."""
        self.assertEqual(oid_dotted(oid_der("1.3.6.1.4.1.99999.1")), "1.3.6.1.4.1.99999.1")
        self.assertRaises(ValueError, oid_dotted, b"\x04\x01\x00")


class MemberRuleTests(unittest.TestCase):
    def member(self, ident, certificate=None):
        return Member(Identification.of(ident) if isinstance(ident, str) else ident, certificate)

    def test_exact_identity_ignores_case_of_names(self):
        """An exact FQDN rule matches the same name in another case, and nothing else (RFC 4343)."""
        rule = ExactIdentity(Identification.of("GM1.example.org"))
        self.assertTrue(rule.matches(self.member("gm1.EXAMPLE.org")))
        self.assertFalse(rule.matches(self.member("gm2.example.org")))
        self.assertFalse(rule.matches(self.member(Identification(IDType.KEY_ID, 0, 0, b"gm1.example.org"))))

    def test_exact_address(self):
        """An exact address rule compares the address octets."""
        rule = ExactIdentity(Identification.of(IP("192.0.2.7")))
        self.assertTrue(rule.matches(self.member(Identification.of(IP("192.0.2.7")))))
        self.assertFalse(rule.matches(self.member(Identification.of(IP("192.0.2.8")))))

    def test_pattern(self):
        """A wildcard pattern matches the identity's text without case; id_type restricts the ID type."""
        rule = IdentityPattern("*.site1.example.org")
        self.assertTrue(rule.matches(self.member("gm7.Site1.example.org")))
        self.assertFalse(rule.matches(self.member("gm7.site2.example.org")))
        self.assertTrue(IdentityPattern("10.1.*").matches(self.member(Identification.of(IP("10.1.2.3")))))
        only_fqdn = IdentityPattern("*@example.org", IDType.FQDN)
        self.assertFalse(only_fqdn.matches(self.member("gm@example.org")))
        self.assertTrue(IdentityPattern("*@example.org").matches(self.member("gm@example.org")))

    def test_pattern_ignores_binary_identities(self):
        """A pattern never matches an ID type without a text form (KEY_ID, DN), even "*"."""
        self.assertFalse(IdentityPattern("*").matches(self.member(Identification(IDType.KEY_ID, 0, 0, b"x"))))

    def test_certificate_attributes(self):
        """A certificate rule matches a certificate valid for its DNS name (wildcards in the certificate, RFC 6125)
        and IP address; a member without a certificate never matches."""
        cert = pki.issue("gm", pki.key("p256"), sans=("*.members.example.org", IP("192.0.2.9"))).certificate
        self.assertTrue(CertificateAttributes(dns="gm5.members.example.org").matches(self.member("x", cert)))
        self.assertTrue(CertificateAttributes(ip="192.0.2.9").matches(self.member("x", cert)))
        self.assertTrue(CertificateAttributes("a.members.example.org", "192.0.2.9").matches(self.member("x", cert)))
        self.assertFalse(CertificateAttributes(dns="gm5.other.example.org").matches(self.member("x", cert)))
        self.assertFalse(CertificateAttributes("a.members.example.org", "192.0.2.10").matches(self.member("x", cert)))
        self.assertFalse(CertificateAttributes(dns="gm5.members.example.org").matches(self.member("x")))
        self.assertRaises(ValueError, CertificateAttributes)

    def test_identity_text(self):
        """identity_text shows names and addresses as text and other types as the type and hex."""
        self.assertEqual(identity_text(Identification.of("gm@example.org")), "gm@example.org")
        self.assertEqual(identity_text(Identification.of(IP("2001:db8::1"))), "2001:db8::1")
        self.assertEqual(identity_text(Identification(IDType.KEY_ID, 0, 0, b"\xab")), "key_id:ab")
        self.assertEqual(identity_text(Identification(IDType.FQDN, 0, 0, b"\xff")), "fqdn:ff")


class TEKPolicyTests(unittest.TestCase):
    def test_cbc(self):
        """AES-CBC with HMAC-SHA2: transform 12, the AES key alone, the HMAC key of RFC 4868, not counter mode."""
        for name, alg, size in (("hmac-sha256", AuthAlgorithm.HMAC_SHA2_256, 32),
                                ("hmac-sha384", AuthAlgorithm.HMAC_SHA2_384, 48),
                                ("hmac-sha512", AuthAlgorithm.HMAC_SHA2_512, 64)):
            t = TEKPolicy("t", TEKTransform.AES_CBC, MULTICAST_V4, 192, name)
            self.assertEqual((t.transform_id, t.auth_algorithm, t.encryption_key_size, t.integrity_key_size,
                              t.counter_mode), (ESPTransformID.AES_CBC, alg, 24, size, False))

    def test_gcm(self):
        """AES-GCM: the ICV length picks transform 18, 19 or 20; the key carries a 4-octet salt (RFC 4106 8.1);
        no integrity algorithm; a counter mode."""
        for icv, tid in ((64, ESPTransformID.AES_GCM_8), (96, ESPTransformID.AES_GCM_12),
                         (128, ESPTransformID.AES_GCM_16)):
            t = TEKPolicy("t", TEKTransform.AES_GCM, MULTICAST_V6, 256, icv_bits=icv)
            self.assertEqual((t.transform_id, t.auth_algorithm, t.encryption_key_size, t.integrity_key_size,
                              t.counter_mode), (tid, None, 36, 0, True))

    def test_ctr(self):
        """AES-CTR: transform 13, key plus a 4-octet nonce (RFC 3686 5.1), HMAC-SHA2 integrity, a counter mode."""
        t = TEKPolicy("t", TEKTransform.AES_CTR, MULTICAST_V4, 128, "hmac-sha512")
        self.assertEqual((t.transform_id, t.encryption_key_size, t.integrity_key_size, t.counter_mode),
                         (ESPTransformID.AES_CTR, 20, 64, True))

    def test_refused_combinations(self):
        """GCM with an integrity algorithm, CBC or CTR without one, odd key or ICV sizes and lifetimes are refused."""
        self.assertRaises(ValueError, TEKPolicy, "t", TEKTransform.AES_GCM, MULTICAST_V4, integrity="hmac-sha256")
        self.assertRaises(ValueError, TEKPolicy, "t", TEKTransform.AES_CBC, MULTICAST_V4)
        self.assertRaises(ValueError, TEKPolicy, "t", TEKTransform.AES_CTR, MULTICAST_V4, integrity="hmac-md5")
        self.assertRaises(ValueError, cbc, key_bits=64)
        self.assertRaises(ValueError, TEKPolicy, "t", TEKTransform.AES_GCM, MULTICAST_V4, icv_bits=32)
        self.assertRaises(ValueError, cbc, lifetime=0)

    def test_selectors(self):
        """Source and destination must be of one IP version; a single multicast destination is multicast."""
        self.assertRaises(ValueError, TrafficSelector, NET("0.0.0.0/0"), NET("ff3e::1/128"))
        self.assertRaises(ValueError, TrafficSelector, NET("0.0.0.0/0"), NET("239.1.1.1/32"), 256)
        self.assertTrue(MULTICAST_V4.multicast and MULTICAST_V6.multicast)
        self.assertFalse(TrafficSelector(NET("10.1.0.0/16"), NET("10.2.0.0/16")).multicast)


class KEKPolicyTests(unittest.TestCase):
    def test_algorithms(self):
        """The signature algorithm and key length follow the key: RSA, ECDSA P-256/384/521 (RFC 6407 5.3)."""
        for kind, alg, bits in (("rsa2048", SigAlgorithm.SIG_ALG_RSA, 2048),
                                ("p256", SigAlgorithm.SIG_ALG_ECDSA_256, 256),
                                ("p384", SigAlgorithm.SIG_ALG_ECDSA_384, 384),
                                ("p521", SigAlgorithm.SIG_ALG_ECDSA_521, 521)):
            k = KEKPolicy(pki.key(kind))
            self.assertEqual((k.signature_algorithm, k.signature_key_bits), (alg, bits))
            public = load_der_public_key(k.public_key_der)
            self.assertEqual(public.public_numbers(), pki.key(kind).public_key().public_numbers())

    def test_refused(self):
        """Keys that cannot sign rekeys (DSA, Ed25519), odd AES sizes, unknown hashes are refused; the key is never
        in the repr."""
        self.assertRaises(ValueError, KEKPolicy, ed25519.Ed25519PrivateKey.generate())
        self.assertRaises(ValueError, KEKPolicy, dsa.generate_private_key(1024))
        self.assertRaises(ValueError, KEKPolicy, pki.key("p256"), 100)
        self.assertRaises(ValueError, KEKPolicy, pki.key("p256"), signature_hash="md5")
        self.assertNotIn("Private", repr(KEKPolicy(pki.key("p256"))))


class GroupPolicyTests(unittest.TestCase):
    def test_rekey_transport(self):
        """Rekeys go to a multicast group of the source's IP version and/or by unicast, somewhere."""
        src = IP("192.0.2.1")
        self.assertRaises(ValueError, RekeyTransport, src)
        self.assertRaises(ValueError, RekeyTransport, src, multicast_address=IP("192.0.2.2"))
        self.assertRaises(ValueError, RekeyTransport, src, multicast_address=IP("ff3e::1"))
        self.assertTrue(RekeyTransport(src, unicast=True).unicast)

    def test_gap(self):
        """GAP delays are 16-bit seconds."""
        self.assertRaises(ValueError, GAPPolicy, 1 << 16)
        self.assertEqual(GAPPolicy(30, 60).deactivation_delay, 60)

    def test_group(self):
        """A group has a name, a number and/or an OID, TEKs, a rekey transport with its KEK; authorizes() asks the
        member rules, and needs_sender_ids follows the counter-mode TEKs."""
        rules = (ExactIdentity(Identification.of("gm1.example.org")), IdentityPattern("*.site1.example.org"))
        g = GroupPolicy("g", (cbc(),), rules, number=7, oid="1.3.6.1.4.1.99999.7")
        self.assertEqual(g.ids, (GroupId(number=7), GroupId(oid="1.3.6.1.4.1.99999.7")))
        self.assertTrue(g.authorizes(Member(Identification.of("gm1.example.org"))))
        self.assertTrue(g.authorizes(Member(Identification.of("x.site1.example.org"))))
        self.assertFalse(g.authorizes(Member(Identification.of("gm2.example.org"))))
        self.assertFalse(g.needs_sender_ids)
        gcm = TEKPolicy("gcm", TEKTransform.AES_GCM, MULTICAST_V4)
        self.assertTrue(GroupPolicy("h", (cbc(), gcm), number=8).needs_sender_ids)
        self.assertFalse(GroupPolicy("nobody", (cbc(),), number=9).authorizes(Member(Identification.of("a.b"))))

    def test_group_refused(self):
        """A group without a name for itself, without TEKs, with two TEKs of one name, a KEK without a rekey
        transport, or a sender ID size outside 1-32 bits is refused."""
        self.assertRaises(ValueError, GroupPolicy, "g", (cbc(),))
        self.assertRaises(ValueError, GroupPolicy, "g", (), number=1)
        self.assertRaises(ValueError, GroupPolicy, "g", (cbc(), cbc()), number=1)
        self.assertRaises(ValueError, GroupPolicy, "g", (cbc(),), number=1, kek=KEKPolicy(pki.key("p256")))
        self.assertRaises(ValueError, GroupPolicy, "g", (cbc(),), number=1, sender_id_bits=33)
        self.assertRaises(ValueError, GroupPolicy, "g", (cbc(),), number=1, max_sender_ids=0)
