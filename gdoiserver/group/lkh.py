"""A Logical Key Hierarchy (LKH) for evicting group members (RFC 6407 section 5.6.3, RFC 2627), as pure code.

The tree is binary and heap-numbered: node 1 is the root, node n has the children 2n and 2n+1, and a tree of depth
d has the leaves 2**d .. 2**(d+1)-1.  Each member holds one leaf and knows the keys of every node on the way from
its leaf to the root.  The root key is the KEK key; the other node keys serve only to carry new keys to members.

Every node key has a ``version`` (RFC 3547's Key Handle), which rises each time the node gets a new key.  Node keys
are made lazily, when a member first needs one.

Evicting a member frees its leaf and gives every ancestor of it a new key, the root included (the new KEK).  Each
new key goes out wrapped with AES Key Wrap (RFC 3394) under the keys of the node's children: on the evicted path
under the child's new key, elsewhere under its current key, and only under children with members below them.  The
evicted leaf's key is never used and is replaced too, so no key the evicted member held survives in the tree.

Joining does not rekey the path: a new member gets the current keys of its ancestors (GDOI hands a new member the
group's current KEK and TEKs anyway).  The member side, :func:`member_update`, follows an eviction's updates from
its own path up to the new root.

The keys ``rng(n)`` makes never reach a repr.
"""

from typing import NamedTuple

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

ROOT = 1
#: AES key sizes a node key may have (the KEK's: RFC 6407 section 5.3, KEK_ALG_AES).
KEY_SIZES = (16, 24, 32)
#: Deepest tree: the LKH ID on the wire is 4 octets (docs/wire-format.md), and KEKPolicy allows 1..24.
MAX_DEPTH = 24


class LKHError(Exception):
    """The tree cannot do what was asked (full, a leaf not held), or a member cannot reach the new root."""


class NodeKey(NamedTuple):
    """The key of one node: ``(node, version, key)``.  The key never shows in a repr."""

    node: int
    version: int
    key: bytes

    def __repr__(self) -> str:
        return f"NodeKey(node={self.node}, version={self.version})"


class LKHUpdate(NamedTuple):
    """One entry of an LKH update: the new key of ``node`` (its ``version``), wrapped (RFC 3394) under the key of
    ``wrapping_node`` at ``wrapping_version``."""

    node: int
    version: int
    wrapping_node: int
    wrapping_version: int
    wrapped_key: bytes

    def __repr__(self) -> str:
        return (f"LKHUpdate(node={self.node}, version={self.version}, wrapping_node={self.wrapping_node}, "
                f"wrapping_version={self.wrapping_version})")


def level(node: int) -> int:
    """The depth of ``node`` below the root (the root is 0)."""
    return node.bit_length() - 1


def ancestors(node: int) -> list[int]:
    """The nodes above ``node``, its parent first, the root last."""
    out = []
    while node > ROOT:
        node //= 2
        out.append(node)
    return out


class LKHTree:
    """The key server's LKH tree of one group.

    ``nodes`` restores the node keys (node -> (key, version), e.g. from the store); then :meth:`join` with
    ``leaf=`` restores each member's leaf.  ``key_bytes`` is the size of every node key (the KEK's).
    """

    def __init__(self, depth: int, key_bytes: int, rng, nodes: dict | None = None):
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"LKH depth {depth} (1 to {MAX_DEPTH})")
        if key_bytes not in KEY_SIZES:
            raise ValueError(f"LKH node keys of {key_bytes} octets (AES: 16, 24 or 32)")
        self.depth = depth
        self.key_bytes = key_bytes
        self.rng = rng
        self._keys: dict[int, tuple[bytes, int]] = {}
        self._count: dict[int, int] = {}  # node -> occupied leaves below it (itself for a leaf)
        for node, (key, version) in (nodes or {}).items():
            if not self._in_tree(node):
                raise ValueError(f"node {node} is not in a tree of depth {depth}")
            if len(key) != key_bytes:
                raise ValueError(f"node {node} has a key of {len(key)} octets, not {key_bytes}")
            self._keys[node] = (bytes(key), int(version))

    # --- shape -------------------------------------------------------------------------------------------------

    @property
    def first_leaf(self) -> int:
        return 1 << self.depth

    @property
    def capacity(self) -> int:
        """How many members the tree holds: 2**depth."""
        return 1 << self.depth

    def _in_tree(self, node: int) -> bool:
        return ROOT <= node < 2 * self.first_leaf

    def is_leaf(self, node: int) -> bool:
        return self.first_leaf <= node < 2 * self.first_leaf

    def occupied(self, leaf: int) -> bool:
        return self.is_leaf(leaf) and self._count.get(leaf, 0) > 0

    @property
    def members(self) -> int:
        """How many leaves are held."""
        return self._count.get(ROOT, 0)

    def leaves(self) -> list[int]:
        """The held leaves, lowest first."""
        return sorted(n for n, c in self._count.items() if c and self.is_leaf(n))

    # --- keys --------------------------------------------------------------------------------------------------

    def _fresh(self, node: int) -> tuple[bytes, int]:
        """A new key for ``node``, one version above its last."""
        old = self._keys.get(node)
        entry = (bytes(self.rng(self.key_bytes)), 1 if old is None else old[1] + 1)
        if len(entry[0]) != self.key_bytes:
            raise ValueError("the random source gave a key of the wrong size")
        self._keys[node] = entry
        return entry

    def _ensure(self, node: int) -> tuple[bytes, int]:
        return self._keys.get(node) or self._fresh(node)

    def key(self, node: int) -> NodeKey:
        """The current key of ``node`` (LKHError if it has none yet)."""
        try:
            key, version = self._keys[node]
        except KeyError:
            raise LKHError(f"node {node} has no key") from None
        return NodeKey(node, version, key)

    def nodes(self) -> list[tuple[int, bytes, int]]:
        """Every node key as ``(node, key, version)`` (the fields of a store's LKHNodeRecord), by node number."""
        return [(n, k, v) for n, (k, v) in sorted(self._keys.items())]

    def set_root(self, key: bytes) -> NodeKey:
        """The KEK changed (a KEK rekey): the root takes its key, one version up."""
        if len(key) != self.key_bytes:
            raise ValueError(f"a root key of {len(key)} octets, not {self.key_bytes}")
        old = self._keys.get(ROOT)
        self._keys[ROOT] = (bytes(key), 1 if old is None else old[1] + 1)
        return self.key(ROOT)

    # --- members -----------------------------------------------------------------------------------------------

    def join(self, leaf: int | None = None) -> int:
        """Give a member a leaf: the lowest free one, with a new leaf key; or, with ``leaf``, restore a member's
        known leaf (its stored key is kept).  Missing ancestor keys are made.  Only the nodes of
        :meth:`path` change (the root's key is the KEK's: :meth:`set_root`).  LKHError when the tree is full or
        ``leaf`` is held already."""
        if leaf is None:
            leaf = self._lowest_free()
            self._fresh(leaf)
        elif not self.is_leaf(leaf):
            raise LKHError(f"node {leaf} is not a leaf of a tree of depth {self.depth}")
        elif self.occupied(leaf):
            raise LKHError(f"leaf {leaf} is held already")
        else:
            self._ensure(leaf)
        for node in (leaf, *ancestors(leaf)):
            self._count[node] = self._count.get(node, 0) + 1
            if node != ROOT:
                self._ensure(node)
        return leaf

    def _lowest_free(self) -> int:
        if self.members >= self.capacity:
            raise LKHError(f"the LKH tree is full ({self.capacity} members at depth {self.depth})")
        node = ROOT
        while not self.is_leaf(node):
            left = 2 * node
            node = left if self._count.get(left, 0) < (1 << (self.depth - level(left))) else left + 1
        return node

    def path(self, leaf: int) -> tuple[NodeKey, ...]:
        """The keys a member at ``leaf`` holds besides the KEK: its leaf's, then each ancestor's below the root."""
        if not self.occupied(leaf):
            raise LKHError(f"leaf {leaf} is not held")
        return tuple(self.key(n) for n in (leaf, *ancestors(leaf)[:-1]))

    def evict(self, leaf: int, new_root_key: bytes) -> tuple[tuple[LKHUpdate, ...], tuple[NodeKey, ...]]:
        """Free ``leaf`` and rekey its path: ``(updates, changed_nodes)``.

        ``updates`` (bottom-up) wrap each new ancestor key under every child that still has members below it;
        ``changed_nodes`` are the new node keys to store (the freed leaf's included, which nobody is given).  The
        root takes ``new_root_key``, the new KEK.  At most 2 * depth - 1 updates.
        """
        if not self.occupied(leaf):
            raise LKHError(f"leaf {leaf} is not held")
        if len(new_root_key) != self.key_bytes:
            raise ValueError(f"a root key of {len(new_root_key)} octets, not {self.key_bytes}")
        for node in (leaf, *ancestors(leaf)):
            self._count[node] -= 1
        self._fresh(leaf)
        changed = [self.key(leaf)]
        for node in ancestors(leaf):
            if node == ROOT:
                self.set_root(new_root_key)
            else:
                self._fresh(node)
            changed.append(self.key(node))
        return self.eviction_updates(leaf), tuple(changed)

    def eviction_updates(self, leaf: int) -> tuple[LKHUpdate, ...]:
        """The updates of the eviction of the free ``leaf`` from the current keys: each ancestor's key wrapped
        under each child with members below it (on the evicted path, the child's current key is its new one),
        bottom-up.  Right after :meth:`evict` (or a restart from its stored keys) this gives the very updates it
        returned: AES Key Wrap is deterministic."""
        if not self.is_leaf(leaf) or self.occupied(leaf):
            raise LKHError(f"leaf {leaf} is not a free leaf")
        updates = []
        for node in ancestors(leaf):
            new = self.key(node)
            for child in (2 * node, 2 * node + 1):
                if child == leaf or not self._count.get(child, 0):
                    continue
                wrapping = self.key(child)
                updates.append(LKHUpdate(node, new.version, child, wrapping.version,
                                         aes_key_wrap(wrapping.key, new.key)))
        return tuple(updates)


def member_update(path: tuple[NodeKey, ...], updates) -> tuple[tuple[NodeKey, ...], NodeKey]:
    """The member's side of an eviction: unwrap what its keys open, bottom-up, until the root.

    ``path`` is the member's leaf and ancestor keys (leaf first); returns its new path and the new root key (the
    new KEK).  LKHError when the updates do not reach the root from this path (the member was evicted, or holds a
    stale path) or an unwrap fails its integrity check.
    """
    known = {k.node: k for k in path}
    pending = list(updates)
    progress = True
    while pending and progress:
        progress = False
        for update in list(pending):
            wrapping = known.get(update.wrapping_node)
            if wrapping is None or wrapping.version != update.wrapping_version:
                continue
            pending.remove(update)
            current = known.get(update.node)
            if current is not None and current.version >= update.version:
                continue
            try:
                key = aes_key_unwrap(wrapping.key, update.wrapped_key)
            except (InvalidUnwrap, ValueError):
                raise LKHError(f"the key of node {update.node} does not unwrap under node "
                               f"{update.wrapping_node}") from None
            if len(key) != len(wrapping.key):
                raise LKHError(f"node {update.node} unwraps to a key of {len(key)} octets, not {len(wrapping.key)}")
            known[update.node] = NodeKey(update.node, update.version, key)
            progress = True
    root = known.get(ROOT)
    if root is None:
        raise LKHError("the LKH update does not reach the root from this member's path")
    return tuple(known[k.node] for k in path), root
