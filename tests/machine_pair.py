"""An in-memory initiator <-> responder driver for sans-IO exchange machines (in the manner of h11's
ConnectionPair test helper).

:class:`MachinePair` carries every ``Send`` of one machine to the other at once (decoding it as the adapter
would), runs ``StartTimer``/``CancelTimer`` on a :class:`twisted.internet.task.Clock`, and records every effect
in ``log`` as ``(side, effect)``.  ``intercept(side, send)`` may drop, repeat or change datagrams on the way;
``nat`` rewrites the initiator's source address as a NAT in front of it would.
"""

import random
from collections import deque
from pathlib import Path

import attrs
from twisted.internet import task

from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.message import decode_message
from gdoiserver.crypto import dh
from gdoiserver.exchanges.effects import CancelTimer, Established, Failed, Send, StartTimer
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER
from gdoiserver.tools.pcap import isakmp_messages, read_udp

OTHER = {INITIATOR: RESPONDER, RESPONDER: INITIATOR}


def seeded_rng(seed) -> "SpyRng":
    """A repeatable random source that counts what it gives."""
    return SpyRng(random.Random(seed).randbytes)


@attrs.define
class SpyRng:
    """``rng(n) -> bytes`` that records each request's size."""

    source: object
    calls: list = attrs.field(factory=list)

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return self.source(n)


@attrs.define
class ScriptedRng:
    """``rng(n)`` that returns the given chunks in order and checks each request's size against them."""

    chunks: list

    def __call__(self, n: int) -> bytes:
        if not self.chunks:
            raise AssertionError(f"unscripted rng({n})")
        chunk = self.chunks.pop(0)
        if len(chunk) != n:
            raise AssertionError(f"rng({n}) but the script has {len(chunk)} octets next")
        return chunk


@attrs.define(eq=False)
class MachinePair:
    """Two machines wired together.  Start with :meth:`start`; :meth:`advance` moves the clock and fires timers."""

    initiator: object
    responder: object
    initiator_rng: object = attrs.field(factory=lambda: seeded_rng("initiator"))
    responder_rng: object = attrs.field(factory=lambda: seeded_rng("responder"))
    clock: task.Clock = attrs.field(factory=task.Clock)
    initiator_address: tuple = ("127.0.0.1", 500)
    responder_address: tuple = ("127.0.0.2", 500)
    nat: object = None  # address -> address, applied to the initiator's source addresses
    intercept: object = None  # (side, send) -> list of datagrams to deliver instead of [send.data]
    log: list = attrs.field(factory=list)
    received: list = attrs.field(factory=list)  # (side, raw, peer, local) in order of delivery
    established: dict = attrs.field(factory=dict)
    failed: dict = attrs.field(factory=dict)
    _queue: deque = attrs.field(factory=deque)
    _timers: dict = attrs.field(factory=dict)
    _unnat: dict = attrs.field(factory=dict)

    def machine(self, side):
        return self.initiator if side == INITIATOR else self.responder

    def rng(self, side):
        return self.initiator_rng if side == INITIATOR else self.responder_rng

    def start(self, run: bool = True):
        self.apply(INITIATOR, self.initiator.start(self.clock.seconds(), self.initiator_rng))
        if run:
            self.run()
        return self

    def apply(self, side, effects):
        """Carry out ``effects`` of ``side`` (Sends are queued until :meth:`run`)."""
        for e in effects:
            self.log.append((side, e))
            if isinstance(e, Send):
                self._queue.append((side, e))
            elif isinstance(e, StartTimer):
                self._cancel(side, e.key)
                self._timers[(side, e.key)] = self.clock.callLater(e.delay, self._fire, side, e.key)
            elif isinstance(e, CancelTimer):
                self._cancel(side, e.key)
            elif isinstance(e, Established):
                self.established[side] = e.sa
            elif isinstance(e, Failed):
                self.failed[side] = e

    def _cancel(self, side, key):
        call = self._timers.pop((side, key), None)
        if call is not None and call.active():
            call.cancel()

    def _fire(self, side, key):
        del self._timers[(side, key)]
        self.apply(side, self.machine(side).timer(key, self.clock.seconds(), self.rng(side)))
        self.run()

    def pending_timers(self, side) -> set:
        return {k for (s, k), call in self._timers.items() if s == side and call.active()}

    def run(self, limit: int = 64):
        """Deliver queued datagrams (and what they cause) until none is left; at most ``limit``."""
        for _ in range(limit):
            if not self._queue:
                return
            side, send = self._queue.popleft()
            datagrams = [send.data] if self.intercept is None else self.intercept(side, send)
            for data in datagrams:
                self.transmit(side, send, data)
        raise AssertionError(f"more than {limit} datagrams: a loop?")

    def transmit(self, side, send: Send, data: bytes):
        """Deliver ``data`` sent by ``side`` as ``send`` to the other side, through the NAT if any."""
        source = send.local or (self.initiator_address if side == INITIATOR else self.responder_address)
        destination = send.peer
        if side == INITIATOR and self.nat is not None:
            seen = self.nat(source)
            self._unnat[seen] = source
            source = seen
        if side == RESPONDER:
            destination = self._unnat.get(destination, destination)
        self.deliver(OTHER[side], data, peer=source, local=destination)

    def deliver(self, side, data: bytes, *, peer, local):
        """Hand one datagram to ``side``'s machine as the adapter would (undecodable ones go nowhere)."""
        self.received.append((side, data, peer, local))
        try:
            message = decode_message(data)
        except DecodeError:
            return
        machine = self.machine(side)
        self.apply(side, machine.receive(message, data, self.clock.seconds(), self.rng(side), peer=peer, local=local))

    def advance(self, seconds: float):
        self.clock.advance(seconds)

    def effects(self, side=None, kind=None) -> list:
        """The recorded effects of one side (or both), of one class (or all)."""
        return [e for s, e in self.log if (side is None or s == side) and (kind is None or isinstance(e, kind))]

    def sends(self, side) -> list[Send]:
        return self.effects(side, Send)


class DHSpy:
    """A stand-in for ``dh_group`` (patch ``gdoiserver.exchanges.phase1_common.dh_group``) that counts key
    generations and shared-secret computations."""

    def __init__(self):
        self.generated = 0
        self.exchanged = 0

    def dh_group(self, number, allow_weak=False):
        group = dh.dh_group(number, allow_weak=allow_weak)
        spy = self

        class Group:
            def generate(self, rng):
                spy.generated += 1
                key = group.generate(rng)

                class Key:
                    def public_bytes(self):
                        return key.public_bytes()

                    def exchange(self, peer):
                        spy.exchanged += 1
                        return key.exchange(peer)

                return Key()

        return Group()


#: strongSwan 5.9's ISAKMP messages in tests/data/captures/strongswan-mm-am.pcap (recorded by
#: tests.test_strongswan_capture): Main Mode PSK aes128-sha256-ecp256, then Aggressive Mode PSK
#: aes256-sha256-modp2048, each followed by Quick Mode.  PSK "interop-test-psk-123"; the .keys file has each Ka.
CAPTURE_FILE = Path(__file__).resolve().parent / "data" / "captures" / "strongswan-mm-am.pcap"
_CAPTURE_NAMES = ["mm1", "mm2", "mm3", "mm4", "mm5", "mm6", "qm1", "qm2", "qm3", "am1", "am2", "am3"]
CAPTURE = dict(zip(_CAPTURE_NAMES, (data for _, data in isakmp_messages(read_udp(CAPTURE_FILE)))))
