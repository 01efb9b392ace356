"""Data attributes in TV and TLV form (RFC 2408 section 3.3).

An attribute whose value is an ``int`` is Type/Value (AF=1, a 2-octet value); one whose value is ``bytes`` is
Type/Length/Value (AF=0).  Keeping the form in the value's type makes ``encode(decode(b)) == b`` hold.
"""

import struct
from typing import NamedTuple

from gdoiserver.codec.constants import NotifyType
from gdoiserver.codec.errors import DecodeError, EncodeError

_AF = 0x8000
_HDR = struct.Struct("!HH")


class Attribute(NamedTuple):
    """One data attribute: ``type`` is the 15-bit attribute class, ``value`` an int (TV) or bytes (TLV).

    A named tuple rather than an attrs class: SA payloads carry many of them, and decoding is hot.
    """

    type: int
    value: int | bytes

    @property
    def is_tv(self) -> bool:
        """True for the basic (Type/Value) form."""
        return isinstance(self.value, int)

    def as_int(self) -> int:
        """The value as an unsigned integer: TLV values are read big-endian (RFC 2408 section 3.3)."""
        if isinstance(self.value, int):
            return self.value
        return int.from_bytes(self.value, "big")

    def as_bytes(self) -> bytes:
        """The value as octets: a TV value gives its two octets."""
        if isinstance(self.value, int):
            return self.value.to_bytes(2, "big")
        return self.value

    @classmethod
    def number(cls, type_: int, value: int) -> "Attribute":
        """A numeric attribute in the shortest form: TV when the value fits 16 bits, else TLV of 4 or more octets.

        RFC 2409 appendix A lets variable attributes such as Life Duration be sent in basic form when they fit.
        """
        if value < 0:
            raise EncodeError(f"attribute {type_}: negative value")
        if value <= 0xFFFF:
            return cls(type_, value)
        size = max(4, (value.bit_length() + 7) // 8)
        return cls(type_, value.to_bytes(size, "big"))


_new_attribute = tuple.__new__
#: TV attributes seen on the wire, by their four octets, and the octets of TV attributes encoded.  SA payloads
#: repeat the same few attributes, so both caches hit almost always; each is bounded, whatever peers send.
_TV_DECODED: dict[bytes, Attribute] = {}
_TV_ENCODED: dict[Attribute, bytes] = {}
_CACHE_LIMIT = 4096


def decode_attributes(data: bytes, start: int = 0, end: int | None = None) -> tuple[Attribute, ...]:
    """Decode a run of attributes that fills ``data[start:end]`` exactly."""
    if end is None:
        end = len(data)
    out = []
    add = out.append
    pos = start
    unpack = _HDR.unpack_from
    cached = _TV_DECODED.get
    while pos < end:
        if end - pos < 4:  # before the cache: its 4-octet keys must not reach past ``end``
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, "truncated data attribute", pos)
        a = cached(data[pos : pos + 4])
        if a is not None:
            add(a)
            pos += 4
            continue
        t, v = unpack(data, pos)
        pos += 4
        if t & 0x8000:
            a = _new_attribute(Attribute, (t & 0x7FFF, v))
            if len(_TV_DECODED) < _CACHE_LIMIT:
                _TV_DECODED[bytes(data[pos - 4 : pos])] = a
            add(a)
        else:
            if v > end - pos:
                raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"attribute {t} length {v} overruns", pos - 2)
            add(_new_attribute(Attribute, (t, bytes(data[pos : pos + v]))))
            pos += v
    return tuple(out)


def _encode_one(a) -> bytes:
    if not 0 <= a.type <= 0x7FFF:
        raise EncodeError(f"attribute type {a.type} out of range")
    try:
        if isinstance(a.value, int):
            return _HDR.pack(a.type | _AF, a.value)
        return _HDR.pack(a.type, len(a.value)) + a.value
    except struct.error as e:
        raise EncodeError(f"attribute {a.type}: value out of range: {e}") from None


def encode_attributes(attributes) -> bytes:
    """Encode attributes in order, each in the form its value's type gives."""
    parts = []
    add = parts.append
    cached = _TV_ENCODED.get
    for a in attributes:
        b = cached(a)
        if b is None:
            b = _encode_one(a)
            if type(a.value) is int and type(a) is Attribute and len(_TV_ENCODED) < _CACHE_LIMIT:
                _TV_ENCODED[a] = b
        add(b)
    return b"".join(parts)


def attribute_map(attributes) -> dict[int, Attribute]:
    """Attributes by type; a repeated type keeps its first occurrence."""
    out: dict[int, Attribute] = {}
    for a in attributes:
        out.setdefault(a.type, a)
    return out
