"""JSON-able views of decoded ISAKMP messages and payloads.

Payloads are read generically from their attrs fields, so any payload class registered with the codec (the GDOI
payloads included) shows without code here: octets become hex strings, nested payloads and tuples are walked, data
attributes become ``{"type", "value", "form"}`` and a payload's type is shown by its RFC name.
"""

import enum

import attrs

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import DOI, ExchangeType, Flags, PayloadType
from gdoiserver.codec.message import Message

#: Exchanges 32 and 33 under GDOI (RFC 6407 sections 3 and 4); under the IPsec DOI they are Quick Mode and New
#: Group Mode (RFC 2409 section 5).
_GDOI_EXCHANGES = {ExchangeType.GROUPKEY_PULL: "GROUPKEY_PULL", ExchangeType.GROUPKEY_PUSH: "GROUPKEY_PUSH"}
_KNOWN_FLAGS = sum(int(f) for f in Flags)


def enum_name(enum_class: type[enum.Enum], number: int) -> str | int:
    """The name ``enum_class`` gives ``number``, or the number itself when it has none."""
    try:
        return enum_class(number).name
    except ValueError:
        return number


def payload_type_name(payload_type: int) -> str | int:
    return enum_name(PayloadType, payload_type)


def exchange_name(exchange_type: int, doi: int = DOI.IPSEC) -> str | int:
    """The exchange type's name; 32 and 33 read as GROUPKEY-PULL and GROUPKEY-PUSH under GDOI (DOI 2)."""
    if doi == DOI.GDOI and exchange_type in _GDOI_EXCHANGES:
        return _GDOI_EXCHANGES[exchange_type]
    return enum_name(ExchangeType, exchange_type)


def flag_names(flags: int) -> list:
    """The names of the header flags set (RFC 2408 section 3.1); a bit with no name is given as its number."""
    names = [f.name for f in Flags if flags & f]
    rest = flags & ~_KNOWN_FLAGS
    return names + ([rest] if rest else [])


def attribute_view(a: Attribute) -> dict:
    """A data attribute with its form: TV (a 16-bit number) or TLV (octets, shown as hex)."""
    if a.is_tv:
        return {"type": a.type, "value": a.value, "form": "TV"}
    return {"type": a.type, "value": a.value.hex(), "form": "TLV"}


def value_view(value):
    """Any field value made JSON-able."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Attribute):
        return attribute_view(value)
    if value is None or isinstance(value, (bool, float, str)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum reads as the plain number that a decoded payload holds
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (tuple, list)):
        return [value_view(v) for v in value]
    if isinstance(value, dict):
        return {str(k): value_view(v) for k, v in value.items()}
    if attrs.has(type(value)):
        return payload_view(value)
    return str(value)  # addresses and networks


def payload_view(payload) -> dict:
    """A payload (or any attrs object inside one) as a dict of its fields, led by its payload type's name."""
    out = {}
    ptype = getattr(payload, "payload_type", None)
    if ptype is not None:
        out["payload"] = payload_type_name(ptype)
    for field in attrs.fields(type(payload)):
        if field.name != "payload_type":
            out[field.name] = value_view(getattr(payload, field.name))
    return out


def message_view(message: Message, doi: int = DOI.IPSEC) -> dict:
    """The header fields, the payload chain and the decoded payloads of ``message``, read under ``doi``.

    An encrypted body is reported by the type of its first payload (the header's Next Payload) and its length.
    """
    out = {
        "initiator_cookie": message.initiator_cookie.hex(),
        "responder_cookie": message.responder_cookie.hex(),
        "version": f"{message.major_version}.{message.minor_version}",
        "exchange": exchange_name(message.exchange_type, doi),
        "exchange_type": message.exchange_type,
        "flags": flag_names(message.flags),
        "message_id": message.message_id,
    }
    if message.ciphertext is not None:
        out["chain"] = [payload_type_name(message.next_payload)]
        out["encrypted"] = {"next_payload": payload_type_name(message.next_payload), "length": len(message.ciphertext)}
        return out
    out["chain"] = [payload_type_name(p.payload_type) for p in message.payloads]
    out["payloads"] = [payload_view(p) for p in message.payloads]
    if message.padding:
        out["padding"] = message.padding.hex()
    return out
