"""Replays (issue 9, "Impairments"): every datagram of an earlier exchange, sent again, creates no new SA, no new
keys and no registration, and a replayed GROUPKEY-PUSH is rejected by every member.

Our key server (:class:`gdoiserver.keyserver.KeyServer`, with its rekey service and an in-memory store) and two of
our group members (:class:`gdoiserver.member.service.GroupMember`) run in this process over
:class:`tests.test_gdoi_registration.Wire`: UDP in memory on a Clock, which keeps every datagram delivered.  The
members register (Main Mode, then GROUPKEY-PULL), the key server rekeys the group twice by unicast (RFC 8263
acknowledgements on), and then every captured datagram is put on the wire again, from its source to its
destination, in the order it first went:

- at once, while the machines that answered it still linger (they may answer a retransmission from their cache,
  RFC 2409 section 5: counted, nothing new), and
- again after the exchange timeout, when those machines are gone (a replayed Main Mode message 1 looks like any
  new first message and makes a half-open responder, which never gets further and times out).

Afterwards the key server holds the same ISAKMP SAs, the same TEK generations and KEKs, SEQ and members, and no
half-open or Phase 2 exchange beyond the counted ones; each member holds the same SA, TEKs, KEK and SEQ, and
counted every replayed PUSH as a duplicate (a copy of one it accepted) or a replay (RFC 6407 section 4: its SEQ is
not above the last).
"""

import tomllib

from twisted.trial import unittest

from gdoiserver.codec.constants import ExchangeType
from gdoiserver.codec.message import decode_message
from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.keyserver import KeyServer
from gdoiserver.member.config import parse_member_config
from gdoiserver.member.rekey import RECENT
from gdoiserver.member.service import GroupMember
from gdoiserver.store.base import MemoryStore
from tests.machine_pair import seeded_rng
from tests.test_gdoi_registration import Files, Wire

KS = "127.0.0.2"
PORT = 848
MEMBERS = ("127.0.0.10", "127.0.0.11")
NUMBER = 3101
GROUP = "replay"
#: Longer than every exchange timeout and linger (60 s), shorter than the TEK lifetime's rekey.
QUIET = 200


def group_toml(signing_key: str) -> str:
    return f"""
[[groups]]
name = "{GROUP}"
number = {NUMBER}
[[groups.members]]
pattern = "*.example.org"
[[groups.teks]]
name = "replay-gcm"
transform = "aes-gcm"
destination = "239.1.1.9"
lifetime = 3600
[groups.kek]
signature_key = "{signing_key}"
[groups.rekey]
source = "{KS}"
source_port = {PORT}
unicast = true
ack = true
retransmits = 1
retransmit_interval = 2.0
"""


class ReplayTests(unittest.TestCase):
    """See the module notes."""

    def setUp(self):
        self.files = Files(self)
        self.wire = Wire(1_800_000_000)
        text = self.files.ks_config(group_toml(self.files.signing_key), address=KS, peer="any", port=PORT)
        # Keep the members' Phase 1 SAs: their replays are part of what is sent again.
        text = text.replace("halfopen_total = 1024", "halfopen_total = 1024\nregistration_sa_linger = 0", 1)
        config = parse_config(tomllib.loads(text))
        self.ks = KeyServer(config, self.wire, policy_from_config(config), rng=seeded_rng(1), store=MemoryStore(),
                            control=False, metrics=False)
        self.ks.startService()
        self.addCleanup(self.ks.stopService)
        self.wire.run()
        self.assertTrue(self.ks.gdoi.ready)
        self.members = []
        for i, address in enumerate(MEMBERS):
            text = self.files.member_config([(KS, PORT)], [GROUP], address=address, identity=f"gm{i}.example.org")
            text = text.replace(f'name = "{GROUP}"\nnumber = 4242', f'name = "{GROUP}"\nnumber = {NUMBER}')
            member = GroupMember(parse_member_config(tomllib.loads(text)), self.wire, rng=seeded_rng(10 + i))
            member.startService()
            self.addCleanup(member.stopService)
            self.members.append(member)
        self.wire.run()
        for member in self.members:
            self.assertEqual(member.counters["member_registered"], 1, dict(member.counters))
        for _ in range(2):
            answer = self.ks.rekey(GROUP)
            self.wire.run()
            self.assertTrue(answer.called)
        self.wire.wait(10)  # acknowledgements in, retransmissions over
        self.seq = self.ks.rekeying.status()[GROUP]["seq"]
        for member in self.members:
            self.assertEqual(self.group(member).rekey.seq, self.seq)
            self.assertEqual(member.counters["push_accepted"], 2)

    # --- what may change -----------------------------------------------------------------------------------------

    @staticmethod
    def group(member):
        return next(iter(member.groups.values()))

    def ks_state(self) -> dict:
        """Everything a replay must not change on the key server: its SAs, keys, SEQ, members and acknowledgements,
        and the exchanges in progress."""
        engine = self.ks.engine
        run = self.ks.rekeying.runs[GROUP]
        keys = run.keys
        generations = [(g.number, tuple((t.spi, t.encryption_key, t.integrity_key) for t in g.teks))
                       for g in keys.generations]
        return {
            "sas": sorted(engine.sas),
            "generations": generations,
            "generations_made": keys.generations_made,
            "keks_made": keys.keks_made,
            "status": {k: v for k, v in self.ks.rekeying.status()[GROUP].items() if k != "next_wake"},
            "members": self.ks.rekeying.members(GROUP),
            "registered": sorted(self.ks.gdoi.registered.get(GROUP, {})),
            "phase2": {spi: sorted(mid for mid, slot in state.exchanges.items() if not slot.lingering)
                       for spi, state in self.ks.transport.phase2.sas.items()},
        }

    def member_state(self, member) -> dict:
        state = self.group(member)
        return {
            "sas": sorted(member.engine.sas),
            "teks": {spi: (entry[0].encryption_key, entry[0].integrity_key) for spi, entry in state.teks.items()},
            "kek": (state.rekey.kek.spi, state.rekey.kek.key),
            "seq": state.rekey.seq,
            "registration": id(state.registration),
            "registered": member.counters["member_registered"],
        }

    def replay(self, captured) -> None:
        """Each captured datagram again, from its source to its destination, in order."""
        for source, destination, data in captured:
            self.wire.queue.append((source, destination, data))
            self.wire.run()

    def check_unchanged(self, ks_before, members_before) -> None:
        self.assertEqual(self.ks_state(), ks_before)
        for member, before in zip(self.members, members_before):
            self.assertEqual(self.member_state(member), before)
            self.assertEqual(member.counters["member_registered"], 1, "no member registered again")

    # --- the tests ------------------------------------------------------------------------------------------------

    def captured(self) -> list:
        captured = list(self.wire.sent)
        kinds = {decode_message(d).exchange_type for _, _, d in captured if len(d) >= 28}
        self.assertTrue({ExchangeType.MAIN_MODE, ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH,
                         ExchangeType.GROUPKEY_PUSH_ACK} <= kinds, kinds)
        return captured

    def first_messages(self, captured) -> int:
        """How many captured datagrams are first messages to the key server (a zero responder cookie)."""
        return sum(1 for _, dst, d in captured if dst[0] == KS and d[8:16] == bytes(8))

    def check_half_open(self, counters, first_messages) -> None:
        """Each replayed first message made one half-open responder (the exchange it began is over, so it is not a
        retransmission: IKEv1 cannot tell it from a new initiator); none of them established, and at the exchange
        timeout they are gone, leaving everything else as it was."""
        started = self.ks.counters["phase1_responder_started"] - counters.get("phase1_responder_started", 0)
        self.assertEqual(started, first_messages)
        self.assertEqual(len(self.ks.engine.half_open), first_messages)
        self.assertEqual(self.ks.counters["phase1_established"], counters["phase1_established"])
        ks_before = self.ks_state()
        members_before = [self.member_state(m) for m in self.members]
        self.wire.wait(QUIET)
        self.assertEqual(len(self.ks.engine.half_open), 0)
        self.assertEqual(self.ks.counters["phase1_timeout"] - counters.get("phase1_timeout", 0), first_messages)
        self.check_unchanged(ks_before, members_before)

    def test_replay_at_once(self):
        """Every datagram of the registrations and rekeys replayed at once: no new SA, keys, SEQ, registration or
        Phase 2 exchange on either side (the machines that answered still linger: they answer a
        retransmission from their cache or drop it); each PUSH replayed to each member is rejected as a copy of one
        it accepted; the key server counts the replayed acknowledgements as duplicates."""
        captured = self.captured()
        ks_before = self.ks_state()
        members_before = [self.member_state(m) for m in self.members]
        counters = dict(self.ks.counters)
        pushes = sum(1 for _, dst, d in captured if decode_message(d).exchange_type == ExchangeType.GROUPKEY_PUSH)
        self.replay(captured)
        self.check_unchanged(ks_before, members_before)
        rejected = sum(m.counters["push_duplicate"] + m.counters["push_replay"] for m in self.members)
        self.assertEqual(rejected, pushes, "every replayed PUSH was rejected and counted")
        for member in self.members:
            self.assertEqual(member.counters["push_accepted"], 2)
            self.assertGreater(member.counters["push_duplicate"], 0)
        self.assertGreater(self.ks.counters["rekey_ack_duplicate"], 0)
        self.check_half_open(counters, self.first_messages(captured))

    def test_replay_later(self):
        """The same after the exchange timeout and more rekeys than a member remembers PUSH copies of: every member
        rejects every replayed PUSH as a replay (its SEQ is not above the last, RFC 6407 section 4), one replayed
        to a member other than its destination too; replayed PULL messages are counted against their finished
        M-IDs and Main Mode messages under the established SAs dropped; nothing else changes."""
        captured = self.captured()
        self.wire.wait(QUIET)
        for _ in range(RECENT + 1):
            answer = self.ks.rekey(GROUP)
            self.wire.run()
            self.assertTrue(answer.called)
        self.wire.wait(10)
        for member in self.members:
            self.assertEqual(member.counters["push_accepted"], RECENT + 3)
        ks_before = self.ks_state()
        members_before = [self.member_state(m) for m in self.members]
        counters = dict(self.ks.counters)
        pushes = [(src, dst, d) for src, dst, d in captured
                  if decode_message(d).exchange_type == ExchangeType.GROUPKEY_PUSH]
        self.replay(captured)
        # A PUSH sent to one member, replayed to the other.
        where = {dst[0]: dst for _, dst, _ in pushes}
        swapped = {where[MEMBERS[0]]: where[MEMBERS[1]], where[MEMBERS[1]]: where[MEMBERS[0]]}
        self.replay([(src, swapped[dst], d) for src, dst, d in pushes])
        self.check_unchanged(ks_before, members_before)
        self.assertEqual(sum(m.counters["push_replay"] for m in self.members), 2 * len(pushes), [{k: v for k, v in m.counters.items() if k.startswith("push")} for m in self.members])
        for member in self.members:
            self.assertEqual(member.counters["push_accepted"], RECENT + 3)
            self.assertGreater(member.counters["phase1_after_established"], 0)
        self.assertGreater(self.ks.counters["phase2_finished_mid"], counters.get("phase2_finished_mid", 0))
        self.assertGreater(self.ks.counters["phase1_after_established"], counters.get("phase1_after_established", 0))
        self.check_half_open(counters, self.first_messages(captured))
