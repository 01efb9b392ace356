"""Sender IDs for counter-mode TEKs (RFC 6054).

AES-GCM and AES-CTR build each packet's IV from a counter.  When several members send under one group key, two of
them must never use the same IV, so each sender puts its own sender ID (SID) in the IV's leading bits (RFC 6054
section 3).  The key server hands the SIDs out in GROUPKEY-PULL message 4 (a SID key packet in KD, RFC 6054
section 5), as many as the member asked for in its GAP SENDER_ID_REQUEST.

The rules kept here: a SID is given to one registration only and never again for the life of the TEKs it serves
(a member that registers again gets new ones, since it may have lost its counters); SIDs fit the group's
NUMBER_OF_SID_BITS; SID 0 is not handed out (our choice: it stays free for the key server itself, which RFC 6054
section 3 lets send with a SID of its own).  When the space runs out the key server must rekey the group with new
TEKs, which starts a new allocator.
"""

import attrs


class SenderIDsExhausted(Exception):
    """No room for the SIDs asked for; nothing was allocated."""


@attrs.define(eq=False)
class SenderIDAllocator:
    """The SIDs of one TEK generation: each value in 1 .. 2**bits - 1 is allocated at most once."""

    bits: int
    _next: int = attrs.field(default=1, init=False)
    _owners: dict[int, str] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self):
        if not 1 <= self.bits <= 32:
            raise ValueError(f"{self.bits} SID bits (1 to 32)")

    @property
    def capacity(self) -> int:
        """How many SIDs this generation can ever hand out."""
        return (1 << self.bits) - 1

    @property
    def remaining(self) -> int:
        return self.capacity - len(self._owners)

    def allocate(self, owner: str, count: int) -> tuple[int, ...]:
        """``count`` fresh SIDs for ``owner`` (a name for logs); SenderIDsExhausted when they do not all fit."""
        if count < 1:
            raise ValueError("allocate at least one SID")
        if count > self.remaining:
            raise SenderIDsExhausted(f"{count} sender IDs asked, {self.remaining} of {self.capacity} left")
        first = self._next
        sids = tuple(range(first, first + count))
        self._next = first + count
        for sid in sids:
            self._owners[sid] = owner
        return sids

    def owner(self, sid: int) -> str | None:
        """Whom ``sid`` was given to, or None if it was not given."""
        return self._owners.get(sid)
