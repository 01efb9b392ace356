"""The group member's side of what GROUPKEY-PULL delivers: its policy (:class:`MemberPolicy`), the checks of the SA
payload of message 2 (:func:`read_policy`) and of the keys of message 4 (:func:`read_keys`), and the typed result,
:class:`GroupRegistration`, whose key material never shows in a repr.

Everything is refused that the member cannot use exactly as sent: an unknown transform or attribute, keys of the
wrong length, a KD key packet for an SPI the SA did not announce, a signature key that is not the algorithm and
size the SAK names (RFC 6407 sections 5.3-5.6).  A refusal is :class:`RegistrationRefused` with the Notify type
that names the problem (RFC 2408 section 3.14.1).
"""

import ipaddress

import attrs
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gdoiserver.codec.attributes import attribute_map
from gdoiserver.codec.constants import (
    EncapsulationMode,
    ESPTransformID,
    IDType,
    IPsecAttr,
    LifeType,
    NotifyType,
    PayloadType,
)
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import (
    KD,
    SAK,
    GAPAttr,
    GroupSA,
    IPsecTEK,
    KEKAlgorithm,
    KEKAttr,
    KEKKeyAttr,
    KeyPacketType,
    LKHKeyAttr,
    Selector,
    SIDAttr,
    SigAlgorithm,
    SigHashAlgorithm,
    TEKKeyAttr,
    TEKProtocol,
)
from gdoiserver.crypto import certs
from gdoiserver.doi.gdoi import lkh_wire
from gdoiserver.group import lkh
from gdoiserver.group.policy import (
    COUNTER_MODE_TRANSFORMS,
    INTEGRITY_KEY_SIZES,
    GroupId,
    encryption_key_size,
    signature_algorithm,
)

#: ESP transforms a member accepts unless told otherwise.
DEFAULT_TRANSFORMS = frozenset({ESPTransformID.AES_CBC, ESPTransformID.AES_CTR, ESPTransformID.AES_GCM_8,
                                ESPTransformID.AES_GCM_12, ESPTransformID.AES_GCM_16})
DEFAULT_INTEGRITY = frozenset(INTEGRITY_KEY_SIZES)
_GCM = frozenset({ESPTransformID.AES_GCM_8, ESPTransformID.AES_GCM_12, ESPTransformID.AES_GCM_16})
#: RFC 2407 section 4.5: an SA without a lifetime lasts 28800 seconds.
DEFAULT_LIFETIME = 28800
_TEK_ATTRS = frozenset({IPsecAttr.SA_LIFE_TYPE, IPsecAttr.SA_LIFE_DURATION, IPsecAttr.ENCAPSULATION_MODE,
                        IPsecAttr.AUTHENTICATION_ALGORITHM, IPsecAttr.KEY_LENGTH, IPsecAttr.ADDRESS_PRESERVATION,
                        IPsecAttr.SA_DIRECTION})
_KEK_ATTRS = frozenset({KEKAttr.KEK_ALGORITHM, KEKAttr.KEK_KEY_LENGTH, KEKAttr.KEK_KEY_LIFETIME,
                        KEKAttr.SIG_HASH_ALGORITHM, KEKAttr.SIG_ALGORITHM, KEKAttr.SIG_KEY_LENGTH,
                        KEKAttr.KEK_ACK_REQUESTED})
_SIG_HASHES = frozenset({SigHashAlgorithm.SIG_HASH_SHA256, SigHashAlgorithm.SIG_HASH_SHA384,
                         SigHashAlgorithm.SIG_HASH_SHA512})
_SELECTOR_TYPES = frozenset({IDType.IPV4_ADDR, IDType.IPV6_ADDR, IDType.IPV4_ADDR_SUBNET, IDType.IPV6_ADDR_SUBNET})


class RegistrationRefused(Exception):
    """What the key server sent cannot be used: ``notify`` names the problem, ``reason`` says it for the log."""

    def __init__(self, notify: int, reason: str):
        super().__init__(reason)
        self.notify = notify
        self.reason = reason


@attrs.frozen
class MemberPolicy:
    """What a group member asks for and accepts in GROUPKEY-PULL.

    ``pfs`` sends KE_I (RFC 6407 section 3.2); ``sender_ids`` is how many SIDs to ask for when the group has
    counter-mode TEKs (RFC 6054); ``credentials`` sends CERT and POP_I; ``trust`` validates a key server's CERT and
    POP_R, which ``require_server_pop`` makes mandatory.
    """

    pfs: bool = False
    sender_ids: int = 1
    credentials: certs.Credentials | None = None
    trust: certs.TrustStore | None = None
    require_server_pop: bool = False
    require_kek: bool = False
    transforms: frozenset[int] = DEFAULT_TRANSFORMS
    integrity: frozenset[int] = DEFAULT_INTEGRITY
    min_key_bits: int = 128
    max_lifetime: int = 7 * 86400
    retransmit_initial: float = 2.0
    retransmit_tries: int = 5
    exchange_timeout: float = 60.0


# --- the result ------------------------------------------------------------------------------------------------------


@attrs.frozen
class KEKInfo:
    """The rekey SA (RFC 6407 sections 5.3, 5.6.2): SPI, AES-CBC key, the key server's signature key, lifetime,
    where rekeys come from and go (``source``, ``destination``) and whether the key server asks for
    acknowledgements (RFC 8263: KEK_ACK_REQUESTED)."""

    spi: bytes
    algorithm: int
    key_bits: int
    key: bytes = attrs.field(repr=False)
    signature_algorithm: int
    signature_hash: int
    signature_key_bits: int
    signature_public_key: bytes  # DER SubjectPublicKeyInfo
    lifetime: int
    source: Selector
    destination: Selector
    ack_requested: bool = False


@attrs.frozen
class TEKInfo:
    """One ESP TEK: SPI, transform, keys (never in a repr), traffic selectors, lifetime and the member's sender IDs
    when the transform is a counter mode."""

    spi: bytes
    transform_id: int
    key_bits: int
    integrity_algorithm: int | None
    encryption_key: bytes = attrs.field(repr=False)
    integrity_key: bytes = attrs.field(repr=False)
    ip_protocol: int
    source: Selector
    destination: Selector
    mode: int
    lifetime: int
    address_preservation: int | None = None
    direction: int | None = None
    sender_ids: tuple[int, ...] = ()

    @property
    def counter_mode(self) -> bool:
        return self.transform_id in COUNTER_MODE_TRANSFORMS


@attrs.frozen
class GroupRegistration:
    """What one GROUPKEY-PULL gave the member: the group's KEK and TEKs, the SEQ to accept rekeys after, the GAP
    delays, the member's sender IDs, its LKH keys (``lkh_path``: :class:`gdoiserver.group.lkh.NodeKey` values, its
    leaf ``lkh_leaf`` first, then each ancestor below the root), and when (``registered_at``, the caller's clock) and
    from whom."""

    group: GroupId
    server: tuple[str, int]
    registered_at: float
    teks: tuple[TEKInfo, ...]
    kek: KEKInfo | None = None
    seq: int | None = None
    activation_delay: int = 0
    deactivation_delay: int = 0
    sender_id_bits: int | None = None
    sender_ids: tuple[int, ...] = ()
    pfs: bool = False
    lkh_path: tuple = ()
    lkh_leaf: int | None = None

    def expires_at(self, tek: TEKInfo) -> float:
        return self.registered_at + tek.lifetime


# --- message 2: the policy -------------------------------------------------------------------------------------------


@attrs.frozen
class OfferedTEK:
    """A TEK as the SA announced it, before its keys arrive."""

    spi: bytes
    transform_id: int
    key_bits: int
    integrity_algorithm: int | None
    ip_protocol: int
    source: Selector
    destination: Selector
    mode: int
    lifetime: int
    address_preservation: int | None
    direction: int | None


@attrs.frozen
class OfferedKEK:
    spi: bytes
    key_bits: int
    lifetime: int
    signature_algorithm: int
    signature_hash: int
    signature_key_bits: int
    source: Selector
    destination: Selector
    ack_requested: bool = False


@attrs.frozen
class OfferedPolicy:
    """The SA payload of message 2, checked."""

    teks: tuple[OfferedTEK, ...]
    kek: OfferedKEK | None
    activation_delay: int = 0
    deactivation_delay: int = 0

    @property
    def counter_mode(self) -> bool:
        return any(t.transform_id in COUNTER_MODE_TRANSFORMS for t in self.teks)


def _refuse(notify: int, reason: str):
    raise RegistrationRefused(notify, reason)


def _check_selector(s: Selector, what: str) -> None:
    if s.id_type not in _SELECTOR_TYPES:
        _refuse(NotifyType.INVALID_ID_INFORMATION, f"{what}: ID type {s.id_type} is not an address or subnet")
    try:
        s.value()
    except DecodeError as e:
        _refuse(NotifyType.INVALID_ID_INFORMATION, f"{what}: {e.reason}")


def _only(attributes, known, what: str) -> dict:
    amap = attribute_map(attributes)
    if len(amap) != len(attributes):
        _refuse(NotifyType.ATTRIBUTES_NOT_SUPPORTED, f"{what}: an attribute is repeated")
    unknown = sorted(set(amap) - known)
    if unknown:
        _refuse(NotifyType.ATTRIBUTES_NOT_SUPPORTED, f"{what}: attributes {unknown} are not supported")
    return {t: a.as_int() for t, a in amap.items()}


def _tek(tek: IPsecTEK, policy: MemberPolicy, n: int) -> OfferedTEK:
    what = f"TEK {n} (SPI {tek.spi.hex()})"
    if tek.transform_id not in policy.transforms:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: ESP transform {tek.transform_id} is not acceptable")
    a = _only(tek.attributes, _TEK_ATTRS, what)
    life_type = a.get(IPsecAttr.SA_LIFE_TYPE, LifeType.SECONDS)
    if life_type != LifeType.SECONDS:
        _refuse(NotifyType.ATTRIBUTES_NOT_SUPPORTED, f"{what}: only lifetimes in seconds are supported")
    lifetime = a.get(IPsecAttr.SA_LIFE_DURATION, DEFAULT_LIFETIME)
    if not 0 < lifetime <= policy.max_lifetime:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: lifetime {lifetime} s is out of range")
    mode = a.get(IPsecAttr.ENCAPSULATION_MODE, EncapsulationMode.TUNNEL)
    if mode not in (EncapsulationMode.TUNNEL, EncapsulationMode.TRANSPORT):
        _refuse(NotifyType.ATTRIBUTES_NOT_SUPPORTED, f"{what}: encapsulation mode {mode}")
    key_bits = a.get(IPsecAttr.KEY_LENGTH)
    if key_bits not in (128, 192, 256) or key_bits < policy.min_key_bits:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: AES key length {key_bits} is not acceptable")
    auth = a.get(IPsecAttr.AUTHENTICATION_ALGORITHM)
    if tek.transform_id in _GCM:
        if auth is not None:
            _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: AES-GCM with an authentication algorithm")
    elif auth not in policy.integrity:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: authentication algorithm {auth} is not acceptable")
    _check_selector(tek.src, f"{what} source")
    _check_selector(tek.dst, f"{what} destination")
    return OfferedTEK(tek.spi, tek.transform_id, key_bits, auth, tek.protocol, tek.src, tek.dst, mode, lifetime,
                      a.get(IPsecAttr.ADDRESS_PRESERVATION), a.get(IPsecAttr.SA_DIRECTION))


def _kek(sak: SAK, policy: MemberPolicy) -> OfferedKEK:
    what = f"KEK (SPI {sak.spi.hex()})"
    if sak.protocol != 17:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: rekeys over IP protocol {sak.protocol}, not UDP")
    a = _only(sak.attributes, _KEK_ATTRS, what)
    if a.get(KEKAttr.KEK_ALGORITHM) != KEKAlgorithm.KEK_ALG_AES:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: KEK algorithm {a.get(KEKAttr.KEK_ALGORITHM)} (AES only)")
    key_bits = a.get(KEKAttr.KEK_KEY_LENGTH)
    if key_bits not in (128, 192, 256) or key_bits < policy.min_key_bits:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: KEK key length {key_bits}")
    lifetime = a.get(KEKAttr.KEK_KEY_LIFETIME)
    if lifetime is None or not 0 < lifetime <= policy.max_lifetime:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: KEK lifetime {lifetime}")
    sig_hash = a.get(KEKAttr.SIG_HASH_ALGORITHM)
    if sig_hash not in _SIG_HASHES:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: signature hash {sig_hash} (SHA-256, -384 or -512)")
    sig_alg = a.get(KEKAttr.SIG_ALGORITHM)
    if sig_alg not in (SigAlgorithm.SIG_ALG_RSA, SigAlgorithm.SIG_ALG_ECDSA_256, SigAlgorithm.SIG_ALG_ECDSA_384,
                       SigAlgorithm.SIG_ALG_ECDSA_521):
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: signature algorithm {sig_alg}")
    sig_bits = a.get(KEKAttr.SIG_KEY_LENGTH)
    if sig_bits is None:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{what}: no SIG_KEY_LENGTH")
    _check_selector(sak.src, f"{what} source")
    _check_selector(sak.dst, f"{what} destination")
    return OfferedKEK(sak.spi, key_bits, lifetime, sig_alg, sig_hash, sig_bits, sak.src, sak.dst,
                      bool(a.get(KEKAttr.KEK_ACK_REQUESTED, 0)))


def read_policy(sa: GroupSA, policy: MemberPolicy, *, rekey: bool = False) -> OfferedPolicy:
    """Check the SA payload of message 2 against the member's policy: SAK?, GAP?, SAT+ (RFC 6407 section 3.2).

    With ``rekey`` (the SA of a GROUPKEY-PUSH) the SA may announce a new KEK alone (RFC 6407 section 4: a KEK
    rekey or an eviction carries the SAK and no SAT)."""
    kinds = [p.payload_type for p in sa.payloads]
    if kinds.count(PayloadType.SAK) > 1 or kinds.count(PayloadType.GAP) > 1:
        _refuse(NotifyType.BAD_PROPOSAL_SYNTAX, "more than one SAK or GAP in the SA")
    if not sa.teks and not (rekey and sa.kek is not None):
        _refuse(NotifyType.BAD_PROPOSAL_SYNTAX, "the SA announces no TEK")
    teks = []
    for n, sat in enumerate(sa.teks, 1):
        if sat.protocol_id != TEKProtocol.IPSEC_ESP or not isinstance(sat.tek, IPsecTEK):
            _refuse(NotifyType.INVALID_PROTOCOL_ID, f"TEK {n}: Protocol-ID {sat.protocol_id} (ESP only)")
        teks.append(_tek(sat.tek, policy, n))
    if len({t.spi for t in teks}) != len(teks):
        _refuse(NotifyType.INVALID_SPI, "two TEKs with the same SPI")
    kek = _kek(sa.kek, policy) if sa.kek is not None else None
    if kek is None and policy.require_kek:
        _refuse(NotifyType.NO_PROPOSAL_CHOSEN, "the group has no KEK, and this member wants rekeys")
    activation = deactivation = 0
    if sa.gap is not None:
        g = attribute_map(sa.gap.attributes)
        activation = g[GAPAttr.ACTIVATION_TIME_DELAY].as_int() if GAPAttr.ACTIVATION_TIME_DELAY in g else 0
        deactivation = g[GAPAttr.DEACTIVATION_TIME_DELAY].as_int() if GAPAttr.DEACTIVATION_TIME_DELAY in g else 0
    return OfferedPolicy(tuple(teks), kek, activation, deactivation)


# --- message 4: the keys ---------------------------------------------------------------------------------------------


def _key_attrs(packet, known, what: str) -> dict:
    amap = attribute_map(packet.attributes)
    if len(amap) != len(packet.attributes):
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: a key attribute is repeated")
    unknown = sorted(set(amap) - known)
    if unknown:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: key attributes {unknown} are not supported")
    return {t: a.as_bytes() for t, a in amap.items()}


def _tek_keys(offered: OfferedTEK, packet) -> tuple[bytes, bytes]:
    what = f"keys of TEK {offered.spi.hex()}"
    k = _key_attrs(packet, {TEKKeyAttr.TEK_ALGORITHM_KEY, TEKKeyAttr.TEK_INTEGRITY_KEY}, what)
    enc = k.get(TEKKeyAttr.TEK_ALGORITHM_KEY)
    want = encryption_key_size(offered.transform_id, offered.key_bits)
    if enc is None or len(enc) != want:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: TEK_ALGORITHM_KEY of {len(enc or b'')} octets, "
                f"expected {want}")
    integrity = k.get(TEKKeyAttr.TEK_INTEGRITY_KEY, b"")
    want = INTEGRITY_KEY_SIZES.get(offered.integrity_algorithm, 0)
    if len(integrity) != want:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: TEK_INTEGRITY_KEY of {len(integrity)} octets, "
                f"expected {want}")
    return enc, integrity


def _signature_key(offered: OfferedKEK, der: bytes | None) -> bytes:
    what = f"signature key of KEK {offered.spi.hex()}"
    if der is None:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: no SIG_ALGORITHM_KEY")
    try:
        public = load_der_public_key(der)
        algorithm = signature_algorithm(public)
    except (ValueError, TypeError):
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: not an RSA or ECDSA SubjectPublicKeyInfo")
    if algorithm != offered.signature_algorithm or public.key_size != offered.signature_key_bits:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: a {public.key_size}-bit {algorithm.name} key where "
                f"the SAK announced {offered.signature_key_bits}-bit algorithm {offered.signature_algorithm}")
    return der


def _sender_ids(packets) -> tuple[int | None, tuple[int, ...]]:
    what = "SID key packet"
    if not packets:
        return None, ()
    if len(packets) > 1:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, "more than one SID key packet")
    (packet,) = packets
    if packet.spi:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what} with an SPI")
    bits, sids = None, []
    for a in packet.attributes:
        if a.type == SIDAttr.NUMBER_OF_SID_BITS and bits is None:
            bits = a.as_int()
        elif a.type == SIDAttr.SID_VALUE and not a.is_tv and 1 <= len(a.value) <= 4:
            sids.append(a.as_int())
        else:
            _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: attribute {a.type} is not understood")
    if bits is None or not 1 <= bits <= 32:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: NUMBER_OF_SID_BITS {bits}")
    if not sids or len(set(sids)) != len(sids) or any(s >= 1 << bits for s in sids):
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{what}: SIDs {sids} do not fit {bits} bits or repeat")
    return bits, tuple(sids)


def _lkh_path(path, key_size: int) -> tuple:
    """A member's LKH path as downloaded: a leaf, then each ancestor up to a child of the root, keys of the KEK's
    size."""
    nodes = tuple(k.node for k in path)
    leaf = nodes[0]
    if not 2 <= leaf or len(nodes) > lkh.MAX_DEPTH or nodes != (leaf, *lkh.ancestors(leaf)[:-1]):
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"LKH nodes {list(nodes)} are no path from a leaf to the root")
    if any(len(k.key) != key_size for k in path):
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"LKH keys not of the KEK's {key_size} octets")
    return tuple(path)


def _lkh(offered: OfferedPolicy, kd: KD, rekey: bool, lkh_path) -> tuple[tuple, lkh.NodeKey | None]:
    """The member's LKH path after this KD, and the new root key an LKH update brings (RFC 6407 section 5.6.3).

    GROUPKEY-PULL brings an LKH_DOWNLOAD_ARRAY, a PUSH (``rekey``) an LKH_UPDATE_ARRAY, which ``lkh_path`` (the
    member's current path) must reach the root through.  Both under the SPI of the SA's KEK.
    """
    packets = kd.packets_of(KeyPacketType.LKH)
    if not packets:
        return (), None
    o = offered.kek
    if o is None:
        _refuse(NotifyType.INVALID_SPI, "an LKH key packet, and no SAK in the SA")
    if len(packets) != 1 or packets[0].spi != o.spi:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"the KD has no single LKH key packet for KEK {o.spi.hex()}")
    kind = LKHKeyAttr.LKH_UPDATE_ARRAY if rekey else LKHKeyAttr.LKH_DOWNLOAD_ARRAY
    value = _key_attrs(packets[0], {kind}, "LKH keys").get(kind)
    if value is None:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"an LKH key packet without {kind.name}")
    key_size = o.key_bits // 8
    try:
        if not rekey:
            return _lkh_path(lkh_wire.decode_download_array(value), key_size), None
        updates = lkh_wire.decode_update_array(value)
    except DecodeError as e:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"{kind.name}: {e.reason}")
    if not lkh_path:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, "an LKH update, and this member holds no LKH keys")
    try:
        path, root = lkh.member_update(tuple(lkh_path), updates)
    except lkh.LKHError as e:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"LKH: {e}")
    if len(root.key) != key_size:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, f"an LKH root key of {len(root.key)} octets, expected {key_size}")
    return path, root


def read_keys(offered: OfferedPolicy, kd: KD, seq: int | None, *, group: GroupId, server, now: float,
              asked_sender_ids: int, pfs: bool, rekey: bool = False, lkh_path=()) -> GroupRegistration:
    """Check the KD of message 4 (or, with ``rekey``, of a GROUPKEY-PUSH) against the SA and build the
    registration.

    Each TEK announced has exactly one key packet of the right lengths, the KEK one with its signature key, no
    key packet is for anything else, a group with a KEK sends SEQ, and counter-mode TEKs come with sender IDs when
    the member asked for them.  An LKH key packet gives the member's LKH path in GROUPKEY-PULL; in a PUSH it
    updates ``lkh_path``, and the root it reaches is the new KEK's key, which the KEK key packet then leaves out
    (RFC 6407 section 5.6.3).
    """
    for p in kd.key_packets:
        if p.kd_type not in (KeyPacketType.TEK, KeyPacketType.KEK, KeyPacketType.SID, KeyPacketType.LKH):
            _refuse(NotifyType.INVALID_KEY_INFORMATION, f"key packet type {p.kd_type} is not supported")
    tek_packets: dict[bytes, object] = {}
    for p in kd.packets_of(KeyPacketType.TEK):
        if p.spi in tek_packets:
            _refuse(NotifyType.INVALID_KEY_INFORMATION, f"two key packets for TEK {p.spi.hex()}")
        tek_packets[p.spi] = p
    announced = {t.spi for t in offered.teks}
    if set(tek_packets) != announced:
        _refuse(NotifyType.INVALID_SPI, "the KD's TEK SPIs " + ", ".join(sorted(s.hex() for s in tek_packets))
                + " are not the SA's " + ", ".join(sorted(s.hex() for s in announced)))
    bits, sids = _sender_ids(kd.packets_of(KeyPacketType.SID))
    if offered.counter_mode and asked_sender_ids and not sids:
        _refuse(NotifyType.INVALID_KEY_INFORMATION, "counter-mode TEKs, and no sender IDs")
    teks = []
    for t in offered.teks:
        enc, integrity = _tek_keys(t, tek_packets[t.spi])
        mine = sids if t.transform_id in COUNTER_MODE_TRANSFORMS else ()
        teks.append(TEKInfo(t.spi, t.transform_id, t.key_bits, t.integrity_algorithm, enc, integrity, t.ip_protocol,
                            t.source, t.destination, t.mode, t.lifetime, t.address_preservation, t.direction, mine))
    path, root = _lkh(offered, kd, rekey, lkh_path)
    kek_packets = kd.packets_of(KeyPacketType.KEK)
    kek = None
    if offered.kek is None:
        if kek_packets:
            _refuse(NotifyType.INVALID_SPI, "a KEK key packet, and no SAK in the SA")
    else:
        o = offered.kek
        if len(kek_packets) != 1 or kek_packets[0].spi != o.spi:
            _refuse(NotifyType.INVALID_SPI, f"the KD has no single key packet for KEK {o.spi.hex()}")
        k = _key_attrs(kek_packets[0], {KEKKeyAttr.KEK_ALGORITHM_KEY, KEKKeyAttr.SIG_ALGORITHM_KEY}, "KEK keys")
        key = k.get(KEKKeyAttr.KEK_ALGORITHM_KEY)
        if root is not None:
            if key is not None:
                _refuse(NotifyType.INVALID_KEY_INFORMATION, "a KEK_ALGORITHM_KEY beside an LKH update of the root")
            key = root.key
        elif key is None:
            _refuse(NotifyType.INVALID_KEY_INFORMATION, "no KEK_ALGORITHM_KEY")
        if len(key) != o.key_bits // 8:
            _refuse(NotifyType.INVALID_KEY_INFORMATION, f"KEK_ALGORITHM_KEY of {len(key)} octets, expected "
                    f"{o.key_bits // 8}")
        spki = _signature_key(o, k.get(KEKKeyAttr.SIG_ALGORITHM_KEY))
        if seq is None:
            _refuse(NotifyType.PAYLOAD_MALFORMED, "a KEK without SEQ: the member cannot tell which rekeys are new")
        kek = KEKInfo(o.spi, KEKAlgorithm.KEK_ALG_AES, o.key_bits, key, o.signature_algorithm, o.signature_hash,
                      o.signature_key_bits, spki, o.lifetime, o.source, o.destination, o.ack_requested)
    return GroupRegistration(
        group=group, server=server, registered_at=now, teks=tuple(teks), kek=kek,
        seq=seq if kek is not None else None, activation_delay=offered.activation_delay,
        deactivation_delay=offered.deactivation_delay, sender_id_bits=bits, sender_ids=sids, pfs=pfs,
        lkh_path=path, lkh_leaf=path[0].node if path else None,
    )


def selector_network(s: Selector):
    """A TEK selector as an ``ipaddress`` network (an address is a /32 or /128)."""
    value = s.value()
    return value if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else ipaddress.ip_network(value)
