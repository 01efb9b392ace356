"""The ISAKMP header (RFC 2408 section 3.1) and whole messages.

A message whose Encryption bit is set keeps its body as ``ciphertext`` until the exchange that owns it decrypts
the body (:mod:`gdoiserver.codec.cipher`) and calls :meth:`Message.with_plaintext`.
"""

import struct

import attrs

from gdoiserver.codec.constants import DOI, Flags, NotifyType
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.payload import Context, context_for, decode_chain, encode_chain

HEADER = struct.Struct("!8s8sBBBBII")
HEADER_SIZE = HEADER.size  # 28
#: The four zero octets that mark an ISAKMP message on UDP 4500 (RFC 3948 section 2.2).
NON_ESP_MARKER = b"\0\0\0\0"

_ALL_FLAGS = int(Flags.ENCRYPTION | Flags.COMMIT | Flags.AUTHENTICATION_ONLY)
_E = int(Flags.ENCRYPTION)


@attrs.frozen
class Message:
    """One ISAKMP message.

    ``payloads`` is the decoded chain; for an encrypted message not yet decrypted it is empty and ``ciphertext``
    holds the body, with ``next_payload`` naming its first payload.  ``padding`` is what followed the last payload
    inside a decrypted body, kept so that re-encryption can reproduce the body exactly.
    """

    initiator_cookie: bytes
    responder_cookie: bytes
    exchange_type: int
    flags: int = 0
    message_id: int = 0
    payloads: tuple = ()
    major_version: int = 1
    minor_version: int = 0
    ciphertext: bytes | None = None
    next_payload: int = 0
    padding: bytes = b""

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & _E)

    @property
    def spi(self) -> bytes:
        """The pair of cookies: the ISAKMP SA's SPI (and, under GDOI, the KEK SPI)."""
        return self.initiator_cookie + self.responder_cookie

    def first_payload_type(self) -> int:
        if self.ciphertext is not None:
            return self.next_payload
        return self.payloads[0].payload_type if self.payloads else 0

    def body(self, ctx: Context | None = None) -> bytes:
        """The payload chain in clear (plus any kept padding): what encryption takes as plaintext."""
        return encode_chain(self.payloads, ctx or self.context()) + self.padding

    def context(self, doi: int = DOI.IPSEC) -> Context:
        return context_for(doi, self.exchange_type)

    def encode(self, ctx: Context | None = None) -> bytes:
        """The message on the wire.  The header's length and Next Payload follow from the body."""
        body = self.ciphertext if self.ciphertext is not None else self.body(ctx)
        return self.header_bytes(len(body)) + body

    def header_bytes(self, body_length: int) -> bytes:
        try:
            return HEADER.pack(
                self.initiator_cookie,
                self.responder_cookie,
                self.first_payload_type(),
                (self.major_version << 4) | self.minor_version,
                self.exchange_type,
                self.flags,
                self.message_id,
                HEADER_SIZE + body_length,
            )
        except struct.error as e:
            raise EncodeError(f"header field out of range: {e}") from None

    def with_plaintext(self, plaintext: bytes, doi: int = DOI.IPSEC, ctx: Context | None = None) -> "Message":
        """This message with its decrypted body decoded; octets after the last payload are kept as padding."""
        ctx = ctx or context_for(doi, self.exchange_type)
        payloads, end = decode_chain(self.next_payload, plaintext, ctx, allow_trailing=True)
        return attrs.evolve(self, payloads=payloads, ciphertext=None, padding=bytes(plaintext[end:]))


def decode_header(data: bytes) -> tuple:
    """Check the fixed header (RFC 2408 section 5.2) and return its fields as a tuple.

    (icookie, rcookie, next_payload, version, exchange_type, flags, message_id, length)
    """
    if len(data) < HEADER_SIZE:
        raise DecodeError(NotifyType.PAYLOAD_MALFORMED, f"{len(data)} octets is shorter than the ISAKMP header")
    fields = HEADER.unpack_from(data, 0)
    icookie, _, _, version, _, flags, _, length = fields
    if version >> 4 != 1:
        raise DecodeError(NotifyType.INVALID_MAJOR_VERSION, f"major version {version >> 4}", 17)
    if version & 0x0F != 0:
        raise DecodeError(NotifyType.INVALID_MINOR_VERSION, f"minor version {version & 0x0F}", 17)
    if flags & ~_ALL_FLAGS:
        raise DecodeError(NotifyType.INVALID_FLAGS, f"flags {flags:#04x}", 19)
    if length != len(data):
        raise DecodeError(NotifyType.UNEQUAL_PAYLOAD_LENGTHS, f"header says {length} octets, datagram has {len(data)}", 24)
    if icookie == b"\0" * 8:
        raise DecodeError(NotifyType.INVALID_COOKIE, "initiator cookie is zero", 0)
    return fields


def decode_message(data: bytes, doi: int = DOI.IPSEC, ctx: Context | None = None) -> Message:
    """Decode one ISAKMP message, or raise :class:`DecodeError` carrying the Notify type to answer with.

    ``doi`` picks the registry row for the payloads (the DOI of the SA the message is under).
    """
    icookie, rcookie, nxt, version, xchg, flags, mid, _ = decode_header(data)
    if flags & _E:
        if len(data) == HEADER_SIZE:
            raise DecodeError(NotifyType.PAYLOAD_MALFORMED, "encrypted message with no body", HEADER_SIZE)
        return Message(icookie, rcookie, xchg, flags, mid, (), version >> 4, version & 15, bytes(data[HEADER_SIZE:]), nxt)
    if ctx is None:
        ctx = context_for(doi, xchg)
    payloads, _ = decode_chain(nxt, data, ctx, HEADER_SIZE)
    return Message(icookie, rcookie, xchg, flags, mid, payloads, version >> 4, version & 15)


def encode_message(message: Message, ctx: Context | None = None) -> bytes:
    return message.encode(ctx)
