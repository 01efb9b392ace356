"""Rekey delivery (gdoiserver.rekey.delivery): copies and retransmissions on a Clock, acknowledgements, and real
multicast and unicast datagrams on loopback.

IPv4 multicast is carried by the loopback interface of this host (127.0.0.1).  IPv6 multicast is not: Linux turns
every route through ``lo`` that is not to a local address into a reject route (``fib6_is_reject`` in
net/ipv6/route.c, "we cannot add true routes via loopback"), so a datagram to ff0X:: on ``lo`` is dropped with
IP_OUTNOROUTES even after ``ip link set lo multicast on``.  The IPv6 test (and the TTL, hop limit and
interface-by-name checks) therefore run in a network namespace (``unshare -n``, root) with a veth pair: multicast
sent out of ``v0`` is looped back to a receiver joined on ``v0`` (IPV6_MULTICAST_LOOP).
"""

import ipaddress
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from gdoiserver.rekey.delivery import Delivery, MulticastSender, outgoing_interface

ROOT = Path(__file__).resolve().parent.parent
#: Linux <netinet/in.h>; the socket module does not export it.
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
GROUP4 = "239.192.77.1"
GROUP6 = "ff15::77:1"


class FakeMulticast:
    def __init__(self):
        self.sent = []
        self.closed = False
        self.fail = False

    def send(self, datagram):
        if self.fail:
            raise OSError("no route")
        self.sent.append(datagram)

    def close(self):
        self.closed = True


class Recorder:
    """``send(datagram, peer)`` that records each copy with the time."""

    def __init__(self, clock):
        self.clock, self.copies = clock, []

    def __call__(self, datagram, peer):
        self.copies.append((self.clock.seconds(), datagram, peer))


TARGETS = {"a": ("192.0.2.10", 848), "b": ("192.0.2.11", 848), "c": ("2001:db8::12", 4500)}


class DeliveryTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.counters = Counter()
        self.send = Recorder(self.clock)
        self.multicast = FakeMulticast()
        self.closed = []

    def delivery(self, **kw):
        kw.setdefault("multicast", self.multicast)
        return Delivery(self.clock, self.send, self.counters, on_closed=self.closed.append, **kw)

    def test_copies_and_retransmits(self):
        """The rekey goes at once to the group and to each member, then ``retransmits`` more times
        ``interval`` apart; then one interval later the delivery closes.  The same octets every time."""
        d = self.delivery(retransmits=2, interval=5.0)
        d.push(7, b"push-7", TARGETS)
        self.assertEqual((len(self.multicast.sent), len(self.send.copies)), (1, 3))
        self.clock.advance(4.9)
        self.assertEqual(len(self.send.copies), 3)
        self.clock.pump([0.1, 5.0])
        self.assertEqual(len(self.multicast.sent), 3)
        self.assertEqual(sorted({t for t, _, _ in self.send.copies}), [0.0, 5.0, 10.0])
        self.assertEqual({p for _, _, p in self.send.copies}, set(TARGETS.values()))
        self.assertEqual({data for _, data, _ in self.send.copies} | set(self.multicast.sent), {b"push-7"})
        self.assertEqual(self.closed, [])
        self.clock.advance(5.0)
        (pending,) = self.closed
        self.assertEqual((pending.seq, pending.targets), (7, TARGETS))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.counters["rekey_sent"], self.counters["rekey_retransmitted"]), (1, 2))

    def test_acknowledged_members_get_no_more_copies(self):
        """A member that acknowledged gets no more unicast copies; the multicast copies go on while anyone has
        not acknowledged, and stop once all have."""
        d = self.delivery(retransmits=3, interval=1.0, ack=True)
        d.push(3, b"x", TARGETS)
        self.assertTrue(d.acked(3, "a"))
        self.clock.advance(1.0)
        self.assertEqual([p for t, _, p in self.send.copies if t == 1.0], [TARGETS["b"], TARGETS["c"]])
        d.acked(3, "b")
        d.acked(3, "c")
        self.clock.advance(1.0)
        self.assertEqual([p for t, _, p in self.send.copies if t == 2.0], [])
        self.assertEqual(len(self.multicast.sent), 2)
        self.clock.pump([1.0, 1.0])
        self.assertEqual(self.closed[0].acked, {"a", "b", "c"})

    def test_ack_of_unknown(self):
        """An acknowledgement of a SEQ not being delivered, or by someone it was not sent to, changes nothing."""
        d = self.delivery()
        d.push(3, b"x", TARGETS)
        self.assertFalse(d.acked(4, "a"))
        self.assertFalse(d.acked(3, "z"))

    def test_multicast_only(self):
        """Without unicast, copies go to the group alone."""
        d = self.delivery(unicast=False, retransmits=1, interval=2.0)
        d.push(1, b"m", TARGETS)
        self.clock.advance(2.0)
        self.assertEqual((len(self.multicast.sent), self.send.copies), (2, []))

    def test_unicast_only(self):
        """Without a multicast sender, copies go to each member alone."""
        d = self.delivery(multicast=None, retransmits=0)
        d.push(1, b"u", TARGETS)
        self.assertEqual(len(self.send.copies), 3)
        self.clock.advance(5.0)
        self.assertEqual(len(self.closed), 1)

    def test_send_errors_counted(self):
        """A copy the socket refuses is counted, and the others still go."""
        self.multicast.fail = True
        d = self.delivery(retransmits=0)
        d.push(1, b"e", TARGETS)
        self.assertEqual((self.counters["rekey_send_error"], len(self.send.copies)), (1, 3))

    def test_stop(self):
        """stop cancels every retransmission and closes the multicast socket: nothing more is sent."""
        d = self.delivery(retransmits=5)
        d.push(1, b"a", TARGETS)
        d.push(2, b"b", TARGETS)
        d.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.multicast.closed)
        self.clock.advance(100)
        self.assertEqual((len(self.send.copies), self.closed), (6, []))

    def test_concurrent_rekeys(self):
        """Two rekeys in flight are retransmitted and closed independently."""
        d = self.delivery(retransmits=1, interval=3.0)
        d.push(1, b"one", {"a": TARGETS["a"]})
        self.clock.advance(1.0)
        d.push(2, b"two", {"a": TARGETS["a"]})
        self.clock.pump([1.0] * 5)
        self.assertEqual([p.seq for p in self.closed], [1])
        self.clock.advance(1.0)
        self.assertEqual([p.seq for p in self.closed], [1, 2])
        self.assertEqual([data for _, data, _ in self.send.copies], [b"one", b"two", b"one", b"two"])


class OutgoingInterfaceTests(unittest.TestCase):
    def test_ipv4(self):
        """IPv4: an address goes in IP_MULTICAST_IF as it is, a name as the interface index of an ip_mreqn."""
        g = ipaddress.ip_address(GROUP4)
        self.assertIsNone(outgoing_interface(g, None))
        self.assertEqual(outgoing_interface(g, "127.0.0.1"),
                         (socket.IPPROTO_IP, socket.IP_MULTICAST_IF, bytes([127, 0, 0, 1])))
        index = socket.if_nametoindex("lo")
        self.assertEqual(outgoing_interface(g, "lo"),
                         (socket.IPPROTO_IP, socket.IP_MULTICAST_IF, bytes(8) + struct.pack("@i", index)))

    def test_ipv6(self):
        """IPv6: a name, a scoped address or an address of ours becomes the interface index."""
        g = ipaddress.ip_address(GROUP6)
        index = socket.if_nametoindex("lo")
        want = (socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, struct.pack("@I", index))
        self.assertEqual(outgoing_interface(g, "lo"), want)
        self.assertEqual(outgoing_interface(g, "fe80::1%lo"), want)
        if Path("/proc/net/if_inet6").exists() and "00000000000000000000000000000001" in Path(
                "/proc/net/if_inet6").read_text():
            self.assertEqual(outgoing_interface(g, "::1"), want)

    def test_errors(self):
        """An interface that does not exist, an address of the other IP version or one that is not ours is a
        ValueError."""
        self.assertRaises(ValueError, outgoing_interface, ipaddress.ip_address(GROUP4), "no-such-if0")
        self.assertRaises(ValueError, outgoing_interface, ipaddress.ip_address(GROUP4), "::1")
        self.assertRaises(ValueError, outgoing_interface, ipaddress.ip_address(GROUP6), "127.0.0.1")
        self.assertRaises(ValueError, outgoing_interface, ipaddress.ip_address(GROUP6), "2001:db8::99")

    def test_sender_checks(self):
        """A sender refuses an address that is not multicast and a TTL beyond 255."""
        self.assertRaises(ValueError, MulticastSender, "192.0.2.1", 848, 1)
        self.assertRaises(ValueError, MulticastSender, GROUP4, 848, 256)


# --- real datagrams --------------------------------------------------------------------------------------------


def multicast_receiver(group: str, interface: str, port: int = 0) -> socket.socket:
    """A plain UDP socket bound to ``group`` and joined on ``interface`` (an IPv4 address or an interface name
    for IPv6), that reports the TTL / hop limit of what it receives."""
    g = ipaddress.ip_address(group)
    if g.version == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((group, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, g.packed + ipaddress.ip_address(interface).packed)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((group, port, 0, socket.if_nametoindex(interface)))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     g.packed + struct.pack("@I", socket.if_nametoindex(interface)))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    return s


def receive(s: socket.socket, count: int, wait: float = 5.0) -> list:
    """Up to ``count`` (data, source, ttl) from ``s``, waiting at most ``wait`` seconds for each."""
    out = []
    for _ in range(count):
        ready, _, _ = select.select([s], [], [], wait)
        if not ready:
            break
        data, ancillary, _, source = s.recvmsg(65535, socket.CMSG_SPACE(4))
        ttl = None
        for level, kind, value in ancillary:
            if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)):
                ttl = struct.unpack("@i", value[:4])[0]
        out.append((data, source[0], ttl))
    return out


def deliver_multicast(group: str, join_on: str, interface: str, ttl: int, source=None) -> dict:
    """Push two rekeys (one retransmission each) through a MulticastSender on a Clock; what the receiver got."""
    receiver = multicast_receiver(group, join_on)
    port = receiver.getsockname()[1]
    sender = MulticastSender(group, port, ttl, interface, source)
    clock = task.Clock()
    counters = Counter()
    try:
        d = Delivery(clock, lambda *a: None, counters, retransmits=1, interval=1.0, multicast=sender, unicast=False)
        d.push(1, b"rekey one", {})
        d.push(2, b"rekey two", {})
        clock.advance(1.0)
        got = receive(receiver, 4)
        clock.advance(1.0)
        d.stop()
    finally:
        sender.close()
        receiver.close()
    return {"got": [[data.decode(), src, hops] for data, src, hops in got], "errors": counters["rekey_send_error"],
            "bound": sender.bound_to_source, "closed": sender.closed}


class LoopbackMulticastTests(unittest.TestCase):
    def test_ipv4_on_loopback(self):
        """Two rekeys and their retransmissions reach a receiver joined to the IPv4 group on 127.0.0.1, each
        with the configured TTL, from the source address the sender was bound to."""
        result = deliver_multicast(GROUP4, "127.0.0.1", "127.0.0.1", 3, source="127.0.0.1")
        self.assertEqual(sorted(tuple(g) for g in result["got"]),
                         sorted([("rekey one", "127.0.0.1", 3), ("rekey two", "127.0.0.1", 3)] * 2))
        self.assertEqual((result["errors"], result["bound"], result["closed"]), (0, True, True))

    def test_source_not_ours(self):
        """A source address that is not ours leaves the sender unbound (the route picks the source) instead of
        failing."""
        sender = MulticastSender(GROUP4, 9, 1, None, "192.0.2.123")
        self.addCleanup(sender.close)
        self.assertFalse(sender.bound_to_source)


def namespace_child() -> None:
    """Run inside ``unshare -n``: lo up with multicast, a veth pair v0/v1 with fd00::1 on v0; deliver over IPv4
    by interface name and address, and over IPv6 by name and address; print the results as JSON."""

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("link", "set", "lo", "up", "multicast", "on")
    ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ip("link", "set", "v0", "up")
    ip("link", "set", "v1", "up")
    ip("-6", "addr", "add", "fd00::1/64", "dev", "v0", "nodad")
    ip("addr", "add", "10.99.0.1/24", "dev", "v0")
    results = {
        "v4_lo_by_name": deliver_multicast(GROUP4, "127.0.0.1", "lo", 5, source="127.0.0.1"),
        "v4_v0_by_name": deliver_multicast(GROUP4, "10.99.0.1", "v0", 7, source="10.99.0.1"),
        "v6_v0_by_name": deliver_multicast(GROUP6, "v0", "v0", 4),
        "v6_v0_by_address": deliver_multicast(GROUP6, "v0", "fd00::1", 9, source="fd00::1"),
    }
    print(json.dumps(results))


def namespace_missing() -> str | None:
    if shutil.which("unshare") is None:
        return "missing tool: unshare (util-linux)"
    if shutil.which("ip") is None:
        return "missing tool: ip (iproute2)"
    if os.geteuid() != 0:
        return "missing tool: unshare as root (network namespaces need root)"
    return None


class NamespaceMulticastTests(unittest.TestCase):
    """IPv4 and IPv6 multicast with TTL / hop limit and the outgoing interface, in a network namespace."""

    _results = None

    def results(self) -> dict:
        """The namespace child's results, run once for the class (a skip when it cannot run)."""
        reason = namespace_missing()
        if reason:
            raise unittest.SkipTest(reason)
        cls = type(self)
        if cls._results is None:
            code = "import tests.test_rekey_delivery as t; t.namespace_child()"
            proc = subprocess.run(["unshare", "--net", sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                  timeout=60, check=False)
            if proc.returncode != 0:
                self.fail(f"the namespace child failed:\n{proc.stderr.decode(errors='replace')[-3000:]}")
            cls._results = json.loads(proc.stdout)
        return cls._results

    def check(self, name: str, source: str | None, ttl: int):
        result = self.results()[name]
        want = sorted([["rekey one", source, ttl], ["rekey two", source, ttl]] * 2)
        got = sorted(result["got"]) if source is not None else sorted([d, None, h] for d, _, h in result["got"])
        self.assertEqual(got, want)
        self.assertEqual(result["errors"], 0)

    def test_ipv4_loopback_by_name(self):
        """IPv4 rekeys leave by the interface named "lo" with TTL 5 and reach a member joined on 127.0.0.1."""
        self.check("v4_lo_by_name", "127.0.0.1", 5)

    def test_ipv4_interface_by_name(self):
        """IPv4 rekeys leave by the interface named "v0" with TTL 7, from the source address 10.99.0.1."""
        self.check("v4_v0_by_name", "10.99.0.1", 7)
        self.assertTrue(self.results()["v4_v0_by_name"]["bound"])

    def test_ipv6_interface_by_name(self):
        """IPv6 rekeys leave by the interface named "v0" with hop limit 4 and reach a member joined there."""
        self.check("v6_v0_by_name", None, 4)

    def test_ipv6_interface_by_address(self):
        """IPv6 rekeys leave by the interface that holds fd00::1 with hop limit 9, from that address."""
        self.check("v6_v0_by_address", "fd00::1", 9)
        self.assertTrue(self.results()["v6_v0_by_address"]["bound"])


class Collector(protocol.DatagramProtocol):
    """Counts what reaches one unicast member; fires ``done`` after ``expected`` datagrams."""

    def __init__(self, expected: int):
        self.expected, self.got, self.done = expected, [], defer.Deferred()

    def datagramReceived(self, data, addr):
        self.got.append(data)
        if len(self.got) == self.expected and not self.done.called:
            self.done.callback(self.got)


class UnicastTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_unicast_to_members(self):
        """Each of three members listening on 127.0.0.1 receives the rekey and its two retransmissions through
        ``send`` (a real UDP socket); a member that acknowledged after the first copy receives only that one."""
        members = {}
        for name, expected in (("a", 3), ("b", 3), ("c", 1)):
            collector = Collector(expected)
            port = reactor.listenUDP(0, collector, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            members[name] = (collector, ("127.0.0.1", port.getHost().port))
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(out.close)
        clock = task.Clock()
        d = Delivery(clock, lambda data, peer: out.sendto(data, peer), Counter(), retransmits=2, interval=5.0,
                     ack=True)
        self.addCleanup(d.stop)
        d.push(11, b"rekey 11", {name: peer for name, (_, peer) in members.items()})
        d.acked(11, "c")
        clock.advance(5.0)
        clock.advance(5.0)
        got = yield defer.gatherResults([c.done for c, _ in members.values()])
        self.assertEqual(got, [[b"rekey 11"] * 3, [b"rekey 11"] * 3, [b"rekey 11"]])
