"""The per-exchange message rules of gdoiserver.codec.grammar against the RFCs' message figures."""

import re

from twisted.trial import unittest

from gdoiserver.codec import Hash, Message, Notification, UnknownPayload
from gdoiserver.codec.constants import DOI, ExchangeType, Flags, NotifyType, OakleyAuth
from gdoiserver.codec.constants import PayloadType as P
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.grammar import MANY, RULES, Variant, auth_variant, check, rule_for
from tests import corpus

MM, AM, INFO = ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE, ExchangeType.INFORMATIONAL
QM, PULL, PUSH = ExchangeType.QUICK_MODE, ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH
ACK = ExchangeType.GROUPKEY_PUSH_ACK
PSK, SIG = Variant.PSK, Variant.SIGNATURE
IPSEC, GDOI = DOI.IPSEC, DOI.GDOI

# (exchange, doi, message, variant) -> shapes each rule must accept: the RFC figure first, then its options.
ACCEPTED = {
    (MM, IPSEC, 1, None): [[P.SA], [P.SA, P.VID, P.VID], [P.SA, P.CR, P.VID]],
    (MM, IPSEC, 2, None): [[P.SA], [P.SA, P.VID]],
    (MM, IPSEC, 3, None): [[P.KE, P.NONCE], [P.KE, P.NONCE, P.NAT_D, P.NAT_D], [P.NONCE, P.KE, P.CR, P.VID],
                           [P.KE, P.NONCE, P.NAT_D, P.NAT_D, P.NAT_D]],
    (MM, IPSEC, 4, None): [[P.KE, P.NONCE], [P.KE, P.NONCE, P.CR, P.NAT_D, P.NAT_D, P.VID]],
    (MM, IPSEC, 5, PSK): [[P.ID, P.HASH], [P.ID, P.HASH, P.N], [P.HASH, P.ID]],
    (MM, IPSEC, 6, PSK): [[P.ID, P.HASH], [P.ID, P.HASH, P.VID]],
    (MM, IPSEC, 5, SIG): [[P.ID, P.SIG], [P.ID, P.CERT, P.SIG], [P.ID, P.CERT, P.CR, P.SIG, P.N],
                          [P.ID, P.CERT, P.CERT, P.SIG]],
    (MM, IPSEC, 6, SIG): [[P.ID, P.SIG], [P.ID, P.CERT, P.SIG]],
    (AM, IPSEC, 1, None): [[P.SA, P.KE, P.NONCE, P.ID], [P.SA, P.KE, P.NONCE, P.ID, P.VID, P.VID, P.CR]],
    (AM, IPSEC, 2, PSK): [[P.SA, P.KE, P.NONCE, P.ID, P.HASH],
                          [P.SA, P.KE, P.NONCE, P.ID, P.HASH, P.VID, P.NAT_D, P.NAT_D]],
    (AM, IPSEC, 2, SIG): [[P.SA, P.KE, P.NONCE, P.ID, P.SIG],
                          [P.SA, P.KE, P.NONCE, P.ID, P.CERT, P.VID, P.NAT_D, P.NAT_D, P.SIG]],
    (AM, IPSEC, 3, PSK): [[P.HASH], [P.HASH, P.NAT_D, P.NAT_D], [P.HASH, P.N]],
    (AM, IPSEC, 3, SIG): [[P.SIG], [P.CERT, P.SIG], [P.CERT, P.NAT_D, P.NAT_D, P.SIG]],
    (INFO, IPSEC, 1, Variant.PROTECTED): [[P.HASH, P.N], [P.HASH, P.D], [P.HASH, P.D, P.D, P.N]],
    (INFO, IPSEC, 1, Variant.CLEAR): [[P.N], [P.D]],
    (QM, IPSEC, 1, None): [[P.HASH, P.SA, P.NONCE], [P.HASH, P.SA, P.NONCE, P.KE, P.ID, P.ID],
                           [P.HASH, P.SA, P.NONCE, P.ID, P.ID, P.NAT_OA, P.NAT_OA],
                           [P.HASH, P.SA, P.SA, P.NONCE, P.N], [P.HASH, P.SA, P.ID, P.ID, P.NONCE]],
    (QM, IPSEC, 2, None): [[P.HASH, P.SA, P.NONCE], [P.HASH, P.SA, P.NONCE, P.KE, P.ID, P.ID, P.N]],
    (QM, IPSEC, 3, None): [[P.HASH]],
    (QM, IPSEC, 4, None): [[P.HASH, P.N]],
    (PULL, GDOI, 1, None): [[P.HASH, P.NONCE, P.ID], [P.HASH, P.ID, P.NONCE]],
    (PULL, GDOI, 2, None): [[P.HASH, P.NONCE, P.SA]],
    (PULL, GDOI, 3, None): [[P.HASH], [P.HASH, P.KE, P.CERT, P.SIG], [P.HASH, P.POP], [P.HASH, P.GAP]],
    (PULL, GDOI, 4, None): [[P.HASH, P.KD], [P.HASH, P.KE, P.SEQ, P.KD, P.CERT, P.SIG], [P.HASH, P.SEQ, P.KD, P.POP]],
    (PUSH, GDOI, 1, None): [[P.SEQ, P.SA, P.KD, P.SIG], [P.SEQ, P.D, P.SA, P.KD, P.CERT, P.SIG],
                            [P.SEQ, P.D, P.D, P.SA, P.KD, P.SIG]],
    (ACK, GDOI, 1, None): [[P.HASH, P.SEQ, P.ID]],
}

MALFORMED, BAD_TYPE = NotifyType.PAYLOAD_MALFORMED, NotifyType.INVALID_PAYLOAD_TYPE

# (rule key, shape, Notify): wrong order, missing, repeated and unexpected payloads.
REJECTED = [
    # Wrong order: what the RFC pins first or last is elsewhere.
    ((MM, IPSEC, 1, None), [P.VID, P.SA], MALFORMED),  # RFC 2409 section 5: the SA precedes all
    ((AM, IPSEC, 1, None), [P.KE, P.SA, P.NONCE, P.ID], MALFORMED),
    ((QM, IPSEC, 1, None), [P.SA, P.HASH, P.NONCE], MALFORMED),  # RFC 2409 section 5.5: HASH, then SA
    ((QM, IPSEC, 1, None), [P.HASH, P.NONCE, P.SA], MALFORMED),
    ((INFO, IPSEC, 1, Variant.PROTECTED), [P.N, P.HASH], MALFORMED),
    ((PULL, GDOI, 1, None), [P.NONCE, P.HASH, P.ID], MALFORMED),
    ((PUSH, GDOI, 1, None), [P.SEQ, P.SA, P.SIG, P.KD], MALFORMED),  # SIG last
    ((PUSH, GDOI, 1, None), [P.SA, P.SEQ, P.KD, P.SIG], MALFORMED),  # SEQ first
    ((ACK, GDOI, 1, None), [P.SEQ, P.HASH, P.ID], MALFORMED),  # HASH, SEQ, ID in that order
    # Missing.
    ((MM, IPSEC, 1, None), [P.VID], MALFORMED),
    ((MM, IPSEC, 1, None), [], MALFORMED),
    ((MM, IPSEC, 3, None), [P.KE], MALFORMED),
    ((MM, IPSEC, 5, PSK), [P.ID], MALFORMED),
    ((MM, IPSEC, 5, SIG), [P.ID, P.CERT], MALFORMED),
    ((AM, IPSEC, 2, PSK), [P.SA, P.KE, P.NONCE, P.HASH], MALFORMED),
    ((AM, IPSEC, 3, SIG), [P.CERT], MALFORMED),
    ((INFO, IPSEC, 1, Variant.PROTECTED), [P.HASH], MALFORMED),
    ((QM, IPSEC, 1, None), [P.HASH, P.SA], MALFORMED),
    ((QM, IPSEC, 3, None), [], MALFORMED),
    ((PULL, GDOI, 2, None), [P.HASH, P.NONCE], MALFORMED),
    ((PULL, GDOI, 4, None), [P.HASH, P.SEQ], MALFORMED),
    ((PUSH, GDOI, 1, None), [P.SEQ, P.SA, P.SIG], MALFORMED),
    ((PUSH, GDOI, 1, None), [P.SEQ, P.SA, P.KD], MALFORMED),
    # Repeated beyond the figure, or half of a pair.
    ((MM, IPSEC, 1, None), [P.SA, P.SA], MALFORMED),
    ((MM, IPSEC, 3, None), [P.KE, P.KE, P.NONCE], MALFORMED),
    ((MM, IPSEC, 3, None), [P.KE, P.NONCE, P.NAT_D], MALFORMED),  # RFC 3947 section 3.2: at least two
    ((MM, IPSEC, 5, PSK), [P.ID, P.ID, P.HASH], MALFORMED),
    ((MM, IPSEC, 5, SIG), [P.ID, P.SIG, P.SIG], MALFORMED),
    ((QM, IPSEC, 1, None), [P.HASH, P.SA, P.NONCE, P.ID], MALFORMED),  # IDci without IDcr
    ((QM, IPSEC, 1, None), [P.HASH, P.SA, P.NONCE, P.ID, P.ID, P.ID], MALFORMED),
    ((QM, IPSEC, 1, None), [P.HASH, P.SA, P.NONCE, P.NAT_OA], MALFORMED),
    ((QM, IPSEC, 1, None), [P.HASH, P.HASH, P.SA, P.NONCE], MALFORMED),
    ((QM, IPSEC, 3, None), [P.HASH, P.HASH], MALFORMED),
    ((PULL, GDOI, 3, None), [P.HASH, P.SIG, P.POP], MALFORMED),  # one POP, whichever payload carries it
    ((PUSH, GDOI, 1, None), [P.SEQ, P.SEQ, P.SA, P.KD, P.SIG], MALFORMED),
    ((PUSH, GDOI, 1, None), [P.SEQ, P.SA, P.KD, P.SIG, P.SIG], MALFORMED),
    ((MM, IPSEC, 1, None), [P.SA] + [P.VID] * (MANY + 1), MALFORMED),
    # Unexpected: a type the message has no place for, known or not.
    ((MM, IPSEC, 1, None), [P.SA, P.KE], BAD_TYPE),
    ((MM, IPSEC, 1, None), [P.SA, 99], BAD_TYPE),
    ((MM, IPSEC, 1, None), [P.P], BAD_TYPE),  # a Proposal belongs inside an SA
    ((MM, IPSEC, 3, None), [P.KE, P.NONCE, P.N], BAD_TYPE),  # INITIAL-CONTACT needs encryption
    ((MM, IPSEC, 5, PSK), [P.ID, P.HASH, P.SIG], BAD_TYPE),
    ((MM, IPSEC, 5, PSK), [P.ID, P.HASH, P.CERT], BAD_TYPE),
    ((MM, IPSEC, 5, SIG), [P.ID, P.SIG, P.HASH], BAD_TYPE),
    ((INFO, IPSEC, 1, Variant.CLEAR), [P.HASH, P.N], BAD_TYPE),
    ((QM, IPSEC, 1, None), [P.HASH, P.SA, P.NONCE, P.VID], BAD_TYPE),  # Vendor IDs belong to Phase 1
    ((QM, IPSEC, 3, None), [P.HASH, P.N], BAD_TYPE),
    ((PULL, GDOI, 1, None), [P.HASH, P.NONCE, P.ID, P.SA], BAD_TYPE),
    ((PULL, GDOI, 2, None), [P.HASH, P.NONCE, P.SA, P.SAK], BAD_TYPE),  # SAK and SAT live inside the SA
    ((PUSH, GDOI, 1, None), [P.SEQ, P.SA, P.KD, P.HASH, P.SIG], BAD_TYPE),
]


def _rule(key):
    exchange, doi, number, variant = key
    return rule_for(exchange, number, doi=doi, variant=variant)


class AcceptTests(unittest.TestCase):
    def test_rfc_shapes_accepted(self):
        """Every rule accepts its RFC figure and the optional payloads the RFCs allow in it."""
        for key, shapes in ACCEPTED.items():
            for shape in shapes:
                check(shape, _rule(key))

    def test_every_rule_has_accepted_shapes(self):
        """Every rule in the table is exercised by ACCEPTED (so no table row goes untested)."""
        tested = {id(_rule(key)) for key in ACCEPTED}
        self.assertEqual({id(r) for r in RULES.values()} - tested, set())

    def test_payload_objects_and_unknown_payloads(self):
        """check() takes payload objects too, an UnknownPayload by its payload type."""
        check([Hash(b"h" * 20), Notification(DOI.IPSEC, 1, NotifyType.R_U_THERE, b"c" * 16, b"\0\0\0\1")],
              _rule((INFO, IPSEC, 1, Variant.PROTECTED)))
        e = self.assertRaises(DecodeError, check, [Hash(b"h"), UnknownPayload(99, b"")],
                              _rule((QM, IPSEC, 3, None)))
        self.assertEqual(e.notify, BAD_TYPE)

    def test_corpus_messages_accepted(self):
        """Every cleartext message of tests/corpus.py fits the rule its name points to."""
        kinds = {"MM": MM, "AM": AM, "QM": QM}
        checked = 0
        for example in corpus.all_messages():
            if example.message.ciphertext is not None:
                continue
            m = re.match(r"(MM|AM|QM)(\d)", example.name)
            if m:
                variant = SIG if "ecdsa" in example.name else PSK
                rule = rule_for(kinds[m[1]], int(m[2]), doi=example.doi, variant=variant)
            else:
                self.assertTrue(example.name.startswith("INFO"), example.name)
                protected = example.message.payloads[0].payload_type == P.HASH
                rule = rule_for(INFO, 1, variant=Variant.PROTECTED if protected else Variant.CLEAR)
            check(example.message.payloads, rule)
            checked += 1
        self.assertGreater(checked, 20)


    def test_strongswan_capture_accepted(self):
        """Every message of the checked-in strongSwan capture, decrypted, fits its rule: Main Mode, Aggressive Mode
        (strongSwan puts HASH_R after the NAT-Ds: RFC 2409 section 5 allows any order) and Quick Mode."""
        from tests import test_strongswan_capture as capture

        class Reader(capture.CaptureMixin, unittest.TestCase):
            def runTest(self):
                pass

        messages = Reader().round_trip(capture.CHECKED_IN, capture._read_keys(capture.CHECKED_IN_KEYS))
        numbers = {}
        for _, m in messages:
            key = (m.initiator_cookie, m.exchange_type, m.message_id)
            numbers[key] = numbers.get(key, 0) + 1
            check(m, rule_for(m.exchange_type, numbers[key], variant=PSK))
        self.assertEqual(len(messages), 15)


class RejectTests(unittest.TestCase):
    def test_rejected_shapes(self):
        """Wrong order, missing, repeated and unexpected payloads raise DecodeError with RFC 2408's Notify."""
        for key, shape, notify in REJECTED:
            try:
                check(shape, _rule(key))
            except DecodeError as e:
                self.assertEqual(e.notify, notify, f"{key} {shape}: {e}")
            else:
                self.fail(f"{key} accepted {shape}")

    def test_dropping_and_repeating_each_payload(self):
        """Dropping or repeating any payload of an accepted shape is refused exactly when the count leaves the
        rule's counts, and then with PAYLOAD-MALFORMED."""
        for key, shapes in ACCEPTED.items():
            rule = _rule(key)
            for shape in shapes:
                for i, t in enumerate(shape):
                    slot = next(s for s in rule.head + rule.body + rule.tail if t in s.types)
                    held = sum(shape.count(u) for u in slot.types)
                    for changed, n in ((shape[:i] + shape[i + 1:], held - 1), (shape[:i] + [t] + shape[i:], held + 1)):
                        if n in slot.counts:
                            check(changed, rule)
                        else:
                            e = self.assertRaises(DecodeError, check, changed, rule)
                            self.assertEqual(e.notify, MALFORMED, f"{key} {changed}")

    def test_encryption_flag(self):
        """A message encrypted against its rule, or clear against it, is refused with INVALID-FLAGS."""
        c = b"\x01" * 8
        clear_mm5 = Message(c, c, MM, 0, 0, (Hash(b"h"),))
        e = self.assertRaises(DecodeError, check, clear_mm5, _rule((MM, IPSEC, 5, PSK)))
        self.assertEqual(e.notify, NotifyType.INVALID_FLAGS)
        encrypted_mm1 = Message(c, c, MM, Flags.ENCRYPTION, 0, (Hash(b"h"),))
        e = self.assertRaises(DecodeError, check, encrypted_mm1, _rule((MM, IPSEC, 1, None)))
        self.assertEqual(e.notify, NotifyType.INVALID_FLAGS)
        e = self.assertRaises(DecodeError, check, [P.HASH], _rule((QM, IPSEC, 3, None)), encrypted=False)
        self.assertEqual(e.notify, NotifyType.INVALID_FLAGS)

    def test_flags_checked_before_payloads(self):
        """The header's flags are judged before the payloads (RFC 2408 section 5.2 comes before 5.3)."""
        e = self.assertRaises(DecodeError, check, [99], _rule((QM, IPSEC, 3, None)), encrypted=False)
        self.assertEqual(e.notify, NotifyType.INVALID_FLAGS)

    def test_aggressive_mode_3_either_way(self):
        """AM3 is accepted encrypted (RFC 3947's HDR*) and in the clear (RFC 2409's HDR)."""
        c = b"\x01" * 8
        for flags in (0, Flags.ENCRYPTION):
            check(Message(c, c, AM, flags, 0, (Hash(b"h"),)), _rule((AM, IPSEC, 3, PSK)))

    def test_ciphertext_refused(self):
        """A message still encrypted cannot be checked: that is a caller's mistake, not the peer's."""
        c = b"\x01" * 8
        m = Message(c, c, QM, Flags.ENCRYPTION, 1, ciphertext=b"x" * 16, next_payload=P.HASH)
        self.assertRaises(ValueError, check, m, _rule((QM, IPSEC, 1, None)))


class LookupTests(unittest.TestCase):
    def test_doi_tells_exchange_32_apart(self):
        """Exchange 32 is Quick Mode under the IPsec DOI and GROUPKEY-PULL under GDOI."""
        self.assertIn("Ni", rule_for(32, 1, doi=DOI.IPSEC).name)
        self.assertIn("ID", rule_for(32, 1, doi=DOI.GDOI).name)
        check([P.HASH, P.NONCE, P.ID], rule_for(32, 1, doi=DOI.GDOI))
        self.assertRaises(DecodeError, check, [P.HASH, P.NONCE, P.ID], rule_for(32, 1, doi=DOI.IPSEC))

    def test_phase1_rules_serve_any_doi(self):
        """Phase 1 and Informational rules serve any DOI: GDOI's Phase 1 is IKEv1's (RFC 6407 section 2)."""
        self.assertIs(rule_for(MM, 1, doi=DOI.GDOI), rule_for(MM, 1, doi=DOI.IPSEC))
        self.assertIs(rule_for(INFO, 1, doi=DOI.GDOI, variant=Variant.CLEAR),
                      rule_for(INFO, 1, variant=Variant.CLEAR))

    def test_variant_falls_back(self):
        """A message that no variant tells apart has one rule for every variant; others need theirs."""
        self.assertIs(rule_for(MM, 1, variant=PSK), rule_for(MM, 1))
        self.assertIsNot(rule_for(MM, 5, variant=PSK), rule_for(MM, 5, variant=SIG))
        self.assertRaises(KeyError, rule_for, MM, 5)
        self.assertRaises(KeyError, rule_for, MM, 7)
        self.assertRaises(KeyError, rule_for, PUSH, 1, doi=DOI.IPSEC)  # New Group Mode is not covered

    def test_auth_variant(self):
        """Authentication methods map to the pre-shared key and signature variants (RFC 2409 appendix A)."""
        self.assertIs(auth_variant(OakleyAuth.PRE_SHARED_KEY), PSK)
        for m in (OakleyAuth.RSA_SIGNATURES, OakleyAuth.DSS_SIGNATURES, OakleyAuth.ECDSA_SHA256_P256):
            self.assertIs(auth_variant(m), SIG)
        self.assertRaises(KeyError, auth_variant, OakleyAuth.RSA_ENCRYPTION)
