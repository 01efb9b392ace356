"""The Informational exchange (RFC 2408 section 4.8, RFC 2409 section 5.7): Notify and Delete, sans-IO.

Under an established ISAKMP SA an Informational message is ``HDR*, HASH(1), N/D``: a fresh non-zero M-ID, HASH(1)
= prf(SKEYID_a, M-ID | N/D) over the payloads that follow the HASH payload (generic headers included, padding
not), everything after the header encrypted from the IV hash(last Phase 1 CBC block | M-ID) (appendix B).  An
Informational exchange is one message: nothing answers it with the same M-ID.

:func:`build` and :func:`send` make an outgoing message; :func:`process` checks an incoming one and returns
:class:`Received` (typed items) or :class:`Dropped` (a reason for the log and a Count).  A message that fails is
never answered: whatever it says, an answer would tell an attacker something (RFC 2408 section 5).
:func:`process_unprotected` reads an Informational sent in the clear, before any ISAKMP SA exists; it is only a
:class:`Hint`.  :func:`initial_contact_victims` picks the SAs an INITIAL-CONTACT replaces (RFC 2407 4.6.3.3).

Informational messages carry no replay protection of their own: a recorded one, replayed, passes HASH(1) again.
Act on them only where a replay is harmless (a Delete of a gone SA), or add a check of your own (DPD sequence
numbers, :mod:`gdoiserver.exchanges.dpd`).
"""

import struct
from collections.abc import Iterable, Sequence

import attrs

from gdoiserver.codec.constants import ExchangeType, NotifyType, ProtocolID
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.grammar import Variant, check, rule_for
from gdoiserver.codec.message import Message
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.payloads import Delete, Hash, Notification
from gdoiserver.crypto.prf import constant_time_equal, hash_algorithm
from gdoiserver.exchanges.effects import Count, Send
from gdoiserver.exchanges.phase1 import ISAKMPSA

INFORMATIONAL = ExchangeType.INFORMATIONAL
#: Notify types below this one report errors (RFC 2408 section 3.14.1).
ERROR_TYPES_END = 16384
_MID_TRIES = 8

# ---------------------------------------------------------------------------------------------- outgoing


def message_id(rng) -> int:
    """A random non-zero M-ID (RFC 2408 section 3.1: 0 is Phase 1's)."""
    for _ in range(_MID_TRIES):
        mid = int.from_bytes(rng(4), "big")
        if mid:
            return mid
    raise ValueError(f"the random source gave a zero M-ID {_MID_TRIES} times")


def hash_1(sa: ISAKMPSA, mid: int, nd: bytes) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | N/D); ``nd`` is the payload chain after the HASH payload (RFC 2409 5.7)."""
    return hash_algorithm(sa.proposal.hash).prf(sa.keys.skeyid_a, struct.pack("!I", mid), nd)


def build(sa: ISAKMPSA, payloads: Sequence[Notification | Delete], rng) -> bytes:
    """The datagram of one Informational exchange carrying ``payloads`` (Notify or Delete) under ``sa``."""
    if not payloads:
        raise ValueError("an Informational message carries at least one Notify or Delete payload")
    mid = message_id(rng)
    ctx = context_for(sa.doi, INFORMATIONAL)
    digest = hash_1(sa, mid, encode_chain(tuple(payloads), ctx))
    message = Message(sa.initiator_cookie, sa.responder_cookie, INFORMATIONAL, 0, mid, (Hash(digest), *payloads))
    data, _ = sa.last_iv.for_message_id(mid).encrypt(message, ctx)
    return data


def send(sa: ISAKMPSA, payloads: Sequence[Notification | Delete], rng) -> Send:
    """A Send effect of :func:`build`'s datagram to the SA's peer, over NAT-T when the SA floated."""
    return Send(build(sa, payloads, rng), sa.peer, sa.local, sa.nat_t)


def notify(sa: ISAKMPSA, notify_type: int, data: bytes = b"") -> Notification:
    """A Notify about the ISAKMP SA itself: protocol ISAKMP, SPI = CKY-I | CKY-R (RFC 2408 section 3.14)."""
    return Notification(sa.doi, ProtocolID.ISAKMP, notify_type, sa.spi, data)


def initial_contact(sa: ISAKMPSA) -> Notification:
    """INITIAL-CONTACT: the sender has no other SA with its peer any more (RFC 2407 section 4.6.3.3)."""
    return notify(sa, NotifyType.INITIAL_CONTACT)


def delete_isakmp(sa: ISAKMPSA) -> Delete:
    """The Delete of the ISAKMP SA itself: protocol ISAKMP, one 16-octet SPI, the cookies (RFC 2408 3.15)."""
    return Delete(sa.doi, ProtocolID.ISAKMP, (sa.spi,))


def delete_ipsec(sa: ISAKMPSA, protocol_id: int, spis: Sequence[bytes]) -> Delete:
    """The Delete of IPsec SAs (AH, ESP or IPCOMP) by their inbound SPIs, all of one size (RFC 2408 3.15)."""
    if protocol_id == ProtocolID.ISAKMP:
        raise ValueError("use delete_isakmp for the ISAKMP SA")
    return Delete(sa.doi, protocol_id, tuple(spis))


# ---------------------------------------------------------------------------------------------- incoming


@attrs.frozen
class NotifyReceived:
    """An authenticated Notify other than DPD's."""

    notify_type: int
    protocol_id: int
    spi: bytes
    data: bytes


@attrs.frozen
class DeleteReceived:
    """An authenticated Delete: the peer removed these SAs of ``protocol_id`` (RFC 2408 section 3.15).

    It comes from the SA's peer but may name any SPI: delete only SAs of that same peer.
    """

    protocol_id: int
    spis: tuple[bytes, ...]


@attrs.frozen
class RUThere:
    """DPD R-U-THERE with its sequence number (RFC 3706 section 5)."""

    sequence: int


@attrs.frozen
class RUThereAck:
    """DPD R-U-THERE-ACK, echoing the sequence number of the R-U-THERE it answers (RFC 3706 section 5)."""

    sequence: int


Item = NotifyReceived | DeleteReceived | RUThere | RUThereAck


@attrs.frozen
class Received:
    """An authenticated Informational message: its M-ID and its items, in order.  ``effects`` are Counts."""

    message_id: int
    items: tuple[Item, ...]
    effects: tuple = (Count("informational_received"),)


@attrs.frozen
class Dropped:
    """A message ignored without an answer: ``reason`` for the log (never key material), ``effects`` a Count."""

    reason: str
    effects: tuple


@attrs.frozen
class Hint:
    """An unauthenticated error Notify (an Informational in the clear): for logs and counters only.

    It never changes an established SA; a Phase 1 exchange in progress may use it to give up sooner.
    """

    notify_types: tuple[int, ...]
    reason: str
    effects: tuple = (Count("informational_unprotected_hint"),)


def _drop(reason: str, counter: str) -> Dropped:
    return Dropped(reason, (Count(counter),))


def _name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"notify type {notify_type}"


def _dpd_item(sa: ISAKMPSA, n: Notification) -> RUThere | RUThereAck | None:
    """The DPD item a well-formed R-U-THERE(-ACK) notify stands for: protocol ISAKMP, the SA's cookies (or no
    SPI) and a 4-octet sequence number (RFC 3706 section 5); None for any other."""
    if n.protocol_id != ProtocolID.ISAKMP or n.spi not in (b"", sa.spi) or len(n.data) != 4:
        return None
    sequence = int.from_bytes(n.data, "big")
    return RUThere(sequence) if n.notify_type == NotifyType.R_U_THERE else RUThereAck(sequence)


def _items(sa: ISAKMPSA, payloads) -> tuple[tuple[Item, ...], tuple]:
    items: list[Item] = []
    counts = [Count("informational_received")]
    for p in payloads:
        if isinstance(p, Delete):
            items.append(DeleteReceived(p.protocol_id, p.spis))
        elif p.notify_type in (NotifyType.R_U_THERE, NotifyType.R_U_THERE_ACK):
            item = _dpd_item(sa, p)
            if item is None:
                counts.append(Count("dpd_malformed"))
            else:
                items.append(item)
        else:
            items.append(NotifyReceived(p.notify_type, p.protocol_id, p.spi, p.data))
    return tuple(items), tuple(counts)


def process(sa: ISAKMPSA, message: Message) -> Received | Dropped | Hint:
    """Decrypt, check and authenticate an Informational message received under ``sa`` (RFC 2409 section 5.7).

    ``message`` is as :func:`gdoiserver.codec.message.decode_message` returned it (still encrypted).  A message in
    the clear is only ever a :class:`Hint`, or dropped.  ``sa`` is left as it was: each Informational exchange
    has its own IV chain from the Phase 1 one.
    """
    if message.exchange_type != INFORMATIONAL:
        return _drop(f"exchange type {message.exchange_type} is not Informational", "informational_not_informational")
    if message.spi != sa.spi:
        return _drop("cookies of another ISAKMP SA", "informational_wrong_cookies")
    if not message.encrypted:
        return process_unprotected(message)
    mid = message.message_id
    if mid == 0:
        return _drop("protected Informational with M-ID 0", "informational_decode_error")
    chain = sa.last_iv.for_message_id(mid)
    try:
        plaintext = chain.cipher.decrypt(chain.key, chain.iv, message.ciphertext)
        decrypted = message.with_plaintext(plaintext, sa.doi)
        check(decrypted, rule_for(INFORMATIONAL, 1, doi=sa.doi, variant=Variant.PROTECTED))
    except DecodeError as e:
        return _drop(f"undecodable Informational: {e.reason}", "informational_decode_error")
    hash_payload = decrypted.payloads[0]
    nd = plaintext[4 + len(hash_payload.hash_data) : len(plaintext) - len(decrypted.padding)]
    if not constant_time_equal(hash_payload.hash_data, hash_1(sa, mid, nd)):
        return _drop("HASH(1) does not verify", "informational_bad_hash")
    items, counts = _items(sa, decrypted.payloads[1:])
    return Received(mid, items, counts)


def process_unprotected(message: Message) -> Hint | Dropped:
    """An Informational sent in the clear (``HDR, N/D``, RFC 2409 section 5.7): anyone may have sent it.

    Error Notifies (such as NO-PROPOSAL-CHOSEN or INVALID-COOKIE answering a Phase 1 message) come back as a
    :class:`Hint`; Deletes and status Notifies in the clear are dropped.
    """
    if message.exchange_type != INFORMATIONAL:
        return _drop(f"exchange type {message.exchange_type} is not Informational", "informational_not_informational")
    if message.encrypted:
        return _drop("encrypted Informational with no ISAKMP SA to read it", "informational_no_sa")
    try:
        check(message, rule_for(INFORMATIONAL, 1, variant=Variant.CLEAR))
    except DecodeError as e:
        return _drop(f"undecodable unprotected Informational: {e.reason}", "informational_decode_error")
    errors = tuple(
        p.notify_type for p in message.payloads if isinstance(p, Notification) and p.notify_type < ERROR_TYPES_END
    )
    if not errors:
        return _drop("unprotected Informational without an error Notify", "informational_unprotected_ignored")
    names = ", ".join(map(_name, errors))
    return Hint(errors, f"unauthenticated {names} (a hint only: RFC 2409 section 5.7)")


def initial_contact_victims(new: ISAKMPSA, existing: Iterable[ISAKMPSA]) -> list[ISAKMPSA]:
    """The SAs to delete when ``new`` carried an authenticated INITIAL-CONTACT (RFC 2407 section 4.6.3.3).

    The peer says it kept no other SA with us (it restarted): every other SA with the same peer identity (ID type
    and data) from the same peer address, established no later than ``new``, goes.  A later one stays, so that a
    replayed INITIAL-CONTACT cannot take down a newer SA.  The peer's port is not compared (NAT-T floats it).
    """
    identity = (new.peer_id.id_type, new.peer_id.data)
    return [
        sa
        for sa in existing
        if sa.spi != new.spi
        and (sa.peer_id.id_type, sa.peer_id.data) == identity
        and sa.peer[0] == new.peer[0]
        and sa.established_at <= new.established_at
    ]
