"""Sending a GROUPKEY-PUSH datagram (RFC 6407 section 4) to a group's members: to its multicast address, and/or
by unicast to each member, then ``retransmits`` more copies ``retransmit_interval`` seconds apart.

The datagram is built and signed once; every copy is the same octets.  Unicast copies go through ``send(datagram,
(host, port))`` (the key server's GDOI listener, so they leave from port 848) and stop for a member once it
acknowledged (RFC 8263).  Multicast copies leave through a UDP socket of the group's own (:class:`MulticastSender`),
with the group's TTL (IPv4) or hop limit (IPv6) and outgoing interface, and multicast loopback on so that members
on this host hear them too.  Time comes from the injected clock (``callLater``); nothing here sleeps.

Counters: ``rekey_sent`` (rekeys sent, once each), ``rekey_retransmitted`` (rounds of copies after the first),
``rekey_send_error`` (copies the socket refused).
"""

import ipaddress
import socket
import struct

import attrs

from gdoiserver.net.interfaces import interface_index, ipv6_interface_index

def outgoing_interface(group: ipaddress.IPv4Address | ipaddress.IPv6Address, interface: str | None):
    """The ``(level, option, value)`` of ``setsockopt`` that makes multicast to ``group`` leave by
    ``interface`` (a name such as "eth0", or an address of ours), or None for the route's choice.  ValueError
    for an interface that does not exist or an address of the other IP version."""
    if interface is None:
        return None
    try:
        address = ipaddress.ip_address(interface.split("%")[0])
    except ValueError:
        address = None
    if group.version == 4:
        if address is not None:
            if address.version != 4:
                raise ValueError(f"IPv4 multicast cannot leave by the IPv6 address {address}")
            return socket.IPPROTO_IP, socket.IP_MULTICAST_IF, address.packed
        # struct ip_mreqn: multicast address (unused here), local address, interface index (Linux ip(7)).
        return socket.IPPROTO_IP, socket.IP_MULTICAST_IF, bytes(8) + struct.pack("@i", interface_index(interface))
    if address is None:
        index = interface_index(interface)
    elif address.version != 6:
        raise ValueError(f"IPv6 multicast cannot leave by the IPv4 address {address}")
    elif "%" in interface:
        index = interface_index(interface.split("%", 1)[1])
    else:
        index = ipv6_interface_index(address)
    return socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, struct.pack("@I", index)


class MulticastSender:
    """A non-blocking UDP socket that sends to one multicast ``address`` and ``port``, with ``ttl`` (IPv4 TTL or
    IPv6 hop limit), leaving by ``interface`` (see :func:`outgoing_interface`), loopback on.  It is bound to
    ``source`` (the key server's address, the SAK's SRC) when that address is ours; it never reads."""

    def __init__(self, address, port: int, ttl: int, interface: str | None = None, source=None):
        self.address = ipaddress.ip_address(address)
        if not self.address.is_multicast:
            raise ValueError(f"{self.address} is not a multicast address")
        if not 0 <= ttl <= 255:
            raise ValueError(f"TTL {ttl} (0 to 255)")
        self.port = port
        self.ttl = ttl
        self.interface = interface
        v4 = self.address.version == 4
        sock = socket.socket(socket.AF_INET if v4 else socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            if v4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            option = outgoing_interface(self.address, interface)
            if option is not None:
                sock.setsockopt(*option)
            self.bound_to_source = False
            if source is not None and ipaddress.ip_address(source).version == self.address.version:
                try:
                    sock.bind((str(source), 0))
                    self.bound_to_source = True
                except OSError:
                    pass  # not an address of ours (e.g. behind NAT): the route picks the source
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    @property
    def closed(self) -> bool:
        return self._socket is None

    def send(self, datagram: bytes) -> None:
        """One copy to the group; OSError if the socket refuses it."""
        if self._socket is None:
            raise OSError("the multicast socket is closed")
        self._socket.sendto(datagram, (str(self.address), self.port))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


@attrs.define(eq=False)
class Pending:
    """One rekey being delivered: its SEQ, datagram, the members it went to (identity -> (host, port)) and
    those that acknowledged it, and the copies still to send."""

    seq: int
    datagram: bytes = attrs.field(repr=False)
    targets: dict
    copies_left: int
    acked: set = attrs.field(factory=set)
    call: object = attrs.field(default=None, repr=False)


class Delivery:
    """Delivers one group's rekeys.  ``send(datagram, (host, port))`` sends one unicast copy; ``multicast`` is the
    group's :class:`MulticastSender` or None; ``unicast`` whether copies go to each member too.  After the last
    copy, one more interval is left for acknowledgements; then ``on_closed(pending)`` hears how it went."""

    def __init__(self, clock, send, counters, *, retransmits: int = 2, interval: float = 5.0,
                 multicast: MulticastSender | None = None, unicast: bool = True, ack: bool = False,
                 on_closed=None):
        self.clock = clock
        self.send = send
        self.counters = counters
        self.retransmits = retransmits
        self.interval = interval
        self.multicast = multicast
        self.unicast = unicast
        self.ack = ack
        self.on_closed = on_closed
        self.pending: dict[int, Pending] = {}

    def push(self, seq: int, datagram: bytes, targets: dict) -> Pending:
        """Send the rekey ``seq`` now to the group and each of ``targets`` (identity -> (host, port)), and arrange
        its retransmissions."""
        pending = Pending(seq, datagram, dict(targets), self.retransmits)
        self.pending[seq] = pending
        self.counters["rekey_sent"] += 1
        self._copy(pending)
        self._next(pending)
        return pending

    def acked(self, seq: int, identity: str) -> bool:
        """``identity`` acknowledged ``seq``: no more unicast copies to it.  False if ``seq`` is not pending."""
        pending = self.pending.get(seq)
        if pending is None or identity not in pending.targets:
            return False
        pending.acked.add(identity)
        return True

    def stop(self) -> None:
        """Cancel every retransmission and close the multicast socket."""
        for pending in self.pending.values():
            if pending.call is not None and pending.call.active():
                pending.call.cancel()
        self.pending.clear()
        if self.multicast is not None:
            self.multicast.close()

    def _copy(self, pending: Pending) -> None:
        """One round: the group address, then each member not yet known to have the rekey."""
        everyone_acked = self.ack and pending.targets and pending.acked >= set(pending.targets)
        if self.multicast is not None and not everyone_acked:
            self._try(self.multicast.send, pending.datagram)
        if self.unicast:
            for identity, peer in pending.targets.items():
                if identity not in pending.acked:
                    self._try(self.send, pending.datagram, peer)

    def _try(self, send, *args) -> None:
        try:
            send(*args)
        except Exception:  # one copy that cannot go (no route, too long) must not stop the others
            self.counters["rekey_send_error"] += 1

    def _next(self, pending: Pending) -> None:
        pending.call = self.clock.callLater(self.interval, self._fire, pending)

    def _fire(self, pending: Pending) -> None:
        if self.pending.get(pending.seq) is not pending:
            return
        if pending.copies_left > 0:
            pending.copies_left -= 1
            self.counters["rekey_retransmitted"] += 1
            self._copy(pending)
            self._next(pending)
            return
        del self.pending[pending.seq]
        if self.on_closed is not None:
            self.on_closed(pending)
