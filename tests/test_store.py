"""The key store: records, the commit rules (one transaction, call order, a SEQ high-water mark that never goes
down), the in-memory and SQLite stores behind one interface, file permissions, bad files, and kill -9."""

import hashlib
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from gdoiserver.store import (
    Changes, GenerationRecord, GroupState, KEKRecord, KeyStore, LKHNodeRecord, MemberRecord, MemoryStore,
    StoreError, TEKRecord, apply_changes,
)
from gdoiserver.store.sqlite import SQLiteStore
from tests import store_crash_child

SECRET = b"\xa5SECRET-KEY-BYTES\x5a"


def tek(n: int, name: str = "tek") -> TEKRecord:
    return TEKRecord(name, n.to_bytes(4, "big"), bytes([n]) * 16, bytes([n + 1]) * 20, 1000.0 + n, 4600.5 + n)


def generation(n: int, teks: int = 2, pushed_at=None) -> GenerationRecord:
    return GenerationRecord(n, 1000.0 + n, [tek(10 * n + i, f"tek{i}") for i in range(teks)], pushed_at)


def kek(n: int, created_at: float = 1000.0, retired: bool = False) -> KEKRecord:
    return KEKRecord(bytes([n]) * 16, bytes([n ^ 0xFF]) * 32, created_at, created_at + 86400.25, retired)


def node(n: int, version: int = 0) -> LKHNodeRecord:
    return LKHNodeRecord(n, hashlib.sha256(b"%d/%d" % (n, version)).digest()[:16], version)


def member(identity: str, **fields) -> MemberRecord:
    values = dict(id_type=2, id_data=identity.encode(), address="2001:db8::1", port=848, registered_at=1234.5,
                  leaf=1 << 16, ack_key=hashlib.sha1(identity.encode()).digest(), last_seq_acked=7, missed=1,
                  stale=False, sender_ids=(3, 0xFFFFFFFF))
    values.update(fields)
    return MemberRecord(identity, **values)


def everything() -> Changes:
    """One commit with every kind of record."""
    return Changes(
        generations=[generation(1), generation(2, teks=1, pushed_at=2000.0)],
        keks=[kek(1, retired=True), kek(2, created_at=2000.0)],
        seq_high_water=64,
        lkh_nodes=[node(1, 3), node(2), node(3, 1), node(1 << 16)],
        members=[member("member-a"), member("member-b", leaf=None, ack_key=b"", stale=True, port=4500,
                                                 address="192.0.2.7", id_type=11, id_data=b"")],
        evict=["evicted@example.org"],
    )


class RecordTests(unittest.TestCase):
    def test_secrets_never_in_repr(self):
        """No record shows a key in its repr: TEK keys, KEK key, LKH node key, a member's ack key."""
        records = [
            TEKRecord("t", b"\x00\x00\x01\x00", SECRET, SECRET, 0.0, 1.0),
            KEKRecord(b"s" * 16, SECRET, 0.0, 1.0),
            LKHNodeRecord(1, SECRET, 0),
            member("m", ack_key=SECRET),
        ]
        state = GroupState("g", generations=[GenerationRecord(1, 0.0, [records[0]])], keks=[records[1]],
                           lkh_nodes={1: records[2]}, members={"m": records[3]})
        for shown in [*map(repr, records), repr(state), repr(Changes(keks=[records[1]]))]:
            self.assertNotIn(repr(SECRET)[2:-1], shown)
            self.assertNotIn(SECRET.hex(), shown)

    def test_wrong_types_refused(self):
        """Records check their field types, so a bad value fails where it is made, not in the store."""
        with self.assertRaises(TypeError):
            TEKRecord("t", "not bytes", b"k", b"i", 0.0, 1.0)
        with self.assertRaises(TypeError):
            KEKRecord(b"s" * 16, b"k", 0.0, 1.0, retired=1)
        with self.assertRaises(ValueError):
            LKHNodeRecord(0, b"k", 0)
        with self.assertRaises(ValueError):
            member("m", port=65536)
        with self.assertRaises(ValueError):
            GenerationRecord(0, 0.0, [])
        with self.assertRaises(TypeError):
            GenerationRecord(1, 0.0, [kek(1)])

    def test_collections_converted(self):
        """Lists given to records and changes become tuples/frozensets, so records compare by value."""
        g = GenerationRecord(1, 0.0, [tek(1)])
        self.assertEqual(g.teks, (tek(1),))
        self.assertEqual(GroupState("g", evicted=["a", "a"]).evicted, frozenset({"a"}))
        self.assertEqual(Changes(drop_members=["x"]).drop_members, ("x",))


class ChangesTests(unittest.TestCase):
    def test_put_and_drop_of_one_key_refused(self):
        """A key both put and dropped in one commit is refused: the result would depend on an order."""
        for changes in (dict(generations=[generation(1)], drop_generations=[1]),
                        dict(keks=[kek(1)], drop_keks=[kek(1).spi]),
                        dict(lkh_nodes=[node(2)], drop_lkh_nodes=[2]),
                        dict(members=[member("a")], drop_members=["a"]),
                        dict(evict=["a"], readmit=["a"])):
            with self.assertRaises(ValueError, msg=changes):
                Changes(**changes)

    def test_duplicate_keys_refused(self):
        """Two records with one key in one commit are refused."""
        with self.assertRaises(ValueError):
            Changes(generations=[generation(1), generation(1, teks=1)])
        with self.assertRaises(ValueError):
            Changes(drop_members=["a", "a"])

    def test_negative_high_water_refused(self):
        """A SEQ high-water mark is a non-negative integer."""
        with self.assertRaises(ValueError):
            Changes(seq_high_water=-1)
        with self.assertRaises(TypeError):
            Changes(seq_high_water=1.5)

    def test_empty(self):
        """``empty`` is true only for a commit that changes nothing."""
        self.assertTrue(Changes().empty)
        self.assertFalse(Changes(seq_high_water=0).empty)
        self.assertFalse(Changes(readmit=["a"]).empty)


class StoreContract:
    """The behaviour every KeyStore shares; subclasses say how to make and reopen one."""

    def make_store(self) -> KeyStore:
        raise NotImplementedError

    @defer.inlineCallbacks
    def reopen(self, store: KeyStore) -> KeyStore:
        raise NotImplementedError

    def setUp(self):
        self.store = self.make_store()

    @defer.inlineCallbacks
    def tearDown(self):
        if not self.store_closed(self.store):
            yield self.store.close()

    def store_closed(self, store) -> bool:
        return store._closed

    def expected(self, *commits) -> GroupState:
        state = GroupState("g")
        for changes in commits:
            state = apply_changes(state, changes)
        return state

    @defer.inlineCallbacks
    def test_is_a_keystore(self):
        """The store implements the KeyStore interface and names its location."""
        self.assertIsInstance(self.store, KeyStore)
        self.assertIsInstance(self.store.location, str)
        self.assertEqual((yield self.store.load()), {})

    @defer.inlineCallbacks
    def test_round_trip_every_record(self):
        """Every kind of record comes back equal from load(), and again after the store is reopened."""
        yield self.store.commit("g", everything())
        loaded = yield self.store.load()
        want = self.expected(everything())
        self.assertEqual(loaded, {"g": want})
        self.assertEqual(loaded["g"].members["member-a"].ack_key, member("member-a").ack_key)
        self.assertEqual(loaded["g"].generations[0].teks[1].integrity_key, tek(11).integrity_key)
        self.store = yield self.reopen(self.store)
        self.assertEqual((yield self.store.load()), {"g": want})

    @defer.inlineCallbacks
    def test_puts_replace_and_drops_remove(self):
        """A put replaces the record with the same key (a generation's TEK list included), a drop removes it,
        and evict/readmit change the evicted set without touching the member table."""
        first = everything()
        second = Changes(generations=[generation(1, teks=1, pushed_at=5.0)], drop_generations=[2],
                         keks=[kek(2, created_at=2000.0, retired=True)], drop_keks=[kek(1).spi],
                         lkh_nodes=[node(1, 4)], drop_lkh_nodes=[3, 99],
                         members=[member("member-a", stale=True, missed=3)], drop_members=["member-b"],
                         evict=["member-a"], readmit=["evicted@example.org"])
        yield self.store.commit("g", first)
        yield self.store.commit("g", second)
        state = (yield self.store.load())["g"]
        self.assertEqual(state, self.expected(first, second))
        self.assertEqual(state.generations, (generation(1, teks=1, pushed_at=5.0),))
        self.assertEqual(state.keks, (kek(2, created_at=2000.0, retired=True),))
        self.assertEqual(sorted(state.lkh_nodes), [1, 2, 1 << 16])
        self.assertEqual(state.lkh_nodes[1].version, 4)
        self.assertEqual(list(state.members), ["member-a"])
        self.assertTrue(state.members["member-a"].stale)
        self.assertEqual(state.evicted, frozenset({"member-a"}))

    @defer.inlineCallbacks
    def test_ordered_records(self):
        """Generations come back in ascending number and KEKs oldest first, whatever order they were put in."""
        yield self.store.commit("g", Changes(generations=[generation(3)], keks=[kek(9, created_at=300.0)]))
        yield self.store.commit("g", Changes(generations=[generation(1)], keks=[kek(1, created_at=100.0)]))
        yield self.store.commit("g", Changes(generations=[generation(2)], keks=[kek(5, created_at=200.0)]))
        state = (yield self.store.load())["g"]
        self.assertEqual([g.number for g in state.generations], [1, 2, 3])
        self.assertEqual([k.created_at for k in state.keks], [100.0, 200.0, 300.0])

    @defer.inlineCallbacks
    def test_high_water_never_goes_down(self):
        """The SEQ high-water mark may rise or stay; a lower one fails with ValueError and the whole commit
        (its other changes too) is not applied."""
        yield self.store.commit("g", Changes(seq_high_water=64))
        yield self.store.commit("g", Changes(seq_high_water=64))
        yield self.store.commit("g", Changes(seq_high_water=128))
        error = yield self.assertFailure(
            self.store.commit("g", Changes(seq_high_water=127, members=[member("m")], evict=["x"])), ValueError)
        self.assertIn("'g'", str(error))
        self.assertIn("128", str(error))
        state = (yield self.store.load())["g"]
        self.assertEqual((state.seq_high_water, state.members, state.evicted), (128, {}, frozenset()))
        yield self.store.commit("g", Changes(members=[member("m")]))
        self.assertEqual((yield self.store.load())["g"].seq_high_water, 128)

    @defer.inlineCallbacks
    def test_commits_apply_in_call_order(self):
        """Commits made without waiting take effect, and fire, in call order; a load after them sees them all;
        a failing commit in the middle does not stop the later ones."""
        fired = []
        ds = []
        for i in range(1, 41):
            changes = Changes(seq_high_water=i, members=[member("m", last_seq_acked=i)])
            if i == 20:
                changes = Changes(seq_high_water=1)  # fails: the mark is 19 by then
            ds.append(self.store.commit("g", changes).addCallbacks(
                lambda _, i=i: fired.append(i), lambda f, i=i: fired.append(-i) if f.check(ValueError) else f))
        loaded = self.store.load()
        yield defer.gatherResults(ds)
        state = (yield loaded)["g"]
        self.assertEqual(fired, [i if i != 20 else -20 for i in range(1, 41)])
        self.assertEqual((state.seq_high_water, state.members["m"].last_seq_acked), (40, 40))

    @defer.inlineCallbacks
    def test_groups_are_separate(self):
        """Each group has its own records and high-water mark; an empty commit creates a group."""
        yield self.store.commit("a", Changes(seq_high_water=500, members=[member("m")]))
        yield self.store.commit("b", Changes())
        yield self.store.commit("b", Changes(seq_high_water=3))
        groups = yield self.store.load()
        self.assertEqual(sorted(groups), ["a", "b"])
        self.assertEqual((groups["a"].seq_high_water, groups["b"].seq_high_water), (500, 3))
        self.assertEqual(groups["b"], GroupState("b", seq_high_water=3))

    @defer.inlineCallbacks
    def test_bad_arguments(self):
        """A group name must be a non-empty string and the changes a Changes: failures come in the Deferred."""
        yield self.assertFailure(self.store.commit("", Changes()), ValueError)
        yield self.assertFailure(self.store.commit(None, Changes()), ValueError)
        yield self.assertFailure(self.store.commit("g", {"seq_high_water": 1}), TypeError)
        self.assertEqual((yield self.store.load()), {})

    @defer.inlineCallbacks
    def test_loaded_state_is_a_copy(self):
        """Changing the dicts of a loaded GroupState changes nothing in the store."""
        yield self.store.commit("g", everything())
        state = (yield self.store.load())["g"]
        state.members.clear()
        state.lkh_nodes.clear()
        self.assertEqual((yield self.store.load())["g"], self.expected(everything()))

    @defer.inlineCallbacks
    def test_closed_store_refuses(self):
        """After close(), commit, load and close fail with StoreError; earlier commits were finished first."""
        d = self.store.commit("g", Changes(seq_high_water=9))
        yield self.store.close()
        self.assertTrue(d.called)
        yield d
        yield self.assertFailure(self.store.commit("g", Changes()), StoreError)
        yield self.assertFailure(self.store.load(), StoreError)
        yield self.assertFailure(self.store.close(), StoreError)
        self.store = yield self.reopen(self.store)
        self.assertEqual((yield self.store.load())["g"].seq_high_water, 9)


class MemoryStoreTests(StoreContract, unittest.TestCase):
    def make_store(self):
        return MemoryStore()

    def reopen(self, store):
        return defer.succeed(store.reopened())

    def test_immediate(self):
        """Without pause(), every Deferred has fired when the call returns (so Clock tests need no reactor)."""
        self.assertTrue(self.store.commit("g", Changes(seq_high_water=1)).called)
        results = []
        self.store.load().addCallback(results.append)
        self.assertEqual(results[0]["g"].seq_high_water, 1)
        self.assertEqual(self.store.commits, 1)

    def test_pause_holds_calls_in_order(self):
        """While paused, commits and loads wait; resume() runs them in call order; reopened() then keeps only
        what had been applied, as after a crash."""
        self.store.commit("g", Changes(seq_high_water=1))
        self.store.pause()
        held = self.store.commit("g", Changes(seq_high_water=2))
        loaded = self.store.load()
        self.assertFalse(held.called or loaded.called)
        crashed = self.store.reopened()
        self.assertEqual(self.successResultOf(crashed.load())["g"].seq_high_water, 1)
        self.store.resume()
        self.assertIsNone(self.successResultOf(held))
        self.assertEqual(self.successResultOf(loaded)["g"].seq_high_water, 2)

    def test_fail_commits(self):
        """fail_commits(e) makes commits fail with e and change nothing, until fail_commits(None)."""
        self.store.fail_commits(StoreError("disk full"))
        self.failureResultOf(self.store.commit("g", Changes(seq_high_water=5)), StoreError)
        self.assertEqual(self.successResultOf(self.store.load()), {})
        self.store.fail_commits(None)
        self.successResultOf(self.store.commit("g", Changes(seq_high_water=5)))
        self.assertEqual(self.store.commits, 1)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class SQLiteStoreTests(StoreContract, unittest.TestCase):
    def make_store(self):
        self.path = os.path.abspath(self.mktemp())
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return SQLiteStore(self.path, reactor)

    @defer.inlineCallbacks
    def reopen(self, store):
        if not store._closed:
            yield store.close()
        return SQLiteStore(store.path, reactor)

    @defer.inlineCallbacks
    def test_commit_on_the_store_thread(self):
        """Commits and loads run on one worker thread, never on the reactor thread."""
        seen = []
        write, load = self.store._write, self.store._load

        def recording_write(*args):
            seen.append(threading.get_ident())
            return write(*args)

        def recording_load():
            seen.append(threading.get_ident())
            return load()

        self.patch(self.store, "_write", recording_write)
        self.patch(self.store, "_load", recording_load)
        yield defer.gatherResults([self.store.commit("g", Changes(seq_high_water=i)) for i in range(5)])
        yield self.store.load()
        self.assertEqual(len(seen), 6)
        self.assertEqual(len(set(seen)), 1)
        self.assertNotEqual(seen[0], threading.get_ident())

    def test_created_0600_whatever_the_umask(self):
        """A new store file is mode 0600 and missing directories 0700, even under umask 0."""
        path = os.path.join(os.path.abspath(self.mktemp()), "state", "keys.db")
        old = os.umask(0)
        try:
            store = SQLiteStore(path, reactor)
        finally:
            os.umask(old)
        self.addCleanup(store.close)
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(mode_of(os.path.dirname(path)), 0o700)
        self.assertEqual(mode_of(os.path.dirname(os.path.dirname(path))), 0o700)

    @defer.inlineCallbacks
    def test_wal_file_0600(self):
        """The WAL file SQLite makes beside the store holds keys too: it has the store's mode 0600."""
        yield self.store.commit("g", everything())
        self.assertTrue(os.path.exists(self.path + "-wal"))
        self.assertEqual(mode_of(self.path + "-wal"), 0o600)

    @defer.inlineCallbacks
    def test_loose_permissions_refused(self):
        """An existing store (or its WAL file) that group or others may access is refused, naming the path and
        the mode; nothing is opened."""
        yield self.store.close()
        for mode in (0o640, 0o604, 0o660, 0o666):
            os.chmod(self.path, mode)
            with self.assertRaises(StoreError) as caught:
                SQLiteStore(self.path, reactor)
            self.assertIn(self.path, str(caught.exception))
            self.assertIn(f"{mode:04o}", str(caught.exception))
        os.chmod(self.path, 0o600)
        wal = self.path + "-wal"
        with open(wal, "wb"):
            pass
        os.chmod(wal, 0o644)
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path, reactor)
        self.assertIn(wal, str(caught.exception))
        os.remove(wal)
        self.store = SQLiteStore(self.path, reactor)

    def test_not_a_regular_file(self):
        """A directory where the store should be is refused with the path named."""
        path = os.path.abspath(self.mktemp())
        os.mkdir(path, 0o700)
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(path, reactor)
        self.assertIn(path, str(caught.exception))

    def test_dangling_symlink_refused(self):
        """A symbolic link to a missing file is refused rather than followed (SQLite would create the target
        with the umask's mode)."""
        path = os.path.abspath(self.mktemp())
        target = os.path.abspath(self.mktemp())
        os.symlink(target, path)
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(path, reactor)
        self.assertIn(path, str(caught.exception))
        self.assertFalse(os.path.exists(target))

    def test_directory_cannot_be_made(self):
        """A store under a path whose parent is a file fails with StoreError naming the directory."""
        parent = os.path.abspath(self.mktemp())
        with open(parent, "w"):
            pass
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(os.path.join(parent, "sub", "keys.db"), reactor)
        self.assertIn(parent, str(caught.exception))

    def garbage_file(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)
        return path

    def test_garbage_file_refused(self):
        """A file that is not an SQLite database gives a StoreError naming the path, not an sqlite3 traceback."""
        path = self.garbage_file(b"this is not a database\n" * 300)
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(path, reactor)
        self.assertIn(path, str(caught.exception))
        self.assertIn("not a gdoiserver key store", str(caught.exception))

    def test_foreign_database_refused(self):
        """An SQLite database of another program is refused (and left unchanged)."""
        path = self.garbage_file(b"")
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE accounts (name TEXT)")
        db.commit()
        db.close()
        with open(path, "rb") as f:
            before = f.read()
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(path, reactor)
        self.assertIn(path, str(caught.exception))
        self.assertIn("not a gdoiserver key store", str(caught.exception))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)

    @defer.inlineCallbacks
    def test_corrupt_store_refused(self):
        """A store whose pages were overwritten is refused with a StoreError naming the path."""
        yield self.store.commit("g", everything())
        yield self.store.close()
        with open(self.path, "r+b") as f:
            f.seek(4096)  # page 2 (page size 4096): a table's b-tree page
            f.write(os.urandom(4096))
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path, reactor)
        self.assertIn(self.path, str(caught.exception))

    @defer.inlineCallbacks
    def test_newer_schema_refused(self):
        """A store written by a gdoiserver with another schema version is refused, saying which."""
        yield self.store.close()
        db = sqlite3.connect(self.path)
        db.execute("UPDATE schema_version SET version = 99")
        db.commit()
        db.close()
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path, reactor)
        self.assertIn("schema 99", str(caught.exception))
        self.assertIn(self.path, str(caught.exception))

    def test_second_open_refused(self):
        """While one SQLiteStore has the file open, another cannot open it (two key servers on one store
        would reuse SEQ numbers)."""
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(self.path, reactor)
        self.assertIn("in use", str(caught.exception))

    @defer.inlineCallbacks
    def test_relative_path(self):
        """A relative path is taken from the current directory when the store opens; location is absolute."""
        name = os.path.basename(self.mktemp())
        store = SQLiteStore(name, reactor)
        self.addCleanup(os.remove, os.path.abspath(name))
        self.assertEqual(store.location, os.path.abspath(name))
        yield store.close()

    @defer.inlineCallbacks
    def test_sqlite_errors_become_store_errors(self):
        """An SQLite failure during a commit comes back as a StoreError naming the path."""
        self.store._connection.close()
        error = yield self.assertFailure(self.store.commit("g", Changes(seq_high_water=1)), StoreError)
        self.assertIn(self.path, str(error))

    @defer.inlineCallbacks
    def test_too_large_number(self):
        """A number beyond SQLite's 64-bit integers fails with ValueError and leaves the store as it was."""
        yield self.assertFailure(self.store.commit("g", Changes(seq_high_water=1 << 64)), ValueError)
        self.assertEqual((yield self.store.load()), {})

    @defer.inlineCallbacks
    def test_closes_at_reactor_shutdown(self):
        """The store registers a shutdown trigger that closes it (the reactor waits for its Deferred), and
        close() removes that trigger; the worker thread stops."""
        triggers = []

        class Reactor:
            def __getattr__(self, name):
                return getattr(reactor, name)

            def addSystemEventTrigger(self, phase, event, f):
                triggers.append((phase, event, f))
                return len(triggers)

            def removeSystemEventTrigger(self, trigger):
                triggers[trigger - 1] = None

        yield self.store.close()
        store = SQLiteStore(self.path, Reactor())
        self.assertEqual(triggers[0][:2], ("during", "shutdown"))
        commit = store.commit("g", Changes(seq_high_water=3))
        yield triggers[0][2]()
        self.assertTrue(commit.called)
        self.assertEqual(triggers, [None])
        self.assertFalse(store._pool.started)
        self.assertIsNone(store._shutdown())
        self.store = SQLiteStore(self.path, reactor)
        self.assertEqual((yield self.store.load())["g"].seq_high_water, 3)


def changes_strategy():
    """Changes over small key spaces, so puts, drops and replacements meet."""
    numbers, spis = st.integers(1, 4), st.sampled_from([bytes([i]) * 16 for i in range(1, 4)])
    nodes, identities = st.integers(1, 6), st.sampled_from(["a", "b", "c"])

    @st.composite
    def build(draw):
        def unique(keys, make):
            return [make(k) for k in draw(st.lists(keys, unique=True, max_size=3))]

        gens = unique(numbers, lambda n: generation(n, teks=draw(st.integers(0, 2)),
                                                    pushed_at=draw(st.none() | st.floats(0, 1e9))))
        keks = unique(spis, lambda s: KEKRecord(s, draw(st.binary(max_size=32)), draw(st.floats(0, 1e9)),
                                                draw(st.floats(0, 1e9)), draw(st.booleans())))
        lkh = unique(nodes, lambda n: LKHNodeRecord(n, draw(st.binary(max_size=16)), draw(st.integers(0, 9))))
        members = unique(identities, lambda i: member(i, leaf=draw(st.none() | st.integers(1, 1 << 20)),
                                                      stale=draw(st.booleans()), port=draw(st.integers(0, 65535))))
        evict = draw(st.lists(identities, unique=True, max_size=2))

        def drops(keys, taken):
            return [k for k in draw(st.lists(keys, unique=True, max_size=2)) if k not in taken]

        return Changes(
            generations=gens, drop_generations=drops(numbers, {g.number for g in gens}),
            keks=keks, drop_keks=drops(spis, {k.spi for k in keks}),
            seq_high_water=draw(st.none() | st.integers(0, 1 << 40)),
            lkh_nodes=lkh, drop_lkh_nodes=drops(nodes, {n.node for n in lkh}),
            members=members, drop_members=drops(identities, {m.identity for m in members}),
            evict=evict, readmit=drops(identities, set(evict)))

    return build()


class SQLiteMatchesReferenceTests(unittest.TestCase):
    def setUp(self):
        self.store = SQLiteStore(os.path.abspath(self.mktemp()), reactor)
        self.addCleanup(self.store.close)
        self.groups = 0

    @settings(max_examples=150, deadline=None)
    @given(st.lists(changes_strategy(), min_size=1, max_size=6))
    def test_sql_matches_apply_changes(self, commits):
        """Any sequence of commits leaves the SQLite tables holding what the reference apply_changes gives,
        refused (high-water going down) commits included.  (Runs the store's thread functions directly.)"""
        self.groups += 1
        group = f"g{self.groups}"
        state = GroupState(group)
        for changes in commits:
            try:
                want = apply_changes(state, changes)
            except ValueError:
                self.assertRaises(ValueError, self.store._commit, group, changes)
                continue
            self.store._commit(group, changes)
            state = want
            self.assertEqual(self.store._load()[group], state)


def read_lines(proc, until: int, deadline: float) -> bytes:
    """The output of ``proc``'s stdout until ``until`` "seq" lines came (or EOF); fails after ``deadline``."""
    data = b""
    while data.count(b"\nseq ") + data.startswith(b"seq ") < until:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the store crash child printed too little in time: {data[-200:]!r}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data


class KillNineTests(unittest.TestCase):
    RUNS = 20
    MAX_LINES = 40
    TIMEOUT = 60.0

    @defer.inlineCallbacks
    def test_kill_9_never_loses_a_reserved_seq(self):
        """A child reserving SEQ blocks is killed with SIGKILL at random points, 20 times on one store: after
        each kill the stored high-water mark covers every SEQ it printed, every generation and member update
        it printed is there with its keys, and the next run starts above every SEQ ever printed (never reused,
        never back)."""
        seed = int.from_bytes(os.urandom(4), "big")
        rng = random.Random(seed)
        path = os.path.abspath(self.mktemp())
        child = os.path.abspath(store_crash_child.__file__)
        used: set[int] = set()
        generations: set[int] = set()
        for run in range(self.RUNS):
            block = rng.randint(1, 8)
            kill_after = rng.randint(1, self.MAX_LINES)
            where = f"seed {seed}, run {run}, block {block}, kill after {kill_after}"
            errors = open(os.path.abspath(self.mktemp()), "w+")
            self.addCleanup(errors.close)
            proc = subprocess.Popen([sys.executable, child, path, str(block), "2000"],
                                    stdout=subprocess.PIPE, stderr=errors)
            try:
                data = read_lines(proc, kill_after, time.monotonic() + self.TIMEOUT)
                proc.send_signal(signal.SIGKILL)
                proc.wait(self.TIMEOUT)
                data += proc.stdout.read()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            errors.seek(0)
            self.assertEqual(errors.read(), "", where)
            lines = data.decode().split("\n")[:-1]  # a partial last line was not printed
            self.assertTrue(lines and lines[0].startswith("start "), f"{where}: {lines[:3]}")
            start = int(lines[0].split()[1])
            self.assertGreaterEqual(start, max(used, default=0), where)
            seqs = [int(line.split()[1]) for line in lines[1:] if line.startswith("seq ")]
            self.assertTrue(seqs, where)
            self.assertEqual(seqs, list(range(start + 1, start + 1 + len(seqs))), where)
            self.assertFalse(used & set(seqs), where)
            used |= set(seqs)
            generations |= {int(line.split()[1]) for line in lines[1:] if line.startswith("gen ")}

            store = SQLiteStore(path, reactor)
            state = (yield store.load())["g"]
            yield store.close()
            self.assertGreaterEqual(state.seq_high_water, max(used), where)
            self.assertGreaterEqual(state.members["member"].last_seq_acked, max(seqs), where)
            stored = {g.number: g for g in state.generations}
            for number in generations:
                self.assertIn(number, stored, where)
                self.assertEqual(stored[number].teks, (store_crash_child.tek_for(number),), where)
            self.assertEqual(mode_of(path), 0o600)
