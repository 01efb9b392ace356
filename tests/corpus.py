"""Named, realistic ISAKMP / IPsec DOI messages built from the codec's objects (no GDOI: see the GDOI corpus).

Sizes are those of real exchanges: KE of 256 octets for MODP-2048 (RFC 3526) and 64 for ECP-256 (RFC 5903
section 7), 32-octet nonces, HASH and NAT-D payloads of the SHA2-256 output size, 16-octet vendor IDs.  Every
opaque octet string is drawn from SHAKE-256 of a label, so the corpus is the same on every run; the certificates
are real DER with deterministic ECDSA signatures (RFC 4754 authentication).

Main Mode MM5/MM6 and the Informational and Quick Mode messages are shown as they look once decrypted: the same
payloads with the E flag clear.  The ``*-encrypted`` entries show the E flag with an opaque body instead.

:func:`all_messages` returns the list; tests, benchmarks and capture tools share it.
"""

import datetime
import functools
import hashlib
import ipaddress
import struct

import attrs

from gdoiserver.codec import (
    KE,
    NATD,
    NATOA,
    NON_ESP_MARKER,
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
    VendorID,
    encode_attributes,
)
from gdoiserver.codec.constants import (
    DOI,
    DPD_VENDOR_ID,
    NAT_T_VENDOR_ID,
    AHTransformID,
    AuthAlgorithm,
    CertEncoding,
    EncapsulationMode,
    ESPTransformID,
    ExchangeType,
    Flags,
    IDType,
    IPsecAttr,
    LifeType,
    NotifyType,
    OakleyAttr,
    OakleyAuth,
    OakleyEncryption,
    OakleyGroup,
    OakleyHash,
    PayloadType,
    ProtocolID,
    Situation,
    TransformID,
)

#: Addresses of the two ends, as a capture on loopback shows them (see tests/tshark.py and peers.md).
INITIATOR_V4, RESPONDER_V4 = "127.0.0.1", "127.0.0.2"
INITIATOR_V6 = RESPONDER_V6 = "::1"

_NONCE = 32  # octets (RFC 2409 section 5: 8 to 256)
_PRF = 32  # SHA2-256 output: HASH and NAT-D sizes
#: IPCOMP_DEFLATE, an IPCOMP transform identifier (RFC 2407 section 4.4.5).
IPCOMP_DEFLATE = 2
_KE_SIZE = {OakleyGroup.MODP_2048: 256, OakleyGroup.ECP_256: 64}


@attrs.frozen
class Example:
    """One corpus message: ``name``, the ``message`` object, and the ``doi`` to decode it with.

    ``initiator`` says which end sends it; ``port`` is 4500 for a message sent after the NAT-T float, which
    travels with the non-ESP marker (RFC 3948 section 2.2); ``ipv6`` puts it between IPv6 ends.
    """

    name: str
    message: Message
    doi: int = DOI.IPSEC
    initiator: bool = True
    port: int = 500
    ipv6: bool = False

    def wire(self) -> bytes:
        """The message as the UDP payload: behind the non-ESP marker on port 4500."""
        data = self.message.encode()
        return NON_ESP_MARKER + data if self.port == 4500 else data

    def addresses(self) -> tuple[str, str]:
        """(source, destination) of the datagram that carries it."""
        ends = (INITIATOR_V6, RESPONDER_V6) if self.ipv6 else (INITIATOR_V4, RESPONDER_V4)
        return ends if self.initiator else ends[::-1]


def octets(label: str, size: int) -> bytes:
    """``size`` random-looking octets, the same for the same label."""
    return hashlib.shake_256(label.encode()).digest(size)


#: The cookies of the Main Mode ISAKMP SA, under which the Informational and Quick Mode examples run.
_MM_COOKIES = (octets("mm icookie", 8), octets("mm rcookie", 8))


def _nat_d(icookie: bytes, rcookie: bytes, address: str, port: int) -> NATD:
    """HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash, SHA2-256 here (RFC 3947 section 3.2)."""
    ip = ipaddress.ip_address(address).packed
    return NATD(hashlib.sha256(icookie + rcookie + ip + struct.pack("!H", port)).digest())


def _nat_ds(icookie, rcookie, initiator: bool) -> tuple:
    """The two NAT-D payloads a sender puts in: the remote end's first, then its own (RFC 3947 section 3.2)."""
    local, remote = (INITIATOR_V4, RESPONDER_V4) if initiator else (RESPONDER_V4, INITIATOR_V4)
    return _nat_d(icookie, rcookie, remote, 500), _nat_d(icookie, rcookie, local, 500)


# Phase 1 ------------------------------------------------------------------------------------------------------


def _ike_transform(number, encryption, key_length, hash_, auth, group, life_seconds) -> Transform:
    """A KEY_IKE transform in the attribute order strongSwan and Libreswan send (RFC 2409 appendix A)."""
    attributes = [Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, encryption)]
    if key_length:
        attributes.append(Attribute(OakleyAttr.KEY_LENGTH, key_length))
    attributes += [
        Attribute(OakleyAttr.HASH_ALGORITHM, hash_),
        Attribute(OakleyAttr.AUTHENTICATION_METHOD, auth),
        Attribute(OakleyAttr.GROUP_DESCRIPTION, group),
        Attribute(OakleyAttr.LIFE_TYPE, LifeType.SECONDS),
        Attribute.number(OakleyAttr.LIFE_DURATION, life_seconds),  # TLV once it passes 16 bits
    ]
    return Transform(number, TransformID.KEY_IKE, tuple(attributes))


def _phase1_sa(*transforms) -> SA:
    """A Phase 1 SA: one ISAKMP proposal with no SPI (RFC 2409 section 5) offering ``transforms``."""
    return SA(DOI.IPSEC, Situation.IDENTITY_ONLY, (Proposal(1, ProtocolID.ISAKMP, b"", tuple(transforms)),))


_PSK_OFFER = (
    _ike_transform(1, OakleyEncryption.AES_CBC, 256, OakleyHash.SHA2_256, OakleyAuth.PRE_SHARED_KEY,
                   OakleyGroup.MODP_2048, 28800),
    _ike_transform(2, OakleyEncryption.AES_CBC, 128, OakleyHash.SHA2_256, OakleyAuth.PRE_SHARED_KEY,
                   OakleyGroup.ECP_256, 28800),
    _ike_transform(3, OakleyEncryption.TRIPLEDES_CBC, 0, OakleyHash.SHA, OakleyAuth.PRE_SHARED_KEY,
                   OakleyGroup.MODP_2048, 86400),
)
_VIDS = (VendorID(NAT_T_VENDOR_ID), VendorID(DPD_VENDOR_ID))


def _key(name: str):
    """A P-256 private key that is the same on every run."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.derive_private_key(int.from_bytes(octets(name + " key", 31), "big"), ec.SECP256R1())


def _dn(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gdoiserver test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


_CA = "Test CA"


@functools.cache
def _certificate(host: str) -> tuple[bytes, bytes]:
    """(subject DN, certificate) in DER for ``host``, issued by the test CA; ECDSA P-256 keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_dn(host))
        .issuer_name(_dn(_CA))
        .public_key(_key(host).public_key())
        .serial_number(int.from_bytes(octets(host + " serial", 8), "big") >> 1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(_key(_CA), hashes.SHA256(), ecdsa_deterministic=True)
    )
    return _dn(host).public_bytes(), cert.public_bytes(serialization.Encoding.DER)


def main_mode() -> list[Example]:
    """Main Mode with pre-shared keys (RFC 2409 section 5.4) and NAT-T (RFC 3947 section 3)."""
    ci, cr = _MM_COOKIES
    chosen = _phase1_sa(_PSK_OFFER[0])
    ke = _KE_SIZE[OakleyGroup.MODP_2048]

    def msg(payloads):
        return Message(ci, cr, ExchangeType.MAIN_MODE, payloads=payloads)

    return [
        Example("MM1", Message(ci, bytes(8), ExchangeType.MAIN_MODE, payloads=(_phase1_sa(*_PSK_OFFER), *_VIDS))),
        Example("MM2", msg((chosen, *_VIDS)), initiator=False),
        Example("MM3", msg((KE(octets("mm gxi", ke)), Nonce(octets("mm ni", _NONCE)), *_nat_ds(ci, cr, True)))),
        Example("MM4", msg((KE(octets("mm gxr", ke)), Nonce(octets("mm nr", _NONCE)), *_nat_ds(ci, cr, False))),
                initiator=False),
        Example("MM5", msg((
            Identification.of(ipaddress.ip_address(INITIATOR_V4), protocol_id=17, port=500),
            Hash(octets("mm hash_i", _PRF)),
            Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.INITIAL_CONTACT, ci + cr),
        ))),
        Example("MM6", msg((Identification.of("gw.example.org"), Hash(octets("mm hash_r", _PRF)))), initiator=False),
    ]


def _ecdsa_signature(host: str) -> bytes:
    """An RFC 4754 section 7 signature by ``host``: r | s, 32 octets each, from a real P-256 signature."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    r, s = decode_dss_signature(_key(host).sign(octets(host + " signed", 32), algorithm))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def main_mode_signatures() -> list[Example]:
    """Main Mode with ECDSA-256 signatures (RFC 2409 section 5.1, RFC 4754): CR, CERT and SIG payloads."""
    ci, cr = octets("mm-sig icookie", 8), octets("mm-sig rcookie", 8)
    ke = _KE_SIZE[OakleyGroup.ECP_256]
    request = CertificateRequest(CertEncoding.X509_SIGNATURE, _dn(_CA).public_bytes())
    offer = _ike_transform(1, OakleyEncryption.AES_CBC, 128, OakleyHash.SHA2_256, OakleyAuth.ECDSA_SHA256_P256,
                           OakleyGroup.ECP_256, 28800)

    def msg(payloads):
        return Message(ci, cr, ExchangeType.MAIN_MODE, payloads=payloads)

    def authentication(host):
        dn, cert = _certificate(host)
        return (Identification(IDType.DER_ASN1_DN, 0, 0, dn), Certificate(CertEncoding.X509_SIGNATURE, cert))

    return [
        Example("MM1-ecdsa", Message(ci, bytes(8), ExchangeType.MAIN_MODE, payloads=(_phase1_sa(offer), *_VIDS))),
        Example("MM3-ecdsa", msg((KE(octets("sig gxi", ke)), Nonce(octets("sig ni", _NONCE)), request,
                                  *_nat_ds(ci, cr, True)))),
        Example("MM4-ecdsa", msg((KE(octets("sig gxr", ke)), Nonce(octets("sig nr", _NONCE)), request,
                                  *_nat_ds(ci, cr, False))), initiator=False),
        Example("MM5-ecdsa", msg((*authentication("branch.example.org"), request,
                                  Signature(_ecdsa_signature("branch.example.org"))))),
        Example("MM6-ecdsa", msg((*authentication("gw.example.org"), Signature(_ecdsa_signature("gw.example.org")))),
                initiator=False),
    ]


def aggressive_mode() -> list[Example]:
    """Aggressive Mode with pre-shared keys over ECP-256 (RFC 2409 section 5.4) and NAT-T (RFC 3947 section 3)."""
    ci, cr = octets("am icookie", 8), octets("am rcookie", 8)
    ke = _KE_SIZE[OakleyGroup.ECP_256]
    sa = _phase1_sa(_ike_transform(1, OakleyEncryption.AES_CBC, 256, OakleyHash.SHA2_256,
                                   OakleyAuth.PRE_SHARED_KEY, OakleyGroup.ECP_256, 28800))
    am = ExchangeType.AGGRESSIVE
    return [
        Example("AM1", Message(ci, bytes(8), am, payloads=(
            sa, KE(octets("am gxi", ke)), Nonce(octets("am ni", _NONCE)), Identification.of("alice@example.org"),
            *_VIDS,
        ))),
        Example("AM2", Message(ci, cr, am, payloads=(
            sa, KE(octets("am gxr", ke)), Nonce(octets("am nr", _NONCE)), Identification.key_id(b"branch-gw-7"),
            Hash(octets("am hash_r", _PRF)), *_VIDS, *_nat_ds(ci, cr, False),
        )), initiator=False),
        Example("AM3", Message(ci, cr, am, payloads=(Hash(octets("am hash_i", _PRF)), *_nat_ds(ci, cr, True)))),
    ]


def informational() -> list[Example]:
    """Informational exchanges (RFC 2408 section 4.8): notifications, DPD (RFC 3706 section 5) and deletes."""
    ci, cr = _MM_COOKIES
    info = ExchangeType.INFORMATIONAL

    def protected(label, payload, initiator=True):
        mid = int.from_bytes(octets(label + " mid", 4), "big")
        hash_ = Hash(octets(label + " hash", _PRF))
        return Example(label, Message(ci, cr, info, 0, mid, (hash_, payload)), initiator=initiator)

    def dpd(kind, seq):
        return Notification(DOI.IPSEC, ProtocolID.ISAKMP, kind, ci + cr, struct.pack("!I", seq))

    return [
        protected("INFO-initial-contact", Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.INITIAL_CONTACT,
                                                       ci + cr)),
        protected("INFO-dpd-r-u-there", dpd(NotifyType.R_U_THERE, 0x2A3B4C5D)),
        protected("INFO-dpd-r-u-there-ack", dpd(NotifyType.R_U_THERE_ACK, 0x2A3B4C5D), initiator=False),
        protected("INFO-delete-isakmp", Delete(DOI.IPSEC, ProtocolID.ISAKMP, (ci + cr,))),
        protected("INFO-delete-esp", Delete(DOI.IPSEC, ProtocolID.IPSEC_ESP,
                                            (octets("esp spi in", 4), octets("esp spi out", 4)))),
        # An unprotected answer to MM1 (RFC 2408 section 5.4): no HASH, no message ID.
        Example("INFO-no-proposal-chosen", Message(ci, cr, info, payloads=(
            Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.NO_PROPOSAL_CHOSEN),
        )), initiator=False),
    ]


# Phase 2 ------------------------------------------------------------------------------------------------------


def _ipsec_attributes(mode, *, auth=None, key_length=None, group=None) -> tuple[Attribute, ...]:
    """IPsec SA attributes (RFC 2407 section 4.5): both lifetimes, then group, mode, authentication, key length."""
    attributes = [
        Attribute(IPsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
        Attribute.number(IPsecAttr.SA_LIFE_DURATION, 3600),
        Attribute(IPsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES),
        Attribute.number(IPsecAttr.SA_LIFE_DURATION, 4608000),  # four octets: TLV form
    ]
    if group is not None:
        attributes.append(Attribute(IPsecAttr.GROUP_DESCRIPTION, group))
    attributes.append(Attribute(IPsecAttr.ENCAPSULATION_MODE, mode))
    if auth is not None:
        attributes.append(Attribute(IPsecAttr.AUTHENTICATION_ALGORITHM, auth))
    if key_length is not None:
        attributes.append(Attribute(IPsecAttr.KEY_LENGTH, key_length))
    return tuple(attributes)


def _esp_offer(mode, group=None) -> tuple[Transform, ...]:
    """ESP with AES-CBC and HMAC-SHA2-256 (RFC 4868), AES-GCM-16 (RFC 4106 section 8.1: no authentication
    algorithm) and AES-CTR (RFC 3686)."""
    return (
        Transform(1, ESPTransformID.AES_CBC, _ipsec_attributes(mode, auth=AuthAlgorithm.HMAC_SHA2_256,
                                                               key_length=256, group=group)),
        Transform(2, ESPTransformID.AES_GCM_16, _ipsec_attributes(mode, key_length=256, group=group)),
        Transform(3, ESPTransformID.AES_CTR, _ipsec_attributes(mode, auth=AuthAlgorithm.HMAC_SHA2_256,
                                                               key_length=128, group=group)),
    )


def _phase2_sa(*proposals) -> SA:
    return SA(DOI.IPSEC, Situation.IDENTITY_ONLY, tuple(proposals))


def quick_mode() -> list[Example]:
    """Quick Mode (RFC 2409 section 5.5) under the IPsec DOI, with PFS, every IP ID type and NAT-T."""
    ci, cr = _MM_COOKIES
    qm = ExchangeType.QUICK_MODE
    spi_i, spi_r = octets("qm spi i", 4), octets("qm spi r", 4)
    out = []

    def add(name, label, payloads, **kw):
        mid = int.from_bytes(octets(label + " mid", 4), "big")
        out.append(Example(name, Message(ci, cr, qm, 0, mid, tuple(payloads)), **kw))

    # Tunnel mode between IPv4 subnets, with PFS over MODP-2048: QM1, QM2, QM3.
    group = OakleyGroup.MODP_2048
    ids = tuple(Identification.of(ipaddress.ip_network(n)) for n in ("10.1.0.0/16", "10.2.0.0/16"))
    offer = Proposal(1, ProtocolID.IPSEC_ESP, spi_i, _esp_offer(EncapsulationMode.TUNNEL, group))
    answer = Proposal(1, ProtocolID.IPSEC_ESP, spi_r, offer.transforms[:1])
    add("QM1", "qm", [Hash(octets("qm hash1", _PRF)), _phase2_sa(offer), Nonce(octets("qm ni", _NONCE)),
                      KE(octets("qm gxi", _KE_SIZE[group])), *ids])
    # The responder keeps the SA for 1800 seconds only and says so (RFC 2407 section 4.6.3.1).
    lifetime = Notification(DOI.IPSEC, ProtocolID.IPSEC_ESP, NotifyType.RESPONDER_LIFETIME, spi_r, encode_attributes((
        Attribute(IPsecAttr.SA_LIFE_TYPE, LifeType.SECONDS), Attribute.number(IPsecAttr.SA_LIFE_DURATION, 1800))))
    add("QM2", "qm", [Hash(octets("qm hash2", _PRF)), _phase2_sa(answer), Nonce(octets("qm nr", _NONCE)),
                      KE(octets("qm gxr", _KE_SIZE[group])), *ids, lifetime], initiator=False)
    add("QM3", "qm", [Hash(octets("qm hash3", _PRF))])

    # AH and ESP together (one proposal number: RFC 2408 section 4.2) in transport mode, for L2TP between hosts.
    hosts = (Identification.of(ipaddress.ip_address("192.0.2.10"), protocol_id=17, port=1701),
             Identification.of(ipaddress.ip_address("198.51.100.20"), protocol_id=17, port=1701))
    ah = Proposal(1, ProtocolID.IPSEC_AH, octets("qm-ah spi ah", 4), (
        Transform(1, AHTransformID.SHA2_256, _ipsec_attributes(EncapsulationMode.TRANSPORT,
                                                               auth=AuthAlgorithm.HMAC_SHA2_256)),))
    esp = Proposal(1, ProtocolID.IPSEC_ESP, octets("qm-ah spi esp", 4), (
        Transform(1, ESPTransformID.AES_CBC, _ipsec_attributes(EncapsulationMode.TRANSPORT, key_length=128)),))
    add("QM1-ah-esp-transport", "qm-ah", [Hash(octets("qm-ah hash1", _PRF)), _phase2_sa(ah, esp),
                                          Nonce(octets("qm-ah ni", _NONCE)), *hosts])
    # The responder set the Commit bit, so it ends the exchange with CONNECTED (RFC 2409 section 5.5).
    out.append(Example("QM4-connected", Message(ci, cr, qm, Flags.COMMIT, out[-1].message.message_id, (
        Hash(octets("qm-ah hash4", _PRF)),
        Notification(DOI.IPSEC, ProtocolID.IPSEC_ESP, NotifyType.CONNECTED, esp.spi),
    )), initiator=False))

    # Two alternatives (RFC 2408 section 4.2): ESP with IPComp (a 2-octet CPI, RFC 3173 section 4.1), or ESP alone.
    cpi = octets("qm-ipcomp cpi", 2)
    gcm = Transform(1, ESPTransformID.AES_GCM_16, _ipsec_attributes(EncapsulationMode.TUNNEL, key_length=128))
    add("QM1-esp-ipcomp", "qm-ipcomp", [
        Hash(octets("qm-ipcomp hash1", _PRF)),
        _phase2_sa(Proposal(1, ProtocolID.IPSEC_ESP, octets("qm-ipcomp spi1", 4), (gcm,)),
                   Proposal(1, ProtocolID.IPCOMP, cpi, (
                       Transform(1, IPCOMP_DEFLATE, _ipsec_attributes(EncapsulationMode.TUNNEL)),)),
                   Proposal(2, ProtocolID.IPSEC_ESP, octets("qm-ipcomp spi2", 4), (gcm,))),
        Nonce(octets("qm-ipcomp ni", _NONCE)), *ids,
    ])

    # After the NAT-T float to UDP 4500: UDP-Encapsulated-Tunnel between address ranges (RFC 3947 section 5.1) ...
    ranges = (Identification.of((ipaddress.ip_address("10.3.0.1"), ipaddress.ip_address("10.3.0.254"))),
              Identification.of((ipaddress.ip_address("10.4.0.1"), ipaddress.ip_address("10.4.0.254"))))
    tunnel = Proposal(1, ProtocolID.IPSEC_ESP, octets("qm-natt spi", 4), (
        Transform(1, ESPTransformID.AES_GCM_16, (
            *_ipsec_attributes(EncapsulationMode.UDP_ENCAPSULATED_TUNNEL, key_length=128),
            Attribute(IPsecAttr.EXTENDED_SEQUENCE_NUMBER, 1),  # RFC 4304 section 2
        )),))
    add("QM1-natt-tunnel", "qm-natt", [Hash(octets("qm-natt hash1", _PRF)), _phase2_sa(tunnel),
                                       Nonce(octets("qm-natt ni", _NONCE)), *ranges], port=4500)

    # ... and UDP-Encapsulated-Transport with the original addresses in NAT-OAi and NAT-OAr (section 5.2).
    transport = Proposal(1, ProtocolID.IPSEC_ESP, octets("qm-nattt spi", 4), (
        Transform(1, ESPTransformID.AES_CBC, _ipsec_attributes(EncapsulationMode.UDP_ENCAPSULATED_TRANSPORT,
                                                               auth=AuthAlgorithm.HMAC_SHA2_256, key_length=256)),))
    add("QM1-natt-transport", "qm-nattt", [
        Hash(octets("qm-nattt hash1", _PRF)), _phase2_sa(transport), Nonce(octets("qm-nattt ni", _NONCE)),
        Identification.of(ipaddress.ip_address("192.168.1.20"), protocol_id=17, port=1701),
        Identification.of(ipaddress.ip_address("203.0.113.5"), protocol_id=17, port=1701),
        NATOA.of("192.168.1.20"), NATOA.of("203.0.113.5"),
    ], port=4500)

    # IPv6: tunnel between a subnet and a range, and AH between two hosts with PFS over ECP-256.
    add("QM1-ipv6-tunnel", "qm-v6", [
        Hash(octets("qm-v6 hash1", _PRF)),
        _phase2_sa(Proposal(1, ProtocolID.IPSEC_ESP, octets("qm-v6 spi", 4), _esp_offer(EncapsulationMode.TUNNEL))),
        Nonce(octets("qm-v6 ni", _NONCE)),
        Identification.of(ipaddress.ip_network("2001:db8:1::/48")),
        Identification.of((ipaddress.ip_address("2001:db8:2::1"), ipaddress.ip_address("2001:db8:2::ffff"))),
    ], ipv6=True)
    ecp = OakleyGroup.ECP_256
    add("QM1-ipv6-ah-pfs", "qm-v6ah", [
        Hash(octets("qm-v6ah hash1", _PRF)),
        _phase2_sa(Proposal(1, ProtocolID.IPSEC_AH, octets("qm-v6ah spi", 4), (
            Transform(1, AHTransformID.SHA2_256, _ipsec_attributes(
                EncapsulationMode.TRANSPORT, auth=AuthAlgorithm.HMAC_SHA2_256, group=ecp)),))),
        Nonce(octets("qm-v6ah ni", _NONCE)),
        KE(octets("qm-v6ah gxi", _KE_SIZE[ecp])),
        Identification.of(ipaddress.ip_address("2001:db8:1::10"), protocol_id=6, port=179),
        Identification.of(ipaddress.ip_address("2001:db8:2::20"), protocol_id=6, port=0),
    ], ipv6=True)
    return out


def encrypted() -> list[Example]:
    """Messages as sent, with the E flag set and an AES-CBC body (RFC 2409 appendix B): opaque to the codec."""
    ci, cr = _MM_COOKIES
    qm_mid = int.from_bytes(octets("qm-enc mid", 4), "big")
    return [
        Example("MM5-encrypted", Message(ci, cr, ExchangeType.MAIN_MODE, Flags.ENCRYPTION, 0,
                                         ciphertext=octets("mm5 ciphertext", 96), next_payload=PayloadType.ID)),
        Example("QM1-encrypted", Message(ci, cr, ExchangeType.QUICK_MODE, Flags.ENCRYPTION, qm_mid,
                                         ciphertext=octets("qm1 ciphertext", 432), next_payload=PayloadType.HASH)),
    ]


@functools.cache
def _all() -> tuple[Example, ...]:
    return tuple(main_mode() + main_mode_signatures() + aggressive_mode() + informational() + quick_mode()
                 + encrypted())


def all_messages() -> list[Example]:
    """Every example of the corpus, in exchange order."""
    return list(_all())


def by_name(name: str) -> Example:
    """The example called ``name``."""
    for e in _all():
        if e.name == name:
            return e
    raise KeyError(name)
