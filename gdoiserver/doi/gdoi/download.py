"""What the key server sends a member: the group's policy (the SA payload of GROUPKEY-PULL message 2) and its keys
(the KD payload of message 4), built from a group's policy and its current key generation (RFC 6407 section 5).

Lifetimes go out as the seconds that remain at ``now``, so that a member's SAs end with the group's.
"""

import ipaddress

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import IPsecAttr, LifeType
from gdoiserver.codec.gdoi import (
    GAP,
    KD,
    SAK,
    SAT,
    GAPAttr,
    GroupSA,
    IPsecTEK,
    KEKAlgorithm,
    KEKAttr,
    KEKKeyAttr,
    KeyPacket,
    KeyPacketType,
    Selector,
    SIDAttr,
    TEKKeyAttr,
    TEKProtocol,
)
from gdoiserver.doi.gdoi import lkh_wire
from gdoiserver.group.keys import Generation, Group, KEKKeys, TEKKeys, remaining
from gdoiserver.group.policy import SIG_HASHES, GAPPolicy, IPNetwork, KEKPolicy, RekeyTransport

UDP = 17
#: KEK_ACK_REQUESTED's value asking each member to acknowledge every rekey (RFC 8263).
ACK_REQUESTED = 1
#: Octets of each SID_VALUE attribute (RFC 6054 section 5; our choice, see docs/wire-format.md).
SID_VALUE_SIZE = 4


def selector(network: IPNetwork, port: int = 0) -> Selector:
    """ID_IPV4_ADDR/ID_IPV6_ADDR for a single address, ID_IPV4_ADDR_SUBNET/ID_IPV6_ADDR_SUBNET otherwise."""
    if network.prefixlen == network.max_prefixlen:
        return Selector.of(network.network_address, port)
    return Selector.of(network, port)


def tek_payload(tek: TEKKeys, now: float) -> SAT:
    """The SA TEK payload of one ESP TEK (RFC 6407 section 5.4.1; attributes of RFC 2407 section 4.5)."""
    p = tek.policy
    attrs = [
        Attribute(IPsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
        Attribute.number(IPsecAttr.SA_LIFE_DURATION, remaining(tek.expires_at, now)),
        Attribute(IPsecAttr.ENCAPSULATION_MODE, p.mode),
    ]
    if p.auth_algorithm is not None:
        attrs.append(Attribute(IPsecAttr.AUTHENTICATION_ALGORITHM, p.auth_algorithm))
    attrs.append(Attribute(IPsecAttr.KEY_LENGTH, p.key_bits))
    if p.address_preservation is not None:
        attrs.append(Attribute(IPsecAttr.ADDRESS_PRESERVATION, p.address_preservation))
    if p.direction is not None:
        attrs.append(Attribute(IPsecAttr.SA_DIRECTION, p.direction))
    s = p.selector
    esp = IPsecTEK(s.protocol, selector(s.source, s.source_port), selector(s.destination, s.destination_port),
                   p.transform_id, tek.spi, tuple(attrs))
    return SAT(TEKProtocol.IPSEC_ESP, esp)


def kek_payload(kek: KEKKeys, rekey: RekeyTransport, member_address: tuple[str, int], now: float) -> SAK:
    """The SA KEK payload (RFC 6407 section 5.3): rekeys come over UDP from the key server to the multicast group,
    or, with unicast rekeys only, to the member where it registered from.  With ``rekey.ack`` the SAK asks for
    acknowledgements (RFC 8263: KEK_ACK_REQUESTED)."""
    p: KEKPolicy = kek.policy
    src = Selector.of(rekey.source, rekey.source_port)
    if rekey.multicast_address is not None:
        dst = Selector.of(rekey.multicast_address, rekey.multicast_port)
    else:
        dst = Selector.of(ipaddress.ip_address(member_address[0]), member_address[1])
    attrs = [
        Attribute(KEKAttr.KEK_ALGORITHM, KEKAlgorithm.KEK_ALG_AES),
        Attribute(KEKAttr.KEK_KEY_LENGTH, p.key_bits),
        Attribute(KEKAttr.KEK_KEY_LIFETIME, remaining(kek.expires_at, now).to_bytes(4, "big")),
        Attribute(KEKAttr.SIG_HASH_ALGORITHM, SIG_HASHES[p.signature_hash]),
        Attribute(KEKAttr.SIG_ALGORITHM, p.signature_algorithm),
        Attribute(KEKAttr.SIG_KEY_LENGTH, p.signature_key_bits),
    ]
    if rekey.ack:
        attrs.append(Attribute(KEKAttr.KEK_ACK_REQUESTED, ACK_REQUESTED))
    return SAK(UDP, src, dst, kek.spi, tuple(attrs))


def gap_payload(gap: GAPPolicy) -> GAP:
    return GAP((Attribute(GAPAttr.ACTIVATION_TIME_DELAY, gap.activation_delay),
                Attribute(GAPAttr.DEACTIVATION_TIME_DELAY, gap.deactivation_delay)))


def sa_payload(group: Group, generation: Generation, kek: KEKKeys | None, member_address: tuple[str, int],
               now: float) -> GroupSA:
    """SA(SAK?, GAP?, SAT+) in that order (RFC 6407 section 3.2; the order `gdoid` sends too)."""
    policy = group.policy
    inner = []
    if kek is not None:
        inner.append(kek_payload(kek, policy.rekey, member_address, now))
    if policy.gap is not None:
        inner.append(gap_payload(policy.gap))
    inner.extend(tek_payload(t, now) for t in generation.teks)
    return GroupSA(payloads=tuple(inner))


def kd_payload(generation: Generation, kek: KEKKeys | None, sender_ids: tuple[int, ...], sid_bits: int,
               lkh_path=None) -> KD:
    """The Key Download (RFC 6407 section 5.6): the KEK and its signature key, the member's LKH keys (its leaf's
    and its ancestors' below the root, :class:`gdoiserver.group.lkh.NodeKey` values, leaf first: an LKH key
    packet under the KEK's SPI, RFC 6407 section 5.6.3), each TEK's keys, and the member's sender IDs (RFC 6054
    section 5: a SID key packet with no SPI)."""
    packets = []
    if kek is not None:
        packets.append(KeyPacket(KeyPacketType.KEK, kek.spi, (
            Attribute(KEKKeyAttr.KEK_ALGORITHM_KEY, kek.key),
            Attribute(KEKKeyAttr.SIG_ALGORITHM_KEY, kek.policy.public_key_der),
        )))
        if lkh_path:
            packets.append(lkh_wire.download_packet(kek.spi, lkh_path))
    elif lkh_path:
        raise ValueError("LKH keys without a KEK")
    for tek in generation.teks:
        keys = [Attribute(TEKKeyAttr.TEK_ALGORITHM_KEY, tek.encryption_key)]
        if tek.integrity_key:
            keys.append(Attribute(TEKKeyAttr.TEK_INTEGRITY_KEY, tek.integrity_key))
        packets.append(KeyPacket(KeyPacketType.TEK, tek.spi, tuple(keys)))
    if sender_ids:
        sids = [Attribute(SIDAttr.NUMBER_OF_SID_BITS, sid_bits)]
        sids += [Attribute(SIDAttr.SID_VALUE, sid.to_bytes(SID_VALUE_SIZE, "big")) for sid in sender_ids]
        packets.append(KeyPacket(KeyPacketType.SID, b"", tuple(sids)))
    return KD(tuple(packets))
