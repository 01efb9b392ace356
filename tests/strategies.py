"""Hypothesis strategies for the generic ISAKMP payloads and whole messages, valid by construction.

Every object drawn here encodes, and decodes back to itself under the IPsec DOI (``Context(doi=1)``): the
strategies keep to what the decoders accept (a nonce of 8 to 256 octets, ID data of the length its type fixes,
supported DOIs, SIT_IDENTITY_ONLY situations).  Other tests may reuse them, e.g. ``payloads()`` or ``messages()``.
"""

import ipaddress

from hypothesis import strategies as st

from gdoiserver.codec import (
    KE,
    NATD,
    NATOA,
    REGISTRY,
    SA,
    Attribute,
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    Message,
    Nonce,
    Notification,
    Proposal,
    Signature,
    Transform,
    UnknownPayload,
    VendorID,
)
from gdoiserver.codec.constants import DOI, ExchangeType, Flags, IDType

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
#: The DOIs the generic decoders support (RFC 2408 section 3.4; RFC 6407 section 5.1).
dois = st.sampled_from([int(d) for d in DOI])


def octets(min_size: int = 0, max_size: int = 48) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size)


# Data attributes (RFC 2408 section 3.3): an int value is TV, a bytes value TLV.
attributes = st.builds(Attribute, st.integers(0, 0x7FFF), st.one_of(u16, octets(0, 24)))
transforms = st.builds(Transform, u8, u8, st.lists(attributes, max_size=5).map(tuple))
proposals = st.builds(Proposal, u8, u8, octets(0, 16), st.lists(transforms, min_size=1, max_size=3).map(tuple))
#: SA payloads in the generic layout: situation 0 or SIT_IDENTITY_ONLY (RFC 2407 section 4.2).
sas = st.builds(SA, dois, st.sampled_from([0, 1]), st.lists(proposals, min_size=1, max_size=3).map(tuple))

_FIXED_ID_LENGTHS = {
    IDType.IPV4_ADDR: 4,
    IDType.IPV4_ADDR_SUBNET: 8,
    IDType.IPV4_ADDR_RANGE: 8,
    IDType.IPV6_ADDR: 16,
    IDType.IPV6_ADDR_SUBNET: 32,
    IDType.IPV6_ADDR_RANGE: 32,
}


@st.composite
def identifications(draw) -> Identification:
    """An ID payload (RFC 2407 section 4.6.2): data of the length a fixed type needs, else 1 or more octets."""
    id_type = draw(st.one_of(st.sampled_from(sorted(_FIXED_ID_LENGTHS)), u8))
    size = _FIXED_ID_LENGTHS.get(id_type)
    data = draw(octets(size, size) if size is not None else octets(1, 40))
    return Identification(id_type, draw(u8), draw(u16), data)


@st.composite
def deletes(draw) -> Delete:
    """A Delete payload: any number of SPIs of one size (RFC 2408 section 3.15); SPIs have at least one octet."""
    size = draw(st.sampled_from([4, 16]) | st.integers(1, 20))
    spis = draw(st.lists(octets(size, size), max_size=4))
    return Delete(draw(dois), draw(u8), tuple(spis), size)


@st.composite
def nat_oas(draw) -> NATOA:
    """A NAT-OA payload with an IPv4 or IPv6 address (RFC 3947 section 5.2)."""
    v6 = draw(st.booleans())
    packed = draw(octets(16, 16) if v6 else octets(4, 4))
    return NATOA.of(ipaddress.ip_address(packed))


@st.composite
def unknown_payloads(draw, doi: int = DOI.IPSEC) -> UnknownPayload:
    """A payload of a type no class is registered for under ``doi``: its body travels as it came."""
    known = REGISTRY.known_types(doi)
    ptype = draw(st.integers(1, 255).filter(lambda t: t not in known))
    return UnknownPayload(ptype, draw(octets(0, 32)))


notifications = st.builds(Notification, dois, u8, u16, octets(0, 16), octets(0, 24))

#: One strategy per generic payload, by name.
PAYLOADS = {
    "SA": sas,
    "P": proposals,
    "T": transforms,
    "KE": st.builds(KE, octets(1, 64)),
    "ID": identifications(),
    "CERT": st.builds(Certificate, u8, octets(1, 48)),
    "CR": st.builds(CertificateRequest, u8, octets(0, 32)),
    "HASH": st.builds(Hash, octets(1, 64)),
    "SIG": st.builds(Signature, octets(1, 64)),
    "NONCE": st.builds(Nonce, octets(8, 256)),
    "N": notifications,
    "D": deletes(),
    "VID": st.builds(VendorID, octets(1, 32)),
    "NAT-D": st.builds(NATD, octets(1, 64)),
    "NAT-OA": nat_oas(),
}


def payloads(doi: int = DOI.IPSEC) -> st.SearchStrategy:
    """Any generic payload, or one of a type unknown under ``doi``."""
    return st.one_of(*PAYLOADS.values(), unknown_payloads(doi))


def payload_chains(doi: int = DOI.IPSEC, max_size: int = 6) -> st.SearchStrategy[tuple]:
    return st.lists(payloads(doi), max_size=max_size).map(tuple)


cookies = octets(8, 8)
initiator_cookies = cookies.filter(any)  # RFC 2408 section 5.2: never zero
#: Exchange types other than GROUPKEY-PULL and -PUSH, where an SA of DOI 2 takes GDOI's own layout.
generic_exchange_types = u8.filter(lambda x: x not in (ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH))


@st.composite
def clear_messages(draw, doi: int = DOI.IPSEC) -> Message:
    """A message in the clear: any header flags but Encryption, generic payloads."""
    exchange = draw(u8)
    chain = draw(payload_chains(doi))
    if exchange in (ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH):
        # Keep to the generic SA layout: an SA of DOI 2 in these exchanges is GDOI's (RFC 6407 section 5.1).
        chain = tuple(SA(DOI.IPSEC, p.situation, p.proposals) if isinstance(p, SA) and p.doi == DOI.GDOI else p
                      for p in chain)
    flags = draw(st.sampled_from([0, 2, 4, 6]))  # Commit and Authentication Only, not Encryption
    return Message(draw(initiator_cookies), draw(cookies), exchange, int(flags), draw(u32), chain)


@st.composite
def encrypted_messages(draw) -> Message:
    """A message with the Encryption flag: an opaque body and the Next Payload of its first payload."""
    flags = Flags.ENCRYPTION | draw(st.sampled_from([0, Flags.COMMIT, Flags.AUTHENTICATION_ONLY]))
    return Message(draw(initiator_cookies), draw(cookies), draw(u8), int(flags), draw(u32),
                   ciphertext=draw(octets(1, 64)), next_payload=draw(u8))


def messages(doi: int = DOI.IPSEC) -> st.SearchStrategy[Message]:
    """Whole ISAKMP messages, in the clear or encrypted, that decode back to themselves."""
    return st.one_of(clear_messages(doi), encrypted_messages())
