"""Key material of each group: TEK generations, the KEK, SPIs, and the table of groups a key server serves.

Key material is made once per generation and shared by every member that registers while it is current, never
per member (RFC 6407 section 1: one group SA for the whole group).  A generation expires with its shortest-lived
TEK; the next registration after that finds a new one.  Rekeys (GROUPKEY-PUSH) make the next generation before
that with :meth:`GroupKeys.new_generation`.  Times are the ``now`` the caller passes; randomness is ``rng(n)``.
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
    """The TEKs a group hands out between two rekeys, and the sender IDs given out under them (RFC 6054)."""

    number: int
    created_at: float
    teks: tuple[TEKKeys, ...]
    sender_ids: SenderIDAllocator | None

    @property
    def expires_at(self) -> float:
        return min(t.expires_at for t in self.teks)

    def live(self, now: float) -> bool:
        return now < self.expires_at


@attrs.define(eq=False)
class KEKKeys:
    """The current KEK: SPI (the rekey SA's cookies), key, expiry, and the sequence number of the last
    GROUPKEY-PUSH sent under it (0 before the first), which GROUPKEY-PULL message 4 carries in SEQ."""

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
    """The generations and the KEK of one group.  ``generations_made`` and ``keks_made`` count what was made."""

    def __init__(self, policy: GroupPolicy, rng, spis: SPIAllocator | None = None):
        self.policy = policy
        self.rng = rng
        self.spis = spis if spis is not None else SPIAllocator(rng)
        self.generations: list[Generation] = []
        self._kek: KEKKeys | None = None
        self.generations_made = 0
        self.keks_made = 0

    def current(self, now: float) -> Generation:
        """The newest live generation, made now if there is none."""
        self._forget_expired(now)
        if self.generations and self.generations[-1].live(now):
            return self.generations[-1]
        return self.new_generation(now)

    def new_generation(self, now: float) -> Generation:
        """Make the next generation: fresh SPIs and keys for every TEK, and fresh sender IDs."""
        teks = tuple(self._tek(p, now) for p in self.policy.teks)
        sids = SenderIDAllocator(self.policy.sender_id_bits) if self.policy.needs_sender_ids else None
        generation = Generation(self.generations_made + 1, now, teks, sids)
        self.generations_made += 1
        self.generations.append(generation)
        return generation

    def kek(self, now: float) -> KEKKeys | None:
        """The live KEK, made now if there is none; None for a group without rekeys."""
        policy = self.policy.kek
        if policy is None:
            return None
        if self._kek is None or not self._kek.live(now):
            if self._kek is not None:
                self.spis.release(self._kek.spi)
            self._kek = KEKKeys(policy, self.spis.kek_spi(), bytes(self.rng(policy.key_bits // 8)), now,
                                now + policy.lifetime)
            self.keks_made += 1
        return self._kek

    def _tek(self, policy: TEKPolicy, now: float) -> TEKKeys:
        spi = self.spis.tek_spi()
        encryption = bytes(self.rng(policy.encryption_key_size))
        integrity = bytes(self.rng(policy.integrity_key_size)) if policy.integrity_key_size else b""
        return TEKKeys(policy, spi, encryption, integrity, now + policy.lifetime)

    def _forget_expired(self, now: float) -> None:
        keep = []
        for g in self.generations:
            if g.live(now):
                keep.append(g)
            else:
                for t in g.teks:
                    self.spis.release(t.spi)
        self.generations = keep


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
