"""The UDP adapter: datagrams in, decoded :class:`~gdoiserver.codec.Message` objects out to the IKE engine.

``datagramReceived`` never raises.  What it cannot decode it counts and logs (never more of the datagram than a
short hex prefix of the header) and drops; an exception anywhere else is a bug, which it counts as
``internal_error`` and logs with its traceback before it goes on serving.

A decoded message goes to ``engine.datagram_received(message, raw, source, listener)``
(:class:`gdoiserver.net.ike.IKEEngine`), which answers through :meth:`ISAKMPProtocol.send`; without an engine, to a
plain ``dispatcher(message, source, local_port)``.  On the NAT-T port every ISAKMP message carries the non-ESP
marker (RFC 3948 section 2.2): stripped here on the way in, added here on the way out.
"""

import socket
import time
from collections import Counter
from typing import Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from gdoiserver.codec import NON_ESP_MARKER, DecodeError, ExchangeType, Message, decode_message

#: dispatcher(message, source address, local port)
Dispatcher = Callable[[Message, tuple, int], object]

#: The port NAT-T floats IKE to, where it shares the socket with UDP-encapsulated ESP (RFC 3947 section 4).
NAT_T_PORTS = frozenset({4500})
#: A NAT-keepalive packet is the single octet 0xFF (RFC 3948 section 2.3).
NAT_KEEPALIVE = b"\xff"
#: How much of a malformed datagram goes to the log: the header up to and including its Flags octet.
LOGGED_PREFIX = 20
#: The receive buffer asked for each listening socket (the kernel caps it at net.core.rmem_max): about 5,000 small
#: datagrams, so that a burst, or a moment when the process is not scheduled, does not drop members' messages.
RECEIVE_BUFFER = 4 << 20


class LogBudget:
    """Bounds the log lines of dropped datagrams: ``rate`` a second on average, bursts of ``burst`` (a token
    bucket).  A flood of hostile datagrams is counted in full but cannot fill the disk; the next line allowed says
    how many were left out."""

    def __init__(self, rate: float = 10.0, burst: int = 50):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> str:
        """" (N similar lines left out)" once, after lines were left out; "" otherwise."""
        n, self.suppressed = self.suppressed, 0
        return f" ({n} similar lines left out)" if n else ""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def exchange_name(exchange_type: int) -> str:
    """Every RFC name of an exchange type number (32 and 33 have one per DOI), or the bare number."""
    names = [name for name, member in ExchangeType.__members__.items() if member == exchange_type]
    return "/".join(names) or str(exchange_type)


class ISAKMPProtocol(DatagramProtocol):
    """Receives ISAKMP on one UDP port.

    ``counters`` maps event names to counts (``received``, ``decoded``, ``malformed.<NOTIFY>``, ``unhandled.<exchange
    type number>``, ``nat_keepalive``, ``esp``, ``oversize``, ``internal_error``); several ports may share one.
    """

    log = Logger()
    noisy = False  # startProtocol logs the bound address instead

    def __init__(
        self,
        counters: Counter | None = None,
        dispatcher: Dispatcher | None = None,
        max_datagram_size: int = 65535,
        nat_t_ports: frozenset = NAT_T_PORTS,
        engine=None,
        nat_t: bool | None = None,
    ):
        """``nat_t`` says whether this is a NAT-T socket; None: whether its port is one of ``nat_t_ports``."""
        self.counters = Counter() if counters is None else counters
        self.dispatcher = self.not_handled_yet if dispatcher is None else dispatcher
        self.max_datagram_size = max_datagram_size
        self.nat_t_ports = nat_t_ports
        self.engine = engine
        self.nat_t = nat_t
        self.local_port: int | None = None
        self.local_address: tuple | None = None
        self._drop_log = LogBudget()

    def _now(self) -> float:
        clock = getattr(self.engine, "clock", None)
        return clock.seconds() if clock is not None else time.monotonic()

    @property
    def is_nat_t(self) -> bool:
        return self.nat_t if self.nat_t is not None else self.local_port in self.nat_t_ports

    def startProtocol(self):
        host = self.transport.getHost()
        self.local_port = host.port
        self.local_address = (host.host, host.port)
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError as e:
                self.log.warn("cannot enlarge the receive buffer: {error}", error=str(e))
        self.log.info("ISAKMP listening on {address}/udp{nat_t}", address=format_address(host.host, host.port),
                      nat_t=" (NAT-T)" if self.is_nat_t else "")
        if self.engine is not None:
            self.engine.attach(self)

    def stopProtocol(self):
        if self.engine is not None:
            self.engine.detach(self)

    def send(self, data: bytes, peer: tuple) -> None:
        """Send one ISAKMP message to ``peer``, behind the non-ESP marker on a NAT-T socket."""
        self.transport.write(NON_ESP_MARKER + data if self.is_nat_t else data, peer)

    def send_keepalive(self, peer: tuple) -> None:
        """Send a NAT-keepalive, the lone octet 0xFF with no marker (RFC 3948 section 2.3); NAT-T sockets only."""
        if not self.is_nat_t:
            raise ValueError("NAT-keepalives go from the NAT-T port")
        self.transport.write(NAT_KEEPALIVE, peer)

    def datagramReceived(self, datagram: bytes, addr):
        self.counters["received"] += 1
        try:
            self._receive(datagram, addr)
        except Exception:
            self.counters["internal_error"] += 1
            self.log.failure(
                "bug: datagram of {length} octets from {source} raised; dropped it",
                length=len(datagram),
                source=addr,
            )

    def _receive(self, data: bytes, addr):
        source = format_address(addr[0], addr[1])
        if len(data) > self.max_datagram_size:
            self.counters["oversize"] += 1
            if self._drop_log.allow(self._now()):
                self.log.info(
                    "dropped a datagram from {source} longer than limits.max_datagram_size ({limit} octets)"
                    "{suppressed}", length=len(data), source=source, limit=self.max_datagram_size,
                    suppressed=self._drop_log.take_suppressed(),
                )
            return
        if self.is_nat_t:
            data = self._demultiplex(data, source)
            if data is None:
                return
        try:
            message = decode_message(data)
        except DecodeError as e:
            self.counters[f"malformed.{e.notify.name}"] += 1
            if self._drop_log.allow(self._now()):
                self.log.info(
                    "dropped a malformed datagram from {source} ({length} octets, header {header}): {error}"
                    "{suppressed}", source=source, length=len(data), header=data[:LOGGED_PREFIX].hex(),
                    notify=e.notify.name, error=str(e), suppressed=self._drop_log.take_suppressed(),
                )
            return
        self.counters["decoded"] += 1
        if self.engine is not None:
            self.engine.datagram_received(message, data, addr, self)
        else:
            self.dispatcher(message, addr, self.local_port)

    def _demultiplex(self, data: bytes, source: str) -> bytes | None:
        """The ISAKMP message in a datagram on a NAT-T port, or None for a keepalive or ESP (RFC 3948 section 2)."""
        if data.startswith(NON_ESP_MARKER):
            return data[len(NON_ESP_MARKER):]
        kind = "nat_keepalive" if data == NAT_KEEPALIVE else "esp"
        self.counters[kind] += 1
        self.log.debug("dropped {kind} datagram of {length} octets from {source}", kind=kind, length=len(data),
                       source=source)
        return None

    def not_handled_yet(self, message: Message, addr, local_port: int):
        """The default dispatcher: counts and logs the exchange, which nothing answers yet."""
        self.counters[f"unhandled.{message.exchange_type}"] += 1
        self.log.info(
            "exchange type {exchange} ({name}) from {source} on port {port} is not handled yet",
            exchange=message.exchange_type, name=exchange_name(message.exchange_type),
            source=format_address(addr[0], addr[1]), port=local_port,
        )
