"""Codec throughput: decode plus encode of a Main Mode exchange and of a GROUPKEY-PUSH, ours against scapy's.

Run:  python benchmarks/codec.py [--repeats 7] [--seconds 0.2]
Prints one JSON object: the parameters, per-message medians (microseconds per decode+encode) for both codecs, the
rates (messages per second over the set) and the ratio ours/scapy.  scapy is a benchmark-only dependency
(pip install scapy).  Each codec runs the very same bytes; both must give them back unchanged.
"""

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdoiserver.codec import (  # noqa: E402
    KE, NATD, SA, Attribute, Hash, Identification, Message, Nonce, Notification, Proposal, Signature, Transform,
    VendorID, decode_message,
)
from gdoiserver.codec.constants import DOI, NAT_T_VENDOR_ID, DPD_VENDOR_ID, Flags, NotifyType  # noqa: E402
from gdoiserver.codec.gdoi import (  # noqa: E402
    KD, SAK, SAT, SEQ, GroupSA, IPsecTEK, KeyPacket, Selector,
)


def _octets(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


def main_mode() -> list[tuple[str, bytes, int]]:
    """MM1..MM6 of a PSK Main Mode with aes256-sha256-modp2048 and NAT-T, as charon sends them."""
    ci, cr = _octets("ci", 8), _octets("cr", 8)
    attrs = (Attribute(1, 7), Attribute(14, 256), Attribute(2, 4), Attribute(3, 1), Attribute(4, 14),
             Attribute(11, 1), Attribute(12, 28800))
    sa = SA(1, 1, (Proposal(1, 1, b"", (Transform(1, 1, attrs),)),))
    vids = tuple(VendorID(v) for v in (NAT_T_VENDOR_ID, DPD_VENDOR_ID, _octets("xauth", 8)))
    mm = [
        ("MM1", Message(ci, bytes(8), 2, payloads=(sa,) + vids)),
        ("MM2", Message(ci, cr, 2, payloads=(sa,) + vids[:2])),
        ("MM3", Message(ci, cr, 2, payloads=(KE(_octets("gxi", 256)), Nonce(_octets("ni", 32)),
                                             NATD(_octets("nd1", 32)), NATD(_octets("nd2", 32))))),
        ("MM4", Message(ci, cr, 2, payloads=(KE(_octets("gxr", 256)), Nonce(_octets("nr", 32)),
                                             NATD(_octets("nd3", 32)), NATD(_octets("nd4", 32))))),
        ("MM5", Message(ci, cr, 2, Flags.ENCRYPTION, ciphertext=_octets("mm5", 96), next_payload=5)),
        ("MM6", Message(ci, cr, 2, Flags.ENCRYPTION, ciphertext=_octets("mm6", 80), next_payload=5)),
    ]
    return [(name, m.encode(), DOI.IPSEC) for name, m in mm]


def groupkey_push() -> list[tuple[str, bytes, int]]:
    """A GROUPKEY-PUSH (RFC 6407 section 4): encrypted on the wire, and its decrypted payload chain."""
    spi = _octets("kek-spi", 16)
    sak = SAK(17, Selector.of("0.0.0.0"), Selector.of("239.0.0.1", 848), spi,
              (Attribute(2, 3), Attribute(3, 256), Attribute.number(4, 86400), Attribute(5, 3), Attribute(6, 1),
               Attribute(7, 2048)))
    tek = IPsecTEK(0, Selector.of("0.0.0.0"), Selector.of("239.0.0.1"), 20,
                   _octets("tek", 4), (Attribute(1, 1), Attribute(2, 3600), Attribute(4, 1), Attribute(6, 256)))
    kd = KD((KeyPacket(1, _octets("tek", 4), (Attribute(1, _octets("tek-key", 36)),)),
             KeyPacket(2, spi, (Attribute(1, _octets("kek-key", 32)), Attribute(2, _octets("pub", 294))))))
    payloads = (SEQ(42), GroupSA(payloads=(sak, SAT(1, tek), SAT(1, tek))), kd, Signature(_octets("sig", 256)))
    clear = Message(spi[:8], spi[8:], 33, 0, 0, payloads)
    wire = Message(spi[:8], spi[8:], 33, Flags.ENCRYPTION, 0, ciphertext=_octets("push", 1024), next_payload=18)
    return [("PUSH (decrypted chain)", clear.encode(), DOI.GDOI), ("PUSH (on the wire)", wire.encode(), DOI.GDOI)]


def _time(fn, data, seconds: float) -> float:
    """Microseconds per call of fn(data), over a batch sized to take about ``seconds``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        dt = time.perf_counter() - t0
        if dt >= seconds or n >= 1 << 22:
            return dt / n * 1e6
        n = max(n * 2, int(n * seconds / max(dt, 1e-9)))


def run(repeats: int, seconds: float) -> dict:
    from scapy.layers.isakmp import ISAKMP  # benchmark-only dependency

    messages = main_mode() + groupkey_push()
    results = []
    for name, data, doi in messages:
        ours = lambda b, doi=doi: decode_message(b, doi).encode()  # noqa: E731
        theirs = lambda b: bytes(ISAKMP(b))  # noqa: E731
        if ours(data) != data or theirs(data) != data:
            raise SystemExit(f"{name}: a codec did not give the bytes back")
        o = statistics.median(_time(ours, data, seconds) for _ in range(repeats))
        s = statistics.median(_time(theirs, data, seconds) for _ in range(repeats))
        results.append({"message": name, "octets": len(data), "ours_us": round(o, 2), "scapy_us": round(s, 2),
                        "ratio": round(s / o, 1)})

    def rate(names, key):
        return 1e6 * len(names) / sum(r[key] for r in results if r["message"] in names)

    sets = {"main_mode": [n for n, _, _ in main_mode()], "groupkey_push": [n for n, _, _ in groupkey_push()]}
    summary = {}
    for set_name, names in sets.items():
        ours_rate, scapy_rate = rate(names, "ours_us"), rate(names, "scapy_us")
        summary[set_name] = {"ours_msgs_per_s": round(ours_rate), "scapy_msgs_per_s": round(scapy_rate),
                             "ratio": round(ours_rate / scapy_rate, 1)}
    import scapy

    return {
        "benchmark": "codec decode+encode",
        "parameters": {"repeats": repeats, "seconds_per_sample": seconds, "statistic": "median"},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "scapy": scapy.VERSION},
        "goal": "ratio >= 20",
        "messages": results,
        "summary": summary,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.2)
    a = p.parse_args(argv)
    print(json.dumps(run(a.repeats, a.seconds), indent=2))


if __name__ == "__main__":
    main()
