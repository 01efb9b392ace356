"""The cost of evicting one member with LKH (RFC 6407 section 5.6.3), against unicast re-KEK.

Run:  python benchmarks/eviction.py [--members 1000 10000 100000] [--repeats 7] [--key-bits 128]
Prints one JSON object.  For each group size: the tree's depth (the default 16, or more when the group needs it),
the wrapped keys and octets of the one eviction GROUPKEY-PUSH (RSA-2048, SHA-256 signature), the key server's time
to rekey the path and build and sign it, and a member's time to verify it and unwrap its way to the new KEK: the
evicted member's sibling, which unwraps one key per level (the worst case), and the last member to join, the
farthest from it (members fill the tree from its first leaf, so it shares the evicted member's upper
ancestors).  ``unicast_rekek`` is the alternative: one KEK rekey PUSH per remaining member, each signed (timed
on a sample and scaled to the group).
"""

import argparse
import ipaddress
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from gdoiserver.codec.attributes import Attribute  # noqa: E402
from gdoiserver.codec.gdoi import (  # noqa: E402
    KD, GroupSA, KEKAlgorithm, KEKKeyAttr, KeyPacket, KeyPacketType, Selector, SigHashAlgorithm,
)
from gdoiserver.doi.gdoi import push  # noqa: E402
from gdoiserver.doi.gdoi.download import kek_payload  # noqa: E402
from gdoiserver.doi.gdoi.registration import KEKInfo  # noqa: E402
from gdoiserver.group.keys import KEKKeys  # noqa: E402
from gdoiserver.group.lkh import LKHTree, member_update  # noqa: E402
from gdoiserver.group.policy import KEKPolicy, RekeyTransport  # noqa: E402

DEFAULT_DEPTH = 16
REKEY = RekeyTransport(ipaddress.ip_address("192.0.2.1"), multicast_address=ipaddress.ip_address("239.192.0.1"))
MEMBER = ("192.0.2.10", 848)
UNICAST_SAMPLE = 50


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3)


def _kek(policy: KEKPolicy, now: float) -> KEKKeys:
    return KEKKeys(policy, os.urandom(16), os.urandom(policy.key_bits // 8), now, now + policy.lifetime)


def _member_kek(kek: KEKKeys) -> KEKInfo:
    """The KEK as a member holds it after registering."""
    p = kek.policy
    return KEKInfo(kek.spi, KEKAlgorithm.KEK_ALG_AES, p.key_bits, kek.key, p.signature_algorithm,
                   SigHashAlgorithm.SIG_HASH_SHA256, p.signature_key_bits, p.public_key_der, p.lifetime,
                   Selector.of(REKEY.source), Selector.of(REKEY.multicast_address))


def measure(members: int, policy: KEKPolicy, repeats: int) -> dict:
    depth = max(DEFAULT_DEPTH, math.ceil(math.log2(members)))
    key_bytes = policy.key_bits // 8
    tree = LKHTree(depth, key_bytes, os.urandom)
    kek = _kek(policy, 0.0)
    tree.set_root(kek.key)
    t0 = time.perf_counter()
    for _ in range(members):
        tree.join()
    fill_s = time.perf_counter() - t0
    evicted = tree.first_leaf + 1
    sibling, far = evicted - 1, tree.first_leaf + members - 1
    paths = {sibling: tree.path(sibling), far: tree.path(far)}
    seq = [0]

    def evict_and_build():
        new = _kek(policy, 1.0)
        updates, _ = tree.evict(evicted, new.key)
        sa = GroupSA(payloads=(kek_payload(new, REKEY, MEMBER, 1.0),))
        seq[0] += 1
        data = push.build_push(kek, seq[0], sa, push.eviction_kd(new, updates), (push.delete_kek(kek.spi),))
        tree.join(leaf=evicted)  # put the leaf back for the next round (its key is fresh; the paths above stay)
        return updates, data

    build_ms = _median_ms(evict_and_build, repeats)
    # The paths measured must be those from before the eviction that the member follows: refresh them once.
    paths = {leaf: tree.path(leaf) for leaf in paths}
    updates, data = evict_and_build()
    member = _member_kek(kek)
    unwrap = {}
    for name, leaf in (("sibling", sibling), ("last_joined", far)):
        result = push.verify_push(data, member, seq[0] - 1, lkh_path=paths[leaf])
        if result.kek.key != tree.key(1).key:
            raise AssertionError("the member did not reach the new KEK")
        unwrap[name] = {
            "unwraps": 1 + sum(a != b for a, b in zip(paths[leaf], result.lkh_path)),
            "unwrap_ms": _median_ms(lambda: member_update(paths[leaf], updates), repeats),
            "verify_push_ms": _median_ms(lambda: push.verify_push(data, member, seq[0] - 1, lkh_path=paths[leaf]),
                                         repeats),
        }
    unicast = unicast_rekey(policy, repeats)
    return {
        "members": members,
        "depth": depth,
        "wrapped_keys": len(updates),
        "update_array_octets": 4 + sum(18 + 8 + len(u.wrapped_key) for u in updates),
        "push_octets": len(data),
        "key_server_build_ms": build_ms,
        "member": unwrap,
        "tree_fill_s": round(fill_s, 3),
        "unicast_rekek": {
            "messages": members - 1,
            "octets_each": unicast["octets"],
            "octets_total": unicast["octets"] * (members - 1),
            "build_ms_each": unicast["build_ms"],
            "build_s_total": round(unicast["build_ms"] * (members - 1) / 1e3, 1),
        },
    }


def unicast_rekey(policy: KEKPolicy, repeats: int) -> dict:
    """One member's own KEK rekey PUSH (SA with the SAK, KD with the KEK's key), signed: the unicast re-KEK
    alternative sends one of these to each remaining member, under a KEK only that member holds."""
    own = _kek(policy, 0.0)
    new = _kek(policy, 1.0)
    sa = GroupSA(payloads=(kek_payload(new, REKEY, MEMBER, 1.0),))
    kd = KD((KeyPacket(KeyPacketType.KEK, new.spi, (Attribute(KEKKeyAttr.KEK_ALGORITHM_KEY, new.key),
                                                   Attribute(KEKKeyAttr.SIG_ALGORITHM_KEY, policy.public_key_der))),))
    seq = [0]

    def build():
        seq[0] += 1
        return push.build_push(own, seq[0], sa, kd, (push.delete_kek(own.spi),))

    octets = len(build())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(UNICAST_SAMPLE):
            build()
        times.append((time.perf_counter() - t0) / UNICAST_SAMPLE)
    return {"octets": octets, "build_ms": round(statistics.median(times) * 1e3, 3)}


def run(sizes, repeats: int, key_bits: int) -> dict:
    policy = KEKPolicy(rsa.generate_private_key(65537, 2048), key_bits, "sha256")
    return {
        "benchmark": "eviction",
        "parameters": {"members": list(sizes), "repeats": repeats, "kek_key_bits": key_bits,
                       "signature": "RSA-2048, SHA-256", "default_depth": DEFAULT_DEPTH},
        "results": [measure(n, policy, repeats) for n in sizes],
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--key-bits", type=int, choices=(128, 192, 256), default=128)
    a = parser.parse_args(argv)
    if any(n < 2 for n in a.members):
        parser.error("a group of at least 2 members (one evicted, one to follow)")
    print(json.dumps(run(a.members, a.repeats, a.key_bits), indent=2))


if __name__ == "__main__":
    main()
