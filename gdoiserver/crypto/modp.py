"""MODP primes and the two engines that compute modular exponentiation with them.

The primes are the ones published in RFC 2409 section 6.2 (group 2) and RFC 3526 sections 2-5 (groups 5, 14,
15, 16), all with generator 2.  Each is p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + k).

Engines (docs/crypto-choices.md says why there are two):
- ``CryptographyBackend``: OpenSSL through ``cryptography``, constant-time, about seven times faster.  Its
  finite-field DH API is deprecated from cryptography 50 on; the warning is ignored narrowly around each call.
- ``PowBackend``: CPython's ``pow()``, always there.  ``modp_backend()`` falls back to it by itself when the
  ``cryptography`` DH API is gone or refuses to work, and uses it for group 2 (see ``_OPENSSL_NAMED``).
"""

import contextlib
import secrets
import warnings

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning


def _prime(hex_words: str) -> int:
    return int(hex_words.replace(" ", ""), 16)


# RFC 2409 section 6.2, the Second Oakley Group: 1024 bits, k = 129093.
MODP_1024 = _prime(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE65381 FFFFFFFF FFFFFFFF"
)

# RFC 3526 section 2, 1536-bit MODP Group (group 5): k = 741804.
MODP_1536 = _prime(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA237327 FFFFFFFF FFFFFFFF"
)

# RFC 3526 section 3, 2048-bit MODP Group (group 14): k = 124476.
MODP_2048 = _prime(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AACAA68 FFFFFFFF FFFFFFFF"
)

# RFC 3526 section 4, 3072-bit MODP Group (group 15): k = 1690314.
MODP_3072 = _prime(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF"
)

# RFC 3526 section 5, 4096-bit MODP Group (group 16): k = 240904.
MODP_4096 = _prime(
    "FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74"
    "020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437"
    "4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED"
    "EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05"
    "98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB"
    "9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B"
    "E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718"
    "3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AAAC42D AD33170D 04507A33"
    "A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7"
    "ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864"
    "D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2"
    "08E24FA0 74E5AB31 43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7"
    "88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA 2583E9CA 2AD44CE8"
    "DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6 287C5947 4E6BC05D 99B2964F A090C3A2"
    "233BA186 515BE7ED 1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9"
    "93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199 FFFFFFFF FFFFFFFF"
)

GENERATOR = 2

# OpenSSL knows these primes as named groups and trusts them.  Any other prime (here group 2's) costs a full
# DH_check on every peer key that ``cryptography`` loads, about 33 ms, where pow() takes about 1 ms in all.
_OPENSSL_NAMED = frozenset({MODP_1536, MODP_2048, MODP_3072, MODP_4096})


@contextlib.contextmanager
def _ffdh_deprecation_ignored():
    """Silence only cryptography's FFDH deprecation warning, only for the calls inside the block.

    A local ``catch_warnings`` rather than a module-wide filter, since a filter installed at import is
    overridden by any later ``simplefilter("always")`` (trial installs one around every test).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Diffie-Hellman over finite fields", category=CryptographyDeprecationWarning
        )
        yield


def _import_dh():
    """The ``cryptography`` DH module (a seam: tests replace it to simulate the API's removal)."""
    from cryptography.hazmat.primitives.asymmetric import dh

    return dh


class PowBackend:
    """Modular exponentiation with CPython's ``pow()``: always available, not constant-time."""

    name = "pow"

    def __init__(self, prime: int, generator: int):
        self._p = prime
        self._g = generator

    def generate(self, exponent_bits: int) -> int:
        """A fresh private exponent of exactly ``exponent_bits`` bits (top bit set), from ``secrets``."""
        return self.load(secrets.randbits(exponent_bits) | (1 << (exponent_bits - 1)))

    def load(self, x: int) -> int:
        """The private key for exponent ``x`` (here the exponent itself)."""
        return x

    def public_value(self, key: int) -> int:
        """g^x mod p."""
        return pow(self._g, key, self._p)

    def shared_secret(self, key: int, peer_y: int) -> bytes:
        """peer_y^x mod p, left-padded with zeros to the length of p."""
        return pow(peer_y, key, self._p).to_bytes((self._p.bit_length() + 7) // 8, "big")


class CryptographyBackend:
    """Modular exponentiation in OpenSSL through ``cryptography``'s (deprecated) finite-field DH API.

    Raises ImportError, AttributeError or ``UnsupportedAlgorithm`` at construction when that API is unusable.
    """

    name = "cryptography"

    def __init__(self, prime: int, generator: int):
        self._dh = _import_dh()
        self._p = prime
        self._g = generator
        with _ffdh_deprecation_ignored():
            self._numbers = self._dh.DHParameterNumbers(prime, generator)
            self._parameters = self._numbers.parameters()

    def generate(self, exponent_bits: int):
        """A fresh private key; OpenSSL picks the exponent and its length, so ``exponent_bits`` is unused."""
        with _ffdh_deprecation_ignored():
            return self._parameters.generate_private_key()

    def load(self, x: int):
        """The private key for exponent ``x``.  g^x is computed with ``pow()``: meant for known-answer tests."""
        dh = self._dh
        with _ffdh_deprecation_ignored():
            public = dh.DHPublicNumbers(pow(self._g, x, self._p), self._numbers)
            return dh.DHPrivateNumbers(x, public).private_key()

    def public_value(self, key) -> int:
        """g^x mod p."""
        with _ffdh_deprecation_ignored():
            return key.public_key().public_numbers().y

    def shared_secret(self, key, peer_y: int) -> bytes:
        """peer_y^x mod p, left-padded with zeros to the length of p (RFC 2631 section 2.1.2)."""
        with _ffdh_deprecation_ignored():
            peer = self._dh.DHPublicNumbers(peer_y, self._numbers).public_key()
            secret = key.exchange(peer)
        return secret.rjust((self._p.bit_length() + 7) // 8, b"\0")


_UNAVAILABLE = (ImportError, AttributeError, UnsupportedAlgorithm)


def modp_backend(prime: int, generator: int, name: str | None = None):
    """The engine named ``name`` ("cryptography" or "pow").

    None picks cryptography for the primes OpenSSL knows as named groups when its DH API works, else pow.
    """
    if name == PowBackend.name or (name is None and prime not in _OPENSSL_NAMED):
        return PowBackend(prime, generator)
    if name == CryptographyBackend.name:
        return CryptographyBackend(prime, generator)
    if name is None:
        try:
            return CryptographyBackend(prime, generator)
        except _UNAVAILABLE:
            return PowBackend(prime, generator)
    raise ValueError(f"unknown MODP backend {name!r}")
