"""The key server's table of a group's registered members, for rekey delivery and acknowledgements (pure).

Each member is known by its Phase 1 identity as text (:func:`gdoiserver.group.policy.identity_text`); a new
registration under the same identity replaces the entry and keeps its LKH leaf.  Unicast rekeys go to the address
and port the registration came from.  When the group asks for acknowledgements (RFC 8263), a member that
acknowledged none of the last ``stale_after`` rekeys sent to it is marked stale: it stays in the table (it may
only be slow, or behind a lossy link), is shown as such, and a fresh registration or an acknowledgement clears the
mark.  Evicted identities are kept in their own set until an operator readmits them.
"""

import attrs

from gdoiserver.store.records import MemberRecord

@attrs.define(eq=False)
class RegisteredMember:
    """One member as the rekey service sees it.  ``last_seq_sent`` is the SEQ of the last rekey sent to it (not
    stored: the store keeps what an acknowledgement proved)."""

    identity: str
    id_type: int
    id_data: bytes
    address: str
    port: int
    registered_at: float
    leaf: int | None = None
    ack_key: bytes = attrs.field(default=b"", repr=False)
    sender_ids: tuple[int, ...] = ()
    last_seq_sent: int = 0
    last_seq_acked: int = 0
    missed: int = 0
    stale: bool = False

    @property
    def peer(self) -> tuple[str, int]:
        return self.address, self.port

    def to_record(self) -> MemberRecord:
        """The store's record of this member."""
        values = dict(identity=self.identity, id_type=self.id_type, id_data=self.id_data, address=self.address,
                      port=self.port, registered_at=float(self.registered_at), leaf=self.leaf,
                      ack_key=self.ack_key, last_seq_acked=self.last_seq_acked, missed=self.missed,
                      stale=self.stale, sender_ids=tuple(self.sender_ids))
        return MemberRecord(**values)

    @classmethod
    def from_record(cls, record: MemberRecord) -> "RegisteredMember":
        """A member as the store held it."""
        return cls(record.identity, record.id_type, record.id_data, record.address, record.port,
                   record.registered_at, record.leaf, record.ack_key, tuple(record.sender_ids),
                   last_seq_sent=record.last_seq_acked, last_seq_acked=record.last_seq_acked,
                   missed=record.missed, stale=record.stale)

    def summary(self) -> dict:
        """What an operator may see: everything but the acknowledgement key."""
        return {"identity": self.identity, "address": self.address, "port": self.port,
                "registered_at": self.registered_at, "leaf": self.leaf, "sender_ids": list(self.sender_ids),
                "last_seq_sent": self.last_seq_sent, "last_seq_acked": self.last_seq_acked, "missed": self.missed,
                "stale": self.stale}


class MemberTable:
    """The members of one group, found by identity or by the address their registration came from."""

    def __init__(self, stale_after: int = 3):
        if stale_after < 1:
            raise ValueError("stale_after must be at least 1")
        self.stale_after = stale_after
        self.members: dict[str, RegisteredMember] = {}
        self.evicted: set[str] = set()
        self._by_peer: dict[tuple[str, int], str] = {}
        self._by_address: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, identity: str) -> bool:
        return identity in self.members

    def get(self, identity: str) -> RegisteredMember | None:
        return self.members.get(identity)

    def by_peer(self, peer: tuple[str, int]) -> RegisteredMember | None:
        """The member whose registration came from ``peer`` (address, port)."""
        identity = self._by_peer.get((peer[0], peer[1]))
        return self.members.get(identity) if identity is not None else None

    def from_peer(self, peer: tuple[str, int]) -> list[RegisteredMember]:
        """The member registered from ``peer`` first, then the others at the same address (a NAT may have given
        it another port since)."""
        exact = self.by_peer(peer)
        others = [self.members[i] for i in sorted(self._by_address.get(peer[0], ()))
                  if exact is None or i != exact.identity]
        return ([exact] if exact is not None else []) + others

    def _index(self, member: RegisteredMember) -> None:
        self._by_peer[member.peer] = member.identity
        self._by_address.setdefault(member.address, set()).add(member.identity)

    def _unindex(self, member: RegisteredMember) -> None:
        if self._by_peer.get(member.peer) == member.identity:
            del self._by_peer[member.peer]
        same = self._by_address.get(member.address)
        if same is not None:
            same.discard(member.identity)
            if not same:
                del self._by_address[member.address]

    # --- changes ------------------------------------------------------------------------------------------------

    def register(self, member: RegisteredMember) -> RegisteredMember:
        """Add or replace a member after a registration: the stale mark and the missed count start over, and a
        member registering again keeps its leaf unless the new entry names one."""
        old = self.members.get(member.identity)
        if old is not None:
            self._unindex(old)
            if member.leaf is None:
                member.leaf = old.leaf
            member.last_seq_sent = max(member.last_seq_sent, old.last_seq_sent)
            member.last_seq_acked = max(member.last_seq_acked, old.last_seq_acked)
        member.missed, member.stale = 0, False
        self.members[member.identity] = member
        self._index(member)
        return member

    def restore(self, member: RegisteredMember) -> None:
        """Take up a member as the store held it, marks included."""
        old = self.members.get(member.identity)
        if old is not None:
            self._unindex(old)
        self.members[member.identity] = member
        self._index(member)

    def remove(self, identity: str) -> RegisteredMember | None:
        member = self.members.pop(identity, None)
        if member is not None:
            self._unindex(member)
        return member

    def evict(self, identity: str) -> RegisteredMember | None:
        """Refuse ``identity`` from now on; its entry (if any) leaves the table and is returned."""
        self.evicted.add(identity)
        return self.remove(identity)

    def readmit(self, identity: str) -> bool:
        """Let ``identity`` register again; False if it was not evicted."""
        if identity not in self.evicted:
            return False
        self.evicted.discard(identity)
        return True

    def is_evicted(self, identity: str) -> bool:
        return identity in self.evicted

    # --- rekeys and acknowledgements -----------------------------------------------------------------------------

    def targets(self) -> dict[str, tuple[str, int]]:
        """identity -> (address, port) of every member a rekey goes to."""
        return {m.identity: m.peer for m in self.members.values() if m.identity not in self.evicted}

    def sent(self, seq: int, identities) -> None:
        """The rekey ``seq`` went to ``identities``."""
        for identity in identities:
            member = self.members.get(identity)
            if member is not None:
                member.last_seq_sent = max(member.last_seq_sent, seq)

    def acked(self, identity: str, seq: int) -> RegisteredMember | None:
        """``identity`` acknowledged rekey ``seq``: the member, if this is news (a SEQ sent to it and above what
        it acknowledged before); its missed count and stale mark clear.  None otherwise."""
        member = self.members.get(identity)
        if member is None or not member.last_seq_acked < seq <= member.last_seq_sent:
            return None
        member.last_seq_acked = seq
        member.missed, member.stale = 0, False
        return member

    def closed(self, seq: int, identities) -> list[RegisteredMember]:
        """The acknowledgement window of rekey ``seq`` (sent to ``identities``) closed: each of them that did not
        acknowledge it missed one more; those that just reached ``stale_after`` are marked stale and returned."""
        became_stale = []
        for identity in identities:
            member = self.members.get(identity)
            if member is None or member.last_seq_acked >= seq or member.last_seq_sent < seq:
                continue
            member.missed += 1
            if member.missed >= self.stale_after and not member.stale:
                member.stale = True
                became_stale.append(member)
        return became_stale

    def summary(self) -> list[dict]:
        """Every member as an operator may see it, by identity."""
        return [self.members[i].summary() for i in sorted(self.members)]
