"""The negotiated hash and its HMAC prf (gdoiserver.crypto.prf) against published known answers."""

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.codec.constants import OakleyHash
from gdoiserver.crypto.errors import UnsupportedHash
from gdoiserver.crypto.prf import constant_time_equal, hash_algorithm

# RFC 2202 section 3, HMAC-SHA-1 test cases 1-7: (key, data, digest).
RFC2202_SHA1 = (
    (b"\x0b" * 20, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    (b"Jefe", b"what do ya want for nothing?", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    (b"\xaa" * 20, b"\xdd" * 50, "125d7342b9ac11cd91a39af48aa17b4f63f175d3"),
    (bytes(range(1, 26)), b"\xcd" * 50, "4c9007f4026250c6bc8414f9bf50c86c2d7235da"),
    (b"\x0c" * 20, b"Test With Truncation", "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04"),
    (
        b"\xaa" * 80,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "aa4ae5e15272d00e95705637ce8a3b55ed402112",
    ),
    (
        b"\xaa" * 80,
        b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
        "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
    ),
)

# RFC 2202 section 2, HMAC-MD5 test cases 1-2.
RFC2202_MD5 = (
    (b"\x0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
    (b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
)

# RFC 4231 section 4, test cases 1, 2, 3, 4, 6, 7 (case 5 tests truncation, which IKEv1 does not use):
# (key, data, HMAC-SHA-256, HMAC-SHA-384, HMAC-SHA-512).
RFC4231 = (
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
        "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
        "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be "
        b"hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    ),
)

HASHLIB_NAMES = {
    OakleyHash.MD5: "md5",
    OakleyHash.SHA: "sha1",
    OakleyHash.SHA2_256: "sha256",
    OakleyHash.SHA2_384: "sha384",
    OakleyHash.SHA2_512: "sha512",
}


class HmacKnownAnswerTests(unittest.TestCase):
    """The prf reproduces the RFC 2202 and RFC 4231 HMAC test vectors."""

    def test_rfc2202_hmac_sha1(self):
        """prf for Oakley hash 2 (SHA) gives the seven RFC 2202 HMAC-SHA-1 digests."""
        h = hash_algorithm(OakleyHash.SHA)
        for key, data, expected in RFC2202_SHA1:
            self.assertEqual(h.prf(key, data).hex(), expected)

    def test_rfc2202_hmac_md5(self):
        """prf for Oakley hash 1 (MD5, legacy peers only) gives the RFC 2202 HMAC-MD5 digests."""
        h = hash_algorithm(OakleyHash.MD5)
        for key, data, expected in RFC2202_MD5:
            self.assertEqual(h.prf(key, data).hex(), expected)

    def test_rfc4231_hmac_sha2(self):
        """prf for Oakley hashes 4, 5, 6 gives the RFC 4231 HMAC-SHA-256/384/512 digests in full."""
        for key, data, sha256, sha384, sha512 in RFC4231:
            self.assertEqual(hash_algorithm(OakleyHash.SHA2_256).prf(key, data).hex(), sha256)
            self.assertEqual(hash_algorithm(OakleyHash.SHA2_384).prf(key, data).hex(), sha384)
            self.assertEqual(hash_algorithm(OakleyHash.SHA2_512).prf(key, data).hex(), sha512)

    def test_parts_are_concatenated(self):
        """prf(key, a, b, c) is the HMAC of a | b | c: RFC 2202 case 7's data split in three parts."""
        key, data, expected = RFC2202_SHA1[6]
        h = hash_algorithm(OakleyHash.SHA)
        self.assertEqual(h.prf(key, data[:5], data[5:40], data[40:]).hex(), expected)
        self.assertEqual(h.prf(key, data[:5], b"", data[5:]).hex(), expected)


class HashAlgorithmTests(unittest.TestCase):
    """Which hashes exist, their sizes, the plain digest and the refusals."""

    def test_digest_sizes(self):
        """Digest sizes are 16, 20, 32, 48, 64 octets and only MD5 is marked legacy."""
        sizes = {number: hash_algorithm(number).digest_size for number in HASHLIB_NAMES}
        self.assertEqual(
            sizes,
            {
                OakleyHash.MD5: 16,
                OakleyHash.SHA: 20,
                OakleyHash.SHA2_256: 32,
                OakleyHash.SHA2_384: 48,
                OakleyHash.SHA2_512: 64,
            },
        )
        self.assertEqual([n for n in HASHLIB_NAMES if hash_algorithm(n).legacy], [OakleyHash.MD5])

    def test_plain_hash_of_abc(self):
        """hash(b"abc") is the FIPS 180 "abc" digest for SHA-1 and SHA-256, and MD5's RFC 1321 "abc" digest."""
        self.assertEqual(hash_algorithm(1).hash(b"abc").hex(), "900150983cd24fb0d6963f7d28e17f72")
        self.assertEqual(hash_algorithm(2).hash(b"a", b"bc").hex(), "a9993e364706816aba3e25717850c26c9cd0d89d")
        self.assertEqual(
            hash_algorithm(4).hash(b"ab", b"c").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        )

    def test_numbers_accept_plain_ints(self):
        """A plain int from an SA attribute selects the same algorithm as the enum member."""
        self.assertIs(hash_algorithm(2), hash_algorithm(OakleyHash.SHA))

    def test_unsupported_hashes(self):
        """Tiger (3), an unassigned number, 0 and a non-number raise UnsupportedHash, a ValueError."""
        for number in (OakleyHash.TIGER, 7, 0, 65535, "2", None):
            with self.assertRaises(UnsupportedHash):
                hash_algorithm(number)
        self.assertTrue(issubclass(UnsupportedHash, ValueError))

    @settings(max_examples=200, deadline=None)
    @given(
        number=st.sampled_from(sorted(HASHLIB_NAMES)),
        key=st.binary(min_size=1, max_size=200),
        parts=st.lists(st.binary(max_size=150), max_size=5),
    )
    def test_prf_matches_stdlib_hmac(self, number, key, parts):
        """For any key and parts, prf equals Python's own hmac over the joined parts, and hash equals hashlib."""
        h = hash_algorithm(number)
        name = HASHLIB_NAMES[number]
        self.assertEqual(h.prf(key, *parts), hmac.new(key, b"".join(parts), name).digest())
        self.assertEqual(h.hash(*parts), hashlib.new(name, b"".join(parts)).digest())


class ConstantTimeEqualTests(unittest.TestCase):
    """The comparison used for received HASH and MAC values."""

    def test_equal_and_unequal(self):
        """Equal bytes compare true; one flipped bit, a prefix or an extension compare false."""
        mac = bytes.fromhex(RFC2202_SHA1[0][2])
        self.assertTrue(constant_time_equal(mac, bytes(mac)))
        self.assertFalse(constant_time_equal(mac, mac[:-1] + bytes([mac[-1] ^ 1])))
        self.assertFalse(constant_time_equal(mac, mac[:-1]))
        self.assertFalse(constant_time_equal(mac, mac + b"\0"))
        self.assertTrue(constant_time_equal(b"", b""))
