"""The values of the LKH key packet's attributes (RFC 6407 section 5.6.3; the layout of RFC 3547 section 5.5.3.1,
**assumed**: docs/wire-format.md, "KD: LKH").

LKH_DOWNLOAD_ARRAY (GROUPKEY-PULL: the member's leaf and ancestor keys) and LKH_UPDATE_ARRAY (an eviction PUSH:
new node keys, each wrapped with AES Key Wrap, RFC 3394) share one layout::

    LKH Version (1) = 1 | # of LKH Keys (1) | RESERVED (2)
    then per key:
    LKH ID (4) | Key Type (1) = KEK_ALG_AES | RESERVED (1) | Key Creation Date (4) | Key Expiration Date (4) |
    Key Handle (4) | Key Data

LKH ID is our heap node number (4 octets where RFC 3547 has 2: a tree of depth 16 numbers its nodes past 65535),
Key Handle the node key's version.  We send both dates as 0: node keys live until the tree changes them.  Key Data
is the key in a download array; in an update array it is the wrapping node's LKH ID (4) and Key Handle (4), then the
wrapped key (the key's size + 8).  Every entry of an array has the same key size, which the array's length and
count give (16, 24 or 32 octets); the reader checks it against the KEK's.

Decoding is total: anything else than a well-formed array is DecodeError.
"""

import struct

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import NotifyType
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.gdoi import KEK_SPI_SIZE, KEKAlgorithm, KeyPacket, KeyPacketType, LKHKeyAttr
from gdoiserver.group.lkh import KEY_SIZES, LKHUpdate, NodeKey

LKH_VERSION = 1
#: The wrap of RFC 3394 adds one 8-octet block to the key.
WRAP_OVERHEAD = 8
_HEAD = struct.Struct("!BBH")  # LKH Version, # of LKH Keys, RESERVED
_ENTRY = struct.Struct("!IBBIII")  # LKH ID, Key Type, RESERVED, Key Creation Date, Key Expiration Date, Key Handle
_WRAPPING = struct.Struct("!II")  # the wrapping node's LKH ID and Key Handle
_MAX_KEYS = 0xFF
_MALFORMED = NotifyType.PAYLOAD_MALFORMED


def _entry_head(node: int, version: int) -> bytes:
    try:
        return _ENTRY.pack(node, KEKAlgorithm.KEK_ALG_AES, 0, 0, 0, version)
    except struct.error:
        raise EncodeError(f"LKH ID {node} or Key Handle {version} does not fit 4 octets") from None


def _array(entries: list[bytes]) -> bytes:
    if not 1 <= len(entries) <= _MAX_KEYS:
        raise EncodeError(f"an LKH array of {len(entries)} keys (1 to {_MAX_KEYS})")
    return _HEAD.pack(LKH_VERSION, len(entries), 0) + b"".join(entries)


def encode_download_array(path) -> bytes:
    """LKH_DOWNLOAD_ARRAY of a member's path (:class:`NodeKey` values, leaf first)."""
    entries = []
    for k in path:
        if len(k.key) not in KEY_SIZES:
            raise EncodeError(f"an LKH key of {len(k.key)} octets")
        entries.append(_entry_head(k.node, k.version) + k.key)
    return _array(entries)


def encode_update_array(updates) -> bytes:
    """LKH_UPDATE_ARRAY of an eviction's :class:`LKHUpdate` values, in their order."""
    entries = []
    for u in updates:
        if len(u.wrapped_key) - WRAP_OVERHEAD not in KEY_SIZES:
            raise EncodeError(f"a wrapped LKH key of {len(u.wrapped_key)} octets")
        try:
            wrapping = _WRAPPING.pack(u.wrapping_node, u.wrapping_version)
        except struct.error:
            raise EncodeError(f"wrapping LKH ID {u.wrapping_node} or Key Handle {u.wrapping_version} does not fit "
                              "4 octets") from None
        entries.append(_entry_head(u.node, u.version) + wrapping + u.wrapped_key)
    return _array(entries)


def _entries(value, extra: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(key size, [(offset of the entry, LKH ID, Key Handle)]) of an array whose entries carry ``extra`` octets
    besides the fixed head and the key."""
    if len(value) < _HEAD.size:
        raise DecodeError(_MALFORMED, f"an LKH array of {len(value)} octets")
    version, count, reserved = _HEAD.unpack_from(value, 0)
    if version != LKH_VERSION:
        raise DecodeError(_MALFORMED, f"LKH Version {version} (1 only)", 0)
    if reserved:
        raise DecodeError(_MALFORMED, "LKH array RESERVED is not zero", 2)
    if not count:
        raise DecodeError(_MALFORMED, "an LKH array of no keys", 1)
    body = len(value) - _HEAD.size
    size, rest = divmod(body, count)
    key_size = size - _ENTRY.size - extra
    if rest or key_size not in KEY_SIZES:
        raise DecodeError(_MALFORMED, f"{body} octets do not hold {count} LKH keys of one AES key size", 1)
    out = []
    for i in range(count):
        pos = _HEAD.size + i * size
        node, key_type, res, _created, _expires, version = _ENTRY.unpack_from(value, pos)
        if key_type != KEKAlgorithm.KEK_ALG_AES:
            raise DecodeError(NotifyType.INVALID_KEY_INFORMATION, f"LKH Key Type {key_type} (AES only)", pos + 4)
        if res:
            raise DecodeError(_MALFORMED, "LKH key RESERVED is not zero", pos + 5)
        if not node:
            raise DecodeError(_MALFORMED, "LKH ID 0", pos)
        out.append((pos + _ENTRY.size, node, version))
    return key_size, out


def decode_download_array(value) -> tuple[NodeKey, ...]:
    """The :class:`NodeKey` values of an LKH_DOWNLOAD_ARRAY, in their order."""
    value = bytes(value)
    key_size, entries = _entries(value, 0)
    return tuple(NodeKey(node, version, value[pos : pos + key_size]) for pos, node, version in entries)


def decode_update_array(value) -> tuple[LKHUpdate, ...]:
    """The :class:`LKHUpdate` values of an LKH_UPDATE_ARRAY, in their order."""
    value = bytes(value)
    key_size, entries = _entries(value, _WRAPPING.size + WRAP_OVERHEAD)
    out = []
    for pos, node, version in entries:
        wrapping_node, wrapping_version = _WRAPPING.unpack_from(value, pos)
        if not wrapping_node:
            raise DecodeError(_MALFORMED, "wrapping LKH ID 0", pos)
        start = pos + _WRAPPING.size
        out.append(LKHUpdate(node, version, wrapping_node, wrapping_version,
                             value[start : start + key_size + WRAP_OVERHEAD]))
    return tuple(out)


def download_packet(kek_spi: bytes, path) -> KeyPacket:
    """The LKH key packet of GROUPKEY-PULL message 4: the KEK's SPI and the member's LKH_DOWNLOAD_ARRAY."""
    _check_spi(kek_spi)
    return KeyPacket(KeyPacketType.LKH, kek_spi, (Attribute(LKHKeyAttr.LKH_DOWNLOAD_ARRAY,
                                                            encode_download_array(path)),))


def update_packet(kek_spi: bytes, updates) -> KeyPacket:
    """The LKH key packet of an eviction PUSH: the new KEK's SPI and the LKH_UPDATE_ARRAY."""
    _check_spi(kek_spi)
    return KeyPacket(KeyPacketType.LKH, kek_spi, (Attribute(LKHKeyAttr.LKH_UPDATE_ARRAY,
                                                            encode_update_array(updates)),))


def _check_spi(spi: bytes) -> None:
    if len(spi) != KEK_SPI_SIZE:
        raise EncodeError(f"an LKH key packet's SPI is the KEK's ({KEK_SPI_SIZE} octets), not {len(spi)}")
