"""The IPsec transforms we negotiate: ESP ciphers and integrity algorithms, AH, and the keying material each needs.

ESP: AES-CBC (RFC 3602) with HMAC-SHA-1-96 (RFC 2404) or HMAC-SHA-256-128/384-192/512-256 (RFC 4868); AES-CTR
(RFC 3686) with the same; AES-GCM with an ICV of 8, 12 or 16 octets (RFC 4106), which needs no integrity
algorithm.  AH: the same HMACs (RFC 2407 section 4.4.3, RFC 4868 section 2.1).  Keys of 128, 192 and 256 bits;
the Key Length attribute is always sent (RFC 3602 section 5.3, RFC 4106 section 8.4).

KEYMAT per direction is the cipher key, then the integrity key (RFC 2409 section 5.5 gives the octets; the order
is the one every implementation uses).  AES-GCM takes 4 octets of salt after its key (RFC 4106 section 8.1) and
AES-CTR 4 octets of nonce (RFC 3686 section 5.1).
"""

import attrs

from gdoiserver.codec.constants import AHTransformID, AuthAlgorithm, ESPTransformID

AES_KEY_BITS = (128, 192, 256)


@attrs.frozen
class Cipher:
    """An ESP encryption transform (RFC 2407 section 4.4.4)."""

    transform_id: int
    name: str  # our name, as a proposal string writes it ("aes", "aesctr", "aesgcm16")
    rfc_name: str  # for the SA records: "AES-CBC", "AES-GCM-16"
    salt: int = 0  # octets of KEYMAT after the key
    icv: int = 0  # an AEAD's ICV in octets; 0: not an AEAD, an integrity algorithm is needed
    xfrm: str = ""  # the Linux crypto API name

    @property
    def aead(self) -> bool:
        return self.icv > 0

    def keymat_size(self, key_bits: int) -> int:
        return key_bits // 8 + self.salt


@attrs.frozen
class Integrity:
    """An HMAC for ESP's Authentication Algorithm attribute and as an AH transform (RFC 2407 4.4.3 and 4.5)."""

    auth_algorithm: int
    ah_transform_id: int
    name: str  # "sha1", "sha256", ...
    rfc_name: str  # "HMAC-SHA-256-128"
    key_size: int  # octets (RFC 2404; RFC 4868 section 2.1.1)
    icv: int  # octets of the truncated MAC
    xfrm: str = ""


CIPHERS = {
    c.transform_id: c
    for c in (
        Cipher(ESPTransformID.AES_CBC, "aes", "AES-CBC", xfrm="cbc(aes)"),
        Cipher(ESPTransformID.AES_CTR, "aesctr", "AES-CTR", salt=4, xfrm="rfc3686(ctr(aes))"),
        Cipher(ESPTransformID.AES_GCM_8, "aesgcm8", "AES-GCM-8", salt=4, icv=8, xfrm="rfc4106(gcm(aes))"),
        Cipher(ESPTransformID.AES_GCM_12, "aesgcm12", "AES-GCM-12", salt=4, icv=12, xfrm="rfc4106(gcm(aes))"),
        Cipher(ESPTransformID.AES_GCM_16, "aesgcm16", "AES-GCM-16", salt=4, icv=16, xfrm="rfc4106(gcm(aes))"),
    )
}
CIPHERS_BY_NAME = {c.name: c for c in CIPHERS.values()}

INTEGRITIES = {
    i.auth_algorithm: i
    for i in (
        Integrity(AuthAlgorithm.HMAC_SHA, AHTransformID.SHA, "sha1", "HMAC-SHA-1-96", 20, 12, "hmac(sha1)"),
        Integrity(AuthAlgorithm.HMAC_SHA2_256, AHTransformID.SHA2_256, "sha256", "HMAC-SHA-256-128", 32, 16,
                  "hmac(sha256)"),
        Integrity(AuthAlgorithm.HMAC_SHA2_384, AHTransformID.SHA2_384, "sha384", "HMAC-SHA-384-192", 48, 24,
                  "hmac(sha384)"),
        Integrity(AuthAlgorithm.HMAC_SHA2_512, AHTransformID.SHA2_512, "sha512", "HMAC-SHA-512-256", 64, 32,
                  "hmac(sha512)"),
    )
}
INTEGRITIES_BY_NAME = {i.name: i for i in INTEGRITIES.values()}
INTEGRITIES_BY_AH = {i.ah_transform_id: i for i in INTEGRITIES.values()}
