"""The rekey service (gdoiserver.rekey.service) on task.Clock with a MemoryStore: days of simulated time with clock
jumps, operator rekeys, write before send, SEQ reservation, restarts, acknowledgements and stale members."""

import ipaddress
from collections import Counter

import attrs
from twisted.internet import defer, task
from twisted.trial import unittest

from gdoiserver.codec.attributes import attribute_map
from gdoiserver.codec.gdoi import KEKKeyAttr, KeyPacketType
from gdoiserver.codec.payloads import Identification
from gdoiserver.doi.gdoi import download, push
from gdoiserver.doi.gdoi.ack import build_ack
from gdoiserver.doi.gdoi.registration import MemberPolicy, read_keys, read_policy
from gdoiserver.group.keys import GroupTable
from gdoiserver.group.lkh import LKHTree
from gdoiserver.group.policy import (
    GAPPolicy,
    GroupId,
    GroupPolicy,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
)
from gdoiserver.rekey.members import MemberTable, RegisteredMember
from gdoiserver.rekey.schedule import lead_time
from gdoiserver.rekey.service import RekeyError, RekeyService, reissue_updates
from gdoiserver.store.base import MemoryStore
from tests import pki
from tests.machine_pair import seeded_rng

SELECTOR = TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("239.1.1.1/32"))
HOUR, DAY = 3600.0, 86400.0
T0 = 1_700_000_000.0
NUMBER = 4242
GID = GroupId(number=NUMBER)
SERVER = ("192.0.2.1", 848)
SIG_KEY = pki.key("p256")


def group_policy(name="g", number=NUMBER, tek_lifetime=3600, kek_lifetime=4 * 3600, kek=True, **rekey):
    rekey.setdefault("unicast", True)
    rekey.setdefault("source", ipaddress.ip_address("192.0.2.1"))
    transport = RekeyTransport(**rekey)
    tek = TEKPolicy("cbc", TEKTransform.AES_CBC, SELECTOR, 128, "hmac-sha256", lifetime=tek_lifetime)
    gcm = TEKPolicy("gcm", TEKTransform.AES_GCM, SELECTOR, 128, lifetime=tek_lifetime)
    if not kek:
        return GroupPolicy(name, (tek,), number=number)
    return GroupPolicy(name, (tek, gcm), number=number, kek=KEKPolicy(SIG_KEY, 128, lifetime=kek_lifetime),
                       rekey=transport, gap=GAPPolicy(10, 20))


@attrs.frozen
class Registered:
    """What KeyServerDOI.established hands the hook (the fields of pull.MemberRegistered the service reads)."""

    group: str
    member: str
    identity: Identification
    address: tuple
    sender_ids: tuple = ()
    leaf: int | None = None
    ack_key: bytes = attrs.field(default=b"", repr=False)


class CommittedButLost(MemoryStore):
    """A store whose commits become durable but whose Deferreds never fire: the process dies right after."""

    def __init__(self, groups=None):
        super().__init__(groups)
        self.lose = False

    def commit(self, group, changes):
        d = super().commit(group, changes)
        return defer.Deferred() if self.lose else d


class FakeKeyLog:
    def __init__(self):
        self.keks = []

    def write_kek(self, spi, key, key_bits):
        self.keks.append((spi, key, key_bits))


class Member:
    """A group member as the tests see it: it registered as GROUPKEY-PULL would have it (download.py's SA and KD,
    read with registration.py), then reads each PUSH with push.verify_push, as the member's rekey code does, and
    takes up new TEKs, KEKs, LKH paths and Deletes."""

    def __init__(self, name, registration, now):
        self.name = name
        self.kek = registration.kek
        self.seq = registration.seq
        self.path = registration.lkh_path
        self.teks = {t.spi: (t.encryption_key, now + t.lifetime) for t in registration.teks}
        self.accepted, self.deleted = [], []
        self.refused = Counter()

    @property
    def kek_spi(self) -> bytes:
        return self.kek.spi

    def receive(self, datagram: bytes, now: float) -> None:
        try:
            result = push.verify_push(datagram, self.kek, self.seq, group=GID, server=SERVER, now=now,
                                      lkh_path=self.path)
        except push.PushError as e:
            self.refused[e.counter] += 1
            return
        self.seq = result.seq
        self.kek = result.kek_after(self.kek)
        self.path = result.lkh_path_after(self.path)
        self.accepted.append((now, result.seq))
        for tek in result.teks:
            self.teks[tek.spi] = (tek.encryption_key, now + tek.lifetime)
        if result.deleted_teks or result.deleted_keks:
            self.deleted.append((now, result.deleted_teks + result.deleted_keks))

    def live_teks(self, now: float) -> set:
        return {spi for spi, (_, expires) in self.teks.items() if expires > now}


class Harness:
    """A RekeyService over ``store`` on a Clock, whose unicast PUSHes are recorded and handed to the members."""

    def __init__(self, test, policies=None, store=None, clock=None, seq_block=8, keylog=None):
        self.test = test
        self.policies = policies or [group_policy()]
        self.store = store if store is not None else MemoryStore()
        self.clock = clock or task.Clock()
        if clock is None:
            self.clock.advance(T0)
        self.counters = Counter()
        self.sent = []  # (time, datagram, peer)
        self.members = {}  # peer -> Member
        self.table = GroupTable(self.policies, seeded_rng(7))
        self.service = RekeyService(self.table, self.store, self.clock, seeded_rng(8), self.send, self.counters,
                                    keylog, seq_block=seq_block)
        test.addCleanup(self.service.stop)

    def send(self, datagram, peer):
        now = self.clock.seconds()
        self.sent.append((now, datagram, peer))
        member = self.members.get(peer)
        if member is not None:
            member.receive(datagram, now)

    def start(self):
        d = self.service.start()
        self.test.assertTrue(d.called, "start waits for nothing in a MemoryStore")
        return self.test.successResultOf(d)

    def group(self, name="g"):
        return self.service.runs[name].group

    def register(self, name, port, group="g", ack_key=b""):
        """A member registers: GROUPKEY-PULL gives it the current keys and its LKH path, and the hook tells the
        service."""
        g, now = self.group(group), self.clock.seconds()
        peer = (f"192.0.2.{port % 200 + 10}", port)
        identity = f"{name}.example.org"
        keys = g.keys
        generation, kek = keys.current(now), keys.kek(now)
        path = self.service.leaf_for(g.policy.name, identity)
        sa = download.sa_payload(g, generation, kek, peer, now)
        kd = download.kd_payload(generation, kek, (), g.policy.sender_id_bits, lkh_path=path)
        registration = read_keys(read_policy(sa, MemberPolicy()), kd, kek.seq, group=GID, server=SERVER, now=now,
                                 asked_sender_ids=0, pfs=False)
        member = Member(name, registration, now)
        member.peer = peer
        self.members[peer] = member
        self.test.successResultOf(self.service.member_registered(
            Registered(g.policy.name, identity, Identification.of(identity), peer, leaf=path[0].node,
                       ack_key=ack_key)))
        return member

    def state(self, group="g"):
        return self.test.successResultOf(self.store.load())[group]

    def run_for(self, seconds, step=60.0):
        """Advance the clock in steps (so that each timer fires when due)."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))


class StartTests(unittest.TestCase):
    def test_first_keys(self):
        """An empty store: the first KEK and generation are made and committed before start fires; nothing is
        pushed (nobody holds keys yet); the KEK goes to the keylog."""
        keylog = FakeKeyLog()
        h = Harness(self, keylog=keylog)
        h.start()
        state = h.state()
        keys = h.group().keys
        self.assertEqual([g.number for g in state.generations], [1])
        self.assertEqual([k.spi for k in state.keks], [keys.current_kek.spi])
        self.assertEqual(state.generations[0].teks[0].spi, keys.newest.teks[0].spi)
        self.assertEqual(h.sent, [])
        self.assertEqual(keylog.keks, [(keys.current_kek.spi, keys.current_kek.key, 128)])
        self.assertEqual(state.seq_high_water, 0)

    def test_stop_leaves_nothing(self):
        """stop cancels every timer and retransmission."""
        h = Harness(self)
        h.start()
        h.register("a", 1000)
        h.run_for(HOUR)  # a rekey and its retransmissions are in flight
        self.assertTrue(h.clock.getDelayedCalls())
        h.service.stop()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        sent = len(h.sent)
        h.clock.advance(DAY)
        self.assertEqual(len(h.sent), sent)


    def test_stop_during_a_commit(self):
        """A rekey whose commit is still pending when the service stops sends nothing once the commit lands;
        idle() fires when it has finished, so the store can be closed."""
        h = Harness(self)
        h.start()
        h.register("a", 1000)
        h.store.pause()
        h.service.rekey("g")
        h.service.stop()
        idle = h.service.idle()
        self.assertNoResult(idle)
        h.store.resume()
        self.successResultOf(idle)
        self.assertEqual(h.sent, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.counters["rekey_failed"], 0)
        self.assertEqual([g.pushed_at for g in h.state().generations], [T0, None])  # a restart pushes it


class ScheduleTests(unittest.TestCase):
    def test_days_of_rekeys(self):
        """Over three days (TEKs of 1 h, a KEK of 4 h): every PUSH has a higher SEQ than the last; each new
        generation reaches the members before the old one expires and the PUSH deletes the old TEKs; the KEK
        is replaced on its own lifetime; the members never lack a live TEK and follow every KEK."""
        h = Harness(self)
        h.start()
        a, b = h.register("a", 1000), h.register("b", 1001)
        keys = h.group().keys
        kek_spis = [keys.current_kek.spi]
        generations = [keys.newest]
        end = h.clock.seconds() + 3 * DAY
        while h.clock.seconds() < end:
            h.clock.advance(30.0)
            now = h.clock.seconds()
            if keys.newest is not generations[-1]:
                old, new = generations[-1], keys.newest
                self.assertLess(now, old.expires_at)  # pushed before the old one expired
                self.assertGreaterEqual(old.expires_at - now, lead_time(h.group().policy) - 30.0)
                generations.append(new)
            if keys.current_kek.spi != kek_spis[-1]:
                kek_spis.append(keys.current_kek.spi)
            for m in (a, b):  # no gap: a member always holds live TEKs, the newest among them
                self.assertTrue({t.spi for t in keys.newest.teks} <= m.live_teks(now), f"{m.name} at {now - T0}")
        h.clock.pump([5.0] * 3)  # the last retransmissions
        for m in (a, b):
            seqs = [s for _, s in m.accepted]
            self.assertEqual(seqs, sorted(set(seqs)))
            # the retransmitted copies of a PUSH that changed the KEK come under the KEK the member left
            self.assertEqual(m.refused[push.UNKNOWN_KEK], 2 * (len(kek_spis) - 1))
            self.assertEqual(m.kek_spi, keys.current_kek.spi)
            # each TEK rekey named the TEKs of the generation before it in a Delete
            deleted = {spi for _, spis in m.deleted for spi in spis if len(spi) == 4}
            self.assertTrue({t.spi for g in generations[:-1] for t in g.teks} <= deleted)
        tek_rekeys = len(generations) - 1
        self.assertEqual(tek_rekeys, int(3 * DAY // (HOUR - 360)))
        self.assertGreaterEqual(len(kek_spis) - 1, int(3 * DAY // (4 * HOUR - 1440)))
        self.assertLessEqual(len(kek_spis) - 1, int(3 * DAY // (4 * HOUR - 1440)) + 1)
        self.assertEqual(a.accepted, b.accepted)
        # every other PUSH is retransmitted twice, and the copies are rejected as replays
        self.assertEqual(a.refused[push.REPLAY], 2 * (len(a.accepted) - (len(kek_spis) - 1)))
        self.assertEqual(h.counters["rekey_sent"], len(a.accepted))

    def test_clock_jumps(self):
        """A jump forward of several days gives one PUSH (new TEKs and a new KEK together), not a burst; a jump
        backward pushes nothing early or twice; SEQ keeps rising."""
        h = Harness(self)
        h.start()
        m = h.register("a", 1000)
        h.run_for(HOUR)
        before = len(m.accepted)
        h.clock.rightNow += 5 * DAY
        h.clock.advance(0)
        self.assertEqual(len(m.accepted), before + 1)
        keys = h.group().keys
        self.assertEqual(keys.newest.created_at, h.clock.seconds())
        self.assertEqual(keys.current_kek.created_at, h.clock.seconds())
        self.assertEqual(m.kek_spi, keys.current_kek.spi)
        h.run_for(600)
        self.assertEqual(len(m.accepted), before + 1)
        h.clock.rightNow -= 2 * DAY
        h.run_for(HOUR)
        self.assertEqual(len(m.accepted), before + 1)
        h.clock.rightNow += 2 * DAY
        h.clock.advance(0)  # the TEK rekey due while the clock was behind, once
        self.assertEqual(len(m.accepted), before + 2)
        h.run_for(60.0)
        self.assertEqual(len(m.accepted), before + 2)
        seqs = [s for _, s in m.accepted]
        self.assertEqual(seqs, sorted(set(seqs)))

    def test_operator_rekey(self):
        """An operator rekey pushes a new generation at once, whenever asked; the next scheduled one follows a
        lifetime after it."""
        h = Harness(self)
        h.start()
        m = h.register("a", 1000)
        h.clock.advance(17.0)
        seq = self.successResultOf(h.service.rekey("g"))
        self.assertEqual(m.accepted, [(h.clock.seconds(), seq)])
        newest = h.group().keys.newest
        self.assertEqual(newest.created_at, h.clock.seconds())
        self.assertEqual(h.service.status()["g"]["next_wake"],
                         newest.expires_at - lead_time(h.group().policy))
        seq2 = self.successResultOf(h.service.rekey("g", kek=True))
        self.assertEqual(seq2, seq + 1)
        self.assertEqual(m.kek_spi, h.group().keys.current_kek.spi)

    def test_operator_rekey_refused(self):
        """A rekey of an unknown group, or of a group without a KEK, fails with RekeyError."""
        h = Harness(self, [group_policy(), group_policy("plain", 7, kek=False)])
        h.start()
        self.failureResultOf(h.service.rekey("nope"), RekeyError)
        self.failureResultOf(h.service.rekey("plain"), RekeyError)

    def test_group_without_kek(self):
        """A group without a KEK gets its first generation, is never pushed, and its expired generations are
        forgotten."""
        h = Harness(self, [group_policy("plain", 7, kek=False, tek_lifetime=600)])
        h.start()
        keys = h.group("plain").keys
        first = keys.newest
        h.run_for(700)
        self.assertEqual(h.sent, [])
        self.assertEqual(keys.generations, [])
        self.assertEqual(h.state("plain").generations, ())
        self.assertIsNot(keys.current(h.clock.seconds()), first)


class StoreOrderTests(unittest.TestCase):
    def test_write_before_send(self):
        """While the store has not confirmed a rekey's commit, nothing is sent and registrations still get the
        old generation; once it confirms, the PUSH goes."""
        h = Harness(self)
        h.start()
        m = h.register("a", 1000)
        old = h.group().keys.newest
        h.store.pause()
        d = h.service.rekey("g")
        h.clock.advance(1.0)
        self.assertEqual(h.sent, [])
        self.assertIs(h.group().keys.current(h.clock.seconds()), old)
        self.assertNoResult(d)
        h.store.resume()
        self.assertEqual(len(m.accepted), 1)
        self.assertIsNot(h.group().keys.newest, old)
        self.successResultOf(d)

    def test_seq_blocks(self):
        """SEQs are reserved in blocks: the stored high-water mark is at or above every SEQ sent, and moves once
        per block."""
        h = Harness(self, seq_block=4)
        h.start()
        h.register("a", 1000)
        for n in range(1, 11):
            seq = self.successResultOf(h.service.rekey("g"))
            self.assertEqual(seq, n)
            self.assertGreaterEqual(h.state().seq_high_water, seq)
        self.assertEqual(h.state().seq_high_water, 12)
        self.assertEqual(h.counters["seq_reserved"], 3)

    def test_commit_failure(self):
        """A commit the store refuses leaves the keys as they were, is counted, and is tried again later."""
        h = Harness(self)
        h.start()
        m = h.register("a", 1000)
        old = h.group().keys.newest
        h.store.fail_commits(OSError("disk full"))
        h.clock.advance(old.expires_at - lead_time(h.group().policy) - h.clock.seconds())
        self.assertEqual(h.counters["rekey_failed"], 1)
        self.assertIs(h.group().keys.newest, old)
        self.assertEqual(m.accepted, [])
        self.flushLoggedErrors(OSError)
        h.store.fail_commits(None)
        h.clock.advance(30.0)
        self.assertEqual(len(m.accepted), 1)
        self.assertEqual(m.accepted[0][1], 1)


class RestartTests(unittest.TestCase):
    def test_restart(self):
        """A new service over the same store contents goes on with the same KEK and TEKs, the same members and
        higher SEQs; the members accept its next PUSH."""
        h = Harness(self, seq_block=5)
        h.start()
        m = h.register("a", 1000)
        h.run_for(3 * HOUR)
        keys = h.group().keys
        kek = (keys.current_kek.spi, keys.current_kek.key)
        teks = [(t.spi, t.encryption_key) for g in keys.generations for t in g.teks]
        last = m.seq
        h.service.stop()

        again = Harness(self, store=h.store.reopened(), clock=h.clock, seq_block=5)
        again.members = h.members
        again.start()
        keys2 = again.group().keys
        self.assertEqual((keys2.current_kek.spi, keys2.current_kek.key), kek)
        self.assertEqual([(t.spi, t.encryption_key) for g in keys2.generations for t in g.teks], teks)
        self.assertEqual(keys2.current_kek.seq, h.state().seq_high_water)
        self.assertEqual(again.service.members("g")[0]["identity"], "a.example.org")
        self.assertEqual(again.sent, [])  # nothing was left unpushed
        seq = self.successResultOf(again.service.rekey("g"))
        self.assertGreater(seq, last)
        self.assertEqual(seq, h.state().seq_high_water + 1)
        self.assertEqual(m.accepted[-1][1], seq)
        # registrations after the restart are told the SEQ to accept PUSHes after
        self.assertGreaterEqual(keys2.kek(again.clock.seconds()).seq, seq)

    def test_crash_after_commit(self):
        """A crash after a rekey's commit and before its PUSH: the restarted service pushes the stored
        generation (and KEK) with a SEQ above the high-water mark; the member takes both."""
        store = CommittedButLost()
        h = Harness(self, store=store, seq_block=3)
        h.start()
        m = h.register("a", 1000)
        store.lose = True
        h.service.rekey("g", kek=True)
        self.assertEqual(m.accepted, [])
        h.service.stop()
        state = h.state()
        self.assertEqual([g.pushed_at for g in state.generations], [T0, None])
        self.assertEqual([k.retired for k in state.keks], [True, False])

        again = Harness(self, store=MemoryStore({"g": state}), clock=h.clock, seq_block=3)
        again.members = h.members
        again.start()
        self.assertEqual([s for _, s in m.accepted], [state.seq_high_water + 1, state.seq_high_water + 2])
        self.assertEqual(m.kek_spi, state.keks[-1].spi)
        self.assertIn(again.group().keys.newest.teks[0].spi, m.teks)
        after = again.state()
        self.assertEqual([k.retired for k in after.keks], [False])
        self.assertIsNotNone(after.generations[-1].pushed_at)

    def test_members_and_eviction_set_restored(self):
        """Members (address, marks) and evicted identities come back from the store."""
        h = Harness(self)
        h.start()
        h.register("a", 1000)
        h.register("b", 1001)
        before = h.service.members("g")
        h.service.stop()
        again = Harness(self, store=h.store.reopened(), clock=h.clock)
        again.start()
        self.assertEqual(again.service.members("g"), before)


class AckTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self, [group_policy(ack=True, stale_after=2, retransmits=2, retransmit_interval=5.0)])
        self.h.start()
        self.key_a, self.key_b = bytes(range(32)), bytes(range(1, 33))
        self.a = self.h.register("a", 1000, ack_key=self.key_a)
        self.b = self.h.register("b", 1001, ack_key=self.key_b)

    def ack(self, member_peer, key, seq, kek_spi=None, group=NUMBER):
        data = build_ack(kek_spi or self.h.group().keys.current_kek.spi, seq,
                         GroupId(number=group).identification(), key)
        self.h.service.ack_received(None, data, member_peer, None)

    def test_ack_stops_unicast_copies(self):
        """A member's valid ACK is counted and stops the unicast copies to it; the other member still gets them."""
        h = self.h
        seq = self.successResultOf(h.service.rekey("g"))
        self.ack(self.a.peer, self.key_a, seq)
        self.assertEqual(h.counters["rekey_acked"], 1)
        h.clock.pump([5.0, 5.0])
        peers = [peer for t, _, peer in h.sent if t > T0]
        self.assertEqual(peers.count(self.a.peer), 0)
        self.assertEqual(peers.count(self.b.peer), 2)
        (a,) = [x for x in h.service.members("g") if x["identity"] == "a.example.org"]
        self.assertEqual(a["last_seq_acked"], seq)

    def test_bad_acks(self):
        """An ACK with the wrong key, from an unknown address, for another group or KEK, or not an ACK at all, is
        counted as rekey_ack_bad; a repeated one as rekey_ack_duplicate."""
        h = self.h
        seq = self.successResultOf(h.service.rekey("g"))
        self.ack(self.a.peer, self.key_b, seq)
        self.ack(("198.51.100.1", 1000), self.key_a, seq)
        self.ack(self.a.peer, self.key_a, seq, group=99)
        self.ack(self.a.peer, self.key_a, seq, kek_spi=bytes(range(1, 17)))
        h.service.ack_received(None, b"\x00" * 40, self.a.peer, None)
        self.assertEqual(h.counters["rekey_ack_bad"], 5)
        self.ack(self.a.peer, self.key_a, seq)
        self.ack(self.a.peer, self.key_a, seq)
        self.assertEqual((h.counters["rekey_acked"], h.counters["rekey_ack_duplicate"]), (1, 1))

    def test_ack_from_another_port(self):
        """An ACK from the member's address but another port (a NAT moved it) is still checked and counted."""
        h = self.h
        seq = self.successResultOf(h.service.rekey("g"))
        self.ack((self.a.peer[0], 4500), self.key_a, seq)
        self.assertEqual(h.counters["rekey_acked"], 1)

    def test_stale(self):
        """A member that acknowledged none of the last ``stale_after`` rekeys is marked stale (counted, shown,
        stored) but kept; one that acknowledged is not; a fresh registration clears the mark."""
        h = self.h
        for _ in range(2):
            seq = self.successResultOf(h.service.rekey("g"))
            self.ack(self.a.peer, self.key_a, seq)
            h.clock.pump([5.0] * 3)
        stale = {m["identity"]: m["stale"] for m in h.service.members("g")}
        self.assertEqual(stale, {"a.example.org": False, "b.example.org": True})
        self.assertEqual(h.counters["members_stale"], 1)
        self.assertEqual(h.service.status()["g"]["stale"], 1)
        self.assertTrue(h.state().members["b.example.org"].stale)
        self.assertEqual(h.state().members["a.example.org"].last_seq_acked, seq)
        h.register("b", 1001, ack_key=self.key_b)
        self.assertFalse(h.state().members["b.example.org"].stale)
        self.assertEqual(h.service.status()["g"]["stale"], 0)


class StatusTests(unittest.TestCase):
    def test_status_has_no_keys(self):
        """status() and members() are plain data and carry no key material."""
        h = Harness(self)
        h.start()
        h.register("a", 1000, ack_key=b"\x99" * 32)
        self.successResultOf(h.service.rekey("g"))
        text = repr(h.service.status()) + repr(h.service.members("g"))
        keys = h.group().keys
        secrets = [keys.current_kek.key] + [t.encryption_key for g in keys.generations for t in g.teks]
        secrets.append(b"\x99" * 32)
        for secret in secrets:
            self.assertNotIn(secret.hex(), text)
            self.assertNotIn(repr(secret), text)
        status = h.service.status()["g"]
        self.assertEqual((status["seq"], status["members"], status["generation"]), (1, 1, 2))


class OnDemandTests(unittest.TestCase):
    def test_registration_makes_a_generation(self):
        """When a registration finds no live generation (the clock jumped and the timers have not run yet), the
        generation it makes is stored at once and then pushed to the members that hold the old keys."""
        h = Harness(self)
        h.start()
        m = h.register("a", 1000)
        h.clock.rightNow += 3 * HOUR
        new = h.group().keys.current(h.clock.seconds())
        self.assertEqual(new.number, 2)
        self.assertEqual(h.state().generations[-1].number, 2)
        self.assertIsNone(h.state().generations[-1].pushed_at)
        h.clock.advance(0)
        self.assertEqual(len(m.accepted), 1)
        self.assertIn(new.teks[0].spi, m.teks)
        self.assertIsNotNone(h.state().generations[-1].pushed_at)
        self.assertEqual(h.group().keys.generations_made, 2)

    def test_registration_makes_a_kek(self):
        """A KEK made by a registration after the old one expired is stored (the old one kept as retired) and
        pushed under the old one."""
        h = Harness(self)
        h.start()
        m = h.register("a", 1000)
        old = h.group().keys.current_kek
        h.clock.rightNow += 5 * HOUR
        new = h.group().keys.kek(h.clock.seconds())
        self.assertIsNot(new, old)
        self.assertEqual({(k.spi, k.retired) for k in h.state().keks}, {(old.spi, True), (new.spi, False)})
        h.clock.advance(0)
        self.assertEqual(m.kek_spi, h.group().keys.current_kek.spi)
        self.assertEqual([k.retired for k in h.state().keks], [False])


class EvictionTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.start()
        self.members = [self.h.register(name, 1000 + i) for i, name in enumerate("abcd")]
        self.a, self.b, self.c, self.d = self.members

    def test_evicted_member_cannot_follow(self):
        """After evict, the other members take the new KEK from the LKH update and the new TEKs under it; the
        evicted member can open the eviction PUSH but learns nothing from it, and cannot open the next one."""
        h, b = self.h, self.b
        old_kek = h.group().keys.current_kek
        seq = self.successResultOf(h.service.evict("g", "b.example.org"))
        keys = h.group().keys
        self.assertNotEqual(keys.current_kek.spi, old_kek.spi)
        for m in (self.a, self.c, self.d):
            self.assertEqual([s for _, s in m.accepted], [seq, seq + 1])
            self.assertEqual((m.kek.spi, m.kek.key), (keys.current_kek.spi, keys.current_kek.key))
            self.assertTrue({t.spi for t in keys.newest.teks} <= m.live_teks(h.clock.seconds()))
        self.assertEqual(b.accepted, [])  # the unicast copies stop: it is out of the table
        self.assertEqual(b.kek_spi, old_kek.spi)
        # were it still listening (multicast), it could open the eviction PUSH and learn nothing
        eviction, tek_rekey = [d for d in dict.fromkeys(d for _, d, _ in h.sent)]
        b.receive(eviction, h.clock.seconds())
        b.receive(tek_rekey, h.clock.seconds())
        self.assertEqual((b.refused[push.REFUSED], b.refused[push.UNKNOWN_KEK], b.accepted), (1, 1, []))
        self.assertEqual(h.counters["eviction"], 1)

    def test_eviction_message(self):
        """The eviction PUSH carries the new KEK's signature key but never its key; the wrapped keys are at most
        2 * depth."""
        h = self.h
        under = h.group().keys.current_kek
        self.successResultOf(h.service.evict("g", "c.example.org"))
        eviction = h.sent[0][1]
        header, plaintext = push.open_push(eviction, under.spi, under.key, 128)
        kd = header.with_plaintext(plaintext, 2, push.CTX).payloads[3]
        (kek_packet,) = kd.packets_of(KeyPacketType.KEK)
        self.assertEqual(set(attribute_map(kek_packet.attributes)), {KEKKeyAttr.SIG_ALGORITHM_KEY})
        self.assertEqual(len(kd.packets_of(KeyPacketType.LKH)), 1)

    def test_eviction_is_stored(self):
        """The store holds the evicted identity, no record of the member, the new KEK alone, and the path's new
        node keys; the identity gets no leaf and is refused until readmitted."""
        h = self.h
        leaf = self.b.path[0].node
        before = h.state().lkh_nodes
        self.successResultOf(h.service.evict("g", "b.example.org"))
        state = h.state()
        self.assertEqual(state.evicted, {"b.example.org"})
        self.assertNotIn("b.example.org", state.members)
        self.assertEqual([k.spi for k in state.keks], [h.group().keys.current_kek.spi])
        self.assertGreater(state.lkh_nodes[leaf // 2].version, before[leaf // 2].version)
        self.assertTrue(h.service.is_evicted("g", "b.example.org"))
        self.assertIsNone(h.service.leaf_for("g", "b.example.org"))
        self.assertEqual(h.service.status()["g"]["evicted"], ["b.example.org"])
        self.assertTrue(self.successResultOf(h.service.readmit("g", "b.example.org")))
        self.assertFalse(h.service.is_evicted("g", "b.example.org"))
        self.assertEqual(h.state().evicted, frozenset())
        self.assertFalse(self.successResultOf(h.service.readmit("g", "b.example.org")))

    def test_write_before_send(self):
        """Nothing of an eviction leaves before its commit is done."""
        h = self.h
        h.store.pause()
        d = h.service.evict("g", "a.example.org")
        self.assertEqual(h.sent, [])
        h.store.resume()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertTrue(h.sent)

    def test_crash_before_the_eviction_push(self):
        """A crash after the eviction's commit: the restarted service sends the eviction again as an LKH update
        (never the new KEK in a plain KEK packet, which the evicted member could read), then new TEKs."""
        store = CommittedButLost()
        h = Harness(self, store=store)
        h.start()
        a, b, c = (h.register(name, 2000 + i) for i, name in enumerate("abc"))
        store.lose = True
        h.service.evict("g", "b.example.org")
        self.assertEqual(h.sent, [])
        h.service.stop()
        state = h.state()
        again = Harness(self, store=MemoryStore({"g": state}), clock=h.clock)
        again.members = h.members
        again.start()
        keys = again.group().keys
        for m in (a, c):
            self.assertEqual(len(m.accepted), 2)
            self.assertEqual((m.kek.spi, m.kek.key), (keys.current_kek.spi, keys.current_kek.key))
        self.assertEqual(b.accepted, [])
        for datagram in dict.fromkeys(d for _, d, _ in again.sent):
            b.receive(datagram, again.clock.seconds())
        self.assertEqual(b.accepted, [])
        self.assertEqual(b.kek_spi, state.keks[0].spi)
        self.assertNotIn("b.example.org", again.state().members)
        self.assertEqual(again.counters["eviction"], 1)

    def test_leaves_kept(self):
        """A member registering again keeps its leaf; after a restart too; a new member gets another one."""
        h = self.h
        leaf = self.a.path[0].node
        self.assertEqual(h.service.leaf_for("g", "a.example.org")[0].node, leaf)
        h.service.stop()
        again = Harness(self, store=h.store.reopened(), clock=h.clock)
        again.start()
        path = again.service.leaf_for("g", "a.example.org")
        self.assertEqual([(k.node, k.version, k.key) for k in path],
                         [(k.node, k.version, k.key) for k in self.a.path])
        self.assertNotIn(again.service.leaf_for("g", "new.example.org")[0].node,
                         {m.path[0].node for m in self.members})

    def test_evict_unknown_identity(self):
        """An identity that holds no keys is only refused from then on: nothing is pushed."""
        h = self.h
        self.assertIsNone(self.successResultOf(h.service.evict("g", "stranger.example.org")))
        self.assertEqual(h.sent, [])
        self.assertTrue(h.service.is_evicted("g", "stranger.example.org"))

    def test_evict_without_leaf(self):
        """A member without an LKH leaf cannot be evicted by an LKH update: RekeyError, nothing changes."""
        h = self.h
        ident = Identification.of("old.example.org")
        self.successResultOf(h.service.member_registered(Registered("g", "old.example.org", ident,
                                                                    ("192.0.2.99", 848))))
        self.failureResultOf(h.service.evict("g", "old.example.org"), RekeyError)
        self.assertEqual(h.sent, [])

    def test_evicted_registration_ignored(self):
        """Should an evicted identity still register, the service gives it no place in the member table."""
        h = self.h
        self.successResultOf(h.service.evict("g", "d.example.org"))
        ident = Identification.of("d.example.org")
        self.successResultOf(h.service.member_registered(Registered("g", "d.example.org", ident,
                                                                    ("192.0.2.13", 1003))))
        self.assertNotIn("d.example.org", [m["identity"] for m in h.service.members("g")])
        self.assertEqual(h.counters["evicted_registered"], 1)


class RealRecordsTests(unittest.TestCase):
    def test_member_registered_from_pull(self):
        """The hook takes the key server's own MemberRegistered (pull.py): identity, address, sender IDs."""
        from gdoiserver.doi.gdoi.pull import MemberRegistered

        h = Harness(self)
        h.start()
        ident = Identification.of("gm1.example.org")
        registered = MemberRegistered(group="g", group_id=GroupId(number=NUMBER), member="gm1.example.org",
                                      identity=ident, address=("192.0.2.50", 848), generation=1,
                                      sender_ids=(3, 4))
        self.successResultOf(h.service.member_registered(registered))
        (member,) = h.service.members("g")
        self.assertEqual((member["identity"], member["address"], member["port"], member["sender_ids"]),
                         ("gm1.example.org", "192.0.2.50", 848, [3, 4]))
        record = h.state().members["gm1.example.org"]
        self.assertEqual((record.id_type, record.id_data), (ident.id_type, ident.data))


class SQLiteTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_rekeys_survive_reopening(self):
        """With the SQLite store (commits on its own thread), rekeys wait for their commits, and a service over
        the reopened file goes on with the same keys and a higher SEQ."""
        from twisted.internet import reactor

        from gdoiserver.store.sqlite import SQLiteStore

        path = self.mktemp() + ".db"
        clock = task.Clock()
        clock.advance(T0)
        sent = []
        store = SQLiteStore(path, reactor)
        service = RekeyService(GroupTable([group_policy()], seeded_rng(1)), store, clock, seeded_rng(2),
                               lambda data, peer: sent.append(data), Counter(), seq_block=2)
        yield service.start()
        ident = Identification.of("a.example.org")
        yield service.member_registered(Registered("g", "a.example.org", ident, ("192.0.2.9", 848)))
        d = service.rekey("g")
        self.assertEqual(sent, [])  # the commit is on the store's thread: nothing leaves before it is done
        seqs = [(yield d)]
        seqs.append((yield service.rekey("g", kek=True)))
        seqs.append((yield service.rekey("g")))
        self.assertEqual(seqs, [1, 2, 3])
        keys = service.runs["g"].group.keys
        kek, teks = (keys.current_kek.spi, keys.current_kek.key), [t.spi for t in keys.newest.teks]
        service.stop()
        yield store.close()

        store = SQLiteStore(path, reactor)
        self.addCleanup(store.close)
        again = RekeyService(GroupTable([group_policy()], seeded_rng(3)), store, clock, seeded_rng(4),
                             lambda data, peer: sent.append(data), Counter(), seq_block=2)
        self.addCleanup(again.stop)
        yield again.start()
        keys = again.runs["g"].group.keys
        self.assertEqual(((keys.current_kek.spi, keys.current_kek.key), [t.spi for t in keys.newest.teks]),
                         (kek, teks))
        self.assertEqual(again.members("g")[0]["identity"], "a.example.org")
        seq = yield again.rekey("g")
        self.assertEqual(seq, 5)  # above the stored high-water mark (4: two blocks of two)


class MulticastServiceTests(unittest.TestCase):
    def test_rekeys_reach_the_group(self):
        """A group whose rekeys go to 239.192.77.2 on 127.0.0.1: each rekey (and its copies) reaches a receiver
        joined there, and a member reads it; stop closes the group's socket."""
        from tests.test_rekey_delivery import multicast_receiver, receive

        receiver = multicast_receiver("239.192.77.2", "127.0.0.1")
        self.addCleanup(receiver.close)
        port = receiver.getsockname()[1]
        policy = group_policy(source=ipaddress.ip_address("127.0.0.1"), unicast=False,
                              multicast_address=ipaddress.ip_address("239.192.77.2"), multicast_port=port,
                              ttl=1, interface="127.0.0.1", retransmits=1, retransmit_interval=2.0)
        h = Harness(self, [policy])
        h.start()
        m = h.register("a", 1000)
        for _ in range(3):
            self.successResultOf(h.service.rekey("g"))
            h.clock.pump([2.0, 2.0])
        got = receive(receiver, 6)
        self.assertEqual(len(got), 6)
        self.assertEqual({src for _, src, _ in got}, {"127.0.0.1"})
        for data, _, _ in got:
            m.receive(data, h.clock.seconds())
        self.assertEqual([s for _, s in m.accepted], [1, 2, 3])
        self.assertEqual(m.refused[push.REPLAY], 3)
        self.assertEqual(h.sent, [])  # no unicast
        sender = h.service.runs["g"].delivery.multicast
        h.service.stop()
        self.assertTrue(sender.closed)


class ReissueTests(unittest.TestCase):
    def test_reissued_updates_are_the_eviction_updates(self):
        """The updates rebuilt after a restart for an eviction that was stored but not sent are those the
        eviction made (AES Key Wrap is deterministic), for a sparse tree too."""
        for count, evicted in ((5, 2), (2, 0), (9, 8)):
            tree = LKHTree(5, 16, seeded_rng(count))
            tree.set_root(bytes(16))
            leaves = [tree.join() for _ in range(count)]
            updates, _ = tree.evict(leaves[evicted], b"\x07" * 16)
            self.assertEqual(reissue_updates(tree, leaves[evicted]), updates)


class MemberTableTests(unittest.TestCase):
    def member(self, identity="a", port=848, **kw):
        return RegisteredMember(identity, 2, identity.encode(), "192.0.2.1", port, 0.0, **kw)

    def test_register_again(self):
        """A member registering again replaces its entry, keeps its leaf and acknowledgement marks, and loses its
        stale mark."""
        table = MemberTable(2)
        first = table.register(self.member(leaf=17))
        table.sent(5, ["a"])
        table.acked("a", 5)
        first.stale = True
        again = table.register(self.member(port=4500))
        self.assertEqual((again.leaf, again.last_seq_acked, again.stale, again.port), (17, 5, False, 4500))
        self.assertIsNone(table.by_peer(("192.0.2.1", 848)))
        self.assertIs(table.by_peer(("192.0.2.1", 4500)), again)

    def test_stale_and_acks(self):
        """Missing ``stale_after`` rekeys in a row marks a member stale once; an acknowledgement clears it; an
        acknowledgement of a SEQ not sent, or already acknowledged, is no news."""
        table = MemberTable(2)
        table.register(self.member())
        for seq in (1, 2):
            table.sent(seq, ["a"])
            became = table.closed(seq, ["a"])
        self.assertEqual([m.identity for m in became], ["a"])
        table.sent(3, ["a"])
        self.assertEqual(table.closed(3, ["a"]), [])  # already stale: not reported again
        self.assertIsNone(table.acked("a", 4))
        self.assertIsNotNone(table.acked("a", 3))
        self.assertIsNone(table.acked("a", 3))
        self.assertEqual((table.get("a").missed, table.get("a").stale), (0, False))

    def test_evict_and_peers(self):
        """Eviction removes the entry and its address; members at one address are all found, the exact port
        first."""
        table = MemberTable()
        table.register(self.member("a", 500))
        table.register(self.member("b", 4500))
        self.assertEqual([m.identity for m in table.from_peer(("192.0.2.1", 4500))], ["b", "a"])
        table.evict("b")
        self.assertEqual([m.identity for m in table.from_peer(("192.0.2.1", 4500))], ["a"])
        self.assertEqual(table.targets(), {"a": ("192.0.2.1", 500)})
        self.assertTrue(table.is_evicted("b"))
        self.assertTrue(table.readmit("b"))
        self.assertFalse(table.readmit("b"))

    def test_record_round_trip(self):
        """A member goes to the store's record and back unchanged (the acknowledgement key never in a repr)."""
        m = self.member(leaf=40, ack_key=b"\x01" * 32, sender_ids=(4, 5))
        m.last_seq_acked, m.missed, m.stale = 9, 1, True
        back = RegisteredMember.from_record(m.to_record())
        self.assertEqual((back.identity, back.leaf, back.ack_key, back.last_seq_acked, back.missed, back.stale),
                         ("a", 40, b"\x01" * 32, 9, 1, True))
        self.assertNotIn("0101", repr(m) + repr(m.to_record()))
