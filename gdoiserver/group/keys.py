"""Key material of each group: TEK generations, the KEK, SPIs, and the table of groups a key server serves.

Key material is made once per generation and shared by every member that registers while it is current, never
per member (RFC 6407 section 1: one group SA for the whole group).  A generation expires with its shortest-lived
TEK.  The rekey scheduler (:mod:`gdoiserver.rekey`) makes the next generation and the next KEK before that, in two
steps so that it can write them to its store before anyone sees them: :meth:`GroupKeys.make_generation` then
:meth:`GroupKeys.install`, :meth:`GroupKeys.make_kek` then :meth:`GroupKeys.install_kek`.  A registration that
finds no live generation or KEK (no scheduler, or the scheduler is late) still gets one made on the spot; such a
key is reported to ``on_made`` so that it can be written to the store too.  Times are the ``now`` the caller
passes; randomness is ``rng(n)``.

Sender IDs belong to a member's registration, not to a generation: the group keeps one allocator, and a SID stays
valid across TEK rekeys, since a new key restarts every counter (RFC 6054 section 3).
"""

import attrs

from gdoiserver.group.policy import GroupId, GroupPolicy, KEKPolicy, TEKPolicy
from gdoiserver.group.sender_ids import SenderIDAllocator

#: ESP SPI values 1-255 are reserved by IANA and 0 is never used (RFC 4303 section 2.1).
MIN_ESP_SPI = 256
_SPI_TRIES = 64


class SPIAllocator:
    """SPIs unique among the live SAs of every group of one key server: 4-octet ESP SPIs (RFC 4303 2.1) and
    16-octet KEK SPIs, the rekey SA's cookie pair, neither cookie zero (RFC 2408 section 3.1)."""

    def __init__(self, rng):
        self.rng = rng
        self._used: set[bytes] = set()

    def _draw(self, size: int, ok) -> bytes:
        for _ in range(_SPI_TRIES):
            spi = bytes(self.rng(size))
            if ok(spi) and spi not in self._used:
                self._used.add(spi)
                return spi
        raise ValueError(f"no fresh {size}-octet SPI after {_SPI_TRIES} draws: is the random source broken?")

    def tek_spi(self) -> bytes:
        return self._draw(4, lambda s: int.from_bytes(s, "big") >= MIN_ESP_SPI)

    def kek_spi(self) -> bytes:
        return self._draw(16, lambda s: s[:8] != bytes(8) and s[8:] != bytes(8))

    def claim(self, spi: bytes) -> None:
        """Mark ``spi`` as in use (a key restored from a store)."""
        self._used.add(spi)

    def release(self, spi: bytes) -> None:
        self._used.discard(spi)

    def __contains__(self, spi: bytes) -> bool:
        return spi in self._used


@attrs.frozen
class TEKKeys:
    """One TEK of a generation: its policy, SPI, keys (never in a repr) and expiry time."""

    policy: TEKPolicy
    spi: bytes
    encryption_key: bytes = attrs.field(repr=False)
    integrity_key: bytes = attrs.field(repr=False)
    expires_at: float


@attrs.define(eq=False)
class Generation:
    """The TEKs a group hands out between two rekeys.  ``sender_ids`` is the group's allocator (RFC 6054), the
    same for every generation; ``pushed_at`` is when a GROUPKEY-PUSH first carried the generation (None: not
    pushed, or not to be pushed: the first one)."""

    number: int
    created_at: float
    teks: tuple[TEKKeys, ...]
    sender_ids: SenderIDAllocator | None
    pushed_at: float | None = None

    @property
    def expires_at(self) -> float:
        return min(t.expires_at for t in self.teks)

    def live(self, now: float) -> bool:
        return now < self.expires_at


@attrs.define(eq=False)
class KEKKeys:
    """The current KEK: SPI (the rekey SA's cookies), key, expiry, and ``seq``, the last SEQ the group may have
    used (0 before the first PUSH), which GROUPKEY-PULL message 4 carries in SEQ.  SEQ is one counter per group
    that goes on rising across KEKs (RFC 3547 section 4), so a new KEK starts from its predecessor's."""

    policy: KEKPolicy
    spi: bytes
    key: bytes = attrs.field(repr=False)
    created_at: float
    expires_at: float
    seq: int = 0

    def live(self, now: float) -> bool:
        return now < self.expires_at


def remaining(expires_at: float, now: float) -> int:
    """Whole seconds left until ``expires_at``, at least 1 (a lifetime of 0 would mean "none" on the wire)."""
    return max(1, int(expires_at - now))


class GroupKeys:
    """The generations and the KEK of one group.  ``generations_made`` and ``keks_made`` count what was made;
    ``on_made(key, replaced)``, when set, hears of each Generation or KEKKeys that :meth:`current` or :meth:`kek`
    had to make on the spot (``replaced``: the expired KEK a new one replaces, else None)."""

    def __init__(self, policy: GroupPolicy, rng, spis: SPIAllocator | None = None):
        self.policy = policy
        self.rng = rng
        self.spis = spis if spis is not None else SPIAllocator(rng)
        self.generations: list[Generation] = []
        self._kek: KEKKeys | None = None
        self.generations_made = 0
        self.keks_made = 0
        self.sender_ids = SenderIDAllocator(policy.sender_id_bits) if policy.needs_sender_ids else None
        self.on_made = None

    # --- what registrations use -------------------------------------------------------------------------------------

    def current(self, now: float) -> Generation:
        """The newest live generation, made now if there is none."""
        self._forget_expired(now)
        if self.generations and self.generations[-1].live(now):
            return self.generations[-1]
        generation = self.new_generation(now)
        self._made(generation, None)
        return generation

    def kek(self, now: float) -> KEKKeys | None:
        """The live KEK, made now if there is none; None for a group without rekeys."""
        if self.policy.kek is None:
            return None
        if self._kek is None or not self._kek.live(now):
            replaced = self.install_kek(self.make_kek(now))
            self._made(self._kek, replaced)
        return self._kek

    # --- what the rekey scheduler uses ------------------------------------------------------------------------------

    @property
    def newest(self) -> Generation | None:
        """The newest generation, live or not."""
        return self.generations[-1] if self.generations else None

    @property
    def current_kek(self) -> KEKKeys | None:
        """The KEK as it is (None before the first one), without making one."""
        return self._kek

    def make_generation(self, now: float) -> Generation:
        """The next generation, with fresh SPIs and keys for every TEK, not yet handed out (see :meth:`install`)."""
        teks = tuple(self._tek(p, now) for p in self.policy.teks)
        self.generations_made += 1
        return Generation(self.generations_made, now, teks, self.sender_ids)

    def install(self, generation: Generation) -> None:
        """Hand ``generation`` out from now on: it becomes the newest."""
        self.generations.append(generation)
        self.generations.sort(key=lambda g: g.number)

    def new_generation(self, now: float) -> Generation:
        """Make the next generation and hand it out at once."""
        generation = self.make_generation(now)
        self.install(generation)
        return generation

    def make_kek(self, now: float) -> KEKKeys:
        """A new KEK (fresh SPI and key, a lifetime from ``now``), not yet in use (see :meth:`install_kek`)."""
        policy = self.policy.kek
        if policy is None:
            raise ValueError(f"group {self.policy.name!r} has no KEK")
        self.keks_made += 1
        seq = self._kek.seq if self._kek is not None else 0
        return KEKKeys(policy, self.spis.kek_spi(), bytes(self.rng(policy.key_bits // 8)), now,
                       now + policy.lifetime, seq)

    def install_kek(self, kek: KEKKeys) -> KEKKeys | None:
        """Use ``kek`` from now on; it carries the SEQ on.  Returns the KEK it replaces (its SPI is freed)."""
        old = self._kek
        if old is not None:
            kek.seq = max(kek.seq, old.seq)
            if old.spi != kek.spi:
                self.spis.release(old.spi)
        self._kek = kek
        return old

    def drop(self, number: int) -> Generation | None:
        """Forget generation ``number`` (it expired, or was retired): its SPIs are freed."""
        for g in self.generations:
            if g.number == number:
                self.generations.remove(g)
                for t in g.teks:
                    self.spis.release(t.spi)
                return g
        return None

    def restore(self, generations, kek: KEKKeys | None, generations_made: int = 0) -> None:
        """Take up key state written before a restart: ``generations`` (any order) and the KEK.  Their SPIs are
        marked in use; numbering goes on above the highest generation."""
        for g in generations:
            for t in g.teks:
                self.spis.claim(t.spi)
            g.sender_ids = self.sender_ids
        self.generations = sorted(generations, key=lambda g: g.number)
        self.generations_made = max([generations_made, *(g.number for g in self.generations)])
        if kek is not None:
            self.spis.claim(kek.spi)
        self._kek = kek

    def tek_from_record(self, name: str, spi: bytes, encryption_key: bytes, integrity_key: bytes,
                        expires_at: float) -> TEKKeys:
        """A stored TEK under the group's TEK policy of that ``name``; KeyError if the policy has no such TEK."""
        for p in self.policy.teks:
            if p.name == name:
                return TEKKeys(p, spi, encryption_key, integrity_key, expires_at)
        raise KeyError(name)

    # --- internals --------------------------------------------------------------------------------------------------

    def _made(self, key, replaced) -> None:
        if self.on_made is not None:
            self.on_made(key, replaced)

    def _tek(self, policy: TEKPolicy, now: float) -> TEKKeys:
        spi = self.spis.tek_spi()
        encryption = bytes(self.rng(policy.encryption_key_size))
        integrity = bytes(self.rng(policy.integrity_key_size)) if policy.integrity_key_size else b""
        return TEKKeys(policy, spi, encryption, integrity, now + policy.lifetime)

    def _forget_expired(self, now: float) -> None:
        for g in [g for g in self.generations if not g.live(now)]:
            self.drop(g.number)


@attrs.define(eq=False)
class Group:
    """A group as the key server runs it: its policy and its key state."""

    policy: GroupPolicy
    keys: GroupKeys

    def __str__(self) -> str:
        return f"{self.policy.name!r} ({', '.join(map(str, self.policy.ids))})"


class GroupTable:
    """The groups of one key server, found by any of their names (group number or OID)."""

    def __init__(self, policies, rng):
        self.spis = SPIAllocator(rng)
        self.groups: tuple[Group, ...] = tuple(Group(p, GroupKeys(p, rng, self.spis)) for p in policies)
        self._by_id: dict[GroupId, Group] = {}
        for group in self.groups:
            for gid in group.policy.ids:
                if gid in self._by_id:
                    raise ValueError(f"{gid} names both {self._by_id[gid]} and {group}")
                self._by_id[gid] = group

    def lookup(self, group_id: GroupId) -> Group | None:
        return self._by_id.get(group_id)
