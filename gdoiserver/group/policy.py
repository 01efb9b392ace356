"""Group policy objects: a group's identity, who may join it, its TEKs, its KEK and its rekey transport.

A group is named by an ID_KEY_ID group number (RFC 6407 section 5.1.1) and/or an ID_OID (RFC 8052 section 4).
Members are authorized by their Phase 1 identity (exactly, or by a wildcard pattern) or by attributes of their
certificate, checked with ``service_identity`` (RFC 6125 rules).  TEK policies are ESP SAs (RFC 4303): AES-CBC with
HMAC-SHA2 (RFC 3602, RFC 4868), AES-GCM (RFC 4106) or AES-CTR with HMAC-SHA2 (RFC 3686); the counter modes need
sender IDs (RFC 6054).  The KEK is AES-CBC with the key server's RSA or ECDSA signature key (RFC 6407 section 5.3).

These are plain values: the wire form is built in :mod:`gdoiserver.doi.gdoi`, the keys in :mod:`.keys`.
"""

import enum
import fnmatch
import functools
import ipaddress

import attrs
import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from gdoiserver.codec.constants import AuthAlgorithm, EncapsulationMode, ESPTransformID, IDType, NotifyType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import AddressPreservation, SADirection, SigAlgorithm, SigHashAlgorithm
from gdoiserver.codec.payloads import Identification

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# --- the group identity (RFC 6407 section 5.1.1; RFC 8052 section 4) -------------------------------------------------


def oid_der(dotted: str) -> bytes:
    """The DER encoding (tag, length and value) of a dotted OID; ValueError if it is not one."""
    try:
        return der_encoder.encode(univ.ObjectIdentifier(dotted))
    except (PyAsn1Error, ValueError, TypeError):
        raise ValueError(f"{dotted!r} is not an OID such as 1.2.840.10070") from None


def oid_dotted(der: bytes) -> str:
    """The dotted form of a DER-encoded OID; ValueError unless ``der`` is exactly one OID."""
    try:
        value, rest = der_decoder.decode(der, asn1Spec=univ.ObjectIdentifier())
    except (PyAsn1Error, ValueError, TypeError):
        raise ValueError("not a DER-encoded OID") from None
    if rest:
        raise ValueError("octets after the DER-encoded OID")
    return str(value)


@attrs.frozen
class GroupId:
    """One name of a group: a 32-bit group number (ID_KEY_ID) or an OID (ID_OID, kept dotted)."""

    number: int | None = None
    oid: str | None = None

    def __attrs_post_init__(self):
        if (self.number is None) == (self.oid is None):
            raise ValueError("a GroupId is a group number or an OID, exactly one of them")
        if self.number is not None and not 0 <= self.number <= 0xFFFFFFFF:
            raise ValueError(f"group number {self.number} does not fit four octets")
        if self.oid is not None:
            oid_der(self.oid)

    def identification(self) -> Identification:
        """The ID payload of GROUPKEY-PULL message 1: ID_KEY_ID with four octets in network order, or ID_OID with
        the DER encoding of the OID."""
        if self.number is not None:
            return Identification.key_id(self.number)
        return Identification(IDType.OID, 0, 0, oid_der(self.oid))

    @classmethod
    def from_identification(cls, ident: Identification) -> "GroupId":
        """The group an ID payload names; DecodeError(INVALID_ID_INFORMATION) for any other ID."""
        if ident.id_type == IDType.KEY_ID and len(ident.data) == 4:
            return cls(number=int.from_bytes(ident.data, "big"))
        if ident.id_type == IDType.OID:
            try:
                return cls(oid=oid_dotted(ident.data))
            except ValueError as e:
                raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"ID_OID: {e}") from None
        raise DecodeError(NotifyType.INVALID_ID_INFORMATION,
                          f"ID type {ident.id_type} of {len(ident.data)} octets names no group")

    def __str__(self) -> str:
        return f"group {self.number}" if self.number is not None else f"group OID {self.oid}"


# --- members ---------------------------------------------------------------------------------------------------------


def identity_text(ident: Identification) -> str:
    """An ID payload as text for logs and patterns: the name, the address, or the ID type and the data in hex."""
    t, data = ident.id_type, ident.data
    try:
        if t in (IDType.FQDN, IDType.USER_FQDN):
            return data.decode("ascii")
        if t in (IDType.IPV4_ADDR, IDType.IPV6_ADDR):
            return str(ipaddress.ip_address(data))
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        name = IDType(t).name.lower()
    except ValueError:
        name = f"type {t}"
    return f"{name}:{data.hex()}"


def _fold(ident: Identification) -> tuple[int, bytes]:
    """Identities compare by type and data; domain names without regard to case (RFC 4343)."""
    if ident.id_type in (IDType.FQDN, IDType.USER_FQDN):
        return ident.id_type, ident.data.lower()
    return ident.id_type, ident.data


@attrs.frozen
class Member:
    """What the key server knows of a registering member: its authenticated Phase 1 identity, its certificate
    (Phase 1, or the one it proved in GROUPKEY-PULL message 3) and its address."""

    identity: Identification
    certificate: x509.Certificate | None = None
    address: str | None = None

    def __str__(self) -> str:
        return identity_text(self.identity)


@attrs.frozen
class ExactIdentity:
    """A member named by its exact IKE identity (ID type and data; names compared without case)."""

    identity: Identification

    def matches(self, member: Member) -> bool:
        return _fold(member.identity) == _fold(self.identity)


@attrs.frozen
class IdentityPattern:
    """Members whose identity text matches a shell-style wildcard (``*.site1.example.org``, ``10.1.*``,
    ``gm-*@example.org``), compared without case; ``id_type`` restricts the ID type when set."""

    pattern: str
    id_type: int | None = None

    def matches(self, member: Member) -> bool:
        if self.id_type is not None and member.identity.id_type != self.id_type:
            return False
        if member.identity.id_type not in _PATTERN_TYPES:
            return False
        return fnmatch.fnmatchcase(identity_text(member.identity).lower(), self.pattern.lower())


_PATTERN_TYPES = frozenset({IDType.FQDN, IDType.USER_FQDN, IDType.IPV4_ADDR, IDType.IPV6_ADDR})


@attrs.frozen
class CertificateAttributes:
    """Members whose certificate is valid for a DNS name and/or an IP address, as ``service_identity`` checks a
    server certificate (RFC 6125: subjectAltName dNSName with wildcards, iPAddress).  Every attribute set must
    match; a member without a certificate never matches."""

    dns: str | None = None
    ip: str | None = None

    def __attrs_post_init__(self):
        if self.dns is None and self.ip is None:
            raise ValueError("a certificate rule names a DNS name or an IP address")

    def matches(self, member: Member) -> bool:
        cert = member.certificate
        if cert is None:
            return False
        try:
            if self.dns is not None:
                verify_certificate_hostname(cert, self.dns)
            if self.ip is not None:
                verify_certificate_ip_address(cert, self.ip)
        except (service_identity.VerificationError, service_identity.CertificateError, ValueError):
            return False
        return True


MemberRule = ExactIdentity | IdentityPattern | CertificateAttributes


# --- TEK policy (RFC 6407 section 5.4.1; RFC 4106, RFC 3686, RFC 3602, RFC 4868; RFC 6054) ------------------------


class TEKTransform(str, enum.Enum):
    """The ESP transforms a TEK may use."""

    AES_CBC = "aes-cbc"  # RFC 3602
    AES_GCM = "aes-gcm"  # RFC 4106: combined mode, counter based
    AES_CTR = "aes-ctr"  # RFC 3686: counter mode, needs an integrity algorithm


#: Integrity algorithms: name -> (IPsec Authentication Algorithm, key octets) (RFC 4868 section 2.1).
INTEGRITY = {
    "hmac-sha256": (AuthAlgorithm.HMAC_SHA2_256, 32),
    "hmac-sha384": (AuthAlgorithm.HMAC_SHA2_384, 48),
    "hmac-sha512": (AuthAlgorithm.HMAC_SHA2_512, 64),
}
INTEGRITY_KEY_SIZES = {alg: size for alg, size in INTEGRITY.values()}
#: AES-GCM ICV length in bits -> ESP transform ID (RFC 4106 section 8.1).
GCM_TRANSFORMS = {64: ESPTransformID.AES_GCM_8, 96: ESPTransformID.AES_GCM_12, 128: ESPTransformID.AES_GCM_16}
#: The salt (RFC 4106 section 8.1) and the nonce (RFC 3686 section 5.1) that follow the AES key in the keying
#: material of GCM and CTR.
COUNTER_MODE_SALT = 4
AES_KEY_BITS = (128, 192, 256)
COUNTER_MODE_TRANSFORMS = frozenset({ESPTransformID.AES_CTR, *GCM_TRANSFORMS.values()})


def encryption_key_size(transform_id: int, key_bits: int) -> int:
    """Octets of TEK_ALGORITHM_KEY for an ESP transform: the AES key, plus the 4-octet salt or nonce of the
    counter modes (RFC 4106 section 8.1, RFC 3686 section 5.1)."""
    return key_bits // 8 + (COUNTER_MODE_SALT if transform_id in COUNTER_MODE_TRANSFORMS else 0)


@attrs.frozen
class TrafficSelector:
    """The traffic a TEK protects: source and destination networks (a single address is a /32 or /128), the IP
    protocol (0: any) and ports (0: any).  A multicast group is a destination address; "any to any" unicast
    between sites is two zero-length networks."""

    source: IPNetwork
    destination: IPNetwork
    protocol: int = 0
    source_port: int = 0
    destination_port: int = 0

    def __attrs_post_init__(self):
        if self.source.version != self.destination.version:
            raise ValueError("source and destination are of different IP versions")
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"IP protocol {self.protocol}")
        for port in (self.source_port, self.destination_port):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"port {port}")

    @property
    def multicast(self) -> bool:
        return self.destination.prefixlen == self.destination.max_prefixlen and self.destination.is_multicast


@attrs.frozen
class TEKPolicy:
    """One data-security SA of the group (an ESP TEK)."""

    name: str
    transform: TEKTransform
    selector: TrafficSelector
    key_bits: int = 128
    integrity: str | None = None
    icv_bits: int = 128
    lifetime: int = 3600
    mode: EncapsulationMode = EncapsulationMode.TUNNEL
    address_preservation: AddressPreservation | None = None
    direction: SADirection | None = None

    def __attrs_post_init__(self):
        if self.key_bits not in AES_KEY_BITS:
            raise ValueError(f"AES key of {self.key_bits} bits")
        if self.transform == TEKTransform.AES_GCM:
            if self.integrity is not None:
                raise ValueError("AES-GCM authenticates by itself: no integrity algorithm (RFC 4106 section 8.1)")
            if self.icv_bits not in GCM_TRANSFORMS:
                raise ValueError(f"AES-GCM ICV of {self.icv_bits} bits (64, 96 or 128)")
        elif self.integrity not in INTEGRITY:
            raise ValueError(f"{self.transform.value} needs an integrity algorithm: " + ", ".join(INTEGRITY))
        if not 1 <= self.lifetime <= 0xFFFFFFFF:
            raise ValueError(f"lifetime of {self.lifetime} seconds")

    @property
    def transform_id(self) -> ESPTransformID:
        if self.transform == TEKTransform.AES_GCM:
            return GCM_TRANSFORMS[self.icv_bits]
        return ESPTransformID.AES_CBC if self.transform == TEKTransform.AES_CBC else ESPTransformID.AES_CTR

    @property
    def auth_algorithm(self) -> AuthAlgorithm | None:
        return INTEGRITY[self.integrity][0] if self.integrity else None

    @property
    def encryption_key_size(self) -> int:
        return encryption_key_size(self.transform_id, self.key_bits)

    @property
    def integrity_key_size(self) -> int:
        return INTEGRITY[self.integrity][1] if self.integrity else 0

    @property
    def counter_mode(self) -> bool:
        """GCM and CTR build their IVs from a counter: each sender needs its own sender ID (RFC 6054 section 1)."""
        return self.transform_id in COUNTER_MODE_TRANSFORMS


# --- KEK policy (RFC 6407 section 5.3) -------------------------------------------------------------------------------

SIG_HASHES = {"sha256": SigHashAlgorithm.SIG_HASH_SHA256, "sha384": SigHashAlgorithm.SIG_HASH_SHA384,
              "sha512": SigHashAlgorithm.SIG_HASH_SHA512}
_ECDSA_ALGORITHMS = {"secp256r1": SigAlgorithm.SIG_ALG_ECDSA_256, "secp384r1": SigAlgorithm.SIG_ALG_ECDSA_384,
                     "secp521r1": SigAlgorithm.SIG_ALG_ECDSA_521}


def signature_algorithm(key) -> SigAlgorithm:
    """SIG_ALGORITHM for a private or public key: RSA, or ECDSA on P-256/384/521; ValueError otherwise."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return SigAlgorithm.SIG_ALG_RSA
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.name in _ECDSA_ALGORITHMS:
        return _ECDSA_ALGORITHMS[key.curve.name]
    raise ValueError(f"a {type(key).__name__} cannot sign rekeys: RSA or ECDSA P-256/384/521")


def _same_private_key(a, b) -> bool:
    """Two private keys are the same key (a reloaded file gives a new object for the same key)."""
    return type(a) is type(b) and a.private_numbers() == b.private_numbers()


@functools.lru_cache(maxsize=64)  # one key per group; keys hash by identity
def _public_key_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@attrs.frozen
class KEKPolicy:
    """The rekey SA: AES-CBC under the KEK, messages signed with the key server's ``signature_key``."""

    signature_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = attrs.field(
        repr=False, eq=attrs.cmp_using(eq=_same_private_key), hash=False)
    key_bits: int = 128
    signature_hash: str = "sha256"
    lifetime: int = 86400
    #: Depth of the LKH tree (RFC 6407 section 5.6.3) that lets the key server evict members: room for
    #: 2**lkh_depth members, each holding lkh_depth keys.
    lkh_depth: int = 16

    def __attrs_post_init__(self):
        signature_algorithm(self.signature_key)
        if not 1 <= self.lkh_depth <= 24:
            raise ValueError(f"LKH depth {self.lkh_depth} (1 to 24)")
        if self.key_bits not in AES_KEY_BITS:
            raise ValueError(f"AES key of {self.key_bits} bits")
        if self.signature_hash not in SIG_HASHES:
            raise ValueError(f"signature hash {self.signature_hash!r}")
        if not 1 <= self.lifetime <= 0xFFFFFFFF:
            raise ValueError(f"lifetime of {self.lifetime} seconds")

    @property
    def signature_algorithm(self) -> SigAlgorithm:
        return signature_algorithm(self.signature_key)

    @property
    def signature_key_bits(self) -> int:
        return self.signature_key.key_size

    @property
    def public_key_der(self) -> bytes:
        """SIG_ALGORITHM_KEY of the KD: the public key as a DER SubjectPublicKeyInfo (serialized once)."""
        return _public_key_der(self.signature_key)


# --- rekey transport, GAP, the group --------------------------------------------------------------------------------

GDOI_PORT = 848


@attrs.frozen
class RekeyTransport:
    """Where GROUPKEY-PUSH messages come from and go: from ``source`` (the key server's address and port, the SAK's
    SRC ID), to a multicast group (address, port, TTL) and/or by unicast to each member (RFC 6407 section 5.3)."""

    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    source_port: int = GDOI_PORT
    multicast_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    multicast_port: int = GDOI_PORT
    ttl: int = 8
    unicast: bool = False
    #: The interface multicast rekeys leave by: a name such as "eth0", an address of ours, or None (the route's).
    interface: str | None = None
    #: Copies of each rekey sent after the first, ``retransmit_interval`` seconds apart (a unicast copy stops
    #: once its member acknowledged).
    retransmits: int = 2
    retransmit_interval: float = 5.0
    #: Ask members to acknowledge each rekey (RFC 8263: KEK_ACK_REQUESTED in the SAK).
    ack: bool = False
    #: A member that acknowledged none of this many rekeys in a row is marked stale.
    stale_after: int = 3
    #: Seconds before the current TEKs expire when the next ones are pushed (None: a tenth of the shortest TEK
    #: lifetime, and at least the GAP delays plus a minute); the same for the KEK.
    lead_time: float | None = None
    kek_lead_time: float | None = None

    def __attrs_post_init__(self):
        if self.retransmits < 0 or self.retransmit_interval <= 0:
            raise ValueError("retransmits must be 0 or more and retransmit_interval above 0")
        if self.stale_after < 1:
            raise ValueError("stale_after must be at least 1")
        for lead in (self.lead_time, self.kek_lead_time):
            if lead is not None and lead <= 0:
                raise ValueError("a lead time must be above 0 seconds")
        if self.multicast_address is None and not self.unicast:
            raise ValueError("rekeys go to a multicast group, by unicast, or both")
        if self.multicast_address is not None:
            if not self.multicast_address.is_multicast:
                raise ValueError(f"{self.multicast_address} is not a multicast address")
            if self.multicast_address.version != self.source.version:
                raise ValueError("the multicast group and the source are of different IP versions")


@attrs.frozen
class GAPPolicy:
    """Group Associated Policy (RFC 6407 section 5.7): seconds a member waits before it sends with a new TEK
    (activation) and before it stops receiving with an old one (deactivation)."""

    activation_delay: int = 0
    deactivation_delay: int = 0

    def __attrs_post_init__(self):
        for delay in (self.activation_delay, self.deactivation_delay):
            if not 0 <= delay <= 0xFFFF:
                raise ValueError(f"delay of {delay} seconds (a GAP attribute is 16 bits)")


class PFS(str, enum.Enum):
    """Whether GROUPKEY-PULL may, must or must not carry KE payloads (RFC 6407 section 3.2)."""

    ALLOW = "allow"
    REQUIRE = "require"
    REFUSE = "refuse"


#: RFC 6054 section 3: the sender ID is a prefix of the IV's counter; we allow 1 to 32 bits (SID_VALUE is 4 octets).
MAX_SENDER_ID_BITS = 32


@attrs.frozen
class GroupPolicy:
    """Everything the key server holds about one group."""

    name: str
    teks: tuple[TEKPolicy, ...]
    members: tuple[MemberRule, ...] = ()
    number: int | None = None
    oid: str | None = None
    kek: KEKPolicy | None = None
    rekey: RekeyTransport | None = None
    gap: GAPPolicy | None = None
    pfs: PFS = PFS.ALLOW
    sender_id_bits: int = 16
    max_sender_ids: int = 16

    def __attrs_post_init__(self):
        if self.number is None and self.oid is None:
            raise ValueError(f"group {self.name!r} has neither a number nor an OID")
        self.ids  # checks both
        if not self.teks:
            raise ValueError(f"group {self.name!r} has no TEK (GROUPKEY-PULL sends SAT+)")
        if len({t.name for t in self.teks}) != len(self.teks):
            raise ValueError(f"group {self.name!r} has two TEKs of the same name")
        if self.kek is not None and self.rekey is None:
            raise ValueError(f"group {self.name!r} has a KEK but no rekey transport")
        if not 1 <= self.sender_id_bits <= MAX_SENDER_ID_BITS:
            raise ValueError(f"{self.sender_id_bits} sender ID bits (1 to {MAX_SENDER_ID_BITS})")
        if self.max_sender_ids < 1:
            raise ValueError("max_sender_ids must be at least 1")

    @property
    def ids(self) -> tuple[GroupId, ...]:
        """Every name of the group."""
        out = []
        if self.number is not None:
            out.append(GroupId(number=self.number))
        if self.oid is not None:
            out.append(GroupId(oid=self.oid))
        return tuple(out)

    @property
    def needs_sender_ids(self) -> bool:
        return any(t.counter_mode for t in self.teks)

    @property
    def certificate_rules(self) -> tuple[CertificateAttributes, ...]:
        return tuple(r for r in self.members if isinstance(r, CertificateAttributes))

    def authorizes(self, member: Member) -> bool:
        """Whether any member rule names ``member``.  A group without rules admits nobody."""
        return any(rule.matches(member) for rule in self.members)
