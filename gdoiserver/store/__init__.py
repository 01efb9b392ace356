"""The key store: where a key server keeps its groups' keys, SEQ high-water marks and members across restarts.

:class:`KeyStore` is the interface (every method returns a Deferred); :class:`MemoryStore` keeps state in memory
(tests), :class:`~gdoiserver.store.sqlite.SQLiteStore` in an SQLite file (the default).
"""

from gdoiserver.store.base import Changes, KeyStore, MemoryStore, StoreError, apply_changes
from gdoiserver.store.records import (
    GenerationRecord, GroupState, KEKRecord, LKHNodeRecord, MemberRecord, TEKRecord,
)

__all__ = [
    "Changes", "GenerationRecord", "GroupState", "KEKRecord", "KeyStore", "LKHNodeRecord", "MemberRecord",
    "MemoryStore", "StoreError", "TEKRecord", "apply_changes",
]
