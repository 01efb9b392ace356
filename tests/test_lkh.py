"""The LKH tree (gdoiserver.group.lkh): leaves and paths, eviction updates, and the member's side of them.

Property tests run random join/evict sequences and check, after every eviction, that each remaining member reaches
the new root from the path it holds, and that no evicted member can open a single wrapped key.
"""

import importlib.util
import random
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.group.lkh import ROOT, LKHError, LKHTree, LKHUpdate, NodeKey, ancestors, level, member_update


def seeded_rng(seed):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def tree(depth=3, key_bytes=16, seed=0, members=0) -> LKHTree:
    t = LKHTree(depth, key_bytes, seeded_rng(seed))
    t.set_root(bytes([0xAA]) * key_bytes)
    for _ in range(members):
        t.join()
    return t


class ShapeTests(SynchronousTestCase):
    """Heap numbering, leaves and paths."""

    def test_numbering(self):
        """Node 1 is the root; node n's parent is n // 2; the leaves of depth d are 2**d .. 2**(d+1)-1."""
        self.assertEqual(ancestors(13), [6, 3, 1])
        self.assertEqual(ancestors(ROOT), [])
        self.assertEqual((level(1), level(2), level(3), level(8), level(15)), (0, 1, 1, 3, 3))
        t = tree(3)
        self.assertEqual((t.first_leaf, t.capacity), (8, 8))
        self.assertTrue(t.is_leaf(8) and t.is_leaf(15))
        self.assertFalse(t.is_leaf(7) or t.is_leaf(16))

    def test_join_takes_the_lowest_free_leaf(self):
        """Members take leaves 8, 9, 10 ... in order; a leaf freed by an eviction is the next one taken."""
        t = tree(3)
        self.assertEqual([t.join() for _ in range(4)], [8, 9, 10, 11])
        t.evict(9, b"\x01" * 16)
        self.assertEqual(t.leaves(), [8, 10, 11])
        self.assertEqual(t.join(), 9)
        self.assertEqual(t.join(), 12)

    def test_full_tree(self):
        """A tree of depth 2 holds four members; a fifth is LKHError."""
        t = tree(2, members=4)
        self.assertEqual(t.members, 4)
        self.assertRaises(LKHError, t.join)

    def test_path(self):
        """A member's path is its leaf, then each ancestor up to a child of the root, each with its key and
        version; the root (the KEK) is not in it."""
        t = tree(3, members=3)
        path = t.path(10)
        self.assertEqual([k.node for k in path], [10, 5, 2])
        self.assertEqual([k.version for k in path], [1, 1, 1])
        self.assertEqual({len(k.key) for k in path}, {16})
        self.assertEqual(path[1], t.key(5))
        self.assertEqual(t.path(8)[2], path[2])  # node 2 is shared by leaves 8..11
        self.assertNotEqual(t.path(8)[0].key, path[0].key)

    def test_path_of_a_free_leaf(self):
        """Asking the path of a leaf nobody holds, or evicting it, is LKHError."""
        t = tree(3, members=1)
        self.assertRaises(LKHError, t.path, 9)
        self.assertRaises(LKHError, t.evict, 9, b"\x01" * 16)

    def test_lazy_keys(self):
        """Node keys are made when a member first needs them: one member makes its own path's keys only."""
        t = tree(4, members=1)
        self.assertEqual([n for n, _, _ in t.nodes()], [1, 2, 4, 8, 16])

    def test_restore(self):
        """A tree rebuilt from nodes() and the held leaves gives the same paths and the same next leaf."""
        t = tree(3, members=5)
        t.evict(9, b"\x02" * 16)
        again = LKHTree(3, 16, seeded_rng(9), {n: (k, v) for n, k, v in t.nodes()})
        for leaf in t.leaves():
            self.assertEqual(again.join(leaf=leaf), leaf)
        for leaf in t.leaves():
            self.assertEqual(again.path(leaf), t.path(leaf))
        self.assertEqual(again.key(ROOT), t.key(ROOT))
        self.assertEqual(again.join(), t.join())

    def test_join_restore_refusals(self):
        """join(leaf=) refuses a node that is no leaf and a leaf held already."""
        t = tree(3, members=1)
        self.assertRaises(LKHError, t.join, leaf=4)
        self.assertRaises(LKHError, t.join, leaf=16)
        self.assertRaises(LKHError, t.join, leaf=8)

    def test_bad_arguments(self):
        """Depths outside 1..24, key sizes other than AES's and nodes outside the tree are ValueError."""
        self.assertRaises(ValueError, LKHTree, 0, 16, seeded_rng(0))
        self.assertRaises(ValueError, LKHTree, 25, 16, seeded_rng(0))
        self.assertRaises(ValueError, LKHTree, 3, 20, seeded_rng(0))
        self.assertRaises(ValueError, LKHTree, 3, 16, seeded_rng(0), {16: (bytes(16), 1)})
        self.assertRaises(ValueError, LKHTree, 3, 16, seeded_rng(0), {5: (bytes(15), 1)})
        self.assertRaises(ValueError, tree(3).set_root, bytes(15))

    def test_set_root(self):
        """A KEK rekey gives the root the new key, one version up; paths do not change."""
        t = tree(3, members=2)
        before = t.path(8)
        first = t.key(ROOT)
        self.assertEqual(t.set_root(b"\x07" * 16), NodeKey(ROOT, first.version + 1, b"\x07" * 16))
        self.assertEqual(t.path(8), before)

    def test_keys_never_in_repr(self):
        """Neither a NodeKey's key nor an update's wrapped key shows in a repr."""
        t = tree(3, members=3)
        (leaf, *_) = t.path(8)
        self.assertNotIn(leaf.key.hex(), repr(leaf))
        self.assertNotIn(repr(leaf.key), repr(t.path(8)))
        updates, changed = t.evict(9, b"\x03" * 16)
        for u in updates:
            self.assertNotIn(repr(u.wrapped_key), repr(u))
        for k in changed:
            self.assertNotIn(repr(k.key), repr(k))


class EvictionTests(SynchronousTestCase):
    """What one eviction sends, and who can follow it."""

    def test_updates_of_a_full_tree(self):
        """In a full tree of depth 3, evicting leaf 10 rekeys nodes 5, 2 and 1: node 5 under its other child 11
        only, node 2 under 4 and the new 5, the root under the new 2 and 3: 2 * depth - 1 wrapped keys."""
        t = tree(3, members=8)
        old = {n: v for n, _, v in t.nodes()}
        updates, changed = t.evict(10, b"\x05" * 16)
        self.assertEqual([(u.node, u.wrapping_node) for u in updates], [(5, 11), (2, 4), (2, 5), (1, 2), (1, 3)])
        self.assertEqual(len(updates), 2 * t.depth - 1)
        self.assertEqual([k.node for k in changed], [10, 5, 2, 1])
        for k in changed:
            self.assertEqual(k.version, old[k.node] + 1)
        self.assertEqual(t.key(ROOT).key, b"\x05" * 16)
        for u in updates:  # each unwraps under the wrapping node's key at the version named
            wrapping = t.key(u.wrapping_node)
            self.assertEqual(wrapping.version, u.wrapping_version)
            self.assertEqual(aes_key_unwrap(wrapping.key, u.wrapped_key), t.key(u.node).key)

    def test_empty_subtrees_get_nothing(self):
        """Children with no member below them get no wrapped key: evicting one of two members of a big tree
        sends the new keys under the other member's side only."""
        t = tree(5, members=2)
        updates, _ = t.evict(33, b"\x06" * 16)
        self.assertEqual([(u.node, u.wrapping_node) for u in updates], [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)])

    def test_last_member(self):
        """Evicting the only member sends no wrapped key at all; the tree is empty after."""
        t = tree(3, members=1)
        updates, changed = t.evict(8, b"\x06" * 16)
        self.assertEqual(updates, ())
        self.assertEqual([k.node for k in changed], [8, 4, 2, 1])
        self.assertEqual(t.members, 0)

    def test_members_follow_the_evicted_does_not(self):
        """Every other member reaches the new root, and its new path is the tree's; the evicted member gets
        LKHError, and its old leaf key no longer exists in the tree."""
        t = tree(3, members=6)
        paths = {leaf: t.path(leaf) for leaf in t.leaves()}
        updates, _ = t.evict(12, b"\x08" * 16)
        for leaf, path in paths.items():
            if leaf == 12:
                self.assertRaises(LKHError, member_update, path, updates)
                continue
            new_path, root = member_update(path, updates)
            self.assertEqual(root, t.key(ROOT))
            self.assertEqual(new_path, t.path(leaf))
        self.assertNotEqual(t.key(12).key, paths[12][0].key)

    def test_updates_in_any_order(self):
        """A member follows the updates whatever their order (bottom-up is only how they are sent)."""
        t = tree(4, members=16)
        path = t.path(20)
        updates, _ = t.evict(21, b"\x09" * 16)
        shuffled = list(updates)
        random.Random(1).shuffle(shuffled)
        self.assertEqual(member_update(path, shuffled)[1], t.key(ROOT))

    def test_eviction_updates_again(self):
        """After an eviction, and in a tree restored from its stored keys, eviction_updates gives the very updates
        evict returned; for a held leaf it is LKHError."""
        t = tree(4, members=11)
        updates, _ = t.evict(21, b"\x0d" * 16)
        self.assertEqual(t.eviction_updates(21), updates)
        again = LKHTree(4, 16, seeded_rng(5), {n: (k, v) for n, k, v in t.nodes()})
        for leaf in t.leaves():
            again.join(leaf=leaf)
        self.assertEqual(again.eviction_updates(21), updates)
        self.assertRaises(LKHError, t.eviction_updates, 20)

    def test_tampered_wrap(self):
        """A wrapped key that fails RFC 3394's integrity check is LKHError, not a wrong key."""
        t = tree(3, members=4)
        path = t.path(8)
        updates, _ = t.evict(9, b"\x0a" * 16)
        bad = [u._replace(wrapped_key=u.wrapped_key[:-1] + bytes([u.wrapped_key[-1] ^ 1])) for u in updates]
        self.assertRaises(LKHError, member_update, path, bad)

    def test_stale_versions_are_not_used(self):
        """An update wrapped under a version of a node the member does not hold is skipped: it cannot open it."""
        t = tree(3, members=4)
        path = t.path(8)
        updates, _ = t.evict(9, b"\x0b" * 16)
        older = [u._replace(wrapping_version=u.wrapping_version + 7) for u in updates]
        self.assertRaises(LKHError, member_update, path, older)

    def test_aes256_keys(self):
        """Node keys of 32 octets wrap to 40 octets and unwrap back."""
        t = tree(3, key_bytes=32, members=3)
        path = t.path(8)
        updates, _ = t.evict(10, b"\x0c" * 32)
        self.assertEqual({len(u.wrapped_key) for u in updates}, {40})
        self.assertEqual(member_update(path, updates)[1].key, b"\x0c" * 32)


#: A sequence of operations: ("join",) or ("evict", k) evicting the k-th held leaf (modulo how many there are).
OPERATIONS = st.lists(st.one_of(st.just(("join",)), st.tuples(st.just("evict"), st.integers(0, 1000))),
                      min_size=1, max_size=40)


class PropertyTests(SynchronousTestCase):
    """Random join/evict sequences on small trees."""

    @settings(max_examples=200, deadline=None)
    @given(depth=st.integers(1, 5), key_bytes=st.sampled_from([16, 24, 32]), ops=OPERATIONS, seed=st.integers())
    def test_remaining_reach_the_root_evicted_never(self, depth, key_bytes, ops, seed):
        """After every eviction each remaining member, holding only what it was given and what it unwrapped, reaches
        the new root; every evicted member (with all the keys it ever held) can open none of the wrapped keys; and
        no key a member ever held is still a key of a node on an evicted member's former path."""
        t = LKHTree(depth, key_bytes, seeded_rng(seed))
        t.set_root(bytes(key_bytes))
        held: dict[int, tuple] = {}  # leaf -> the path its member holds
        evicted_knowledge: list[set] = []  # for each evicted member: every (node, version) it ever held
        knowledge: dict[int, set] = {}
        for op in ops:
            if op[0] == "join":
                if t.members == t.capacity:
                    self.assertRaises(LKHError, t.join)
                    continue
                leaf = t.join()
                self.assertNotIn(leaf, held)
                held[leaf] = t.path(leaf)
                knowledge[leaf] = {(k.node, k.version) for k in held[leaf]} | {(ROOT, t.key(ROOT).version)}
                continue
            if not held:
                continue
            leaf = sorted(held)[op[1] % len(held)]
            new_root = bytes(random.Random(seed + len(evicted_knowledge)).getrandbits(8) for _ in range(key_bytes))
            updates, changed = t.evict(leaf, new_root)
            self.assertLessEqual(len(updates), max(0, 2 * depth - 1))
            evicted_knowledge.append(knowledge.pop(leaf))
            del held[leaf]
            for k in changed:  # nothing the evicted member knew is still current
                self.assertNotIn((k.node, k.version), evicted_knowledge[-1])
            for known in evicted_knowledge:
                for u in updates:
                    self.assertNotIn((u.wrapping_node, u.wrapping_version), known)
            for other, path in held.items():
                new_path, root = member_update(path, updates)
                self.assertEqual(root, NodeKey(ROOT, t.key(ROOT).version, new_root))
                self.assertEqual(new_path, t.path(other))
                held[other] = new_path
                knowledge[other] |= {(k.node, k.version) for k in new_path} | {(ROOT, root.version)}
        self.assertEqual(sorted(held), t.leaves())

    @settings(max_examples=100, deadline=None)
    @given(ops=OPERATIONS, seed=st.integers())
    def test_restored_tree_behaves_the_same(self, ops, seed):
        """A tree rebuilt from nodes() and its held leaves at any point takes the same next leaf and sends
        updates the members of the original follow."""
        t = tree(4, seed=seed)
        for op in ops:
            if op[0] == "join" and t.members < t.capacity:
                t.join()
            elif op[0] == "evict" and t.members:
                leaves = t.leaves()
                t.evict(leaves[op[1] % len(leaves)], bytes([op[1] % 256]) * 16)

        def restored():
            again = LKHTree(4, 16, seeded_rng(seed + 1), {n: (k, v) for n, k, v in t.nodes()})
            for leaf in t.leaves():
                again.join(leaf=leaf)
            return again

        self.assertEqual(restored().nodes(), t.nodes())
        self.assertEqual(restored().leaves(), t.leaves())
        if t.members:
            paths = {leaf: t.path(leaf) for leaf in t.leaves()}
            gone = t.leaves()[0]
            updates, _ = restored().evict(gone, b"\x33" * 16)
            for leaf, path in paths.items():
                if leaf != gone:
                    self.assertEqual(member_update(path, updates)[1].key, b"\x33" * 16)
        if t.members < t.capacity:
            self.assertEqual(restored().join(), t.join())


class UpdateTypeTests(SynchronousTestCase):
    def test_update_is_a_tuple(self):
        """An LKHUpdate unpacks as (node, version, wrapping_node, wrapping_version, wrapped_key)."""
        node, version, wnode, wversion, wrapped = LKHUpdate(5, 2, 11, 1, b"x" * 24)
        self.assertEqual((node, version, wnode, wversion, wrapped), (5, 2, 11, 1, b"x" * 24))


class BenchmarkTests(SynchronousTestCase):
    def test_eviction_benchmark_runs(self):
        """benchmarks/eviction.py runs on tiny groups and reports what docs/eviction.md quotes; its members really
        reach the new KEK (the benchmark checks that itself, or raises)."""
        path = Path(__file__).resolve().parent.parent / "benchmarks" / "eviction.py"
        spec = importlib.util.spec_from_file_location("_bench_eviction", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        report = bench.run([4, 40], 1, 128)
        small, bigger = report["results"]
        self.assertEqual((small["members"], small["depth"], bigger["depth"]), (4, 16, 16))
        for r in (small, bigger):
            self.assertLessEqual(r["wrapped_keys"], 2 * r["depth"] - 1)
            self.assertEqual(r["member"]["sibling"]["unwraps"], r["depth"])
            self.assertEqual(r["update_array_octets"], 4 + r["wrapped_keys"] * 50)
            self.assertGreater(r["push_octets"], r["update_array_octets"])
            self.assertEqual(r["unicast_rekek"]["messages"], r["members"] - 1)
