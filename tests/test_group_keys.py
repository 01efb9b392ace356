"""A group's key state (gdoiserver.group.keys): generations made once, expiry, SPIs, the KEK, the group table."""

import ipaddress

from twisted.trial import unittest

from gdoiserver.group.keys import MIN_ESP_SPI, Generation, GroupKeys, GroupTable, SPIAllocator, remaining
from gdoiserver.group.policy import (
    GroupId,
    GroupPolicy,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
)
from tests import pki
from tests.machine_pair import ScriptedRng, seeded_rng

SELECTOR = TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("239.1.1.1/32"))
CBC = TEKPolicy("cbc", TEKTransform.AES_CBC, SELECTOR, 256, "hmac-sha384", lifetime=600)
GCM = TEKPolicy("gcm", TEKTransform.AES_GCM, SELECTOR, 128, lifetime=900)
REKEY = RekeyTransport(ipaddress.ip_address("192.0.2.1"), unicast=True)


def policy(**kw):
    kw.setdefault("number", 1)
    return GroupPolicy("g", (CBC, GCM), kek=KEKPolicy(pki.key("p256"), 256, lifetime=3000), rekey=REKEY, **kw)


class GroupKeysTests(unittest.TestCase):
    def test_made_once_per_generation(self):
        """Every registration while a generation lives gets the same one: its keys are made once, not per member."""
        keys = GroupKeys(policy(), seeded_rng(1))
        first = keys.current(100.0)
        for t in range(100, 700, 7):
            self.assertIs(keys.current(float(t)), first)
        self.assertEqual(keys.generations_made, 1)

    def test_key_material(self):
        """Each TEK gets an SPI and keys of its transform's sizes; expiry follows each lifetime from ``now``; the
        generation expires with its shortest-lived TEK; keys never show in a repr."""
        g = GroupKeys(policy(), seeded_rng(2)).current(1000.0)
        cbc, gcm = g.teks
        self.assertEqual((len(cbc.encryption_key), len(cbc.integrity_key)), (32, 48))
        self.assertEqual((len(gcm.encryption_key), gcm.integrity_key), (20, b""))
        self.assertEqual((cbc.expires_at, gcm.expires_at, g.expires_at), (1600.0, 1900.0, 1600.0))
        for secret in (cbc.encryption_key, cbc.integrity_key, gcm.encryption_key):
            self.assertNotIn(repr(secret), repr(g) + repr(cbc) + repr(gcm))
        self.assertIsNotNone(g.sender_ids)  # GCM is a counter mode (RFC 6054)

    def test_next_generation_after_expiry(self):
        """At expiry the next registration makes generation 2 with fresh SPIs and keys; the old SPIs are freed."""
        keys = GroupKeys(policy(), seeded_rng(3))
        one = keys.current(0.0)
        two = keys.current(600.0)
        self.assertEqual((one.number, two.number, keys.generations_made), (1, 2, 2))
        self.assertFalse({t.spi for t in one.teks} & {t.spi for t in two.teks})
        self.assertNotEqual(one.teks[0].encryption_key, two.teks[0].encryption_key)
        self.assertTrue(all(t.spi not in keys.spis for t in one.teks))
        self.assertTrue(all(t.spi in keys.spis for t in two.teks))

    def test_new_generation_for_rekeys(self):
        """new_generation makes the next one at once (a rekey); current then returns the newest."""
        keys = GroupKeys(policy(), seeded_rng(4))
        one = keys.current(0.0)
        two = keys.new_generation(10.0)
        self.assertIs(keys.current(20.0), two)
        self.assertIsNot(one, two)

    def test_no_sender_ids_without_counter_modes(self):
        """A group of CBC TEKs only has no SID allocator."""
        p = GroupPolicy("g", (CBC,), number=2)
        self.assertIsNone(GroupKeys(p, seeded_rng(5)).current(0.0).sender_ids)

    def test_kek(self):
        """The KEK is made once per KEK lifetime, with a 16-octet SPI and a key of its size; SEQ starts at 0."""
        keys = GroupKeys(policy(), seeded_rng(6))
        kek = keys.kek(0.0)
        self.assertIs(keys.kek(2999.0), kek)
        self.assertEqual((len(kek.spi), len(kek.key), kek.seq, kek.expires_at), (16, 32, 0, 3000.0))
        again = keys.kek(3000.0)
        self.assertIsNot(again, kek)
        self.assertEqual(keys.keks_made, 2)
        self.assertNotIn(repr(kek.key), repr(kek))
        self.assertIsNone(GroupKeys(GroupPolicy("g", (CBC,), number=3), seeded_rng(7)).kek(0.0))

    def test_remaining(self):
        """Lifetimes go out as whole seconds left, never 0."""
        self.assertEqual(remaining(100.0, 40.5), 59)
        self.assertEqual(remaining(100.0, 100.0), 1)


class RekeyStepsTests(unittest.TestCase):
    """The two-step changes the rekey service makes (make, store, then hand out), and restoring from a store."""

    def test_make_then_install(self):
        """make_generation draws fresh SPIs and keys but hands nothing out until install; the number rises."""
        keys = GroupKeys(policy(), seeded_rng(10))
        one = keys.current(0.0)
        two = keys.make_generation(5.0)
        self.assertEqual(two.number, 2)
        self.assertIs(keys.current(6.0), one)
        self.assertTrue(all(t.spi in keys.spis for t in two.teks))
        keys.install(two)
        self.assertIs(keys.current(6.0), two)
        self.assertIs(keys.newest, two)

    def test_make_kek_then_install(self):
        """make_kek makes a KEK that is not used until install_kek, which returns the old one, frees its SPI and
        carries the SEQ on (one counter per group, RFC 3547 section 4)."""
        keys = GroupKeys(policy(), seeded_rng(11))
        old = keys.kek(0.0)
        old.seq = 41
        new = keys.make_kek(10.0)
        self.assertIs(keys.kek(11.0), old)
        self.assertEqual(new.expires_at, 3010.0)
        self.assertIs(keys.install_kek(new), old)
        self.assertIs(keys.current_kek, new)
        self.assertEqual(new.seq, 41)
        self.assertNotIn(old.spi, keys.spis)
        self.assertRaises(ValueError, GroupKeys(GroupPolicy("g", (CBC,), number=3), seeded_rng(7)).make_kek, 0.0)

    def test_one_sender_id_allocator(self):
        """Sender IDs belong to the group: every generation shares one allocator, so a SID given under one
        generation is never given again under the next (RFC 6054)."""
        keys = GroupKeys(policy(), seeded_rng(12))
        one = keys.current(0.0)
        first = one.sender_ids.allocate("a", 2)
        two = keys.new_generation(1.0)
        self.assertIs(two.sender_ids, one.sender_ids)
        self.assertEqual(two.sender_ids.allocate("b", 1), (first[-1] + 1,))

    def test_on_made(self):
        """current and kek tell on_made of a key they had to make on the spot (with the expired KEK it
        replaces); keys the scheduler makes are not reported."""
        keys = GroupKeys(policy(), seeded_rng(13))
        made = []
        keys.on_made = lambda key, replaced: made.append((key, replaced))
        generation, kek = keys.current(0.0), keys.kek(0.0)
        self.assertEqual(made, [(generation, None), (kek, None)])
        keys.install(keys.make_generation(1.0))
        keys.install_kek(keys.make_kek(1.0))
        self.assertEqual(len(made), 2)
        newer = keys.current_kek
        again = keys.kek(3001.0)
        self.assertEqual(made[-1], (again, newer))

    def test_drop(self):
        """drop forgets a generation and frees its SPIs; an unknown number is None."""
        keys = GroupKeys(policy(), seeded_rng(14))
        one = keys.current(0.0)
        keys.new_generation(1.0)
        self.assertIs(keys.drop(1), one)
        self.assertTrue(all(t.spi not in keys.spis for t in one.teks))
        self.assertIsNone(keys.drop(1))

    def test_restore(self):
        """restore takes up stored generations and the KEK: their SPIs are in use, numbering goes on above them,
        the generations share the group's SID allocator, and nothing is made."""
        source = GroupKeys(policy(), seeded_rng(15))
        gens = [source.current(0.0), source.new_generation(10.0)]
        kek = source.kek(0.0)
        keys = GroupKeys(policy(), seeded_rng(16))
        rebuilt = [Generation(g.number, g.created_at, tuple(keys.tek_from_record(t.policy.name, t.spi,
                   t.encryption_key, t.integrity_key, t.expires_at) for t in g.teks), None, g.created_at)
                   for g in reversed(gens)]
        keys.restore(rebuilt, kek)
        self.assertEqual([g.number for g in keys.generations], [1, 2])
        self.assertTrue(all(t.spi in keys.spis for g in rebuilt for t in g.teks))
        self.assertIn(kek.spi, keys.spis)
        self.assertIs(keys.current_kek, kek)
        self.assertIs(keys.current(20.0), rebuilt[0])
        self.assertIs(rebuilt[1].sender_ids, keys.sender_ids)
        self.assertEqual(keys.make_generation(30.0).number, 3)
        self.assertEqual(keys.keks_made, 0)
        self.assertRaises(KeyError, keys.tek_from_record, "gone", b"\1\2\3\4", b"", b"", 1.0)


class SPITests(unittest.TestCase):
    def test_tek_spi_skips_reserved_and_used(self):
        """ESP SPIs below 256 are reserved (RFC 4303 2.1) and one in use is never drawn again: both are redrawn."""
        used = b"\x00\x01\x00\x00"
        spis = SPIAllocator(ScriptedRng([used, b"\x00\x00\x00\xff", used, b"\x00\x00\x01\x00"]))
        self.assertEqual(spis.tek_spi(), used)
        self.assertEqual(spis.tek_spi(), (MIN_ESP_SPI).to_bytes(4, "big"))

    def test_kek_spi_cookies_not_zero(self):
        """A KEK SPI is two cookies, neither of them zero (RFC 2408 section 3.1)."""
        good = bytes(range(1, 17))
        spis = SPIAllocator(ScriptedRng([bytes(8) + good[8:], good[:8] + bytes(8), good]))
        self.assertEqual(spis.kek_spi(), good)

    def test_broken_random_source(self):
        """A random source that only repeats itself is reported, not looped on forever."""
        spis = SPIAllocator(lambda n: b"\x00" * n)
        self.assertRaises(ValueError, spis.tek_spi)


class GroupTableTests(unittest.TestCase):
    def test_lookup(self):
        """A group is found by its number and by its OID; an unknown one is None; SPIs are unique across groups."""
        a = policy(number=10, oid="1.3.6.1.4.1.99999.10")
        b = GroupPolicy("b", (CBC,), number=11)
        table = GroupTable([a, b], seeded_rng(8))
        self.assertIs(table.lookup(GroupId(number=10)).policy, a)
        self.assertIs(table.lookup(GroupId(oid="1.3.6.1.4.1.99999.10")).policy, a)
        self.assertIs(table.lookup(GroupId(number=11)).policy, b)
        self.assertIsNone(table.lookup(GroupId(number=12)))
        ga, gb = (table.lookup(GroupId(number=n)).keys.current(0.0) for n in (10, 11))
        spis = [t.spi for t in ga.teks + gb.teks]
        self.assertEqual(len(spis), len(set(spis)))

    def test_duplicate_names(self):
        """Two groups answering to one number cannot share a table."""
        self.assertRaises(ValueError, GroupTable, [policy(number=5), GroupPolicy("b", (CBC,), number=5)],
                          seeded_rng(9))
