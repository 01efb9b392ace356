"""The authentication and authorization matrix (issue 9): our key server refuses each peer it must refuse.

Every case runs our key server (GDOIService serving one GDOI group) and our group members (GroupMember) through
their Twisted adapters in this process, over :class:`tests.test_gdoi_registration.Wire`: UDP in memory on a Clock
that starts at :data:`tests.pki.NOW`, so that certificates, CRLs and retransmissions are the same on every run.
A good member registers first, so that the group holds TEK and KEK keys that could leak; then the refused peer
tries.  Each case checks that

- the registration is refused and the key server's group state (generations, KEKs, sender IDs, members) is as it
  was;
- the Notify: the one the refusal names (``Failed.notify``, which also names the counter), and what went on the
  wire to the refused peer: a clear NO-PROPOSAL-CHOSEN answering Main Mode message 1, a protected
  AUTHENTICATION-FAILED Informational (decrypted here with the member's keys), or nothing after Main Mode message
  4 (docs/security.md, "Authentication matrix", says why);
- the key server logged exactly one line about the refusal (twisted.logger events), with the reason;
- the refusal was counted;
- no key material left: no datagram the key server sent in the test holds the bytes of any TEK or KEK key of the
  group, and none it sent the refused peer is a GROUPKEY-PULL message 4 (those under an ISAKMP SA are decrypted
  with the member's keys and hold no KD payload).

:data:`MATRIX` is the table docs/security.md shows.  The same refusals with strongSwan's charon as the refused
initiator run in :class:`CharonInitiatorTests` (root and strongSwan needed).
"""

import datetime
import re
import shutil
import sys
import tempfile
import tomllib
from collections import Counter
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from gdoiserver.codec.constants import DOI, ExchangeType, NotifyType
from gdoiserver.codec.gdoi import KD
from gdoiserver.codec.message import decode_message
from gdoiserver.codec.payloads import Notification
from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.exchanges.phase1 import Phase1Proposal
from gdoiserver.member.service import RegistrationFailed
from gdoiserver.service import GDOIService
from gdoiserver.tools.pcap import isakmp_messages, read_udp
from tests import pki
from tests import test_interop_phase1 as p1
from tests.interop import strongswan as sw
from tests.machine_pair import seeded_rng
from tests.test_gdoi_registration import (
    CTX,
    PKI,
    Files,
    Wire,
    group_id,
    group_toml,
    ks_plugin,
    ks_state,
    outcome,
    start_member,
    write_private,
)

KS_ADDRESS, PORT = "127.0.0.2", 848
GOOD, REFUSED = "127.0.0.10", "127.0.0.20"
PULL, INFORMATIONAL, MAIN_MODE = ExchangeType.GROUPKEY_PULL, ExchangeType.INFORMATIONAL, ExchangeType.MAIN_MODE
#: The member gives up fast: MM5 twice more after 0.2 and 0.6 s, and the exchange after 5 s.
FAST_IKE = "retransmit_initial = 0.2\nretransmit_tries = 2\nexchange_timeout = 5.0\n"
PSK = '{ encryption = "aes128", hash = "sha256", group = 19, auth = "psk" }'
MEMBERS_BY_NAME = ('pattern = "gm*.example.org"',)
MEMBERS_BY_CERTIFICATE = ('pattern = "*.members.example.org"',)


@attrs.frozen
class Expected:
    """One row of the matrix: the Notify the refusal names, whether and how it goes to the peer, the words of the
    key server's log line, and the counter that counts it."""

    case: str
    notify: NotifyType
    sent: str  # "clear" (answering MM1), "protected" (under the ISAKMP SA), "none"
    log: str
    counter: str


MATRIX = (
    Expected("wrong PSK", NotifyType.PAYLOAD_MALFORMED, "none",
             "message 5 does not decode after decryption", "phase1_failed.PAYLOAD_MALFORMED"),
    Expected("expired certificate", NotifyType.INVALID_CERTIFICATE, "none",
             "the peer's certificate: certificate CN=gm-expired.members.example.org expired at",
             "phase1_failed.INVALID_CERTIFICATE"),
    Expected("certificate not yet valid", NotifyType.INVALID_CERTIFICATE, "none",
             "the peer's certificate: certificate CN=gm-early.members.example.org is not valid before",
             "phase1_failed.INVALID_CERTIFICATE"),
    Expected("certificate of another CA", NotifyType.INVALID_CERT_AUTHORITY, "none",
             "the peer's certificate: no configured CA issued CN=gm-other.members.example.org",
             "phase1_failed.INVALID_CERT_AUTHORITY"),
    Expected("certificate revoked by a configured CRL", NotifyType.INVALID_CERTIFICATE, "none",
             "the peer's certificate: certificate CN=gm-revoked.members.example.org (serial ",
             "phase1_failed.INVALID_CERTIFICATE"),
    Expected("ID that does not name the certificate", NotifyType.INVALID_ID_INFORMATION, "none",
             "the peer's ID does not name its certificate", "phase1_failed.INVALID_ID_INFORMATION"),
    Expected("authenticated, not a member (PSK, by ID)", NotifyType.AUTHENTICATION_FAILED, "protected",
             "GDOI: registration of intruder.example.net at 127.0.0.20:848 refused", "pull_unauthorized"),
    Expected("authenticated, not a member (certificate)", NotifyType.AUTHENTICATION_FAILED, "protected",
             "GDOI: registration of gm-outsider.example.net at 127.0.0.20:848 refused", "pull_unauthorized"),
    Expected("weak proposal (MODP 1024), weak groups off", NotifyType.NO_PROPOSAL_CHOSEN, "clear",
             "Phase 1 failed: responder SA", "phase1_failed.NO_PROPOSAL_CHOSEN"),
)  # fmt: skip
EXPECTED = {e.case: e for e in MATRIX}


def cn_name(common_name: str):
    """A subject DN of the CN alone, so the log's rfc4514 string starts with it."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@attrs.define
class Refusal:
    """What one refused attempt left: the member's error, the key server's datagrams to the refused peer, the key
    server's log lines of level info and above during the attempt, and how its counters moved."""

    member: object
    error: RegistrationFailed
    to_peer: list
    lines: list
    counters: Counter
    both_ways: list  # (from the key server, octets) of every datagram between the two, in order
    line: str = ""  # the log line about the refusal, once check() found it


class MatrixTests(unittest.TestCase):
    """Each row of :data:`MATRIX` against our key server; see the module notes for what each test checks."""

    def setUp(self):
        self.files = Files(self)
        self.wire = Wire(pki.NOW.timestamp())
        self.seed = 100
        self.members = PKIFiles(self.files)

    # --- the key server and the members -------------------------------------------------------------------------

    def start_ks(self, text: str, **policy_changes) -> GDOIService:
        """Our key server from ``text`` on the wire; every log line of its service, engine and listeners goes to
        ``ks.events``.  ``policy_changes`` alter the Phase 1 policy the configuration gives."""
        config = parse_config(tomllib.loads(text))
        policy = attrs.evolve(policy_from_config(config), **policy_changes)
        ks = GDOIService(config, self.wire, factory=Phase1Factory(policy), rng=seeded_rng(1))
        ks.events = []
        log = Logger(observer=ks.events.append)
        ks.log = ks.engine.log = log
        for protocol in ks.protocols:
            protocol.log = log
        ks.startService()
        self.addCleanup(ks.stopService)
        return ks

    def psk_ks(self, members=MEMBERS_BY_NAME, **policy_changes) -> GDOIService:
        groups = group_toml("gcm", self.files.signing_key, members=members)
        return self.start_ks(self.files.ks_config(groups, peer="127.0.0.0/24", port=PORT), **policy_changes)

    def certificate_ks(self, members=MEMBERS_BY_CERTIFICATE, crl: str | None = None) -> GDOIService:
        groups = group_toml("gcm", self.files.signing_key, members=members)
        c = self.members.ks
        text = self.files.ks_config(groups, peer="127.0.0.0/24", port=PORT, certificates=c)
        if crl is not None:
            text = text.replace(f'ca = ["{c.root}"]\n', f'ca = ["{c.root}"]\ncrl = ["{crl}"]\n')
            self.assertIn("crl = ", text)
        return self.start_ks(text)

    def member_text(self, address: str, identity: str, *, psk=None, certificates: PKI | None = None,
                    proposal: str | None = None, weak: bool = False) -> str:
        ike = f"[ike]\n{FAST_IKE}" + (f"proposals = [{proposal}]\n" if proposal else "")
        extra = ike + ("[security]\nallow_weak_dh_groups = true\n" if weak else "")
        return self.files.member_config([(KS_ADDRESS, PORT)], ["gcm"], address=address, identity=identity, psk=psk,
                                        certificates=certificates, extra=extra, port=PORT)

    def register(self, text: str):
        """Start a member from ``text`` and let it register in "gcm"; (member, result or Failure)."""
        self.seed += 1
        member = start_member(self, text, self.wire, seeded_rng(self.seed))
        result = outcome(member.register(group_id("gcm")))
        for _ in range(120):
            if result:
                break
            self.wire.wait(0.5)
        self.assertTrue(result, "the registration neither succeeded nor failed in 60 s")
        return member, result[0]

    def register_good(self, ks, certificates: PKI | None = None) -> None:
        """A member the key server admits registers, so that the group has TEK and KEK keys."""
        identity = "gm-good.members.example.org" if certificates else "gm-good.example.org"
        _, result = self.register(self.member_text(GOOD, identity, certificates=certificates))
        self.assertNotIsInstance(result, Failure)
        self.assertEqual(ks.counters["gdoi_registered"], 1)

    def refused(self, ks, text: str) -> Refusal:
        """The refused peer's attempt, after a good one; what it left (see :class:`Refusal`)."""
        before, counters = ks_state(ks), Counter(ks.counters)
        first_event, first_datagram = len(ks.events), len(self.wire.sent)
        member, result = self.register(text)
        self.assertIsInstance(result, Failure)
        result.trap(RegistrationFailed)
        self.assertEqual(ks_state(ks), before)
        both_ways = self.between(REFUSED, first_datagram)
        to_peer = [d for from_ks, d in both_ways if from_ks]
        lines = [formatEvent(e) for e in ks.events[first_event:] if e["log_level"] >= LogLevel.info]
        delta = Counter(ks.counters)
        delta.subtract(counters)
        return Refusal(member, result.value, to_peer, lines, +delta, both_ways)

    def between(self, address: str, start: int = 0) -> list:
        """(from the key server, octets) of each datagram between it and ``address`` since ``wire.sent[start]``."""
        return [(src[0] == KS_ADDRESS, d) for src, dst, d in self.wire.sent[start:]
                if {src[0], dst[0]} == {KS_ADDRESS, address}]  # fmt: skip

    # --- the checks every case makes ------------------------------------------------------------------------------

    def key_material(self, ks) -> list[bytes]:
        """Every TEK and KEK key of every group the key server holds."""
        keys = []
        for group in ks_plugin(ks).key_server.groups.groups:
            for generation in group.keys.generations:
                for tek in generation.teks:
                    keys += [tek.encryption_key, tek.integrity_key]
            kek = group.keys.kek(self.wire.seconds())
            if kek is not None:
                keys.append(kek.key)
        return [k for k in keys if k]

    def check(self, case: str, ks, refusal: Refusal) -> None:
        expected = EXPECTED[case]
        # The counter, under the Notify's name for Phase 1 and as pull_unauthorized plus gdoi_refused for PULL.
        self.assertEqual(refusal.counters[expected.counter], 1, refusal.counters)
        self.assertEqual(refusal.counters["phase1_established"], int(expected.sent == "protected"), refusal.counters)
        if expected.counter == "pull_unauthorized":
            self.assertEqual((refusal.counters["gdoi_refused"], refusal.counters["pull_registered"]), (1, 0))
        # One log line about the refusal, naming the reason.  A refused registration also gets the engine's
        # generic line for any failed Phase 2 exchange, with the same reason (docs/security.md notes the double).
        about = [line for line in refusal.lines if re.search(r"failed|refused", line)]
        generic = [line for line in about if line.startswith(f"phase2.{DOI.GDOI} failed under ")]
        about = [line for line in about if line not in generic]
        self.assertEqual(len(about), 1, refusal.lines)
        self.assertIn(expected.log, about[0])
        refusal.line = about[0]
        if expected.sent == "protected":
            reason = about[0].partition(" refused: ")[2]
            self.assertTrue(reason)
            self.assertEqual([line.rpartition(f":{PORT}: ")[2] for line in generic], [reason])
        else:
            self.assertEqual(generic, [])
            self.assertIn(f"with {REFUSED}:{PORT} ", about[0])
        # No key material in anything the key server sent in the whole test, the good member's messages included.
        keys = self.key_material(ks)
        self.assertGreaterEqual(len(keys), 2)
        for src, _, data in self.wire.sent:
            if src[0] == KS_ADDRESS:
                for key in keys:
                    self.assertNotIn(key, data)
        # What went to the refused peer, and that none of it is a PULL message 4.
        messages = [decode_message(d) for d in refusal.to_peer]
        self.assertTrue(messages, "the key server sent the refused peer nothing at all")
        if expected.sent == "clear":
            [m] = messages
            self.assertEqual((m.exchange_type, m.encrypted), (INFORMATIONAL, False))
            [n] = m.payloads
            self.assertIsInstance(n, Notification)
            self.assertEqual(n.notify_type, expected.notify)
        elif expected.sent == "none":
            # Main Mode messages 2 and 4 in the clear; nothing after the failed message 5, retransmitted or not.
            self.assertEqual([(m.exchange_type, m.encrypted) for m in messages], [(MAIN_MODE, False)] * 2)
            self.assertEqual(ks.counters["unknown_sa"], 2)  # the member's two retransmissions of MM5
        else:
            self.check_protected(expected, refusal, messages)
        self.assertIn(expected.notify.name if expected.sent != "none" else "Phase 1", refusal.error.attempts[0])

    def check_protected(self, expected: Expected, refusal: Refusal, messages) -> None:
        """Under the ISAKMP SA: the key server's Informational holds exactly the expected Notify, and its PULL
        messages, decrypted along the IV chain of their M-ID with the member's messages, hold no KD (so none is
        message 4)."""
        [sa] = [e.sa for e in refusal.member.engine.sas.values()]
        kinds = [m.exchange_type for m in messages]
        self.assertEqual(kinds.count(INFORMATIONAL), 1, kinds)
        self.assertEqual(set(kinds) - {MAIN_MODE, INFORMATIONAL, PULL}, set(), kinds)
        for m in messages:
            if m.exchange_type == INFORMATIONAL:
                received = informational.process(sa, m)
                self.assertIsInstance(received, informational.Received)
                self.assertEqual([i.notify_type for i in received.items], [expected.notify])
        for plain in pull_from_key_server(sa, refusal.both_ways):
            self.assertFalse([p for p in plain.payloads if isinstance(p, KD)], plain)

    # --- the cases -------------------------------------------------------------------------------------------------

    def test_wrong_psk(self):
        """A member with a wrong PSK: the key server cannot decrypt Main Mode message 5 and ends the exchange in
        silence (PAYLOAD-MALFORMED named and counted, not sent), logs it once; no key leaves."""
        ks = self.psk_ks()
        self.register_good(ks)
        wrong = write_private(self.files.path("wrong.psk"), b"not-the-members-psk\n")
        self.check("wrong PSK", ks, self.refused(ks, self.member_text(REFUSED, "gm-wrong.example.org", psk=wrong)))

    def certificate_case(self, case: str, certificates: PKI, identity: str, crl: str | None = None) -> Refusal:
        ks = self.certificate_ks(crl=crl)
        self.register_good(ks, self.members.good)
        refusal = self.refused(ks, self.member_text(REFUSED, identity, certificates=certificates))
        self.check(case, ks, refusal)
        return refusal

    def test_expired_certificate(self):
        """A member certificate that expired a day ago: INVALID-CERTIFICATE, the log says when it expired."""
        r = self.certificate_case("expired certificate", self.members.expired, "gm-expired.members.example.org")
        self.assertIn(f"expired at {pki.NOW - pki.DAY}", r.line)

    def test_certificate_not_yet_valid(self):
        """A member certificate valid from tomorrow: INVALID-CERTIFICATE, "not valid before"."""
        r = self.certificate_case("certificate not yet valid", self.members.early, "gm-early.members.example.org")
        self.assertIn(f"is not valid before {pki.NOW + pki.DAY}", r.line)

    def test_certificate_of_another_ca(self):
        """A member certificate from a CA the key server does not trust: INVALID-CERT-AUTHORITY."""
        self.certificate_case("certificate of another CA", self.members.other_ca, "gm-other.members.example.org")

    def test_certificate_revoked_by_crl(self):
        """A member certificate that the intermediate's CRL, configured in the key server (``crl``), lists:
        INVALID-CERTIFICATE, and the log names the serial and the reason (key compromise).  The same member
        registers when the key server has no CRL."""
        r = self.certificate_case("certificate revoked by a configured CRL", self.members.revoked,
                                  "gm-revoked.members.example.org", crl=self.members.crl)
        serial = self.members.revoked_serial
        self.assertIn(f"(serial {serial:x}) was revoked by CN=Members Intermediate", r.line)
        self.assertIn("reason keyCompromise", r.line)

    def test_revoked_certificate_passes_without_the_crl(self):
        """Control for the CRL case: without ``crl`` the key server admits the same certificate."""
        ks = self.certificate_ks()
        text = self.member_text(REFUSED, "gm-revoked.members.example.org", certificates=self.members.revoked)
        _, result = self.register(text)
        self.assertNotIsInstance(result, Failure)
        self.assertEqual(ks.counters["gdoi_registered"], 1)

    def test_id_does_not_match_certificate(self):
        """A member whose ID payload names another FQDN than its certificate's subjectAltName:
        INVALID-ID-INFORMATION."""
        self.certificate_case("ID that does not name the certificate", self.members.good,
                              "gm-someone-else.members.example.org")

    def test_not_a_member_by_id(self):
        """A member that authenticates with the right PSK but that no member rule names: Phase 1 is established,
        message 1 of GROUPKEY-PULL is refused with a protected AUTHENTICATION-FAILED; no PULL message goes back."""
        ks = self.psk_ks()
        self.register_good(ks)
        refusal = self.refused(ks, self.member_text(REFUSED, "intruder.example.net"))
        self.check("authenticated, not a member (PSK, by ID)", ks, refusal)
        self.assertNotIn(PULL, [decode_message(d).exchange_type for d in refusal.to_peer])

    def test_not_a_member_by_certificate(self):
        """A member with a valid certificate that the group's certificate rule does not name: message 2 (the
        policy, no keys) goes out while its CERT and POP in message 3 are awaited, then AUTHENTICATION-FAILED, and
        no message 4."""
        ks = self.certificate_ks(members=('certificate_dns = "gm-good.members.example.org"',))
        self.register_good(ks, self.members.good)
        refusal = self.refused(ks, self.member_text(REFUSED, "gm-outsider.example.net",
                                                    certificates=self.members.outsider))
        self.check("authenticated, not a member (certificate)", ks, refusal)
        self.assertEqual([decode_message(d).exchange_type for d in refusal.to_peer].count(PULL), 1)
        self.assertIn("not authorized", refusal.line)

    def test_weak_proposal(self):
        """A member that offers only MODP 1024 (group 2) while weak groups are off: NO-PROPOSAL-CHOSEN answers
        its first message in the clear, which RFC 2408 section 4.8 allows before keys exist."""
        ks = self.psk_ks()
        self.register_good(ks)
        weak = PSK.replace("group = 19", "group = 2")
        refusal = self.refused(ks, self.member_text(REFUSED, "gm-weak.example.org", proposal=weak, weak=True))
        self.check("weak proposal (MODP 1024), weak groups off", ks, refusal)
        # The reason names no transform: exchanges/proposals.py's choose() does not say why each was refused.
        self.assertIn("none of 1 readable transforms matches our policy", refusal.line)
        self.assertIn("DH group 2 needs allow_weak_groups (Logjam)", refusal.line)

    def test_weak_proposal_even_if_listed(self):
        """Defence in depth: a policy that lists MODP 1024 itself (which the configuration never allows without
        security.allow_weak_dh_groups) still refuses it while allow_weak_groups is off."""
        weak_too = Phase1Proposal(7, 128, 4, 1, 2)  # AES-128, SHA2-256, PSK, group 2 (RFC 2409 appendix A)
        groups = group_toml("gcm", self.files.signing_key, members=MEMBERS_BY_NAME)
        config = parse_config(tomllib.loads(self.files.ks_config(groups, peer="127.0.0.0/24", port=PORT)))
        policy = policy_from_config(config)
        ks = self.start_ks(self.files.ks_config(groups, peer="127.0.0.0/24", port=PORT),
                           proposals=(weak_too, *policy.proposals))
        self.assertFalse(ks.engine.factory.policy.allow_weak_groups)
        self.register_good(ks)
        weak = PSK.replace("group = 19", "group = 2")
        refusal = self.refused(ks, self.member_text(REFUSED, "gm-weak.example.org", proposal=weak, weak=True))
        self.check("weak proposal (MODP 1024), weak groups off", ks, refusal)

    def test_checks_see_message_4(self):
        """Control for the checks: applied to the good member, the decryption finds its message 4 (a KD), whose
        plaintext holds every key :meth:`key_material` lists, and no datagram holds them in the clear."""
        ks = self.psk_ks()
        member, result = self.register(self.member_text(GOOD, "gm-good.example.org"))
        self.assertNotIsInstance(result, Failure)
        [sa] = [e.sa for e in member.engine.sas.values()]
        plains = pull_from_key_server(sa, self.between(GOOD))
        self.assertEqual([any(isinstance(p, KD) for p in plain.payloads) for plain in plains], [False, True])
        message_4 = plains[1].encode(CTX)
        keys = self.key_material(ks)
        self.assertEqual(len(keys), 2)  # AES-GCM: the TEK's key (no integrity key) and the KEK's
        for key in keys:
            self.assertIn(key, message_4)
            self.assertFalse(any(key in d for _, d in self.between(GOOD)))

    def test_matrix_covers_issue_9(self):
        """The matrix has one row per refusal issue 9 names (two for the non-member), each with a test."""
        names = {name for name in dir(self) if name.startswith("test_")}
        self.assertEqual(len(MATRIX), 9)
        self.assertLessEqual({"test_wrong_psk", "test_expired_certificate", "test_certificate_not_yet_valid",
                              "test_certificate_of_another_ca", "test_certificate_revoked_by_crl",
                              "test_id_does_not_match_certificate", "test_not_a_member_by_id",
                              "test_not_a_member_by_certificate", "test_weak_proposal"}, names)


def pull_from_key_server(sa, both_ways) -> list:
    """The key server's GROUPKEY-PULL messages among ``both_ways``, decrypted with the member's ISAKMP SA ``sa``:
    each M-ID's IV chain starts from the Phase 1 one and runs through both sides' messages (RFC 2409 appendix B)."""
    chains, out = {}, []
    for from_ks, data in both_ways:
        m = decode_message(data)
        if m.exchange_type != PULL:
            continue
        chain = chains.get(m.message_id) or sa.last_iv.for_message_id(m.message_id)
        plain, chains[m.message_id] = chain.decrypt(m, DOI.GDOI, CTX)
        if from_ks:
            out.append(plain)
    return out


class PKIFiles:
    """The matrix's certificates, valid (or not) at :data:`tests.pki.NOW`: a root and intermediate CA that the key
    server trusts, the key server's and a good member's certificates, and one refused member certificate per
    case, each with its key and files under the test's folder."""

    def __init__(self, files: Files):
        self.files = files
        window = dict(not_before=pki.NOW - pki.DAY, not_after=pki.NOW + 30 * pki.DAY)
        root = pki.issue(cn_name("Members Root"), pki.key("p256", 0), ca=True, **window)
        self.inter = pki.issue(cn_name("Members Intermediate"), pki.key("p256", 1), root, ca=True, **window)
        self.root = pki.write_certificates(files.path("root.pem"), root.certificate)
        ks = pki.issue(cn_name("ks"), pki.key("p256", 2), self.inter, sans=("ks.example.org",), **window)
        self.ks = self.pki("ks", ks)
        self.good = self.pki("good", self.leaf("gm-good.members.example.org", 3, **window))
        self.expired = self.pki("expired", pki.expired(cn_name("gm-expired.members.example.org"), pki.key("p256", 4),
                                                       self.inter, sans=("gm-expired.members.example.org",)))
        self.early = self.pki("early", pki.not_yet_valid(cn_name("gm-early.members.example.org"), pki.key("p256", 5),
                                                         self.inter, sans=("gm-early.members.example.org",)))
        other_root = pki.issue(cn_name("Other Root"), pki.key("p256", 6), ca=True, **window)
        other = pki.issue(cn_name("gm-other.members.example.org"), pki.key("p256", 7), other_root,
                          sans=("gm-other.members.example.org",), **window)
        self.other_ca = self.pki("other", other, chain=())
        revoked = pki.revoke(cn_name("gm-revoked.members.example.org"), pki.key("p256", 8), self.inter,
                             sans=("gm-revoked.members.example.org",))
        self.revoked = self.pki("revoked", revoked.leaf)
        self.revoked_serial = revoked.leaf.certificate.serial_number
        self.crl = pki.write_crls(files.path("intermediate.crl"), revoked.crl, der=True)
        self.outsider = self.pki("outsider", self.leaf("gm-outsider.example.net", 9, **window))

    def leaf(self, name: str, slot: int, **window) -> pki.Issued:
        return pki.issue(cn_name(name), pki.key("p256", slot), self.inter, sans=(name,), **window)

    def pki(self, name: str, leaf: pki.Issued, chain=None) -> PKI:
        """A :class:`PKI` whose member (``gm_*``) is ``leaf``, sent with the intermediate unless ``chain`` says
        otherwise; the key server's files are ``leaf``'s too when ``name`` is "ks"."""
        chain = (self.inter.certificate,) if chain is None else chain
        cert = pki.write_certificates(self.files.path(f"{name}.pem"), leaf.certificate, *chain)
        key = pki.write_key(self.files.path(f"{name}.key"), leaf.key)
        ks = getattr(self, "ks", None)
        return PKI(root=self.root, ks_cert=ks.ks_cert if ks else cert, ks_key=ks.ks_key if ks else key,
                   gm_cert=cert, gm_key=key, kind="p256")


# --- strongSwan's charon as the refused initiator --------------------------------------------------------------------


CASE_TIMEOUT = 40.0
OUR_FAILURE = re.compile(r"^.*Phase 1 failed: responder SA .*$", re.M)


class CharonInitiatorTests(unittest.TestCase):
    """charon (strongSwan 5.9, IKEv1 Main Mode) initiates to our daemon (``python -m twisted gdoi``) and is refused
    in Phase 1: a wrong PSK, and an RSA certificate that a CRL configured in our daemon revokes.  In each case our
    daemon logs one "Phase 1 failed" line with the reason and sends charon nothing after Main Mode message 4 (read
    from the capture), and charon establishes nothing."""

    def setUp(self):
        sw.require((sw.INITIATOR,))
        self.workdir = Path(tempfile.mkdtemp(prefix="gdoi-am-"))  # short: charon's vici socket path must fit
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def run_case(self, name: str, credentials: dict, files: dict, psk: bytes | None = None):
        """charon initiates connection ``name`` of tests/test_interop_phase1.py to our daemon, configured by that
        module's ``our_config`` (with ``psk`` in its PSK file instead of the interop PSK, when given)."""
        case = p1.CASES[name]
        # One try and a short wait: the refusal is silent, so charon's MM5 is never answered.
        fast = {"retransmit_tries = 2": "retransmit_tries = 0\n  retransmit_timeout = 2.0"}
        sw.prepare(self.workdir, sides=(sw.INITIATOR,), profiles=(case.profile,), files=files, substitutions=fast)
        config = p1.our_config(self.workdir, case, sw.RESPONDER, credentials)
        if psk is not None:
            (self.workdir / "gdoi.psk").write_bytes(psk)
        daemon = sw.Command("gdoi", [sys.executable, "-m", "twisted", "--log-format", "text", "gdoi", "--config",
                                     str(config)], env=p1._env(), wait_udp=(sw.ADDRESS[sw.RESPONDER], 500))
        return sw.run(self.workdir, strongswan=(sw.INITIATOR,), initiate=[case.connections[sw.INITIATOR]],
                      child=None, commands=[daemon], settle_logs={"gdoi": (OUR_FAILURE.pattern, 1)},
                      timeout=CASE_TIMEOUT)

    def check_refused(self, run, words: str) -> str:
        """charon has no SA; our log has one Phase 1 failure naming ``words``; we sent only MM2 and MM4."""
        [initiation] = run.initiations
        self.assertFalse(initiation.established, run.tails())
        self.assertNotIn("ESTABLISHED", run.sas[sw.INITIATOR], run.tails())
        log = run.logs["gdoi"]
        lines = OUR_FAILURE.findall(log)
        self.assertEqual(len(lines), 1, run.tails())
        self.assertIn(words, lines[0])
        for absent in ("ISAKMP SA established", "Traceback", "bug:"):
            self.assertNotIn(absent, log)
        ours = [decode_message(data) for d, data in isakmp_messages(read_udp(run.pcap))
                if d.src == sw.ADDRESS[sw.RESPONDER]]  # fmt: skip
        self.assertEqual([(m.exchange_type, m.encrypted) for m in ours], [(MAIN_MODE, False)] * 2, run.tails())
        return lines[0]

    def test_wrong_psk(self):
        """charon with the interop PSK, our daemon with another: our responder cannot decrypt MM5, logs that it
        "does not decode after decryption", answers nothing more; charon gives up."""
        run = self.run_case("mm_psk_modp2048", {}, {}, psk=b"not-the-interop-psk\n")
        self.check_refused(run, "message 5 does not decode after decryption")

    def test_revoked_certificate(self):
        """charon's RSA certificate is listed by its CA's CRL, which our daemon has in ``crl``: our responder logs
        the revocation (INVALID-CERTIFICATE) with the serial and the reason, and answers nothing more; charon
        gives up."""
        files, credentials = p1._certificates("rsa", self.workdir, sw.RESPONDER)
        ca = x509.load_pem_x509_certificate(files[f"{sw.INITIATOR}/x509ca/ca.pem"])
        charon = x509.load_pem_x509_certificate(files[f"{sw.INITIATOR}/x509/{sw.INITIATOR}.pem"])
        issuer = pki.Issued(ca, pki.key("rsa2048", 0))  # the CA key of _certificates("rsa", ...)
        now = datetime.datetime.now(datetime.timezone.utc)
        crl = pki.crl(issuer, [(charon, x509.ReasonFlags.key_compromise)], this_update=now - pki.DAY,
                      next_update=now + pki.DAY)
        credentials["crl"] = [pki.write_crls(self.workdir / "gdoi" / "ca.crl", crl)]
        run = self.run_case("mm_rsa", credentials, files)
        line = self.check_refused(run, f"(serial {charon.serial_number:x}) was revoked by")
        self.assertIn("reason keyCompromise", line)
