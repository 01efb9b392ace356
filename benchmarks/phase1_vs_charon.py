"""Phase 1 side by side: our responder against strongSwan's charon, under the same load, in one run.

Run (as root; it makes its own network namespace):
    python benchmarks/phase1_vs_charon.py [--count 3000] [--rounds 3] [--concurrency 64] [--workers 2]
                                          [--sources N] [--group ecp256|modp2048] [--pin] [--profile FILE]
                                          [--keep]

Inside a fresh ``unshare --net --mount --pid`` namespace (started, and its processes stopped, with the helpers of
tests/interop/strongswan.py) the script runs ``--rounds`` rounds, each side once per round, interleaved
ours/charon/ours/charon so that both share the machine's noise.  In each, a freshly started responder listens on
127.0.0.2:500 and 4500, and benchmarks/loadgen.py plays ``--count`` Main Mode PSK initiators (aes128-sha256 and
the group, the same PSK) from ``--sources`` addresses counting up from 127.0.1.1 (by default one per initiator:
members are distinct hosts, and charon keeps per-peer state that many SAs from one address make costly):

- ours: ``twistd -n --pidfile= --logfile … gdoi`` with a generated config (the one proposal, ``[[peers]] address
  = "any"``, the half-open caps set to ``--per-peer-cap``);
- charon: ``/usr/lib/ipsec/charon`` with tests/interop/configs' responder (``mm-psk``, ``unique = never``), its
  IKE proposal narrowed to the same suite and ``remote_addrs`` widened to 127.0.0.0/8, logging at level 0 (one
  line per SA, as ours; the tests' level 4 dumps keys), and sized for many SAs as strongswan.conf(5) describes:
  ``ikesa_table_size``, ``ikesa_table_segments``, and ``block_threshold`` (its half-open cap per peer address,
  default 5) set to ``--per-peer-cap``.

Prints one JSON object: the parameters, each round, and per side the medians of handshakes/s, p50 and p99
latency, the responder's CPU milliseconds per handshake, total failures and timeouts; then the ratio ours/charon
of the median rates (and of CPU per handshake).  ``--pin`` puts each responder on CPU 0 alone and the load
generator on the others, to compare what each responder does with one core.  ``--profile FILE`` adds one more
round of ours, not counted, under ``py-spy record --gil --format raw`` (FILE gets the folded stacks of the samples
where Python held the GIL, i.e. computed), and reports its top functions.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import loadgen  # noqa: E402
from tests.interop import strongswan as sw  # noqa: E402

OURS, CHARON = "ours", "charon"
TARGET = sw.ADDRESS[sw.RESPONDER]
#: The initiators' first address and where all --sources of them lie: charon's mm-psk takes that network, and
#: 127.0.0.1 stays out of it, as the configs' am-psk names it alone (charon would pick am-psk's proposal for it).
SOURCE, SOURCE_NETWORK = "127.0.1.1", "127.0.0.0/8"
#: The engine's log line for each SA (gdoiserver/net/ike.py).
OUR_SA_LINE = "ISAKMP SA established: responder SA"
#: With --pin: the responder runs on CPU 0, the load generator (and everything else we start) on the others.
RESPONDER_CPUS = {0}
#: Bounds of the waits around each round, in seconds.
START_CAP, SETTLE = 20.0, 1.0


def missing_tool() -> str | None:
    """The reason (beginning "missing tool:") this benchmark cannot run here, else None."""
    for path in (sw.DAEMON[sw.RESPONDER], sw.SWANCTL):
        if not os.access(path, os.X_OK):
            return f"missing tool: strongswan ({path}; apt-get install strongswan strongswan-swanctl)"
    if shutil.which("unshare") is None:
        return "missing tool: unshare (util-linux)"
    if os.geteuid() != 0:
        return "missing tool: unshare as root (network namespaces need root)"
    if _twistd() is None:
        return "missing tool: twistd (pip install twisted)"
    return None


def _twistd() -> str | None:
    beside = Path(sys.executable).with_name("twistd")
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("twistd")


# --- outside: make the namespace, print the result ---------------------------------------------------------------


def run(args) -> dict:
    """Run the whole comparison in a new namespace and return the report (raises RuntimeError on failure)."""
    reason = missing_tool()
    if reason:
        raise RuntimeError(reason)
    workdir = Path(tempfile.mkdtemp(prefix="gp1-"))  # short: charon's vici socket path must fit sun_path
    try:
        plan = workdir / "plan.json"
        plan.write_text(json.dumps(vars(args)))
        budget = _budget(args) + 30
        argv = ["unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                "--kill-child", sys.executable, str(Path(__file__).resolve()), "--inside", str(plan)]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=budget, check=False)
            output = (proc.stdout + proc.stderr).decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc, output = None, f"the namespace did not finish within {budget:.0f} s and was killed"
        result_path = workdir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        if result is None or result.get("error"):
            why = result["error"] if result else f"exit status {proc and proc.returncode}"
            raise RuntimeError(f"{why}\n{output[-3000:]}\n{_log_tails(workdir)}")
        if args.keep:
            result["workdir"] = str(workdir)
        return result
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _budget(args) -> float:
    """Seconds the whole run may take: each round's load, plus the daemons' start and stop."""
    per_round = args.duration + args.timeout + 3 * START_CAP + 30
    return per_round * (2 * args.rounds + 1)


def _log_tails(workdir: Path, lines: int = 15) -> str:
    parts = []
    for log in sorted(workdir.rglob("*.log")):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        parts.append(f"--- {log.relative_to(workdir)} ---\n{tail}")
    return "\n".join(parts)


# --- inside the namespace ---------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (proc(5), /proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(pid: int, cpus: set) -> None:
    """Bind every thread of ``pid`` to ``cpus`` (sched_setaffinity(2); threads made later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _rss_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return round(int(match[1]) / 1024, 1) if match else 0.0


def _private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def our_config(workdir: Path, args) -> Path:
    """Our daemon's TOML: 127.0.0.2:500 (NAT-T 4500), one proposal, one PSK for any address."""
    psk = _private(workdir / "gdoi.psk", args.psk.encode() + b"\n")
    group = loadgen.GROUPS[args.group]
    text = f"""[server]
listen = [ {{ address = "{TARGET}", port = 500 }} ]
nat_t_port = 4500
[ike]
proposals = [ {{ encryption = "aes128", hash = "sha256", group = {group}, auth = "psk" }} ]
halfopen_per_peer = {args.per_peer_cap}
halfopen_total = {args.per_peer_cap}
[[peers]]
address = "any"
psk_file = "{psk}"
"""
    path = workdir / "gdoi.toml"
    path.write_text(text)
    return path


def charon_settings(args) -> dict:
    """strongswan.conf(5) settings added for the benchmark, after "charon {"."""
    return {"ikesa_table_size": 1024, "ikesa_table_segments": 16, "block_threshold": args.per_peer_cap}


def charon_config(workdir: Path, args) -> Path:
    """tests/interop/configs' responder, tuned as the module notes say; returns its folder."""
    folder = sw.prepare(workdir, sides=(sw.RESPONDER,), profiles=("psk",))[sw.RESPONDER]
    conf = folder / "strongswan.conf"
    text = conf.read_text()
    added = "".join(f"  {k} = {v}\n" for k, v in charon_settings(args).items())
    text, n = re.subn(r"^charon \{\n", lambda m: m[0] + added, text, count=1, flags=re.M)
    text, m = re.subn(r"^(\s*)(default|ike|cfg|knl|enc) = \d+.*$", r"\1\2 = 0", text, flags=re.M)
    if n != 1 or m != 5:
        raise RuntimeError("configs/responder.strongswan.conf changed shape: cannot tune it")
    conf.write_text(text)
    swanctl = folder / "swanctl.conf"
    text = swanctl.read_text()
    if "unique = never" not in text:
        raise RuntimeError("configs/responder.psk.swanctl.conf lost unique = never")
    proposal = f"aes128-sha256-{args.group}"  # strongSwan's names for the groups are loadgen's
    text, n = re.subn(r"^(\s*)proposals = .*$", rf"\1proposals = {proposal}", text, count=1, flags=re.M)
    text, m = re.subn(r"^(\s*)remote_addrs = .*$", rf"\1remote_addrs = {SOURCE_NETWORK}", text, count=1, flags=re.M)
    if n != 1 or m != 1:
        raise RuntimeError("configs/responder.psk.swanctl.conf has no IKE proposals or remote_addrs line")
    swanctl.write_text(text)
    return folder


class Bench:
    """The rounds, inside the namespace; every process started goes through ``ns`` and is stopped by it."""

    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.ns = sw._Namespace({"workdir": str(workdir), "timeout": _budget(args)})
        self.config = our_config(workdir, args)
        self.charon_dir = charon_config(workdir, args)
        self.load = loadgen.parser().parse_args([
            "--target", TARGET, "--source", SOURCE, "--sources", str(args.sources), "--count", str(args.count),
            "--concurrency", str(args.concurrency), "--workers", str(args.workers), "--group", args.group,
            "--duration", str(args.duration), "--psk", args.psk, "--timeout", str(args.timeout),
        ])

    def start_ours(self, name: str):
        log = self.workdir / f"{name}.daemon.log"
        argv = [_twistd(), "-n", "--pidfile=", "--logfile", str(log), "gdoi", "--config", str(self.config)]
        path = os.environ.get("PYTHONPATH")
        env = {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
        p = self.ns.start(name, argv, env)
        for port in (500, 4500):
            self.ns.poll(lambda: sw._udp_bound(TARGET, port), f"our daemon to bind {TARGET}:{port}", START_CAP, p)

        def established() -> int:  # twistd rotates its log file every megabyte: log, log.1, log.2...
            return sum(f.read_text(errors="replace").count(OUR_SA_LINE) for f in self.workdir.glob(f"{log.name}*"))

        return p, established

    def start_charon(self, name: str):
        (self.charon_dir / "charon.vici").unlink(missing_ok=True)  # left by the previous round's charon
        self.ns.start_strongswan(sw.RESPONDER)
        _, p = self.ns.procs[-1]

        def established() -> int:
            out = self.ns.swanctl(sw.RESPONDER, "--stats")[1]
            match = re.search(r"IKE_SAs: (\d+) total", out)
            return int(match[1]) if match else -1

        return p, established

    def round(self, side: str, number: int, profile: Path | None = None) -> dict:
        name = f"{side}-{number}"
        p, responder_count = (self.start_ours if side == OURS else self.start_charon)(name)
        spy = None
        try:
            if self.args.pin:
                _pin(p.pid, RESPONDER_CPUS)
            cpu0 = _cpu_seconds(p.pid)
            if profile is not None:  # --gil: samples where Python runs, not where it waits or is preempted
                spy = self.ns.start("py-spy", ["py-spy", "record", "--pid", str(p.pid), "--format", "raw",
                                               "--rate", "500", "--gil", "-o", str(profile)])
                time.sleep(SETTLE)  # py-spy attaches before the load begins
            report = loadgen.run(self.load)
            cpu = _cpu_seconds(p.pid) - cpu0
            rss = _rss_mib(p.pid)
            seen = responder_count()
        finally:
            if spy is not None and spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    pass
            self.ns.stop(name, p)
        n = report["established"]
        return {
            "side": side,
            "round": number,
            "established": n,
            "responder_established": seen,
            "handshakes_per_s": report["handshakes_per_s"],
            "latency_ms": report["latency_ms"],
            "failures": report["failures"],
            "failure_reasons": report["failure_reasons"],
            "timeouts": report["timeouts"],
            "retransmits": report["retransmits"],
            "seconds": report["seconds"],
            "responder_cpu_s": round(cpu, 2),
            "responder_cpu_ms_per_handshake": round(cpu * 1000 / n, 3) if n else None,
            "responder_rss_mib": rss,
            "loadgen_cpu_s": report["loadgen_cpu_s"],
        }

    def run(self) -> dict:
        rounds = []
        if self.args.pin:
            os.sched_setaffinity(0, set(range(os.cpu_count())) - RESPONDER_CPUS)  # inherited by what we start
        for number in range(1, self.args.rounds + 1):
            for side in (OURS, CHARON):
                rounds.append(self.round(side, number))
        result = {"rounds": rounds}
        if self.args.profile:
            path = Path(self.args.profile)
            extra = self.round(OURS, 0, profile=path)
            result["profile"] = {"file": str(path), "round": extra, **profile_summary(path)}
        return result


def profile_summary(path: Path, top: int = 15) -> dict:
    """The functions that hold most samples of a ``py-spy --format raw`` file: by own time (the innermost frame)
    and by inclusive time (anywhere on the stack), each as [function (file), percent of samples]."""
    own, inclusive, total = Counter(), Counter(), 0
    frame = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for f in stack.split(";"):
            m = frame.match(f)
            names.append(f"{m[1]} ({_short(m[2])})" if m else f)
        own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n

    def table(counter):
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "top_own": table(own), "top_inclusive": table(inclusive)}


def _short(filename: str) -> str:
    """A source path from gdoiserver/ on, or from after site-packages/, else as it is."""
    if "/gdoiserver/" in filename:
        return "gdoiserver/" + filename.rsplit("/gdoiserver/", 1)[1]
    return filename.rsplit("/site-packages/", 1)[-1]


def _inside(plan_path: str) -> int:
    args = argparse.Namespace(**json.loads(Path(plan_path).read_text()))
    workdir = Path(plan_path).parent
    out = {"error": None}
    bench = None
    try:
        bench = Bench(args, workdir)
        bench.ns.setup()
        out.update(bench.run())
    except Exception as e:  # reported through result.json with the logs' tails
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if bench is not None:
            bench.ns.stop_all()
        (workdir / "result.json").write_text(json.dumps(out))
    return 0


# --- the report -------------------------------------------------------------------------------------------------


def summarize(args, result: dict) -> dict:
    sides = {}
    for side in (OURS, CHARON):
        rs = [r for r in result["rounds"] if r["side"] == side]
        cpu = [r["responder_cpu_ms_per_handshake"] for r in rs if r["responder_cpu_ms_per_handshake"] is not None]
        sides[side] = {
            "handshakes_per_s": statistics.median(r["handshakes_per_s"] for r in rs),
            "rates": [r["handshakes_per_s"] for r in rs],
            "p50_ms": statistics.median(r["latency_ms"]["p50"] or 0 for r in rs),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] or 0 for r in rs),
            "responder_cpu_ms_per_handshake": statistics.median(cpu) if cpu else None,
            "failures": sum(r["failures"] for r in rs),
            "timeouts": sum(r["timeouts"] for r in rs),
            "established": sum(r["established"] for r in rs),
        }
    ours, charon = sides[OURS], sides[CHARON]
    cpu_ratio = None
    if ours["responder_cpu_ms_per_handshake"] and charon["responder_cpu_ms_per_handshake"]:
        cpu_ratio = round(charon["responder_cpu_ms_per_handshake"] / ours["responder_cpu_ms_per_handshake"], 3)
    report = {
        "benchmark": "phase1-vs-charon",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.relpath(__file__, REPO) if __file__ else "phase1_vs_charon.py",
                             *sys.argv[1:]]),
        "parameters": {
            "count_per_round": args.count, "rounds": args.rounds, "concurrency": args.concurrency,
            "workers": args.workers, "group": args.group, "proposal": f"aes128-sha256-{args.group}-psk",
            "timeout_s": args.timeout, "duration_cap_s": args.duration, "per_peer_cap": args.per_peer_cap,
            "pinned": f"responder on CPU {sorted(RESPONDER_CPUS)}, load generator on the others" if args.pin else None,
            "responder": f"{TARGET}:500 (NAT-T 4500)", "sources": f"{args.sources} from {SOURCE}",
            "charon_settings": charon_settings(args),
        },
        "machine": {"cores": os.cpu_count()},
        OURS: sides[OURS],
        CHARON: sides[CHARON],
        "ratio_ours_over_charon": round(ours["handshakes_per_s"] / charon["handshakes_per_s"], 3)
        if charon["handshakes_per_s"] else None,
        "cpu_ratio_charon_over_ours": cpu_ratio,
        "rounds": result["rounds"],
    }
    for key in ("profile", "workdir"):
        if key in result:
            report[key] = result[key]
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000, help="handshakes per round and side")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each runs ours, then charon)")
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight at most")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="load generator processes")
    p.add_argument("--group", choices=sorted(loadgen.GROUPS), default="ecp256", help="Diffie-Hellman group")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one handshake may take")
    p.add_argument("--duration", type=float, default=120.0, help="seconds after which a round starts no more")
    p.add_argument("--psk", default=sw.PSK, help="the pre-shared key (text) both responders use")
    p.add_argument("--sources", type=int,
                   help=f"initiator addresses from {SOURCE} up (distinct hosts, each with its own ID); default: "
                        "--count, one address per initiator, as a member has its own")
    p.add_argument("--per-peer-cap", type=int, default=10000,
                   help="half-open SAs allowed per peer address (ours: ike.halfopen_*; charon: block_threshold)")
    p.add_argument("--pin", action="store_true",
                   help="run each responder on CPU 0 alone and the load generator on the other CPUs")
    p.add_argument("--profile", metavar="FILE", help="py-spy raw output of one extra round of ours")
    p.add_argument("--keep", action="store_true", help="keep the working folder (logs, configs) and name it")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--inside"]:
        return _inside(argv[1])
    args = parser().parse_args(argv)
    if args.sources is None:
        args.sources = args.count
    if min(args.count, args.rounds, args.concurrency, args.workers, args.sources) < 1:
        parser().error("--count, --rounds, --concurrency, --workers and --sources must be at least 1")
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    if args.pin and (os.cpu_count() or 1) < 2:
        parser().error("--pin needs at least 2 CPUs")
    if args.per_peer_cap < args.concurrency:
        parser().error("--per-peer-cap must be at least --concurrency")
    try:
        result = run(args)
    except RuntimeError as e:
        print(f"phase1_vs_charon: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summarize(args, result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
