"""The records a key store holds for each group: TEK generations, KEKs, LKH node keys, members, and the SEQ
high-water mark.

Plain frozen values with no behaviour, so that any store (memory, SQLite, later a replicated one) can hold them
and the rekey code can rebuild its state from them.  Secrets (keys) never appear in a ``repr``.  Times are the
floats of the injected clock (seconds since the epoch).
"""

import attrs
from attrs import validators as v

_bytes = v.instance_of(bytes)
_int = v.instance_of(int)
_float = v.instance_of((int, float))
_str = v.instance_of(str)
_bool = v.instance_of(bool)
_non_negative = [_int, v.ge(0)]


def _secret():
    return attrs.field(repr=False, validator=_bytes)


@attrs.frozen
class TEKRecord:
    """One TEK of a generation: the name of its TEK policy, its 4-octet ESP SPI and its keys."""

    name: str = attrs.field(validator=_str)
    spi: bytes = attrs.field(validator=_bytes)
    encryption_key: bytes = _secret()
    integrity_key: bytes = _secret()
    created_at: float = attrs.field(validator=_float)
    expires_at: float = attrs.field(validator=_float)


@attrs.frozen
class GenerationRecord:
    """The TEKs a group hands out between two rekeys.  ``number`` rises by one per generation; ``pushed_at`` is
    when a GROUPKEY-PUSH first carried it (None: handed out by registration only, or not yet pushed)."""

    number: int = attrs.field(validator=[_int, v.ge(1)])
    created_at: float = attrs.field(validator=_float)
    teks: tuple[TEKRecord, ...] = attrs.field(
        converter=tuple, validator=v.deep_iterable(v.instance_of(TEKRecord)))
    pushed_at: float | None = attrs.field(default=None, validator=v.optional(_float))


@attrs.frozen
class KEKRecord:
    """A KEK (the rekey SA): its 16-octet SPI (the PUSH header's cookie pair) and key.  ``retired``: a newer KEK
    replaced it; it is kept until it expires so that late retransmissions can still be told apart."""

    spi: bytes = attrs.field(validator=_bytes)
    key: bytes = _secret()
    created_at: float = attrs.field(validator=_float)
    expires_at: float = attrs.field(validator=_float)
    retired: bool = attrs.field(default=False, validator=_bool)


@attrs.frozen
class LKHNodeRecord:
    """The key of one node of a group's LKH tree (RFC 6407 section 5.6.3), heap-numbered: node 1 is the root,
    node n has children 2n and 2n+1.  ``version`` rises each time the node gets a new key."""

    node: int = attrs.field(validator=[_int, v.ge(1)])
    key: bytes = _secret()
    version: int = attrs.field(validator=_non_negative)


@attrs.frozen
class MemberRecord:
    """A registered group member, keyed by ``identity`` (its Phase 1 identity as text).  ``id_type`` and
    ``id_data`` are its ID payload's; ``address``/``port`` where its registration came from (unicast PUSH goes
    there); ``leaf`` its LKH leaf; ``ack_key`` the key its RFC 8263 acknowledgements are checked with."""

    identity: str = attrs.field(validator=_str)
    id_type: int = attrs.field(validator=_non_negative)
    id_data: bytes = attrs.field(validator=_bytes)
    address: str = attrs.field(validator=_str)
    port: int = attrs.field(validator=[_int, v.ge(0), v.le(65535)])
    registered_at: float = attrs.field(validator=_float)
    leaf: int | None = attrs.field(default=None, validator=v.optional([_int, v.ge(1)]))
    ack_key: bytes = attrs.field(default=b"", repr=False, validator=_bytes)
    last_seq_acked: int = attrs.field(default=0, validator=_non_negative)
    missed: int = attrs.field(default=0, validator=_non_negative)
    stale: bool = attrs.field(default=False, validator=_bool)
    #: The RFC 6054 sender IDs its registration holds (kept across restarts, so no other member gets them).
    sender_ids: tuple[int, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class GroupState:
    """Everything a store holds for one group.  ``generations`` in ascending number; ``keks`` oldest first (by
    ``created_at``, then SPI); ``evicted``: identities refused at registration until readmitted.  A value handed
    out by :meth:`KeyStore.load`: changing its dicts changes nothing in the store."""

    name: str = attrs.field(validator=_str)
    seq_high_water: int = attrs.field(default=0, validator=_non_negative)
    generations: tuple[GenerationRecord, ...] = attrs.field(default=(), converter=tuple)
    keks: tuple[KEKRecord, ...] = attrs.field(default=(), converter=tuple)
    lkh_nodes: dict[int, LKHNodeRecord] = attrs.field(factory=dict, converter=dict)
    members: dict[str, MemberRecord] = attrs.field(factory=dict, converter=dict)
    evicted: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
