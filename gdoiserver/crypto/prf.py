"""The negotiated Phase 1 hash and its HMAC prf (RFC 2409 sections 4 and 5, RFC 4868 section 2.1).

IKEv1 uses the HMAC form of the negotiated hash as prf whenever no prf attribute is negotiated (RFC 2409
section 4), which is always the case in practice; with SHA-2 the prf output is the full digest (RFC 4868).
Concatenations such as ``Ni_b | Nr_b`` are passed as separate parts and fed to the MAC in order.
"""

import hmac as _stdlib_hmac

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac

from gdoiserver.codec.constants import OakleyHash
from gdoiserver.crypto.errors import UnsupportedHash


@attrs.frozen
class HashAlgorithm:
    """One Oakley hash: ``hash(*parts)`` is the plain digest, ``prf(key, *parts)`` its HMAC.

    ``legacy`` marks MD5, kept only to interoperate with old peers; policy decides whether to offer it.
    """

    number: OakleyHash
    digest_size: int
    legacy: bool
    _algorithm: type[hashes.HashAlgorithm] = attrs.field(repr=False)

    def hash(self, *parts: bytes) -> bytes:
        """The digest of the concatenation of ``parts``."""
        h = hashes.Hash(self._algorithm())
        for part in parts:
            h.update(part)
        return h.finalize()

    def prf(self, key: bytes, *parts: bytes) -> bytes:
        """HMAC(key, concatenation of ``parts``): the IKEv1 prf (RFC 2409 section 4, RFC 2104)."""
        h = _hmac.HMAC(key, self._algorithm())
        for part in parts:
            h.update(part)
        return h.finalize()


_ALGORITHMS = {
    OakleyHash.MD5: HashAlgorithm(OakleyHash.MD5, 16, True, hashes.MD5),
    OakleyHash.SHA: HashAlgorithm(OakleyHash.SHA, 20, False, hashes.SHA1),
    OakleyHash.SHA2_256: HashAlgorithm(OakleyHash.SHA2_256, 32, False, hashes.SHA256),
    OakleyHash.SHA2_384: HashAlgorithm(OakleyHash.SHA2_384, 48, False, hashes.SHA384),
    OakleyHash.SHA2_512: HashAlgorithm(OakleyHash.SHA2_512, 64, False, hashes.SHA512),
}


def hash_algorithm(number: int) -> HashAlgorithm:
    """The hash for an Oakley hash number (1, 2, 4, 5, 6); anything else raises ``UnsupportedHash``."""
    try:
        return _ALGORITHMS[number]
    except (KeyError, TypeError):
        raise UnsupportedHash(f"Oakley hash algorithm {number!r} is not supported") from None


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare a received HASH or MAC with the expected one without leaking where they differ."""
    return _stdlib_hmac.compare_digest(a, b)
