"""Diffie-Hellman groups by Oakley group number: MODP 2, 5, 14, 15, 16 and ECP 19, 20, 21.

``group = dh_group(number)``; ``key = group.generate()``; ``key.public_bytes()`` is the KE payload data;
``key.exchange(peer_ke_data)`` is g^xy as it enters SKEYID (RFC 2409 section 5).  A peer value that must be
refused raises ``InvalidKeyExchange`` and nothing else.

KE payload data and g^xy:
- MODP: the public value left-padded with zeros to the length of the prime (RFC 2409 section 5), and g^xy
  likewise padded (RFC 2631 section 2.1.2).
- ECP: x | y, each coordinate as many octets as the field (RFC 5903 section 7); g^xy is the x coordinate of
  the shared point alone (RFC 5903 section 7).
"""

import functools
from collections.abc import Callable

import attrs
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gdoiserver.codec.constants import OakleyGroup
from gdoiserver.crypto import modp
from gdoiserver.crypto.errors import InvalidKeyExchange, UnsupportedGroup, WeakGroupError

RandBytes = Callable[[int], bytes]


def _random(randbytes: RandBytes, n: int) -> int:
    data = randbytes(n)
    if len(data) != n:
        raise ValueError(f"randbytes({n}) returned {len(data)} octets")
    return int.from_bytes(data, "big")


class ModpPrivateKey:
    """An ephemeral MODP private key.  Its repr names the group only."""

    __slots__ = ("group", "_key", "_public")

    def __init__(self, group: "ModpGroup", key):
        self.group = group
        self._key = key
        self._public = None

    def __repr__(self) -> str:
        return f"<ModpPrivateKey group={self.group.number}>"

    def public_bytes(self) -> bytes:
        """g^x, left-padded to the length of the prime: the KE payload data (RFC 2409 section 5)."""
        if self._public is None:
            y = self.group.backend.public_value(self._key)
            self._public = y.to_bytes(self.group.public_length, "big")
        return self._public

    def exchange(self, peer_public: bytes) -> bytes:
        """g^xy, padded to the length of the prime, from the peer's KE payload data."""
        y = self.group.peer_value(peer_public)
        try:
            return self.group.backend.shared_secret(self._key, y)
        except ValueError:
            # Only reachable if the engine is stricter than peer_value().
            raise InvalidKeyExchange(f"MODP group {self.group.number}: peer public value refused") from None


@attrs.frozen
class ModpGroup:
    """A MODP group (RFC 2409 section 6, RFC 3526) with the engine that computes in it.

    ``exponent_bits`` is the length of the private exponents drawn by ``generate()`` when the pow engine
    or a caller's ``randbytes`` draws them (docs/crypto-choices.md says why these lengths).
    """

    number: int
    prime: int = attrs.field(repr=False)
    generator: int
    exponent_bits: int
    weak: bool
    backend: object = attrs.field(repr=lambda b: b.name, eq=False)

    @property
    def public_length(self) -> int:
        """Octets in the KE payload data and in g^xy: the length of the prime."""
        return (self.prime.bit_length() + 7) // 8

    def generate(self, randbytes: RandBytes | None = None) -> ModpPrivateKey:
        """A fresh private key; ``randbytes(n)`` (e.g. a seeded ``random.Random().randbytes``) makes it repeatable."""
        if randbytes is None:
            return ModpPrivateKey(self, self.backend.generate(self.exponent_bits))
        n = (self.exponent_bits + 7) // 8
        x = _random(randbytes, n) >> (8 * n - self.exponent_bits)
        return self.private_from_int(x | (1 << (self.exponent_bits - 1)))

    def private_from_int(self, x: int) -> ModpPrivateKey:
        """The private key with exponent ``x``, 1 < x < p - 1 (for known-answer tests)."""
        if not 1 < x < self.prime - 1:
            raise ValueError(f"MODP group {self.number}: private exponent out of range")
        return ModpPrivateKey(self, self.backend.load(x))

    def private_from_bytes(self, data: bytes) -> ModpPrivateKey:
        """The private key whose exponent is ``data`` read big-endian."""
        return self.private_from_int(int.from_bytes(data, "big"))

    def peer_value(self, data: bytes) -> int:
        """The peer's public value y from its KE payload data, checked: exact length and 1 < y < p - 1.

        With a safe prime this excludes the only small subgroups, {1} and {1, p - 1}.
        """
        if len(data) != self.public_length:
            raise InvalidKeyExchange(
                f"MODP group {self.number}: public value is {len(data)} octets, expected {self.public_length}"
            )
        y = int.from_bytes(data, "big")
        if not 1 < y < self.prime - 1:
            raise InvalidKeyExchange(f"MODP group {self.number}: public value out of range (1 < y < p-1)")
        return y


class EcpPrivateKey:
    """An ephemeral ECP private key.  Its repr names the group only."""

    __slots__ = ("group", "_key")

    def __init__(self, group: "EcpGroup", key: ec.EllipticCurvePrivateKey):
        self.group = group
        self._key = key

    def __repr__(self) -> str:
        return f"<EcpPrivateKey group={self.group.number}>"

    def public_bytes(self) -> bytes:
        """x | y of the public point, each coordinate field-sized: the KE payload data (RFC 5903 section 7)."""
        point = self._key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return point[1:]  # drop the SEC 1 0x04 tag, which RFC 5903 does not send

    def exchange(self, peer_public: bytes) -> bytes:
        """The x coordinate of the shared point (RFC 5903 section 7) from the peer's KE payload data."""
        group = self.group
        if len(peer_public) != group.public_length:
            raise InvalidKeyExchange(
                f"ECP group {group.number}: public value is {len(peer_public)} octets, expected {group.public_length}"
            )
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(group.curve, b"\x04" + peer_public)
        except ValueError:
            raise InvalidKeyExchange(f"ECP group {group.number}: public value is not a point on the curve") from None
        return self._key.exchange(ec.ECDH(), peer)


@attrs.frozen
class EcpGroup:
    """An ECP group of RFC 5903 (the NIST prime curves)."""

    number: int
    curve: ec.EllipticCurve = attrs.field(repr=lambda c: c.name, eq=False)
    order: int = attrs.field(repr=False)
    weak: bool = False

    @property
    def coordinate_size(self) -> int:
        """Octets per coordinate: the field size rounded up (66 for the 521-bit group)."""
        return (self.curve.key_size + 7) // 8

    @property
    def public_length(self) -> int:
        """Octets in the KE payload data: x | y."""
        return 2 * self.coordinate_size

    def generate(self, randbytes: RandBytes | None = None) -> EcpPrivateKey:
        """A fresh private key; ``randbytes(n)`` makes it repeatable.

        With ``randbytes`` the scalar is drawn with 64 extra bits and reduced into [1, n-1] (FIPS 186-4 B.4.1).
        """
        if randbytes is None:
            return EcpPrivateKey(self, ec.generate_private_key(self.curve))
        c = _random(randbytes, (self.order.bit_length() + 64 + 7) // 8)
        return self.private_from_int(c % (self.order - 1) + 1)

    def private_from_int(self, d: int) -> EcpPrivateKey:
        """The private key with scalar ``d``, 1 <= d < n (for known-answer tests)."""
        if not 1 <= d < self.order:
            raise ValueError(f"ECP group {self.number}: private scalar out of range")
        return EcpPrivateKey(self, ec.derive_private_key(d, self.curve))

    def private_from_bytes(self, data: bytes) -> EcpPrivateKey:
        """The private key whose scalar is ``data`` read big-endian."""
        return self.private_from_int(int.from_bytes(data, "big"))


# Group number -> (prime, exponent bits, weak).  Exponent bits: twice the group's estimated strength, the
# lengths OpenSSL 3 uses for these named groups (160 for the 1024-bit group, which OpenSSL does not name).
_MODP = {
    OakleyGroup.MODP_1024: (modp.MODP_1024, 160, True),
    OakleyGroup.MODP_1536: (modp.MODP_1536, 200, True),
    OakleyGroup.MODP_2048: (modp.MODP_2048, 225, False),
    OakleyGroup.MODP_3072: (modp.MODP_3072, 275, False),
    OakleyGroup.MODP_4096: (modp.MODP_4096, 325, False),
}

# RFC 5903 sections 3.1-3.3: the curves and their group orders n.
_ECP = {
    OakleyGroup.ECP_256: (
        ec.SECP256R1,
        "FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2 FC632551",
    ),
    OakleyGroup.ECP_384: (
        ec.SECP384R1,
        "FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF C7634D81 F4372DDF"
        "581A0DB2 48B0A77A ECEC196A CCC52973",
    ),
    OakleyGroup.ECP_521: (
        ec.SECP521R1,
        "01FF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFF FFFFFFFA"
        "51868783 BF2F966B 7FCC0148 F709A5D0 3BB5C9B8 899C47AE BB6FB71E 91386409",
    ),
}

SUPPORTED_GROUPS = tuple(sorted(list(_MODP) + list(_ECP)))


@functools.cache
def _group(number: int, backend: str | None) -> ModpGroup | EcpGroup:
    if number in _MODP:
        prime, exponent_bits, weak = _MODP[number]
        engine = modp.modp_backend(prime, modp.GENERATOR, backend)
        return ModpGroup(int(number), prime, modp.GENERATOR, exponent_bits, weak, engine)
    if backend is not None:
        raise ValueError(f"ECP group {number} has no backend choice")
    curve, order = _ECP[number]
    return EcpGroup(int(number), curve(), int(order.replace(" ", ""), 16))


def dh_group(number: int, allow_weak: bool = False, backend: str | None = None) -> ModpGroup | EcpGroup:
    """The group for an Oakley group description number.

    MODP groups 2 (1024 bits) and 5 (1536 bits) raise ``WeakGroupError`` unless ``allow_weak`` is true.
    ``backend`` chooses the MODP engine ("cryptography" or "pow"); None picks the best one that works.
    Unknown numbers (including group 1, 768 bits) raise ``UnsupportedGroup``.
    """
    if number not in _MODP and number not in _ECP:
        raise UnsupportedGroup(f"Oakley group {number!r} is not supported")
    if number in _MODP and _MODP[number][2] and not allow_weak:
        bits = _MODP[number][0].bit_length()
        raise WeakGroupError(
            f"MODP group {number} ({bits} bits) is refused without allow_weak: groups this small fall to "
            "precomputation of the discrete logarithm (Logjam, 2015)"
        )
    return _group(number, backend)
