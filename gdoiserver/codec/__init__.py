"""The sans-IO ISAKMP codec: bytes to frozen payload objects and back.  Nothing here imports Twisted."""

from gdoiserver.codec import gdoi as _gdoi  # noqa: F401  (registers the GDOI payloads)
from gdoiserver.codec.attributes import Attribute, decode_attributes, encode_attributes
from gdoiserver.codec.constants import DOI, ExchangeType, Flags, NotifyType, PayloadType
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.message import HEADER_SIZE, NON_ESP_MARKER, Message, decode_header, decode_message, encode_message
from gdoiserver.codec.payload import REGISTRY, Context, UnknownPayload, decode_chain, encode_chain
from gdoiserver.codec.payloads import (
    KE,
    NATD,
    NATOA,
    SA,
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    Nonce,
    Notification,
    Proposal,
    Signature,
    Transform,
    VendorID,
)

__all__ = [
    "Attribute", "decode_attributes", "encode_attributes", "DOI", "ExchangeType", "Flags", "NotifyType",
    "PayloadType", "DecodeError", "EncodeError", "HEADER_SIZE", "NON_ESP_MARKER", "Message", "decode_header",
    "decode_message", "encode_message", "REGISTRY", "Context", "UnknownPayload", "decode_chain", "encode_chain",
    "KE", "NATD", "NATOA", "SA", "Certificate", "CertificateRequest", "Delete", "Hash", "Identification", "Nonce",
    "Notification", "Proposal", "Signature", "Transform", "VendorID",
]
