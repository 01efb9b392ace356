"""Wire constants of ISAKMP (RFC 2408), the IPsec DOI (RFC 2407), IKEv1 (RFC 2409) and NAT-T (RFC 3947).

GDOI's own numbers live in :mod:`gdoiserver.codec.gdoi`.  Decoded payloads keep plain ``int`` fields so that values
this module does not name still round-trip; these enums give the known ones their RFC names.
"""

import enum


class DOI(enum.IntEnum):
    """Domain of Interpretation numbers (RFC 2408 section 3.4; RFC 6407 section 5.1)."""

    ISAKMP = 0
    IPSEC = 1
    GDOI = 2


class PayloadType(enum.IntEnum):
    """Next Payload values (RFC 2408 section 3.1, RFC 3947 section 3, RFC 6407 section 5)."""

    NONE = 0
    SA = 1
    P = 2
    T = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    N = 11
    D = 12
    VID = 13
    SAK = 15
    SAT = 16
    KD = 17
    SEQ = 18
    POP = 19
    NAT_D = 20
    NAT_OA = 21
    GAP = 22


class ExchangeType(enum.IntEnum):
    """Exchange types (RFC 2408 section 3.1; RFC 2409 section 5; RFC 6407 sections 3 and 4).

    32 and 33 mean Quick Mode and New Group Mode under the IPsec DOI and GROUPKEY-PULL and GROUPKEY-PUSH under
    GDOI: the DOI of the SA a message is under tells them apart.
    """

    NONE = 0
    BASE = 1
    IDENTITY_PROTECTION = 2  # Main Mode
    AUTHENTICATION_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    QUICK_MODE = 32
    NEW_GROUP_MODE = 33

    MAIN_MODE = 2
    GROUPKEY_PULL = 32
    GROUPKEY_PUSH = 33
    #: RFC 8263's acknowledgement of a GROUPKEY-PUSH (number not confirmed against the IANA registry: see
    #: docs/wire-format.md).
    GROUPKEY_PUSH_ACK = 35


class Flags(enum.IntFlag):
    """ISAKMP header flags (RFC 2408 section 3.1)."""

    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTHENTICATION_ONLY = 0x04


class NotifyType(enum.IntEnum):
    """Notify message types (RFC 2408 section 3.14.1, RFC 2407 section 4.6.3, RFC 3706 section 5.2)."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578
    R_U_THERE = 36136
    R_U_THERE_ACK = 36137


class ProtocolID(enum.IntEnum):
    """Protocol identifiers in Proposal, Notify and Delete payloads (RFC 2407 section 4.4.1)."""

    ISAKMP = 1
    IPSEC_AH = 2
    IPSEC_ESP = 3
    IPCOMP = 4


class Situation(enum.IntFlag):
    """IPsec DOI situation bitmap (RFC 2407 section 4.2)."""

    IDENTITY_ONLY = 0x01
    SECRECY = 0x02
    INTEGRITY = 0x04


class IDType(enum.IntEnum):
    """Identification types (RFC 2407 section 4.6.2.1; ID_OID from RFC 8052 section 4)."""

    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11
    LIST = 12
    OID = 13


class CertEncoding(enum.IntEnum):
    """Certificate encodings in CERT and CR payloads (RFC 2408 section 3.9)."""

    NONE = 0
    PKCS7 = 1
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4
    X509_KEY_EXCHANGE = 5
    KERBEROS = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10


class TransformID(enum.IntEnum):
    """ISAKMP transform identifier (RFC 2407 section 4.4.2)."""

    KEY_IKE = 1


class ESPTransformID(enum.IntEnum):
    """IPsec ESP transform identifiers (RFC 2407 section 4.4.4; RFC 3686; RFC 4106; RFC 4309)."""

    DES = 2
    TRIPLEDES = 3
    NULL = 11
    AES_CBC = 12
    AES_CTR = 13
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 23


class AHTransformID(enum.IntEnum):
    """IPsec AH transform identifiers (RFC 2407 section 4.4.3; RFC 4868)."""

    MD5 = 2
    SHA = 3
    DES = 4
    SHA2_256 = 5
    SHA2_384 = 6
    SHA2_512 = 7


class OakleyAttr(enum.IntEnum):
    """Phase 1 SA attribute classes (RFC 2409 appendix A)."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


class OakleyEncryption(enum.IntEnum):
    """Phase 1 encryption algorithms (RFC 2409 appendix A; AES from RFC 3602 section 5.1)."""

    DES_CBC = 1
    IDEA_CBC = 2
    BLOWFISH_CBC = 3
    RC5_R16_B64_CBC = 4
    TRIPLEDES_CBC = 5
    CAST_CBC = 6
    AES_CBC = 7


class OakleyHash(enum.IntEnum):
    """Phase 1 hash algorithms (RFC 2409 appendix A; SHA-2 from RFC 4868 section 2.1)."""

    MD5 = 1
    SHA = 2
    TIGER = 3
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6


class OakleyAuth(enum.IntEnum):
    """Phase 1 authentication methods (RFC 2409 appendix A; ECDSA from RFC 4754 section 3)."""

    PRE_SHARED_KEY = 1
    DSS_SIGNATURES = 2
    RSA_SIGNATURES = 3
    RSA_ENCRYPTION = 4
    REVISED_RSA_ENCRYPTION = 5
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11


class OakleyGroup(enum.IntEnum):
    """Diffie-Hellman group descriptions (RFC 2409 section 6, RFC 3526, RFC 5903)."""

    MODP_768 = 1
    MODP_1024 = 2
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21


class LifeType(enum.IntEnum):
    """SA life types (RFC 2409 appendix A, RFC 2407 section 4.5)."""

    SECONDS = 1
    KILOBYTES = 2


class IPsecAttr(enum.IntEnum):
    """IPsec SA attribute classes (RFC 2407 section 4.5; RFC 4304; RFC 6407 section 5.4.1)."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTHENTICATION_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMPRESS_DICTIONARY_SIZE = 8
    COMPRESS_PRIVATE_ALGORITHM = 9
    ECN_TUNNEL = 10
    EXTENDED_SEQUENCE_NUMBER = 11
    ADDRESS_PRESERVATION = 14
    SA_DIRECTION = 15


class EncapsulationMode(enum.IntEnum):
    """Encapsulation modes (RFC 2407 section 4.5; UDP-encapsulated modes from RFC 3947 section 5)."""

    TUNNEL = 1
    TRANSPORT = 2
    UDP_ENCAPSULATED_TUNNEL = 3
    UDP_ENCAPSULATED_TRANSPORT = 4


class AuthAlgorithm(enum.IntEnum):
    """IPsec authentication algorithms (RFC 2407 section 4.5; RFC 4868 section 2.1)."""

    HMAC_MD5 = 1
    HMAC_SHA = 2
    DES_MAC = 3
    KPDK = 4
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    AES_XCBC_MAC = 9


#: The vendor ID that announces RFC 3947 NAT-T support: MD5("RFC 3947") (RFC 3947 section 3.1).
NAT_T_VENDOR_ID = bytes.fromhex("4a131c81070358455c5728f20e95452f")
#: RFC 3706 section 2: the DPD vendor ID.
DPD_VENDOR_ID = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")
