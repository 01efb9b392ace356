"""GROUPKEY-PUSH acknowledgements (RFC 8263) as pure functions.

A member that accepted a PUSH whose SAK carries KEK_ACK_REQUESTED answers the key server with one message in the
clear:

    HDR (cookies = the KEK SPI of the PUSH, exchange 35, Message ID 0), HASH, SEQ, ID (the group)

    HASH    = prf(ack_key, SEQ body | ID body)
    ack_key = prf(SKEYID_a, "GROUPKEY-PUSH ACK" | CKY-I | CKY-R)

prf is the Phase 1 prf (HMAC of the Phase 1 hash) and SKEYID_a, CKY-I, CKY-R belong to the Phase 1 SA the member
registered under, so only that member and the key server know ack_key.  The bodies are those after the generic
payload header.  The HASH does not cover the header: the key server checks that the cookies name the KEK of the
SEQ it sent.  This is our reading of RFC 8263 from a secondary summary: docs/wire-format.md marks it
**assumed** ("GROUPKEY-PUSH acknowledgement").
"""

from typing import NamedTuple

from gdoiserver.codec.constants import DOI, ExchangeType, NotifyType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import KEK_SPI_SIZE, SEQ
from gdoiserver.codec.grammar import check, rule_for
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payload import context_for
from gdoiserver.codec.payloads import Hash, Identification
from gdoiserver.crypto.errors import UnsupportedHash
from gdoiserver.crypto.prf import HashAlgorithm, constant_time_equal, hash_algorithm

ACK = ExchangeType.GROUPKEY_PUSH_ACK
CTX = context_for(DOI.GDOI, ACK)
#: The label of the ack key derivation.
ACK_LABEL = b"GROUPKEY-PUSH ACK"
#: The prf output size of each Oakley hash, which is the size of an ack_key: the key names its own prf.
_PRF_BY_SIZE = {hash_algorithm(n).digest_size: n for n in (1, 2, 4, 5, 6)}


class Ack(NamedTuple):
    """A GROUPKEY-PUSH ACK as read: the KEK SPI of its header, the SEQ it acknowledges, the group (an ID payload)
    and the HASH it carries (unchecked until :func:`ack_holds`)."""

    kek_spi: bytes
    seq: int
    group_id: Identification
    hash: bytes


def ack_key_for(sa) -> bytes:
    """ack_key of the Phase 1 SA a member registered under (:class:`gdoiserver.exchanges.phase1.ISAKMPSA`)."""
    prf = hash_algorithm(sa.proposal.hash)
    return prf.prf(sa.keys.skeyid_a, ACK_LABEL, sa.initiator_cookie, sa.responder_cookie)


def prf_for(ack_key: bytes, prf_hash: int | None = None) -> HashAlgorithm:
    """The prf of ``ack_key``: the Oakley hash ``prf_hash`` if given, else the one whose output is as long as the key
    (an ack_key is a prf output, and the sizes 16, 20, 32, 48, 64 name MD5, SHA-1, SHA-256, -384, -512).

    UnsupportedHash when neither names a supported hash.
    """
    if prf_hash is None:
        try:
            prf_hash = _PRF_BY_SIZE[len(ack_key)]
        except KeyError:
            raise UnsupportedHash(f"an ack_key of {len(ack_key)} octets is no prf output") from None
    return hash_algorithm(prf_hash)


def ack_hash(seq: int, group_id: Identification, ack_key: bytes, prf_hash: int | None = None) -> bytes:
    """HASH = prf(ack_key, SEQ body | ID body)."""
    return prf_for(ack_key, prf_hash).prf(ack_key, SEQ(seq).encode_body(CTX), group_id.encode_body(CTX))


def build_ack(kek_spi: bytes, seq: int, group_id: Identification, ack_key: bytes,
              prf_hash: int | None = None) -> bytes:
    """The ACK datagram of the PUSH with SEQ ``seq`` under the KEK ``kek_spi`` (16 octets), for the group
    ``group_id`` (e.g. :func:`gdoiserver.codec.gdoi.group_id`)."""
    if len(kek_spi) != KEK_SPI_SIZE:
        raise ValueError(f"a KEK SPI is {KEK_SPI_SIZE} octets, not {len(kek_spi)}")
    if not any(kek_spi[:8]):
        raise ValueError("a KEK SPI whose first 8 octets are zero is no initiator cookie (RFC 2408 section 3.1)")
    digest = ack_hash(seq, group_id, ack_key, prf_hash)
    message = Message(kek_spi[:8], kek_spi[8:], ACK, 0, 0, (Hash(digest), SEQ(seq), group_id))
    return message.encode(CTX)


def read_ack(message_or_raw: Message | bytes) -> Ack:
    """The fields of an ACK, from its datagram or its decoded :class:`Message` (decoded under DOI 2).

    DecodeError, and nothing else, when it is not one: another exchange, a Message ID other than 0, any flag, or
    payloads other than HASH, SEQ, ID in that order.
    """
    if isinstance(message_or_raw, Message):
        message = message_or_raw
    else:
        message = decode_message(bytes(message_or_raw), DOI.GDOI, CTX)
    if message.exchange_type != ACK:
        raise DecodeError(NotifyType.INVALID_EXCHANGE_TYPE, f"exchange {message.exchange_type} is not an ACK (35)")
    if message.message_id != 0:
        raise DecodeError(NotifyType.INVALID_MESSAGE_ID, f"an ACK with Message ID {message.message_id} (must be 0)")
    if message.encrypted:
        raise DecodeError(NotifyType.INVALID_FLAGS, "an encrypted ACK (sent in the clear)")
    if message.flags:
        raise DecodeError(NotifyType.INVALID_FLAGS, f"an ACK with flags {message.flags:#04x} (it carries none)")
    check(message, rule_for(ACK, 1, doi=DOI.GDOI))
    digest, seq, group = message.payloads
    if not isinstance(seq, SEQ) or not isinstance(group, Identification) or not isinstance(digest, Hash):
        raise DecodeError(NotifyType.PAYLOAD_MALFORMED, "an ACK not read under the GDOI payload table")
    return Ack(message.spi, seq.sequence_number, group, digest.hash_data)


def ack_holds(ack: Ack, ack_key: bytes, prf_hash: int | None = None) -> bool:
    """Whether the ACK's HASH is the one ``ack_key`` gives (compared in constant time).  False, not an error, for
    a key of no known prf size."""
    try:
        expected = ack_hash(ack.seq, ack.group_id, ack_key, prf_hash)
    except UnsupportedHash:
        return False
    return constant_time_equal(expected, ack.hash)
