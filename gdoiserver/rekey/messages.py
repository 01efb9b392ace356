"""The GROUPKEY-PUSH messages a key server sends (RFC 6407 section 4): a TEK rekey, a KEK rekey and an eviction,
each built once, signed once, and sent as the same datagram to every member.

    TEK rekey:  SEQ, D(old TEK SPIs) [, D(old KEK SPI)], SA(SAK?, GAP?, SAT+), KD(KEK packet?, TEK packets), SIG
    KEK rekey:  SEQ, D(old KEK SPI), SA(SAK), KD(KEK packet), SIG
    eviction:   SEQ, D(old KEK SPI), SA(SAK), KD(KEK packet without KEK_ALGORITHM_KEY, LKH packet), SIG

Every message goes under the KEK the members hold (a new KEK travels under the old one) with the SEQ the caller
reserved.  The KD of a TEK rekey has no SID packet: sender IDs belong to a member's registration and stay valid
across rekeys (RFC 6054 section 3: a new key restarts every counter).  When the group asks for acknowledgements,
the SAK carries KEK_ACK_REQUESTED (RFC 8263).
"""

import ipaddress

import attrs

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.gdoi import KD, SAK, GroupSA, KEKAttr
from gdoiserver.doi.gdoi import download
from gdoiserver.doi.gdoi.push import Signer, build_push, delete_kek, delete_teks
from gdoiserver.group.keys import Generation, Group, KEKKeys

#: RFC 8263: KEK_ACK_REQUESTED's value asking each member to acknowledge.
ACK_REQUESTED = 1


def rekey_sak(group: Group, kek: KEKKeys, now: float) -> SAK:
    """The SAK of ``kek`` as a PUSH announces it.  With unicast rekeys only, the destination is the unspecified
    address and port 0 (the same datagram goes to every member, each at its own address)."""
    rekey = group.policy.rekey
    anywhere = (str(ipaddress.ip_address(0) if rekey.source.version == 4 else ipaddress.IPv6Address(0)), 0)
    sak = download.kek_payload(kek, rekey, anywhere, now)
    if rekey.ack and all(a.type != KEKAttr.KEK_ACK_REQUESTED for a in sak.attributes):
        sak = attrs.evolve(sak, attributes=sak.attributes + (Attribute(KEKAttr.KEK_ACK_REQUESTED, ACK_REQUESTED),))
    return sak


def tek_rekey(group: Group, generation: Generation, under: KEKKeys, seq: int, now: float, *,
              new_kek: KEKKeys | None = None, retired=(), signer: Signer | None = None, rng) -> bytes:
    """The PUSH of ``generation`` under the KEK ``under``: it retires the TEKs of the ``retired`` generations
    and, with ``new_kek``, replaces the KEK too (SAK and KEK key packet of the new one, Delete of ``under``)."""
    deletes = []
    old_spis = tuple(t.spi for g in retired for t in g.teks)
    if old_spis:
        deletes.append(delete_teks(old_spis))
    if new_kek is not None:
        deletes.append(delete_kek(under.spi))
    inner = []
    if new_kek is not None:
        inner.append(rekey_sak(group, new_kek, now))
    if group.policy.gap is not None:
        inner.append(download.gap_payload(group.policy.gap))
    inner.extend(download.tek_payload(t, now) for t in generation.teks)
    kd = download.kd_payload(generation, new_kek, (), group.policy.sender_id_bits)
    return build_push(under, seq, GroupSA(payloads=tuple(inner)), kd, deletes, signer, rng=rng)


def kek_rekey(group: Group, under: KEKKeys, new_kek: KEKKeys, seq: int, now: float, *,
              signer: Signer | None = None, rng) -> bytes:
    """The PUSH that replaces the KEK ``under`` with ``new_kek`` (RFC 6407 section 4: SA with the SAK alone, KD
    with the new KEK's key packet)."""
    sa = GroupSA(payloads=(rekey_sak(group, new_kek, now),))
    kd = download.kd_payload(Generation(0, now, (), None), new_kek, (), group.policy.sender_id_bits)
    return build_push(under, seq, sa, kd, [delete_kek(under.spi)], signer, rng=rng)


def eviction(group: Group, under: KEKKeys, new_kek: KEKKeys, seq: int, kd: KD, now: float, *,
             signer: Signer | None = None, rng) -> bytes:
    """The PUSH that evicts a member: the SAK of ``new_kek`` and ``kd``, the Key Download that brings the new
    KEK through the LKH tree (RFC 6407 section 5.6.3) to every member but the evicted one."""
    sa = GroupSA(payloads=(rekey_sak(group, new_kek, now),))
    return build_push(under, seq, sa, kd, [delete_kek(under.spi)], signer, rng=rng)

