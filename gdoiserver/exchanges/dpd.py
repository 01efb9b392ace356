"""Dead Peer Detection (RFC 3706) for one ISAKMP SA, sans-IO.

Both ends announce DPD with its vendor ID in Phase 1.  Then either end, when it has heard nothing from its peer
for ``delay`` seconds, sends R-U-THERE in an Informational exchange; the peer answers R-U-THERE-ACK echoing the
sequence number.  Each R-U-THERE we send, the first and every retry, takes the next sequence number from a random
start, so an ACK proves liveness only if it names one sent since the peer last proved alive: a recorded ACK,
replayed, proves nothing (RFC 3706 section 6, which is also why HASH(1) alone cannot: Informational messages
have no replay protection).  After ``max_failures`` unanswered R-U-THEREs, ``retry`` seconds apart, the machine
ends with Failed and the adapter deletes the SA.

The adapter feeds :meth:`DPD.traffic_seen` with inbound traffic that a replay cannot fake (an IPsec packet that
passed its anti-replay check, a message of a new exchange under the SA), and the DPD items of each authenticated
Informational message to :meth:`DPD.received` (or the whole message to :meth:`DPD.receive`).
"""

import attrs

from gdoiserver.codec.constants import DPD_VENDOR_ID, NotifyType
from gdoiserver.codec.payloads import VendorID
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import CancelTimer, Count, Failed, StartTimer
from gdoiserver.exchanges.informational import Dropped, Hint, Item, RUThere, RUThereAck
from gdoiserver.exchanges.phase1 import ISAKMPSA

TIMER = "dpd"
_SEQ = 1 << 32
_HALF = 1 << 31


def vendor_id() -> VendorID:
    """The DPD vendor ID payload that announces support (RFC 3706 section 5), version 1.0."""
    return VendorID(DPD_VENDOR_ID)


def supports_dpd(vendor_ids) -> bool:
    """Whether the peer announced DPD: ``vendor_ids`` holds Vendor ID payloads or their octets (other payloads
    are passed over); DPD's vendor ID with major version 1 and any minor version counts."""
    for v in vendor_ids:
        data = v.vendor_id if isinstance(v, VendorID) else v
        if isinstance(data, bytes) and len(data) == len(DPD_VENDOR_ID) and data[:15] == DPD_VENDOR_ID[:15]:
            return True
    return False


def r_u_there(sa: ISAKMPSA, sequence: int):
    """The R-U-THERE notify: protocol ISAKMP, SPI = the cookies, the 4-octet sequence number (RFC 3706 5)."""
    return informational.notify(sa, NotifyType.R_U_THERE, sequence.to_bytes(4, "big"))


def r_u_there_ack(sa: ISAKMPSA, sequence: int):
    """The R-U-THERE-ACK notify echoing ``sequence``."""
    return informational.notify(sa, NotifyType.R_U_THERE_ACK, sequence.to_bytes(4, "big"))


def _after(a: int, b: int) -> bool:
    """Sequence number ``a`` comes after ``b``, modulo 2^32."""
    return 0 < (a - b) % _SEQ < _HALF


@attrs.define
class DPD:
    """The DPD machine of one ISAKMP SA: it answers R-U-THERE and probes an idle peer.

    ``delay`` None answers only (the peer did not announce DPD, or policy says not to probe).  States: ``new``,
    ``idle`` (waiting for ``delay`` seconds without traffic), ``probing`` (R-U-THERE sent, no ACK yet), ``dead``
    (Failed) and ``stopped``.  One timer, ``"dpd"``, serves both waits.
    """

    sa: ISAKMPSA
    delay: float | None = 30.0
    retry: float = 5.0
    max_failures: int = 5
    state: str = attrs.field(default="new", init=False)
    last_traffic: float = attrs.field(default=0.0, init=False)
    _next_sequence: int = attrs.field(default=0, init=False, repr=False)
    _round_first: int = attrs.field(default=0, init=False, repr=False)
    _unanswered: int = attrs.field(default=0, init=False, repr=False)
    _peer_sequence: int | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self):
        if self.max_failures < 1 or self.retry <= 0 or (self.delay is not None and self.delay <= 0):
            raise ValueError("DPD needs a positive delay and retry and at least one try")

    @property
    def done(self) -> bool:
        return self.state in ("dead", "stopped")

    def start(self, now: float, rng) -> list:
        """Begin watching from ``now``; the first sequence number is random, its top bit clear (room to wrap)."""
        self.last_traffic = now
        self._next_sequence = int.from_bytes(rng(4), "big") & (_HALF - 1)
        self.state = "idle"
        return [] if self.delay is None else [StartTimer(TIMER, self.delay)]

    def traffic_seen(self, now: float) -> list:
        """Inbound traffic from the peer that a replay cannot fake: the peer is alive."""
        if self.done:
            return []
        self.last_traffic = max(self.last_traffic, now)
        if self.state == "probing":
            return self._alive()
        return []  # the idle timer sees last_traffic when it fires and waits on

    def timer(self, key: str, now: float, rng) -> list:
        if key != TIMER or self.done or self.delay is None:
            return []
        if self.state == "idle":
            quiet = now - self.last_traffic
            if quiet < self.delay:
                return [StartTimer(TIMER, self.delay - quiet)]
            self.state = "probing"
            self._round_first = self._next_sequence
            self._unanswered = 0
            return self._probe(rng)
        if self._unanswered >= self.max_failures:
            self.state = "dead"
            return [Count("dpd_peer_dead"), Failed(None, f"no R-U-THERE-ACK to {self._unanswered} R-U-THERE")]
        return self._probe(rng)

    def receive(self, message, raw: bytes, now: float, rng) -> list:
        """An Informational message under the SA: processed, then its DPD items handled; other items are left
        to the caller (who then calls :func:`informational.process` and :meth:`received` instead)."""
        result = informational.process(self.sa, message)
        if isinstance(result, (Dropped, Hint)):
            return list(result.effects)
        return list(result.effects) + self.received(result.items, now, rng)

    def received(self, items: tuple[Item, ...], now: float, rng) -> list:
        """The DPD items of an authenticated Informational message."""
        effects: list = []
        for item in items:
            if self.done:
                break
            if isinstance(item, RUThere):
                effects += self._answer(item.sequence, now, rng)
            elif isinstance(item, RUThereAck):
                effects += self._acknowledged(item.sequence, now)
        return effects

    def stop(self) -> list:
        """The SA is gone: forget the timer."""
        self.state = "stopped"
        return [CancelTimer(TIMER)]

    def _probe(self, rng) -> list:
        sequence = self._next_sequence
        self._next_sequence = (sequence + 1) % _SEQ
        self._unanswered += 1
        return [
            informational.send(self.sa, [r_u_there(self.sa, sequence)], rng),
            Count("dpd_r_u_there_sent"),
            StartTimer(TIMER, self.retry),
        ]

    def _answer(self, sequence: int, now: float, rng) -> list:
        # Always answer, a repeated R-U-THERE too (the peer may have lost our ACK); only a sequence number after
        # the last one seen is fresh enough to prove the peer alive.
        ack = informational.send(self.sa, [r_u_there_ack(self.sa, sequence)], rng)
        effects = [ack, Count("dpd_r_u_there_answered")]
        if self._peer_sequence is None or _after(sequence, self._peer_sequence):
            self._peer_sequence = sequence
            effects += self.traffic_seen(now)
        return effects

    def _acknowledged(self, sequence: int, now: float) -> list:
        sent = (self._next_sequence - self._round_first) % _SEQ
        if (sequence - self._round_first) % _SEQ >= sent:
            return [Count("dpd_ack_wrong_sequence")]
        if self.state != "probing":
            # An answer to a probe of ours after other traffic (the peer's own R-U-THERE, when both sides probe
            # after the same quiet time) already proved the peer alive: expected, and nothing more to do.
            return [Count("dpd_ack_late")]
        self.last_traffic = max(self.last_traffic, now)
        return [Count("dpd_ack")] + self._alive()

    def _alive(self) -> list:
        self.state = "idle"
        self._unanswered = 0
        return [StartTimer(TIMER, self.delay)]
