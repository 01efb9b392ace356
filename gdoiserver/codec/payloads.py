"""RFC 2408's generic payloads (section 3) and RFC 3947's NAT-D and NAT-OA (sections 3.2 and 5.2).

The fields keep the RFC's names.  Each class decodes only the body that follows the generic payload header; see
:mod:`gdoiserver.codec.payload` for the header and the chain.
"""

import ipaddress
import struct
from typing import ClassVar

import attrs

from gdoiserver.codec.attributes import Attribute, decode_attributes, encode_attributes
from gdoiserver.codec.constants import DOI, ExchangeType, IDType, NotifyType, PayloadType, Situation
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.payload import Context, register

_U32U32 = struct.Struct("!II")
_PROPOSAL = struct.Struct("!BBHBBBB")  # generic header, then Proposal #, Protocol-Id, SPI Size, # of Transforms
_TRANSFORM = struct.Struct("!BBHBBH")  # generic header, then Transform #, Transform-Id, RESERVED2
_ID = struct.Struct("!BBH")
_NOTIFY = struct.Struct("!IBBH")
_DELETE = struct.Struct("!IBBH")

_MALFORMED = NotifyType.PAYLOAD_MALFORMED
_P, _T = int(PayloadType.P), int(PayloadType.T)

#: Phase 2 exchanges whose SA payload takes a DOI-specific form (GDOI's SA with SA attribute payloads).
_GROUP_EXCHANGES = frozenset((int(ExchangeType.GROUPKEY_PULL), int(ExchangeType.GROUPKEY_PUSH)))
#: DOI number -> payload class decoding an SA body of that DOI in GROUPKEY-PULL and GROUPKEY-PUSH.
_SA_GROUP_FORMS: dict[int, type] = {}
_SUPPORTED_DOIS = frozenset(map(int, DOI))
#: Situation bits other than SIT_IDENTITY_ONLY: labelled domains (RFC 2407 section 4.2), which we do not support.
_UNSUPPORTED_SITUATION = ~int(Situation.IDENTITY_ONLY) & 0xFFFFFFFF


def register_sa_group_form(doi: int, cls: type) -> type:
    """Let a DOI give the SA payload of its exchanges 32 and 33 a layout of its own (RFC 6407 section 5.1)."""
    _SA_GROUP_FORMS[doi] = cls
    return cls


def _bytes_field(cls_name: str, ptype: int, field: str, min_len: int = 1, max_len: int = 0xFFFB, doc: str = ""):
    """Make a payload class whose whole body is one opaque octet string."""

    def decode_body(cls, body, ctx):
        if not (min_len <= len(body) <= max_len):
            raise DecodeError(_MALFORMED, f"{cls_name} data of {len(body)} octets (expected {min_len}..{max_len})")
        return cls(body if type(body) is bytes else bytes(body))

    def encode_body(self, ctx):
        return getattr(self, field)

    ns = {
        "__doc__": doc,
        "__annotations__": {field: bytes, "payload_type": ClassVar[int]},
        "payload_type": ptype,
        "decode_body": classmethod(decode_body),
        "encode_body": encode_body,
    }
    cls = attrs.frozen(type(cls_name, (), ns))
    return register()(cls)


KE = _bytes_field("KE", PayloadType.KE, "key_exchange_data", doc="Key Exchange payload (RFC 2408 section 3.7).")
Hash = _bytes_field("Hash", PayloadType.HASH, "hash_data", doc="Hash payload (RFC 2408 section 3.11).")
Signature = _bytes_field("Signature", PayloadType.SIG, "signature_data", doc="Signature payload (RFC 2408 3.12).")
Nonce = _bytes_field(
    "Nonce", PayloadType.NONCE, "nonce_data", 8, 256, doc="Nonce payload (RFC 2408 3.13; 8 to 256 octets, RFC 2409 5)."
)
VendorID = _bytes_field("VendorID", PayloadType.VID, "vendor_id", doc="Vendor ID payload (RFC 2408 section 3.16).")
NATD = _bytes_field("NATD", PayloadType.NAT_D, "hash_of_address_and_port", doc="NAT-D payload (RFC 3947 3.2).")


def _decode_nested_alone(cls, body):
    """Decode a Proposal or Transform met outside an SA (the grammar refuses it later) from its body alone."""
    framed = b"\0\0" + struct.pack("!H", len(body) + 4) + bytes(body)
    try:
        return cls.decode_at(framed, 0, len(framed))[0]
    except DecodeError as e:
        if e.offset is not None:
            e.offset = max(0, e.offset - 4)
        raise


@register()
@attrs.frozen
class Transform:
    """Transform payload (RFC 2408 section 3.6): Transform #, Transform-Id and SA attributes."""

    payload_type: ClassVar[int] = PayloadType.T
    transform_number: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode_at(cls, data, pos, end):
        """Decode one Transform (with its generic header) at ``pos``; return it, its Next Payload and the end."""
        if end - pos < 8:
            raise DecodeError(_MALFORMED, "truncated Transform payload", pos)
        nxt, res, length, num, tid, res2 = _TRANSFORM.unpack_from(data, pos)
        if res or res2:
            raise DecodeError(_MALFORMED, "Transform RESERVED is not zero", pos)
        if length < 8 or length > end - pos:
            raise DecodeError(_MALFORMED, f"Transform length {length} is bad", pos + 2)
        return cls(num, tid, decode_attributes(data, pos + 8, pos + length)), nxt, pos + length

    @classmethod
    def decode_body(cls, body, ctx):
        return _decode_nested_alone(cls, body)

    def encode_body(self, ctx):
        return struct.pack("!BBH", self.transform_number, self.transform_id, 0) + encode_attributes(self.attributes)


@register()
@attrs.frozen
class Proposal:
    """Proposal payload (RFC 2408 section 3.5) with its Transform payloads."""

    payload_type: ClassVar[int] = PayloadType.P
    proposal_number: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]

    @classmethod
    def decode_at(cls, data, pos, end):
        if end - pos < 8:
            raise DecodeError(_MALFORMED, "truncated Proposal payload", pos)
        nxt, res, length, num, proto, spi_size, count = _PROPOSAL.unpack_from(data, pos)
        if res:
            raise DecodeError(_MALFORMED, "Proposal RESERVED is not zero", pos + 1)
        if length < 8 + spi_size or length > end - pos:
            raise DecodeError(_MALFORMED, f"Proposal length {length} is bad", pos + 2)
        stop = pos + length
        spi = bytes(data[pos + 8 : pos + 8 + spi_size])
        tpos = pos + 8 + spi_size
        transforms = []
        tnext = _T if count else 0
        while tpos < stop:
            if tnext != _T:
                raise DecodeError(_MALFORMED, "bytes after the last Transform of a Proposal", tpos)
            t, tnext, tpos = Transform.decode_at(data, tpos, stop)
            transforms.append(t)
        if tnext:
            raise DecodeError(_MALFORMED, "Transform chain ends early", tpos)
        if not transforms:
            raise DecodeError(NotifyType.BAD_PROPOSAL_SYNTAX, "a Proposal without Transforms", pos)
        if len(transforms) != count:
            raise DecodeError(NotifyType.BAD_PROPOSAL_SYNTAX, f"{count} transforms announced, {len(transforms)} sent")
        return cls(num, proto, spi, tuple(transforms)), nxt, stop

    @classmethod
    def decode_body(cls, body, ctx):
        return _decode_nested_alone(cls, body)

    def encode_body(self, ctx):
        parts = [struct.pack("!BBBB", self.proposal_number, self.protocol_id, len(self.spi), len(self.transforms))]
        parts.append(self.spi)
        n = len(self.transforms)
        for i, t in enumerate(self.transforms):
            body = t.encode_body(ctx)
            parts.append(struct.pack("!BBH", PayloadType.T if i + 1 < n else 0, 0, len(body) + 4))
            parts.append(body)
        return b"".join(parts)


@register()
@attrs.frozen
class SA:
    """Security Association payload (RFC 2408 section 3.4) with the IPsec DOI situation (RFC 2407 section 4.6.1).

    Situations with SIT_SECRECY or SIT_INTEGRITY (labelled domains) are refused with SITUATION-NOT-SUPPORTED.
    Under GROUPKEY-PULL and GROUPKEY-PUSH an SA of a DOI that registered a group form decodes to that form.
    """

    payload_type: ClassVar[int] = PayloadType.SA
    doi: int
    situation: int
    proposals: tuple[Proposal, ...]

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 8:
            raise DecodeError(_MALFORMED, "SA payload shorter than DOI and Situation")
        doi, situation = _U32U32.unpack_from(body, 0)
        if doi not in _SUPPORTED_DOIS:
            raise DecodeError(NotifyType.DOI_NOT_SUPPORTED, f"DOI {doi}", 0)
        if ctx.exchange_type in _GROUP_EXCHANGES and doi in _SA_GROUP_FORMS:
            return _SA_GROUP_FORMS[doi].decode_body(body, ctx)
        if situation & _UNSUPPORTED_SITUATION:
            raise DecodeError(NotifyType.SITUATION_NOT_SUPPORTED, f"situation {situation:#x}", 4)
        proposals = []
        pos, end = 8, len(body)
        nxt = _P if end > pos else 0
        while pos < end:
            if nxt != _P:
                raise DecodeError(_MALFORMED, "bytes after the last Proposal of an SA", pos)
            p, nxt, pos = Proposal.decode_at(body, pos, end)
            proposals.append(p)
        if nxt:
            raise DecodeError(_MALFORMED, "Proposal chain ends early", pos)
        if not proposals:
            raise DecodeError(NotifyType.BAD_PROPOSAL_SYNTAX, "an SA without Proposals", 8)
        return cls(doi, situation, tuple(proposals))

    def encode_body(self, ctx):
        parts = [_U32U32.pack(self.doi, self.situation)]
        n = len(self.proposals)
        for i, p in enumerate(self.proposals):
            body = p.encode_body(ctx)
            parts.append(struct.pack("!BBH", PayloadType.P if i + 1 < n else 0, 0, len(body) + 4))
            parts.append(body)
        return b"".join(parts)


#: Identification Data lengths that an ID type fixes (RFC 2407 section 4.6.2.2 onwards).
_ID_DATA_LENGTHS = {
    IDType.IPV4_ADDR: 4,
    IDType.IPV4_ADDR_SUBNET: 8,
    IDType.IPV4_ADDR_RANGE: 8,
    IDType.IPV6_ADDR: 16,
    IDType.IPV6_ADDR_SUBNET: 32,
    IDType.IPV6_ADDR_RANGE: 32,
    IDType.KEY_ID: None,
}


@register()
@attrs.frozen
class Identification:
    """Identification payload (RFC 2408 section 3.8) in the IPsec DOI's layout (RFC 2407 section 4.6.2).

    GDOI's group identity uses the same layout with ID_KEY_ID or ID_OID (RFC 6407 section 5.2.1; RFC 8052).
    ``data`` is kept as octets; :meth:`value` reads it according to ``id_type``.
    """

    payload_type: ClassVar[int] = PayloadType.ID
    id_type: int
    protocol_id: int
    port: int
    data: bytes

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 4:
            raise DecodeError(_MALFORMED, "ID payload shorter than its header")
        id_type, proto, port = _ID.unpack_from(body, 0)
        data = bytes(body[4:])
        want = _ID_DATA_LENGTHS.get(id_type, 0)
        if want and len(data) != want:
            raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"ID type {id_type} with {len(data)} octets", 4)
        if not data:
            raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"ID type {id_type} with no data", 4)
        return cls(id_type, proto, port, data)

    def encode_body(self, ctx):
        return _ID.pack(self.id_type, self.protocol_id, self.port) + self.data

    # Constructors and readers for the IPsec DOI's ID types (RFC 2407 section 4.6.2.2 - 4.6.2.12).
    @classmethod
    def of(cls, value, *, protocol_id: int = 0, port: int = 0) -> "Identification":
        """An ID for an address, network, (low, high) range, or ``"fqdn"``/``"user@fqdn"`` string."""
        if isinstance(value, tuple):
            lo, hi = ipaddress.ip_address(value[0]), ipaddress.ip_address(value[1])
            t = IDType.IPV4_ADDR_RANGE if lo.version == 4 else IDType.IPV6_ADDR_RANGE
            return cls(t, protocol_id, port, lo.packed + hi.packed)
        if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            t = IDType.IPV4_ADDR_SUBNET if value.version == 4 else IDType.IPV6_ADDR_SUBNET
            return cls(t, protocol_id, port, value.network_address.packed + value.netmask.packed)
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            t = IDType.IPV4_ADDR if value.version == 4 else IDType.IPV6_ADDR
            return cls(t, protocol_id, port, value.packed)
        if isinstance(value, str):
            t = IDType.USER_FQDN if "@" in value else IDType.FQDN
            return cls(t, protocol_id, port, value.encode("ascii"))
        raise EncodeError(f"no ID type for {value!r}")

    @classmethod
    def key_id(cls, key: bytes | int) -> "Identification":
        """ID_KEY_ID; an int is a GDOI group number, four octets in network order (RFC 6407 section 5.2.1)."""
        data = key.to_bytes(4, "big") if isinstance(key, int) else key
        return cls(IDType.KEY_ID, 0, 0, data)

    def value(self):
        """The data read by ID type: an address, a network, a (low, high) pair, a str, or the raw octets."""
        t, d = self.id_type, self.data
        if t in (IDType.IPV4_ADDR, IDType.IPV6_ADDR):
            return ipaddress.ip_address(d)
        if t in (IDType.IPV4_ADDR_SUBNET, IDType.IPV6_ADDR_SUBNET):
            half = len(d) // 2
            host = ~int.from_bytes(d[half:], "big") & ((1 << 8 * half) - 1)
            if host & (host + 1):
                raise DecodeError(NotifyType.INVALID_ID_INFORMATION, "subnet mask is not contiguous")
            return ipaddress.ip_network((d[:half], 8 * half - host.bit_length()), strict=False)
        if t in (IDType.IPV4_ADDR_RANGE, IDType.IPV6_ADDR_RANGE):
            half = len(d) // 2
            return (ipaddress.ip_address(d[:half]), ipaddress.ip_address(d[half:]))
        if t in (IDType.FQDN, IDType.USER_FQDN):
            try:
                return d.decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError(NotifyType.INVALID_ID_INFORMATION, "FQDN is not ASCII") from None
        return d


@register()
@attrs.frozen
class Certificate:
    """Certificate payload (RFC 2408 section 3.9): Cert Encoding and Certificate Data."""

    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 2:
            raise DecodeError(_MALFORMED, "CERT payload without certificate data")
        return cls(body[0], bytes(body[1:]))

    def encode_body(self, ctx):
        return bytes((self.encoding,)) + self.data


@register()
@attrs.frozen
class CertificateRequest:
    """Certificate Request payload (RFC 2408 section 3.10): Cert Type and an optional Certificate Authority."""

    payload_type: ClassVar[int] = PayloadType.CR
    encoding: int
    authority: bytes = b""

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 1:
            raise DecodeError(_MALFORMED, "CR payload without a certificate type")
        return cls(body[0], bytes(body[1:]))

    def encode_body(self, ctx):
        return bytes((self.encoding,)) + self.authority


@register()
@attrs.frozen
class Notification:
    """Notification payload (RFC 2408 section 3.14)."""

    payload_type: ClassVar[int] = PayloadType.N
    doi: int
    protocol_id: int
    notify_type: int
    spi: bytes = b""
    data: bytes = b""

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 8:
            raise DecodeError(_MALFORMED, "Notification payload shorter than its header")
        doi, proto, spi_size, ntype = _NOTIFY.unpack_from(body, 0)
        if spi_size > len(body) - 8:
            raise DecodeError(_MALFORMED, f"Notification SPI size {spi_size} overruns", 5)
        if doi not in _SUPPORTED_DOIS:
            raise DecodeError(NotifyType.DOI_NOT_SUPPORTED, f"DOI {doi} in a Notification", 0)
        return cls(doi, proto, ntype, bytes(body[8 : 8 + spi_size]), bytes(body[8 + spi_size :]))

    def encode_body(self, ctx):
        if len(self.spi) > 255:
            raise EncodeError("Notification SPI longer than 255 octets")
        return _NOTIFY.pack(self.doi, self.protocol_id, len(self.spi), self.notify_type) + self.spi + self.data


@register()
@attrs.frozen
class Delete:
    """Delete payload (RFC 2408 section 3.15): SPIs of one size, of one protocol."""

    payload_type: ClassVar[int] = PayloadType.D
    doi: int
    protocol_id: int
    spis: tuple[bytes, ...]
    spi_size: int = attrs.field(default=attrs.Factory(lambda self: len(self.spis[0]) if self.spis else 0, takes_self=True))

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 8:
            raise DecodeError(_MALFORMED, "Delete payload shorter than its header")
        doi, proto, size, count = _DELETE.unpack_from(body, 0)
        if doi not in _SUPPORTED_DOIS:
            raise DecodeError(NotifyType.DOI_NOT_SUPPORTED, f"DOI {doi} in a Delete", 0)
        if count and not size:  # an SPI of no octets names no SA; 65,535 of them fit in twelve octets
            raise DecodeError(_MALFORMED, f"{count} SPIs of no octets", 5)
        if size * count != len(body) - 8:
            raise DecodeError(_MALFORMED, f"{count} SPIs of {size} octets do not fill {len(body) - 8}", 5)
        spis = tuple(bytes(body[8 + i * size : 8 + (i + 1) * size]) for i in range(count))
        return cls(doi, proto, spis, size)

    def encode_body(self, ctx):
        if any(len(s) != self.spi_size for s in self.spis):
            raise EncodeError("Delete SPIs differ in size")
        return _DELETE.pack(self.doi, self.protocol_id, self.spi_size, len(self.spis)) + b"".join(self.spis)


@register()
@attrs.frozen
class NATOA:
    """NAT Original Address payload (RFC 3947 section 5.2): ID_IPV4_ADDR or ID_IPV6_ADDR, then the address."""

    payload_type: ClassVar[int] = PayloadType.NAT_OA
    id_type: int
    address: bytes

    @classmethod
    def decode_body(cls, body, ctx):
        if len(body) < 4:
            raise DecodeError(_MALFORMED, "NAT-OA payload shorter than its header")
        if body[1:4] != b"\0\0\0":
            raise DecodeError(_MALFORMED, "NAT-OA RESERVED is not zero", 1)
        want = {IDType.IPV4_ADDR: 4, IDType.IPV6_ADDR: 16}.get(body[0])
        if want is None or len(body) - 4 != want:
            raise DecodeError(_MALFORMED, f"NAT-OA ID type {body[0]} with {len(body) - 4} octets", 0)
        return cls(body[0], bytes(body[4:]))

    def encode_body(self, ctx):
        return bytes((self.id_type, 0, 0, 0)) + self.address

    @classmethod
    def of(cls, address) -> "NATOA":
        a = ipaddress.ip_address(address)
        return cls(IDType.IPV4_ADDR if a.version == 4 else IDType.IPV6_ADDR, a.packed)
