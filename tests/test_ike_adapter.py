"""IKEEngine: routing by cookies, effects, timers on a Clock, half-open caps, NAT-T, established SAs and hooks.

The machines are the scripted fakes of tests/fake_machines.py, behind real ISAKMPProtocol listeners on fake
transports, so that every datagram goes the whole way: decode, route, machine, effects, write.
"""

import ipaddress
import os
import tomllib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial import unittest

from gdoiserver.codec.constants import DPD_VENDOR_ID, ExchangeType, NotifyType, ProtocolID
from gdoiserver.codec.message import NON_ESP_MARKER, decode_message
from gdoiserver.codec.payloads import Identification
from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import Send, StartTimer
from gdoiserver.exchanges.aggressive_mode import AggressiveMode
from gdoiserver.exchanges.informational import DeleteReceived, Received, RUThere, RUThereAck
from gdoiserver.exchanges.main_mode import MainMode
from gdoiserver.keylog import KeyLog, line
from gdoiserver.net.ike import IKEEngine, Phase1Failed
from gdoiserver.net.protocol import ISAKMPProtocol
from gdoiserver.service import GDOIService
from tests import pki
from tests.fake_machines import (
    ENC_KEY,
    MM,
    SKEYID_A,
    ZERO,
    CountingRandom,
    FakeFactory,
    FakeUDPReactor,
    answer,
    answer_and_establish,
    fail,
    message,
    silent,
)
from tests.test_protocol import PortTransport, _datagrams

PEER = ("192.0.2.1", 500)
PEER_NAT = ("192.0.2.1", 4500)  # the same peer after the NAT-T float (RFC 3947 section 4)
ICKY = bytes.fromhex("0102030405060708")
LOCAL = ("127.0.0.1", 500)
QUICK_MODE = ExchangeType.QUICK_MODE


class LoopTransport(PortTransport):
    """A fake transport that can call back on each write (to feed the engine from inside its own work)."""

    def __init__(self, port: int, host: str):
        super().__init__(port, host)
        self.on_write = None

    def write(self, packet, addr=None):
        super().write(packet, addr)
        if self.on_write is not None:
            self.on_write(packet, addr)


class Harness:
    """An engine on a Clock with listeners on 127.0.0.1 ports 500, 848 and 4500 (NAT-T) and ::1 port 500."""

    LISTENERS = (("127.0.0.1", 500), ("127.0.0.1", 848), ("127.0.0.1", 4500), ("::1", 500))

    def __init__(self, factory: FakeFactory | None = None, **options):
        self.clock = Clock()
        self.rng = CountingRandom()
        self.factory = factory or FakeFactory()
        self.counters = Counter()
        self.events = []
        self.engine = IKEEngine(self.factory, self.clock, self.rng, self.counters, **options)
        self.engine.log = Logger(observer=self.events.append)
        self.ports = {}
        for host, port in self.LISTENERS:
            protocol = ISAKMPProtocol(self.counters, engine=self.engine)
            protocol.log = Logger(observer=self.events.append)
            protocol.makeConnection(LoopTransport(port, host))
            self.ports[(host, port)] = protocol
        self.established, self.removed = [], []
        self.engine.on_established(self.established.append)
        self.engine.on_removed(lambda sa, reason: self.removed.append((sa, reason)))

    def receive(self, data: bytes, peer=PEER, port: int = 500, host: str = "127.0.0.1"):
        protocol = self.ports[(host, port)]
        protocol.datagramReceived(NON_ESP_MARKER + data if protocol.is_nat_t else data, peer)

    def written(self, port: int = 500, host: str = "127.0.0.1") -> list:
        return self.ports[(host, port)].transport.written

    def log_text(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def counts(self) -> dict:
        return {k: v for k, v in self.counters.items() if v}

    def main_mode(self, icookie: bytes = ICKY, peer=PEER) -> bytes:
        """Run the fake Main Mode as responder to its end; the responder cookie."""
        self.receive(message(icookie, tag=b"MM1"), peer)
        rcookie = decode_message(self.written()[-1][0]).responder_cookie
        self.receive(message(icookie, rcookie, tag=b"MM3"), peer)
        self.receive(message(icookie, rcookie, tag=b"MM5"), peer)
        return rcookie


def tag(data: bytes) -> bytes:
    """The vendor ID of a fake message: which message it is."""
    return decode_message(data).payloads[0].vendor_id


def spoofed_source(i: int) -> tuple:
    return (str(ipaddress.IPv4Address(0x0A000000 + i)), 500)


class RoutingTests(unittest.TestCase):
    def test_first_message_makes_a_responder(self):
        """Main Mode message 1 (responder cookie zero) goes to a new responder from the factory, with the raw datagram,
        the time, the peer and our address; its answer goes back from the port it came to, and its responder
        cookie then routes the SA."""
        h = Harness()
        h.clock.advance(7)
        mm1 = message(ICKY, tag=b"MM1")
        h.receive(mm1, PEER)
        [machine] = h.factory.responders
        self.assertEqual(machine.calls, [("receive", MM, mm1, 7.0, PEER, LOCAL)])
        [(data, addr)] = h.written()
        self.assertEqual((addr, tag(data)), (PEER, b"MM2"))
        reply = decode_message(data)
        self.assertEqual(reply.initiator_cookie, ICKY)
        self.assertNotEqual(reply.responder_cookie, ZERO)
        entry = h.engine.first_messages[(ICKY, PEER)]
        self.assertIs(h.engine.exchanges[ICKY + reply.responder_cookie], entry)
        self.assertEqual(h.engine.half_open, {entry})
        self.assertEqual(h.counts(), {"received": 1, "decoded": 1, "phase1_responder_started": 1, "sent": 1})

    def test_later_messages_by_cookies(self):
        """Messages 3 and 5 reach the same machine by the cookie pair; after Established the SA is in the established
        tables (by cookies, peer address and identity), out of the half-open ones, and the hook has it."""
        h = Harness()
        rcookie = h.main_mode()
        [machine] = h.factory.responders
        self.assertEqual([c[2] for c in machine.calls], [message(ICKY, tag=b"MM1"), message(ICKY, rcookie, tag=b"MM3"),
                                                         message(ICKY, rcookie, tag=b"MM5")])
        self.assertEqual([tag(d) for d, _ in h.written()], [b"MM2", b"MM4", b"MM6"])
        [sa] = h.established
        self.assertEqual((sa.initiator_cookie, sa.responder_cookie), (ICKY, rcookie))
        entry = h.engine.sas[ICKY + rcookie]
        self.assertIs(h.engine.sas_by_peer[PEER], entry)
        self.assertIs(h.engine.sas_by_identity[Identification.of("peer.example")], entry)
        self.assertEqual((h.engine.exchanges, h.engine.first_messages, h.engine.half_open), ({}, {}, set()))
        self.assertEqual(h.counters["phase1_established"], 1)

    def test_retransmitted_first_message(self):
        """Message 1 again (same initiator cookie, same peer) goes to the same machine, which answers from its cache;
        the same cookie from another peer is another exchange."""
        h = Harness()
        mm1 = message(ICKY, tag=b"MM1")
        h.receive(mm1, PEER)
        h.receive(mm1, PEER)
        self.assertEqual(len(h.factory.responders), 1)
        first, again = h.written()
        self.assertEqual(first, again)
        self.assertEqual(h.counters["retransmit_answered"], 1)
        h.receive(mm1, ("192.0.2.2", 500))
        self.assertEqual(len(h.factory.responders), 2)
        self.assertEqual(len(h.engine.half_open), 2)

    def test_retransmitted_last_message_after_established(self):
        """Message 5 again after Established (our message 6 was lost) still reaches the machine, which resends 6,
        until exchange_timeout has passed."""
        h = Harness()
        rcookie = h.main_mode()
        h.receive(message(ICKY, rcookie, tag=b"MM5"), PEER)
        self.assertEqual([tag(d) for d, _ in h.written()], [b"MM2", b"MM4", b"MM6", b"MM6"])
        self.assertEqual(len(h.established), 1)
        # After exchange_timeout the machine (and the key material it holds) is gone; the SA stays.
        h.clock.advance(60)
        self.assertNotIn("phase1", h.engine.sas[ICKY + rcookie].runners)
        h.receive(message(ICKY, rcookie, tag=b"MM5"), PEER)
        self.assertEqual(len(h.written()), 4)
        self.assertEqual(h.counters["phase1_after_established"], 1)

    def test_unknown_sa(self):
        """A message for cookies no SA has, and a non-Phase-1 message with a zero responder cookie, are counted as
        unknown_sa and dropped without an answer (RFC 2408 section 5.2: no INVALID-COOKIE reflection)."""
        h = Harness()
        h.receive(message(ICKY, b"\x09" * 8, tag=b"MM3"))
        h.receive(message(ICKY, ZERO, ExchangeType.INFORMATIONAL))
        h.receive(message(ICKY, ZERO, QUICK_MODE, message_id=5))
        self.assertEqual(h.counters["unknown_sa"], 3)
        self.assertEqual(h.written(), [])
        self.assertEqual(h.factory.responder_calls, 0)

    def test_factory_refuses(self):
        """A first message the factory refuses (None) is counted and leaves no state; other exchanges still work."""
        h = Harness(FakeFactory(refuse=frozenset({ExchangeType.AGGRESSIVE})))
        h.receive(message(ICKY, exchange_type=ExchangeType.AGGRESSIVE))
        self.assertEqual(h.counters["responder_refused"], 1)
        self.assertEqual((h.engine.first_messages, h.engine.half_open, h.written()), ({}, set(), []))
        h.main_mode(b"\x07" * 8)
        self.assertEqual(len(h.established), 1)

    def test_other_ports(self):
        """An exchange on port 848 is answered from port 848, one on IPv6 from the IPv6 socket."""
        h = Harness()
        h.receive(message(ICKY, tag=b"MM1"), PEER, port=848)
        v6_peer = ("2001:db8::1", 500)
        h.receive(message(b"\x06" * 8, tag=b"MM1"), v6_peer, host="::1")
        self.assertEqual([a for _, a in h.written(848)], [PEER])
        self.assertEqual([a for _, a in h.written(host="::1")], [v6_peer])
        self.assertEqual(h.written(), [])
        self.assertEqual(h.factory.responders[0].calls[0][-1], ("127.0.0.1", 848))

    def test_one_message_at_a_time(self):
        """A datagram that arrives while the engine carries out a machine's effects (here: fed back from inside the
        write of message 2) waits until all of them are done: the machine sees message 3 only after its
        retransmission timer of message 2 is set."""
        seen_timers = []

        def mm3(m, msg, now, rng, peer, local):
            entry = h.engine.exchanges[m.icookie + m.rcookie]
            seen_timers.append(sorted(entry.runners["phase1"].timers))
            return m.reply(rng, peer, tag=b"MM4")

        h = Harness(FakeFactory(responder_script=lambda: [answer(b"MM2"), mm3, silent()]))
        transport = h.ports[("127.0.0.1", 500)].transport

        def feed_back(packet, addr):
            if tag(packet) == b"MM2":
                h.receive(message(ICKY, decode_message(packet).responder_cookie, tag=b"MM3"), PEER)

        transport.on_write = feed_back
        h.receive(message(ICKY, tag=b"MM1"), PEER)
        self.assertEqual(seen_timers, [["retransmit"]])
        self.assertEqual([tag(d) for d, _ in h.written()], [b"MM2", b"MM4"])


class TimerTests(unittest.TestCase):
    def test_retransmission_on_the_clock(self):
        """The machine's retransmission timer runs on the injected clock: the same bytes again after 1 s and 2 s
        more, then Failed, which empties the tables, cancels every timer and counts the reason."""
        h = Harness()
        h.receive(message(ICKY, tag=b"MM1"))
        h.clock.advance(0.99)
        self.assertEqual(len(h.written()), 1)
        h.clock.advance(0.01)
        h.clock.advance(2)
        sent = [d for d, _ in h.written()]
        self.assertEqual(len(sent), 3)
        self.assertEqual(len(set(sent)), 1)
        h.clock.advance(4)
        self.assertEqual(h.counters["phase1_failed.peer_did_not_answer"], 1)
        self.assertEqual((h.engine.exchanges, h.engine.first_messages, h.engine.half_open), ({}, {}, set()))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertTrue(any("peer did not answer" in text for text in h.log_text()))
        self.assertEqual([c[:2] for c in h.factory.responders[0].calls[1:]], [("timer", "retransmit")] * 3)

    def test_exchange_timeout(self):
        """A half-open SA still there after exchange_timeout is removed and counted, timers and all."""
        h = Harness(exchange_timeout=5)
        h.receive(message(ICKY, tag=b"MM1"))
        h.clock.advance(4.9)
        self.assertEqual(len(h.engine.half_open), 1)
        h.clock.advance(0.1)
        self.assertEqual(h.counters["phase1_timeout"], 1)
        self.assertEqual((h.engine.exchanges, h.engine.first_messages, h.engine.half_open), ({}, {}, set()))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_failed_cleanup(self):
        """Failed with a Notify: the Notify goes out first, then the machine is gone, counted by the Notify's name
        and logged with its reason; a new message 1 makes a new machine."""
        h = Harness(FakeFactory(responder_script=lambda: [fail(NotifyType.NO_PROPOSAL_CHOSEN,
                                                               "no proposal chosen: the peer offered 3DES only")]))
        h.receive(message(ICKY, tag=b"MM1"))
        [(data, _)] = h.written()
        self.assertEqual(decode_message(data).exchange_type, ExchangeType.INFORMATIONAL)
        self.assertEqual(h.counters["phase1_failed.NO_PROPOSAL_CHOSEN"], 1)
        self.assertEqual((h.engine.exchanges, h.engine.first_messages, h.engine.half_open), ({}, {}, set()))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertTrue(any("the peer offered 3DES only" in text for text in h.log_text()))
        h.receive(message(ICKY, tag=b"MM1"))
        self.assertEqual(len(h.factory.responders), 2)

    def test_machine_bug_contained(self):
        """A machine that raises is a bug: counted as internal_error, logged with its traceback, its SA dropped;
        the engine serves the next peer."""

        def broken(m, msg, now, rng, peer, local):
            raise ZeroDivisionError("bug")

        h = Harness(FakeFactory(responder_script=lambda: [broken]))
        h.receive(message(ICKY))
        self.assertEqual(h.counters["internal_error"], 1)
        self.assertEqual(h.engine.half_open, set())
        self.assertTrue(any(e.get("log_failure") and e["log_failure"].check(ZeroDivisionError) for e in h.events))
        h.factory.responder_script = FakeFactory().responder_script
        h.main_mode(b"\x05" * 8)
        self.assertEqual(len(h.established), 1)


class HalfOpenTests(unittest.TestCase):
    def test_cap_per_peer(self):
        """At most halfopen_per_peer half-open responders per source address: the next first message is dropped and
        counted; a retransmission to an existing one is still answered; once one is established, room is back."""
        h = Harness(halfopen_per_peer=3, halfopen_total=100)
        cookies = [bytes([i]) * 8 for i in range(1, 5)]
        for i, cookie in enumerate(cookies):
            h.receive(message(cookie, tag=b"MM1"), ("192.0.2.1", 500 + i))
        self.assertEqual(len(h.factory.responders), 3)
        self.assertEqual(h.counters["halfopen_cap_per_peer"], 1)
        self.assertEqual(h.engine.half_open_by_source["192.0.2.1"], 3)
        h.receive(message(cookies[0], tag=b"MM1"), ("192.0.2.1", 500))
        self.assertEqual(h.counters["retransmit_answered"], 1)
        h.receive(message(b"\x10" * 8, tag=b"MM1"), ("192.0.2.2", 500))
        self.assertEqual(len(h.factory.responders), 4)
        # Finish the first exchange: it no longer counts.
        rcookie = decode_message(h.written()[0][0]).responder_cookie
        for t in (b"MM3", b"MM5"):
            h.receive(message(cookies[0], rcookie, tag=t), ("192.0.2.1", 500))
        self.assertEqual(len(h.established), 1)
        h.receive(message(cookies[3], tag=b"MM1"), ("192.0.2.1", 503))
        self.assertEqual(len(h.factory.responders), 5)
        self.assertEqual(h.counters["halfopen_cap_per_peer"], 1)

    def test_cap_total(self):
        """At most halfopen_total half-open responders in all, whatever their sources: at the cap the oldest whose
        peer never answered makes room for the new one (RFC 4987 section 3.4)."""
        h = Harness(halfopen_per_peer=2, halfopen_total=3)
        for i in range(5):
            h.receive(message(bytes([i + 1]) * 8), spoofed_source(i))
        self.assertEqual(len(h.engine.half_open), 3)
        self.assertEqual(sorted(e.icookie[0] for e in h.engine.half_open), [3, 4, 5])
        self.assertEqual((h.counters["halfopen_evicted"], h.counters["halfopen_cap_total"]), (2, 0))

    def test_cap_total_keeps_answered_exchanges(self):
        """A half-open responder whose peer sent our responder cookie back (message 3) is never evicted: when every
        half-open responder has heard back, a new first message is dropped and counted halfopen_cap_total; a peer
        that answers goes on to an SA in the middle of a flood of first messages from spoofed sources."""
        h = Harness(halfopen_per_peer=2, halfopen_total=2)
        for i, cookie in enumerate((b"\x01" * 8, b"\x02" * 8)):
            h.receive(message(cookie, tag=b"MM1"), spoofed_source(i))
            rcookie = decode_message(h.written()[-1][0]).responder_cookie
            h.receive(message(cookie, rcookie, tag=b"MM3"), spoofed_source(i))
        h.receive(message(b"\x03" * 8, tag=b"MM1"), spoofed_source(2))
        self.assertEqual((h.counters["halfopen_cap_total"], h.counters["halfopen_evicted"]), (1, 0))
        self.assertEqual(sorted(e.icookie[0] for e in h.engine.half_open), [1, 2])

        h = Harness(FakeFactory(keep=False), halfopen_per_peer=4, halfopen_total=16)
        cookies = CountingRandom(b"spoofed")
        for i in range(1000):
            h.receive(message(cookies(8), tag=b"MM1"), spoofed_source(i))
            if i == 100:  # the peer's message 1, its message 3 a few spoofed first messages later, then message 5
                h.receive(message(ICKY, tag=b"MM1"), PEER)
                rcookie = decode_message(h.written()[-1][0]).responder_cookie
            if i in (110, 900):
                h.receive(message(ICKY, rcookie, tag=b"MM3" if i == 110 else b"MM5"), PEER)
        self.assertEqual(len(h.established), 1)
        self.assertEqual(len(h.engine.half_open), 16)
        self.assertEqual(h.counters["halfopen_cap_total"], 0)

    def test_flood_memory_bound(self):
        """10,000 first messages with spoofed cookies and sources leave at most halfopen_total half-open SAs (each
        new one takes the place of the oldest); an established SA keeps working through the flood; after
        exchange_timeout nothing of the flood is left."""
        h = Harness(FakeFactory(keep=False), halfopen_per_peer=4, halfopen_total=256, exchange_timeout=30)
        rcookie = h.main_mode()
        handled = []
        h.engine.register_phase2(1, lambda sa, msg, raw, peer, local, now, rng: handled.append(msg.message_id))
        cookies = CountingRandom(b"flood")
        for i in range(10_000):
            h.receive(message(cookies(8), tag=b"MM1"), spoofed_source(i % 5000))
            if i % 2500 == 0:
                h.receive(message(ICKY, rcookie, QUICK_MODE, message_id=i + 1), PEER)
        engine = h.engine
        sizes = {len(engine.half_open), len(engine.first_messages), len(engine.exchanges),
                 sum(engine.half_open_by_source.values())}
        self.assertEqual(sizes, {256})
        self.assertEqual(h.factory.responder_calls, 1 + 10_000)  # the established SA's own, then the flood's
        self.assertEqual(h.counters["halfopen_evicted"], 10_000 - 256)
        self.assertEqual(h.counters["halfopen_cap_total"], 0)
        self.assertEqual(handled, [1, 2501, 5001, 7501])
        self.assertIn(ICKY + rcookie, engine.sas)
        h.clock.advance(30)
        self.assertEqual((len(engine.half_open), len(engine.first_messages), len(engine.exchanges)), (0, 0, 0))
        self.assertEqual(engine.half_open_by_source, Counter())
        self.assertEqual(list(engine.sas), [ICKY + rcookie])

    def test_flood_from_one_source(self):
        """10,000 first messages from one address hold at most halfopen_per_peer SAs; other peers still get in."""
        h = Harness(FakeFactory(keep=False), halfopen_per_peer=8, halfopen_total=1000)
        cookies = CountingRandom(b"one source")
        for _ in range(10_000):
            h.receive(message(cookies(8)), ("198.51.100.7", 500))
        self.assertEqual(len(h.engine.half_open), 8)
        self.assertEqual(h.counters["halfopen_cap_per_peer"], 10_000 - 8)
        h.main_mode()
        self.assertEqual(len(h.established), 1)


class NatTraversalTests(unittest.TestCase):
    def nat_t_script(self):
        return lambda: [answer(b"MM2"), answer(b"MM4", nat_t=True), answer_and_establish(b"MM6", nat_t=True)]

    def test_float_to_port_4500(self):
        """After the float, messages on port 4500 lose their non-ESP marker before the machine sees them, the
        machine's NAT-T answers leave from port 4500 with the marker, and the SA moves to the new peer address."""
        h = Harness(FakeFactory(responder_script=self.nat_t_script()))
        h.receive(message(ICKY, tag=b"MM1"), PEER)
        rcookie = decode_message(h.written()[0][0]).responder_cookie
        mm3 = message(ICKY, rcookie, tag=b"MM3")
        h.receive(mm3, PEER_NAT, port=4500)
        machine = h.factory.responders[0]
        self.assertEqual(machine.calls[-1], ("receive", MM, mm3, 0.0, PEER_NAT, ("127.0.0.1", 4500)))
        [(data, addr)] = h.written(4500)
        self.assertEqual(addr, PEER_NAT)
        self.assertTrue(data.startswith(NON_ESP_MARKER))
        self.assertEqual(tag(data[4:]), b"MM4")
        self.assertEqual(h.engine.exchanges[ICKY + rcookie].peer, PEER_NAT)
        h.receive(message(ICKY, rcookie, tag=b"MM5"), PEER_NAT, port=4500)
        [sa] = h.established
        self.assertEqual((sa.peer, sa.nat_t), (PEER_NAT, True))
        self.assertIs(h.engine.sas_by_peer[PEER_NAT], h.engine.sas[ICKY + rcookie])
        self.assertNotIn(PEER, h.engine.sas_by_peer)
        self.assertEqual(len(h.written()), 1)  # only MM2 left from port 500

    def test_we_send_keepalives_behind_a_nat(self):
        """An SA that floated to NAT-T with our own address behind a NAT gets a NAT-keepalive (0xFF, no marker)
        from port 4500 every 20 s (RFC 3948 section 4); none before the interval, none from port 500."""
        script = lambda: [answer(b"MM2"), answer(b"MM4", nat_t=True),  # noqa: E731
                          answer_and_establish(b"MM6", nat_t=True, local_behind_nat=True)]
        h = Harness(FakeFactory(responder_script=script))
        h.receive(message(ICKY, tag=b"MM1"), PEER)
        rcookie = decode_message(h.written()[0][0]).responder_cookie
        h.receive(message(ICKY, rcookie, tag=b"MM3"), PEER_NAT, port=4500)
        h.receive(message(ICKY, rcookie, tag=b"MM5"), PEER_NAT, port=4500)
        sent_before = len(h.written(4500))
        h.clock.advance(19.9)
        self.assertEqual(len(h.written(4500)), sent_before)
        h.clock.advance(0.1)
        self.assertEqual(h.written(4500)[sent_before:], [(b"\xff", PEER_NAT)])
        h.clock.advance(20.0)
        self.assertEqual(h.written(4500)[sent_before:], [(b"\xff", PEER_NAT)] * 2)
        self.assertEqual(h.counters["nat_keepalive_sent"], 2)

    def test_no_keepalives_when_not_behind_a_nat(self):
        """A NAT-T SA whose NAT is on the peer's side sends no keepalives: the peer keeps its own NAT open."""
        h = Harness(FakeFactory(responder_script=self.nat_t_script()))
        h.receive(message(ICKY, tag=b"MM1"), PEER)
        rcookie = decode_message(h.written()[0][0]).responder_cookie
        h.receive(message(ICKY, rcookie, tag=b"MM3"), PEER_NAT, port=4500)
        h.receive(message(ICKY, rcookie, tag=b"MM5"), PEER_NAT, port=4500)
        h.clock.advance(60.0)
        self.assertNotIn(b"\xff", [data for data, _ in h.written(4500)])

    def test_keepalive(self):
        """A NAT-keepalive (0xFF, RFC 3948 section 2.3) on port 4500 is counted and never reaches the engine."""
        h = Harness()
        h.ports[("127.0.0.1", 4500)].datagramReceived(b"\xff", PEER_NAT)
        self.assertEqual(h.counts(), {"received": 1, "nat_keepalive": 1})

    def test_nat_t_send_without_nat_t_listener(self):
        """A NAT-T Send with no NAT-T socket (of the peer's family) is counted as no_listener and logged."""
        h = Harness(FakeFactory(responder_script=lambda: [answer(b"MM2", nat_t=True)]))
        h.receive(message(ICKY), ("2001:db8::1", 500), host="::1")
        self.assertEqual(h.counters["no_listener"], 1)
        self.assertTrue(any("no listener" in t for t in h.log_text()))


class InitiatorTests(unittest.TestCase):
    def test_initiate(self):
        """initiate() starts a machine from the factory with the options given; its first message goes from our port
        500; the answer finds it by initiator cookie; the Deferred fires with the SA."""
        h = Harness()
        peer = ("192.0.2.9", 500)
        d = h.engine.initiate(peer, mode="main")
        [machine] = h.factory.initiators
        self.assertEqual((machine.options, machine.local), ({"mode": "main"}, LOCAL))
        [(mm1, addr)] = h.written()
        self.assertEqual((addr, decode_message(mm1).responder_cookie), (peer, ZERO))
        icookie, rcookie = machine.icookie, b"\x0b" * 8
        h.receive(message(icookie, rcookie, tag=b"MM2"), peer)
        self.assertEqual(tag(h.written()[-1][0]), b"MM3")
        self.assertIs(h.engine.exchanges[icookie + rcookie].runners["phase1"].machine, machine)
        self.assertEqual(h.engine.initiating, {})
        # Another responder cookie now is somebody else's: not this SA.
        h.receive(message(icookie, b"\x0c" * 8, tag=b"MM2"), peer)
        self.assertEqual(h.counters["unknown_sa"], 1)
        h.receive(message(icookie, rcookie, tag=b"MM4"), peer)
        h.receive(message(icookie, rcookie, tag=b"MM6"), peer)
        sa = self.successResultOf(d)
        self.assertEqual((sa.initiator_cookie, sa.responder_cookie, sa.role), (icookie, rcookie, "initiator"))
        self.assertEqual((h.engine.initiating, h.engine.exchanges), ({}, {}))
        self.assertEqual(h.established, [sa])

    def test_initiator_gives_up(self):
        """An initiator whose peer never answers fails its Deferred with Phase1Failed after its retransmissions."""
        h = Harness()
        d = h.engine.initiate(("192.0.2.9", 500))
        h.clock.pump([1, 2, 4])
        failure = self.failureResultOf(d, Phase1Failed)
        self.assertIn("peer did not answer", failure.value.reason)
        self.assertEqual((h.engine.initiating, h.clock.getDelayedCalls()), ({}, []))


    def test_notify_answering_our_first_message(self):
        """An Informational with our initiator cookie and a zero responder cookie (a Notify answering message 1)
        reaches our initiator, which decides what it is worth."""
        h = Harness(FakeFactory(initiator_script=lambda: [silent()]))
        h.engine.initiate(("192.0.2.9", 500))
        [machine] = h.factory.initiators
        notify = message(machine.icookie, ZERO, ExchangeType.INFORMATIONAL, tag=b"notify")
        h.receive(notify, ("192.0.2.9", 500))
        self.assertEqual(machine.calls[-1][:3], ("receive", ExchangeType.INFORMATIONAL, notify))


class PropertyTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(datagrams=st.lists(st.tuples(_datagrams, st.sampled_from([500, 848, 4500]), st.integers(1, 3)),
                              max_size=8))
    def test_random_datagrams(self, datagrams):
        """Whatever arrives, in whatever order, nothing raises, nothing counts as internal_error, and the half-open
        bookkeeping stays consistent."""
        self.check(Harness(halfopen_per_peer=2, halfopen_total=3), datagrams)

    @settings(max_examples=200, deadline=None)
    @given(datagrams=st.lists(st.tuples(_datagrams, st.sampled_from([500, 848, 4500]), st.integers(1, 3)),
                              max_size=8))
    def test_random_datagrams_real_machines(self, datagrams):
        """The same with the real Main Mode and Aggressive Mode responders behind the engine."""
        factory = Phase1Factory(policy_from_config(parse_config({})))
        self.check(Harness(factory, halfopen_per_peer=2, halfopen_total=3), datagrams)

    def check(self, h, datagrams):
        for data, port, source in datagrams:
            h.ports[("127.0.0.1", port)].datagramReceived(data, (f"192.0.2.{source}", 500))
        engine = h.engine
        self.assertEqual(h.counters["internal_error"], 0)
        self.assertLessEqual(len(engine.half_open), 3)
        self.assertEqual(sum(engine.half_open_by_source.values()), len(engine.half_open))
        self.assertEqual(set(engine.first_messages.values()), engine.half_open)


class EstablishedTests(unittest.TestCase):
    def test_phase2_handler(self):
        """Under an established SA, Quick Mode goes to the DOI's handler with the SA, message, raw datagram, peer,
        local address, time and rng; its Sends go out and its timers call handler.timer(sa, ...)."""
        h = Harness()
        rcookie = h.main_mode()
        calls = []

        def handler(sa, msg, raw, peer, local, *, now, rng):
            calls.append((sa.spi, msg.message_id, raw, peer, local, now))
            return [Send(b"qm2", peer), StartTimer("qm", 3)]

        handler.timer = lambda sa, key, now, rng: calls.append(("timer", sa.spi, key, now)) or []
        h.engine.register_phase2(1, handler)
        qm1 = message(ICKY, rcookie, QUICK_MODE, message_id=9)
        h.receive(qm1, PEER)
        self.assertEqual(calls, [(ICKY + rcookie, 9, qm1, PEER, LOCAL, 0.0)])
        self.assertEqual(h.written()[-1], (b"qm2", PEER))
        h.clock.advance(3)
        self.assertEqual(calls[-1], ("timer", ICKY + rcookie, "qm", 3.0))

    def test_no_phase2_handler(self):
        """Without a handler for the SA's DOI, a Quick Mode message is counted as unhandled."""
        h = Harness()
        rcookie = h.main_mode()
        h.receive(message(ICKY, rcookie, QUICK_MODE, message_id=9))
        self.assertEqual(h.counters["unhandled.32"], 1)

    def test_delete_removes_the_sa(self):
        """An authenticated Informational Delete of the ISAKMP SA removes it and tells the removed hooks."""
        h = Harness()
        h.main_mode()
        [sa] = h.established
        h.receive(informational.build(sa, [informational.delete_isakmp(sa)], CountingRandom(b"peer")))
        self.assertEqual(h.engine.sas, {})
        self.assertEqual(h.removed, [(sa, "deleted by the peer")])
        self.assertEqual(h.counters["informational_received"], 1)

    def test_forged_delete_ignored(self):
        """A Delete whose HASH(1) does not verify changes nothing."""
        h = Harness()
        h.main_mode()
        [sa] = h.established
        forged = bytearray(informational.build(sa, [informational.delete_isakmp(sa)], CountingRandom(b"peer")))
        forged[-1] ^= 1
        h.receive(bytes(forged))
        self.assertEqual(len(h.engine.sas), 1)
        self.assertEqual(h.removed, [])

    def test_dpd_answered(self):
        """R-U-THERE (RFC 3706) under the SA is answered with R-U-THERE-ACK echoing its sequence number."""
        h = Harness()
        h.main_mode()
        [sa] = h.established
        ping = informational.notify(sa, NotifyType.R_U_THERE, (77).to_bytes(4, "big"))
        h.receive(informational.build(sa, [ping], CountingRandom(b"peer")))
        result = informational.process(sa, decode_message(h.written()[-1][0]))
        self.assertIsInstance(result, Received)
        self.assertEqual(result.items, (RUThereAck(77),))

    def test_lifetime_expiry(self):
        """At the end of its lifetime the SA is deleted (a Delete goes to the peer) and removed."""
        h = Harness(FakeFactory(responder_script=lambda: [answer(b"MM2"), answer(b"MM4"),
                                                          answer_and_establish(b"MM6", lifetime=600)]))
        h.main_mode()
        [sa] = h.established
        h.clock.advance(599)
        self.assertEqual(len(h.engine.sas), 1)
        h.clock.advance(1)
        self.assertEqual(h.engine.sas, {})
        self.assertEqual(h.removed, [(sa, "lifetime over")])
        result = informational.process(sa, decode_message(h.written()[-1][0]))
        self.assertEqual(result.items, (DeleteReceived(ProtocolID.ISAKMP, (sa.spi,)),))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_initiator_reauthenticates(self):
        """Before an SA we initiated expires, a new initiator is started towards its peer, naming the SA it
        replaces."""
        h = Harness(FakeFactory(initiator_script=lambda: [answer(b"MM3"), answer(b"MM5"),
                                                          lambda m, msg, now, rng, peer, local:
                                                          m.establish(now, peer, lifetime=1000)]))
        peer = ("192.0.2.9", 500)
        d = h.engine.initiate(peer)
        icookie = h.factory.initiators[0].icookie
        for t in (b"MM2", b"MM4", b"MM6"):
            h.receive(message(icookie, b"\x0b" * 8, tag=t), peer)
        sa = self.successResultOf(d)
        h.clock.advance(900)
        self.assertEqual(len(h.factory.initiators), 2)
        self.assertEqual(h.factory.initiators[1].options, {"replaces": sa})

    def test_initial_contact_in_phase1(self):
        """An SA whose Phase 1 carried INITIAL-CONTACT replaces the older SAs of the same peer identity and address
        (RFC 2407 section 4.6.3.3); another identity's SA stays."""
        scripts = iter([
            lambda: [answer(b"MM2"), answer(b"MM4"), answer_and_establish(b"MM6")],
            lambda: [answer(b"MM2"), answer(b"MM4"), answer_and_establish(b"MM6", peer_id="other.example")],
            lambda: [answer(b"MM2"), answer(b"MM4"), answer_and_establish(b"MM6", initial_contact=True)],
        ])
        h = Harness(FakeFactory(responder_script=lambda: next(scripts)()))
        old = h.main_mode(b"\x01" * 8)
        other = h.main_mode(b"\x02" * 8)
        new = h.main_mode(b"\x03" * 8)
        self.assertEqual(sorted(h.engine.sas), sorted([b"\x02" * 8 + other, b"\x03" * 8 + new]))
        self.assertEqual([(sa.responder_cookie, reason) for sa, reason in h.removed],
                         [(old, "replaced after INITIAL-CONTACT")])

    def test_other_notify_to_hooks(self):
        """An authenticated Notify the engine does not act on goes to the informational hooks."""
        h = Harness()
        h.main_mode()
        [sa] = h.established
        seen = []
        h.engine.informational_hooks.append(lambda sa, item: seen.append((sa.spi, item.notify_type)))
        note = informational.notify(sa, NotifyType.RESPONDER_LIFETIME)
        h.receive(informational.build(sa, [note], CountingRandom(b"peer")))
        self.assertEqual(seen, [(sa.spi, NotifyType.RESPONDER_LIFETIME)])

    def test_dpd_probes(self):
        """With dpd_delay set, a peer that announced DPD (its vendor ID, RFC 3706) is asked R-U-THERE after that
        many quiet seconds, and its SA removed when no ACK comes; a peer that did not announce it is never asked."""
        h = Harness(FakeFactory(responder_script=lambda: [answer(b"MM2"), answer(b"MM4"), answer_and_establish(
            b"MM6", peer_vendor_ids=(DPD_VENDOR_ID,))]), dpd_delay=10)
        h.main_mode()
        [sa] = h.established
        h.clock.advance(10)
        result = informational.process(sa, decode_message(h.written()[-1][0]))
        self.assertIsInstance(result.items[0], RUThere)
        h.clock.pump([5] * 5)
        self.assertEqual(h.engine.sas, {})
        self.assertEqual(h.removed[0][1], "dead peer: no R-U-THERE-ACK to 5 R-U-THERE")
        quiet = Harness(dpd_delay=10)
        quiet.main_mode()
        sent = len(quiet.written())
        quiet.clock.advance(100)
        self.assertEqual(len(quiet.written()), sent)

    def test_hook_errors_contained(self):
        """A hook that raises is counted and logged; the SA stays established and the other hooks run."""
        h = Harness()
        seen = []

        def bad(sa):
            raise ValueError("hook bug")

        h.engine.established_hooks.insert(0, bad)
        h.engine.on_established(seen.append)
        h.main_mode()
        self.assertEqual(h.counters["hook_error"], 1)
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(h.engine.sas), 1)

    def test_no_key_material_in_logs(self):
        """Through establishment, DPD, a failure and expiry, no key octets reach any log event (text or fields)."""
        global_events = []
        globalLogPublisher.addObserver(global_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, global_events.append)
        h = Harness(FakeFactory(responder_script=lambda: [answer(b"MM2"), answer(b"MM4"),
                                                          answer_and_establish(b"MM6", lifetime=600)]))
        h.main_mode()
        [sa] = h.established
        ping = informational.notify(sa, NotifyType.R_U_THERE, (1).to_bytes(4, "big"))
        h.receive(informational.build(sa, [ping], CountingRandom(b"peer")))
        h.receive(message(b"\x0e" * 8, tag=b"MM1"), ("192.0.2.3", 500))
        h.clock.advance(600)
        self.assertGreater(len(h.events), 5)
        secrets = [ENC_KEY, SKEYID_A, sa.keys.skeyid, sa.keys.skeyid_d]
        for event in h.events + global_events:
            text = formatEvent(event) + repr(event)
            for secret in secrets:
                self.assertNotIn(secret.hex(), text)
                self.assertNotIn(repr(secret)[2:-1], text)


class ServiceTests(unittest.TestCase):
    """GDOIService with a machine factory: the engine, its listeners and settings from the configuration."""

    def start(self, text: str) -> GDOIService:
        reactor = FakeUDPReactor()
        service = GDOIService(parse_config(tomllib.loads(text)), reactor, factory=FakeFactory(), rng=CountingRandom())
        self.events = []
        service.log = Logger(observer=self.events.append)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    LISTEN = '[server]\nlisten = [{address = "127.0.0.1", port = 500}, {address = "127.0.0.1", port = 848},' \
             ' {address = "::1", port = 500}]\n'

    def test_nat_t_listener_per_address(self):
        """Each listen address also gets the NAT-T port; those listeners strip and add the non-ESP marker, and
        every listener feeds the engine."""
        service = self.start(self.LISTEN)
        bound = [(p.local_address, p.is_nat_t) for p in service.protocols]
        self.assertEqual(bound, [(("127.0.0.1", 500), False), (("127.0.0.1", 848), False), (("::1", 500), False),
                                 (("127.0.0.1", 4500), True), (("::1", 4500), True)])
        self.assertEqual(service.engine.listeners, service.protocols)

    def test_nat_t_port_zero(self):
        """nat_t_port = 0 binds a free port per address and marks it as NAT-T whatever its number."""
        service = self.start(self.LISTEN + "nat_t_port = 0\n")
        self.assertEqual([p.is_nat_t for p in service.protocols], [False, False, False, True, True])

    def test_nat_t_off(self):
        """With ike.nat_t = false no NAT-T port is bound."""
        service = self.start(self.LISTEN + "[ike]\nnat_t = false\n")
        self.assertEqual(len(service.protocols), 3)

    def test_without_factory(self):
        """Without a factory the service is as before: no engine, no NAT-T listener, the dispatcher gets messages."""
        got = []
        service = GDOIService(parse_config(tomllib.loads(self.LISTEN)), FakeUDPReactor(),
                              dispatcher=lambda m, a, p: got.append(p))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNone(service.engine)
        self.assertEqual(len(service.protocols), 3)
        service.protocols[1].datagramReceived(message(ICKY), PEER)
        self.assertEqual(got, [848])

    def test_engine_settings(self):
        """Half-open caps, exchange timeout and DPD delay come from [ike]."""
        service = self.start(self.LISTEN + "[ike]\nhalfopen_per_peer = 2\nhalfopen_total = 9\nexchange_timeout = 12.5\n"
                             "dpd_delay = 0\n")
        engine = service.engine
        self.assertEqual((engine.halfopen_per_peer, engine.halfopen_total, engine.exchange_timeout, engine.dpd_delay),
                         (2, 9, 12.5, 0))

    def test_exchange_through_the_service(self):
        """A datagram on a service listener reaches a responder and is answered through the same socket."""
        service = self.start(self.LISTEN)
        service.protocols[0].datagramReceived(message(ICKY, tag=b"MM1"), PEER)
        [(data, addr)] = service.protocols[0].transport.written
        self.assertEqual((tag(data), addr), (b"MM2", PEER))

    def test_weak_group_warning(self):
        """A proposal with MODP group 2 (allowed by the opt-in) is warned about at start."""
        self.start(self.LISTEN + "[security]\nallow_weak_dh_groups = true\n[ike]\nproposals = [{encryption = "
                   '"aes128", hash = "sha1", group = 2, auth = "psk"}]\n')
        warnings = [formatEvent(e) for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("ike.proposals[0] uses MODP group 2", warnings[1])
        self.assertIn("Logjam", warnings[1])


class Phase1Factory:
    """A MachineFactory of the real Main Mode and Aggressive Mode machines, for the tests below."""

    def __init__(self, policy):
        self.policy = policy

    def responder(self, msg, peer, local, now):
        cls = {ExchangeType.MAIN_MODE: MainMode, ExchangeType.AGGRESSIVE: AggressiveMode}.get(msg.exchange_type)
        return None if cls is None else cls.responder(self.policy)

    def initiator(self, peer, local, *, mode=MainMode, replaces=None, **options):
        return mode.initiator(self.policy, local=local, peer=peer, **options)


class Wire(PortTransport):
    """A transport whose writes arrive at once at the listener bound to the destination address."""

    def __init__(self, port: int, host: str, network: dict):
        super().__init__(port, host)
        self.network = network

    def write(self, packet, addr=None):
        super().write(packet, addr)
        listener = self.network.get(tuple(addr))
        if listener is not None:
            listener.datagramReceived(packet, (self.address.host, self.address.port))


class RealMachineTests(unittest.TestCase):
    """Two engines with the real Phase 1 machines, an initiator on 127.0.0.1 and a responder on 127.0.0.2, over an
    in-memory network: the adapter and the machines agree end to end."""

    PSK = b"interop secret"

    def setUp(self, responder_psk: bytes = PSK):
        def psk_config(host, ident, other):
            psk = os.path.abspath(self.mktemp())
            with open(psk, "wb") as f:
                f.write((self.PSK if host == "127.0.0.1" else responder_psk) + b"\n")
            os.chmod(psk, 0o600)
            return {"identity": {"id": ident},
                    "peers": [{"address": "any", "psk_file": psk}, {"id": other, "psk_file": psk}]}

        self.start(psk_config)

    def start(self, config_for, now: float = 0):
        """Engines for 127.0.0.1 (ID member.example) and 127.0.0.2 (ks.example) from config_for(host, id, other)."""
        self.clock = Clock()
        self.clock.advance(now)
        self.network, self.engines, self.keylogs, self.events = {}, {}, {}, []
        for host, ident, other in (("127.0.0.1", "member.example", "ks.example"),
                                   ("127.0.0.2", "ks.example", "member.example")):
            policy = policy_from_config(parse_config(config_for(host, ident, other)))
            engine = IKEEngine(Phase1Factory(policy), self.clock, CountingRandom(host.encode()))
            engine.log = Logger(observer=self.events.append)
            self.keylogs[host] = KeyLog(os.path.abspath(self.mktemp()))
            engine.on_established(self.keylogs[host].write_sa)
            for port in (500, 4500):
                listener = ISAKMPProtocol(engine.counters, engine=engine)
                listener.log = engine.log
                listener.makeConnection(Wire(port, host, self.network))
                self.network[(host, port)] = listener
            self.engines[host] = engine

    def establish(self, mode):
        d = self.engines["127.0.0.1"].initiate(("127.0.0.2", 500), mode=mode)
        initiator_sa = self.successResultOf(d)
        return initiator_sa, self.engines["127.0.0.2"].sas[initiator_sa.spi].sa

    def check(self, initiator_sa, responder_sa):
        self.assertEqual(initiator_sa.spi, responder_sa.spi)
        self.assertEqual(initiator_sa.keys.enc_key, responder_sa.keys.enc_key)
        self.assertEqual((initiator_sa.peer, responder_sa.peer), (("127.0.0.2", 500), ("127.0.0.1", 500)))
        for engine in self.engines.values():
            self.assertEqual((engine.half_open, engine.exchanges, engine.initiating), (set(), {}, {}))
        lines = set()
        for keylog in self.keylogs.values():
            with open(keylog.path) as f:
                lines.add(f.read())
        self.assertEqual(lines, {line(initiator_sa.initiator_cookie, initiator_sa.keys.enc_key)})

    def test_main_mode(self):
        """Main Mode with a PSK chosen by address: both engines establish the same SA and log the same keys."""
        self.check(*self.establish(MainMode))

    def test_aggressive_mode(self):
        """Aggressive Mode with PSKs chosen by identity: the same."""
        initiator_sa, responder_sa = self.establish(AggressiveMode)
        self.check(initiator_sa, responder_sa)
        self.assertEqual(responder_sa.peer_id.data, b"member.example")

    def test_main_mode_ecdsa_from_config(self):
        """Main Mode with ECDSA P-256 certificates, the policy built from [[peers]] certificate, private_key and ca:
        both engines establish the SA."""
        hierarchies = {ident: pki.hierarchy("p256", sans=(ident,)) for ident in ("member.example", "ks.example")}

        def certificate_config(host, ident, other):
            mine = hierarchies[ident]
            cert = pki.write_certificates(self.mktemp(), mine.leaf.certificate, mine.intermediate.certificate)
            key = pki.write_key(self.mktemp(), mine.leaf.key)
            ca = pki.write_certificates(self.mktemp(), hierarchies[other].root.certificate)
            return {"identity": {"id": ident},
                    "ike": {"proposals": [{"encryption": "aes128", "hash": "sha256", "group": 19, "auth": "ecdsa"}]},
                    "peers": [{"address": "any", "auth": "ecdsa", "certificate": cert, "private_key": key,
                               "ca": [ca]}]}

        self.start(certificate_config, now=pki.NOW.timestamp())
        initiator_sa, responder_sa = self.establish(MainMode)
        self.check(initiator_sa, responder_sa)
        self.assertEqual((initiator_sa.proposal.auth, responder_sa.peer_id.data), (9, b"member.example"))

    def test_dpd_between_engines(self):
        """With DPD announced by both (policy_from_config does), an idle SA is probed and the ACK keeps it."""
        for engine in self.engines.values():
            engine.dpd_delay = 10
        self.establish(MainMode)
        self.clock.advance(10)
        counts = [dict(engine.counters) for engine in self.engines.values()]
        self.assertEqual(sum(c.get("dpd_r_u_there_sent", 0) for c in counts), 1)
        self.assertEqual(sum(c.get("dpd_ack", 0) for c in counts), 1)
        self.assertTrue(all(len(engine.sas) == 1 for engine in self.engines.values()))

    def test_no_secret_in_logs(self):
        """Neither the PSK nor any key of the SAs shows in a log event, through success, DPD, expiry, and a failure
        for a wrong PSK."""
        global_events = []
        globalLogPublisher.addObserver(global_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, global_events.append)
        initiator_sa, _ = self.establish(MainMode)
        self.establish(AggressiveMode)
        self.clock.advance(28800)
        self.setUp(responder_psk=b"another secret")
        failed = self.engines["127.0.0.1"].initiate(("127.0.0.2", 500))
        self.clock.advance(60)
        self.failureResultOf(failed, Phase1Failed)
        self.assertTrue(any("Phase 1 failed" in formatEvent(e) for e in self.events), self.events)
        keys = initiator_sa.keys
        secrets = [self.PSK, b"another secret", keys.skeyid, keys.skeyid_d, keys.skeyid_a, keys.skeyid_e, keys.enc_key]
        for event in self.events + global_events:
            text = formatEvent(event) + repr(event)
            for secret in secrets:
                self.assertNotIn(secret.hex(), text)
                self.assertNotIn(repr(secret)[2:-1], text)

