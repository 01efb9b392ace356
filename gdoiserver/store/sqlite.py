"""The key store in an SQLite file (the standard library's sqlite3), worked on one dedicated thread.

Durability: WAL journal with ``synchronous=FULL``, so a commit's Deferred fires only after its transaction reached
the disk, and a kill -9 at any point leaves every fired commit in the file.  The file holds keys: it (and its
directory, when the store makes it) is created with mode 0600 (0700) before SQLite opens it, and an existing file
that group or others may access is refused.  The connection runs in exclusive locking mode, so a second process
cannot open the same store (two key servers sharing SEQ numbers would reuse them).  ``secure_delete`` overwrites
dropped keys.

Opening is synchronous (at startup, before the reactor runs, so that a bad file stops the service with one line);
every later call runs on the store's own thread and returns a Deferred.
"""

import os
import sqlite3
import stat

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from gdoiserver.store.base import Changes, KeyStore, StoreError, check_commit, check_high_water, sort_keks
from gdoiserver.store.records import (
    GenerationRecord, GroupState, KEKRecord, LKHNodeRecord, MemberRecord, TEKRecord,
)

#: ``PRAGMA application_id`` of a gdoiserver store: "GDOI" in ASCII.
APPLICATION_ID = 0x47444F49
SCHEMA_VERSION = 1
#: How long opening waits for another process's lock before calling the store busy (seconds).
LOCK_TIMEOUT = 1.0
_SIDE_FILES = ("-wal", "-shm", "-journal")

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;
CREATE TABLE groups (
    name TEXT PRIMARY KEY, seq_high_water INTEGER NOT NULL) STRICT;
CREATE TABLE generations (
    grp TEXT NOT NULL, number INTEGER NOT NULL, created_at REAL NOT NULL, pushed_at REAL,
    PRIMARY KEY (grp, number)) STRICT;
CREATE TABLE teks (
    grp TEXT NOT NULL, generation INTEGER NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL,
    spi BLOB NOT NULL, encryption_key BLOB NOT NULL, integrity_key BLOB NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (grp, generation, position)) STRICT;
CREATE TABLE keks (
    grp TEXT NOT NULL, spi BLOB NOT NULL, key BLOB NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL, retired INTEGER NOT NULL,
    PRIMARY KEY (grp, spi)) STRICT;
CREATE TABLE lkh_nodes (
    grp TEXT NOT NULL, node INTEGER NOT NULL, key BLOB NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (grp, node)) STRICT;
CREATE TABLE members (
    grp TEXT NOT NULL, identity TEXT NOT NULL, id_type INTEGER NOT NULL, id_data BLOB NOT NULL,
    address TEXT NOT NULL, port INTEGER NOT NULL, registered_at REAL NOT NULL, leaf INTEGER,
    ack_key BLOB NOT NULL, last_seq_acked INTEGER NOT NULL, missed INTEGER NOT NULL, stale INTEGER NOT NULL,
    sender_ids BLOB NOT NULL,
    PRIMARY KEY (grp, identity)) STRICT;
CREATE TABLE evicted (
    grp TEXT NOT NULL, identity TEXT NOT NULL,
    PRIMARY KEY (grp, identity)) STRICT;
"""


def _sender_ids(blob: bytes) -> tuple[int, ...]:
    """Sender IDs stored as 4-octet big-endian numbers (SID_VALUE is 4 octets, RFC 6054)."""
    return tuple(int.from_bytes(blob[i:i + 4], "big") for i in range(0, len(blob) - len(blob) % 4, 4))


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directories(directory: str) -> None:
    """Create the missing directories down to ``directory`` with mode 0700."""
    missing = []
    while directory and not os.path.exists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for made in reversed(missing):
        try:
            os.mkdir(made, 0o700)
            os.chmod(made, 0o700)  # whatever the umask
        except OSError as e:
            raise StoreError(f"{made}: cannot create the key store's directory: {e.strerror}") from None


def _refuse_loose(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"{path}: cannot read the key store: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: the key store must be a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise StoreError(f"{path}: the key store holds keys but has mode {mode:04o}; group and others must have "
                         f"no access (chmod 600 {path})")


def prepare_file(path: str) -> None:
    """Create the store file (mode 0600, directories 0700) if it is missing; refuse it, or a WAL/SHM/journal
    file beside it, if group or others may access it."""
    directory = os.path.dirname(path)
    _make_directories(directory)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"{path}: cannot create the key store: {e.strerror}") from None
    else:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(directory)
    if not os.path.exists(path):
        raise StoreError(f"{path}: a symbolic link to a missing file; give the key store's real path")
    for name in (path, *(path + side for side in _SIDE_FILES)):
        _refuse_loose(name)


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:  # some errors (a full disk) have already rolled it back
        connection.execute("ROLLBACK")


def _setup(connection: sqlite3.Connection, path: str) -> None:
    """Check (or, for an empty file, create) the schema and set the pragmas; StoreError if the file is not ours."""
    if connection.execute("PRAGMA locking_mode=EXCLUSIVE").fetchone()[0] != "exclusive":
        raise StoreError(f"{path}: SQLite refused exclusive locking")
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    check = connection.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        raise StoreError(f"{path}: the key store is corrupt ({check[0][0]})")
    fresh = application_id == 0 and tables == 0
    if not fresh and application_id != APPLICATION_ID:
        raise StoreError(f"{path}: an SQLite database but not a gdoiserver key store")
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"{path}: SQLite cannot use a WAL journal for the key store (journal mode {mode})")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA secure_delete=ON")
    connection.execute("BEGIN IMMEDIATE")  # takes the write lock, held until close (exclusive locking mode)
    try:
        if fresh:
            for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT first
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
        else:
            rows = connection.execute("SELECT version FROM schema_version").fetchall()
            if rows != [(SCHEMA_VERSION,)]:
                found = rows[0][0] if len(rows) == 1 else f"{len(rows)} versions"
                raise StoreError(f"{path}: key store schema {found}, this gdoiserver knows {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def open_database(path: str) -> sqlite3.Connection:
    """Open (or create) the store at ``path``; every problem is a StoreError naming it."""
    path = os.path.abspath(path)
    prepare_file(path)
    try:
        connection = sqlite3.connect(path, timeout=LOCK_TIMEOUT, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the key store: {e}") from None
    try:
        _setup(connection, path)
    except sqlite3.OperationalError as e:
        connection.close()
        if "locked" in str(e) or "busy" in str(e):
            raise StoreError(f"{path}: the key store is in use (locked by another process, or another store "
                             f"object in this one)") from None
        raise StoreError(f"{path}: cannot use the key store: {e}") from None
    except sqlite3.DatabaseError as e:
        connection.close()
        raise StoreError(f"{path}: not a gdoiserver key store (not an SQLite database, or corrupt: {e})") from None
    except BaseException:
        connection.close()
        raise
    return connection


class SQLiteStore(KeyStore):
    """A :class:`~gdoiserver.store.base.KeyStore` in the SQLite file at ``path`` (relative to the current
    directory).  Raises StoreError at once if the file cannot be used.  Its thread stops on :meth:`close`, or
    when ``reactor`` shuts down."""

    def __init__(self, path: str, reactor):
        self.path = self.location = os.path.abspath(path)
        self._reactor = reactor
        self._connection = open_database(self.path)
        self._closed = False
        self._pool = ThreadPool(1, 1, name=f"gdoiserver-store {self.path}")
        self._pool.start()
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._shutdown)
        #: Calls not yet handed to the store's thread, in call order: (work, args, Deferred); work None: a commit.
        self._queue: list = []
        self._busy = False

    def load(self) -> defer.Deferred:
        return self._run(self._load)

    def commit(self, group: str, changes: Changes) -> defer.Deferred:
        """Commits made while the store's thread is busy go together in its next transaction (one fsync for
        all), each in a savepoint of its own: one that fails changes nothing, the others still commit."""
        try:
            check_commit(group, changes)
        except (TypeError, ValueError):
            return defer.fail()
        return self._run(None, group, changes)

    def close(self) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError(f"{self.path}: the key store is closed"))
        self._reactor.removeSystemEventTrigger(self._trigger)
        d = self._run(self._connection.close)  # after every earlier call
        self._closed = True

        def stopped(result):
            self._pool.stop()  # its one thread is idle now: it ends at once
            return result

        return d.addBoth(stopped).addCallback(lambda _: None)

    def _shutdown(self):
        if not self._closed:
            return self.close()

    def _run(self, work, *args) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError(f"{self.path}: the key store is closed"))
        d = defer.Deferred()
        self._queue.append((work, args, d))
        if not self._busy:
            self._next()
        return d

    def _next(self, _=None) -> None:
        """Hand the store's thread the next call, or every commit queued in a row as one transaction."""
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        if self._queue[0][0] is None:
            n = next((i for i, (work, _, _) in enumerate(self._queue) if work is not None), len(self._queue))
            batch, self._queue = self._queue[:n], self._queue[n:]
            done = threads.deferToThreadPool(self._reactor, self._pool, self._guarded, self._commit_batch,
                                             [args for _, args, _ in batch])

            def fire(outcomes):
                for (_, _, d), error in zip(batch, outcomes):
                    d.errback(error) if error is not None else d.callback(None)

            done.addCallbacks(fire, lambda f: [d.errback(f) for _, _, d in batch])
        else:
            (work, args, d), self._queue = self._queue[0], self._queue[1:]
            done = threads.deferToThreadPool(self._reactor, self._pool, self._guarded, work, *args)
            done.addCallbacks(d.callback, d.errback)
        done.addBoth(self._next)

    def _guarded(self, work, *args):
        try:
            return work(*args)
        except OverflowError as e:  # an int beyond SQLite's 64 bits
            raise ValueError(f"{self.path}: a number is too large for the key store ({e})") from None
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from None

    # On the store's thread from here on.

    def _load(self) -> dict[str, GroupState]:
        c = self._connection
        c.execute("BEGIN")
        try:
            groups = {name: {"seq_high_water": hw, "generations": [], "keks": [], "lkh_nodes": {}, "members": {},
                             "evicted": set()}
                      for name, hw in c.execute("SELECT name, seq_high_water FROM groups")}
            teks: dict[tuple[str, int], list[TEKRecord]] = {}
            for grp, generation, *fields in c.execute(
                    "SELECT grp, generation, name, spi, encryption_key, integrity_key, created_at, expires_at "
                    "FROM teks ORDER BY grp, generation, position"):
                teks.setdefault((grp, generation), []).append(TEKRecord(*fields))
            for grp, number, created_at, pushed_at in c.execute(
                    "SELECT grp, number, created_at, pushed_at FROM generations ORDER BY grp, number"):
                groups[grp]["generations"].append(
                    GenerationRecord(number, created_at, teks.get((grp, number), ()), pushed_at))
            for grp, spi, key, created_at, expires_at, retired in c.execute(
                    "SELECT grp, spi, key, created_at, expires_at, retired FROM keks"):
                groups[grp]["keks"].append(KEKRecord(spi, key, created_at, expires_at, bool(retired)))
            for grp, node, key, version in c.execute("SELECT grp, node, key, version FROM lkh_nodes"):
                groups[grp]["lkh_nodes"][node] = LKHNodeRecord(node, key, version)
            for grp, identity, *fields, stale, sids in c.execute(
                    "SELECT grp, identity, id_type, id_data, address, port, registered_at, leaf, ack_key, "
                    "last_seq_acked, missed, stale, sender_ids FROM members"):
                groups[grp]["members"][identity] = MemberRecord(identity, *fields, bool(stale), _sender_ids(sids))
            for grp, identity in c.execute("SELECT grp, identity FROM evicted"):
                groups[grp]["evicted"].add(identity)
        finally:
            _rollback(c)  # a read-only transaction: nothing to keep
        return {name: GroupState(name, seq_high_water=g["seq_high_water"], generations=g["generations"],
                                 keks=sort_keks(g["keks"]), lkh_nodes=g["lkh_nodes"], members=g["members"],
                                 evicted=g["evicted"])
                for name, g in groups.items()}

    def _commit(self, group: str, changes: Changes) -> None:
        (error,) = self._commit_batch([(group, changes)])
        if error is not None:
            raise error

    def _commit_batch(self, batch) -> list:
        """Each (group, changes) of ``batch`` in a savepoint of one transaction; per commit None or the ValueError
        that undid it.  An SQLite error fails the whole batch."""
        c = self._connection
        outcomes = []
        c.execute("BEGIN IMMEDIATE")
        try:
            for group, changes in batch:
                c.execute("SAVEPOINT one_commit")
                try:
                    self._write(c, group, changes)
                except (ValueError, OverflowError) as e:
                    c.execute("ROLLBACK TO one_commit")
                    outcomes.append(e if isinstance(e, ValueError) else
                                    ValueError(f"{self.path}: a number is too large for the key store ({e})"))
                else:
                    outcomes.append(None)
                c.execute("RELEASE one_commit")
        except BaseException:
            _rollback(c)
            raise
        c.execute("COMMIT")
        return outcomes

    @staticmethod
    def _write(c: sqlite3.Connection, group: str, changes: Changes) -> None:
        c.execute("INSERT OR IGNORE INTO groups VALUES (?, 0)", (group,))
        if changes.seq_high_water is not None:
            (stored,) = c.execute("SELECT seq_high_water FROM groups WHERE name = ?", (group,)).fetchone()
            check_high_water(group, stored, changes.seq_high_water)
            c.execute("UPDATE groups SET seq_high_water = ? WHERE name = ?", (changes.seq_high_water, group))
        for number in (*changes.drop_generations, *(g.number for g in changes.generations)):
            c.execute("DELETE FROM generations WHERE grp = ? AND number = ?", (group, number))
            c.execute("DELETE FROM teks WHERE grp = ? AND generation = ?", (group, number))
        for g in changes.generations:
            c.execute("INSERT INTO generations VALUES (?, ?, ?, ?)", (group, g.number, g.created_at, g.pushed_at))
            c.executemany("INSERT INTO teks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                (group, g.number, position, t.name, t.spi, t.encryption_key, t.integrity_key, t.created_at,
                 t.expires_at) for position, t in enumerate(g.teks)])
        c.executemany("DELETE FROM keks WHERE grp = ? AND spi = ?", [(group, spi) for spi in changes.drop_keks])
        c.executemany("INSERT OR REPLACE INTO keks VALUES (?, ?, ?, ?, ?, ?)", [
            (group, k.spi, k.key, k.created_at, k.expires_at, int(k.retired)) for k in changes.keks])
        c.executemany("DELETE FROM lkh_nodes WHERE grp = ? AND node = ?",
                      [(group, node) for node in changes.drop_lkh_nodes])
        c.executemany("INSERT OR REPLACE INTO lkh_nodes VALUES (?, ?, ?, ?)",
                      [(group, n.node, n.key, n.version) for n in changes.lkh_nodes])
        c.executemany("DELETE FROM members WHERE grp = ? AND identity = ?",
                      [(group, identity) for identity in changes.drop_members])
        c.executemany("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            (group, m.identity, m.id_type, m.id_data, m.address, m.port, m.registered_at, m.leaf, m.ack_key,
             m.last_seq_acked, m.missed, int(m.stale), b"".join(s.to_bytes(4, "big") for s in m.sender_ids))
            for m in changes.members])
        c.executemany("INSERT OR IGNORE INTO evicted VALUES (?, ?)", [(group, i) for i in changes.evict])
        c.executemany("DELETE FROM evicted WHERE grp = ? AND identity = ?", [(group, i) for i in changes.readmit])
