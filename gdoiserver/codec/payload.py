"""The payload interface, the registry keyed by (DOI, payload type), and the generic payload chain.

Every payload is a frozen attrs class with a ``payload_type`` class attribute, a ``decode_body(body, ctx)``
classmethod and an ``encode_body(ctx)`` method.  The generic payload header (RFC 2408 section 3.2) is handled
here, once, for all of them: next payload, RESERVED (must be zero) and length.
"""

import struct
from typing import ClassVar, Protocol

import attrs

from gdoiserver.codec.constants import DOI, ExchangeType, NotifyType
from gdoiserver.codec.errors import DecodeError, EncodeError

_GENERIC = struct.Struct("!BBH")

#: The GDOI wire formats a payload may be written in: RFC 6407 (the default) or RFC 3547.
RFC6407 = "rfc6407"
RFC3547 = "rfc3547"


@attrs.frozen
class Context:
    """What a payload's layout may depend on beyond its own bytes.

    ``doi`` picks the registry row (the DOI of the SA a message is under), ``exchange_type`` tells a GDOI SA
    (GROUPKEY-PULL and -PUSH) from a Phase 1 proposal SA, and ``gdoi_format`` is the layout the GDOI encoder
    writes where RFC 3547 and RFC 6407 differ.  Decoders accept both layouts whatever it says.
    """

    doi: int = DOI.IPSEC
    exchange_type: int = ExchangeType.NONE
    gdoi_format: str = RFC6407


DEFAULT_CONTEXT = Context()
_CONTEXTS: dict[tuple[int, int], Context] = {}


def context_for(doi: int, exchange_type: int) -> Context:
    """The default-format Context for (DOI, exchange type), made once and shared (contexts are immutable)."""
    ctx = _CONTEXTS.get((doi, exchange_type))
    if ctx is None:
        ctx = _CONTEXTS[(doi, exchange_type)] = Context(doi, exchange_type)
    return ctx


class PayloadClass(Protocol):
    payload_type: ClassVar[int]

    @classmethod
    def decode_body(cls, body: bytes, ctx: Context): ...

    def encode_body(self, ctx: Context) -> bytes: ...


@attrs.frozen
class UnknownPayload:
    """A payload whose type the registry does not know for the DOI: its body is kept as it came."""

    payload_type: int
    body: bytes

    def encode_body(self, ctx: Context) -> bytes:
        return self.body


class Registry:
    """Payload classes keyed by (DOI, payload type); ``None`` as the DOI means any DOI."""

    def __init__(self):
        self._classes: dict[tuple[int | None, int], type] = {}
        self._tables: dict[int, dict[int, type]] = {}

    def register(self, doi: int | None, cls: type) -> type:
        key = (doi, int(cls.payload_type))
        if key in self._classes and self._classes[key] is not cls:
            raise ValueError(f"payload type {cls.payload_type} already registered for DOI {doi}")
        self._classes[key] = cls
        self._tables.clear()
        return cls

    def table(self, doi: int) -> dict[int, type]:
        """Payload type -> class for one DOI: its own classes over the ones registered for any DOI."""
        t = self._tables.get(doi)
        if t is None:
            t = {pt: c for (d, pt), c in self._classes.items() if d is None}
            t.update({pt: c for (d, pt), c in self._classes.items() if d == doi})
            self._tables[doi] = t
        return t

    def lookup(self, doi: int, payload_type: int) -> type | None:
        """The class for ``payload_type`` under ``doi``, then under any DOI, else None."""
        return self.table(doi).get(payload_type)

    def known_types(self, doi: int) -> set[int]:
        return {t for (d, t) in self._classes if d is None or d == doi}


REGISTRY = Registry()


def register(doi: int | None = None):
    """Class decorator: register a payload class for ``doi`` (None: every DOI)."""

    def deco(cls):
        return REGISTRY.register(doi, cls)

    return deco


def decode_chain(
    first_type: int,
    data: bytes,
    ctx: Context = DEFAULT_CONTEXT,
    start: int = 0,
    end: int | None = None,
    *,
    allow_trailing: bool = False,
    registry: Registry = REGISTRY,
) -> tuple[tuple, int]:
    """Decode the chain of generic payloads that begins with ``first_type`` at ``data[start:]``.

    Returns the payloads and the offset just past the last one.  Bytes after the last payload are an error unless
    ``allow_trailing`` (an encrypted body's padding, RFC 2409 appendix B).
    """
    if end is None:
        end = len(data)
    out = []
    pos = start
    nxt = first_type
    unpack = _GENERIC.unpack_from
    lookup = registry.table(ctx.doi).get
    while nxt:
        if end - pos < 4:
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"truncated header of payload type {nxt}", pos)
        following, reserved, length = unpack(data, pos)
        if reserved:
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"payload type {nxt}: RESERVED is not zero", pos + 1)
        if length < 4 or length > end - pos:
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"payload type {nxt}: bad length {length}", pos + 2)
        body = data[pos + 4 : pos + length]
        cls = lookup(nxt)
        if cls is None:
            out.append(UnknownPayload(nxt, bytes(body)))
        else:
            try:
                out.append(cls.decode_body(body, ctx))
            except DecodeError as e:
                if e.offset is not None:
                    e.offset += pos + 4
                raise
        pos += length
        nxt = following
    if pos != end and not allow_trailing:
        raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"{end - pos} octets after the last payload", pos)
    return tuple(out), pos


def encode_chain(payloads, ctx: Context = DEFAULT_CONTEXT) -> bytes:
    """Encode payloads as a generic chain; each header's Next Payload names the one after it."""
    parts = []
    add = parts.append
    pack = _GENERIC.pack
    following = [p.payload_type for p in payloads[1:]]
    following.append(0)
    for p, nxt in zip(payloads, following):
        try:
            body = p.encode_body(ctx)
        except EncodeError:
            raise
        except (struct.error, ValueError, OverflowError) as e:
            raise EncodeError(f"payload type {p.payload_type}: field out of range: {e}") from None
        length = len(body) + 4
        if length > 0xFFFF:
            raise EncodeError(f"payload type {p.payload_type} too long ({length} octets)")
        add(pack(nxt, 0, length))
        add(body)
    return b"".join(parts)


def first_type(payloads) -> int:
    return payloads[0].payload_type if payloads else 0
