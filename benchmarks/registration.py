"""Registration load: many group members, each Main Mode PSK then GROUPKEY-PULL, against a twistd key server.

Run:  python benchmarks/registration.py [--count 5000] [--rounds 3] [--group ecp256|modp2048] [--concurrency 64]
                                        [--workers 2] [--sources 1000] [--scale 1000,10000,100000] [--window 1000]
                                        [--half-seconds 10] [--namespace auto|yes|no] [--keep]

Each member is a distinct identity (ID_FQDN ``gm<worker>-<n>.bench.example``; the group admits
``*.bench.example``) from one of ``--sources`` loopback addresses (127.0.1.1 up).  It runs our sans-IO
:class:`~gdoiserver.exchanges.main_mode.MainMode` (aes128-sha256, the group, PSK; Phase 1 DOI 2, GDOI) and then
our :class:`~gdoiserver.doi.gdoi.pull.PullInitiator` (RFC 6407 section 3.2, no PFS) under the SA it got, both
driven over plain UDP sockets from ``--workers`` processes, as benchmarks/loadgen.py drives Main Mode.  A
registration counts when the member accepted message 4 (keys verified); its latency runs from MM1 to then.

The key server is ``twistd -n gdoi`` with a generated config: one group (an AES-CBC/HMAC-SHA256 TEK, a KEK
signed with ECDSA P-256, unicast rekeys, an LKH tree deep enough for every member) and its SQLite store in the
working folder.  As root (``--namespace auto``) everything runs in a fresh ``unshare --net --pid`` namespace, the
key server on 127.0.0.2:848; otherwise on 127.0.0.1 and a free port.

What is measured, each on a freshly started key server:

- ``rounds``: ``--count`` registrations with ``--concurrency`` in flight (closed loop: the sustained rate), then
  ``--half-seconds`` of registrations started at half that rate (open loop, evenly spaced; latency counts from
  the planned start, so a late generator cannot hide queueing).  Medians over ``--rounds``.
- ``scale`` (once, unless ``--scale ''``): registrations at ``--concurrency`` until the key server holds the
  largest ``--scale`` count plus half a window; the rate at each ``--scale`` count is measured in a window of
  ``--window`` registrations centred on it (the members register one after the other as the count grows: it
  is not pre-populated).  The key server's CPU and resident memory are sampled along (every 0.25 s).
"""

import argparse
import heapq
import json
import os
import platform
import queue
import re
import selectors
import shutil
import signal
import socket
import statistics
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

import attrs  # noqa: E402

import loadgen  # noqa: E402
from gdoiserver.codec import NON_ESP_MARKER, DecodeError, decode_message  # noqa: E402
from gdoiserver.codec.constants import DOI, ExchangeType  # noqa: E402
from gdoiserver.codec.payloads import Identification  # noqa: E402
from gdoiserver.doi.gdoi.pull import PullInitiator  # noqa: E402
from gdoiserver.doi.gdoi.registration import MemberPolicy  # noqa: E402
from gdoiserver.exchanges import informational  # noqa: E402
from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, Send, StartTimer  # noqa: E402
from gdoiserver.exchanges.main_mode import MainMode  # noqa: E402
from gdoiserver.group.policy import GroupId  # noqa: E402

GROUP_NUMBER = 4242
GROUP = GroupId(number=GROUP_NUMBER)
DOMAIN = "bench.example"
PSK = "registration-benchmark-psk"
#: The key server's address and GDOI port inside the namespace; the members' first address.
NS_TARGET, NS_PORT, SOURCE = "127.0.0.2", 848, "127.0.1.1"
#: The key server's log line once its store is loaded and it registers members (gdoiserver/keyserver.py).
READY_LINE = "groups ready to register members"
#: Bounds (seconds): the key server's start, the pause between load phases.
START_CAP, SAMPLE_EVERY = 30.0, 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- one member -----------------------------------------------------------------------------------------------------


class Endpoint:
    """One member address: its IKE socket, the NAT-T one it would float to, and its Phase 1 policy."""

    def __init__(self, address: str, args):
        self.ike = loadgen._udp_socket(address)
        self.nat_t = loadgen._udp_socket(address)
        self.local = self.ike.getsockname()[:2]
        self.nat_t_local = self.nat_t.getsockname()[:2]
        self.policy = loadgen.policy(loadgen.GROUPS[args.group], args.psk.encode(), nat_t_port=self.nat_t_local[1],
                                     timeout=args.timeout, retransmit=args.retransmit)

    def send(self, send: Send) -> None:
        if send.nat_t:
            self.nat_t.sendto(NON_ESP_MARKER + send.data, send.peer)
        else:
            self.ike.sendto(send.data, send.peer)

    def close(self) -> None:
        self.ike.close()
        self.nat_t.close()


class Flight:
    """One registration in progress: Main Mode, then GROUPKEY-PULL under the SA it gave."""

    __slots__ = ("endpoint", "began", "phase1", "pull", "sa", "phase1_s")

    def __init__(self, endpoint: Endpoint, began: float, phase1: MainMode):
        self.endpoint, self.began, self.phase1 = endpoint, began, phase1
        self.pull = self.sa = self.phase1_s = None


class Worker:
    """One process's share of the members: ``quota`` registrations, at most ``window`` in flight, started as
    soon as one ends (``rate`` None) or every 1/``rate`` seconds."""

    def __init__(self, args, index: int, quota: int, window: int, rate: float | None, addresses: list[str],
                 first_number: int):
        self.args, self.index, self.quota, self.window, self.rate = args, index, quota, window, rate
        self.endpoints = [Endpoint(a, args) for a in addresses]
        self.selector = selectors.DefaultSelector()
        for endpoint in self.endpoints:
            self.selector.register(endpoint.ike, selectors.EVENT_READ, (endpoint, False))
            self.selector.register(endpoint.nat_t, selectors.EVENT_READ, (endpoint, True))
        self.target = (args.target, args.port)
        self.member_policy = MemberPolicy(retransmit_initial=args.retransmit, retransmit_tries=8,
                                          exchange_timeout=args.timeout)
        self.number = first_number  # members are numbered across phases: every identity is new
        self.flights: dict[bytes, Flight] = {}
        self.timers: dict[tuple, float] = {}
        self.heap: list = []
        self.started = 0
        self.ends: list[float] = []  # when each registration ended (monotonic), in order
        self.latencies: list[float] = []
        self.phase1_latencies: list[float] = []
        self.failures: Counter = Counter()
        self.counts: Counter = Counter()
        self.late_starts = 0
        self.first_start = None

    def close(self) -> None:
        self.selector.close()
        for endpoint in self.endpoints:
            endpoint.close()

    def _cookie(self) -> bytes:
        while True:  # random, as RFC 2408 section 2.5.3 asks; the last octet tells the workers apart
            cookie = os.urandom(7) + struct.pack("!B", self.index)
            if cookie not in self.flights:
                return cookie

    def start_one(self, planned: float, now: float) -> None:
        endpoint = self.endpoints[self.started % len(self.endpoints)]
        self.started += 1
        self.number += 1
        identity = Identification.of(f"gm{self.index}-{self.number}.{DOMAIN}")
        policy = attrs.evolve(endpoint.policy, local_id=identity)
        cookie = self._cookie()
        machine = MainMode.initiator(policy, local=endpoint.local, peer=self.target, doi=DOI.GDOI,
                                     initiator_cookie=cookie)
        self.flights[cookie] = Flight(endpoint, planned, machine)
        if self.first_start is None:
            self.first_start = now
        self.apply(cookie, "p1", machine.start(now, os.urandom), now)

    def apply(self, cookie: bytes, stage: str, effects, now: float) -> None:
        for e in effects:
            flight = self.flights.get(cookie)
            if flight is None:
                return
            if isinstance(e, Send):
                try:
                    flight.endpoint.send(e)
                except OSError:  # a full buffer: the machine's retransmission covers it
                    self.counts["send_error"] += 1
            elif isinstance(e, StartTimer):
                due = now + e.delay
                self.timers[cookie, stage, e.key] = due
                heapq.heappush(self.heap, (due, cookie, stage, e.key))
            elif isinstance(e, CancelTimer):
                self.timers.pop((cookie, stage, e.key), None)
            elif isinstance(e, Count):
                self.counts[e.name] += 1
            elif isinstance(e, Established):
                if stage == "p1":
                    self._pull(cookie, flight, e.sa, now)
                else:
                    self.finish(cookie, now, None)
            elif isinstance(e, Failed):
                self.finish(cookie, now, ("Phase 1: " if stage == "p1" else "PULL: ") + e.reason)

    def _pull(self, cookie: bytes, flight: Flight, sa, now: float) -> None:
        for key in [k for k in self.timers if k[0] == cookie and k[1] == "p1"]:
            del self.timers[key]
        flight.sa, flight.phase1_s = sa, now - flight.began
        flight.pull = PullInitiator(sa, None, group=GROUP, policy=self.member_policy)
        self.apply(cookie, "pull", flight.pull.start(now, os.urandom), now)

    def finish(self, cookie: bytes, now: float, reason: str | None) -> None:
        flight = self.flights.pop(cookie)
        for key in [k for k in self.timers if k[0] == cookie]:
            del self.timers[key]
        if reason is None:
            self.ends.append(now)
            self.latencies.append(now - flight.began)
            self.phase1_latencies.append(flight.phase1_s)
        elif reason.endswith(loadgen.TIMEOUT_REASONS) or "timed out" in reason:
            self.failures["timeout"] += 1
        else:
            self.failures[re.sub(r"gm\d+-\d+\." + re.escape(DOMAIN), "<member>", reason)] += 1

    def receive(self, endpoint: Endpoint, nat_t: bool, now: float) -> None:
        sock, local = (endpoint.nat_t, endpoint.nat_t_local) if nat_t else (endpoint.ike, endpoint.local)
        for _ in range(loadgen.READ_BATCH):
            try:
                data, peer = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if nat_t:
                if not data.startswith(NON_ESP_MARKER):
                    self.counts["not_ike"] += 1
                    continue
                data = data[len(NON_ESP_MARKER):]
            cookie = data[:8]
            flight = self.flights.get(cookie)
            if flight is None:
                self.counts["stray"] += 1  # a retransmission for a registration over, a PUSH
                continue
            try:
                message = decode_message(data)
            except DecodeError:
                self.counts["malformed"] += 1
                continue
            peer = peer[:2]
            if flight.pull is None or message.message_id == 0:
                effects = flight.phase1.receive(message, data, now, os.urandom, peer=peer, local=local)
                self.apply(cookie, "p1", effects, now)
            elif message.exchange_type == ExchangeType.INFORMATIONAL:
                got = informational.process(flight.sa, message)
                for item in getattr(got, "items", ()):
                    self.apply(cookie, "pull", flight.pull.notified(item, now, os.urandom), now)
                    if cookie not in self.flights:
                        break
            else:
                effects = flight.pull.receive(message, data, now, os.urandom, peer=peer, local=local)
                self.apply(cookie, "pull", effects, now)

    def fire_timers(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            due, cookie, stage, key = heapq.heappop(self.heap)
            if self.timers.get((cookie, stage, key)) != due:
                continue
            del self.timers[cookie, stage, key]
            flight = self.flights.get(cookie)
            if flight is not None:
                machine = flight.phase1 if stage == "p1" else flight.pull
                self.apply(cookie, stage, machine.timer(key, now, os.urandom), now)

    def run(self, go: float) -> dict:
        args = self.args
        stop_starting = go + args.duration
        hard_end = stop_starting + args.timeout + 1.0
        interval = 1.0 / self.rate if self.rate else 0.0
        planned = go
        while time.monotonic() < go:
            time.sleep(min(0.01, max(0.0, go - time.monotonic())))
        while True:
            now = time.monotonic()
            while self.started < self.quota and now < stop_starting and len(self.flights) < self.window:
                if self.rate:
                    if planned > now:
                        break
                    if now - planned > 0.01:
                        self.late_starts += 1
                    self.start_one(planned, now)
                    planned += interval
                else:
                    self.start_one(now, now)
            if not self.flights and (self.started >= self.quota or now >= stop_starting):
                break
            if now >= hard_end:
                break
            self.fire_timers(now)
            wait = min(self.heap[0][0] - now, 0.05) if self.heap else 0.05
            if self.rate and self.started < self.quota:
                wait = min(wait, planned - now)
            for key, _ in self.selector.select(max(wait, 0.0)):
                self.receive(*key.data, time.monotonic())
        return {"started": self.started, "ends": self.ends, "latencies": self.latencies,
                "phase1_latencies": self.phase1_latencies, "failures": dict(self.failures),
                "unfinished": len(self.flights), "counts": dict(self.counts), "late_starts": self.late_starts,
                "first_start": self.first_start, "cpu_s": time.process_time()}


def _worker_main(args, index, quota, window, rate, addresses, first_number, ready, go_box, results) -> None:
    worker, announced = None, False
    try:
        worker = Worker(args, index, quota, window, rate, addresses, first_number)
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


def load(args, count: int, rate: float | None, first_number: int) -> dict:
    """``count`` registrations from ``args.workers`` processes: closed loop (``rate`` None) or started at
    ``rate`` per second in all.  Members are numbered from ``first_number`` on.  Returns the merged tallies."""
    import multiprocessing

    workers = max(1, min(args.workers, count))
    quotas, windows = loadgen._shares(count, workers), loadgen._shares(args.concurrency, workers)
    addresses = loadgen.source_addresses(args.source, args.sources)
    shares = [addresses[i::workers] if len(addresses) >= workers else addresses for i in range(workers)]
    loadgen._allow_files(2 * max(map(len, shares)) + 64)
    ctx = multiprocessing.get_context("fork")
    ready, results = ctx.Queue(), ctx.Queue()
    boxes = [ctx.Queue() for _ in range(workers)]
    procs = [ctx.Process(target=_worker_main, daemon=True,
                         args=(args, i, quotas[i], max(1, windows[i]), rate / workers if rate else None, shares[i],
                               first_number + i * 10_000_000, ready, boxes[i], results))
             for i in range(workers)]
    limit = args.duration + args.timeout + 60.0
    for p in procs:
        p.start()
    tallies = {}
    try:
        for _ in procs:
            ready.get(timeout=60)
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
    merged = {"started": 0, "unfinished": 0, "late_starts": 0, "cpu_s": 0.0, "failures": Counter(),
              "counts": Counter(), "ends": [], "latencies": [], "phase1_latencies": [], "first_start": None}
    for t in tallies.values():
        for key in ("started", "unfinished", "late_starts", "cpu_s"):
            merged[key] += t[key]
        for key in ("failures", "counts"):
            merged[key].update(t[key])
        for key in ("ends", "latencies", "phase1_latencies"):
            merged[key].extend(t[key])
        if t["first_start"] is not None:
            merged["first_start"] = min(merged["first_start"] or t["first_start"], t["first_start"])
    merged["ends"].sort()
    return merged


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def summary(tally: dict, wanted_rate: float | None = None) -> dict:
    """Rate over the run (first start to last end), latency percentiles, failures."""
    latencies, p1 = sorted(tally["latencies"]), sorted(tally["phase1_latencies"])
    ends, failures = tally["ends"], Counter(tally["failures"])
    span = ends[-1] - tally["first_start"] if ends else 0.0
    timeouts = failures.pop("timeout", 0)
    out = {
        "registered": len(latencies),
        "seconds": round(span, 3),
        "registrations_per_s": round(len(latencies) / span, 1) if span > 0 else 0.0,
        "latency_ms": {"p50": _ms(loadgen.percentile(latencies, 50)), "p99": _ms(loadgen.percentile(latencies, 99)),
                       "max": _ms(latencies[-1] if latencies else None)},
        "phase1_latency_ms": {"p50": _ms(loadgen.percentile(p1, 50)), "p99": _ms(loadgen.percentile(p1, 99))},
        "failures": sum(failures.values()),
        "failure_reasons": dict(failures),
        "timeouts": timeouts,
        "unfinished": tally["unfinished"],
        "retransmits": tally["counts"].get("retransmit_sent", 0),
        "loadgen_cpu_s": round(tally["cpu_s"], 2),
    }
    if wanted_rate is not None:
        out["offered_rate_per_s"] = round(wanted_rate, 1)
        out["late_starts"] = tally["late_starts"]
    return out


# --- the key server -------------------------------------------------------------------------------------------------


def _private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _signing_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return _private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))


def lkh_depth(members: int) -> int:
    """The shallowest LKH tree (RFC 6407 section 5.6.3) with a leaf for every member (at least the default 16)."""
    return max(16, (max(members, 1) - 1).bit_length())


def key_server_config(workdir: Path, *, address: str, port: int, nat_t_port: int, group: str, psk: str,
                      members: int, unicast: bool = True, multicast: str | None = None, retransmits: int = 2) -> Path:
    """A key server config for the benchmarks: one Phase 1 proposal (aes128-sha256-<group>-psk), the PSK for any
    address, one group (number 4242) admitting ``*.bench.example`` with one TEK and a KEK, the store, control
    socket and log in ``workdir``."""
    psk_file = _private(workdir / "members.psk", psk.encode() + b"\n")
    key = _signing_key(workdir / "ks-signing.key")
    rekey = f"unicast = {str(unicast).lower()}\nretransmits = {retransmits}\n"
    if multicast:
        rekey += f'multicast_address = "{multicast}"\nttl = 1\n'
    text = f"""[server]
listen = [ {{ address = "{address}", port = {port} }} ]
nat_t_port = {nat_t_port}
[ike]
proposals = [ {{ encryption = "aes128", hash = "sha256", group = {loadgen.GROUPS[group]}, auth = "psk" }} ]
halfopen_per_peer = 100000
halfopen_total = 100000
[store]
path = "{workdir / 'state.db'}"
[control]
socket = "{workdir / 'ks.sock'}"
[[peers]]
address = "any"
psk_file = "{psk_file}"
[[groups]]
name = "bench"
number = {GROUP_NUMBER}
[[groups.members]]
pattern = "*.{DOMAIN}"
[[groups.teks]]
name = "bench-0"
transform = "aes-cbc"
integrity = "hmac-sha256"
destination = "239.1.1.1"
[groups.kek]
signature_key = "{key}"
lkh_depth = {lkh_depth(members)}
[groups.rekey]
source = "{address}"
{rekey}"""
    path = workdir / "gdoiserver.toml"
    path.write_text(text)
    return path


def _twistd() -> str:
    beside = Path(sys.executable).with_name("twistd")
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("twistd")
    if found is None:
        raise RuntimeError("missing tool: twistd (pip install twisted)")
    return found


def udp_bound(address: str, port: int) -> bool:
    """Whether an IPv4 UDP socket is bound to address:port in this namespace (/proc/net/udp)."""
    want = "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(address))[0], port)
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == want for line in list(f)[1:])


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, utime + stime of every thread; resident octets) of ``pid`` (proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[21]) * PAGE


class KeyServerProcess:
    """``twistd -n gdoi`` on ``config`` in ``workdir`` (or ``argv``, which must log to ``workdir/keyserver.log``),
    in its own process group; :meth:`stop` ends it."""

    def __init__(self, workdir: Path, config: Path, address: str, port: int, argv: list | None = None):
        self.workdir, self.address, self.port = workdir, address, port
        self.log = workdir / "keyserver.log"
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
        argv = argv or [_twistd(), "-n", "--pidfile=", "--logfile", str(self.log), "gdoi", "--config", str(config)]
        with open(workdir / "twistd.out", "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, process_group=0)
        self.pid = self.proc.pid
        try:
            self._wait(lambda: udp_bound(address, port), f"the key server to bind {address}:{port}")
            self._wait(lambda: READY_LINE in self.log.read_text(errors="replace"), "the key server's store")
        except BaseException:
            self.stop()
            raise

    def _wait(self, condition, what: str) -> None:
        limit = time.monotonic() + START_CAP
        while not condition():
            if self.proc.poll() is not None:
                out = (self.workdir / "twistd.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what}: the key server exited with {self.proc.returncode}\n{out}")
            if time.monotonic() > limit:
                raise RuntimeError(f"timed out after {START_CAP} s waiting for {what}")
            time.sleep(0.02)

    def control(self, method: str, path: str) -> dict:
        """One request to the control API (HTTP over the UNIX socket)."""
        import http.client

        class Connection(http.client.HTTPConnection):
            def connect(conn):
                conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.sock.settimeout(30)
                conn.sock.connect(str(self.workdir / "ks.sock"))

        c = Connection("localhost")
        try:
            c.request(method, "/v1/" + path)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def members(self) -> int | None:
        try:
            return sum(g["members"] for g in self.control("GET", "status")["groups"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass


class Sampler(threading.Thread):
    """Samples (monotonic time, CPU seconds, RSS octets) of ``pid`` every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float = SAMPLE_EVERY):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.monotonic(), *proc_stat(self.pid)))
            except OSError:
                return
            self._done.wait(self.every)

    def stop(self) -> list:
        self._done.set()
        self.join(5)
        return self.samples

    def at(self, t: float) -> tuple[float, float, int] | None:
        """The last sample taken at or before ``t``."""
        best = None
        for s in self.samples:
            if s[0] > t:
                break
            best = s
        return best


# --- the rounds -----------------------------------------------------------------------------------------------------


class Bench:
    """The measurements, each on a freshly started key server (see the module notes)."""

    def __init__(self, args, workdir: Path):
        self.args, self.workdir = args, workdir
        self.number = 0

    def start(self, name: str, members: int, argv=None) -> KeyServerProcess:
        """A fresh key server for up to ``members`` members; ``argv(config, folder)`` replaces twistd's command."""
        args = self.args
        folder = self.workdir / name
        folder.mkdir()
        config = key_server_config(folder, address=args.target, port=args.port, nat_t_port=args.nat_t_port,
                                   group=args.group, psk=args.psk, members=members)
        return KeyServerProcess(folder, config, args.target, args.port, argv(config, folder) if argv else None)

    def load(self, count: int, rate: float | None = None) -> dict:
        tally = load(self.args, count, rate, self.number)
        self.number += 100_000_000  # fresh identities for the next phase
        return tally

    def round(self, number: int) -> dict:
        args = self.args
        half_count = 0
        ks = self.start(f"round-{number}", args.count * 2 + 1000)
        try:
            cpu0 = proc_stat(ks.pid)[0]
            full = self.load(args.count)
            cpu = proc_stat(ks.pid)[0] - cpu0
            out = {"round": number, "full": summary(full)}
            rate = out["full"]["registrations_per_s"]
            out["full"]["keyserver_cpu_ms_per_registration"] = round(cpu * 1000 / max(1, out["full"]["registered"]),
                                                                     3)
            if args.half_seconds > 0 and rate > 0:
                half_rate = rate / 2
                half_count = max(1, int(half_rate * args.half_seconds))
                saved = args.concurrency
                args.concurrency = max(saved, 1024)  # open loop: the window must not be what paces it
                try:
                    out["half"] = summary(self.load(half_count, half_rate), half_rate)
                finally:
                    args.concurrency = saved
            out["keyserver_members"] = ks.members()
            out["keyserver_rss_mib"] = round(proc_stat(ks.pid)[1] / 2**20, 1)
        finally:
            ks.stop()
        return out

    def scale(self) -> dict:
        args = self.args
        checkpoints = sorted(args.scale)
        half = args.window // 2
        total = checkpoints[-1] + half
        ks = self.start("scale", total)
        sampler = Sampler(ks.pid)
        sampler.start()
        try:
            tally = self.load(total)
            members = ks.members()
        finally:
            try:
                samples = sampler.stop()
            finally:
                ks.stop()
        ends = tally["ends"]
        points = []
        for n in checkpoints:
            lo, hi = max(0, n - half), min(len(ends), n + half)
            if hi - lo < 2:
                points.append({"members": n, "registrations_per_s": None})
                continue
            span = ends[hi - 1] - ends[lo]
            a, b = sampler.at(ends[lo]), sampler.at(ends[hi - 1])
            point = {"members": n, "window": [lo, hi], "registrations_per_s": round((hi - lo - 1) / span, 1)}
            if a and b and b[0] > a[0]:
                point["keyserver_cpu_ms_per_registration"] = round((b[1] - a[1]) * 1000 / (hi - lo - 1), 3)
            at = sampler.at(ends[min(n, len(ends)) - 1])
            if at:
                point["keyserver_rss_mib"] = round(at[2] / 2**20, 1)
            points.append(point)
        rates = [p["registrations_per_s"] for p in points if p["registrations_per_s"]]
        series = []  # the rate in each tenth of the run, for a plot
        step = max(2, len(ends) // 10)
        for lo in range(0, len(ends) - 1, step):
            hi = min(len(ends) - 1, lo + step)
            if hi > lo and ends[hi] > ends[lo]:
                series.append([hi, round((hi - lo) / (ends[hi] - ends[lo]), 1)])
        return {
            "how": f"one run of {total} registrations; the rate at N members is measured over the {args.window} "
                   "registrations centred on the N-th",
            "registered": len(ends),
            "keyserver_members": members,
            "overall": summary(tally),
            "points": points,
            "flat_within": round(1 - min(rates) / max(rates), 3) if len(rates) > 1 else None,
            "series": series,
            "keyserver_samples": len(samples),
        }

    def profile(self, path: Path) -> dict:
        """One more closed-loop load of ``--count``, not counted, with the key server under ``py-spy record --gil
        --format raw`` (the samples where Python held the GIL); the functions with the most samples."""
        import phase1_vs_charon

        ks = self.start("profile", self.args.count + 1000)
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(ks.pid), "--format", "raw", "--rate", "250",
                                "--gil", "-o", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, process_group=0)
        try:
            time.sleep(1.0)  # py-spy attaches before the load begins
            tally = summary(self.load(self.args.count))
        finally:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                try:
                    spy.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(spy.pid, signal.SIGKILL)
                    spy.wait(5)
            ks.stop()
        return {"file": str(path), "load": tally, **phase1_vs_charon.profile_summary(path, top=25)}

    def run(self) -> dict:
        rounds = [self.round(i) for i in range(1, self.args.rounds + 1)]
        out = {"rounds": rounds}
        if self.args.scale:
            out["scale"] = self.scale()
        if self.args.profile:
            out["profile"] = self.profile(Path(self.args.profile))
        return out


def medians(rounds: list[dict]) -> dict:
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out = {}
    for phase in ("full", "half"):
        rs = [r[phase] for r in rounds if phase in r]
        if not rs:
            continue
        out[phase] = {
            "registrations_per_s": med(r["registrations_per_s"] for r in rs),
            "rates": [r["registrations_per_s"] for r in rs],
            "p50_ms": med(r["latency_ms"]["p50"] for r in rs),
            "p99_ms": med(r["latency_ms"]["p99"] for r in rs),
            "failures": sum(r["failures"] for r in rs),
            "timeouts": sum(r["timeouts"] for r in rs),
            "registered": sum(r["registered"] for r in rs),
        }
        if phase == "full":
            out[phase]["keyserver_cpu_ms_per_registration"] = med(r["keyserver_cpu_ms_per_registration"] for r in rs)
        else:
            out[phase]["offered_rate_per_s"] = med(r["offered_rate_per_s"] for r in rs)
    return out


# --- namespaces -----------------------------------------------------------------------------------------------------


def use_namespace(choice: str) -> bool:
    possible = os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None
    if choice == "yes" and not possible:
        raise RuntimeError("missing tool: unshare as root (--namespace yes needs root, unshare and ip)")
    return possible if choice == "auto" else choice == "yes"


def in_namespace(script: Path, args, workdir: Path, budget: float) -> dict:
    """Run ``script --inside PLAN`` in a fresh net+pid namespace (its processes die with it); its result."""
    plan = workdir / "plan.json"
    plan.write_text(json.dumps(vars(args)))
    argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, str(script),
            "--inside", str(plan)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = proc.communicate(timeout=budget)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        output = f"the namespace did not finish within {budget:.0f} s and was killed"
    finally:
        if proc.poll() is None:  # a timeout, or we are being stopped: the namespace ends with unshare
            proc.kill()
            proc.wait()
    path = workdir / "result.json"
    result = json.loads(path.read_text()) if path.exists() else {"error": f"no result\n{output[-3000:]}"}
    if result.get("error"):
        raise RuntimeError(f"{result['error']}\n{output[-2000:]}")
    return result


def inside(plan: str, bench_class=None) -> int:
    """The namespace's side: bring lo up, run the benchmark, write result.json beside the plan."""
    workdir = Path(plan).parent
    args = argparse.Namespace(**json.loads(Path(plan).read_text()))
    out = {"error": None}
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        out["result"] = (bench_class or Bench)(args, workdir).run()
    except Exception as e:  # reported through result.json
        out["error"] = f"{type(e).__name__}: {e}"
    (workdir / "result.json").write_text(json.dumps(out))
    return 0


def run(args, bench_class=None, script: Path | None = None, seconds: float | None = None) -> dict:
    """Run ``bench_class`` (default :class:`Bench`) as ``args`` say, in a private namespace when asked and
    possible (re-executing ``script --inside``, for at most ``seconds``), and return its result."""
    bench_class = bench_class or Bench
    workdir = Path(tempfile.mkdtemp(prefix="greg-"))
    try:
        if use_namespace(args.namespace):
            args.target, args.port, args.nat_t_port = NS_TARGET, NS_PORT, 4500
            result = in_namespace(script or Path(__file__).resolve(), args, workdir,
                                  seconds or budget(args))["result"]
            result["where"] = f"a private network namespace; key server on {NS_TARGET}:{NS_PORT}"
        else:
            args.target = "127.0.0.1"
            args.port, args.nat_t_port = free_udp_port(args.target), free_udp_port(args.target)
            result = bench_class(args, workdir).run()
            result["where"] = f"this network namespace; key server on {args.target}:{args.port}"
        if args.keep:
            result["workdir"] = str(workdir)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def budget(args) -> float:
    per_load = args.duration + args.timeout + 60 + START_CAP
    return per_load * (2 * args.rounds + (1 if args.scale else 0)) + 60


# --- the command ----------------------------------------------------------------------------------------------------


def report(args, result: dict) -> dict:
    out = {
        "benchmark": "registration",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["benchmarks/registration.py", *sys.argv[1:]]),
        "parameters": {
            "count_per_round": args.count, "rounds": args.rounds, "concurrency": args.concurrency,
            "workers": args.workers, "group": args.group, "proposal": f"aes128-sha256-{args.group}-psk",
            "phase1_doi": "GDOI (2)", "pull": "no PFS, one TEK (aes-cbc hmac-sha256), KEK with LKH",
            "sources": f"{args.sources} from {args.source}", "identities": f"one FQDN per member (*.{DOMAIN})",
            "half_seconds": args.half_seconds, "scale": args.scale, "window": args.window,
            "timeout_s": args.timeout, "where": result.get("where"),
        },
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        **medians(result["rounds"]),
    }
    if "full" in out and "half" in out:
        out["goals"] = {
            "rate_at_least_1000_per_s": out["full"]["registrations_per_s"] >= 1000,
            "p99_under_100_ms_at_half_rate": (out["half"]["p99_ms"] or 1e9) < 100,
        }
    if "scale" in result:
        out["scale"] = result["scale"]
        if out["scale"]["flat_within"] is not None:
            out.setdefault("goals", {})["flat_within_20_percent"] = out["scale"]["flat_within"] <= 0.2
    out["rounds"] = result["rounds"]
    for key in ("profile", "workdir"):
        if key in result:
            out[key] = result[key]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=5000, help="registrations per round (closed loop)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh key server")
    p.add_argument("--concurrency", type=int, default=64, help="registrations in flight at most (closed loop)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="load generator processes")
    p.add_argument("--group", choices=sorted(loadgen.GROUPS), default="ecp256", help="Phase 1 Diffie-Hellman group")
    p.add_argument("--source", default=SOURCE, help="the first member address")
    p.add_argument("--sources", type=int, default=1000, help="member addresses (identities are one per member)")
    p.add_argument("--half-seconds", type=float, default=10.0,
                   help="seconds of load at half the round's rate (0: none)")
    p.add_argument("--scale", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[1000, 10000, 100000],
                   help="member counts at which to measure the rate, comma-separated ('' for none)")
    p.add_argument("--window", type=int, default=1000, help="registrations in each --scale window")
    p.add_argument("--duration", type=float, default=600.0, help="seconds after which a load starts no more")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one registration may take")
    p.add_argument("--retransmit", type=float, default=2.0, help="seconds before a first retransmission")
    p.add_argument("--psk", default=PSK, help=argparse.SUPPRESS)
    p.add_argument("--namespace", choices=("auto", "yes", "no"), default="auto",
                   help="run in a private network namespace (needs root; auto: when possible)")
    p.add_argument("--profile", metavar="FILE",
                   help="py-spy raw output of one more load of --count (needs py-spy), not counted")
    p.add_argument("--keep", action="store_true", help="keep the working folder (configs, logs) and name it")
    return p


def exit_on_sigterm() -> None:
    """SIGTERM ends the command through SystemExit, so that what it started is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    exit_on_sigterm()
    if argv[:1] == ["--inside"]:
        return inside(argv[1])
    args = parser().parse_args(argv)
    if min(args.count, args.concurrency, args.workers, args.sources, args.window) < 1 or args.rounds < 0:
        parser().error("--count, --concurrency, --workers, --sources and --window must be at least 1, --rounds 0 "
                       "or more")
    if args.profile:
        if shutil.which("py-spy") is None:
            parser().error("--profile needs py-spy (pip install py-spy)")
        args.profile = str(Path(args.profile).resolve())
    try:
        result = run(args)
    except RuntimeError as e:
        print(f"registration: {e}", file=sys.stderr)
        return 1
    out = report(args, result)
    print(json.dumps(out, indent=2))
    done = [out.get("full", {}).get("registered"), out.get("scale", {}).get("registered"),
            out.get("profile", {}).get("load", {}).get("registered")]
    return 0 if any(done) else 1


if __name__ == "__main__":
    sys.exit(main())
