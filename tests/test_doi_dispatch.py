"""The Phase 2 dispatcher (gdoiserver.doi.dispatch) and the IPsec DOI plugin inside a real IKEEngine.

Phase 1 is the scripted fake of tests/fake_machines.py (fixed keys, tests.fake_machines.make_sa); the peer is our
own Quick Mode machine run by hand under the peer's view of the same ISAKMP SA, so every Phase 2 datagram goes
the whole way: listener, engine, dispatcher, plugin, machine, effects, write.
"""

import attrs
from twisted.trial import unittest

from gdoiserver.codec.constants import NotifyType, ProtocolID
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.payloads import Hash, Identification, Nonce
from gdoiserver.doi import StartPhase2, plugin, plugins, register, unregister
from gdoiserver.doi.dispatch import Phase2Dispatcher
from gdoiserver.doi.ipsec.plugin import IPsecDOI
from gdoiserver.doi.ipsec.policy import PolicyTable
from gdoiserver.doi.ipsec.proposals import Lifetime
from gdoiserver.doi.ipsec.quick_mode import QuickMode
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import Count, Send, StartTimer
from gdoiserver.exchanges.informational import DeleteReceived, Received
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER
from tests.fake_machines import CountingRandom, make_sa
from tests.test_ike_adapter import ICKY, LOCAL, PEER, QUICK_MODE, Harness
from tests.test_quick_mode import SETTINGS, policy


@attrs.define
class ListSink:
    """An SA sink that keeps what it is told."""

    events: list = attrs.Factory(list)
    closed: bool = False

    def installed(self, sa, now):
        self.events.append(("installed", sa, now))

    def removed(self, sa, reason, now):
        self.events.append(("removed", sa, reason, now))

    def close(self):
        self.closed = True


@attrs.define(eq=False)
class OtherDOI:
    """A second DOI that takes Phase 2 exchanges with no SA payload (as GROUPKEY-PULL's first message has none)."""

    number = 2
    name = "other"
    machines: list = attrs.Factory(list)

    def accepts(self, sa, first):
        return first.exchange_type == QUICK_MODE and not any(p.payload_type == 1 for p in first.payloads)

    def responder(self, sa, first):
        machine = EchoMachine(first.message_id)
        self.machines.append(machine)
        return machine

    def notify_names(self):
        return {}


@attrs.define(eq=False)
class EchoMachine:
    """Takes each message, counts it, and is done after the second."""

    message_id: int | None
    done: bool = False
    state: str = "new"
    seen: list = attrs.Factory(list)

    def start(self, now, rng):
        return []

    def receive(self, message, raw, now, rng, *, peer, local):
        self.seen.append(raw)
        self.done = len(self.seen) >= 2
        return [Count("echo"), StartTimer("t", 5)]

    def timer(self, key, now, rng):
        self.seen.append(key)
        return [Count(f"echo_timer_{key}")]


class Setup:
    """A harness with the fake Phase 1 done and a dispatcher serving the IPsec DOI (and ``extra`` plugins)."""

    def __init__(self, test, policies=None, extra=(), linger=60.0, max_exchanges=32):
        self.h = Harness()
        self.sink = ListSink()
        self.ipsec = IPsecDOI(PolicyTable(policies or [policy()]), SETTINGS, self.sink)
        self.dispatcher = Phase2Dispatcher([self.ipsec, *extra], linger=linger, max_exchanges=max_exchanges)
        self.dispatcher.attach(self.h.engine)
        self.rcookie = self.h.main_mode()
        [self.sa] = self.h.established  # our (responder's) view
        # The peer's view of the same ISAKMP SA: same keys and chain, roles and addresses swapped.
        self.peer_sa = make_sa(ICKY, self.rcookie, LOCAL, PEER, role=INITIATOR)
        self.rng = CountingRandom(b"peer")
        self.test = test

    def deliver(self, effects) -> list:
        """Hand the peer machine's Sends to the engine, as from PEER."""
        for e in effects:
            if isinstance(e, Send):
                self.h.receive(e.data, PEER)
        return effects

    def last_written(self) -> bytes:
        data, addr = self.h.written()[-1]
        self.test.assertEqual(addr, PEER)
        return data

    def peer_qm(self, pol=None, mid=0x0A0B0C0D) -> QuickMode:
        return QuickMode.initiator(self.peer_sa, pol or policy(), SETTINGS, mid)

    def run_peer_initiator(self, machine: QuickMode) -> QuickMode:
        """The peer's QM1 to us, our QM2 back to the peer, its QM3 to us."""
        self.deliver(machine.start(self.h.clock.seconds(), self.rng))
        qm2 = self.last_written()
        self.deliver(machine.receive(decode_message(qm2), qm2, self.h.clock.seconds(), self.rng, peer=LOCAL,
                                     local=PEER))
        return machine

    def answer_as_peer(self, pol=None) -> QuickMode:
        """Our QM1 (just written) answered by a peer responder; our QM3 delivered to it."""
        qm1 = self.last_written()
        responder = QuickMode.responder(self.peer_sa, PolicyTable([pol or policy()]), SETTINGS,
                                        decode_message(qm1).message_id)
        self.deliver(responder.receive(decode_message(qm1), qm1, 0.0, self.rng, peer=LOCAL, local=PEER))
        qm3 = self.last_written()
        responder.receive(decode_message(qm3), qm3, 0.0, self.rng, peer=LOCAL, local=PEER)
        return responder

    def informational(self, payloads):
        self.h.receive(informational.build(self.peer_sa, payloads, self.rng), PEER)

    def items_written(self) -> list:
        result = informational.process(self.peer_sa, decode_message(self.last_written()))
        self.test.assertIsInstance(result, Received)
        return list(result.items)


class ResponderTests(unittest.TestCase):
    def test_quick_mode_through_the_engine(self):
        """The peer's Quick Mode reaches our responder through engine and dispatcher; both ends hold the same SA,
        the sink has it, and the engine counted it."""
        s = Setup(self)
        peer = s.run_peer_initiator(s.peer_qm())
        [(event, ours, now)] = s.sink.events
        self.assertEqual(event, "installed")
        self.assertEqual((ours.spi_in, ours.spi_out, ours.role), (peer.result.spi_out, peer.result.spi_in, RESPONDER))
        self.assertEqual(ours.keys_in, peer.result.keys_out)
        self.assertEqual(s.ipsec.all_sas(), [ours])
        self.assertEqual(s.h.counters["phase2.1.established"], 1)
        self.assertEqual(s.h.counters["ipsec_sa_installed"], 1)
        self.assertIn((ProtocolID.IPSEC_ESP, ours.spi_in), s.ipsec.in_use)

    def test_retransmitted_qm1_and_lingering(self):
        """QM1 again gets the cached QM2 from the same machine; once the machine has lingered ``linger`` seconds
        after the exchange it goes, and its M-ID is remembered: a replayed QM1 is dropped, not answered."""
        s = Setup(self, linger=30.0)
        peer = s.peer_qm()
        qm1 = peer.start(0.0, s.rng)[1].data
        s.h.receive(qm1, PEER)
        s.h.receive(qm1, PEER)
        first, again = [d for d, _ in s.h.written()[-2:]]
        self.assertEqual(first, again)
        self.assertEqual(s.h.counters["retransmit_answered"], 1)
        s.deliver(peer.receive(decode_message(first), first, 0.0, s.rng, peer=LOCAL, local=PEER))
        self.assertEqual(len(s.sink.events), 1)
        state = s.dispatcher.sas[s.sa.spi]
        self.assertTrue(state.exchanges[peer.message_id].lingering)
        s.h.clock.advance(30)
        self.assertEqual(state.exchanges, {})
        written = len(s.h.written())
        s.h.receive(qm1, PEER)
        self.assertEqual(len(s.h.written()), written)
        self.assertEqual(s.h.counters["phase2_finished_mid"], 1)

    def test_responder_retransmits_qm2(self):
        """Without QM3 our responder resends QM2 on its own timer (routed back to the machine by the dispatcher's
        key), and gives up at the exchange timeout."""
        s = Setup(self)
        s.deliver(s.peer_qm().start(0.0, s.rng))
        qm2 = s.last_written()
        s.h.clock.advance(2)
        self.assertEqual(s.last_written(), qm2)
        s.h.clock.advance(60)
        self.assertEqual(s.h.counters["phase2.1.failed.exchange_timed_out"], 1)
        self.assertEqual(s.sink.events, [])

    def test_refusals_are_counted(self):
        """First messages that open nothing: M-ID 0, unencrypted, undecryptable, no DOI accepts it."""
        s = Setup(self)
        s.h.receive(Message(ICKY, s.rcookie, QUICK_MODE, 0, 7, (Nonce(bytes(16)),)).encode(), PEER)
        s.h.receive(Message(ICKY, s.rcookie, QUICK_MODE, 1, 8, (), ciphertext=bytes(33), next_payload=8).encode(),
                    PEER)
        s.h.receive(Message(ICKY, s.rcookie, QUICK_MODE, 1, 0, (), ciphertext=bytes(32), next_payload=8).encode(),
                    PEER)
        s.h.receive(self.pull_like(s, 9), PEER)
        counts = {k: v for k, v in s.h.counters.items() if k.startswith("phase2_")}
        self.assertEqual(counts, {"phase2_unencrypted": 1, "phase2_undecryptable": 1, "phase2_zero_mid": 1,
                                  "phase2_no_doi": 1})
        self.assertEqual(len(s.h.written()), 3)  # MM2, MM4, MM6 only

    def pull_like(self, s, mid) -> bytes:
        """An exchange-32 message without an SA payload (HASH, Ni, ID: GROUPKEY-PULL's first message)."""
        payloads = (Nonce(bytes(16)), Identification.key_id(1234))
        digest = informational.hash_1(s.peer_sa, mid, encode_chain(payloads, context_for(1, QUICK_MODE)))
        message = Message(ICKY, s.rcookie, QUICK_MODE, 0, mid, (Hash(digest), *payloads))
        return s.peer_sa.last_iv.for_message_id(mid).encrypt(message)[0]

    def test_second_doi_under_a_doi_1_sa(self):
        """Under a Phase 1 SA of DOI 1, an exchange 32 without SA payload goes to the plugin that accepts it (DOI
        2 here), Quick Mode still to IPsec; later messages and timers of its M-ID reach its machine."""
        other = OtherDOI()
        s = Setup(self, extra=[other])
        pull = self.pull_like(s, 21)
        s.h.receive(pull, PEER)
        s.run_peer_initiator(s.peer_qm())
        [machine] = other.machines
        self.assertEqual(machine.seen, [pull])
        s.h.clock.advance(5)
        self.assertEqual(machine.seen, [pull, "t"])
        s.h.receive(pull, PEER)
        self.assertTrue(machine.done)
        self.assertEqual(s.h.counters["echo"], 2)
        self.assertEqual(len(s.sink.events), 1)

    def test_too_many_exchanges(self):
        """At most ``max_exchanges`` exchanges run at once under one SA; the next first message is dropped."""
        s = Setup(self, max_exchanges=2)
        for mid in (1, 2, 3):
            s.deliver(s.peer_qm(mid=mid).start(0.0, s.rng))
        self.assertEqual(s.h.counters["phase2_too_many"], 1)
        self.assertEqual(sorted(s.dispatcher.sas[s.sa.spi].exchanges), [1, 2])

    def test_refusal_reaches_the_peer(self):
        """Selectors outside our policy: the peer gets INVALID-ID-INFORMATION in a protected Informational, and
        its initiator, told by ``notified``, ends at once."""
        s = Setup(self, policies=[policy(peer="192.0.2.99")])
        peer = s.peer_qm()
        s.deliver(peer.start(0.0, s.rng))
        [item] = s.items_written()
        self.assertEqual((item.notify_type, item.spi), (NotifyType.INVALID_ID_INFORMATION, peer.spi))
        peer.notified(item, 0.0, s.rng)
        self.assertEqual(peer.state, "FAILED")
        self.assertEqual(s.h.counters["phase2.1.failed.INVALID_ID_INFORMATION"], 1)


class InitiatorTests(unittest.TestCase):
    def test_start_phase2(self):
        """engine.start_phase2 hands our initiator to the dispatcher, which sends QM1 and routes QM2 to it; the
        plugin records the SA and schedules its expiry and rekey."""
        s = Setup(self)
        machine = s.ipsec.initiator(s.sa, policy(), s.rng)
        s.h.engine.start_phase2(s.sa, machine)
        peer = s.answer_as_peer()
        self.assertEqual(machine.state, "ESTABLISHED")
        self.assertEqual(machine.result.spi_out, peer.result.spi_in)
        self.assertEqual([e[0] for e in s.sink.events], ["installed"])
        timers = s.h.engine.sas[s.sa.spi].runners["phase2.1"].timers
        spi = machine.result.spi_in.hex()
        self.assertIn(f"p1:expire:{spi}", timers)
        self.assertIn(f"p1:rekey:{spi}", timers)
        self.assertEqual(s.h.counters["phase2_initiated"], 1)

    def test_sink_failure_on_removal_is_counted(self):
        """When the ISAKMP SA goes and the sink refuses the removal of its IPsec SAs, the plugin counts it in
        ``sink_errors`` (the removed hook returns no effects) and still forgets the SAs."""
        from gdoiserver.doi.ipsec.sa_sink import SinkError
        s = Setup(self)
        machine = s.ipsec.initiator(s.sa, policy(), s.rng)
        s.h.engine.start_phase2(s.sa, machine)
        s.answer_as_peer()
        self.assertEqual(len(s.ipsec.all_sas()), 1)

        class RefusingSink(ListSink):
            def removed(self, sa, reason, now):
                raise SinkError("disk full")

        s.ipsec.sink = RefusingSink()
        s.ipsec.removed(s.sa, "test", 1.0)
        self.assertEqual(s.ipsec.sink_errors, 1)
        self.assertEqual(s.ipsec.all_sas(), [])

    def test_adopt_assigns_a_message_id(self):
        """A machine we initiate with no M-ID of its own (GROUPKEY-PULL's member leaves it open) gets a fresh non-zero
        one from the dispatcher before it starts, so the answers under that M-ID reach it."""
        s = Setup(self)
        machine = EchoMachine(None)
        s.dispatcher.adopt(s.sa, machine, 0.0, s.rng)
        self.assertIsNotNone(machine.message_id)
        self.assertNotEqual(machine.message_id, 0)
        self.assertIn(machine.message_id, s.dispatcher.sas[s.sa.spi].exchanges)

    def test_phase1_established_initiates(self):
        """A policy with ``initiate`` starts Quick Mode as soon as Phase 1 that we initiated is up."""
        h = Harness()
        sink = ListSink()
        ipsec = IPsecDOI(PolicyTable([policy(initiate=True), policy(name="passive")]), SETTINGS, sink)
        Phase2Dispatcher([ipsec]).attach(h.engine)
        h.engine.initiate(PEER)
        [machine] = h.factory.initiators
        rcookie = b"\x77" * 8
        from tests.fake_machines import message
        h.receive(message(machine.icookie, rcookie, tag=b"MM2"), PEER)
        h.receive(message(machine.icookie, rcookie, tag=b"MM4"), PEER)
        h.receive(message(machine.icookie, rcookie, tag=b"MM6"), PEER)
        self.assertEqual(h.counters["phase2_initiated"], 1)
        qm1 = decode_message(h.written()[-1][0])
        self.assertEqual((qm1.exchange_type, qm1.encrypted), (QUICK_MODE, True))

    def test_peer_refusal_ends_our_initiator(self):
        """The peer answers our QM1 with NO-PROPOSAL-CHOSEN naming our SPI: the dispatcher hands the
        Informational item to the machine, which fails at once instead of retransmitting."""
        s = Setup(self)
        machine = s.ipsec.initiator(s.sa, policy(), s.rng)
        s.h.engine.start_phase2(s.sa, machine)
        from gdoiserver.codec.payloads import Notification
        s.informational([Notification(1, ProtocolID.IPSEC_ESP, NotifyType.NO_PROPOSAL_CHOSEN, machine.spi)])
        self.assertEqual(machine.state, "FAILED")
        self.assertEqual(s.h.counters["phase2.1.failed.NO_PROPOSAL_CHOSEN"], 1)
        self.assertEqual(s.ipsec.in_use, set())  # the SPI it took is free again
        written = len(s.h.written())
        s.h.clock.advance(10)
        self.assertEqual(len(s.h.written()), written)


class LifeTests(unittest.TestCase):
    """Expiry, rekey and Delete, in both directions."""

    def established_initiator(self, s, pol):
        machine = s.ipsec.initiator(s.sa, pol, s.rng)
        s.h.engine.start_phase2(s.sa, machine)
        s.answer_as_peer(pol)
        return machine.result

    def test_expiry_sends_delete(self):
        """At the end of its lifetime an SA goes: a Delete naming our inbound SPI (protocol ESP) goes to the peer
        and the sink hears "lifetime over"."""
        s = Setup(self)
        ours = s.run_peer_initiator(s.peer_qm())
        [(_, sa, _)] = s.sink.events
        s.h.clock.advance(3600)
        [item] = s.items_written()
        self.assertEqual(item, DeleteReceived(ProtocolID.IPSEC_ESP, (sa.spi_in,)))
        self.assertEqual(sa.spi_in, ours.result.spi_out)
        self.assertEqual(s.sink.events[-1][:3], ("removed", sa, "lifetime over"))
        self.assertEqual((s.ipsec.all_sas(), s.ipsec.in_use), ([], set()))

    def test_rekey_before_expiry(self):
        """An SA we initiated is rekeyed at 90 % of its lifetime (less up to 5 % jitter) by a new Quick Mode; the
        new SA names the old one in ``replaces`` and the old one serves on until it expires."""
        s = Setup(self)
        old = self.established_initiator(s, policy(lifetime=Lifetime(1000, 0)))
        s.h.clock.advance(849)
        self.assertEqual(s.h.counters["ipsec_sa_rekey"], 0)
        s.h.clock.advance(51)
        self.assertEqual(s.h.counters["ipsec_sa_rekey"], 1)
        s.answer_as_peer()
        new = s.sink.events[-1][1]
        self.assertEqual(new.replaces, old.spi_in)
        self.assertNotEqual(new.spi_in, old.spi_in)
        self.assertEqual(len(s.ipsec.all_sas()), 2)
        s.h.clock.advance(100)
        self.assertEqual(s.ipsec.all_sas(), [new])

    def test_delete_from_peer(self):
        """The peer's Delete names its inbound SPI, our outbound one: that SA goes, with no answer; a Delete of
        an SPI we do not know changes nothing."""
        s = Setup(self)
        peer = s.run_peer_initiator(s.peer_qm())
        written = len(s.h.written())
        s.informational([informational.delete_ipsec(s.peer_sa, ProtocolID.IPSEC_ESP, [b"\0\0\1\1"])])
        self.assertEqual(len(s.ipsec.all_sas()), 1)
        s.informational([informational.delete_ipsec(s.peer_sa, ProtocolID.IPSEC_ESP, [peer.result.spi_in])])
        self.assertEqual(s.ipsec.all_sas(), [])
        self.assertEqual(s.sink.events[-1][2], "deleted by the peer")
        self.assertEqual(len(s.h.written()), written)
        self.assertEqual(s.h.counters["ipsec_sa_deleted_by_peer"], 1)

    def test_isakmp_sa_removed(self):
        """When the ISAKMP SA goes, the IPsec SAs under it go from the plugin and the sink, and the dispatcher
        forgets its exchanges; a late run_phase2 under it does nothing."""
        s = Setup(self)
        s.run_peer_initiator(s.peer_qm())
        s.informational([informational.delete_isakmp(s.peer_sa)])
        self.assertEqual(s.sink.events[-1][0], "removed")
        self.assertIn("ISAKMP SA gone", s.sink.events[-1][2])
        self.assertEqual((s.ipsec.all_sas(), s.dispatcher.sas), ([], {}))
        s.h.engine.run_phase2(s.sa, lambda now, rng: [Count("late")])
        self.assertEqual((s.h.counters["late"], s.h.counters["phase2_no_sa"]), (0, 1))


class RegistryTests(unittest.TestCase):
    def test_register_once(self):
        """A DOI number is registered once; the same plugin again is fine; unregister frees the number (a number
        no real DOI uses here, as GDOI's package registers 2 when imported)."""

        class Unassigned(OtherDOI):
            number = 250

        a, b = Unassigned(), Unassigned()
        before = list(plugins())
        register(a)
        self.addCleanup(unregister, a)
        register(a)
        self.assertRaises(ValueError, register, b)
        self.assertIs(plugin(250), a)
        self.assertIs(list(plugins())[-1], a)
        unregister(a)
        self.assertEqual(list(plugins()), before)

    def test_start_phase2_effect(self):
        """A plugin hook that returns StartPhase2 gets its machine adopted and started under the hook's SA."""
        s = Setup(self)
        machine = s.ipsec.initiator(s.sa, policy(), s.rng)
        s.h.engine.run_phase2(s.sa, lambda now, rng: s.dispatcher._plugin_effects(
            s.sa, s.ipsec, [StartPhase2(machine)], now, rng))
        self.assertEqual(decode_message(s.last_written()).message_id, machine.message_id)
        s.answer_as_peer()
        self.assertEqual([e[1] for e in s.sink.events], [machine.result])


class ServiceWiringTests(unittest.TestCase):
    def test_service_serves_the_ipsec_doi(self):
        """GDOIService with a factory makes the IPsec plugin from [ipsec] (its JSON lines sink at sink_path), a
        dispatcher serving DOI 1 with the configured cap and the engine's exchange timeout as linger, logs each
        IPsec SA without its keys, and closes the sink when it stops."""
        import os
        import shutil
        import tempfile
        import tomllib

        from twisted.logger import Logger, formatEvent

        from gdoiserver.config import parse_config
        from gdoiserver.doi.ipsec.sa_sink import JsonLinesSink, read_records
        from gdoiserver.service import GDOIService
        from tests.fake_machines import FakeFactory, FakeUDPReactor
        from tests.test_sa_sink import KEY_IN, ipsec_sa

        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "sas.jsonl")
        text = (f'[ike]\nexchange_timeout = 20.0\n[ipsec]\nsink_path = "{path}"\nmax_exchanges_per_sa = 5\n'
                '[[ipsec.policies]]\npeer = "192.0.2.1"\n')
        service = GDOIService(parse_config(tomllib.loads(text)), FakeUDPReactor(), factory=FakeFactory(),
                              rng=CountingRandom())
        events = []
        service.log = Logger(observer=events.append)
        [ipsec] = service.plugins
        self.assertIsInstance(ipsec.sink, JsonLinesSink)
        self.assertEqual((service.phase2.linger, service.phase2.max_exchanges), (20.0, 5))
        self.assertIs(service.engine.phase2_handlers[1], service.phase2)
        service.startService()
        sa = ipsec_sa()
        ipsec.established(make_sa(ICKY, b"\1" * 8, PEER, LOCAL), None, sa, 1.0, CountingRandom())
        [line] = [formatEvent(e) for e in events if "IPsec SA" in formatEvent(e)]
        self.assertIn("SPIs in c1c2c3c4 out d1d2d3d4", line)
        self.assertNotIn(KEY_IN.hex(), line)
        service.stopService()
        self.assertIsNone(ipsec.sink._file)
        self.assertEqual([r["spi_in"] for r in read_records(path)], ["c1c2c3c4"])
