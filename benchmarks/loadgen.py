"""Phase 1 load generator: many IKEv1 Main Mode PSK initiators (RFC 2409 section 5.4) against one responder.

Run:  python benchmarks/loadgen.py --target 127.0.0.2 [--port 500] [--count 2000] [--concurrency 64]
                                   [--workers 2] [--group ecp256|modp2048] [--duration 60] [--psk TEXT]
                                   [--source 127.0.0.1] [--sources 1] [--timeout 10] [--retransmit 2]

Prints one JSON object: the parameters, handshakes established, handshakes per second over the run, p50/p99
latency (first message sent to MM6 accepted), failures by reason, timeouts, retransmissions and the generator's
own CPU time.  It is a tool of the benchmarks, not part of the server: each initiator is a sans-IO
:class:`gdoiserver.exchanges.main_mode.MainMode` machine driven here over plain sockets, so it speaks IKEv1 as our
initiator does (aes128-sha256, the chosen group, NAT-T vendor ID and NAT-D; its ID is its address).

``--workers`` processes split ``--count``, ``--concurrency`` and the ``--sources`` addresses (counting up from
``--source``; with fewer addresses than workers, each worker uses them all) between them.  On each address a
worker binds two UDP sockets: one it starts from, and one it floats to when NAT-D shows a NAT (RFC 3947 section 4:
MM5 and MM6 go to the responder's port 4500 behind the non-ESP marker, RFC 3948 section 2.2; strongSwan fakes
NAT-D, so charon always floats, and our responder only when NAT-D says so).  New initiators take the addresses
in turn, each with a distinct random initiator cookie.  A worker keeps at most its share of the concurrency in
flight, starts a new initiator as one ends, and stops starting at ``--count`` or after ``--duration`` seconds; an
exchange not done ``--timeout`` seconds after it began is a timeout.
"""

import argparse
import heapq
import ipaddress
import json
import multiprocessing
import os
import platform
import queue
import resource
import selectors
import socket
import struct
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdoiserver.codec import NON_ESP_MARKER, DecodeError, decode_message  # noqa: E402
from gdoiserver.codec.constants import OakleyAuth, OakleyEncryption, OakleyHash  # noqa: E402
from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, Send, StartTimer  # noqa: E402
from gdoiserver.exchanges.main_mode import MainMode  # noqa: E402
from gdoiserver.exchanges.phase1 import Phase1Policy, Phase1Proposal  # noqa: E402

#: --group names and their Oakley group numbers (RFC 3526 section 3, RFC 5903 section 3.1).
GROUPS = {"ecp256": 19, "modp2048": 14}
#: How a machine's Failed reason reads when the responder never answered (phase1_common.py).
TIMEOUT_REASONS = ("peer did not answer", "exchange timed out")
#: Datagrams read from one socket before the worker looks at its timers and window again.
READ_BATCH = 256
#: Socket buffers large enough that a burst of answers is not dropped (the kernel caps them at rmem_max/wmem_max).
SOCKET_BUFFER = 4 << 20


def policy(group: int, psk: bytes, *, nat_t_port: int, timeout: float, retransmit: float) -> Phase1Policy:
    """The initiators' Phase 1 policy: aes128-sha256-<group>-psk, NAT-T on, floating to ``nat_t_port``."""
    proposal = Phase1Proposal(OakleyEncryption.AES_CBC, 128, OakleyHash.SHA2_256, OakleyAuth.PRE_SHARED_KEY, group)
    return Phase1Policy(
        (proposal,), psk_for_address=lambda address: psk, nat_t=True, nat_t_port=nat_t_port,
        retransmit_initial=retransmit, retransmit_tries=8, exchange_timeout=timeout,  # the timeout ends it first
    )


def _udp_socket(address: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    s.bind((address, 0))
    s.setblocking(False)
    return s


def source_addresses(first: str, count: int) -> list[str]:
    """``count`` consecutive addresses from ``first``."""
    start = ipaddress.ip_address(first)
    return [str(start + i) for i in range(count)]


class Endpoint:
    """One initiator address: the socket it starts from, the one it floats to (RFC 3947 section 4), and the
    policy whose NAT-T port is the latter's."""

    def __init__(self, address: str, args):
        self.ike = _udp_socket(address)
        self.nat_t = _udp_socket(address)
        self.local = self.ike.getsockname()[:2]
        self.nat_t_local = self.nat_t.getsockname()[:2]
        self.policy = policy(GROUPS[args.group], args.psk.encode(), nat_t_port=self.nat_t_local[1],
                             timeout=args.timeout, retransmit=args.retransmit)

    def send(self, send: Send) -> None:
        if send.nat_t:
            self.nat_t.sendto(NON_ESP_MARKER + send.data, send.peer)
        else:
            self.ike.sendto(send.data, send.peer)

    def close(self) -> None:
        self.ike.close()
        self.nat_t.close()


class Worker:
    """One process's share: ``quota`` initiators, at most ``window`` in flight, from its own ``addresses``."""

    def __init__(self, args, index: int, quota: int, window: int, addresses: list[str]):
        self.args, self.quota, self.window = args, quota, window
        self.endpoints = [Endpoint(address, args) for address in addresses]
        self.selector = selectors.DefaultSelector()
        for endpoint in self.endpoints:
            self.selector.register(endpoint.ike, selectors.EVENT_READ, (endpoint, False))
            self.selector.register(endpoint.nat_t, selectors.EVENT_READ, (endpoint, True))
        self.index = struct.pack("!B", index)
        self.cookies: set[bytes] = set()
        self.flights: dict[bytes, tuple] = {}  # initiator cookie -> (machine, endpoint, start time)
        self.timers: dict[tuple, float] = {}  # (cookie, key) -> due; the heap may hold stale entries
        self.heap: list = []
        self.started = 0
        self.latencies: list[float] = []
        self.failures: Counter = Counter()
        self.counts: Counter = Counter()
        self.first_start = self.last_end = None

    def close(self) -> None:
        self.selector.close()
        for endpoint in self.endpoints:
            endpoint.close()

    # --- one initiator ----------------------------------------------------------------------------------------

    def new_cookie(self) -> bytes:
        """A distinct initiator cookie: 7 random octets, then the worker's number.  Random as RFC 2408 section
        2.5.3 asks: responders hash them (charon buckets its IKE_SA table by the first four octets)."""
        while True:
            cookie = os.urandom(7) + self.index
            if cookie not in self.cookies:
                self.cookies.add(cookie)
                return cookie

    def start_one(self, now: float) -> None:
        cookie = self.new_cookie()
        endpoint = self.endpoints[self.started % len(self.endpoints)]
        self.started += 1
        machine = MainMode.initiator(endpoint.policy, local=endpoint.local, peer=(self.args.target, self.args.port),
                                     initiator_cookie=cookie)
        self.flights[cookie] = (machine, endpoint, now)
        if self.first_start is None:
            self.first_start = now
        self.apply(cookie, machine.start(now, os.urandom), now)

    def apply(self, cookie: bytes, effects, now: float) -> None:
        for e in effects:
            if isinstance(e, Send):
                try:
                    self.flights[cookie][1].send(e)
                except OSError:  # a full buffer: the machine's retransmission covers it
                    self.counts["send_error"] += 1
            elif isinstance(e, StartTimer):
                due = now + e.delay
                self.timers[cookie, e.key] = due
                heapq.heappush(self.heap, (due, cookie, e.key))
            elif isinstance(e, CancelTimer):
                self.timers.pop((cookie, e.key), None)
            elif isinstance(e, Count):
                self.counts[e.name] += 1
            elif isinstance(e, Established):
                self.finish(cookie, now, None)
            elif isinstance(e, Failed):
                self.finish(cookie, now, e.reason)

    def finish(self, cookie: bytes, now: float, reason: str | None) -> None:
        _, _, began = self.flights.pop(cookie)
        self.last_end = now
        if reason is None:
            self.latencies.append(now - began)
        elif reason in TIMEOUT_REASONS:
            self.failures["timeout"] += 1
        else:
            self.failures[reason] += 1

    # --- the loop -------------------------------------------------------------------------------------------

    def receive(self, endpoint: Endpoint, nat_t: bool, now: float) -> None:
        sock, local = (endpoint.nat_t, endpoint.nat_t_local) if nat_t else (endpoint.ike, endpoint.local)
        for _ in range(READ_BATCH):
            try:
                data, peer = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if nat_t:
                if not data.startswith(NON_ESP_MARKER):
                    self.counts["not_ike"] += 1  # a keepalive or ESP (RFC 3948 section 2)
                    continue
                data = data[len(NON_ESP_MARKER):]
            flight = self.flights.get(data[:8])
            if flight is None:
                self.counts["stray"] += 1  # for an exchange already over: a retransmission, a Delete
                continue
            try:
                message = decode_message(data)
            except DecodeError:
                self.counts["malformed"] += 1
                continue
            effects = flight[0].receive(message, data, now, os.urandom, peer=peer[:2], local=local)
            self.apply(data[:8], effects, now)

    def fire_timers(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            due, cookie, key = heapq.heappop(self.heap)
            if self.timers.get((cookie, key)) != due:
                continue  # cancelled or replaced
            del self.timers[cookie, key]
            flight = self.flights.get(cookie)
            if flight is not None:
                self.apply(cookie, flight[0].timer(key, now, os.urandom), now)

    def run(self, go: float) -> dict:
        """Drive the exchanges from monotonic time ``go``; return the tallies."""
        stop_starting = go + self.args.duration
        hard_end = stop_starting + self.args.timeout + 1.0
        while time.monotonic() < go:
            time.sleep(min(0.01, max(0.0, go - time.monotonic())))
        while True:
            now = time.monotonic()
            while len(self.flights) < self.window and self.started < self.quota and now < stop_starting:
                self.start_one(now)
            if not self.flights and (self.started >= self.quota or now >= stop_starting):
                break
            if now >= hard_end:
                break
            self.fire_timers(now)
            wait = min(self.heap[0][0] - now, 0.05) if self.heap else 0.05
            ready = self.selector.select(max(wait, 0.0))
            now = time.monotonic()
            for key, _ in ready:
                self.receive(*key.data, now)
        return {
            "started": self.started,
            "latencies": self.latencies,
            "failures": dict(self.failures),
            "unfinished": len(self.flights),
            "counts": dict(self.counts),
            "first_start": self.first_start,
            "last_end": self.last_end,
            "cpu_s": time.process_time(),
        }


def _worker_main(args, index, quota, window, addresses, ready, go_box, results) -> None:
    worker, announced = None, False
    try:
        worker = Worker(args, index, quota, window, addresses)
        ready.put(index)
        announced = True
        tally = worker.run(go_box.get(timeout=60))
    except Exception as e:  # reported, so that the parent does not wait for nothing
        tally = {"error": f"{type(e).__name__}: {e}"}
        if not announced:
            ready.put(index)
    finally:
        if worker is not None:
            worker.close()
    results.put((index, tally))


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of an ascending list, or None if it is empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def _allow_files(n: int) -> None:
    """Raise the soft limit on open files to ``n`` if it is lower (two sockets per address), up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY else min(n, hard), hard))


def run(args) -> dict:
    """Run the load described by ``args`` (the command-line namespace) and return the report."""
    workers = max(1, min(args.workers, args.count, args.concurrency))
    quotas, windows = _shares(args.count, workers), _shares(args.concurrency, workers)
    addresses = source_addresses(args.source, args.sources)
    shares = [addresses[i::workers] if len(addresses) >= workers else addresses for i in range(workers)]
    _allow_files(2 * max(map(len, shares)) + 64)  # inherited by the workers
    ctx = multiprocessing.get_context("fork")
    ready, results = ctx.Queue(), ctx.Queue()
    boxes = [ctx.Queue() for _ in range(workers)]
    procs = [ctx.Process(target=_worker_main, daemon=True,
                         args=(args, i, quotas[i], windows[i], shares[i], ready, boxes[i], results))
             for i in range(workers)]
    limit = args.duration + args.timeout + 30.0
    for p in procs:
        p.start()
    tallies = {}
    try:
        for _ in procs:
            ready.get(timeout=30)
        go = time.monotonic() + 0.05
        for box in boxes:
            box.put(go)
        deadline = time.monotonic() + limit
        while len(tallies) < workers:
            index, tally = results.get(timeout=max(0.1, deadline - time.monotonic()))
            tallies[index] = tally
    except queue.Empty:
        raise RuntimeError(f"load generator workers did not report within {limit:.0f} s") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [t["error"] for t in tallies.values() if "error" in t]
    if errors:
        raise RuntimeError("a load generator worker failed: " + "; ".join(errors))
    return summarize(args, workers, list(tallies.values()))


def summarize(args, workers: int, tallies: list[dict]) -> dict:
    latencies = sorted(x for t in tallies for x in t["latencies"])
    failures, counts = Counter(), Counter()
    for t in tallies:
        failures.update(t["failures"])
        counts.update(t["counts"])
    starts = [t["first_start"] for t in tallies if t["first_start"] is not None]
    ends = [t["last_end"] for t in tallies if t["last_end"] is not None]
    span = max(ends) - min(starts) if starts and ends else 0.0
    timeouts = failures.pop("timeout", 0)
    return {
        "benchmark": "phase1-loadgen",
        "parameters": {
            "target": args.target, "port": args.port, "source": args.source, "sources": args.sources,
            "count": args.count, "concurrency": args.concurrency, "workers": workers, "group": args.group,
            "proposal": f"aes128-sha256-{args.group}-psk", "duration_cap_s": args.duration,
            "timeout_s": args.timeout, "retransmit_s": args.retransmit,
        },
        "started": sum(t["started"] for t in tallies),
        "established": len(latencies),
        "failures": sum(failures.values()),
        "failure_reasons": dict(failures),
        "timeouts": timeouts,
        "unfinished": sum(t["unfinished"] for t in tallies),
        "seconds": round(span, 3),
        "handshakes_per_s": round(len(latencies) / span, 1) if span > 0 else 0.0,
        "latency_ms": {
            name: None if v is None else round(v * 1000, 2)
            for name, v in (("p50", percentile(latencies, 50)), ("p99", percentile(latencies, 99)),
                            ("max", latencies[-1] if latencies else None))
        },
        "retransmits": counts.get("retransmit_sent", 0),
        "counts": {k: v for k, v in sorted(counts.items()) if k != "retransmit_sent"},
        "loadgen_cpu_s": round(sum(t["cpu_s"] for t in tallies), 3),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="127.0.0.2", help="the responder's address")
    p.add_argument("--port", type=int, default=500, help="the responder's IKE port (NAT-T floats to 4500)")
    p.add_argument("--source", default="127.0.0.1", help="the (first) address the initiators bind")
    p.add_argument("--sources", type=int, default=1,
                   help="how many addresses, counting up from --source, the initiators take in turn: distinct "
                        "hosts, each with its own ID")
    p.add_argument("--count", type=int, default=2000, help="handshakes to start in all")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight at most, over all workers")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    p.add_argument("--group", choices=sorted(GROUPS), default="ecp256", help="Diffie-Hellman group")
    p.add_argument("--duration", type=float, default=60.0, help="seconds after which no handshake starts")
    p.add_argument("--psk", default="interop-test-psk-123", help="the pre-shared key (text)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds an exchange may take")
    p.add_argument("--retransmit", type=float, default=2.0, help="seconds before the first retransmission")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if min(args.count, args.concurrency, args.workers, args.sources) < 1:
        parser().error("--count, --concurrency, --workers and --sources must be at least 1")
    report = run(args)
    report["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(report, indent=2))
    return 0 if report["established"] else 1


if __name__ == "__main__":
    sys.exit(main())
