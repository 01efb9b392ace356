"""The keyed hashes of GROUPKEY-PULL, the proof-of-possession digest, and the KD mask of PFS.

RFC 6407 section 3.2 (as RFC 3547 section 3.2 before it), with prf the Phase 1 prf (HMAC of the negotiated hash):

    HASH(1) = prf(SKEYID_a, M-ID | Ni | ID)
    HASH(2) = prf(SKEYID_a, M-ID | Ni_b | Nr | SA)
    HASH(3) = prf(SKEYID_a, M-ID | Ni_b | Nr_b [ | KE_I ] [ | CERT ] [ | POP_I ] [ | GAP ])
    HASH(4) = prf(SKEYID_a, M-ID | Ni_b | Nr_b [ | KE_R ] [ | SEQ ] | KD [ | CERT ] [ | POP_R ])

M-ID is the header's four octets; Ni_b and Nr_b are nonce bodies; every other name is a whole payload, generic
header included, as in Quick Mode (RFC 2409 section 5.5).  Since HASH is the first payload, the payloads it
covers are exactly the octets of the chain after it, in the order sent: callers pass those octets (``rest``).

The POP digest and the KD mask are our reading where the RFC text could not be read; docs/wire-format.md
("GROUPKEY-PULL") records them as assumptions.
"""

import struct

from gdoiserver.codec.constants import NotifyType, PayloadType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.crypto import certs
from gdoiserver.crypto.keys import keymat
from gdoiserver.crypto.prf import HashAlgorithm, hash_algorithm
from gdoiserver.exchanges.phase1 import ISAKMPSA

_GENERIC = struct.Struct("!BBH")


def prf_of(sa: ISAKMPSA) -> HashAlgorithm:
    return hash_algorithm(sa.proposal.hash)


def _hash(sa: ISAKMPSA, mid: int, *parts: bytes) -> bytes:
    return prf_of(sa).prf(sa.keys.skeyid_a, struct.pack("!I", mid), *parts)


def hash_1(sa: ISAKMPSA, mid: int, rest: bytes) -> bytes:
    """HASH(1): ``rest`` is Ni and ID, whole."""
    return _hash(sa, mid, rest)


def hash_2(sa: ISAKMPSA, mid: int, ni_b: bytes, rest: bytes) -> bytes:
    """HASH(2): ``rest`` is Nr and SA, whole."""
    return _hash(sa, mid, ni_b, rest)


def hash_3(sa: ISAKMPSA, mid: int, ni_b: bytes, nr_b: bytes, rest: bytes) -> bytes:
    """HASH(3): ``rest`` is [KE_I] [CERT] [POP_I] [GAP], whole."""
    return _hash(sa, mid, ni_b, nr_b, rest)


def hash_4(sa: ISAKMPSA, mid: int, ni_b: bytes, nr_b: bytes, rest: bytes) -> bytes:
    """HASH(4): ``rest`` is [KE_R] [SEQ] KD [CERT] [POP_R], whole, KD as sent."""
    return _hash(sa, mid, ni_b, nr_b, rest)


def pop_digest(sa: ISAKMPSA, auth_method: int, ni_b: bytes, nr_b: bytes) -> bytes:
    """What POP_I and POP_R sign: hash(Ni_b | Nr_b) (RFC 3547 section 3.2 signs the hash of the nonces).

    The hash is the Phase 1 one, or the SHA-2 that RFC 4754 pairs with the ECDSA curve of the signing key (as HASH_I
    and HASH_R are for ECDSA, :func:`gdoiserver.crypto.certs.hash_for_auth`).
    """
    return certs.hash_for_auth(auth_method, prf_of(sa)).hash(ni_b, nr_b)


def kd_mask(sa: ISAKMPSA, g_xy: bytes, ni_b: bytes, nr_b: bytes, length: int) -> bytes:
    """The key stream XORed over the KD payload body when KE gives PFS.

    Quick Mode's KEYMAT with PFS (RFC 2409 section 5.5), with the KD payload type (17) as protocol and no SPI:
    K1 = prf(SKEYID_d, g^xy | 17 | Ni_b | Nr_b), K(n+1) = prf(SKEYID_d, Kn | g^xy | 17 | Ni_b | Nr_b).
    """
    return keymat(prf_of(sa), sa.keys.skeyid_d, PayloadType.KD, b"", ni_b, nr_b, length, g_xy)


def xor(data: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask[: len(data)], "big")).to_bytes(len(data), "big")


def payload_spans(plaintext: bytes, first_type: int) -> list[tuple[int, int, int]]:
    """(payload type, start, end) of each payload of the chain at the start of ``plaintext``, read from the
    generic headers alone (RFC 2408 section 3.2), up to Next Payload 0; what follows is padding.

    DecodeError(PAYLOAD_MALFORMED) when a length is short or overruns.
    """
    spans, pos, ptype = [], 0, first_type
    while ptype:
        if len(plaintext) - pos < _GENERIC.size:
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, "truncated generic payload header", pos)
        nxt, _, length = _GENERIC.unpack_from(plaintext, pos)
        if length < _GENERIC.size or length > len(plaintext) - pos:
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"payload length {length} is bad", pos + 2)
        spans.append((ptype, pos, pos + length))
        pos += length
        ptype = nxt
    return spans


def after_first(plaintext: bytes, spans) -> bytes:
    """The octets of every payload after the first (the HASH): what HASH(n) covers."""
    if not spans:
        return b""
    return bytes(plaintext[spans[0][2] : spans[-1][2]])
