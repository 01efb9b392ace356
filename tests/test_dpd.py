"""Dead Peer Detection (gdoiserver.exchanges.dpd, RFC 3706) driven on a fake clock.

:class:`End` plays the adapter for one DPD machine: it runs timers on a twisted.internet.task.Clock, keeps what
the machine sends and the other effects, and (when linked) hands each datagram to the other end's machine, as
two ends of one ISAKMP SA would see them.
"""

import struct

from twisted.internet.task import Clock
from twisted.trial import unittest

from gdoiserver.codec import Notification, VendorID, decode_message
from gdoiserver.codec.constants import DOI, DPD_VENDOR_ID, NAT_T_VENDOR_ID, NotifyType, ProtocolID
from gdoiserver.exchanges import informational as info
from gdoiserver.exchanges.dpd import DPD, r_u_there, r_u_there_ack, supports_dpd, vendor_id
from gdoiserver.exchanges.effects import CancelTimer, Count, Failed, Send, StartTimer
from gdoiserver.exchanges.informational import Received, RUThere, RUThereAck
from tests.test_informational import Random, sa_pair

DELAY, RETRY, TRIES = 30.0, 5.0, 3
START = 0x9234_5678  # the first four rng octets; DPD clears the top bit: 0x12345678
FIRST = 0x1234_5678


class End:
    """One end of an SA with its DPD machine, on a shared clock."""

    def __init__(self, machine: DPD, clock: Clock, label: str):
        self.machine, self.clock, self.rng = machine, clock, Random(label)
        self.sent: list[Send] = []
        self.events: list = []
        self.timers: dict = {}
        self.peer: "End | None" = None
        self.reachable = True  # False: what this end sends is lost

    def run(self, effects):
        for e in effects:
            if isinstance(e, StartTimer):
                self.cancel(e.key)
                self.timers[e.key] = self.clock.callLater(e.delay, self.fire, e.key)
            elif isinstance(e, CancelTimer):
                self.cancel(e.key)
            elif isinstance(e, Send):
                self.sent.append(e)
                if self.peer is not None and self.reachable:
                    self.peer.deliver(e.data)
            else:
                self.events.append(e)

    def cancel(self, key):
        call = self.timers.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def fire(self, key):
        del self.timers[key]
        self.run(self.machine.timer(key, self.clock.seconds(), self.rng))

    def start(self):
        self.run(self.machine.start(self.clock.seconds(), self.rng))
        return self

    def deliver(self, data: bytes):
        self.run(self.machine.receive(decode_message(data), data, self.clock.seconds(), self.rng))

    def counts(self, name) -> int:
        return self.events.count(Count(name))

    def items(self, sent: Send, sa) -> tuple:
        """What the other end reads in one of our datagrams."""
        result = info.process(sa, decode_message(sent.data))
        assert isinstance(result, Received), result
        return result.items


def elapse(clock: Clock, seconds: float, step: float = 0.25):
    """Let ``seconds`` pass a step at a time, as a reactor would: Clock.advance moves time first, so a timer
    that another timer starts during one long advance would come late."""
    while seconds > 0:
        clock.advance(min(step, seconds))
        seconds -= step


def pair(a_kw=None, b_kw=None, link=True):
    """Two started ends of one SA: ``a`` probes (rng octets START first), ``b`` only answers unless told."""
    clock = Clock()
    sa_a, sa_b = sa_pair()
    kw = dict(delay=DELAY, retry=RETRY, max_failures=TRIES)
    a = End(DPD(sa_a, **{**kw, **(a_kw or {})}), clock, "a")
    a.rng.script.append(struct.pack("!I", START))
    b = End(DPD(sa_b, **{**kw, "delay": None, **(b_kw or {})}), clock, "b")
    if link:
        a.peer, b.peer = b, a
    return clock, a.start(), b.start()


class VendorIDTests(unittest.TestCase):
    """Announcing and recognising DPD in Phase 1 (RFC 3706)."""

    def test_vendor_id(self):
        """Our vendor ID is the RFC's 16 octets, version 1.0; a peer's 1.x is recognised, as a payload or as
        octets, and nothing else is."""
        self.assertEqual(vendor_id(), VendorID(bytes.fromhex("afcad71368a1f1c96b8696fc77570100")))
        self.assertTrue(supports_dpd([VendorID(NAT_T_VENDOR_ID), vendor_id()]))
        self.assertTrue(supports_dpd([VendorID(DPD_VENDOR_ID[:15] + b"\x05")]))
        self.assertFalse(supports_dpd([VendorID(NAT_T_VENDOR_ID)]))
        self.assertFalse(supports_dpd([VendorID(DPD_VENDOR_ID[:14] + b"\x02\x00")]))  # major version 2
        self.assertFalse(supports_dpd([VendorID(DPD_VENDOR_ID[:15])]))
        self.assertFalse(supports_dpd([]))
        self.assertTrue(supports_dpd((NAT_T_VENDOR_ID, DPD_VENDOR_ID)))  # octets, as ISAKMPSA.peer_vendor_ids
        self.assertFalse(supports_dpd((NAT_T_VENDOR_ID,)))
        self.assertFalse(supports_dpd([Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE)]))

    def test_notify_layout(self):
        """R-U-THERE and its ACK: protocol ISAKMP, SPI = the cookies, data = 4-octet sequence number."""
        sa, _ = sa_pair()
        self.assertEqual(r_u_there(sa, 0x01020304),
                         Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE, sa.spi, b"\1\2\3\4"))
        self.assertEqual(r_u_there_ack(sa, 7),
                         Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE_ACK, sa.spi, b"\0\0\0\7"))

    def test_bad_parameters(self):
        """A DPD with no tries, or a zero delay or retry, is refused."""
        sa, _ = sa_pair()
        for kw in (dict(max_failures=0), dict(delay=0.0), dict(retry=0.0)):
            self.assertRaises(ValueError, DPD, sa, **kw)


class ProbeTests(unittest.TestCase):
    """Probing an idle peer."""

    def test_start(self):
        """start() arms the "dpd" timer for ``delay`` and sends nothing; the machine is idle."""
        sa, _ = sa_pair()
        machine = DPD(sa, delay=DELAY)
        self.assertEqual(machine.start(0.0, Random()), [StartTimer("dpd", DELAY)])
        self.assertEqual((machine.state, machine.done), ("idle", False))

    def test_first_probe_after_delay(self):
        """Nothing is sent before ``delay`` seconds of quiet; then one R-U-THERE, whose sequence number is the
        random start with its top bit clear, sent to the peer under the SA."""
        clock, a, b = pair(link=False)
        elapse(clock, DELAY - 0.001)
        self.assertEqual(a.sent, [])
        elapse(clock, 0.001)
        self.assertEqual(len(a.sent), 1)
        self.assertEqual(a.items(a.sent[0], b.machine.sa), (RUThere(FIRST),))
        self.assertEqual((a.sent[0].peer, a.sent[0].local), (a.machine.sa.peer, a.machine.sa.local))
        self.assertEqual(a.counts("dpd_r_u_there_sent"), 1)
        self.assertEqual(a.machine.state, "probing")

    def test_traffic_postpones_probe(self):
        """Traffic seen at t=20 moves the probe to t=50: the timer at t=30 re-arms for the 20 s left."""
        clock, a, _ = pair(link=False)
        elapse(clock, 20)
        self.assertEqual(a.machine.traffic_seen(clock.seconds()), [])
        elapse(clock, 10)
        self.assertEqual(a.sent, [])
        self.assertEqual(a.timers["dpd"].getTime(), 50.0)
        elapse(clock, 19.9)
        self.assertEqual(a.sent, [])
        elapse(clock, 0.1)
        self.assertEqual(len(a.sent), 1)

    def test_peer_answers(self):
        """The peer answers with R-U-THERE-ACK echoing the sequence number; the prober goes idle, and its next
        probe, ``delay`` later, carries the next sequence number."""
        clock, a, b = pair()
        elapse(clock, DELAY)
        self.assertEqual(len(b.sent), 1)
        self.assertEqual(b.items(b.sent[0], a.machine.sa), (RUThereAck(FIRST),))
        self.assertEqual(b.counts("dpd_r_u_there_answered"), 1)
        self.assertEqual((a.machine.state, a.counts("dpd_ack")), ("idle", 1))
        elapse(clock, DELAY)
        self.assertEqual(a.items(a.sent[-1], b.machine.sa), (RUThere(FIRST + 1),))
        self.assertFalse(any(isinstance(e, Failed) for e in a.events))

    def test_dead_peer(self):
        """A silent peer gets ``max_failures`` R-U-THEREs, ``retry`` apart, each with a new sequence number;
        ``retry`` after the last, the machine fails (the adapter deletes the SA) and then does nothing more."""
        clock, a, b = pair()
        a.reachable = False
        elapse(clock, DELAY)
        for i in range(1, TRIES):
            elapse(clock, RETRY)
            self.assertEqual(len(a.sent), i + 1)
        self.assertEqual([a.items(s, b.machine.sa) for s in a.sent], [(RUThere(FIRST + i),) for i in range(TRIES)])
        self.assertFalse(a.machine.done)
        elapse(clock, RETRY - 0.001)
        self.assertFalse(a.machine.done)
        elapse(clock, 0.001)
        self.assertTrue(a.machine.done)
        self.assertEqual(a.machine.state, "dead")
        failed = [e for e in a.events if isinstance(e, Failed)]
        self.assertEqual(len(failed), 1)
        self.assertIsNone(failed[0].notify)
        self.assertEqual(a.counts("dpd_peer_dead"), 1)
        elapse(clock, 10 * DELAY)
        self.assertEqual(len(a.sent), TRIES)
        self.assertEqual(a.machine.timer("dpd", clock.seconds(), a.rng), [])
        self.assertEqual(a.machine.traffic_seen(clock.seconds()), [])

    def test_both_ends_probe(self):
        """With both ends probing, a's R-U-THEREs (fresh sequence numbers) prove a alive to b, so b, whose delay
        is a second longer, never needs to probe: an hour passes with 120 answered probes and no failure."""
        clock, a, b = pair(b_kw=dict(delay=DELAY + 1))
        elapse(clock, 3600)
        self.assertEqual((a.counts("dpd_r_u_there_sent"), a.counts("dpd_ack")), (120, 120))
        self.assertEqual((b.counts("dpd_r_u_there_sent"), b.counts("dpd_r_u_there_answered")), (0, 120))
        self.assertFalse(a.machine.done or b.machine.done)

    def test_answer_to_a_retry(self):
        """An ACK to the third R-U-THERE of a round (the first two lost) proves the peer alive."""
        clock, a, b = pair()
        a.reachable = False
        elapse(clock, DELAY + RETRY)
        a.reachable = True
        elapse(clock, RETRY)
        self.assertEqual(b.items(b.sent[-1], a.machine.sa), (RUThereAck(FIRST + 2),))
        self.assertEqual((a.machine.state, a.counts("dpd_ack")), ("idle", 1))
        elapse(clock, DELAY * 3)
        self.assertFalse(a.machine.done)

    def test_late_ack_of_an_earlier_probe_in_the_round(self):
        """While probing, an ACK for any R-U-THERE of the current round (not only the last) counts."""
        clock, a, b = pair(link=False)
        elapse(clock, DELAY + RETRY)  # two probes, FIRST and FIRST + 1, unanswered so far
        ack = info.build(b.machine.sa, [r_u_there_ack(b.machine.sa, FIRST)], Random("late"))
        a.deliver(ack)
        self.assertEqual((a.machine.state, a.counts("dpd_ack")), ("idle", 1))

    def test_wrong_sequence_number(self):
        """An ACK with a sequence number never sent is counted and ignored: the peer still dies after its tries."""
        clock, a, b = pair(link=False)
        elapse(clock, DELAY)
        for seq in (FIRST + 1, FIRST - 1, FIRST + 2**31):
            a.deliver(info.build(b.machine.sa, [r_u_there_ack(b.machine.sa, seq)], Random(str(seq))))
        self.assertEqual(a.counts("dpd_ack_wrong_sequence"), 3)
        self.assertEqual(a.machine.state, "probing")
        elapse(clock, TRIES * RETRY)
        self.assertEqual(a.machine.state, "dead")

    def test_replayed_old_ack(self):
        """An ACK recorded in an earlier round and replayed verbatim (its HASH(1) still verifies) does not prove
        the peer alive in a later round."""
        clock, a, b = pair()
        elapse(clock, DELAY)
        old_ack = b.sent[-1].data
        self.assertEqual(a.machine.state, "idle")
        a.reachable = False
        elapse(clock, DELAY)  # second round: R-U-THERE FIRST + 1, lost
        a.deliver(old_ack)
        self.assertEqual(a.counts("dpd_ack_wrong_sequence"), 1)
        self.assertEqual(a.machine.state, "probing")
        elapse(clock, TRIES * RETRY)
        self.assertEqual(a.machine.state, "dead")

    def test_unsolicited_ack(self):
        """An ACK while idle (nothing outstanding) is counted as a wrong sequence number."""
        clock, a, b = pair(link=False)
        a.deliver(info.build(b.machine.sa, [r_u_there_ack(b.machine.sa, FIRST)], Random()))
        self.assertEqual((a.counts("dpd_ack_wrong_sequence"), a.machine.state), (1, "idle"))

    def test_late_ack_after_traffic(self):
        """When both sides probe after the same quiet time, the peer's R-U-THERE proves it alive first; its ACK
        to our probe then arrives while idle: counted dpd_ack_late, not as a wrong sequence number."""
        clock, a, b = pair(link=False)
        elapse(clock, DELAY + 1)
        self.assertEqual(a.machine.state, "probing")
        a.machine.traffic_seen(clock.seconds())
        a.deliver(info.build(b.machine.sa, [r_u_there_ack(b.machine.sa, FIRST)], Random()))
        self.assertEqual((a.counts("dpd_ack_late"), a.counts("dpd_ack_wrong_sequence"), a.machine.state),
                         (1, 0, "idle"))

    def test_traffic_during_probe(self):
        """Traffic seen while probing proves the peer alive: back to idle, next probe ``delay`` later."""
        clock, a, _ = pair(link=False)
        elapse(clock, DELAY + 1)
        self.assertEqual(a.machine.traffic_seen(clock.seconds()), [StartTimer("dpd", DELAY)])
        self.assertEqual(a.machine.state, "idle")

    def test_answer_only(self):
        """With ``delay`` None the machine never probes, yet answers R-U-THERE."""
        clock, a, b = pair(a_kw=dict(delay=None), b_kw=dict(delay=DELAY))
        elapse(clock, DELAY)
        ((probe,),) = [b.items(s, a.machine.sa) for s in b.sent]
        self.assertEqual([a.items(s, b.machine.sa) for s in a.sent], [(RUThereAck(probe.sequence),)])
        elapse(clock, 10 * DELAY)
        self.assertEqual(a.counts("dpd_r_u_there_sent"), 0)
        self.assertEqual(a.machine.timer("dpd", clock.seconds(), a.rng), [])

    def test_stop(self):
        """stop() cancels the timer; afterwards nothing is sent or answered."""
        clock, a, b = pair(b_kw=dict(delay=DELAY))
        self.assertEqual(a.machine.stop(), [CancelTimer("dpd")])
        a.cancel("dpd")
        self.assertTrue(a.machine.done)
        elapse(clock, DELAY)  # b probes; a is stopped and does not answer
        self.assertEqual((len(b.sent), a.sent), (1, []))
        self.assertEqual(a.machine.timer("dpd", clock.seconds(), a.rng), [])


class AnswerTests(unittest.TestCase):
    """Answering a peer's R-U-THERE."""

    def send_r_u_there(self, b, seq, label):
        data = info.build(b.machine.sa, [r_u_there(b.machine.sa, seq)], Random(label))
        return data

    def test_ack_echoes_sequence(self):
        """Each R-U-THERE gets an ACK with its sequence number, a repeated one too (the peer may have lost the
        first ACK), each in a new Informational exchange (a new M-ID)."""
        clock, a, b = pair(link=False)
        data = self.send_r_u_there(b, 0xDEADBEEF, "x")
        a.deliver(data)
        a.deliver(data)
        self.assertEqual([a.items(s, b.machine.sa) for s in a.sent], [(RUThereAck(0xDEADBEEF),)] * 2)
        self.assertNotEqual(a.sent[0].data[20:24], a.sent[1].data[20:24])
        self.assertEqual(a.counts("dpd_r_u_there_answered"), 2)

    def test_fresh_r_u_there_proves_liveness(self):
        """While probing, a peer's R-U-THERE with a sequence number after the last one seen proves it alive; a
        repeated or older one is answered but does not; numbers wrap modulo 2^32."""
        clock, a, b = pair(link=False)

        def probe_round():
            elapse(clock, DELAY)
            self.assertEqual(a.machine.state, "probing")

        probe_round()
        a.deliver(self.send_r_u_there(b, 0xFFFFFFFF, "1"))
        self.assertEqual(a.machine.state, "idle")
        probe_round()
        a.deliver(self.send_r_u_there(b, 0, "2"))  # after 0xFFFFFFFF, modulo 2^32
        self.assertEqual(a.machine.state, "idle")
        probe_round()
        a.deliver(self.send_r_u_there(b, 0xFFFFFFFF, "3"))  # older: a replay
        a.deliver(self.send_r_u_there(b, 0, "4"))  # the same again
        self.assertEqual(a.machine.state, "probing")
        self.assertEqual(a.counts("dpd_r_u_there_answered"), 4)

    def test_both_in_one_message(self):
        """A message carrying an R-U-THERE and an ACK for our probe: both handled."""
        clock, a, b = pair(link=False)
        elapse(clock, DELAY)
        sa = b.machine.sa
        a.deliver(info.build(sa, [r_u_there(sa, 5), r_u_there_ack(sa, FIRST)], Random()))
        self.assertEqual(a.items(a.sent[-1], sa), (RUThereAck(5),))
        self.assertEqual(a.machine.state, "idle")

    def test_dropped_and_other_messages(self):
        """A tampered message is dropped with its Count and no answer; a Delete is left to the caller."""
        clock, a, b = pair(link=False)
        data = bytearray(self.send_r_u_there(b, 1, "t"))
        data[28 + 16] ^= 1
        a.deliver(bytes(data))
        self.assertEqual((a.sent, a.counts("informational_bad_hash")), ([], 1))
        a.deliver(info.build(b.machine.sa, [info.delete_isakmp(b.machine.sa)], Random()))
        self.assertEqual((a.sent, a.counts("informational_received")), ([], 1))

    def test_received_items_directly(self):
        """received() takes the items of an Informational the caller already processed."""
        sa, _ = sa_pair()
        machine = DPD(sa)
        machine.start(0.0, Random())
        effects = machine.received((RUThere(3),), 1.0, Random())
        self.assertIsInstance(effects[0], Send)
        self.assertEqual(effects[1:], [Count("dpd_r_u_there_answered")])
