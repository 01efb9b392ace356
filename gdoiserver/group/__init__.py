"""Group policy and group key state for the key server (GCKS): who may join a group, what it receives (RFC 6407
section 1), and the key material of each group generation (:mod:`.keys`, :mod:`.sender_ids`).

Sans-IO: nothing here reads a clock or the network; time comes in as ``now`` and randomness as ``rng(n)``.
"""
