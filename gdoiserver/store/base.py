"""The key store interface, the changes one commit makes, and an in-memory store.

A key server writes every new key, SEQ reservation and member to its store before anything carrying them leaves
(write before send), and rebuilds its groups from :meth:`KeyStore.load` after a restart.  Every method returns a
Deferred, so that a store may live elsewhere (a later issue puts one on etcd): callers assume nothing is local.

Rules every store keeps:

- one :meth:`KeyStore.commit` is one transaction: all of its changes are durable, or none;
- commits (and loads) take effect in call order;
- a group's SEQ high-water mark never goes down: a commit that would lower it fails with ValueError and changes
  nothing; an equal value is allowed;
- a commit to a group the store does not know creates it (high-water 0).
"""

import abc

import attrs
from attrs import validators as v
from twisted.internet import defer

from gdoiserver.store.records import (
    GenerationRecord, GroupState, KEKRecord, LKHNodeRecord, MemberRecord,
)


class StoreError(Exception):
    """The store cannot be used (the message names its location): bad permissions, a corrupt or foreign file,
    a closed store.  Never carries a key."""


def _items(kind):
    return attrs.field(default=(), converter=tuple, validator=v.deep_iterable(v.instance_of(kind)))


def _no_duplicates(what: str, keys) -> set:
    seen = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{what} {key!r} appears twice in one commit")
        seen.add(key)
    return seen


@attrs.frozen
class Changes:
    """What one commit does to one group; every part is optional.  Puts replace a record with the same key
    (generation number, KEK SPI, node number, member identity).  ``evict`` adds identities to the evicted set,
    ``readmit`` removes them; neither touches the member table.  A key both put and dropped, or an identity both
    evicted and readmitted, in one commit is a ValueError (the order would be ambiguous)."""

    generations: tuple[GenerationRecord, ...] = _items(GenerationRecord)
    drop_generations: tuple[int, ...] = _items(int)
    keks: tuple[KEKRecord, ...] = _items(KEKRecord)
    drop_keks: tuple[bytes, ...] = _items(bytes)
    seq_high_water: int | None = attrs.field(default=None, validator=v.optional([v.instance_of(int), v.ge(0)]))
    lkh_nodes: tuple[LKHNodeRecord, ...] = _items(LKHNodeRecord)
    drop_lkh_nodes: tuple[int, ...] = _items(int)
    members: tuple[MemberRecord, ...] = _items(MemberRecord)
    drop_members: tuple[str, ...] = _items(str)
    evict: tuple[str, ...] = _items(str)
    readmit: tuple[str, ...] = _items(str)

    def __attrs_post_init__(self):
        for what, puts, drops in (
            ("generation", [g.number for g in self.generations], self.drop_generations),
            ("KEK", [k.spi for k in self.keks], self.drop_keks),
            ("LKH node", [n.node for n in self.lkh_nodes], self.drop_lkh_nodes),
            ("member", [m.identity for m in self.members], self.drop_members),
            ("evicted identity", self.evict, self.readmit),
        ):
            both = _no_duplicates(what, puts) & _no_duplicates(what, drops)
            if both:
                raise ValueError(f"{what} {sorted(both)[0]!r} is both added and removed in one commit")

    @property
    def empty(self) -> bool:
        return self == Changes()


def apply_changes(state: GroupState, changes: Changes) -> GroupState:
    """The group state after ``changes`` (pure; the reference semantics of a commit).  ValueError if the SEQ
    high-water mark would go down."""
    high_water = state.seq_high_water
    if changes.seq_high_water is not None:
        check_high_water(state.name, high_water, changes.seq_high_water)
        high_water = changes.seq_high_water
    generations = {g.number: g for g in state.generations}
    keks = {k.spi: k for k in state.keks}
    nodes = dict(state.lkh_nodes)
    members = dict(state.members)
    for table, drops in ((generations, changes.drop_generations), (keks, changes.drop_keks),
                         (nodes, changes.drop_lkh_nodes), (members, changes.drop_members)):
        for key in drops:
            table.pop(key, None)
    generations.update((g.number, g) for g in changes.generations)
    keks.update((k.spi, k) for k in changes.keks)
    nodes.update((n.node, n) for n in changes.lkh_nodes)
    members.update((m.identity, m) for m in changes.members)
    return GroupState(
        name=state.name,
        seq_high_water=high_water,
        generations=sorted(generations.values(), key=lambda g: g.number),
        keks=sort_keks(keks.values()),
        lkh_nodes=nodes,
        members=members,
        evicted=(state.evicted | set(changes.evict)) - set(changes.readmit),
    )


def sort_keks(keks) -> tuple[KEKRecord, ...]:
    """KEKs oldest first (the order :class:`GroupState` promises)."""
    return tuple(sorted(keks, key=lambda k: (k.created_at, k.spi)))


def check_high_water(group: str, stored: int, asked: int) -> None:
    """Members drop a PUSH whose SEQ does not rise (RFC 6407 section 4), so a reserved SEQ is never given back."""
    if asked < stored:
        raise ValueError(f"group {group!r}: the SEQ high-water mark cannot go down (stored {stored}, asked {asked})")


def check_commit(group, changes) -> None:
    """The arguments of :meth:`KeyStore.commit`: ValueError or TypeError if they are not a group name and
    Changes."""
    if not isinstance(group, str) or not group:
        raise ValueError(f"a group name must be a non-empty string, not {group!r}")
    if not isinstance(changes, Changes):
        raise TypeError(f"commit takes Changes, not {type(changes).__name__}")


class KeyStore(abc.ABC):
    """Where a key server keeps its groups' keys, SEQ high-water marks and members.  ``location`` says where,
    for log lines ("memory", a file path, ...)."""

    location: str = "?"

    @abc.abstractmethod
    def load(self) -> defer.Deferred:
        """Deferred[dict[str, GroupState]]: every group the store holds, after every earlier commit."""

    @abc.abstractmethod
    def commit(self, group: str, changes: Changes) -> defer.Deferred:
        """Deferred[None] that fires once ``changes`` to ``group`` are durable (one transaction).  It fails with
        ValueError (SEQ high-water going down), or StoreError (the store is closed or broken)."""

    @abc.abstractmethod
    def close(self) -> defer.Deferred:
        """Deferred[None] that fires after every earlier commit has finished; later calls fail with StoreError."""


class MemoryStore(KeyStore):
    """A :class:`KeyStore` in memory, with Deferreds that have already fired (for tests on ``task.Clock``).

    Test helpers: :meth:`pause` holds every later call (their Deferreds wait) until :meth:`resume` runs them in
    order; :meth:`fail_commits` makes commits fail with an exception; :meth:`reopened` is a fresh store with what
    this one committed, as a restarted process would find it.  ``commits`` counts the commits applied."""

    location = "memory"

    def __init__(self, groups: dict[str, GroupState] | None = None):
        # Per group, tables changed in place: a commit costs what it changes, not the size of the group.
        self._tables: dict[str, dict] = {name: _tables(state) for name, state in (groups or {}).items()}
        self._closed = False
        self._held: list | None = None
        self._failure: Exception | None = None
        self.commits = 0

    def load(self) -> defer.Deferred:
        return self._call(self._states)

    def commit(self, group: str, changes: Changes) -> defer.Deferred:
        try:
            check_commit(group, changes)
        except (TypeError, ValueError):
            return defer.fail()
        return self._call(lambda: self._apply(group, changes))

    def close(self) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError("the memory store is closed"))
        d = self._call(lambda: None)
        self._closed = True
        return d

    def pause(self) -> None:
        """Hold later calls until :meth:`resume`."""
        if self._held is None:
            self._held = []

    def resume(self) -> None:
        """Run the held calls in order and fire their Deferreds."""
        held, self._held = self._held or [], None
        for run, d in held:
            self._fire(run, d)

    def fail_commits(self, exception: Exception | None) -> None:
        """Make every later commit fail with ``exception`` (None: succeed again)."""
        self._failure = exception

    def reopened(self) -> "MemoryStore":
        """A new store holding what this one has committed (held calls are lost, as in a crash)."""
        return MemoryStore(self._states())

    def _states(self) -> dict[str, GroupState]:
        return {name: GroupState(name, t["seq_high_water"],
                                 sorted(t["generations"].values(), key=lambda g: g.number),
                                 sort_keks(t["keks"].values()), dict(t["lkh_nodes"]), dict(t["members"]),
                                 frozenset(t["evicted"]))
                for name, t in self._tables.items()}

    def _apply(self, group: str, changes: Changes) -> None:
        """:func:`apply_changes`, in place."""
        if self._failure is not None:
            raise self._failure
        t = self._tables.get(group) or _tables(GroupState(group))
        if changes.seq_high_water is not None:
            check_high_water(group, t["seq_high_water"], changes.seq_high_water)
            t["seq_high_water"] = changes.seq_high_water
        self._tables[group] = t
        for table, drops, puts in (
            ("generations", changes.drop_generations, ((g.number, g) for g in changes.generations)),
            ("keks", changes.drop_keks, ((k.spi, k) for k in changes.keks)),
            ("lkh_nodes", changes.drop_lkh_nodes, ((n.node, n) for n in changes.lkh_nodes)),
            ("members", changes.drop_members, ((m.identity, m) for m in changes.members)),
        ):
            for key in drops:
                t[table].pop(key, None)
            t[table].update(puts)
        t["evicted"].update(changes.evict)
        t["evicted"].difference_update(changes.readmit)
        self.commits += 1

    def _call(self, run) -> defer.Deferred:
        if self._closed:
            return defer.fail(StoreError("the memory store is closed"))
        d = defer.Deferred()
        if self._held is not None:
            self._held.append((run, d))
        else:
            self._fire(run, d)
        return d

    @staticmethod
    def _fire(run, d: defer.Deferred) -> None:
        try:
            result = run()
        except Exception:
            d.errback()
        else:
            d.callback(result)


def _tables(state: GroupState) -> dict:
    """A group's state as the mutable tables MemoryStore keeps."""
    return {"seq_high_water": state.seq_high_water, "generations": {g.number: g for g in state.generations},
            "keks": {k.spi: k for k in state.keks}, "lkh_nodes": dict(state.lkh_nodes),
            "members": dict(state.members), "evicted": set(state.evicted)}
