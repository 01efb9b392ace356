"""Diffie-Hellman groups (gdoiserver.crypto.dh and .modp): primes, RFC 5903 vectors, engines, refusals."""

import random
import warnings

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from twisted.trial import unittest

from gdoiserver.codec.constants import NotifyType, OakleyGroup
from gdoiserver.crypto import dh, modp
from gdoiserver.crypto.dh import dh_group
from gdoiserver.crypto.errors import InvalidKeyExchange, UnsupportedGroup, WeakGroupError


def h(text: str) -> bytes:
    """Bytes from hex written the RFC way, in space-separated words."""
    return bytes.fromhex(text.replace(" ", ""))


def pi_fixed_point(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula pi = 16 atan(1/5) - 4 atan(1/239), in integers with guard bits."""

    def atan_inv(x: int, scale: int) -> int:
        total = term = (1 << scale) // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            n, sign = n + 1, -sign
        return total

    guard = 64
    scaled = 16 * atan_inv(5, bits + guard) - 4 * atan_inv(239, bits + guard)
    return scaled >> guard


def probably_prime(n: int, bases=(2, 3, 5)) -> bool:
    """Miller-Rabin with the given bases."""
    if n < 2 or n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


# Group number -> (bits, k) of p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k):
# RFC 2409 section 6.2 for group 2, RFC 3526 sections 2-5 for the others.
MODP_FORMULA = {2: (1024, 129093), 5: (1536, 741804), 14: (2048, 124476), 15: (3072, 1690314), 16: (4096, 240904)}
MODP_PRIMES = {2: modp.MODP_1024, 5: modp.MODP_1536, 14: modp.MODP_2048, 15: modp.MODP_3072, 16: modp.MODP_4096}

# RFC 5903 section 8 test vectors: initiator i, g^i = (gix, giy); responder r, g^r = (grx, gry); girx is the
# x coordinate of g^ir, the shared secret.
RFC5903 = {
    19: dict(  # section 8.1, 256-bit random ECP group
        i="C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
        gix="DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180",
        giy="5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
        r="C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
        grx="D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63",
        gry="56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
        girx="D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
    ),
    20: dict(  # section 8.2, 384-bit random ECP group
        i=(
            "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655 "
            "E35B5380 41E649EE 3FAEF896 783AB194"
        ),
        gix=(
            "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6 "
            "DE3AC808 ACB4BDB4 C88732AE E95F41AA"
        ),
        giy=(
            "9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E "
            "EB9FCFF3 C2C947DA E69B4C63 4573A81C"
        ),
        r=(
            "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942 "
            "E0308312 916B8ED2 960E4BD5 5A7448FC"
        ),
        grx=(
            "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D "
            "0D1AC43A 0336DEF9 6FDA41D0 774A3571"
        ),
        gry=(
            "DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF "
            "F83FA401 42209DFF 5EAAD96D B9E6386C"
        ),
        girx=(
            "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4 "
            "D6031355 69B9E9D0 9CF5D4A2 70F59746"
        ),
    ),
    21: dict(  # section 8.3, 521-bit random ECP group
        i=(
            "0037ADE9 319A89F4 DABDB3EF 411AACCC A5123C61 ACAB57B5 393DCE47 608172A0 "
            "95AA85A3 0FE1C295 2C6771D9 37BA9777F5957B26 39BAB072 462F68C2 7A57382D 4A52"
        ),
        gix=(
            "0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B D98BAB43 57C9ECBE "
            "E1E3BF42 E00B8E38 0AEAE57C 2D10756494188594 2AF5A7F4 601723C4 195D176C ED3E"
        ),
        giy=(
            "017CAE20 B6641D2E EB695786 D8C94614 6239D099 E18E1D5A 514C739D 7CB4A10A "
            "D8A78801 5AC405D7 799DC75E 7B7D5B6CF2261A6A 7F150743 8BF01BEB 6CA3926F 9582"
        ),
        r=(
            "0145BA99 A847AF43 793FDD0E 872E7CDF A16BE30F DC780F97 BCCC3F07 8380201E "
            "9C677D60 0B343757 A3BDBF2A 3163E4C2F869CCA7 458AA4A4 EFFC311F 5CB15168 5EB9"
        ),
        grx=(
            "00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39 728B5E57 39735A21 "
            "9B97C356 436ADC6E 95BB0352 F6BE64A6C2912D4E F2D0433C ED2B6171 640012D9 460F"
        ),
        gry=(
            "015C6822 6383956E 3BD066E7 97B623C2 7CE0EAC2 F551A10C 2C724D98 52077B87 "
            "220B6536 C5C408A1 D2AEBB8E 86D678AE49CB5709 1F473229 6579AB44 FCD17F0F C56A"
        ),
        girx=(
            "01144C7D 79AE6956 BC8EDB8E 7C787C45 21CB086F A64407F9 7894E5E6 B2D79B04 "
            "D1427E73 CA4BAA24 0A347868 59810C06B3C715A3 A8CC3151 F2BEE417 996D19F3 DDEA"
        ),
    ),
}

# Field primes of the NIST curves (FIPS 186-4 D.1.2): used to check the group orders in dh.py.
FIELD_PRIMES = {
    19: 2**256 - 2**224 + 2**192 + 2**96 - 1,
    20: 2**384 - 2**128 - 2**96 + 2**32 - 1,
    21: 2**521 - 1,
}

ALL_GROUPS = (2, 5, 14, 15, 16, 19, 20, 21)


def cryptography_ffdh_present() -> bool:
    """Whether this cryptography still has its finite-field DH API."""
    try:
        modp.CryptographyBackend(modp.MODP_2048, 2)
    except (ImportError, AttributeError, UnsupportedAlgorithm):
        return False
    return True


NO_FFDH = None if cryptography_ffdh_present() else "cryptography no longer has finite-field DH; pow() engine only"


class ModpPrimeTests(unittest.TestCase):
    """The MODP prime constants are the published ones, checked by properties that a typo would break."""

    def test_primes_follow_the_rfc_formula(self):
        """Each prime equals 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k), pi computed here."""
        for number, (bits, k) in MODP_FORMULA.items():
            expected = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (pi_fixed_point(bits - 130) + k)
            self.assertEqual(MODP_PRIMES[number], expected, f"group {number}")

    def test_bit_lengths_and_group_fields(self):
        """Each prime has exactly its nominal bit count; the group object carries it with generator 2."""
        for number, (bits, _) in MODP_FORMULA.items():
            self.assertEqual(MODP_PRIMES[number].bit_length(), bits)
            group = dh_group(number, allow_weak=True)
            self.assertEqual((group.prime, group.generator, group.public_length), (MODP_PRIMES[number], 2, bits // 8))

    def test_safe_primes_up_to_2048(self):
        """p and (p-1)/2 pass Miller-Rabin for the 1024, 1536 and 2048-bit primes; the test rejects composites."""
        for p in (modp.MODP_1024, modp.MODP_1536, modp.MODP_2048):
            self.assertTrue(probably_prime(p))
            self.assertTrue(probably_prime((p - 1) // 2))
        self.assertFalse(probably_prime(561))  # a Carmichael number
        self.assertFalse(probably_prime((2**89 - 1) * (2**107 - 1)))
        self.assertFalse(probably_prime(modp.MODP_1024 + 2))


class Rfc5903VectorTests(unittest.TestCase):
    """ECP groups 19, 20 and 21 reproduce the RFC 5903 section 8 test vectors."""

    def check_vector(self, number: int):
        group = dh_group(number)
        v = RFC5903[number]
        initiator = group.private_from_bytes(h(v["i"]))
        responder = group.private_from_bytes(h(v["r"]))
        self.assertEqual(initiator.public_bytes(), h(v["gix"]) + h(v["giy"]))
        self.assertEqual(responder.public_bytes(), h(v["grx"]) + h(v["gry"]))
        self.assertEqual(initiator.exchange(h(v["grx"]) + h(v["gry"])), h(v["girx"]))
        self.assertEqual(responder.exchange(h(v["gix"]) + h(v["giy"])), h(v["girx"]))

    def test_group_19(self):
        """RFC 5903 section 8.1 (256-bit): KE data is gix|giy, grx|gry and both ends derive girx."""
        self.check_vector(19)

    def test_group_20(self):
        """RFC 5903 section 8.2 (384-bit): KE data is gix|giy, grx|gry and both ends derive girx."""
        self.check_vector(20)

    def test_group_21(self):
        """RFC 5903 section 8.3 (521-bit, 66-octet coordinates): KE data and girx as published."""
        self.check_vector(21)

    def test_group_orders(self):
        """(n-1)G is -G (same x, y' = p - y) and n is refused as a scalar, so n is each curve's order."""
        for number in (19, 20, 21):
            group = dh_group(number)
            size = group.coordinate_size
            g = group.private_from_int(1).public_bytes()
            minus_g = group.private_from_int(group.order - 1).public_bytes()
            self.assertEqual(minus_g[:size], g[:size])
            y, y_neg = int.from_bytes(g[size:], "big"), int.from_bytes(minus_g[size:], "big")
            self.assertEqual(y + y_neg, FIELD_PRIMES[number])
            for scalar in (0, group.order):
                self.assertRaises(ValueError, group.private_from_int, scalar)


class GroupSelectionTests(unittest.TestCase):
    """Which group numbers exist, and the opt-in for weak groups."""

    def test_weak_groups_need_opt_in(self):
        """Groups 2 and 5 raise WeakGroupError naming Logjam without allow_weak, and work with it."""
        for number in (2, 5, OakleyGroup.MODP_1024):
            with self.assertRaises(WeakGroupError) as caught:
                dh_group(number)
            self.assertIn("Logjam", str(caught.exception))
            group = dh_group(number, allow_weak=True)
            self.assertTrue(group.weak)
            self.assertEqual(group.number, int(number))

    def test_unsupported_groups(self):
        """Group 1 (768 bits), EC2N groups 3 and 4, unassigned and non-int numbers raise UnsupportedGroup."""
        for number in (1, 3, 4, 17, 18, 22, 99, "14", None):
            self.assertRaises(UnsupportedGroup, dh_group, number)
            self.assertRaises(UnsupportedGroup, dh_group, number, allow_weak=True)

    def test_public_lengths(self):
        """KE data lengths: the prime's octets for MODP, two field-sized coordinates for ECP."""
        lengths = {n: dh_group(n, allow_weak=True).public_length for n in ALL_GROUPS}
        self.assertEqual(lengths, {2: 128, 5: 192, 14: 256, 15: 384, 16: 512, 19: 64, 20: 96, 21: 132})
        self.assertEqual(dh.SUPPORTED_GROUPS, ALL_GROUPS)

    def test_ecp_has_no_engine_choice(self):
        """Naming a MODP engine for an ECP group is a ValueError, and an unknown engine name too."""
        self.assertRaises(ValueError, dh_group, 19, backend="pow")
        self.assertRaises(ValueError, dh_group, 14, backend="gmpy")


class AgreementTests(unittest.TestCase):
    """Two fresh keys of one group agree, and the values have the sizes the KE payload needs."""

    def test_every_group_agrees(self):
        """For each group, a.exchange(B) == b.exchange(A), public values and secrets have the group's sizes."""
        for number in ALL_GROUPS:
            group = dh_group(number, allow_weak=True)
            a, b = group.generate(), group.generate()
            self.assertEqual(len(a.public_bytes()), group.public_length)
            self.assertNotEqual(a.public_bytes(), b.public_bytes())
            secret = a.exchange(b.public_bytes())
            self.assertEqual(secret, b.exchange(a.public_bytes()))
            expected_len = group.public_length if number < 19 else group.coordinate_size
            self.assertEqual(len(secret), expected_len, f"group {number}")

    def test_repr_hides_private_key(self):
        """A private key's repr names its group and shows neither the exponent nor the scalar."""
        x = 0xC0FFEE_1234_5678_9ABC_DEF0
        for number in (14, 19):
            key = dh_group(number).private_from_int(x)
            text = repr(key)
            self.assertIn(str(number), text)
            for shown in (str(x), f"{x:x}", f"{x:X}"):
                self.assertNotIn(shown, text)
        self.assertNotIn(f"{modp.MODP_2048:x}"[:16], repr(dh_group(14)).lower())

    def test_seeded_generation_is_repeatable(self):
        """generate(randbytes) with one seed gives one key; the MODP exponent is drawn as documented."""
        for number in (14, 19, 21):
            group = dh_group(number)
            first = group.generate(random.Random(7).randbytes).public_bytes()
            self.assertEqual(first, group.generate(random.Random(7).randbytes).public_bytes())
            self.assertNotEqual(first, group.generate(random.Random(8).randbytes).public_bytes())
        # MODP: x = top exponent_bits bits of randbytes(ceil(bits / 8)) with the top bit forced to 1.
        group = dh_group(14)
        bits = group.exponent_bits
        raw = int.from_bytes(random.Random(7).randbytes((bits + 7) // 8), "big")
        x = (raw >> (8 * ((bits + 7) // 8) - bits)) | (1 << (bits - 1))
        expected = pow(2, x, modp.MODP_2048).to_bytes(256, "big")
        self.assertEqual(group.generate(random.Random(7).randbytes).public_bytes(), expected)

    def test_short_randbytes_refused(self):
        """A randbytes that returns fewer octets than asked is a ValueError, not a weaker key."""
        for number in (14, 19):
            self.assertRaises(ValueError, dh_group(number).generate, lambda n: b"\x01" * (n - 1))

    def test_private_exponent_range(self):
        """MODP private_from_int refuses 0, 1, p-1 and p, and accepts 2 and p-2."""
        group = dh_group(14)
        p = group.prime
        for x in (0, 1, p - 1, p):
            self.assertRaises(ValueError, group.private_from_int, x)
        for x in (2, p - 2):
            self.assertEqual(group.private_from_int(x).public_bytes(), pow(2, x, p).to_bytes(256, "big"))


class ModpEngineTests(unittest.TestCase):
    """The cryptography engine and the pow() engine give identical results, checked against pow() here."""

    ENGINES = ("pow",) if NO_FFDH else ("cryptography", "pow")

    def engines(self, number: int):
        return [dh_group(number, allow_weak=True, backend=name) for name in self.ENGINES]

    def test_automatic_choice(self):
        """Without a choice, groups 5, 14, 15, 16 use cryptography and group 2 (unknown to OpenSSL) uses pow."""
        best = "pow" if NO_FFDH else "cryptography"
        chosen = {n: dh_group(n, allow_weak=True).backend.name for n in (2, 5, 14, 15, 16)}
        self.assertEqual(chosen, {2: "pow", 5: best, 14: best, 15: best, 16: best})

    def test_known_answer_small_exponents(self):
        """x=5, y=7 in group 14: g^x = 32 and g^xy = 2^35, both left-padded to 256 octets, on each engine."""
        for group in self.engines(14):
            a, b = group.private_from_int(5), group.private_from_int(7)
            self.assertEqual(a.public_bytes(), bytes(255) + b"\x20", group.backend.name)
            self.assertEqual(a.exchange(b.public_bytes()), (2**35).to_bytes(256, "big"), group.backend.name)
            self.assertEqual(b.exchange(a.public_bytes()), (2**35).to_bytes(256, "big"), group.backend.name)

    def test_known_answer_full_exponents(self):
        """Exponents from a fixed seed: public values and secret equal Python's pow() computed in the test."""
        rng = random.Random(2409)
        p = modp.MODP_2048
        x, y = rng.randrange(2, p - 1), rng.randrange(2, p - 1)
        gx, gy = pow(2, x, p), pow(2, y, p)
        for group in self.engines(14):
            a, b = group.private_from_int(x), group.private_from_int(y)
            self.assertEqual(a.public_bytes(), gx.to_bytes(256, "big"))
            self.assertEqual(b.public_bytes(), gy.to_bytes(256, "big"))
            self.assertEqual(a.exchange(b.public_bytes()), pow(gy, x, p).to_bytes(256, "big"))

    def test_engines_agree(self):
        """For groups 2, 5 and 14, one exponent gives the same public value and secret on both engines."""
        for number in (2, 5, 14):
            crypto_group, pow_group = self.engines(number)
            self.assertEqual((crypto_group.backend.name, pow_group.backend.name), ("cryptography", "pow"))
            peer = crypto_group.generate().public_bytes()
            for seed in (1, 2):
                k1 = crypto_group.generate(random.Random(seed).randbytes)
                k2 = pow_group.generate(random.Random(seed).randbytes)
                self.assertEqual(k1.public_bytes(), k2.public_bytes())
                self.assertEqual(k1.exchange(peer), k2.exchange(peer))

    test_engines_agree.skip = NO_FFDH

    def test_pow_engine_generates_full_length_exponents(self):
        """The pow engine draws exponents of exactly exponent_bits bits, and pairs of its keys agree."""
        group = dh_group(14, backend="pow")
        engine = group.backend
        self.assertEqual({engine.generate(group.exponent_bits).bit_length() for _ in range(20)}, {225})
        a, b = group.generate(), group.generate()
        self.assertEqual(a.exchange(b.public_bytes()), b.exchange(a.public_bytes()))

    def test_fallback_when_api_is_missing(self):
        """When importing cryptography's DH fails or its API is gone or unsupported, pow is picked by itself."""

        def no_module():
            raise ImportError("cannot import name 'dh'")

        class Gone:
            pass

        def unsupported():
            raise UnsupportedAlgorithm("FFDH is not supported by this backend")

        for replacement in (no_module, Gone, unsupported):
            self.patch(modp, "_import_dh", replacement)
            self.assertEqual(modp.modp_backend(modp.MODP_2048, 2).name, "pow")
            self.assertRaises(Exception, modp.modp_backend, modp.MODP_2048, 2, "cryptography")

    def test_dh_group_falls_back(self):
        """dh_group(14) without the cryptography DH API still works, on the pow engine."""
        self.patch(modp, "_import_dh", lambda: None)
        dh._group.cache_clear()
        self.addCleanup(dh._group.cache_clear)
        group = dh_group(14)
        self.assertEqual(group.backend.name, "pow")
        a, b = group.generate(), group.generate()
        self.assertEqual(a.exchange(b.public_bytes()), b.exchange(a.public_bytes()))

    def test_no_ffdh_deprecation_warning_escapes(self):
        """Generating, loading and exchanging with the cryptography engine emits no FFDH deprecation warning."""
        dh._group.cache_clear()  # rebuild the parameters too, inside this test
        self.addCleanup(dh._group.cache_clear)
        group = dh_group(14, backend="cryptography")
        a, b = group.generate(), group.private_from_int(12345)
        a.exchange(b.public_bytes())
        leaked = [w for w in self.flushWarnings() if issubclass(w["category"], CryptographyDeprecationWarning)]
        self.assertEqual(leaked, [])

    test_no_ffdh_deprecation_warning_escapes.skip = NO_FFDH

    def test_warning_filter_is_narrow(self):
        """The filter drops only the FFDH deprecation message; other cryptography deprecations still show."""
        with modp._ffdh_deprecation_ignored():
            warnings.warn(
                "Diffie-Hellman over finite fields (FFDH) is deprecated and support will be removed",
                CryptographyDeprecationWarning,
            )
            warnings.warn("Some other algorithm is deprecated", CryptographyDeprecationWarning)
        messages = [w["message"] for w in self.flushWarnings()]
        self.assertEqual(messages, ["Some other algorithm is deprecated"])


class InvalidPeerValueTests(unittest.TestCase):
    """Every invalid peer public value raises InvalidKeyExchange, which maps to INVALID-KEY-INFORMATION."""

    def test_modp_out_of_range_and_wrong_length(self):
        """0, 1, p-1, p, p+1, 2^2048-1 and lengths 0, 255, 257 are refused on both engines; 2 and p-2 are not."""
        p = modp.MODP_2048
        bad = [v.to_bytes(256, "big") for v in (0, 1, p - 1, p, p + 1, 2**2048 - 1)]
        bad += [b"", (5).to_bytes(255, "big"), (5).to_bytes(257, "big")]
        for name in ModpEngineTests.ENGINES:
            key = dh_group(14, backend=name).private_from_int(3)
            for value in bad:
                with self.assertRaises(InvalidKeyExchange) as caught:
                    key.exchange(value)
                self.assertEqual(caught.exception.notify, NotifyType.INVALID_KEY_INFORMATION)
            self.assertEqual(key.exchange((2).to_bytes(256, "big")), (8).to_bytes(256, "big"))
            self.assertEqual(key.exchange((p - 2).to_bytes(256, "big")), pow(p - 2, 3, p).to_bytes(256, "big"))

    def test_ecp_off_curve_and_wrong_length(self):
        """An off-curve point, all zeros, x = p, the SEC 1 0x04-tagged form and wrong lengths are refused."""
        for number in (19, 20, 21):
            group = dh_group(number)
            size = group.coordinate_size
            key = group.generate()
            good = group.generate().public_bytes()
            off_curve = good[:-1] + bytes([good[-1] ^ 1])
            x_is_p = FIELD_PRIMES[number].to_bytes(size, "big") + good[size:]
            for value in (off_curve, bytes(2 * size), x_is_p, b"", good[:-1], good + b"\0", b"\x04" + good):
                with self.assertRaises(InvalidKeyExchange) as caught:
                    key.exchange(value)
                self.assertEqual(caught.exception.notify, NotifyType.INVALID_KEY_INFORMATION)
            self.assertEqual(len(key.exchange(good)), size)
