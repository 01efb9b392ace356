"""Sender ID allocation for counter-mode TEKs (gdoiserver.group.sender_ids; RFC 6054)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.group.sender_ids import SenderIDAllocator, SenderIDsExhausted


class SenderIDTests(unittest.TestCase):
    def test_allocate_fresh(self):
        """Each allocation gets SIDs no one got before, starting at 1 (0 stays free for the key server)."""
        a = SenderIDAllocator(16)
        self.assertEqual(a.allocate("gm1", 3), (1, 2, 3))
        self.assertEqual(a.allocate("gm1", 1), (4,))  # the same member again: new SIDs, its counters may be lost
        self.assertEqual(a.owner(2), "gm1")
        self.assertIsNone(a.owner(0))
        self.assertEqual(a.remaining, (1 << 16) - 1 - 4)

    def test_bounded_by_bits(self):
        """With 2 SID bits only 1, 2 and 3 exist; asking for more than is left fails and allocates nothing."""
        a = SenderIDAllocator(2)
        self.assertEqual(a.capacity, 3)
        self.assertEqual(a.allocate("gm1", 2), (1, 2))
        self.assertRaises(SenderIDsExhausted, a.allocate, "gm2", 2)
        self.assertEqual(a.remaining, 1)
        self.assertEqual(a.allocate("gm2", 1), (3,))
        self.assertRaises(SenderIDsExhausted, a.allocate, "gm3", 1)
        self.assertIsNone(a.owner(4))

    def test_arguments(self):
        """SID bits are 1 to 32; an allocation asks for at least one SID."""
        self.assertRaises(ValueError, SenderIDAllocator, 0)
        self.assertRaises(ValueError, SenderIDAllocator, 33)
        self.assertRaises(ValueError, SenderIDAllocator(8).allocate, "gm", 0)

    @settings(max_examples=200, deadline=None)
    @given(bits=st.integers(1, 10), asks=st.lists(st.integers(1, 40), max_size=40))
    def test_never_twice(self, bits, asks):
        """Whatever members ask, no SID is handed out twice, every SID fits the bits and is not 0, and a refused
        request changes nothing."""
        a = SenderIDAllocator(bits)
        given_out = []
        for i, n in enumerate(asks):
            before = a.remaining
            try:
                sids = a.allocate(f"gm{i}", n)
            except SenderIDsExhausted:
                self.assertLess(before, n)
                self.assertEqual(a.remaining, before)
                continue
            self.assertEqual(len(sids), n)
            given_out.extend(sids)
            self.assertTrue(all(a.owner(s) == f"gm{i}" for s in sids))
        self.assertEqual(len(given_out), len(set(given_out)))
        self.assertTrue(all(0 < s < 1 << bits for s in given_out))
        self.assertEqual(a.remaining, a.capacity - len(given_out))
