"""GDOI payloads (RFC 6407 section 5, DOI 2), with RFC 3547's older layouts accepted and RFC 8052's TEK.

The GDOI SA payload (section 5.2) carries its SA attribute payloads (SAK, GAP, SAT) inside its own Payload Length,
chained through their generic headers.  Its class is handed SA bodies of DOI 2 in GROUPKEY-PULL and GROUPKEY-PUSH
by :func:`gdoiserver.codec.payloads.register_sa_group_form`; the other payloads are registered for DOI 2.

RFC 3547 and RFC 6407 differ on the wire in one place this module has to care about: the SRC/DST ID Data Len of
the ESP and AH TEK payload is one octet in RFC 3547 section 5.4.1 and two in RFC 6407 section 5.4.1.  Decoding
accepts both and records which it saw in :attr:`IPsecTEK.wire_format`, so that ``encode(decode(b)) == b``; a TEK
built without one is written as ``ctx.gdoi_format`` says (RFC 6407 unless told otherwise).

docs/wire-format.md says, payload by payload, which source each layout and number was checked against (RFC 6407
section 5, the IANA GDOI and ISAKMP registries, RFC 3547) and which numbers stay unnamed because none could be.
"""

import enum
import struct
from typing import ClassVar

import attrs

from gdoiserver.codec.attributes import Attribute, decode_attributes, encode_attributes
from gdoiserver.codec.constants import DOI, IDType, NotifyType, PayloadType
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.payload import RFC3547, RFC6407, Context, decode_chain, encode_chain, register
from gdoiserver.codec.payloads import Identification, register_sa_group_form

_MALFORMED = NotifyType.PAYLOAD_MALFORMED
_FORMATS = (RFC6407, RFC3547)


# --- Numbers (RFC 6407 sections 5.2 - 5.8 and its IANA registries; RFC 3547; RFC 6054; RFC 8052) ---------------


class KEKAttr(enum.IntEnum):
    """SA KEK attribute classes (RFC 6407 section 5.3; IANA "SA KEK Payload Values - KEK Attributes").

    1-4 and their Basic/Variable forms are as the IANA registry lists them; KE_OAKLEY_GROUP is RFC 3547's (section
    5.3.9), which RFC 6407 no longer uses.  KEK_INTEGRITY_ALGORITHM and RFC 8263's KEK_ACK_REQUESTED follow in the
    same registry; their numbers could not be read in the registry itself and are our best reading.
    """

    KEK_MANAGEMENT_ALGORITHM = 1
    KEK_ALGORITHM = 2
    KEK_KEY_LENGTH = 3
    KEK_KEY_LIFETIME = 4
    SIG_HASH_ALGORITHM = 5
    SIG_ALGORITHM = 6
    SIG_KEY_LENGTH = 7
    KE_OAKLEY_GROUP = 8
    #: RFC 6407 section 5.3 (number not confirmed, see docs/wire-format.md).
    KEK_INTEGRITY_ALGORITHM = 9
    #: RFC 8263: the key server asks members to acknowledge each rekey (number not confirmed).
    KEK_ACK_REQUESTED = 10


class KEKManagementAlgorithm(enum.IntEnum):
    """KEK_MANAGEMENT_ALGORITHM values (RFC 6407 section 5.3; RFC 3547 section 5.3.2)."""

    LKH = 1


class KEKAlgorithm(enum.IntEnum):
    """KEK_ALGORITHM values (RFC 6407 section 5.3; RFC 3547 section 5.3.3)."""

    KEK_ALG_DES = 1
    KEK_ALG_3DES = 2
    KEK_ALG_AES = 3


class SigHashAlgorithm(enum.IntEnum):
    """SIG_HASH_ALGORITHM values (RFC 6407 section 5.3; MD5 and SHA1 from RFC 3547 section 5.3.6)."""

    SIG_HASH_MD5 = 1
    SIG_HASH_SHA1 = 2
    SIG_HASH_SHA256 = 3
    SIG_HASH_SHA384 = 4
    SIG_HASH_SHA512 = 5


class SigAlgorithm(enum.IntEnum):
    """SIG_ALGORITHM values (RFC 6407 section 5.3; RSA, DSS and ECDSS from RFC 3547 section 5.3.7)."""

    SIG_ALG_RSA = 1
    SIG_ALG_DSS = 2
    SIG_ALG_ECDSS = 3
    SIG_ALG_ECDSA_256 = 4
    SIG_ALG_ECDSA_384 = 5
    SIG_ALG_ECDSA_521 = 6


class POPAlgorithm(enum.IntEnum):
    """POP Algorithm of the SA KEK payload (RFC 3547 section 5.3 and its IANA registry; RESERVED2 in RFC 6407)."""

    POP_ALG_RSA = 1
    POP_ALG_DSS = 2
    POP_ALG_ECDSS = 3


class TEKProtocol(enum.IntEnum):
    """SA TEK Protocol-ID (RFC 6407 section 5.4: GDOI_PROTO_IPSEC_ESP/AH; RFC 8052 section 2.2: IEC 61850)."""

    IPSEC_ESP = 1
    IPSEC_AH = 2
    IEC61850 = 3


class AddressPreservation(enum.IntEnum):
    """Values of the IPsec SA attribute Address Preservation (``IPsecAttr.ADDRESS_PRESERVATION``, 14) that RFC 6407
    added for ESP and AH TEKs (section 5.4.1; IANA IPsec SA attribute registry): which tunnel-mode addresses copy the
    inner packet's."""

    NONE = 1
    SOURCE_ONLY = 2
    DESTINATION_ONLY = 3
    SOURCE_AND_DESTINATION = 4


class SADirection(enum.IntEnum):
    """Values of the IPsec SA attribute SA Direction (``IPsecAttr.SA_DIRECTION``, 15) that RFC 6407 added for ESP and
    AH TEKs (section 5.4.1; IANA IPsec SA attribute registry)."""

    SENDER_ONLY = 1
    RECEIVER_ONLY = 2
    SYMMETRIC = 3


class KeyPacketType(enum.IntEnum):
    """Key Download KD Type (RFC 6407 section 5.6; SID from RFC 6054 section 5)."""

    TEK = 1
    KEK = 2
    LKH = 3
    SID = 4


class TEKKeyAttr(enum.IntEnum):
    """Attributes of a TEK key packet (RFC 6407 section 5.6.1)."""

    TEK_ALGORITHM_KEY = 1
    TEK_INTEGRITY_KEY = 2
    TEK_SOURCE_AUTH_KEY = 3


class KEKKeyAttr(enum.IntEnum):
    """Attributes of a KEK key packet (RFC 6407 section 5.6.2)."""

    KEK_ALGORITHM_KEY = 1
    SIG_ALGORITHM_KEY = 2


class LKHKeyAttr(enum.IntEnum):
    """Attributes of an LKH key packet (RFC 3547 section 5.5.3, RFC 6407 section 5.6.3)."""

    LKH_DOWNLOAD_ARRAY = 1
    LKH_UPDATE_ARRAY = 2
    SIG_ALGORITHM_KEY = 3


class SIDAttr(enum.IntEnum):
    """Attributes of a SID key packet (RFC 6407 section 5.6.4, from RFC 6054)."""

    NUMBER_OF_SID_BITS = 1
    SID_VALUE = 2


class GAPAttr(enum.IntEnum):
    """Group Associated Policy attributes (RFC 6407 section 5.7).  All three are Basic (TV): the two delays are times
    (in seconds, not yet checked against the RFC text), SENDER_ID_REQUEST the number of sender IDs a member asks for
    in GROUPKEY-PULL message 3."""

    ACTIVATION_TIME_DELAY = 1
    DEACTIVATION_TIME_DELAY = 2
    SENDER_ID_REQUEST = 3


class IEC61850Attr(enum.IntEnum):
    """SA Data Attributes of the IEC 61850 SA TEK (RFC 8052 section 2.2.4)."""

    SA_ATD = 1
    SA_KDA = 2


class IEC61850AuthAlg(enum.IntEnum):
    """Auth Alg of the IEC 61850 SA TEK (RFC 8052 section 2.2.3)."""

    NONE = 1
    HMAC_SHA256_128 = 2
    HMAC_SHA256 = 3
    AES_GMAC_128 = 4
    AES_GMAC_256 = 5


class IEC61850EncAlg(enum.IntEnum):
    """Enc Alg of the IEC 61850 SA TEK (RFC 8052 section 2.2.3)."""

    NONE = 1
    AES_CBC_128 = 2
    AES_CBC_256 = 3
    AES_GCM_128 = 4
    AES_GCM_256 = 5


#: Payloads that may follow a GDOI SA payload inside it (RFC 6407 section 5.2.1).
SA_ATTRIBUTE_PAYLOADS = frozenset({PayloadType.SAK, PayloadType.SAT, PayloadType.GAP})
#: KEK SPI: the ISAKMP cookie pair of the rekey SA (RFC 6407 section 5.3).
KEK_SPI_SIZE = 16
#: TEK SPI of ESP, AH and IEC 61850 (RFC 6407 section 5.4.1; RFC 8052 section 2.2).
TEK_SPI_SIZE = 4

#: Identification Data lengths fixed by an ID type (RFC 2407 section 4.6.2), checked in SAK and SAT selectors.
_FIXED_ID_LENGTHS = {
    IDType.IPV4_ADDR: 4,
    IDType.IPV4_ADDR_SUBNET: 8,
    IDType.IPV4_ADDR_RANGE: 8,
    IDType.IPV6_ADDR: 16,
    IDType.IPV6_ADDR_SUBNET: 32,
    IDType.IPV6_ADDR_RANGE: 32,
}


def _pack(fmt: str, *values) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except struct.error as e:
        raise EncodeError(f"field out of range: {e}") from None


def _need(body, pos: int, n: int, what: str) -> None:
    if len(body) - pos < n:
        raise DecodeError(_MALFORMED, f"truncated {what}", pos)


# --- Traffic selectors shared by SAK and SAT -------------------------------------------------------------------


@attrs.frozen
class Selector:
    """One SRC or DST identification of a SAK or SAT: ID Type, ID Port and Identification Data (RFC 6407 5.3).

    The ID types and data are those of the IPsec DOI (RFC 2407 section 4.6.2).
    """

    id_type: int
    port: int
    data: bytes

    @classmethod
    def of(cls, value, port: int = 0) -> "Selector":
        """A selector for an address, a network, an (low, high) range or a name, as :meth:`Identification.of`."""
        ident = Identification.of(value, port=port)
        return cls(ident.id_type, ident.port, ident.data)

    def value(self):
        """The data read by ID type (an address, a network, a range, a name or octets)."""
        return Identification(self.id_type, 0, self.port, self.data).value()

    @classmethod
    def decode_at(cls, body, pos: int, len_size: int) -> tuple["Selector", int]:
        """Read ID Type (1), ID Port (2), ID Data Len (``len_size``) and the data at ``pos``."""
        head = _SELECTOR_HEAD[len_size]
        if len(body) - pos < head.size:
            raise DecodeError(_MALFORMED, "payload too short for ID fields", pos)
        id_type, port, size = head.unpack_from(body, pos)
        start = pos + head.size
        if size > len(body) - start:
            raise DecodeError(_MALFORMED, f"ID Data Len {size} overruns the payload", pos + 3)
        want = _FIXED_ID_LENGTHS.get(id_type)
        if want is not None and size != want:
            raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"ID type {id_type} with {size} octets", pos)
        return cls(id_type, port, bytes(body[start : start + size])), start + size

    def encode(self, len_size: int) -> bytes:
        if len(self.data) >= 1 << (8 * len_size):
            raise EncodeError(f"ID data of {len(self.data)} octets does not fit a {len_size}-octet length")
        return _SELECTOR_HEAD[len_size].pack(self.id_type, self.port, len(self.data)) + self.data


#: ID Type, ID Port and ID Data Len with a one-octet (RFC 3547, and SAK) or two-octet (RFC 6407 TEK) length.
_SELECTOR_HEAD = {1: struct.Struct("!BHB"), 2: struct.Struct("!BHH")}


# --- SA KEK (RFC 6407 section 5.3; RFC 3547 section 5.3) -------------------------------------------------------


@register(DOI.GDOI)
@attrs.frozen
class SAK:
    """SA KEK payload: the rekey SA's policy (RFC 6407 section 5.3).

    ``protocol`` is the IP protocol of the rekey traffic (UDP, 17).  ``spi`` is the 16-octet KEK SPI (the rekey
    SA's cookie pair).  The four octets after the SPI are RESERVED2 in RFC 6407 and POP Algorithm and POP Key Length
    in RFC 3547: they are kept as ``pop_algorithm`` and ``pop_key_length`` (zero in RFC 6407).
    """

    payload_type: ClassVar[int] = PayloadType.SAK
    protocol: int
    src: Selector
    dst: Selector
    spi: bytes
    attributes: tuple[Attribute, ...] = ()
    pop_algorithm: int = 0
    pop_key_length: int = 0

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "SAK":
        _need(body, 0, 1, "SA KEK payload")
        src, pos = Selector.decode_at(body, 1, 1)
        dst, pos = Selector.decode_at(body, pos, 1)
        _need(body, pos, KEK_SPI_SIZE + 4, "SA KEK SPI and RESERVED2")
        spi = bytes(body[pos : pos + KEK_SPI_SIZE])
        pop_alg, pop_len = struct.unpack_from("!HH", body, pos + KEK_SPI_SIZE)
        attributes = decode_attributes(body, pos + KEK_SPI_SIZE + 4, len(body))
        return cls(body[0], src, dst, spi, attributes, pop_alg, pop_len)

    def encode_body(self, ctx: Context) -> bytes:
        if len(self.spi) != KEK_SPI_SIZE:
            raise EncodeError(f"KEK SPI of {len(self.spi)} octets (must be {KEK_SPI_SIZE})")
        return b"".join(
            (
                _pack("!B", self.protocol),
                self.src.encode(1),
                self.dst.encode(1),
                self.spi,
                _pack("!HH", self.pop_algorithm, self.pop_key_length),
                encode_attributes(self.attributes),
            )
        )


# --- SA TEK (RFC 6407 section 5.4; RFC 8052 section 2.2) -------------------------------------------------------


@attrs.frozen
class IPsecTEK:
    """The ESP or AH TEK protocol-specific payload (RFC 6407 sections 5.4.1 and 5.4.2).

    ``protocol`` is the IP protocol of the traffic selectors (0: any), ``transform_id`` an ESP or AH transform
    (RFC 2407 section 4.4), ``spi`` four octets, ``attributes`` IPsec SA attributes (RFC 2407 section 4.5).
    ``wire_format`` is the layout the TEK was read in or is to be written in (``"rfc6407"``: two-octet ID Data Len;
    ``"rfc3547"``: one octet); None follows the context.  It is not part of equality.
    """

    protocol: int
    src: Selector
    dst: Selector
    transform_id: int
    spi: bytes
    attributes: tuple[Attribute, ...] = ()
    wire_format: str | None = attrs.field(default=None, eq=False)

    @classmethod
    def decode(cls, body, start: int) -> "IPsecTEK":
        """Read the TEK at ``body[start:]``, in RFC 6407's layout or else RFC 3547's."""
        try:
            return cls._decode_form(body, start, RFC6407)
        except DecodeError as first:
            try:
                return cls._decode_form(body, start, RFC3547)
            except DecodeError:
                raise first from None

    @classmethod
    def _decode_form(cls, body, start: int, form: str) -> "IPsecTEK":
        len_size = 2 if form == RFC6407 else 1
        _need(body, start, 1, "TEK Protocol")
        src, pos = Selector.decode_at(body, start + 1, len_size)
        dst, pos = Selector.decode_at(body, pos, len_size)
        _need(body, pos, 1 + TEK_SPI_SIZE, "TEK Transform ID and SPI")
        spi = bytes(body[pos + 1 : pos + 1 + TEK_SPI_SIZE])
        attributes = decode_attributes(body, pos + 1 + TEK_SPI_SIZE, len(body))
        return cls(body[start], src, dst, body[pos], spi, attributes, form)

    def encode(self, ctx: Context) -> bytes:
        form = self.wire_format or ctx.gdoi_format
        if form not in _FORMATS:
            raise EncodeError(f"unknown GDOI wire format {form!r}")
        if len(self.spi) != TEK_SPI_SIZE:
            raise EncodeError(f"TEK SPI of {len(self.spi)} octets (must be {TEK_SPI_SIZE})")
        len_size = 2 if form == RFC6407 else 1
        return b"".join(
            (
                _pack("!B", self.protocol),
                self.src.encode(len_size),
                self.dst.encode(len_size),
                _pack("!B", self.transform_id),
                self.spi,
                encode_attributes(self.attributes),
            )
        )


@attrs.frozen
class IEC61850TEK:
    """The IEC 61850 TEK protocol-specific payload (RFC 8052 section 2.2).

    ``oid`` is the DER-encoded OID naming the IEC 61850 message type, ``oid_payload`` its OID-specific payload
    (e.g. the traffic selector), then the 4-octet SPI (the key ID), Auth Alg, Enc Alg, Remaining Lifetime in
    seconds (0: none), and the SA Data Attributes (:class:`IEC61850Attr`).
    """

    oid: bytes
    oid_payload: bytes
    spi: bytes
    auth_alg: int
    enc_alg: int
    remaining_lifetime: int
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode(cls, body, start: int) -> "IEC61850TEK":
        _need(body, start, 1, "OID Length")
        pos = start + 1
        oid_len = body[start]
        _need(body, pos, oid_len + 2, "OID and OID-Specific Payload Length")
        oid = bytes(body[pos : pos + oid_len])
        pos += oid_len
        payload_len = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        _need(body, pos, payload_len + TEK_SPI_SIZE + 8, "OID-Specific Payload, SPI, algorithms and lifetime")
        oid_payload = bytes(body[pos : pos + payload_len])
        pos += payload_len
        spi = bytes(body[pos : pos + TEK_SPI_SIZE])
        auth, enc, lifetime = struct.unpack_from("!HHI", body, pos + TEK_SPI_SIZE)
        attributes = decode_attributes(body, pos + TEK_SPI_SIZE + 8, len(body))
        return cls(oid, oid_payload, spi, auth, enc, lifetime, attributes)

    def encode(self, ctx: Context) -> bytes:
        if len(self.oid) > 0xFF or len(self.oid_payload) > 0xFFFF:
            raise EncodeError("IEC 61850 OID or OID-specific payload too long")
        if len(self.spi) != TEK_SPI_SIZE:
            raise EncodeError(f"TEK SPI of {len(self.spi)} octets (must be {TEK_SPI_SIZE})")
        return b"".join(
            (
                _pack("!B", len(self.oid)),
                self.oid,
                _pack("!H", len(self.oid_payload)),
                self.oid_payload,
                self.spi,
                _pack("!HHI", self.auth_alg, self.enc_alg, self.remaining_lifetime),
                encode_attributes(self.attributes),
            )
        )


#: TEK Protocol-ID -> class of its protocol-specific payload; any other Protocol-ID keeps its payload as bytes.
_TEK_CLASSES = {TEKProtocol.IPSEC_ESP: IPsecTEK, TEKProtocol.IPSEC_AH: IPsecTEK, TEKProtocol.IEC61850: IEC61850TEK}


@register(DOI.GDOI)
@attrs.frozen
class SAT:
    """SA TEK payload: Protocol-ID and the TEK protocol-specific payload (RFC 6407 section 5.4).

    ``tek`` is an :class:`IPsecTEK` for ESP and AH, an :class:`IEC61850TEK` for IEC 61850, and the raw octets for
    any other Protocol-ID.
    """

    payload_type: ClassVar[int] = PayloadType.SAT
    protocol_id: int
    tek: IPsecTEK | IEC61850TEK | bytes

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "SAT":
        _need(body, 0, 1, "SA TEK Protocol-ID")
        tek_cls = _TEK_CLASSES.get(body[0])
        tek = tek_cls.decode(body, 1) if tek_cls else bytes(body[1:])
        return cls(body[0], tek)

    def encode_body(self, ctx: Context) -> bytes:
        tek_cls = _TEK_CLASSES.get(self.protocol_id)
        if isinstance(self.tek, bytes):
            tek = self.tek
        elif tek_cls is not None and isinstance(self.tek, tek_cls):
            tek = self.tek.encode(ctx)
        else:
            raise EncodeError(f"TEK {type(self.tek).__name__} under Protocol-ID {self.protocol_id}")
        return _pack("!B", self.protocol_id) + tek


# --- GAP (RFC 6407 section 5.7) ----------------------------------------------------------------------------------


@register(DOI.GDOI)
@attrs.frozen
class GAP:
    """Group Associated Policy payload: GAP attributes (RFC 6407 section 5.7, :class:`GAPAttr`)."""

    payload_type: ClassVar[int] = PayloadType.GAP
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "GAP":
        return cls(decode_attributes(body, 0, len(body)))

    def encode_body(self, ctx: Context) -> bytes:
        return encode_attributes(self.attributes)


# --- The GDOI SA payload (RFC 6407 section 5.2) ------------------------------------------------------------------

_GROUP_SA = struct.Struct("!IIHH")


@attrs.frozen
class GroupSA:
    """The GDOI Security Association payload (RFC 6407 section 5.2).

    DOI (4 octets, 2), Situation (4 octets, 0), SA Attribute Next Payload (2 octets) and RESERVED (2 octets), then
    the SA attribute ``payloads`` (SAK, GAP, SAT), which the SA's Payload Length covers.
    """

    payload_type: ClassVar[int] = PayloadType.SA
    doi: int = DOI.GDOI
    situation: int = 0
    payloads: tuple = ()

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "GroupSA":
        _need(body, 0, _GROUP_SA.size, "GDOI SA payload")
        doi, situation, first, reserved = _GROUP_SA.unpack_from(body, 0)
        if doi != DOI.GDOI:
            raise DecodeError(NotifyType.DOI_NOT_SUPPORTED, f"DOI {doi} in a GDOI SA", 0)
        if situation:
            raise DecodeError(NotifyType.SITUATION_NOT_SUPPORTED, f"situation {situation:#x}", 4)
        if reserved:
            raise DecodeError(_MALFORMED, "GDOI SA RESERVED is not zero", 10)
        payloads, _ = decode_chain(first, body, attrs.evolve(ctx, doi=DOI.GDOI), _GROUP_SA.size, len(body))
        for p in payloads:
            if p.payload_type not in SA_ATTRIBUTE_PAYLOADS:
                raise DecodeError(NotifyType.INVALID_PAYLOAD_TYPE, f"payload type {p.payload_type} inside a GDOI SA")
        return cls(doi, situation, payloads)

    def encode_body(self, ctx: Context) -> bytes:
        for p in self.payloads:
            if p.payload_type not in SA_ATTRIBUTE_PAYLOADS:
                raise EncodeError(f"payload type {p.payload_type} cannot go inside a GDOI SA")
        first = self.payloads[0].payload_type if self.payloads else 0
        return _pack("!IIHH", self.doi, self.situation, first, 0) + encode_chain(self.payloads, ctx)

    @property
    def kek(self) -> SAK | None:
        """The SAK payload, if any."""
        return next((p for p in self.payloads if isinstance(p, SAK)), None)

    @property
    def teks(self) -> tuple[SAT, ...]:
        """The SAT payloads, in order."""
        return tuple(p for p in self.payloads if isinstance(p, SAT))

    @property
    def gap(self) -> GAP | None:
        """The GAP payload, if any."""
        return next((p for p in self.payloads if isinstance(p, GAP)), None)


register_sa_group_form(DOI.GDOI, GroupSA)


# --- Key Download (RFC 6407 section 5.6) -------------------------------------------------------------------------

_KEY_PACKET = struct.Struct("!BBHB")


@attrs.frozen
class KeyPacket:
    """One key packet of a KD payload: KD Type, SPI and key packet attributes (RFC 6407 section 5.6).

    The KD Length on the wire counts the whole key packet, from KD Type to the last attribute.
    """

    kd_type: int
    spi: bytes
    attributes: tuple[Attribute, ...] = ()

    def encode(self) -> bytes:
        if len(self.spi) > 0xFF:
            raise EncodeError("key packet SPI longer than 255 octets")
        rest = self.spi + encode_attributes(self.attributes)
        return _pack("!BBHB", self.kd_type, 0, _KEY_PACKET.size + len(rest), len(self.spi)) + rest


@register(DOI.GDOI)
@attrs.frozen
class KD:
    """Key Download payload: Number of Key Packets (2), RESERVED (2), the key packets (RFC 6407 section 5.6)."""

    payload_type: ClassVar[int] = PayloadType.KD
    key_packets: tuple[KeyPacket, ...] = ()

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "KD":
        _need(body, 0, 4, "Key Download payload")
        count, reserved = struct.unpack_from("!HH", body, 0)
        if reserved:
            raise DecodeError(_MALFORMED, "Key Download RESERVED is not zero", 2)
        packets = []
        pos, end = 4, len(body)
        while pos < end:
            _need(body, pos, _KEY_PACKET.size, "key packet")
            kd_type, res, length, spi_size = _KEY_PACKET.unpack_from(body, pos)
            if res:
                raise DecodeError(_MALFORMED, "key packet RESERVED is not zero", pos + 1)
            if length < _KEY_PACKET.size + spi_size or length > end - pos:
                raise DecodeError(_MALFORMED, f"KD Length {length} is bad", pos + 2)
            spi_end = pos + _KEY_PACKET.size + spi_size
            attributes = decode_attributes(body, spi_end, pos + length)
            packets.append(KeyPacket(kd_type, bytes(body[spi_end - spi_size : spi_end]), attributes))
            pos += length
        if len(packets) != count:
            raise DecodeError(_MALFORMED, f"{count} key packets announced, {len(packets)} sent", 0)
        return cls(tuple(packets))

    def encode_body(self, ctx: Context) -> bytes:
        return _pack("!HH", len(self.key_packets), 0) + b"".join(p.encode() for p in self.key_packets)

    def packets_of(self, kd_type: int) -> tuple[KeyPacket, ...]:
        """The key packets of one KD Type, in order."""
        return tuple(p for p in self.key_packets if p.kd_type == kd_type)


# --- SEQ and POP ---------------------------------------------------------------------------------------------------


@register(DOI.GDOI)
@attrs.frozen
class SEQ:
    """Sequence Number payload: the 4-octet GROUPKEY-PUSH sequence number (RFC 6407 section 5.8)."""

    payload_type: ClassVar[int] = PayloadType.SEQ
    sequence_number: int

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "SEQ":
        if len(body) != 4:
            raise DecodeError(_MALFORMED, f"SEQ payload of {len(body)} octets (must be 4)")
        return cls(int.from_bytes(body, "big"))

    def encode_body(self, ctx: Context) -> bytes:
        return _pack("!I", self.sequence_number)


@register(DOI.GDOI)
@attrs.frozen
class POP:
    """Proof of Possession payload of RFC 3547 (section 5.7): the signature proving the key (POP Data).

    RFC 6407 dropped it; it is decoded so that RFC 3547 peers can be read and answered.
    """

    payload_type: ClassVar[int] = PayloadType.POP
    pop_data: bytes

    @classmethod
    def decode_body(cls, body, ctx: Context) -> "POP":
        if not body:
            raise DecodeError(_MALFORMED, "POP payload without POP data")
        return cls(bytes(body))

    def encode_body(self, ctx: Context) -> bytes:
        return self.pop_data


# --- The group identity (RFC 6407 section 5.1) -------------------------------------------------------------------


def group_id(number: int) -> Identification:
    """The ID payload naming a group by number: ID_KEY_ID, four octets in network order (RFC 6407 5.1.1)."""
    if not 0 <= number <= 0xFFFFFFFF:
        raise EncodeError(f"group number {number} does not fit four octets")
    return Identification.key_id(number)


def group_number(ident: Identification) -> int:
    """The group number of an ID_KEY_ID group identity, or DecodeError(INVALID_ID_INFORMATION)."""
    if ident.id_type != IDType.KEY_ID or len(ident.data) != 4:
        raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"ID type {ident.id_type} of {len(ident.data)} "
                          "octets is not a 4-octet ID_KEY_ID group number")
    return int.from_bytes(ident.data, "big")
