"""The child process of the store's kill -9 test (tests/test_store.py): a key server's SEQ bookkeeping, alone.

Usage: python store_crash_child.py PATH SEQ_BLOCK LIMIT

It opens the SQLite store at PATH, prints "start H" with the stored SEQ high-water mark H of group "g", and then
uses SEQ numbers H+1, H+2, ... (at most LIMIT): before it uses a SEQ beyond the reserved mark it commits a new mark
SEQ_BLOCK ahead, together with a generation numbered by that SEQ (keys from :func:`tek_for`), and prints
"gen N" once that commit fired; then it commits the member record of the SEQ's use and prints "seq N".  A line is
printed only after the commit it reports fired, so every printed line must survive a kill -9.
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from gdoiserver.store import Changes, GenerationRecord, MemberRecord, TEKRecord  # noqa: E402
from gdoiserver.store.sqlite import SQLiteStore  # noqa: E402

GROUP = "g"


def tek_for(number: int) -> TEKRecord:
    """The TEK of generation ``number``: keys derived from the number, so the parent can check them."""
    digest = hashlib.sha256(b"generation %d" % number).digest()
    return TEKRecord("tek", digest[:4], digest[4:20], digest[20:32], float(number), float(number) + 3600.0)


def member_for(seq: int) -> MemberRecord:
    """The member record written when ``seq`` is used (its last acknowledged SEQ is that SEQ)."""
    return MemberRecord("member", 1, b"\x7f\x00\x00\x01", "127.0.0.1", 848, 0.0, leaf=1 << 4,
                        ack_key=b"a" * 20, last_seq_acked=seq)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@defer.inlineCallbacks
def main(reactor, path, seq_block, limit):
    store = SQLiteStore(path, reactor)
    groups = yield store.load()
    high = groups[GROUP].seq_high_water if GROUP in groups else 0
    say(f"start {high}")
    seq = high
    for _ in range(int(limit)):
        seq += 1
        if seq > high:
            high = seq + int(seq_block) - 1
            yield store.commit(GROUP, Changes(seq_high_water=high, generations=[
                GenerationRecord(seq, float(seq), [tek_for(seq)])]))
            say(f"gen {seq}")
        yield store.commit(GROUP, Changes(members=[member_for(seq)]))
        say(f"seq {seq}")
    yield store.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
