"""The ``[[groups]]`` tables of the configuration file, checked and turned into :class:`GroupPolicy` objects.

The schema is the attrs classes below, read with the checks of :mod:`gdoiserver.config`, so that an error names the
file, the dotted key, the value and what was expected in the same way.  ``Config.groups`` holds the result.

    [[groups]]
    name = "video"
    number = 1234                       # ID_KEY_ID group number; and/or oid = "1.3.6.1.4.1.99999.1"
    pfs = "allow"                       # "allow", "require" or "refuse" KE payloads in GROUPKEY-PULL
    sender_id_bits = 16                 # RFC 6054, for counter-mode TEKs
    max_sender_ids = 16                 # per registration

    [[groups.members]]
    id = "gm1.example.org"              # an exact IKE identity (id_type as in [[peers]])
    [[groups.members]]
    pattern = "*.site1.example.org"     # a wildcard over the identity (optional id_type)
    [[groups.members]]
    certificate_dns = "*.members.example.org"   # the member's certificate must be valid for this name

    [[groups.teks]]
    name = "video-v4"
    transform = "aes-gcm"               # "aes-cbc" and "aes-ctr" need integrity = "hmac-sha256" | 384 | 512
    key_bits = 256
    source = "any"                      # "any", an address or a network
    destination = "239.1.1.1"
    lifetime = 3600

    [groups.kek]
    signature_key = "/etc/gdoiserver/ks-signing.key"   # RSA or ECDSA, mode 0600
    key_bits = 128
    lifetime = 86400

    [groups.rekey]
    source = "192.0.2.1"                # the key server's address: rekeys come from it
    multicast_address = "239.192.0.1"
    ttl = 8
    unicast = false

    [groups.gap]
    activation_delay = 30
    deactivation_delay = 30
"""

import ipaddress

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gdoiserver.codec.constants import EncapsulationMode, IDType
from gdoiserver.codec.gdoi import AddressPreservation, SADirection
from gdoiserver.config import (
    ID_TYPES,
    Invalid,
    _identification,
    _private_file,
    _show,
    _wrong,
    array_of,
    boolean,
    integer,
    ip_address,
    number_in,
    one_of,
    seconds,
    setting,
    table,
    text,
)
from gdoiserver.group.policy import (
    INTEGRITY,
    PFS,
    SIG_HASHES,
    CertificateAttributes,
    ExactIdentity,
    GAPPolicy,
    GroupPolicy,
    IdentityPattern,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
    oid_der,
    signature_algorithm,
)

_MODES = {"tunnel": EncapsulationMode.TUNNEL, "transport": EncapsulationMode.TRANSPORT}
_PRESERVATION = {"none": AddressPreservation.NONE, "source": AddressPreservation.SOURCE_ONLY,
                 "destination": AddressPreservation.DESTINATION_ONLY,
                 "both": AddressPreservation.SOURCE_AND_DESTINATION}
#: ID types a pattern may be restricted to: those with a text form.
_PATTERN_ID_TYPES = (IDType.FQDN, IDType.USER_FQDN, IDType.IPV4_ADDR, IDType.IPV6_ADDR)
_DIRECTIONS = {"sender": SADirection.SENDER_ONLY, "receiver": SADirection.RECEIVER_ONLY,
               "symmetric": SADirection.SYMMETRIC}


def oid(value, key) -> str:
    """A dotted OID (RFC 8052's ID_OID names a group by one)."""
    dotted = text(value, key)
    try:
        oid_der(dotted)
    except ValueError:
        raise _wrong(key, value, "an OID in dotted form such as 1.3.6.1.4.1.99999.1") from None
    return dotted


def selector_address(value, key) -> str:
    """"any", an IP address or a network in CIDR form (no host bits); kept as written, read with the other end."""
    s = text(value, key)
    if s == "any":
        return s
    try:
        ipaddress.ip_network(s, strict=True)
    except ValueError:
        raise _wrong(key, value, '"any", an address such as 239.1.1.1 or ff3e::1, or a network such as '
                     "10.1.0.0/16 (no host bits)") from None
    return s


@attrs.frozen
class MemberEntry:
    """Who may join: exactly one of ``id`` (an exact identity), ``pattern`` (a wildcard over it) or the
    ``certificate_*`` attributes."""

    id: str | None = setting(text, default=None)
    id_type: str | None = setting(one_of(*ID_TYPES), default=None)
    pattern: str | None = setting(text, default=None)
    certificate_dns: str | None = setting(text, default=None)
    certificate_ip: str | None = setting(ip_address, default=None)


@attrs.frozen
class TEKEntry:
    name: str = setting(text)
    transform: str = setting(one_of(*(t.value for t in TEKTransform)))
    destination: str = setting(selector_address)
    source: str = setting(selector_address, default="any")
    key_bits: int = setting(number_in(128, 192, 256), default=128)
    integrity: str | None = setting(one_of(*INTEGRITY), default=None)
    icv_bits: int = setting(number_in(64, 96, 128), default=128)
    protocol: int = setting(integer(0, 255), default=0)
    source_port: int = setting(integer(0, 65535), default=0)
    destination_port: int = setting(integer(0, 65535), default=0)
    lifetime: int = setting(integer(60, 7 * 86400), default=3600)
    mode: str = setting(one_of(*_MODES), default="tunnel")
    address_preservation: str | None = setting(one_of(*_PRESERVATION), default=None)
    direction: str | None = setting(one_of(*_DIRECTIONS), default=None)


@attrs.frozen
class KEKEntry:
    signature_key: str = setting(text)
    algorithm: str = setting(one_of("aes-cbc"), default="aes-cbc")
    key_bits: int = setting(number_in(128, 192, 256), default=128)
    signature_hash: str = setting(one_of(*SIG_HASHES), default="sha256")
    lifetime: int = setting(integer(300, 30 * 86400), default=86400)
    lkh_depth: int = setting(integer(1, 24), default=16)


@attrs.frozen
class RekeyEntry:
    source: str = setting(ip_address)
    source_port: int = setting(integer(1, 65535), default=848)
    multicast_address: str | None = setting(ip_address, default=None)
    multicast_port: int = setting(integer(1, 65535), default=848)
    ttl: int = setting(integer(1, 255), default=8)
    unicast: bool = setting(boolean, default=False)
    interface: str | None = setting(text, default=None)
    retransmits: int = setting(integer(0, 10), default=2)
    retransmit_interval: float = setting(seconds(0.1, 3600), default=5.0)
    ack: bool = setting(boolean, default=False)
    stale_after: int = setting(integer(1, 1000), default=3)
    lead_time: float | None = setting(seconds(1, 7 * 86400), default=None)
    kek_lead_time: float | None = setting(seconds(1, 30 * 86400), default=None)


@attrs.frozen
class GAPEntry:
    activation_delay: int = setting(integer(0, 65535), default=0)
    deactivation_delay: int = setting(integer(0, 65535), default=0)


def _tek_name(t: TEKEntry) -> str:
    return f"name {_show(t.name)}"


@attrs.frozen
class GroupEntry:
    name: str = setting(text)
    members: tuple[MemberEntry, ...] = setting(array_of(table(MemberEntry), min_items=1))
    teks: tuple[TEKEntry, ...] = setting(array_of(table(TEKEntry), min_items=1, identity=_tek_name))
    number: int | None = setting(integer(0, 0xFFFFFFFF), default=None)
    oid: str | None = setting(oid, default=None)
    kek: KEKEntry | None = setting(table(KEKEntry), default=None)
    rekey: RekeyEntry | None = setting(table(RekeyEntry), default=None)
    gap: GAPEntry | None = setting(table(GAPEntry), default=None)
    pfs: str = setting(one_of(*(p.value for p in PFS)), default="allow")
    sender_id_bits: int = setting(integer(1, 32), default=16)
    max_sender_ids: int = setting(integer(1, 1024), default=16)


def groups(value, key: str) -> tuple[GroupPolicy, ...]:
    """The check of the ``groups`` array: every entry as a :class:`GroupPolicy`; names and group IDs unique."""
    entries = array_of(table(GroupEntry))(value, key)
    policies: list[GroupPolicy] = []
    names: dict[str, int] = {}
    ids: dict = {}
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if entry.name in names:
            raise Invalid(f"{where}.name", f"{_show(entry.name)} duplicates {key}[{names[entry.name]}].name")
        names[entry.name] = i
        policy = group_policy(entry, where)
        for gid in policy.ids:
            if gid in ids:
                field = "number" if gid.number is not None else "oid"
                raise Invalid(f"{where}.{field}", f"{gid} also names {key}[{ids[gid]}]")
            ids[gid] = i
        policies.append(policy)
    return tuple(policies)


def group_policy(entry: GroupEntry, key: str) -> GroupPolicy:
    """One ``[[groups]]`` entry as a policy; :class:`Invalid` names the key at fault."""
    if entry.number is None and entry.oid is None:
        raise Invalid(key, "has neither number nor oid: one of them names the group")
    if entry.kek is not None and entry.rekey is None:
        raise Invalid(f"{key}.rekey", "missing: a group with a kek needs a [groups.rekey] table saying where "
                      "rekeys go")
    members = tuple(_member(m, f"{key}.members[{i}]") for i, m in enumerate(entry.members))
    teks = tuple(_tek(t, f"{key}.teks[{i}]") for i, t in enumerate(entry.teks))
    gap = None if entry.gap is None else GAPPolicy(entry.gap.activation_delay, entry.gap.deactivation_delay)
    return GroupPolicy(
        name=entry.name,
        teks=teks,
        members=members,
        number=entry.number,
        oid=entry.oid,
        kek=None if entry.kek is None else _kek(entry.kek, f"{key}.kek"),
        rekey=None if entry.rekey is None else _rekey(entry.rekey, f"{key}.rekey"),
        gap=gap,
        pfs=PFS(entry.pfs),
        sender_id_bits=entry.sender_id_bits,
        max_sender_ids=entry.max_sender_ids,
    )


def _member(m: MemberEntry, key: str):
    given = [name for name in ("id", "pattern") if getattr(m, name) is not None]
    if m.certificate_dns is not None or m.certificate_ip is not None:
        given.append("certificate_dns/certificate_ip")
    if len(given) != 1:
        raise Invalid(key, "needs exactly one of id, pattern, or certificate_dns/certificate_ip (got "
                      + (", ".join(given) or "none") + ")")
    if m.id is not None:
        return ExactIdentity(_identification(m.id, m.id_type, key))
    if m.pattern is not None:
        if m.id_type is not None and ID_TYPES[m.id_type] not in _PATTERN_ID_TYPES:
            raise _wrong(f"{key}.id_type", m.id_type, '"fqdn", "user_fqdn", "ipv4_addr" or "ipv6_addr" with a pattern')
        return IdentityPattern(m.pattern, None if m.id_type is None else int(ID_TYPES[m.id_type]))
    if m.id_type is not None:
        raise Invalid(f"{key}.id_type", "is set without id or pattern")
    return CertificateAttributes(m.certificate_dns, m.certificate_ip)


def _network(value: str, other: str):
    if value != "any":
        return ipaddress.ip_network(value)
    version = 6 if other != "any" and ipaddress.ip_network(other).version == 6 else 4
    return ipaddress.ip_network("::/0" if version == 6 else "0.0.0.0/0")


def _tek(t: TEKEntry, key: str) -> TEKPolicy:
    transform = TEKTransform(t.transform)
    if transform == TEKTransform.AES_GCM and t.integrity is not None:
        raise _wrong(f"{key}.integrity", t.integrity, 'no integrity with "aes-gcm": it authenticates by itself '
                     "(RFC 4106)")
    if transform != TEKTransform.AES_GCM and t.integrity is None:
        raise Invalid(f"{key}.integrity", f"missing: {_show(t.transform)} needs one of "
                      + ", ".join(_show(i) for i in INTEGRITY))
    source, destination = _network(t.source, t.destination), _network(t.destination, t.source)
    if source.version != destination.version:
        raise _wrong(f"{key}.destination", t.destination, f"an IPv{source.version} address or network, as the source")
    selector = TrafficSelector(source, destination, t.protocol, t.source_port, t.destination_port)
    return TEKPolicy(
        name=t.name,
        transform=transform,
        selector=selector,
        key_bits=t.key_bits,
        integrity=t.integrity,
        icv_bits=t.icv_bits,
        lifetime=t.lifetime,
        mode=_MODES[t.mode],
        address_preservation=None if t.address_preservation is None else _PRESERVATION[t.address_preservation],
        direction=None if t.direction is None else _DIRECTIONS[t.direction],
    )


def load_signature_key(path: str, key: str):
    """The KEK signature key from a PEM or DER file that only its owner may read (mode 0600 or stricter)."""
    data = _private_file(path, key)
    try:
        if b"-----BEGIN" in data:
            private = serialization.load_pem_private_key(data, password=None)
        else:
            private = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise Invalid(key, f"{_show(path)} is encrypted: give the key unencrypted, mode 0600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise Invalid(key, f"{_show(path)} is not a PEM or DER private key") from None
    try:
        signature_algorithm(private)
    except ValueError as e:
        raise Invalid(key, f"{_show(path)}: {e}") from None
    return private


def _kek(k: KEKEntry, key: str) -> KEKPolicy:
    private = load_signature_key(k.signature_key, f"{key}.signature_key")
    return KEKPolicy(private, k.key_bits, k.signature_hash, k.lifetime, k.lkh_depth)


def _rekey(r: RekeyEntry, key: str) -> RekeyTransport:
    source = ipaddress.ip_address(r.source)
    group = None if r.multicast_address is None else ipaddress.ip_address(r.multicast_address)
    if group is None and not r.unicast:
        raise Invalid(key, "sends rekeys nowhere: set multicast_address, unicast = true, or both")
    if group is not None:
        if not group.is_multicast:
            raise _wrong(f"{key}.multicast_address", r.multicast_address, "a multicast address (224.0.0.0/4 or "
                         "ff00::/8)")
        if group.version != source.version:
            raise _wrong(f"{key}.multicast_address", r.multicast_address,
                         f"an IPv{source.version} multicast address, as the source")
    return RekeyTransport(source, r.source_port, group, r.multicast_port, r.ttl, r.unicast, r.interface,
                          r.retransmits, r.retransmit_interval, r.ack, r.stale_after, r.lead_time, r.kek_lead_time)

