"""Floods and exhaustion: hostile load against a ``twistd -n gdoi`` key server while legitimate members register.

Run:  python benchmarks/flood.py [--scale 1.0] [--random 1000000] [--mm1 100000] [--half 10000]
                                 [--random-rate 10000] [--mm1-rate 1000] [--half-rate 100] [--legit-rate 10]
                                 [--mm1-sources 1024] [--halfopen-per-peer 32] [--halfopen-total 4096] [--keep]

Every load runs in processes of its own, on loopback, against one key server started for the run (its generated
config: one Main Mode proposal aes128-sha256-ecp256-psk for any address, one group admitting ``*.bench.example``
with a KEK, the daemon's default half-open caps unless told otherwise):

- ``random``: datagrams of random octets from ``--random-sources`` addresses of 127.9.0.0/16, a third of them
  whole noise, a third behind a well-formed ISAKMP header (version 1.0, right length, random cookies, exchange and
  flags), a third with a chain of generic payload headers of consistent lengths around random bodies;
- ``mm1``: Main Mode first messages (RFC 2409 section 5.4), each with a fresh random initiator cookie, from
  ``--mm1-sources`` addresses of 127.10.0.0/16 (spoofed hosts that never send message 3);
- ``half``: half-finished registrations: Phase 1 completed with the PSK (an insider), GROUPKEY-PULL message 1 sent
  (RFC 6407 section 3.2), and the exchange abandoned, from 127.11.0.0/16, each a distinct identity;
- ``legit``: members registering all along (Main Mode, then GROUPKEY-PULL to message 4), open loop at
  ``--legit-rate`` per second from 127.12.0.0/16 (benchmarks/registration.py's members); latency runs from the
  planned start to message 4 accepted, so a late generator hides no queueing.

Each flood is paced at its own rate, in a process niced by ``--flood-nice`` (on one machine the attackers'
CPU would otherwise be the key server's), and bounded by its count and ``--duration`` (seconds).  The legitimate load
runs for the planned flood time (the longest count / rate) and at least ``--legit-min`` registrations.  The key
server's resident memory is sampled (``VmRSS``, /proc/PID/status) every ``--sample`` seconds; its peak
(``VmHWM``) is read at the end.  Its counters are read with ``gdoictl status --json`` before and after.

Prints one JSON object: parameters, per-flood tallies (sent, send errors, seconds), the legitimate registrations
(attempted, registered, failed with reasons, p50/p99/max latency), the key server's RSS (max sampled, peak), its CPU
seconds, the counters before, after and their difference (the half-open caps, responders started, unknown
cookies, malformed datagrams...), and ``goals`` (RSS under 200 MiB, fewer than 1 % of the legitimate
registrations failed, p99 under 1 s, a half-open cap visible in the counters).  Exit status 0 when the run
completed (whatever the goals), 1 otherwise.
"""

import argparse
import json
import multiprocessing
import os
import platform
import queue
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import loadgen  # noqa: E402
import registration  # noqa: E402
from gdoiserver.codec.constants import DOI  # noqa: E402
from gdoiserver.doi.gdoi.pull import PullInitiator  # noqa: E402
from gdoiserver.exchanges.effects import Send  # noqa: E402
from gdoiserver.exchanges.main_mode import MainMode  # noqa: E402

#: The source networks of each load (distinct, so that the key server's per-address caps tell them apart).
RANDOM_NET, MM1_NET, HALF_NET, LEGIT_NET = "127.9.0.1", "127.10.0.1", "127.11.0.1", "127.12.0.1"
ADDRESS = "127.0.0.1"
#: Payload types the random chains name: the ISAKMP ones (RFC 2408 section 3.1) and GDOI's (RFC 6407 section 5).
PAYLOAD_TYPES = tuple(range(0, 21)) + (130, 131) + tuple(range(15, 23))
EXCHANGES = (2, 4, 5, 32, 33, 34, 35, 0, 1, 255)
#: Datagrams sent between two looks at the clock (pacing).
BATCH = 32
#: The goals of issue 9.
RSS_GOAL_MIB, FAILURE_GOAL, P99_GOAL_S = 200, 0.01, 1.0
MIB = 2**20


# --- the key server -------------------------------------------------------------------------------------------------


def key_server_config(workdir: Path, args, port: int, nat_t_port: int) -> Path:
    """The config of the run: benchmarks/registration.py's, with the half-open caps of ``args`` (the daemon's
    defaults unless told) instead of its unlimited ones, and an LKH tree for every member."""
    members = args.half + int(args.legit_rate * planned_seconds(args)) + args.legit_min + 100
    path = registration.key_server_config(workdir, address=ADDRESS, port=port, nat_t_port=nat_t_port,
                                          group=args.group, psk=args.psk, members=members)
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("halfopen_per_peer"):
            line = f"halfopen_per_peer = {args.halfopen_per_peer}"
        elif line.startswith("halfopen_total"):
            line = f"halfopen_total = {args.halfopen_total}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def gdoictl_status(workdir: Path) -> dict:
    """``gdoictl --socket … --json status``: what an operator sees."""
    proc = subprocess.run([sys.executable, "-m", "gdoiserver.tools.gdoictl", "--socket", str(workdir / "ks.sock"),
                           "--json", "status"], cwd=REPO, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"gdoictl status failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def vm_kib(pid: int, field: str) -> int | None:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RSSSampler(threading.Thread):
    """Samples the key server's VmRSS every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self):
        start = time.monotonic()
        while not self._stop_event.is_set():
            kib = vm_kib(self.pid, "VmRSS")
            if kib is not None:
                self.samples.append((round(time.monotonic() - start, 2), kib))
            self._stop_event.wait(self.every)

    def stop(self) -> list:
        self._stop_event.set()
        self.join(10)
        return self.samples


# --- the floods -----------------------------------------------------------------------------------------------------


def _sockets(first: str, count: int) -> list[socket.socket]:
    out = []
    for address in loadgen.source_addresses(first, count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.bind((address, 0))
        s.setblocking(False)
        out.append(s)
    return out


def random_datagram(rng: random.Random, noise: bytes) -> tuple[str, bytes]:
    """One hostile datagram and its shape: ``noise`` (random octets), ``header`` (a well-formed ISAKMP header,
    RFC 2408 section 3.1, in front of random octets) or ``chain`` (the header and generic payload headers whose
    lengths add up, around random bodies)."""
    shape = rng.choice(("noise", "header", "chain"))
    at = rng.randrange(len(noise) - 2048)
    if shape == "noise":
        return shape, noise[at:at + rng.randrange(1, 600)]
    if shape == "header":
        body = noise[at:at + rng.randrange(0, 600)]
    else:
        parts, n = [], rng.randrange(1, 6)
        for i in range(n):
            size = rng.randrange(0, 120)
            following = rng.choice(PAYLOAD_TYPES) if i < n - 1 else 0
            parts.append(struct.pack("!BBH", following, 0, size + 4) + noise[at:at + size])
            at += size
        body = b"".join(parts)
    cookies = noise[at + 600:at + 616]
    if rng.random() < 0.3:
        cookies = cookies[:8] + bytes(8)  # a zero responder cookie: a first message, as far as routing goes
    header = cookies + struct.pack("!BBBBII", rng.choice(PAYLOAD_TYPES), 0x10, rng.choice(EXCHANGES),
                                   rng.randrange(8), rng.getrandbits(32), 28 + len(body))
    return shape, header + body


def mm1_template(args) -> bytes:
    """A Main Mode first message as our initiator sends it (SA with aes128-sha256-<group>-psk, the vendor IDs)."""
    policy = loadgen.policy(loadgen.GROUPS[args.group], args.psk.encode(), nat_t_port=4500, timeout=10,
                            retransmit=2)
    machine = MainMode.initiator(policy, local=(MM1_NET, 500), peer=(ADDRESS, args.port), doi=DOI.GDOI,
                                 initiator_cookie=bytes(8))
    return next(e.data for e in machine.start(0.0, os.urandom) if isinstance(e, Send))


def flood(kind: str, args, count: int, rate: float, go: float) -> dict:
    """Send ``count`` datagrams of ``kind`` (random or mm1) at ``rate`` per second from ``go`` on, for at most
    ``args.duration`` seconds; the tally."""
    rng = random.Random(args.seed + (1 if kind == "random" else 2))
    if kind == "random":
        socks = _sockets(RANDOM_NET, args.random_sources)
        noise = os.urandom(1 << 20)
        template = None
    else:
        socks = _sockets(MM1_NET, args.mm1_sources)
        template = mm1_template(args)
    target = (ADDRESS, args.port)
    shapes, errors, sent = Counter(), 0, 0
    while time.monotonic() < go:
        time.sleep(min(0.01, max(0.0, go - time.monotonic())))
    end = go + args.duration
    try:
        while sent < count:
            now = time.monotonic()
            if now >= end:
                break
            due = go + sent / rate
            if due > now:
                time.sleep(min(due - now, 0.05))
                continue
            for _ in range(min(BATCH, count - sent)):
                if template is None:
                    shape, data = random_datagram(rng, noise)
                else:
                    shape, data = "mm1", os.urandom(8) + template[8:]  # a fresh initiator cookie each time
                try:
                    socks[sent % len(socks)].sendto(data, target)
                except OSError:
                    errors += 1
                shapes[shape] += 1
                sent += 1
    finally:
        for s in socks:
            s.close()
    return {"sent": sent, "send_errors": errors, "shapes": dict(shapes), "seconds": round(time.monotonic() - go, 2),
            "offered_rate_per_s": rate, "sources": len(socks)}


class HalfWorker(registration.Worker):
    """benchmarks/registration.py's members, except that each sends GROUPKEY-PULL message 1 once Phase 1 is done
    and then walks away: the key server holds an ISAKMP SA and a PULL exchange waiting for message 3."""

    def _pull(self, cookie, flight, sa, now):
        for key in [k for k in self.timers if k[0] == cookie]:
            del self.timers[key]
        pull = PullInitiator(sa, None, group=registration.GROUP, policy=self.member_policy)
        for effect in pull.start(now, os.urandom):
            if isinstance(effect, Send):
                try:
                    flight.endpoint.send(effect)
                    self.counts["pull_message_1_sent"] += 1
                except OSError:
                    self.counts["send_error"] += 1
        self.finish(cookie, now, None)


def half(args, count: int, rate: float, go: float) -> dict:
    sub = argparse.Namespace(**vars(args))
    sub.target = ADDRESS
    worker = HalfWorker(sub, 1, count, max(1, args.half_window), rate, loadgen.source_addresses(HALF_NET,
                        args.half_sources), 500_000_000)
    try:
        tally = worker.run(go)
    finally:
        worker.close()
    failures = Counter(tally["failures"])
    return {"started": tally["started"], "abandoned_after_pull_1": len(tally["latencies"]),
            "phase1_failures": sum(failures.values()), "failure_reasons": dict(failures),
            "unfinished": tally["unfinished"], "pull_message_1_sent": tally["counts"].get("pull_message_1_sent", 0),
            "seconds": round(time.monotonic() - go, 2), "offered_rate_per_s": rate}


def _flood_main(kind, args, count, rate, ready, go_box, results) -> None:
    try:
        os.nice(args.flood_nice)  # the attackers are other machines: their CPU must not be the key server's
        ready.put(kind)
        go = go_box.get(timeout=120)
        tally = half(args, count, rate, go) if kind == "half" else flood(kind, args, count, rate, go)
    except Exception as e:  # reported, so that the parent does not wait for nothing
        tally = {"error": f"{type(e).__name__}: {e}"}
    results.put((kind, tally))


# --- one run --------------------------------------------------------------------------------------------------------


def planned_seconds(args) -> float:
    """How long the floods are planned to last: the longest count / rate (bounded by ``--duration``)."""
    plans = [n / r for n, r in ((args.random, args.random_rate), (args.mm1, args.mm1_rate),
                                (args.half, args.half_rate)) if n > 0 and r > 0]
    return min(max(plans, default=1.0), args.duration)


def legit_args(args) -> argparse.Namespace:
    """The namespace benchmarks/registration.py's ``load`` reads."""
    return argparse.Namespace(
        workers=args.legit_workers, concurrency=max(64, int(args.legit_rate * args.timeout * 2)),
        source=LEGIT_NET, sources=args.legit_sources, psk=args.psk, group=args.group, timeout=args.timeout,
        retransmit=args.retransmit, target=ADDRESS, port=args.port, duration=args.duration + 5,
    )


def udp_snmp() -> dict:
    """The kernel's UDP counters of this network namespace (/proc/net/snmp): RcvbufErrors counts datagrams dropped
    because a socket's receive buffer was full."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}


class Flood:
    """One run in ``workdir`` (registration.inside's interface, so that it can run in a namespace)."""

    def __init__(self, args, workdir: Path):
        self.args, self.workdir = args, workdir

    def run(self) -> dict:
        return measure(self.args, self.workdir)


def measure(args, workdir: Path) -> dict:
    ks = None
    procs = []
    try:
        args.port, nat_t_port = registration.free_udp_port(ADDRESS), registration.free_udp_port(ADDRESS)
        config = key_server_config(workdir, args, args.port, nat_t_port)
        ks = registration.KeyServerProcess(workdir, config, ADDRESS, args.port)
        before = gdoictl_status(workdir)
        sampler = RSSSampler(ks.pid, args.sample)
        sampler.start()
        cpu0 = registration.proc_stat(ks.pid)[0]
        snmp0 = udp_snmp()

        ctx = multiprocessing.get_context("fork")
        ready, results = ctx.Queue(), ctx.Queue()
        plan = {"random": (args.random, args.random_rate), "mm1": (args.mm1, args.mm1_rate),
                "half": (args.half, args.half_rate)}
        plan = {k: v for k, v in plan.items() if v[0] > 0 and v[1] > 0}
        boxes = {kind: ctx.Queue() for kind in plan}
        for kind, (count, rate) in plan.items():
            p = ctx.Process(target=_flood_main, daemon=True,
                            args=(kind, args, count, rate, ready, boxes[kind], results))
            p.start()
            procs.append(p)
        for _ in plan:
            ready.get(timeout=60)
        go = time.monotonic() + 0.5
        for box in boxes.values():
            box.put(go)
        seconds = planned_seconds(args)
        legit_count = max(args.legit_min, int(args.legit_rate * seconds))
        legit_rate = max(args.legit_rate, legit_count / seconds)
        # The members begin with the floods (their own workers wait for their own start signal).
        time.sleep(max(0.0, go - time.monotonic()))
        legit = registration.load(legit_args(args), legit_count, legit_rate, 0)
        floods = {}
        deadline = time.monotonic() + args.duration + args.timeout + 60
        while len(floods) < len(plan):
            kind, tally = results.get(timeout=max(0.1, deadline - time.monotonic()))
            floods[kind] = tally
        errors = [f"{k}: {t['error']}" for k, t in floods.items() if "error" in t]
        if errors:
            raise RuntimeError("a flood failed: " + "; ".join(errors))
        # Let the key server drain what is queued, then read it.
        time.sleep(1.0)
        after = gdoictl_status(workdir)
        cpu = registration.proc_stat(ks.pid)[0] - cpu0
        snmp = delta(snmp0, udp_snmp())
        samples = sampler.stop()
        peak = vm_kib(ks.pid, "VmHWM")
        log_octets = sum(p.stat().st_size for p in workdir.glob("keyserver.log*"))
        out = {
            "floods": floods,
            "legit": legit_summary(legit, legit_count, legit_rate),
            "keyserver": {
                "rss_mib_max_sampled": round(max(kib for _, kib in samples) / 1024, 1) if samples else None,
                "rss_mib_peak_vmhwm": None if peak is None else round(peak / 1024, 1),
                "rss_mib_at_start": round(samples[0][1] / 1024, 1) if samples else None,
                "rss_samples": len(samples),
                "cpu_s": round(cpu, 2),
                "log_octets": log_octets,
                "udp_receive_buffer_drops": snmp.get("RcvbufErrors", 0),
                "sas_before": before.get("sas"), "sas_after": after.get("sas"),
                "members_after": sum(g.get("members", 0) for g in after.get("groups", ())),
            },
            "counters_before": before.get("counters", {}),
            "counters_after": after.get("counters", {}),
        }
        out["counters_delta"] = delta(out["counters_before"], out["counters_after"])
        out["goals"] = goals(out)
        return out
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        if ks is not None:
            ks.stop()


def run(args) -> dict:
    """The run, in a private network namespace when ``--namespace`` says so (its own loopback and UDP counters;
    nothing it starts outlives it)."""
    workdir = Path(tempfile.mkdtemp(prefix="gflood-", dir="/tmp"))  # short: the control socket's path
    try:
        if registration.use_namespace(args.namespace):
            budget = 2 * args.duration + args.timeout + 300
            out = registration.in_namespace(Path(__file__).resolve(), args, workdir, budget)["result"]
            out["where"] = "a private network namespace (unshare --net --pid)"
        else:
            out = measure(args, workdir)
            out["where"] = "this network namespace"
        if args.keep:
            out["workdir"] = str(workdir)
        return out
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def legit_summary(tally: dict, count: int, rate: float) -> dict:
    s = registration.summary(tally, rate)
    failed = s["failures"] + s["timeouts"] + s["unfinished"] + (count - tally["started"])
    return {
        "attempted": count, "started": tally["started"], "registered": s["registered"], "failed": failed,
        "failure_rate": round(failed / count, 4) if count else None,
        "failure_reasons": s["failure_reasons"], "timeouts": s["timeouts"], "unfinished": s["unfinished"],
        "latency_ms": s["latency_ms"], "phase1_latency_ms": s["phase1_latency_ms"],
        "retransmits": s["retransmits"], "offered_rate_per_s": s.get("offered_rate_per_s"),
        "late_starts": s.get("late_starts"),
    }


def delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
            if after.get(k, 0) != before.get(k, 0)}


def goals(out: dict) -> dict:
    legit, ks, d = out["legit"], out["keyserver"], out["counters_delta"]
    rss = max(x for x in (ks["rss_mib_max_sampled"], ks["rss_mib_peak_vmhwm"], 0) if x is not None)
    p99 = legit["latency_ms"]["p99"]
    return {
        "rss_under_200_mib": rss < RSS_GOAL_MIB,
        "legit_failures_under_1_percent": legit["failure_rate"] is not None and legit["failure_rate"] < FAILURE_GOAL,
        "legit_p99_under_1_s": p99 is not None and p99 < P99_GOAL_S * 1000,
        "halfopen_caps_in_counters": any(d.get(k, 0) > 0 for k in ("halfopen_cap_per_peer", "halfopen_cap_total",
                                                                    "halfopen_evicted")),
    }


# --- the command ----------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies --random, --mm1 and --half (not the rates)")
    p.add_argument("--random", type=int, default=1_000_000, help="random datagrams")
    p.add_argument("--mm1", type=int, default=100_000, help="Main Mode first messages from spoofed hosts")
    p.add_argument("--half", type=int, default=10_000, help="half-finished registrations")
    p.add_argument("--random-rate", type=float, default=10_000, help="random datagrams per second")
    p.add_argument("--mm1-rate", type=float, default=1_000, help="Main Mode first messages per second")
    p.add_argument("--half-rate", type=float, default=100, help="half-finished registrations started per second")
    p.add_argument("--half-window", type=int, default=64, help="half-finished registrations in flight at most")
    p.add_argument("--legit-rate", type=float, default=10, help="legitimate registrations started per second")
    p.add_argument("--legit-min", type=int, default=200, help="legitimate registrations at least")
    p.add_argument("--legit-workers", type=int, default=1, help="processes of the legitimate members")
    p.add_argument("--random-sources", type=int, default=256, help="addresses the random datagrams come from")
    p.add_argument("--mm1-sources", type=int, default=1024, help="addresses the first messages come from")
    p.add_argument("--half-sources", type=int, default=256, help="addresses of the half-finished registrations")
    p.add_argument("--legit-sources", type=int, default=256, help="addresses of the legitimate members")
    p.add_argument("--flood-nice", type=int, default=10,
                   help="niceness added to the flood processes (the key server and members keep theirs)")
    p.add_argument("--halfopen-per-peer", type=int, default=32, help="the key server's ike.halfopen_per_peer")
    p.add_argument("--halfopen-total", type=int, default=4096, help="the key server's ike.halfopen_total")
    p.add_argument("--group", choices=sorted(loadgen.GROUPS), default="ecp256", help="Phase 1 Diffie-Hellman group")
    p.add_argument("--duration", type=float, default=300.0, help="seconds after which every load stops")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one registration may take")
    p.add_argument("--retransmit", type=float, default=2.0, help="seconds before a member's first retransmission")
    p.add_argument("--sample", type=float, default=0.25, help="seconds between two RSS samples")
    p.add_argument("--seed", type=int, default=9, help="seed of the random datagrams' shapes")
    p.add_argument("--psk", default=registration.PSK, help=argparse.SUPPRESS)
    p.add_argument("--namespace", choices=("auto", "yes", "no"), default="auto",
                   help="run in a private network namespace (needs root, unshare and ip; auto: when possible)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (config, log, store) and name it")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inside"]:
        return registration.inside(argv[1], Flood)
    args = parser().parse_args(argv)
    for name in ("random", "mm1", "half"):
        setattr(args, name, int(round(getattr(args, name) * args.scale)))
    if min(args.random_rate, args.mm1_rate, args.half_rate, args.legit_rate, args.duration) <= 0:
        parser().error("rates and --duration must be positive")
    loadgen._allow_files(2 * (args.random_sources + args.mm1_sources + args.half_sources + args.legit_sources) + 256)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        out = run(args)
    except (RuntimeError, queue.Empty, OSError) as e:
        print(f"flood: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    report = {
        "benchmark": "flood",
        "date": started,
        "command": " ".join(["benchmarks/flood.py", *argv]),
        "parameters": {k: v for k, v in vars(args).items() if k != "psk"},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        **out,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
