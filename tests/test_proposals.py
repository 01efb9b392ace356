"""Phase 1 proposals (gdoiserver.exchanges.proposals): our SA payload, reading a peer's transforms, and the
choice by our order of preference (RFC 2409 section 5 and appendix A; the issue's algorithm rules)."""

import attrs
from twisted.trial import unittest

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import DOI, OakleyAuth, OakleyEncryption, OakleyHash, ProtocolID
from gdoiserver.codec.payload import Context
from gdoiserver.codec.payloads import SA, Proposal, Transform
from gdoiserver.exchanges import proposals
from gdoiserver.exchanges.phase1 import Phase1Policy, Phase1Proposal

AES, TDES = OakleyEncryption.AES_CBC, OakleyEncryption.TRIPLEDES_CBC
SHA1, SHA256, SHA384, SHA512, MD5 = (OakleyHash.SHA, OakleyHash.SHA2_256, OakleyHash.SHA2_384, OakleyHash.SHA2_512,
                                     OakleyHash.MD5)
PSK, RSA = OakleyAuth.PRE_SHARED_KEY, OakleyAuth.RSA_SIGNATURES

AES256_SHA256_MODP2048 = Phase1Proposal(AES, 256, SHA256, PSK, 14, 28800)
AES128_SHA256_ECP256 = Phase1Proposal(AES, 128, SHA256, PSK, 19, 28800)
AES256_SHA512_ECP521 = Phase1Proposal(AES, 256, SHA512, PSK, 21, 3600)


def policy(*suites, **kw) -> Phase1Policy:
    return Phase1Policy(tuple(suites), **kw)


def T(number, *attributes, transform_id=1) -> Transform:
    """A transform from (attribute type, value) pairs."""
    return Transform(number, transform_id, tuple(Attribute(t, v) for t, v in attributes))


def suite(number, p: Phase1Proposal, life=None) -> Transform:
    """A peer's transform for ``p`` with Life Duration ``life`` (None: no life attributes at all)."""
    key_length = [(14, p.key_length)] if p.key_length else []
    attrs_ = [(1, p.encryption), *key_length, (2, p.hash), (3, p.auth), (4, p.group)]
    if life is not None:
        attrs_ += [(11, 1), (12, life)]
    return T(number, *attrs_)


def offer(*transforms, doi=DOI.IPSEC, number=1, protocol=ProtocolID.ISAKMP) -> SA:
    return SA(doi, 1, (Proposal(number, protocol, b"", tuple(transforms)),))


class SAPayloadTests(unittest.TestCase):
    """The initiator's SA payload (RFC 2409 section 5, appendix A)."""

    def test_bytes(self):
        """One ISAKMP proposal, one KEY_IKE transform per suite, attributes in appendix A order, field by field."""
        sa = proposals.sa_payload((AES256_SHA256_MODP2048, Phase1Proposal(TDES, None, SHA1, PSK, 14, 86400)))
        expected = bytes.fromhex(
            "00000001"  # DOI: IPsec
            "00000001"  # Situation: SIT_IDENTITY_ONLY
            "00000050"  # Proposal header: last proposal, RESERVED, length 80 (8 + 36 + 36)
            "01010002"  # Proposal #1, Protocol-Id PROTO_ISAKMP, SPI size 0, 2 transforms
            "03000024"  # Transform header: another transform follows, length 36
            "01010000"  # Transform #1, Transform-Id KEY_IKE, RESERVED2
            "80010007"  # Encryption Algorithm: AES-CBC (TV)
            "800e0100"  # Key Length: 256
            "80020004"  # Hash Algorithm: SHA2-256
            "80030001"  # Authentication Method: pre-shared key
            "8004000e"  # Group Description: 14
            "800b0001"  # Life Type: seconds
            "800c7080"  # Life Duration: 28800 (TV: it fits 16 bits)
            "00000024"  # Transform header: last transform, length 36
            "02010000"  # Transform #2, KEY_IKE
            "80010005"  # Encryption Algorithm: 3DES-CBC, no Key Length (a fixed-length cipher)
            "80020002"  # Hash Algorithm: SHA
            "80030001"  # Authentication Method: pre-shared key
            "8004000e"  # Group Description: 14
            "800b0001"  # Life Type: seconds
            "000c0004"  # Life Duration in TLV form, 4 octets: 86400 does not fit 16 bits
            "00015180"
        )
        self.assertEqual(sa.encode_body(Context()), expected)

    def test_doi(self):
        """The SA carries the DOI the exchange is for (GDOI members may run Phase 1 under DOI 2)."""
        self.assertEqual(proposals.sa_payload((AES128_SHA256_ECP256,), DOI.GDOI).doi, DOI.GDOI)

    def test_empty(self):
        """There is no SA payload without a suite."""
        self.assertRaises(ValueError, proposals.sa_payload, ())


class ReadTransformTests(unittest.TestCase):
    """A peer's transform read into a suite, or refused as unreadable."""

    def test_round_trip(self):
        """Our own transform reads back as the suite it came from."""
        for p in (AES256_SHA256_MODP2048, AES128_SHA256_ECP256, Phase1Proposal(TDES, None, SHA1, RSA, 2, 100000)):
            t = Transform(1, 1, proposals.transform_attributes(p))
            self.assertEqual(proposals.read_transform(t), p)

    def test_life_duration_zero_and_absent(self):
        """Life Duration 0 (strongSwan's MM1) and no life attributes both read as lifetime 0: none given."""
        self.assertEqual(proposals.read_transform(suite(1, AES128_SHA256_ECP256, life=0)).lifetime, 0)
        self.assertEqual(proposals.read_transform(suite(1, AES128_SHA256_ECP256)).lifetime, 0)

    def test_kilobytes_ignored(self):
        """A kilobyte lifetime next to a seconds lifetime leaves the seconds one (RFC 2409 appendix A)."""
        t = T(1, (1, AES), (14, 128), (2, SHA256), (3, PSK), (4, 19), (11, 2), (12, 1000), (11, 1), (12, 3600))
        self.assertEqual(proposals.read_transform(t).lifetime, 3600)

    def test_tlv_life_duration(self):
        """A Life Duration in TLV form is read as an unsigned integer."""
        t = T(1, (1, AES), (14, 128), (2, SHA256), (3, PSK), (4, 19), (11, 1), (12, b"\x00\x01\x51\x80"))
        self.assertEqual(proposals.read_transform(t).lifetime, 86400)

    def test_unreadable(self):
        """Missing, repeated, unknown or inconsistent attributes make a transform unreadable (None)."""
        base = [(1, AES), (14, 128), (2, SHA256), (3, PSK), (4, 19)]
        cases = {
            "no group": base[:4],
            "no hash": [a for a in base if a[0] != 2],
            "repeated hash": base + [(2, SHA1)],
            "a PRF": base + [(13, 1)],
            "a group prime": base + [(6, b"\x01" * 16)],
            "Life Duration without Life Type": base + [(12, 100)],
            "unknown Life Type": base + [(11, 3), (12, 100)],
            "MODP group type for an ECP group": base + [(5, 1)],
            "3DES with a 128-bit key": [(1, TDES), (14, 128), (2, SHA1), (3, PSK), (4, 14)],
        }
        for why, attributes in cases.items():
            self.assertIsNone(proposals.read_transform(T(1, *attributes)), why)
        self.assertIsNone(proposals.read_transform(T(1, *base, transform_id=2)), "Transform-Id other than KEY_IKE")
        self.assertIsNotNone(proposals.read_transform(T(1, *base, (5, 2))), "ECP group type for an ECP group")


class ChooseTests(unittest.TestCase):
    """The responder's choice (proposals.choose)."""

    def test_our_order_of_preference(self):
        """With two matches the responder takes the one it lists first, whatever the initiator's order."""
        sa = offer(suite(1, AES256_SHA256_MODP2048, 28800), suite(2, AES128_SHA256_ECP256, 28800))
        choice = proposals.choose(policy(AES128_SHA256_ECP256, AES256_SHA256_MODP2048), sa)
        self.assertEqual(choice.proposal, AES128_SHA256_ECP256)
        choice = proposals.choose(policy(AES256_SHA256_MODP2048, AES128_SHA256_ECP256), sa)
        self.assertEqual(choice.proposal, AES256_SHA256_MODP2048)

    def test_reply_echoes_the_chosen_transform(self):
        """The reply SA holds the peer's proposal number and SPI and exactly the transform it sent."""
        chosen = suite(7, AES128_SHA256_ECP256, 0)
        sa = SA(DOI.IPSEC, 1, (Proposal(3, ProtocolID.ISAKMP, b"", (suite(1, AES256_SHA512_ECP521, 0), chosen)),))
        reply = proposals.choose(policy(AES128_SHA256_ECP256), sa).reply
        self.assertEqual(reply, SA(DOI.IPSEC, 1, (Proposal(3, ProtocolID.ISAKMP, b"", (chosen,)),)))

    def test_lifetime(self):
        """Peer lifetime 0 or none: ours.  Otherwise the smaller of the two."""
        ours = policy(AES128_SHA256_ECP256)  # 28800 s
        for life, expected in ((None, 28800), (0, 28800), (3600, 3600), (86400, 28800)):
            choice = proposals.choose(ours, offer(suite(1, AES128_SHA256_ECP256, life)))
            self.assertEqual(choice.proposal.lifetime, expected, life)

    def test_no_proposal_chosen(self):
        """Nothing in common raises NoProposalChosen; so does an SA whose proposal is not for ISAKMP."""
        self.assertRaises(proposals.NoProposalChosen, proposals.choose, policy(AES128_SHA256_ECP256),
                          offer(suite(1, AES256_SHA256_MODP2048)))
        self.assertRaises(proposals.NoProposalChosen, proposals.choose, policy(AES128_SHA256_ECP256),
                          offer(suite(1, AES128_SHA256_ECP256), protocol=ProtocolID.IPSEC_ESP))

    def test_accept_filter(self):
        """``accept`` rules out suites of ours (e.g. no key for this peer); the next preference is taken."""
        rsa = attrs.evolve(AES128_SHA256_ECP256, auth=RSA)
        sa = offer(suite(1, rsa), suite(2, AES128_SHA256_ECP256))
        choice = proposals.choose(policy(rsa, AES128_SHA256_ECP256), sa, lambda p: p.auth == PSK)
        self.assertEqual(choice.proposal.auth, PSK)

    def test_weak_groups_need_opt_in(self):
        """MODP 1024 and 1536 (groups 2 and 5) match only with allow_weak_groups (Logjam)."""
        for group in (2, 5):
            weak = attrs.evolve(AES256_SHA256_MODP2048, group=group)
            sa = offer(suite(1, weak))
            self.assertRaises(proposals.NoProposalChosen, proposals.choose, policy(weak), sa)
            self.assertEqual(proposals.choose(policy(weak, allow_weak_groups=True), sa).proposal, weak)

    def test_3des_needs_opt_in(self):
        """3DES-CBC matches only with allow_legacy_3des."""
        tdes = Phase1Proposal(TDES, None, SHA256, PSK, 14)
        sa = offer(suite(1, tdes))
        self.assertRaises(proposals.NoProposalChosen, proposals.choose, policy(tdes), sa)
        self.assertEqual(proposals.choose(policy(tdes, allow_legacy_3des=True), sa).proposal, tdes)

    def test_never(self):
        """MD5, DES, group 1, RSA encryption and AES with an odd key length never match, whatever the opt-ins."""
        nevers = [
            attrs.evolve(AES128_SHA256_ECP256, hash=MD5),
            attrs.evolve(AES128_SHA256_ECP256, encryption=OakleyEncryption.DES_CBC, key_length=None),
            attrs.evolve(AES256_SHA256_MODP2048, group=1),
            attrs.evolve(AES128_SHA256_ECP256, auth=OakleyAuth.RSA_ENCRYPTION),
            attrs.evolve(AES128_SHA256_ECP256, key_length=64),
        ]
        for p in nevers:
            loose = policy(p, allow_weak_groups=True, allow_legacy_3des=True)
            self.assertRaises(proposals.NoProposalChosen, proposals.choose, loose, offer(suite(1, p)))
            self.assertIsNotNone(proposals.refusal(p, loose))

    def test_every_supported_suite(self):
        """Each AES key length, each SHA hash, each default group and each authentication method can be agreed."""
        for enc, kl in ((AES, 128), (AES, 192), (AES, 256)):
            for h in (SHA1, SHA256, SHA384, SHA512):
                for g in (14, 15, 16, 19, 20, 21):
                    for auth in (1, 3, 9, 10, 11):
                        p = Phase1Proposal(enc, kl, h, auth, g)
                        self.assertEqual(proposals.choose(policy(p), offer(suite(1, p))).proposal, p)

    def test_strongswan_mm1(self):
        """strongSwan 5.9's MM1 transform (tests/data/captures: AES-128, SHA2-256, group 19, PSK, Life Duration
        0 in TV form) is chosen, with our lifetime."""
        t = T(1, (1, 7), (14, 128), (2, 4), (4, 19), (3, 1), (11, 1), (12, 0))  # in charon's attribute order
        self.assertEqual(proposals.choose(policy(AES128_SHA256_ECP256), offer(t)).proposal, AES128_SHA256_ECP256)


class AcceptReplyTests(unittest.TestCase):
    """The initiator's check of the responder's SA (proposals.accept_reply)."""

    def test_agreed(self):
        """The responder's transform must be one we offered; its lifetime can only shorten ours."""
        offered = (AES256_SHA256_MODP2048, AES128_SHA256_ECP256)
        got = proposals.accept_reply(offered, offer(suite(2, AES128_SHA256_ECP256, 600)))
        self.assertEqual(got, attrs.evolve(AES128_SHA256_ECP256, lifetime=600))
        got = proposals.accept_reply(offered, offer(suite(2, AES128_SHA256_ECP256, 0)))
        self.assertEqual(got.lifetime, 28800)

    def test_refused(self):
        """Not offered, more than one transform or proposal, or an unreadable transform: NoProposalChosen."""
        offered = (AES128_SHA256_ECP256,)
        bad = [
            offer(suite(1, AES256_SHA256_MODP2048)),
            offer(suite(1, AES128_SHA256_ECP256), suite(2, AES128_SHA256_ECP256)),
            SA(1, 1, (Proposal(1, 1, b"", (suite(1, AES128_SHA256_ECP256),)),) * 2),
            offer(T(1, (1, AES))),
        ]
        for sa in bad:
            self.assertRaises(proposals.NoProposalChosen, proposals.accept_reply, offered, sa)


class PolicyTests(unittest.TestCase):
    """Which suites a policy may use at all."""

    def test_usable_keeps_order(self):
        """usable() drops what the policy may not use and keeps the order of the rest."""
        tdes = Phase1Proposal(TDES, None, SHA256, PSK, 14)
        p = policy(AES256_SHA512_ECP521, tdes, AES128_SHA256_ECP256)
        self.assertEqual(proposals.usable(p), (AES256_SHA512_ECP521, AES128_SHA256_ECP256))

    def test_check_policy(self):
        """check_policy names the first suite a policy lists but may not use, for the configuration loader."""
        proposals.check_policy(policy(AES128_SHA256_ECP256))
        e = self.assertRaises(ValueError, proposals.check_policy,
                              policy(AES128_SHA256_ECP256, attrs.evolve(AES256_SHA256_MODP2048, group=2)))
        self.assertIn("proposal 2", str(e))
        self.assertIn("allow_weak_groups", str(e))
        self.assertRaises(ValueError, proposals.check_policy, policy())
