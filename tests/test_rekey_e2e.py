"""Rekeying end to end over real loopback sockets: our key server (:class:`gdoiserver.keyserver.KeyServer`, with its
SQLite store) and several of our group members (:class:`gdoiserver.member.service.GroupMember`) in this process.
Datagrams travel over real UDP on 127.0.0.1/127.0.0.2 (unicast) and 239.192.0.0/16 on the loopback interface
(multicast); every timer runs on one :class:`task.Clock` that the test moves, so days of rekeys take seconds.
"""

import socket
import tomllib

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.keyserver import KeyServer, ListenerMulticast, _Clocked
from gdoiserver.member.config import parse_member_config
from gdoiserver.member.service import GroupMember
from gdoiserver.store.sqlite import SQLiteStore
from tests.test_gdoi_registration import Files

MEMBERS = 4
KS_ADDRESS = "127.0.0.2"
MC, UC = "mc", "uc"
NUMBERS = {MC: 2001, UC: 2002}


def free_port(address: str, kind=socket.SOCK_DGRAM) -> int:
    """A UDP port free on ``address`` now (the key server's rekey source port must be known in its config)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def groups_toml(signing_key: str, ks_port: int, mc_port: int) -> str:
    """Two groups: "mc" rekeyed by IPv4 multicast on the loopback, "uc" by unicast with RFC 8263 acks."""
    return f"""
[[groups]]
name = "mc"
number = {NUMBERS[MC]}
[[groups.members]]
pattern = "*.example.org"
[[groups.teks]]
name = "mc-gcm"
transform = "aes-gcm"
destination = "239.1.1.2"
lifetime = 600
[groups.kek]
signature_key = "{signing_key}"
lifetime = 3600
[groups.rekey]
source = "{KS_ADDRESS}"
source_port = {ks_port}
multicast_address = "239.192.0.77"
multicast_port = {mc_port}
interface = "127.0.0.1"
ttl = 1
retransmits = 1
retransmit_interval = 1.0
[groups.gap]
activation_delay = 5
deactivation_delay = 30

[[groups]]
name = "uc"
number = {NUMBERS[UC]}
[[groups.members]]
pattern = "*.example.org"
[[groups.teks]]
name = "uc-cbc"
transform = "aes-cbc"
integrity = "hmac-sha256"
destination = "239.1.1.3"
lifetime = 900
[groups.kek]
signature_key = "{signing_key}"
lifetime = 7200
[groups.rekey]
source = "{KS_ADDRESS}"
source_port = {ks_port}
unicast = true
ack = true
retransmits = 2
retransmit_interval = 2.0
stale_after = 2
[groups.gap]
deactivation_delay = 20
"""


@defer.inlineCallbacks
def until(predicate, what: str, timeout: float = 10.0):
    """Let the real reactor carry datagrams until ``predicate()`` holds (no clock time passes)."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


class EndToEndTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.files = Files(self)
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)  # a plausible wall-clock time for lifetimes and the store
        self.ks_port = free_port(KS_ADDRESS)
        self.mc_port = free_port("0.0.0.0")
        text = self.files.ks_config(groups_toml(self.files.signing_key, self.ks_port, self.mc_port),
                                    address=KS_ADDRESS, port=self.ks_port,
                                    )
        self.config = parse_config(tomllib.loads(text))
        self.store_path = self.files.path("state.db")
        self.ks = self.start_key_server()
        yield self.ks.ready
        self.members = []
        for i in range(MEMBERS):
            self.members.append(self.start_member(i))
        self.clock.advance(0)
        yield until(lambda: all(self.registered(m, g) for m in self.members for g in (MC, UC)), "registrations")

    def start_key_server(self) -> KeyServer:
        ks = KeyServer(self.config, reactor, policy_from_config(self.config), clock=self.clock,
                       store=SQLiteStore(self.store_path, reactor), control=False, metrics=False)
        ks.events = []
        ks.log = Logger(observer=ks.events.append)
        ks.startService()
        self.addCleanup(ks.stopService)
        return ks

    def start_member(self, i: int) -> GroupMember:
        text = self.files.member_config([(KS_ADDRESS, self.ks_port)], [MC, UC], identity=f"gm{i}.example.org")
        for name, number in NUMBERS.items():
            text = text.replace(f'name = "{name}"\nnumber = 4242', f'name = "{name}"\nnumber = {number}')
        member = GroupMember(parse_member_config(tomllib.loads(text)), _Clocked(reactor, self.clock))
        member.startService()
        self.addCleanup(member.stopService)
        return member

    def state(self, member: GroupMember, group: str):
        return next(s for s in member.groups.values() if s.entry.group_id.number == NUMBERS[group])

    def registered(self, member, group) -> bool:
        return self.state(member, group).registration is not None

    def seq(self, member, group) -> int:
        s = self.state(member, group)
        return -1 if s.rekey is None else s.rekey.seq

    def installed(self, member, group) -> set:
        return set(self.state(member, group).teks)

    def ks_generation_spis(self, group: str) -> list[set]:
        keys = self.ks.rekeying.runs[group].keys
        return [{t.spi for t in g.teks} for g in keys.generations]

    def expected_installed(self, group: str) -> set:
        """The TEK SPIs a member should hold now: the newest generation's, and those of each generation that a
        PUSH retired less than the GAP's deactivation delay ago (RFC 6407 section 5.7)."""
        delay = self.ks.rekeying.runs[group].group.policy.gap.deactivation_delay
        generations = [g for g in self.ks.rekeying.runs[group].keys.generations]
        now = self.clock.seconds()
        out = {t.spi for t in generations[-1].teks}
        for older, newer in zip(generations, generations[1:]):
            if newer.pushed_at is not None and now < newer.pushed_at + delay:
                out |= {t.spi for t in older.teks}
        return out

    @defer.inlineCallbacks
    def settle(self, members=None):
        """Wait until the key server has finished what is under way (store commits run on their own thread) and
        every member in ``members`` holds the key server's SEQ of each group."""
        members = self.members if members is None else members
        yield self.ks.rekeying.idle()
        # idle() fires from inside the lock's release: let the rest of that call chain (re-arming the rekey
        # timer) finish before the clock moves on.
        yield task.deferLater(reactor, 0, lambda: None)
        seqs = {g: s["seq"] for g, s in self.ks.rekeying.status().items()}
        yield until(lambda: all(self.seq(m, g) == seqs[g] for m in members for g in seqs), f"members at SEQ {seqs}")

    @defer.inlineCallbacks
    def tick(self, seconds: float, members=None, step: float = 5.0):
        """Let ``seconds`` of clock time pass in steps of at most ``step``, settling after each (time does not
        jump past a rekey before its PUSH has gone out)."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))
            yield self.settle(members)

    @defer.inlineCallbacks
    def next_rekey(self, members=None):
        """Let time pass until the rekey service's next wake has pushed something; returns the groups that
        rekeyed."""
        before = {g: s["seq"] for g, s in self.ks.rekeying.status().items()}
        for _ in range(1000):
            status = self.ks.rekeying.status()
            wake = min(s["next_wake"] for s in status.values())
            yield self.tick(max(wake - self.clock.seconds(), 0) + 0.001, members)
            after = {g: s["seq"] for g, s in self.ks.rekeying.status().items()}
            rekeyed = [g for g in after if after[g] != before[g]]
            if rekeyed:
                return rekeyed
        raise AssertionError("no rekey came")

    @defer.inlineCallbacks
    def operator_rekey(self):
        """``rekey`` both groups now (as ``gdoictl rekey`` does) and wait until every member has the new SEQ."""
        seqs = {}
        for g in (MC, UC):
            answer = yield self.ks.rekey(g)
            seqs[g] = answer["seq"]
        yield until(lambda: all(self.seq(m, g) == seqs[g] for m in self.members for g in seqs), f"SEQ {seqs}")
        return seqs

    @defer.inlineCallbacks
    def test_rekeys_roll_over_without_a_gap(self):
        """Over simulated hours, every member receives every rekey of both groups (multicast and unicast), KEK
        rekeys included; each new TEK is installed at once while the old one stays until the GAP's deactivation
        delay after the PUSH, so a member always holds a TEK of the key server's newest generation; SEQs rise
        strictly; the unicast group's members acknowledge every rekey (RFC 8263)."""
        # Multicast rekeys leave from the key server's listener, the SAK's SRC that members acknowledge to.
        self.assertIsInstance(self.ks.rekeying.runs[MC].delivery.multicast, ListenerMulticast)
        seen = {MC: [], UC: []}
        kek_spis = {MC: set(), UC: set()}
        end = self.clock.seconds() + 4 * 3600
        while self.clock.seconds() < end:
            old = {g: {id(m): self.installed(m, g) for m in self.members} for g in (MC, UC)}
            rekeyed = yield self.next_rekey()
            now = self.clock.seconds()
            for g in rekeyed:
                newest = self.ks_generation_spis(g)[-1]
                seen[g].append(self.seq(self.members[0], g))
                kek_spis[g].add(self.ks.rekeying.status()[g]["kek_spi"])
                for m in self.members:
                    held = self.installed(m, g)
                    self.assertTrue(newest <= held, f"{g}: the new TEKs are installed at once")
                    self.assertTrue(old[g][id(m)] <= held, f"{g}: the old TEKs are still installed")
            # Just before the deactivation delay runs out, old and new are both held; just after, only the new.
            yield self.tick(19)
            for g in rekeyed:
                for m in self.members:
                    self.assertGreaterEqual(len(self.installed(m, g)), 1)
            yield self.tick(12)
            for g in rekeyed:
                for m in self.members:
                    self.assertEqual(self.installed(m, g), self.expected_installed(g),
                                     f"{g} at {now}: the old TEKs left after the deactivation delay")
        for g in (MC, UC):
            self.assertGreaterEqual(len(seen[g]), 4, seen)
            self.assertEqual(seen[g], sorted(set(seen[g])), "SEQs rise strictly")
            self.assertGreaterEqual(len(kek_spis[g]), 2, "the KEK was rekeyed on its own lifetime")
        # A minute after registering, each member's Phase 1 SA was deleted (ike.registration_sa_linger): rekeys
        # and acknowledgements went on without one.
        self.assertEqual(self.ks.counters["phase1_released"], MEMBERS)
        self.assertEqual(len(self.ks.engine.sas), 0)
        for m in self.members:
            self.assertEqual(len(m.engine.sas), 0, "the member heard the Delete")
            self.assertEqual(m.counters["push_bad_signature"] + m.counters["push_malformed"], 0)
            self.assertEqual(m.counters["reregister_lost"], 0, "no member lost track")
        last = self.ks.rekeying.status()[UC]["seq"]
        yield until(lambda: all(r["last_seq_acked"] == last for r in self.ks.rekeying.members(UC)),
                    f"acknowledgements of the last unicast rekey: {self.ks.rekeying.members(UC)}, "
                    f"{ {k: v for k, v in self.ks.counters.items() if 'ack' in k} }")
        self.assertGreater(self.ks.counters["rekey_acked"], 0)
        self.assertFalse(any(r["stale"] for r in self.ks.rekeying.members(UC)))

    @defer.inlineCallbacks
    def test_evicted_member_cannot_follow(self):
        """After ``evict``, the other members take the new KEK from the LKH update and accept the TEK rekey that
        follows under it; the evicted member opens neither the new KEK nor the new TEKs, and registering again
        is refused."""
        evicted, others = self.members[0], self.members[1:]
        seq = yield self.ks.evict(MC, "gm0.example.org")
        self.assertEqual(seq["member"], "gm0.example.org")
        yield self.ks.rekeying.idle()
        ks_seq = self.ks.rekeying.status()[MC]["seq"]
        self.assertGreater(ks_seq, seq["seq"], "new TEKs follow the eviction")
        yield until(lambda: all(self.seq(m, MC) == ks_seq for m in others), "the others at the new SEQ")
        newest = self.ks_generation_spis(MC)[-1]
        for m in others:
            self.assertTrue(newest <= self.installed(m, MC))
        yield until(lambda: evicted.counters["push_unknown_kek"] + evicted.counters["push_refused"] >= 1,
                    "the evicted member dropping the rekeys")
        self.assertFalse(newest & self.installed(evicted, MC), "the evicted member has none of the new TEKs")
        self.assertLess(self.seq(evicted, MC), ks_seq)
        # Two more rekeys: the others follow, the evicted member never does.
        for _ in range(2):
            yield self.next_rekey(members=others)
            newest = self.ks_generation_spis(MC)[-1]
            self.assertFalse(newest & self.installed(evicted, MC))
        self.assertIn("gm0.example.org", self.ks.rekeying.status()[MC]["evicted"])
        self.assertEqual(self.ks.counters["eviction"], 1)

    @defer.inlineCallbacks
    def test_restart_goes_on(self):
        """A key server stopped and started again on the same store keeps its keys, SEQ and members: the members
        accept its next rekeys without registering again, and no SEQ is reused."""
        yield self.operator_rekey()
        seqs = {g: self.ks.rekeying.status()[g]["seq"] for g in (MC, UC)}
        spis = {g: self.ks_generation_spis(g) for g in (MC, UC)}
        yield self.ks.stopService()
        self.ks = self.start_key_server()
        yield self.ks.ready
        self.assertEqual({g: self.ks_generation_spis(g) for g in (MC, UC)}, spis, "the keys came back")
        self.assertEqual(len(self.ks.rekeying.members(MC)), MEMBERS)
        yield self.operator_rekey()
        yield self.next_rekey()
        for g in (MC, UC):
            self.assertGreater(self.ks.rekeying.status()[g]["seq"], seqs[g])
        for m in self.members:
            self.assertEqual(m.counters["reregister_lost"], 0)
            self.assertEqual(m.counters["push_replay"], 0, "no SEQ was reused")
