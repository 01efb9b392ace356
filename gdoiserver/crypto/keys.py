"""IKEv1 keying material (RFC 2409 section 5 and appendix B).

``prf`` below is the HMAC of the negotiated hash (``HashAlgorithm.prf``); ``|`` is concatenation; ``Ni_b`` and
``Nr_b`` are the nonce payload bodies, ``SAi_b`` the initiator's whole SA payload body, ``IDii_b``/``IDir_b`` the
identification payload bodies, ``CKY-I``/``CKY-R`` the 8-octet cookies and g^xy the padded shared secret.
Key material never appears in a repr: ``Phase1Keys`` hides every field.
"""

import attrs

from gdoiserver.crypto.prf import HashAlgorithm

COOKIE_SIZE = 8  # RFC 2408 section 3.1


def _check_cookies(cky_i: bytes, cky_r: bytes) -> None:
    if len(cky_i) != COOKIE_SIZE or len(cky_r) != COOKIE_SIZE:
        raise ValueError("ISAKMP cookies are 8 octets each (RFC 2408 section 3.1)")


def skeyid_preshared(h: HashAlgorithm, pre_shared_key: bytes, ni_b: bytes, nr_b: bytes) -> bytes:
    """SKEYID for pre-shared key authentication: prf(pre-shared-key, Ni_b | Nr_b) (RFC 2409 section 5)."""
    return h.prf(pre_shared_key, ni_b, nr_b)


def skeyid_signature(h: HashAlgorithm, ni_b: bytes, nr_b: bytes, g_xy: bytes) -> bytes:
    """SKEYID for signature authentication: prf(Ni_b | Nr_b, g^xy) (RFC 2409 section 5)."""
    return h.prf(ni_b + nr_b, g_xy)


def expand_key(h: HashAlgorithm, skeyid_e: bytes, length: int) -> bytes:
    """The cipher key from SKEYID_e (RFC 2409 appendix B).

    Its first ``length`` octets when SKEYID_e is long enough; otherwise Ka = K1 | K2 | ..., K1 = prf(SKEYID_e,
    0) with 0 a single zero octet, K(n+1) = prf(SKEYID_e, Kn), truncated to ``length``.
    """
    if length <= 0:
        raise ValueError("key length must be positive")
    if len(skeyid_e) >= length:
        return skeyid_e[:length]
    block = h.prf(skeyid_e, b"\x00")
    out = [block]
    total = len(block)
    while total < length:
        block = h.prf(skeyid_e, block)
        out.append(block)
        total += len(block)
    return b"".join(out)[:length]


def phase1_iv(h: HashAlgorithm, g_xi: bytes, g_xr: bytes, block_size: int) -> bytes:
    """The first Phase 1 IV: hash(g^xi | g^xr) truncated to the cipher block size (RFC 2409 appendix B)."""
    if not 0 < block_size <= h.digest_size:
        raise ValueError(f"block size {block_size} does not fit a {h.digest_size}-octet hash")
    return h.hash(g_xi, g_xr)[:block_size]


@attrs.frozen
class Phase1Keys:
    """The keying material of one ISAKMP SA.  No field is shown by repr: keys must never reach a log."""

    skeyid: bytes = attrs.field(repr=False)
    skeyid_d: bytes = attrs.field(repr=False)
    skeyid_a: bytes = attrs.field(repr=False)
    skeyid_e: bytes = attrs.field(repr=False)
    enc_key: bytes = attrs.field(repr=False)
    iv: bytes = attrs.field(repr=False)


def derive_phase1_keys(
    h: HashAlgorithm,
    skeyid: bytes,
    g_xy: bytes,
    cky_i: bytes,
    cky_r: bytes,
    g_xi: bytes,
    g_xr: bytes,
    key_length: int,
    block_size: int,
) -> Phase1Keys:
    """SKEYID_d, SKEYID_a, SKEYID_e (RFC 2409 section 5), the cipher key (appendix B) and the first IV.

    SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)
    SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)
    SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)
    with 0, 1, 2 single octets.  ``g_xi``/``g_xr`` are the initiator's and responder's KE payload data.
    """
    _check_cookies(cky_i, cky_r)
    skeyid_d = h.prf(skeyid, g_xy, cky_i, cky_r, b"\x00")
    skeyid_a = h.prf(skeyid, skeyid_d, g_xy, cky_i, cky_r, b"\x01")
    skeyid_e = h.prf(skeyid, skeyid_a, g_xy, cky_i, cky_r, b"\x02")
    return Phase1Keys(
        skeyid=skeyid,
        skeyid_d=skeyid_d,
        skeyid_a=skeyid_a,
        skeyid_e=skeyid_e,
        enc_key=expand_key(h, skeyid_e, key_length),
        iv=phase1_iv(h, g_xi, g_xr, block_size),
    )


def hash_i(
    h: HashAlgorithm, skeyid: bytes, g_xi: bytes, g_xr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idii_b: bytes
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b) (RFC 2409 section 5)."""
    _check_cookies(cky_i, cky_r)
    return h.prf(skeyid, g_xi, g_xr, cky_i, cky_r, sai_b, idii_b)


def hash_r(
    h: HashAlgorithm, skeyid: bytes, g_xi: bytes, g_xr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idir_b: bytes
) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b) (RFC 2409 section 5).

    Takes the same arguments in the same order as ``hash_i``; it swaps them itself.
    """
    _check_cookies(cky_i, cky_r)
    return h.prf(skeyid, g_xr, g_xi, cky_r, cky_i, sai_b, idir_b)


def keymat(
    h: HashAlgorithm,
    skeyid_d: bytes,
    protocol: int,
    spi: bytes,
    ni_b: bytes,
    nr_b: bytes,
    length: int,
    g_qm_xy: bytes = b"",
) -> bytes:
    """Quick Mode KEYMAT for one SA (RFC 2409 section 5.5), ``length`` octets.

    K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), K(n+1) = prf(SKEYID_d, Kn | [g(qm)^xy |]
    protocol | SPI | Ni_b | Nr_b); KEYMAT = K1 | K2 | ... truncated.  ``protocol`` is the one-octet protocol
    ID, ``spi`` the SPI as sent, ``g_qm_xy`` the Quick Mode shared secret with PFS (empty without).
    """
    if length <= 0:
        raise ValueError("KEYMAT length must be positive")
    seed = (g_qm_xy, bytes([protocol]), spi, ni_b, nr_b)
    block = h.prf(skeyid_d, *seed)
    out = [block]
    total = len(block)
    while total < length:
        block = h.prf(skeyid_d, block, *seed)
        out.append(block)
        total += len(block)
    return b"".join(out)[:length]
