"""The group member's side of GROUPKEY-PUSH (RFC 6407 section 4), sans-IO: :class:`GroupRekey` takes each datagram
that may be a rekey of its group, with the time, and returns what to do (the effects below).

- A PUSH is checked by :func:`gdoiserver.doi.gdoi.push.verify_push`: it decrypts under the KEK, its SIG verifies
  with the key server's key, and its SEQ is above the last one accepted.  The SEQ is one counter per group that
  carries on across KEKs (RFC 3547 section 4): a KEK rekey switches the KEK and keeps the SEQ.  An eviction
  (RFC 6407 section 5.6.3, LKH) brings the new KEK's key through the member's LKH path, which it updates; the
  evicted member cannot follow it (push_refused) and, once later rekeys come under the new KEK, loses track.
- New TEKs go in at once for inbound traffic (:class:`Install`) and serve outbound traffic after the GAP's
  activation delay (:class:`Activate`); the TEKs its Delete payloads retire leave the deactivation delay after the
  PUSH (:class:`Retire`; RFC 6407 section 5.7), or at their own end if that comes first.
- The same datagram again is a replay (its SEQ is not new).  A copy of one of the last PUSHes accepted
  (multicast and unicast copies, retransmissions, also those of an eviction under the KEK it replaced) is also
  counted ``push_duplicate``, never counts towards losing track, and is acknowledged again when its KEK asked for
  acknowledgements (RFC 8263): the key server retransmits to members whose ACK it did not receive.
- An ACK goes to the source of a unicast PUSH (the key server's ISAKMP socket).  A multicast PUSH leaves the key
  server by a socket that only sends, so its ACK goes to the KEK's SRC (RFC 6407 section 5.3: the key server's
  address and port, as the registration gave them).
- The member has lost track of the group, and registers again (:class:`Reregister`), when its KEK expired with no
  KEK rekey, or when ``unknown_kek_limit`` PUSHes in a row came under KEKs it does not hold (not sooner than
  ``holddown`` seconds after its registration, so that forged datagrams cannot make it register over and over).
"""

import hashlib

import attrs

from gdoiserver.codec.constants import DOI
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import KEK_SPI_SIZE
from gdoiserver.codec.message import decode_message
from gdoiserver.doi.gdoi import push
from gdoiserver.doi.gdoi.registration import GroupRegistration, KEKInfo, MemberPolicy
from gdoiserver.exchanges.effects import Count
from gdoiserver.group.policy import GDOI_PORT

ACCEPTED, DUPLICATE, ACK_SENT, REREGISTER_LOST = "push_accepted", "push_duplicate", "ack_sent", "reregister_lost"
UNKNOWN_KEK, MALFORMED = push.UNKNOWN_KEK, push.MALFORMED
#: PUSHes in a row under unknown KEKs before the member registers again.
UNKNOWN_KEK_LIMIT = 3
#: Seconds after a registration during which unknown KEKs make the member register again no sooner.
HOLDDOWN = 30.0
#: Accepted PUSHes whose copies are recognized as such.
RECENT = 8


@attrs.frozen
class Accepted:
    """A PUSH went through: its SEQ, the KEK it came under, its new TEKs, the TEKs it retires, the new KEK."""

    seq: int
    kek_spi: bytes
    new_teks: tuple[bytes, ...]
    deleted_teks: tuple[bytes, ...]
    new_kek: bytes | None


@attrs.frozen
class Rejected:
    """A datagram was dropped: ``reason`` for the log, ``counter`` the counter it went to."""

    reason: str
    counter: str


@attrs.frozen
class Install:
    """New TEKs for inbound traffic now: ``registration`` is the group's state after the PUSH (the new TEKs with
    the member's sender IDs, the KEK in force, the SEQ), ``new_spis`` the TEKs it brought."""

    registration: GroupRegistration
    new_spis: frozenset


@attrs.frozen
class Activate:
    """Send with these TEKs from ``at`` on (the GAP's ACTIVATION_TIME_DELAY after the PUSH)."""

    spis: tuple[bytes, ...]
    at: float


@attrs.frozen
class Retire:
    """These TEKs leave at ``at`` (DEACTIVATION_TIME_DELAY after the PUSH), or at their own end if sooner."""

    spis: tuple[bytes, ...]
    at: float


@attrs.frozen
class SwitchKEK:
    """Later PUSHes come under ``kek``, which expires at ``expires_at``."""

    kek: KEKInfo
    expires_at: float


@attrs.frozen
class SendAck:
    """Send the GROUPKEY-PUSH-ACK ``datagram`` to ``peer`` (RFC 8263)."""

    datagram: bytes = attrs.field(repr=False)
    peer: tuple[str, int]


@attrs.frozen
class Reregister:
    """The member lost track of the group: register again (GROUPKEY-PULL)."""

    reason: str


@attrs.frozen
class _Last:
    kek_spi: bytes
    seq: int
    ack: bool
    source: tuple[str, int]  # the SRC of its KEK


def kek_source(kek: KEKInfo) -> tuple[str, int]:
    """Where the key server sends rekeys from: the SAK's SRC ID (its port, or GDOI's if it names none)."""
    return str(kek.source.value()), kek.source.port or GDOI_PORT


class GroupRekey:
    """The rekey state of one group: the KEK, the last SEQ, the LKH path (the member's leaf and ancestor keys,
    which bring it the new KEK of an eviction, RFC 6407 section 5.6.3), the sender IDs (see the module notes).

    ``ack(kek_spi, seq) -> bytes`` builds the GROUPKEY-PUSH-ACK (its key comes from the Phase 1 SA the member
    registered under), None when the member cannot acknowledge.
    """

    def __init__(self, registration: GroupRegistration, *, ack=None, policy: MemberPolicy = MemberPolicy(),
                 unknown_kek_limit: int = UNKNOWN_KEK_LIMIT, holddown: float = HOLDDOWN):
        self.policy = policy
        self.unknown_kek_limit = unknown_kek_limit
        self.holddown = holddown
        self.kek: KEKInfo | None = None
        self.seq = 0
        self._recent: dict[bytes, _Last] = {}  # SHA-256 of an accepted PUSH -> what it was, oldest first
        self.registered(registration, ack)

    @property
    def group(self):
        return self.registration.group

    def registered(self, registration: GroupRegistration, ack=None) -> None:
        """A new registration: its KEK, SEQ, GAP delays, sender IDs and LKH path replace ours.  Under the KEK we
        already hold, a later SEQ we accepted stays (the PUSH may have overtaken the registration)."""
        if registration.kek is None:
            raise ValueError("a registration without a KEK gets no rekeys")
        same = self.kek is not None and registration.kek.spi == self.kek.spi
        self.seq = max(self.seq, registration.seq) if same else registration.seq
        self.kek = registration.kek
        self.kek_expires_at = registration.registered_at + registration.kek.lifetime
        self.registration = registration
        self.lkh_path = registration.lkh_path
        self.ack = ack
        self.unknown_in_row = 0

    def knows(self, spi: bytes) -> bool:
        """Whether a PUSH with these cookies is for this group: its KEK, or one a recent PUSH came under."""
        return spi == self.kek.spi or any(spi == last.kek_spi for last in self._recent.values())

    # --- inputs ---------------------------------------------------------------------------------------------------

    def on_push(self, datagram: bytes, peer: tuple[str, int], now: float, *, multicast: bool = False) -> list:
        """A datagram from ``peer`` (to a multicast group of ours with ``multicast``) that may be a GROUPKEY-PUSH
        of this group."""
        digest = hashlib.sha256(datagram).digest()
        last = self._recent.get(digest)
        if last is not None:
            # A retransmitted copy (or a copy of a multicast PUSH also sent by unicast) is expected: counted as a
            # duplicate, not as a replay, and acknowledged again.
            out = [Count(DUPLICATE),
                   Rejected(f"a copy of an accepted PUSH (SEQ {last.seq})", DUPLICATE)]
            return out + self._acknowledge(last.kek_spi, last.seq, last.source if multicast else peer, last.ack)
        try:
            result = push.verify_push(datagram, self.kek, self.seq, policy=self.policy, group=self.group,
                                      server=self.registration.server, now=now, lkh_path=self.lkh_path)
        except push.PushError as e:
            out = [Count(e.counter), Rejected(e.reason, e.counter)]
            if e.counter == push.UNKNOWN_KEK:
                out += self.unknown_kek(now)
            return out
        return self._accept(result, digest, peer, now, multicast)

    def unknown_kek(self, now: float) -> list:
        """A PUSH under a KEK we do not hold; the caller counted it.  Register again after too many in a row."""
        self.unknown_in_row += 1
        if self.unknown_in_row < self.unknown_kek_limit or now - self.registration.registered_at < self.holddown:
            return []
        n, self.unknown_in_row = self.unknown_in_row, 0
        return [Reregister(f"{n} GROUPKEY-PUSH messages in a row came under a KEK we do not hold")]

    def expired(self, now: float) -> list:
        """The KEK's end is due: if no KEK rekey replaced it, the member lost track of the group."""
        if now < self.kek_expires_at:
            return []
        return [Reregister(f"KEK {self.kek.spi.hex()} expired and no KEK rekey came")]

    # --- an accepted PUSH -----------------------------------------------------------------------------------------

    def _accept(self, result: push.PushResult, digest: bytes, peer, now: float, multicast: bool) -> list:
        old = self.kek
        out = [Count(ACCEPTED)]
        self.seq = result.seq
        self.unknown_in_row = 0
        self.lkh_path = result.lkh_path_after(self.lkh_path)
        if result.kek is not None:
            self.kek = result.kek
            self.kek_expires_at = now + result.kek.lifetime
            out.append(SwitchKEK(result.kek, self.kek_expires_at))
        reg = self._completed(result.registration)
        new = tuple(t.spi for t in reg.teks)
        if new:
            out.append(Install(reg, frozenset(new)))
            out.append(Activate(new, now + reg.activation_delay))
        deleted = tuple(s for s in result.deleted_teks if s not in new)
        if deleted:
            out.append(Retire(deleted, now + reg.deactivation_delay))
        out.append(Accepted(result.seq, old.spi, new, deleted, None if result.kek is None else result.kek.spi))
        wants_ack = old.ack_requested  # RFC 8263: KEK_ACK_REQUESTED of the KEK the PUSH came under
        last = self._recent[digest] = _Last(old.spi, result.seq, wants_ack, kek_source(old))
        while len(self._recent) > RECENT:
            del self._recent[next(iter(self._recent))]
        return out + self._acknowledge(old.spi, result.seq, last.source if multicast else peer, wants_ack)

    def _completed(self, pushed: GroupRegistration) -> GroupRegistration:
        """The PUSH's keys as the group's state: sender IDs stay the member's across TEK rekeys (a PUSH carries
        none; RFC 6054), the GAP delays are the PUSH's or else the registration's, the KEK the one in force."""
        reg = self.registration
        teks = tuple(attrs.evolve(t, sender_ids=reg.sender_ids) if t.counter_mode and not t.sender_ids else t
                     for t in pushed.teks)
        return attrs.evolve(
            pushed, teks=teks, kek=self.kek, seq=self.seq, server=reg.server, pfs=reg.pfs, lkh_path=self.lkh_path,
            lkh_leaf=reg.lkh_leaf,
            sender_id_bits=pushed.sender_id_bits or reg.sender_id_bits, sender_ids=pushed.sender_ids or reg.sender_ids,
            activation_delay=pushed.activation_delay or reg.activation_delay,
            deactivation_delay=pushed.deactivation_delay or reg.deactivation_delay,
        )

    def _acknowledge(self, kek_spi: bytes, seq: int, peer, wanted: bool) -> list:
        if not wanted:
            return []
        if self.ack is None:
            return [Count("ack_unavailable")]
        return [SendAck(self.ack(kek_spi, seq), peer), Count(ACK_SENT)]


def route(rekeys, datagram: bytes) -> GroupRekey | None:
    """The group whose KEK a datagram's cookies name (RFC 6407 section 4: the KEK SPI), or None."""
    spi = datagram[:KEK_SPI_SIZE]
    return next((r for r in rekeys if r.knows(spi)), None)


def stray(datagram: bytes) -> list:
    """What a datagram that names none of our KEKs counts as: a GROUPKEY-PUSH under a KEK we do not hold, or not a
    GROUPKEY-PUSH at all."""
    try:
        header = decode_message(datagram, doi=DOI.GDOI)
    except DecodeError as e:
        return [Count(MALFORMED), Rejected(f"not an ISAKMP message: {e.reason}", MALFORMED)]
    if header.exchange_type != push.PUSH or header.message_id != 0 or not header.encrypted:
        reason = f"exchange {header.exchange_type}, Message ID {header.message_id}: not an encrypted GROUPKEY-PUSH"
        return [Count(MALFORMED), Rejected(reason, MALFORMED)]
    return [Count(UNKNOWN_KEK), Rejected(f"KEK SPI {header.spi.hex()} is none of ours", UNKNOWN_KEK)]
