"""Golden bytes for every generic payload and the ISAKMP header: decoded field by field, re-encoded identically.

Each fixture is hex with one comment per field, laid out as the RFC's figure of that payload.  The payloads are
written alone (their Next Payload is 0) and decoded with :func:`decode_chain` from their own payload type.
"""

import ipaddress

from twisted.trial import unittest

from gdoiserver.codec import (
    HEADER_SIZE,
    KE,
    NATD,
    NATOA,
    SA,
    Attribute,
    Certificate,
    CertificateRequest,
    Context,
    DecodeError,
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
    decode_chain,
    decode_header,
    decode_message,
    encode_chain,
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


def unhex(text: str) -> bytes:
    """Hex digits, with a comment after '#' on any line."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


CKY_I = bytes.fromhex("0102030405060708")
CKY_R = bytes.fromhex("1112131415161718")

# RFC 2408 sections 3.4-3.6; RFC 2409 appendix A: a Phase 1 SA offering two transforms.
SA_PHASE1 = """
00                  # SA: Next Payload: none
00                  # RESERVED
00 54               # Payload Length: 84
00 00 00 01         # Domain of Interpretation: IPsec
00 00 00 01         # Situation: SIT_IDENTITY_ONLY (RFC 2407 section 4.2)
  00                # Proposal: Next Payload: none (the last Proposal)
  00                # RESERVED
  00 48             # Payload Length: 72
  01                # Proposal #: 1
  01                # Protocol-Id: PROTO_ISAKMP
  00                # SPI Size: 0
  02                # # of Transforms: 2
    03              # Transform: Next Payload: 3 (another Transform follows)
    00              # RESERVED
    00 28           # Payload Length: 40
    01              # Transform #: 1
    01              # Transform-Id: KEY_IKE
    00 00           # RESERVED2
    80 01 00 07     # TV (AF=1) Encryption Algorithm: AES-CBC
    80 0e 01 00     # TV Key Length: 256
    80 02 00 04     # TV Hash Algorithm: SHA2-256
    80 03 00 01     # TV Authentication Method: pre-shared key
    80 04 00 0e     # TV Group Description: 14 (MODP-2048)
    80 0b 00 01     # TV Life Type: seconds
    00 0c 00 04     # TLV (AF=0) Life Duration, Length: 4
    00 01 51 80     #   86400 seconds
    00              # Transform: Next Payload: none (the last Transform)
    00              # RESERVED
    00 18           # Payload Length: 24
    02              # Transform #: 2
    01              # Transform-Id: KEY_IKE
    00 00           # RESERVED2
    80 01 00 05     # TV Encryption Algorithm: 3DES-CBC
    80 02 00 02     # TV Hash Algorithm: SHA
    80 03 00 01     # TV Authentication Method: pre-shared key
    80 04 00 02     # TV Group Description: 2 (MODP-1024)
"""
SA_PHASE1_OBJECT = SA(DOI.IPSEC, Situation.IDENTITY_ONLY, (
    Proposal(1, ProtocolID.ISAKMP, b"", (
        Transform(1, TransformID.KEY_IKE, (
            Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, OakleyEncryption.AES_CBC),
            Attribute(OakleyAttr.KEY_LENGTH, 256),
            Attribute(OakleyAttr.HASH_ALGORITHM, OakleyHash.SHA2_256),
            Attribute(OakleyAttr.AUTHENTICATION_METHOD, OakleyAuth.PRE_SHARED_KEY),
            Attribute(OakleyAttr.GROUP_DESCRIPTION, OakleyGroup.MODP_2048),
            Attribute(OakleyAttr.LIFE_TYPE, LifeType.SECONDS),
            Attribute(OakleyAttr.LIFE_DURATION, bytes.fromhex("00015180")),
        )),
        Transform(2, TransformID.KEY_IKE, (
            Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, OakleyEncryption.TRIPLEDES_CBC),
            Attribute(OakleyAttr.HASH_ALGORITHM, OakleyHash.SHA),
            Attribute(OakleyAttr.AUTHENTICATION_METHOD, OakleyAuth.PRE_SHARED_KEY),
            Attribute(OakleyAttr.GROUP_DESCRIPTION, OakleyGroup.MODP_1024),
        )),
    )),
))

# RFC 2407 section 4.5: a Phase 2 SA with AH and ESP in one proposal number (both applied, RFC 2408 section 4.2).
SA_PHASE2 = """
00                  # SA: Next Payload: none
00                  # RESERVED
00 58               # Payload Length: 88
00 00 00 01         # DOI: IPsec
00 00 00 01         # Situation: SIT_IDENTITY_ONLY
  02                # Proposal: Next Payload: 2 (another Proposal follows)
  00                # RESERVED
  00 24             # Payload Length: 36
  01                # Proposal #: 1
  02                # Protocol-Id: PROTO_IPSEC_AH
  04                # SPI Size: 4
  01                # # of Transforms: 1
  aa bb cc 01       # SPI
    00              # Transform: Next Payload: none
    00              # RESERVED
    00 18           # Payload Length: 24
    01              # Transform #: 1
    05              # Transform-Id: AH_SHA2-256 (RFC 4868)
    00 00           # RESERVED2
    80 01 00 01     # TV SA Life Type: seconds
    80 02 0e 10     # TV SA Life Duration: 3600 (a variable attribute that fits 16 bits)
    80 04 00 01     # TV Encapsulation Mode: Tunnel
    80 05 00 05     # TV Authentication Algorithm: HMAC-SHA2-256
  00                # Proposal: Next Payload: none
  00                # RESERVED
  00 28             # Payload Length: 40
  01                # Proposal #: 1 (the same number: AH and ESP together)
  03                # Protocol-Id: PROTO_IPSEC_ESP
  04                # SPI Size: 4
  01                # # of Transforms: 1
  aa bb cc 02       # SPI
    00              # Transform: Next Payload: none
    00              # RESERVED
    00 1c           # Payload Length: 28
    01              # Transform #: 1
    0c              # Transform-Id: ESP_AES (AES-CBC)
    00 00           # RESERVED2
    80 01 00 02     # TV SA Life Type: kilobytes
    00 02 00 04     # TLV SA Life Duration, Length: 4
    00 46 50 00     #   4608000 kilobytes
    80 04 00 01     # TV Encapsulation Mode: Tunnel
    80 06 00 80     # TV Key Length: 128
"""
SA_PHASE2_OBJECT = SA(DOI.IPSEC, Situation.IDENTITY_ONLY, (
    Proposal(1, ProtocolID.IPSEC_AH, bytes.fromhex("aabbcc01"), (
        Transform(1, AHTransformID.SHA2_256, (
            Attribute(IPsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
            Attribute(IPsecAttr.SA_LIFE_DURATION, 3600),
            Attribute(IPsecAttr.ENCAPSULATION_MODE, EncapsulationMode.TUNNEL),
            Attribute(IPsecAttr.AUTHENTICATION_ALGORITHM, AuthAlgorithm.HMAC_SHA2_256),
        )),
    )),
    Proposal(1, ProtocolID.IPSEC_ESP, bytes.fromhex("aabbcc02"), (
        Transform(1, ESPTransformID.AES_CBC, (
            Attribute(IPsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES),
            Attribute(IPsecAttr.SA_LIFE_DURATION, bytes.fromhex("00465000")),
            Attribute(IPsecAttr.ENCAPSULATION_MODE, EncapsulationMode.TUNNEL),
            Attribute(IPsecAttr.KEY_LENGTH, 128),
        )),
    )),
))

# Identification payloads in the IPsec DOI's layout (RFC 2407 sections 4.6.2.1 - 4.6.2.12):
# (name, hex, expected object, what Identification.value() reads).
#: A DER Name, CN=gw: SEQUENCE { SET { SEQUENCE { id-at-commonName, UTF8String "gw" } } }.
DN_GW = bytes.fromhex("300d310b300906035504030c026777")
IDENTIFICATIONS = [
    ("ID_IPV4_ADDR", """
00 00 00 0c         # Next Payload, RESERVED, Payload Length: 12
01                  # ID Type: ID_IPV4_ADDR
11                  # Protocol ID: 17 (UDP)
01 f4               # Port: 500
c0 00 02 01         # 192.0.2.1
""", Identification(IDType.IPV4_ADDR, 17, 500, bytes.fromhex("c0000201")), ipaddress.ip_address("192.0.2.1")),
    ("ID_IPV6_ADDR", """
00 00 00 18         # Next Payload, RESERVED, Payload Length: 24
05                  # ID Type: ID_IPV6_ADDR
00                  # Protocol ID: any
00 00               # Port: any
20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01  # 2001:db8::1
""", Identification(IDType.IPV6_ADDR, 0, 0, ipaddress.ip_address("2001:db8::1").packed),
        ipaddress.ip_address("2001:db8::1")),
    ("ID_IPV4_ADDR_SUBNET", """
00 00 00 10         # Next Payload, RESERVED, Payload Length: 16
04                  # ID Type: ID_IPV4_ADDR_SUBNET
00                  # Protocol ID
00 00               # Port
0a 01 00 00         # address 10.1.0.0
ff ff 00 00         # mask 255.255.0.0
""", Identification(IDType.IPV4_ADDR_SUBNET, 0, 0, bytes.fromhex("0a010000ffff0000")),
        ipaddress.ip_network("10.1.0.0/16")),
    ("ID_IPV6_ADDR_SUBNET", """
00 00 00 28         # Next Payload, RESERVED, Payload Length: 40
06                  # ID Type: ID_IPV6_ADDR_SUBNET
00                  # Protocol ID
00 00               # Port
20 01 0d b8 00 01 00 00 00 00 00 00 00 00 00 00  # address 2001:db8:1::
ff ff ff ff ff ff 00 00 00 00 00 00 00 00 00 00  # mask ffff:ffff:ffff:: (/48)
""", Identification(IDType.IPV6_ADDR_SUBNET, 0, 0, bytes.fromhex(
        "20010db8000100000000000000000000" "ffffffffffff00000000000000000000")),
        ipaddress.ip_network("2001:db8:1::/48")),
    ("ID_IPV4_ADDR_RANGE", """
00 00 00 10         # Next Payload, RESERVED, Payload Length: 16
07                  # ID Type: ID_IPV4_ADDR_RANGE
00                  # Protocol ID
00 00               # Port
0a 03 00 01         # start 10.3.0.1
0a 03 00 fe         # end 10.3.0.254
""", Identification(IDType.IPV4_ADDR_RANGE, 0, 0, bytes.fromhex("0a0300010a0300fe")),
        (ipaddress.ip_address("10.3.0.1"), ipaddress.ip_address("10.3.0.254"))),
    ("ID_IPV6_ADDR_RANGE", """
00 00 00 28         # Next Payload, RESERVED, Payload Length: 40
08                  # ID Type: ID_IPV6_ADDR_RANGE
06                  # Protocol ID: 6 (TCP)
00 b3               # Port: 179
20 01 0d b8 00 02 00 00 00 00 00 00 00 00 00 01  # start 2001:db8:2::1
20 01 0d b8 00 02 00 00 00 00 00 00 00 00 ff ff  # end 2001:db8:2::ffff
""", Identification(IDType.IPV6_ADDR_RANGE, 6, 179, bytes.fromhex(
        "20010db8000200000000000000000001" "20010db800020000000000000000ffff")),
        (ipaddress.ip_address("2001:db8:2::1"), ipaddress.ip_address("2001:db8:2::ffff"))),
    ("ID_FQDN", """
00 00 00 16         # Next Payload, RESERVED, Payload Length: 22
02                  # ID Type: ID_FQDN
00                  # Protocol ID
00 00               # Port
67 77 2e 65 78 61 6d 70 6c 65 2e 6f 72 67  # "gw.example.org"
""", Identification(IDType.FQDN, 0, 0, b"gw.example.org"), "gw.example.org"),
    ("ID_USER_FQDN", """
00 00 00 19         # Next Payload, RESERVED, Payload Length: 25
03                  # ID Type: ID_USER_FQDN
00                  # Protocol ID
00 00               # Port
61 6c 69 63 65 40 65 78 61 6d 70 6c 65 2e 6f 72 67  # "alice@example.org"
""", Identification(IDType.USER_FQDN, 0, 0, b"alice@example.org"), "alice@example.org"),
    ("ID_DER_ASN1_DN", """
00 00 00 17         # Next Payload, RESERVED, Payload Length: 23
09                  # ID Type: ID_DER_ASN1_DN
00                  # Protocol ID
00 00               # Port
30 0d 31 0b 30 09 06 03 55 04 03 0c 02 67 77  # Name: CN=gw (DER)
""", Identification(IDType.DER_ASN1_DN, 0, 0, DN_GW), DN_GW),
    ("ID_KEY_ID", """
00 00 00 13         # Next Payload, RESERVED, Payload Length: 19
0b                  # ID Type: ID_KEY_ID
00                  # Protocol ID
00 00               # Port
62 72 61 6e 63 68 2d 67 77 2d 37  # "branch-gw-7" (opaque octets)
""", Identification(IDType.KEY_ID, 0, 0, b"branch-gw-7"), b"branch-gw-7"),
    ("ID_KEY_ID group number", """
00 00 00 0c         # Next Payload, RESERVED, Payload Length: 12
0b                  # ID Type: ID_KEY_ID (a GDOI group, RFC 6407 section 5.2.1)
00                  # Protocol ID
00 00               # Port
00 00 04 d2         # group number 1234, network order
""", Identification.key_id(1234), bytes.fromhex("000004d2")),
]

# The other generic payloads: (name, payload type, hex, expected object).
PAYLOADS = [
    ("KE", PayloadType.KE, """
00 00 00 0c         # Next Payload, RESERVED, Payload Length: 12 (RFC 2408 section 3.7)
01 23 45 67 89 ab cd ef  # Key Exchange Data (shortened: a real group fills its size)
""", KE(bytes.fromhex("0123456789abcdef"))),
    ("CERT", PayloadType.CERT, """
00 00 00 0a         # Next Payload, RESERVED, Payload Length: 10 (RFC 2408 section 3.9)
04                  # Cert Encoding: X.509 Certificate - Signature
30 03 02 01 00      # Certificate Data (opaque to the codec)
""", Certificate(CertEncoding.X509_SIGNATURE, bytes.fromhex("3003020100"))),
    ("CR with authority", PayloadType.CR, """
00 00 00 14         # Next Payload, RESERVED, Payload Length: 20 (RFC 2408 section 3.10)
04                  # Cert Type: X.509 Certificate - Signature
30 0d 31 0b 30 09 06 03 55 04 03 0c 02 67 77  # Certificate Authority: DER Name CN=gw
""", CertificateRequest(CertEncoding.X509_SIGNATURE, DN_GW)),
    ("CR without authority", PayloadType.CR, """
00 00 00 05         # Next Payload, RESERVED, Payload Length: 5
04                  # Cert Type: X.509 Certificate - Signature; no Certificate Authority
""", CertificateRequest(CertEncoding.X509_SIGNATURE)),
    ("HASH", PayloadType.HASH, """
00 00 00 18         # Next Payload, RESERVED, Payload Length: 24 (RFC 2408 section 3.11)
00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 01 02 03 04  # Hash Data: 20 octets (SHA-1 size)
""", Hash(bytes.fromhex("00112233445566778899aabbccddeeff01020304"))),
    ("SIG", PayloadType.SIG, """
00 00 00 14         # Next Payload, RESERVED, Payload Length: 20 (RFC 2408 section 3.12)
5a 5a 5a 5a a5 a5 a5 a5 5a 5a 5a 5a a5 a5 a5 a5  # Signature Data
""", Signature(bytes.fromhex("5a5a5a5aa5a5a5a5" * 2))),
    ("NONCE", PayloadType.NONCE, """
00 00 00 14         # Next Payload, RESERVED, Payload Length: 20 (RFC 2408 section 3.13)
10 32 54 76 98 ba dc fe ef cd ab 89 67 45 23 01  # Nonce Data: 16 octets (RFC 2409 section 5: 8 to 256)
""", Nonce(bytes.fromhex("1032547698badcfeefcdab8967452301"))),
    ("N without SPI", PayloadType.N, """
00 00 00 0c         # Next Payload, RESERVED, Payload Length: 12 (RFC 2408 section 3.14)
00 00 00 01         # DOI: IPsec
01                  # Protocol-ID: PROTO_ISAKMP
00                  # SPI Size: 0
00 0e               # Notify Message Type: NO-PROPOSAL-CHOSEN (14)
""", Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.NO_PROPOSAL_CHOSEN)),
    ("N INITIAL-CONTACT", PayloadType.N, """
00 00 00 1c         # Next Payload, RESERVED, Payload Length: 28
00 00 00 01         # DOI: IPsec
01                  # Protocol-ID: PROTO_ISAKMP
10                  # SPI Size: 16
60 02               # Notify Message Type: INITIAL-CONTACT (24578, RFC 2407 section 4.6.3.3)
01 02 03 04 05 06 07 08  # SPI: initiator cookie
11 12 13 14 15 16 17 18  #      responder cookie
""", Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.INITIAL_CONTACT, CKY_I + CKY_R)),
    ("N R-U-THERE", PayloadType.N, """
00 00 00 20         # Next Payload, RESERVED, Payload Length: 32
00 00 00 01         # DOI: IPsec
01                  # Protocol-ID: PROTO_ISAKMP
10                  # SPI Size: 16
8d 28               # Notify Message Type: R-U-THERE (36136, RFC 3706 section 5.2)
01 02 03 04 05 06 07 08 11 12 13 14 15 16 17 18  # SPI: the cookies
2a 3b 4c 5d         # Notification Data: the 32-bit sequence number
""", Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE, CKY_I + CKY_R, bytes.fromhex("2a3b4c5d"))),
    ("N R-U-THERE-ACK", PayloadType.N, """
00 00 00 20         # Next Payload, RESERVED, Payload Length: 32
00 00 00 01         # DOI: IPsec
01                  # Protocol-ID: PROTO_ISAKMP
10                  # SPI Size: 16
8d 29               # Notify Message Type: R-U-THERE-ACK (36137)
01 02 03 04 05 06 07 08 11 12 13 14 15 16 17 18  # SPI: the cookies
2a 3b 4c 5d         # Notification Data: the sequence number acknowledged
""", Notification(DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE_ACK, CKY_I + CKY_R, bytes.fromhex("2a3b4c5d"))),
    ("D ISAKMP", PayloadType.D, """
00 00 00 1c         # Next Payload, RESERVED, Payload Length: 28 (RFC 2408 section 3.15)
00 00 00 01         # DOI: IPsec
01                  # Protocol-Id: PROTO_ISAKMP
10                  # SPI Size: 16
00 01               # # of SPIs: 1
01 02 03 04 05 06 07 08 11 12 13 14 15 16 17 18  # SPI: the ISAKMP SA's cookies
""", Delete(DOI.IPSEC, ProtocolID.ISAKMP, (CKY_I + CKY_R,))),
    ("D ESP", PayloadType.D, """
00 00 00 14         # Next Payload, RESERVED, Payload Length: 20
00 00 00 01         # DOI: IPsec
03                  # Protocol-Id: PROTO_IPSEC_ESP
04                  # SPI Size: 4
00 02               # # of SPIs: 2
aa bb cc 01         # SPI 1
aa bb cc 02         # SPI 2
""", Delete(DOI.IPSEC, ProtocolID.IPSEC_ESP, (bytes.fromhex("aabbcc01"), bytes.fromhex("aabbcc02")))),
    ("VID NAT-T", PayloadType.VID, """
00 00 00 14         # Next Payload, RESERVED, Payload Length: 20 (RFC 2408 section 3.16)
4a 13 1c 81 07 03 58 45 5c 57 28 f2 0e 95 45 2f  # Vendor ID: MD5("RFC 3947") (RFC 3947 section 3.1)
""", VendorID(NAT_T_VENDOR_ID)),
    ("VID DPD", PayloadType.VID, """
00 00 00 14         # Next Payload, RESERVED, Payload Length: 20
af ca d7 13 68 a1 f1 c9 6b 86 96 fc 77 57 01 00  # Vendor ID: DPD (RFC 3706 section 2)
""", VendorID(DPD_VENDOR_ID)),
    ("NAT-D", PayloadType.NAT_D, """
00 00 00 18         # Next Payload, RESERVED, Payload Length: 24 (RFC 3947 section 3.2)
de ad be ef 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  # HASH of cookies, IP and port (SHA-1 size)
""", NATD(bytes.fromhex("deadbeef000102030405060708090a0b0c0d0e0f"))),
    ("NAT-OA IPv4", PayloadType.NAT_OA, """
00 00 00 0c         # Next Payload, RESERVED, Payload Length: 12 (RFC 3947 section 5.2)
01                  # ID Type: ID_IPV4_ADDR
00 00 00            # RESERVED
c0 a8 01 14         # 192.168.1.20
""", NATOA(IDType.IPV4_ADDR, bytes.fromhex("c0a80114"))),
    ("NAT-OA IPv6", PayloadType.NAT_OA, """
00 00 00 18         # Next Payload, RESERVED, Payload Length: 24
05                  # ID Type: ID_IPV6_ADDR
00 00 00            # RESERVED
20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 05  # 2001:db8::5
""", NATOA(IDType.IPV6_ADDR, ipaddress.ip_address("2001:db8::5").packed)),
]

# RFC 2408 section 3.1 and RFC 2409 section 5: Main Mode message 1.
MM1 = """
01 02 03 04 05 06 07 08  # Initiator Cookie
00 00 00 00 00 00 00 00  # Responder Cookie: zero in the first message
01                  # Next Payload: SA
10                  # MjVer 1, MnVer 0
02                  # Exchange Type: Identity Protection (Main Mode)
00                  # Flags: none
00 00 00 00         # Message ID: 0 in Phase 1
00 00 00 84         # Length: 132
0d 00 00 54         # SA: Next Payload: VID, RESERVED, Payload Length: 84
00 00 00 01         #   DOI: IPsec
00 00 00 01         #   Situation: SIT_IDENTITY_ONLY
00 00 00 48 01 01 00 02  # Proposal: last, length 72, #1, PROTO_ISAKMP, SPI Size 0, 2 transforms
03 00 00 28 01 01 00 00  #   Transform: more follow, length 40, #1, KEY_IKE, RESERVED2
80 01 00 07 80 0e 01 00 80 02 00 04 80 03 00 01 80 04 00 0e 80 0b 00 01  # AES-256, SHA2-256, PSK, 14, seconds
00 0c 00 04 00 01 51 80  #   Life Duration (TLV): 86400
00 00 00 18 02 01 00 00  #   Transform: last, length 24, #2, KEY_IKE, RESERVED2
80 01 00 05 80 02 00 02 80 03 00 01 80 04 00 02  # 3DES, SHA, PSK, group 2
00 00 00 14         # VID: Next Payload: none, RESERVED, Payload Length: 20
4a 13 1c 81 07 03 58 45 5c 57 28 f2 0e 95 45 2f  # RFC 3947 NAT-T
"""

# RFC 2409 section 5.4: Aggressive Mode message 1 with pre-shared keys.
AM1 = """
01 02 03 04 05 06 07 08  # Initiator Cookie
00 00 00 00 00 00 00 00  # Responder Cookie
01                  # Next Payload: SA
10                  # MjVer 1, MnVer 0
04                  # Exchange Type: Aggressive
00                  # Flags
00 00 00 00         # Message ID
00 00 00 99         # Length: 153
04 00 00 30         # SA: Next Payload: KE, Payload Length: 48
00 00 00 01 00 00 00 01  # DOI: IPsec, Situation: SIT_IDENTITY_ONLY
00 00 00 24 01 01 00 01  # Proposal: last, length 36, #1, PROTO_ISAKMP, SPI Size 0, 1 transform
00 00 00 1c 01 01 00 00  #   Transform: last, length 28, #1, KEY_IKE
80 01 00 07 80 0e 00 80 80 02 00 02 80 03 00 01 80 04 00 13  # AES-128, SHA, PSK, group 19 (ECP-256)
0a 00 00 0c         # KE: Next Payload: NONCE, Payload Length: 12
01 23 45 67 89 ab cd ef  #   Key Exchange Data
05 00 00 14         # NONCE: Next Payload: ID, Payload Length: 20
10 32 54 76 98 ba dc fe ef cd ab 89 67 45 23 01  # Ni
0d 00 00 19         # ID: Next Payload: VID, Payload Length: 25
03 00 00 00         #   ID_USER_FQDN, Protocol ID 0, Port 0
61 6c 69 63 65 40 65 78 61 6d 70 6c 65 2e 6f 72 67  # "alice@example.org"
00 00 00 14         # VID: Next Payload: none, Payload Length: 20
af ca d7 13 68 a1 f1 c9 6b 86 96 fc 77 57 01 00  # DPD
"""


def _fixture(name: str) -> str:
    return next(text for n, _, text, _ in PAYLOADS if n == name)


def _one(ptype, data, ctx=None):
    payloads, end = decode_chain(ptype, data, ctx or Context())
    assert end == len(data)
    return payloads


class PayloadGoldenTests(unittest.TestCase):
    def assertGolden(self, ptype, text, expected, ctx=None):
        data = unhex(text)
        (decoded,) = _one(ptype, data, ctx)
        self.assertEqual(type(decoded), type(expected))
        self.assertEqual(decoded, expected)
        self.assertEqual(encode_chain((expected,), ctx or Context()), data)

    def test_sa_phase1(self):
        """A Phase 1 SA: one proposal, two transforms, TV attributes and a TLV Life Duration."""
        self.assertGolden(PayloadType.SA, SA_PHASE1, SA_PHASE1_OBJECT)
        (sa,) = _one(PayloadType.SA, unhex(SA_PHASE1))
        (proposal,) = sa.proposals
        self.assertEqual([t.transform_number for t in proposal.transforms], [1, 2])
        life = proposal.transforms[0].attributes[-1]
        self.assertFalse(life.is_tv)
        self.assertEqual(life.as_int(), 86400)
        self.assertTrue(proposal.transforms[0].attributes[0].is_tv)

    def test_sa_phase2(self):
        """A Phase 2 SA: two proposals of one number (AH and ESP), 4-octet SPIs, a 4-octet TLV lifetime."""
        self.assertGolden(PayloadType.SA, SA_PHASE2, SA_PHASE2_OBJECT)
        (sa,) = _one(PayloadType.SA, unhex(SA_PHASE2))
        self.assertEqual([p.spi for p in sa.proposals], [bytes.fromhex("aabbcc01"), bytes.fromhex("aabbcc02")])
        self.assertEqual(sa.proposals[1].transforms[0].attributes[1].as_int(), 4608000)

    def test_identifications(self):
        """Each IPsec DOI ID type decodes to its fields, re-encodes identically, and value() reads it."""
        for name, text, expected, value in IDENTIFICATIONS:
            self.assertGolden(PayloadType.ID, text, expected)

    def test_identification_values(self):
        """Identification.value() reads each ID type's data: addresses, networks, ranges, names, octets."""
        for name, text, expected, value in IDENTIFICATIONS:
            (decoded,) = _one(PayloadType.ID, unhex(text))
            self.assertEqual(decoded.value(), value, name)

    def test_identification_value_errors(self):
        """value() refuses a subnet mask with holes and a name that is not ASCII, with INVALID-ID-INFORMATION."""
        holes = Identification(IDType.IPV4_ADDR_SUBNET, 0, 0, bytes.fromhex("0a010000" "ff00ff00"))
        e = self.assertRaises(DecodeError, holes.value)
        self.assertEqual(e.notify, NotifyType.INVALID_ID_INFORMATION)
        e = self.assertRaises(DecodeError, Identification(IDType.FQDN, 0, 0, b"gw.\xe9xample.org").value)
        self.assertEqual(e.notify, NotifyType.INVALID_ID_INFORMATION)

    def test_identification_of(self):
        """Identification.of() builds the same objects the fixtures decode to."""
        by_name = {name: expected for name, _, expected, _ in IDENTIFICATIONS}
        self.assertEqual(Identification.of(ipaddress.ip_address("192.0.2.1"), protocol_id=17, port=500),
                         by_name["ID_IPV4_ADDR"])
        self.assertEqual(Identification.of(ipaddress.ip_network("10.1.0.0/16")), by_name["ID_IPV4_ADDR_SUBNET"])
        self.assertEqual(Identification.of(ipaddress.ip_network("2001:db8:1::/48")), by_name["ID_IPV6_ADDR_SUBNET"])
        self.assertEqual(Identification.of((ipaddress.ip_address("10.3.0.1"), ipaddress.ip_address("10.3.0.254"))),
                         by_name["ID_IPV4_ADDR_RANGE"])
        self.assertEqual(Identification.of("gw.example.org"), by_name["ID_FQDN"])
        self.assertEqual(Identification.of("alice@example.org"), by_name["ID_USER_FQDN"])

    def test_other_payloads(self):
        """KE, CERT, CR, HASH, SIG, NONCE, N, D, VID, NAT-D and NAT-OA decode field by field and re-encode."""
        for name, ptype, text, expected in PAYLOADS:
            self.assertGolden(ptype, text, expected)

    def test_notification_fields(self):
        """The R-U-THERE fixture carries its SPI and its 4-octet sequence number apart (RFC 3706 section 5)."""
        (n,) = _one(PayloadType.N, unhex(_fixture("N R-U-THERE")))
        self.assertEqual((n.doi, n.protocol_id, n.notify_type), (DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE))
        self.assertEqual(n.spi, CKY_I + CKY_R)
        self.assertEqual(int.from_bytes(n.data, "big"), 0x2A3B4C5D)

    def test_delete_fields(self):
        """Delete payloads keep their SPI size, also when they carry no SPI."""
        (d,) = _one(PayloadType.D, unhex(_fixture("D ESP")))
        self.assertEqual((d.protocol_id, d.spi_size, len(d.spis)), (ProtocolID.IPSEC_ESP, 4, 2))
        empty = Delete(DOI.IPSEC, ProtocolID.IPSEC_ESP, (), 4)
        data = encode_chain((empty,))
        self.assertEqual(data, unhex("00 00 00 0c  00 00 00 01  03  04  00 00  # no SPIs, SPI Size still 4"))
        self.assertEqual(_one(PayloadType.D, data), (empty,))

    def test_chain_of_payloads(self):
        """Payloads chain through their Next Payload fields: each header names the payload after it."""
        payloads = (KE(b"\x01" * 8), Nonce(b"\x02" * 8), NATD(b"\x03" * 4))
        data = encode_chain(payloads)
        self.assertEqual(data, unhex("""
0a 00 00 0c  01 01 01 01 01 01 01 01  # KE, next NONCE
14 00 00 0c  02 02 02 02 02 02 02 02  # NONCE, next NAT-D (20)
00 00 00 08  03 03 03 03              # NAT-D, last
"""))
        self.assertEqual(_one(PayloadType.KE, data), payloads)


class MessageGoldenTests(unittest.TestCase):
    def test_header(self):
        """The ISAKMP header's fields (RFC 2408 section 3.1) as decode_header returns them."""
        data = unhex(MM1)
        fields = (CKY_I, bytes(8), PayloadType.SA, 0x10, ExchangeType.MAIN_MODE, 0, 0, 132)
        self.assertEqual(decode_header(data), fields)

    def test_header_alone(self):
        """A message without payloads is the 28-octet header with Next Payload 0."""
        data = unhex("""
01 02 03 04 05 06 07 08  # Initiator Cookie
11 12 13 14 15 16 17 18  # Responder Cookie
00                  # Next Payload: none
10                  # MjVer 1, MnVer 0
05                  # Exchange Type: Informational
06                  # Flags: Commit (0x02) and Authentication Only (0x04); Encryption (0x01) clear
de ad be ef         # Message ID
00 00 00 1c         # Length: 28
""")
        m = Message(CKY_I, CKY_R, ExchangeType.INFORMATIONAL, Flags.COMMIT | Flags.AUTHENTICATION_ONLY, 0xDEADBEEF)
        self.assertEqual(decode_message(data), m)
        self.assertEqual(m.encode(), data)

    def test_main_mode_1(self):
        """Main Mode message 1 decodes to the header's fields, an SA and a VID, and re-encodes identically."""
        data = unhex(MM1)
        m = decode_message(data)
        self.assertEqual((m.initiator_cookie, m.responder_cookie, m.exchange_type, m.flags, m.message_id),
                         (CKY_I, bytes(8), ExchangeType.MAIN_MODE, 0, 0))
        self.assertEqual((m.major_version, m.minor_version), (1, 0))
        self.assertEqual(m.payloads, (SA_PHASE1_OBJECT, VendorID(NAT_T_VENDOR_ID)))
        self.assertEqual(m.encode(), data)
        self.assertEqual(len(data), 132)

    def test_aggressive_mode_1(self):
        """Aggressive Mode message 1 (SA, KE, Ni, IDii, VID) decodes and re-encodes identically."""
        data = unhex(AM1)
        m = decode_message(data)
        sa = SA(DOI.IPSEC, Situation.IDENTITY_ONLY, (Proposal(1, ProtocolID.ISAKMP, b"", (
            Transform(1, TransformID.KEY_IKE, (
                Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, OakleyEncryption.AES_CBC),
                Attribute(OakleyAttr.KEY_LENGTH, 128),
                Attribute(OakleyAttr.HASH_ALGORITHM, OakleyHash.SHA),
                Attribute(OakleyAttr.AUTHENTICATION_METHOD, OakleyAuth.PRE_SHARED_KEY),
                Attribute(OakleyAttr.GROUP_DESCRIPTION, OakleyGroup.ECP_256),
            )),)),))
        self.assertEqual(m, Message(CKY_I, bytes(8), ExchangeType.AGGRESSIVE, payloads=(
            sa, KE(bytes.fromhex("0123456789abcdef")), Nonce(bytes.fromhex("1032547698badcfeefcdab8967452301")),
            Identification(IDType.USER_FQDN, 0, 0, b"alice@example.org"), VendorID(DPD_VENDOR_ID))))
        self.assertEqual(m.encode(), data)
        self.assertEqual(len(data), 0x99)

    def test_encrypted_message(self):
        """An encrypted message keeps its body as ciphertext and its Next Payload until it is decrypted."""
        data = unhex("""
01 02 03 04 05 06 07 08 11 12 13 14 15 16 17 18  # cookies
05                  # Next Payload: ID (the first payload inside the ciphertext)
10 02               # version 1.0, Main Mode
01                  # Flags: Encryption
00 00 00 00         # Message ID
00 00 00 2c         # Length: 44
00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  # one AES block of ciphertext
""")
        m = decode_message(data)
        self.assertEqual(m, Message(CKY_I, CKY_R, ExchangeType.MAIN_MODE, Flags.ENCRYPTION, 0,
                                    ciphertext=bytes(range(16)), next_payload=PayloadType.ID))
        self.assertEqual(m.encode(), data)


def _mm1(**patch) -> bytes:
    """MM1 with octets replaced: offset -> new bytes."""
    data = bytearray(unhex(MM1))
    for offset, value in patch.items():
        data[int(offset[1:])] = value
    return bytes(data)


class HeaderErrorTests(unittest.TestCase):
    def assertRefused(self, data, notify, offset=None, **kw):
        e = self.assertRaises(DecodeError, decode_message, data, **kw)
        self.assertEqual(e.notify, notify, e)
        if offset is not None:
            self.assertEqual(e.offset, offset, e)
        return e

    def test_major_version(self):
        """Major version 2 (IKEv2) is refused with INVALID-MAJOR-VERSION (RFC 2408 section 5.2)."""
        self.assertRefused(_mm1(o17=0x20), NotifyType.INVALID_MAJOR_VERSION, 17)

    def test_minor_version(self):
        """Minor version 1 is refused with INVALID-MINOR-VERSION."""
        self.assertRefused(_mm1(o17=0x11), NotifyType.INVALID_MINOR_VERSION, 17)

    def test_unknown_flags(self):
        """A flag bit RFC 2408 does not define is refused with INVALID-FLAGS."""
        for bit in (0x08, 0x10, 0x80):
            self.assertRefused(_mm1(o19=bit), NotifyType.INVALID_FLAGS, 19)

    def test_length_mismatch(self):
        """A header Length that differs from the datagram is refused with UNEQUAL-PAYLOAD-LENGTHS."""
        data = unhex(MM1)
        self.assertRefused(data + b"\0", NotifyType.UNEQUAL_PAYLOAD_LENGTHS, 24)
        self.assertRefused(_mm1(o27=0x85), NotifyType.UNEQUAL_PAYLOAD_LENGTHS, 24)
        self.assertRefused(_mm1(o27=0x83), NotifyType.UNEQUAL_PAYLOAD_LENGTHS, 24)

    def test_zero_initiator_cookie(self):
        """An all-zero initiator cookie is refused with INVALID-COOKIE."""
        data = bytes(8) + unhex(MM1)[8:]
        self.assertRefused(data, NotifyType.INVALID_COOKIE, 0)

    def test_short_datagram(self):
        """Fewer octets than a header are PAYLOAD-MALFORMED."""
        for n in (0, 1, 27):
            self.assertRefused(unhex(MM1)[:n], NotifyType.PAYLOAD_MALFORMED)

    def test_encrypted_without_body(self):
        """An encrypted message with nothing after the header is PAYLOAD-MALFORMED."""
        data = unhex(MM1)[:HEADER_SIZE]
        data = data[:19] + b"\x01" + data[20:24] + (28).to_bytes(4, "big")
        self.assertRefused(data, NotifyType.PAYLOAD_MALFORMED)

    def test_reserved_not_zero(self):
        """A generic payload header's RESERVED octet that is not zero is PAYLOAD-MALFORMED, at its offset."""
        self.assertRefused(_mm1(o29=0x01), NotifyType.PAYLOAD_MALFORMED, 29)

    def test_payload_length_overruns(self):
        """A payload Length past the message's end, or under 4, is PAYLOAD-MALFORMED."""
        # The VID is the last payload, at offset 112: give it one octet more than the message holds.
        self.assertRefused(_mm1(o115=0x15), NotifyType.PAYLOAD_MALFORMED, 114)
        self.assertRefused(_mm1(o115=0x03), NotifyType.PAYLOAD_MALFORMED, 114)

    def test_chain_ends_early(self):
        """A Next Payload naming a payload after the message's last octet is PAYLOAD-MALFORMED."""
        self.assertRefused(_mm1(o112=PayloadType.VID), NotifyType.PAYLOAD_MALFORMED)

    def test_octets_after_last_payload(self):
        """Octets after the payload whose Next Payload is 0 are PAYLOAD-MALFORMED."""
        self.assertRefused(_mm1(o28=0), NotifyType.PAYLOAD_MALFORMED, 112)


# Payload errors: (name, payload type, hex, Notify, offset of the fault in the payload or None).
PAYLOAD_ERRORS = [
    ("SA with DOI 3", PayloadType.SA, """
00 00 00 0c  00 00 00 03  00 00 00 01  # DOI 3: no such DOI
""", NotifyType.DOI_NOT_SUPPORTED, 4),
    ("SA with SIT_SECRECY", PayloadType.SA, """
00 00 00 0c  00 00 00 01  00 00 00 02  # Situation: SIT_SECRECY (RFC 2407 section 4.2.2)
""", NotifyType.SITUATION_NOT_SUPPORTED, 8),
    ("SA with SIT_INTEGRITY", PayloadType.SA, """
00 00 00 0c  00 00 00 01  00 00 00 05  # Situation: SIT_IDENTITY_ONLY | SIT_INTEGRITY
""", NotifyType.SITUATION_NOT_SUPPORTED, 8),
    ("SA shorter than DOI and Situation", PayloadType.SA, """
00 00 00 0a  00 00 00 01  00 00        # 6 octets of body
""", NotifyType.PAYLOAD_MALFORMED, None),
    ("Proposal announces 3 transforms, carries 2", PayloadType.SA, """
00 00 00 2c  00 00 00 01  00 00 00 01  # SA, DOI IPsec, SIT_IDENTITY_ONLY
00 00 00 20  01 01 00 03               # Proposal: length 32, #1, ISAKMP, SPI Size 0, # of Transforms: 3
03 00 00 0c  01 01 00 00  80 01 00 07  # Transform #1, more follow
00 00 00 0c  02 01 00 00  80 01 00 05  # Transform #2, the last
""", NotifyType.BAD_PROPOSAL_SYNTAX, None),
    ("Proposal length past the SA", PayloadType.SA, """
00 00 00 18  00 00 00 01  00 00 00 01  # SA
00 00 00 10  01 01 00 01               # Proposal: length 16, but only 8 octets follow its header
00 00 00 08                            # ...
""", NotifyType.PAYLOAD_MALFORMED, 14),
    ("Transform length past the Proposal", PayloadType.SA, """
00 00 00 1c  00 00 00 01  00 00 00 01  # SA
00 00 00 10  01 01 00 01               # Proposal: length 16
00 00 00 0c  01 01 00 00               # Transform: length 12, past the Proposal's end
""", NotifyType.PAYLOAD_MALFORMED, 22),
    ("TLV attribute past the Transform", PayloadType.SA, """
00 00 00 24  00 00 00 01  00 00 00 01  # SA
00 00 00 18  01 01 00 01               # Proposal: length 24
00 00 00 10  01 01 00 00               # Transform: length 16
00 0c 00 08  00 01 51 80               # Life Duration (TLV) of length 8: only 4 octets follow
""", NotifyType.PAYLOAD_MALFORMED, 30),
    ("ID_IPV4_ADDR of 5 octets", PayloadType.ID, """
00 00 00 0d  01 00 00 00  c0 00 02 01 01  # ID_IPV4_ADDR with 5 octets of data
""", NotifyType.INVALID_ID_INFORMATION, 8),
    ("ID_IPV6_ADDR_SUBNET of 16 octets", PayloadType.ID, """
00 00 00 18  06 00 00 00  20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 00  # subnet without its mask
""", NotifyType.INVALID_ID_INFORMATION, 8),
    ("ID_IPV4_ADDR_RANGE of 4 octets", PayloadType.ID, """
00 00 00 0c  07 00 00 00  0a 00 00 01  # range with one address
""", NotifyType.INVALID_ID_INFORMATION, 8),
    ("ID_FQDN empty", PayloadType.ID, """
00 00 00 08  02 00 00 00               # ID_FQDN with no name
""", NotifyType.INVALID_ID_INFORMATION, 8),
    ("ID_KEY_ID empty", PayloadType.ID, """
00 00 00 08  0b 00 00 00               # ID_KEY_ID with no key
""", NotifyType.INVALID_ID_INFORMATION, 8),
    ("ID shorter than its header", PayloadType.ID, """
00 00 00 07  01 00 00                  # 3 octets of body
""", NotifyType.PAYLOAD_MALFORMED, None),
    ("Notification SPI size past the payload", PayloadType.N, """
00 00 00 10  00 00 00 01  01 10 60 02  01 02 03 04  # SPI Size 16, 4 octets follow
""", NotifyType.PAYLOAD_MALFORMED, 9),
    ("Notification with DOI 7", PayloadType.N, """
00 00 00 0c  00 00 00 07  01 00 00 0e  # DOI 7
""", NotifyType.DOI_NOT_SUPPORTED, 4),
    ("Delete: SPIs do not fill it", PayloadType.D, """
00 00 00 14  00 00 00 01  03 04 00 03  aa bb cc 01 aa bb cc 02  # 3 SPIs announced, 2 sent
""", NotifyType.PAYLOAD_MALFORMED, 9),
    ("NONCE of 7 octets", PayloadType.NONCE, """
00 00 00 0b  01 02 03 04 05 06 07      # RFC 2409 section 5: at least 8
""", NotifyType.PAYLOAD_MALFORMED, None),
    ("NONCE of 257 octets", PayloadType.NONCE, "00 00 01 05" + " 00" * 257, NotifyType.PAYLOAD_MALFORMED, None),
    ("empty HASH", PayloadType.HASH, "00 00 00 04  # no Hash Data", NotifyType.PAYLOAD_MALFORMED, None),
    ("CERT without data", PayloadType.CERT, "00 00 00 05  04  # Cert Encoding only", NotifyType.PAYLOAD_MALFORMED,
     None),
    ("CR without type", PayloadType.CR, "00 00 00 04  # empty", NotifyType.PAYLOAD_MALFORMED, None),
    ("NAT-OA with ID_FQDN", PayloadType.NAT_OA, """
00 00 00 0c  02 00 00 00  c0 a8 01 14  # only ID_IPV4_ADDR and ID_IPV6_ADDR may come
""", NotifyType.PAYLOAD_MALFORMED, 4),
    ("NAT-OA IPv4 with 16 octets", PayloadType.NAT_OA, "00 00 00 18  01 000000" + " 00" * 16,
     NotifyType.PAYLOAD_MALFORMED, 4),
    ("NAT-OA RESERVED not zero", PayloadType.NAT_OA, "00 00 00 0c  01 00 01 00  c0 a8 01 14",
     NotifyType.PAYLOAD_MALFORMED, 5),
]


class PayloadErrorTests(unittest.TestCase):
    def test_payload_errors(self):
        """Each malformed payload raises DecodeError with RFC 2408's Notify and the fault's offset."""
        for name, ptype, text, notify, offset in PAYLOAD_ERRORS:
            e = self.assertRaises(DecodeError, decode_chain, ptype, unhex(text), Context())
            self.assertEqual(e.notify, notify, f"{name}: {e}")
            if offset is not None:
                self.assertEqual(e.offset, offset, f"{name}: {e}")

    def test_errors_inside_a_message_point_into_the_datagram(self):
        """A fault's offset counts from the start of the message, past the header and earlier payloads."""
        bad_id = unhex("""
00 00 00 0d  01 00 00 00  c0 00 02 01 01  # ID_IPV4_ADDR with 5 octets of data
""")
        data = unhex(MM1)
        # Put the bad ID after MM1's VID: VID's Next Payload becomes ID, the header's Length grows by 13.
        msg = bytearray(data + bad_id)
        msg[112] = PayloadType.ID
        msg[24:28] = len(msg).to_bytes(4, "big")
        e = self.assertRaises(DecodeError, decode_message, bytes(msg))
        self.assertEqual((e.notify, e.offset), (NotifyType.INVALID_ID_INFORMATION, len(data) + 8))
