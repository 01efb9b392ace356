"""Which payloads each ISAKMP message may carry, as tables that read like the RFCs' figures.

A :class:`Rule` says which payload types a message may hold, how many of each, where, and whether the message must
be encrypted.  Its ``head`` slots come first and in their order, its ``tail`` slots come last and in their order,
and its ``body`` slots fill the middle in any order: RFC 2409 section 5 puts no order on the payloads of an IKE
message except where it says so (the SA first in Phase 1; HASH and then SA first in Quick Mode, section 5.5).

:func:`check` holds a message to a rule and raises :class:`DecodeError` with the Notify type RFC 2408 section 5
answers with: INVALID-PAYLOAD-TYPE for a payload type the message has no place for (5.3), PAYLOAD-MALFORMED for a
payload missing, repeated or out of place, and INVALID-FLAGS for the Encryption bit set or clear against the rule
(5.2).  :data:`RULES` is keyed by (exchange type, DOI or None for any, message number, variant or None).

Not covered: Base and Authentication Only exchanges, Phase 1 with public key encryption (RFC 2409 sections 5.2 and
5.3), and New Group Mode.  The RFC 8263 GROUPKEY-PUSH ACK (HDR, HASH, SEQ, ID) is exchange 35, a number not
confirmed against the IANA registry (docs/wire-format.md).
"""

import enum
from collections.abc import Iterable

import attrs

from gdoiserver.codec.constants import DOI, ExchangeType, NotifyType, OakleyAuth
from gdoiserver.codec.constants import PayloadType as P
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.message import Message

#: The most payloads of one kind a rule accepts where the RFC says "any number": a bound of our own, as
#: strongSwan's message rules have one.
MANY = 32


@attrs.frozen
class Slot:
    """Payloads of ``types`` that come together, ``counts`` times; ``label`` is the RFC's name for them."""

    types: frozenset[int]
    counts: frozenset[int]
    label: str

    @property
    def most(self) -> int:
        return max(self.counts)


def one(t: int, label: str = "") -> Slot:
    """Exactly one."""
    return Slot(frozenset({t}), frozenset({1}), label or P(t).name)


def opt(t: int, label: str = "") -> Slot:
    """``[X]``: none or one."""
    return Slot(frozenset({t}), frozenset({0, 1}), label or P(t).name)


def some(t: int, label: str = "") -> Slot:
    """Any number, none included."""
    return Slot(frozenset({t}), frozenset(range(MANY + 1)), label or P(t).name)


def pair(t: int, label: str) -> Slot:
    """``[X_i, X_r]``: both or neither."""
    return Slot(frozenset({t}), frozenset({0, 2}), label)


def either(*types: int, counts: Iterable[int] = (1,), label: str) -> Slot:
    """One slot that payloads of any of ``types`` fill: ``N/D``, ``SIG or POP``."""
    return Slot(frozenset(types), frozenset(counts), label)


#: NAT-D: none, or one for the peer's address and at least one for the sender's own (RFC 3947 section 3.2).
NAT_D = Slot(frozenset({P.NAT_D}), frozenset({0, *range(2, MANY + 1)}), "NAT-D")
#: Vendor IDs and Certificate Requests may come in any Phase 1 message (RFC 2408 sections 3.16 and 3.10).
PHASE1_EXTRAS = (some(P.VID), some(P.CR))

CLEAR, ENCRYPTED, EITHER = False, True, None


@attrs.frozen
class Rule:
    """The payloads of one message: ``name`` is the RFC's figure, ``source`` the section it comes from."""

    name: str
    source: str
    encrypted: bool | None
    head: tuple[Slot, ...] = ()
    body: tuple[Slot, ...] = ()
    tail: tuple[Slot, ...] = ()

    def __attrs_post_init__(self):
        seen: set[int] = set()
        for s in self.head + self.body + self.tail:
            if seen & s.types:
                raise ValueError(f"{self.name}: payload types {sorted(seen & s.types)} in two slots")
            seen |= s.types

    @property
    def types(self) -> frozenset[int]:
        """Every payload type the message has a place for."""
        return frozenset().union(*(s.types for s in self.head + self.body + self.tail))


class Variant(enum.Enum):
    """What picks one of several rules for the same message."""

    PSK = "pre-shared key"  # RFC 2409 section 5.4
    SIGNATURE = "signatures"  # RFC 2409 section 5.1
    PROTECTED = "under an ISAKMP SA"  # RFC 2409 section 5.7
    CLEAR = "before any ISAKMP SA"  # RFC 2409 section 5.7


_SIGNATURE_METHODS = {
    OakleyAuth.DSS_SIGNATURES,
    OakleyAuth.RSA_SIGNATURES,
    OakleyAuth.ECDSA_SHA256_P256,
    OakleyAuth.ECDSA_SHA384_P384,
    OakleyAuth.ECDSA_SHA512_P521,
}


def auth_variant(method: int) -> Variant:
    """The Phase 1 variant for an Authentication Method attribute value (RFC 2409 appendix A)."""
    if method == OakleyAuth.PRE_SHARED_KEY:
        return Variant.PSK
    if method in _SIGNATURE_METHODS:
        return Variant.SIGNATURE
    raise KeyError(f"no message rules for authentication method {method}")


MM, AM, INFO, QM = ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE, ExchangeType.INFORMATIONAL, ExchangeType.QUICK_MODE
PULL, PUSH, ACK = ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH, ExchangeType.GROUPKEY_PUSH_ACK
PSK, SIGN = Variant.PSK, Variant.SIGNATURE
ANY = None

# Phase 1 (RFC 2409 section 5.1 for signatures, 5.4 for pre-shared keys; NAT-D from RFC 3947 section 3.2).  The
# N that MM5, MM6 and AM3 may carry is INITIAL-CONTACT, which only an encrypted message can carry (RFC 2407 4.6.3.3).
_MM1 = Rule("HDR, SA", "RFC 2409 section 5", CLEAR, (one(P.SA),), PHASE1_EXTRAS)
_MM3 = Rule("HDR, KE, Ni, [NAT-D, NAT-D]", "RFC 2409 section 5; RFC 3947 section 3.2", CLEAR,
            body=(one(P.KE), one(P.NONCE, "Ni"), NAT_D, *PHASE1_EXTRAS))
_MM4 = Rule("HDR, KE, Nr, [NAT-D, NAT-D]", "RFC 2409 section 5; RFC 3947 section 3.2", CLEAR,
            body=(one(P.KE), one(P.NONCE, "Nr"), NAT_D, *PHASE1_EXTRAS))
_MM5_PSK = Rule("HDR*, IDii, HASH_I", "RFC 2409 section 5.4", ENCRYPTED,
                body=(one(P.ID, "IDii"), one(P.HASH, "HASH_I"), some(P.N), *PHASE1_EXTRAS))
_MM6_PSK = Rule("HDR*, IDir, HASH_R", "RFC 2409 section 5.4", ENCRYPTED,
                body=(one(P.ID, "IDir"), one(P.HASH, "HASH_R"), some(P.N), *PHASE1_EXTRAS))
_MM5_SIG = Rule("HDR*, IDii, [CERT,] SIG_I", "RFC 2409 section 5.1", ENCRYPTED,
                body=(one(P.ID, "IDii"), some(P.CERT), one(P.SIG, "SIG_I"), some(P.N), *PHASE1_EXTRAS))
_MM6_SIG = Rule("HDR*, IDir, [CERT,] SIG_R", "RFC 2409 section 5.1", ENCRYPTED,
                body=(one(P.ID, "IDir"), some(P.CERT), one(P.SIG, "SIG_R"), some(P.N), *PHASE1_EXTRAS))
_AM1 = Rule("HDR, SA, KE, Ni, IDii", "RFC 2409 section 5", CLEAR,
            (one(P.SA),), (one(P.KE), one(P.NONCE, "Ni"), one(P.ID, "IDii"), *PHASE1_EXTRAS))
_AM2_PSK = Rule("HDR, SA, KE, Nr, IDir, HASH_R, [NAT-D, NAT-D]", "RFC 2409 section 5.4; RFC 3947 section 3.2",
                CLEAR, (one(P.SA),),
                (one(P.KE), one(P.NONCE, "Nr"), one(P.ID, "IDir"), one(P.HASH, "HASH_R"), NAT_D, *PHASE1_EXTRAS))
_AM2_SIG = Rule("HDR, SA, KE, Nr, IDir, [CERT,] SIG_R, [NAT-D, NAT-D]", "RFC 2409 section 5.1; RFC 3947 3.2",
                CLEAR, (one(P.SA),),
                (one(P.KE), one(P.NONCE, "Nr"), one(P.ID, "IDir"), some(P.CERT), one(P.SIG, "SIG_R"), NAT_D,
                 *PHASE1_EXTRAS))
# RFC 2409 sends AM3 in the clear; RFC 3947 section 3.2 and most peers encrypt it: either is accepted.
_AM3_PSK = Rule("HDR, HASH_I, [NAT-D, NAT-D]", "RFC 2409 section 5.4; RFC 3947 section 3.2", EITHER,
                body=(one(P.HASH, "HASH_I"), NAT_D, some(P.N), *PHASE1_EXTRAS))
_AM3_SIG = Rule("HDR, [CERT,] SIG_I, [NAT-D, NAT-D]", "RFC 2409 section 5.1; RFC 3947 section 3.2", EITHER,
                body=(some(P.CERT), one(P.SIG, "SIG_I"), NAT_D, some(P.N), *PHASE1_EXTRAS))

# Informational (RFC 2409 section 5.7): under an ISAKMP SA with HASH(1) first; before one, in the clear, without.
_N_OR_D = either(P.N, P.D, counts=range(1, MANY + 1), label="N/D")
_INFO = Rule("HDR*, HASH(1), N/D", "RFC 2409 section 5.7", ENCRYPTED, (one(P.HASH, "HASH(1)"),), (_N_OR_D,))
_INFO_CLEAR = Rule("HDR, N/D", "RFC 2409 section 5.7", CLEAR, body=(_N_OR_D,))

# Quick Mode (RFC 2409 section 5.5; NAT-OA from RFC 3947 section 5.1; N such as RESPONDER-LIFETIME from RFC 2407
# section 4.6.3).  HASH comes first and the SA (one or more, RFC 2409 section 9) right after it.
_QM_REST = (one(P.NONCE), opt(P.KE), pair(P.ID, "IDci, IDcr"), pair(P.NAT_OA, "NAT-OAi, NAT-OAr"), some(P.N))
_QM1 = Rule("HDR*, HASH(1), SA, Ni [, KE] [, IDci, IDcr] [, NAT-OAi, NAT-OAr]", "RFC 2409 5.5; RFC 3947 5.1",
            ENCRYPTED, (one(P.HASH, "HASH(1)"), either(P.SA, counts=range(1, MANY + 1), label="SA")), _QM_REST)
_QM2 = Rule("HDR*, HASH(2), SA, Nr [, KE] [, IDci, IDcr] [, NAT-OAi, NAT-OAr]", "RFC 2409 5.5; RFC 3947 5.1",
            ENCRYPTED, (one(P.HASH, "HASH(2)"), either(P.SA, counts=range(1, MANY + 1), label="SA")), _QM_REST)
_QM3 = Rule("HDR*, HASH(3)", "RFC 2409 section 5.5", ENCRYPTED, (one(P.HASH, "HASH(3)"),))
# The responder that set the Commit bit ends the exchange with a CONNECTED notify (RFC 2408 section 3.1).
_QM4 = Rule("HDR*, HASH(4), N(CONNECTED)", "RFC 2408 section 3.1", ENCRYPTED, (one(P.HASH, "HASH(4)"),), (one(P.N),))

# GROUPKEY-PULL (RFC 6407 section 3.2), HASH first as in Quick Mode.  POP_I and POP_R are SIG payloads in RFC 6407
# and POP payloads in RFC 3547: either is accepted.  GAP asks for sender IDs (RFC 6407 section 5.7; RFC 6054).
_POP = either(P.SIG, P.POP, counts=(0, 1), label="POP")
_PULL1 = Rule("HDR*, HASH(1), Ni, ID", "RFC 6407 section 3.2", ENCRYPTED,
              (one(P.HASH, "HASH(1)"),), (one(P.NONCE, "Ni"), one(P.ID)))
_PULL2 = Rule("HDR*, HASH(2), Nr, SA", "RFC 6407 section 3.2", ENCRYPTED,
              (one(P.HASH, "HASH(2)"),), (one(P.NONCE, "Nr"), one(P.SA)))
_PULL3 = Rule("HDR*, HASH(3) [, KE_I] [, CERT] [, POP_I] [, GAP]", "RFC 6407 section 3.2", ENCRYPTED,
              (one(P.HASH, "HASH(3)"),), (opt(P.KE, "KE_I"), some(P.CERT), _POP, opt(P.GAP)))
_PULL4 = Rule("HDR*, HASH(4) [, KE_R] [, SEQ], KD [, CERT] [, POP_R]", "RFC 6407 section 3.2", ENCRYPTED,
              (one(P.HASH, "HASH(4)"),), (opt(P.KE, "KE_R"), opt(P.SEQ), one(P.KD), some(P.CERT), _POP))
# GROUPKEY-PUSH (RFC 6407 section 4): SEQ first; SIG last, as it signs everything before it.
_PUSH = Rule("HDR*, SEQ, [D,] SA, KD, [CERT,] SIG", "RFC 6407 section 4", ENCRYPTED,
             (one(P.SEQ),), (some(P.D), one(P.SA), one(P.KD), some(P.CERT)), (one(P.SIG),))
# GROUPKEY-PUSH ACK (RFC 8263, our reading: docs/wire-format.md): in the clear, in this order.
_ACK = Rule("HDR, HASH, SEQ, ID", "RFC 8263", CLEAR, (one(P.HASH), one(P.SEQ), one(P.ID)))

#: (exchange type, DOI or ANY, message number, variant or None) -> rule.
RULES: dict[tuple[int, int | None, int, Variant | None], Rule] = {
    (MM, ANY, 1, None): _MM1,
    (MM, ANY, 2, None): _MM1,
    (MM, ANY, 3, None): _MM3,
    (MM, ANY, 4, None): _MM4,
    (MM, ANY, 5, PSK): _MM5_PSK,
    (MM, ANY, 6, PSK): _MM6_PSK,
    (MM, ANY, 5, SIGN): _MM5_SIG,
    (MM, ANY, 6, SIGN): _MM6_SIG,
    (AM, ANY, 1, None): _AM1,
    (AM, ANY, 2, PSK): _AM2_PSK,
    (AM, ANY, 2, SIGN): _AM2_SIG,
    (AM, ANY, 3, PSK): _AM3_PSK,
    (AM, ANY, 3, SIGN): _AM3_SIG,
    (INFO, ANY, 1, Variant.PROTECTED): _INFO,
    (INFO, ANY, 1, Variant.CLEAR): _INFO_CLEAR,
    (QM, DOI.IPSEC, 1, None): _QM1,
    (QM, DOI.IPSEC, 2, None): _QM2,
    (QM, DOI.IPSEC, 3, None): _QM3,
    (QM, DOI.IPSEC, 4, None): _QM4,
    (PULL, DOI.GDOI, 1, None): _PULL1,
    (PULL, DOI.GDOI, 2, None): _PULL2,
    (PULL, DOI.GDOI, 3, None): _PULL3,
    (PULL, DOI.GDOI, 4, None): _PULL4,
    (PUSH, DOI.GDOI, 1, None): _PUSH,
    (ACK, DOI.GDOI, 1, None): _ACK,
}


def rule_for(exchange_type: int, message_number: int, *, doi: int = DOI.IPSEC, variant: Variant | None = None) -> Rule:
    """The rule for a message; a rule that no variant or DOI tells apart serves any.  KeyError if there is none."""
    for key in (
        (exchange_type, doi, message_number, variant),
        (exchange_type, ANY, message_number, variant),
        (exchange_type, doi, message_number, None),
        (exchange_type, ANY, message_number, None),
    ):
        rule = RULES.get(key)
        if rule is not None:
            return rule
    raise KeyError(f"no rule for message {message_number} of exchange {exchange_type} under DOI {doi} ({variant})")


def _name(t: int) -> str:
    try:
        return P(t).name
    except ValueError:
        return f"payload type {t}"


def _run(types, start: int, stop: int, slot: Slot, step: int) -> int:
    """How many payloads of ``slot`` stand in a row from ``start`` towards ``stop`` (``step`` is +1 or -1)."""
    n, i = 0, start
    while i != stop and n < slot.most and types[i] in slot.types:
        n += 1
        i += step
    return n


def check(message, rule: Rule, *, encrypted: bool | None = None) -> None:
    """Raise :class:`DecodeError` unless ``message`` fits ``rule``.

    ``message`` is a decoded (or decrypted) :class:`Message`, or a sequence of payloads or payload types; for a
    sequence, ``encrypted`` says whether it came encrypted (None: do not check).
    """
    if isinstance(message, Message):
        if message.ciphertext is not None:
            raise ValueError("check a message after its body is decrypted")
        encrypted, items = message.encrypted, message.payloads
    else:
        items = message
    types = [t if isinstance(t, int) else t.payload_type for t in items]

    if rule.encrypted is not None and encrypted is not None and encrypted != rule.encrypted:
        must = "must" if rule.encrypted else "must not"
        raise DecodeError(NotifyType.INVALID_FLAGS, f"{rule.name}: the message {must} be encrypted")
    known = rule.types
    for i, t in enumerate(types):
        if t not in known:
            raise DecodeError(NotifyType.INVALID_PAYLOAD_TYPE, f"{_name(t)} (payload {i + 1}) in {rule.name}")

    def malformed(what: str):
        return DecodeError(NotifyType.PAYLOAD_MALFORMED, f"{rule.name}: {what}")

    start = 0
    for slot in rule.head:
        n = _run(types, start, len(types), slot, 1)
        if n not in slot.counts:
            raise malformed(f"{slot.label} expected at payload {start + 1}")
        start += n
    stop = len(types)
    for slot in reversed(rule.tail):
        n = _run(types, stop - 1, start - 1, slot, -1)
        if n not in slot.counts:
            raise malformed(f"{slot.label} expected last")
        stop -= n
    counts = dict.fromkeys(rule.body, 0)
    for i in range(start, stop):
        for slot in rule.body:
            if types[i] in slot.types:
                counts[slot] += 1
                break
        else:
            raise malformed(f"{_name(types[i])} out of place at payload {i + 1}")
    for slot, n in counts.items():
        if n not in slot.counts:
            raise malformed(f"{n} of {slot.label}" if n else f"{slot.label} missing")
