"""Memory per registered member: the key server's resident memory before and after N registrations.

Run:  python benchmarks/memory.py [--members 10000,100000] [--settle 65] [--attribute 0] [--namespace auto]

The key server is the twistd daemon of benchmarks/registration.py (same config, same SQLite store in the working
folder), and the members register through it for real: Main Mode PSK and GROUPKEY-PULL from the load generator
of benchmarks/registration.py, one distinct identity per member.  The RSS (``/proc/PID/stat``) is read once the
key server is ready, then when the count reaches each ``--members`` value, and again ``--settle`` seconds later,
when the finished exchanges the key server keeps to answer retransmissions (``ike.exchange_timeout``, 60 s by
default) are gone.  Octets per member = (settled RSS - RSS before) / members the key server holds.  What each
member leaves behind, besides its registration, is its Phase 1 SA (the key server keeps it until its lifetime
ends, 8 hours by default, as the members do).

``--attribute N`` runs the same key server in-process instead (``gdoiserver.tap.makeService``, the code twistd
runs, with the reactor and a log file but without twistd) under ``tracemalloc``, registers N members, and
reports where the memory that stays was allocated: the source lines holding the most octets per member.
"""

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import registration  # noqa: E402

#: Seconds the in-process key server may take to write a tracemalloc snapshot.
SNAPSHOT_CAP = 120.0


def _rss(pid: int) -> int:
    return registration.proc_stat(pid)[1]


def _mib(octets: int) -> float:
    return round(octets / 2**20, 1)


class MemoryBench(registration.Bench):
    """RSS at each checkpoint of one key server (and, with ``attribute``, the tracemalloc census)."""

    def run(self) -> dict:
        out = {}
        if self.args.members:
            out["rss"] = self.rss()
        if self.args.attribute:
            out["attribution"] = self.attribution(self.args.attribute)
        return out

    def _register(self, ks, target: int, done: int) -> tuple[int, dict]:
        tally = self.load(target - done)
        return done + len(tally["latencies"]), registration.summary(tally)

    def rss(self) -> dict:
        args = self.args
        checkpoints = sorted(args.members)
        ks = self.start("rss", checkpoints[-1])
        try:
            before = _rss(ks.pid)
            points, done = [], 0
            for n in checkpoints:
                done, load = self._register(ks, n, done)
                under_load = _rss(ks.pid)
                time.sleep(args.settle)
                settled, members = _rss(ks.pid), ks.members()
                held = members or done
                points.append({
                    "members": held, "registered": done, "failures": load["failures"] + load["timeouts"],
                    "registrations_per_s": load["registrations_per_s"],
                    "rss_mib_at_count": _mib(under_load), "rss_mib_settled": _mib(settled),
                    "octets_per_member": round((settled - before) / held) if held else None,
                    "octets_per_member_at_count": round((under_load - before) / held) if held else None,
                })
        finally:
            ks.stop()
        return {"rss_mib_before": _mib(before), "settle_s": args.settle, "points": points}

    def attribution(self, members: int) -> dict:
        import tracemalloc

        folder_box = {}

        def serve_argv(config, folder):
            folder_box["folder"] = folder
            return [sys.executable, str(Path(__file__).resolve()), "--serve", str(config)]

        ks = self.start("attribute", members, argv=serve_argv)
        folder = folder_box["folder"]
        try:
            before = self._snapshot(ks, folder / "before.snapshot")
            done, load = self._register(ks, members, 0)
            time.sleep(self.args.settle)
            held = ks.members() or done
            after = self._snapshot(ks, folder / "after.snapshot")
        finally:
            ks.stop()
        after = after.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = after.compare_to(before, "lineno")
        grown = sum(s.size_diff for s in stats)
        top = []
        for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:25]:
            frame = s.traceback[0]
            top.append({"where": f"{registration_path(frame.filename)}:{frame.lineno}",
                        "octets_per_member": round(s.size_diff / held, 1),
                        "blocks_per_member": round(s.count_diff / held, 2)})
        by_file = {}
        for s in stats:
            name = registration_path(s.traceback[0].filename)
            by_file[name] = by_file.get(name, 0) + s.size_diff
        files = sorted(by_file.items(), key=lambda kv: kv[1], reverse=True)[:15]
        return {
            "members": held, "registered": done, "failures": load["failures"] + load["timeouts"],
            "traced_octets_per_member": round(grown / held, 1),
            "top_lines": top,
            "top_files": [{"file": f, "octets_per_member": round(v / held, 1)} for f, v in files],
            "how": "tracemalloc (1 frame) in the key server, snapshots after gc.collect() before the load and "
                   f"{self.args.settle} s after it; growth by allocating line",
        }

    def _snapshot(self, ks, path: Path):
        import tracemalloc

        os.kill(ks.pid, signal.SIGUSR1)
        done = path.with_suffix(".done")
        limit = time.monotonic() + SNAPSHOT_CAP
        while not done.exists():
            if time.monotonic() > limit or ks.proc.poll() is not None:
                raise RuntimeError("the in-process key server wrote no tracemalloc snapshot")
            time.sleep(0.1)
        return tracemalloc.Snapshot.load(str(done.with_suffix(".snapshot")))


def registration_path(filename: str) -> str:
    """A source path from gdoiserver/ on, or after site-packages/, else its last two parts."""
    if "/gdoiserver/" in filename:
        return "gdoiserver/" + filename.rsplit("/gdoiserver/", 1)[1]
    if "/site-packages/" in filename:
        return filename.rsplit("/site-packages/", 1)[1]
    return "/".join(filename.split("/")[-2:])


def serve(config: str) -> int:
    """The key server in this process under tracemalloc, as twistd would make it; SIGUSR1 writes a snapshot
    (``before``, then ``after``) beside the config, SIGTERM ends it."""
    import gc
    import tracemalloc

    tracemalloc.start(1)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    folder = Path(config).parent
    log = open(folder / "keyserver.log", "a", encoding="utf-8")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)
    from gdoiserver import tap

    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options)
    service.privilegedStartService()
    service.startService()
    names = iter(["before", "after"])

    def snapshot():
        name = next(names, "later")
        gc.collect()
        path = folder / f"{name}.snapshot"
        tracemalloc.take_snapshot().dump(str(path))
        path.with_suffix(".done").touch()

    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(snapshot))
    signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(reactor.stop))
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run(installSignalHandlers=False)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[10000, 100000],
                   help="member counts at which to read the RSS, comma-separated ('' for none)")
    p.add_argument("--settle", type=float, default=65.0,
                   help="seconds to wait after each count before reading the RSS again (ike.exchange_timeout + 5)")
    p.add_argument("--attribute", type=int, default=0, metavar="N",
                   help="also register N members with an in-process key server under tracemalloc")
    p.add_argument("--group", choices=("ecp256", "modp2048"), default="ecp256", help="Phase 1 group")
    p.add_argument("--concurrency", type=int, default=64, help="registrations in flight at most")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="load generator processes")
    p.add_argument("--sources", type=int, default=1000, help="member addresses (identities are one per member)")
    p.add_argument("--namespace", choices=("auto", "yes", "no"), default="auto",
                   help="run in a private network namespace (needs root; auto: when possible)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (configs, logs) and name it")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    registration.exit_on_sigterm()
    if argv[:1] == ["--inside"]:
        return registration.inside(argv[1], MemoryBench)
    if argv[:1] == ["--serve"]:
        return serve(argv[1])
    args = registration.parser().parse_args([])  # the load generator's settings
    for key, value in vars(parser().parse_args(argv)).items():
        setattr(args, key, value)
    if not args.members and not args.attribute:
        parser().error("give --members counts, --attribute N, or both")
    if min(args.members or [1]) < 1 or args.settle < 0 or args.attribute < 0:
        parser().error("--members counts must be at least 1, --settle and --attribute 0 or more")
    seconds = 600 + (max(args.members or [0]) + args.attribute) / 50 + 2 * args.settle * (len(args.members) + 1)
    try:
        result = registration.run(args, MemoryBench, Path(__file__).resolve(), seconds)
    except RuntimeError as e:
        print(f"memory: {e}", file=sys.stderr)
        return 1
    out = {
        "benchmark": "memory-per-member",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["benchmarks/memory.py", *sys.argv[1:]]),
        "parameters": {"members": args.members, "settle_s": args.settle, "attribute": args.attribute,
                       "group": args.group, "concurrency": args.concurrency, "workers": args.workers,
                       "sources": args.sources, "where": result.pop("where", None),
                       "key_server": "twistd gdoi, SQLite store (benchmarks/registration.py's config)"},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        **result,
    }
    points = out.get("rss", {}).get("points", [])
    if points:
        out["goals"] = {"at_most_4_KiB_per_member": all((p["octets_per_member"] or 0) <= 4096 for p in points)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
