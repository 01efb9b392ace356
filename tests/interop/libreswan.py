"""Run libreswan 4.10's pluto as an IKEv1 initiator against our daemon in a private namespace, with impairments.

Debian's libreswan package conflicts with strongSwan's, so ``scripts/install-libreswan`` unpacks it into a
private prefix (:data:`PREFIX`) instead of installing it.  pluto runs its ``addconn`` helper from the fixed path
``/usr/libexec/ipsec``, so inside the namespace the prefix's ``usr/libexec`` is laid over ``/usr/libexec`` (an
overlay; a tmpfs with a bind mount where overlays are refused).

The test process calls :func:`prepare` (pluto's folder: ``ipsec.conf`` and ``ipsec.secrets`` from
``configs/libreswan/``, an empty NSS database made with ``certutil``) and then :func:`run`, which starts this very
file as a script under ``unshare`` with new network, mount and PID namespaces.  Inside, the script brings ``lo``
up, mounts a tmpfs over ``/run``, starts ``tcpdump``, then pluto on 127.0.0.1 (its start-up ``addconn`` loads the
connections), then our daemon on 127.0.0.2, and carries out the :class:`Step` list: ``whack`` commands
(impairments, initiations, terminations), bounded waits for log lines, and snapshots of our daemon's control
API (what ``gdoictl status --json`` shows) and metrics.  It records whether our daemon was still running, stops
everything and writes the result.  The namespace's PID 1 is this script, so when it ends (or is killed) the
kernel kills whatever is left in the namespace.

pluto must bind before our daemon: its interface scan binds 0.0.0.0:500 with SO_REUSEADDR, which fails (and is
fatal) once our daemon holds 127.0.0.2:500 without it.  So nothing here asks pluto to scan again (no
``whack --listen``, no ``ipsec auto --add``).

Only the standard library is used, as the script runs with the interpreter that runs the tests.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import SkipTest

#: Where scripts/install-libreswan unpacks Debian's libreswan package.
PREFIX = Path(os.environ.get("LIBRESWAN_PREFIX", "/opt/gdoiserver-libreswan"))
#: pluto's fixed IPSEC_EXECDIR (its addconn helper is run from there).
EXECDIR = "/usr/libexec/ipsec"
CONFIGS = Path(__file__).resolve().parent / "configs" / "libreswan"
#: pluto (the initiator) and our responder (peers.md: tshark tells them apart by address alone).
PLUTO_ADDRESS = "127.0.0.1"
RESPONDER_ADDRESS = "127.0.0.2"
IKE_PORT = 500
#: The PSK of configs/libreswan/ipsec.secrets.
PSK = "interop-test-psk-123"
#: pluto's line once its addconn helper has loaded the connections and its sockets are bound.
PLUTO_READY = re.compile(r"loading secrets from ")
#: pluto's line for an ISAKMP SA it holds (Main Mode done).
PLUTO_ESTABLISHED = r'"(\S+)" #(\d+): IKE SA established \{auth=PRESHARED_KEY cipher=(\S+) integ=(\S+) group=(\S+)\}'
#: How long a process may take to start (bounded, and generous: a loaded machine is slow).
STARTUP = 30.0
SENTINEL = b"gdoiserver libreswan capture end"
SENTINEL_PORT = 9


class HarnessError(AssertionError):
    """The namespace, pluto, our daemon or a tool failed; the message carries the tail of every log."""


def installed_prefix() -> Path | None:
    """The root holding ``usr/libexec/ipsec/pluto``: :data:`PREFIX`, or ``/`` where libreswan is installed."""
    for root in (PREFIX, Path("/")):
        if (root / EXECDIR.lstrip("/") / "pluto").is_file():
            return root
    return None


def missing_tool() -> str | None:
    """Why pluto cannot run here ("missing tool: ..."), or None."""
    if os.geteuid() != 0:
        return "missing tool: unshare as root (network namespaces need root; scripts/test uses sudo)"
    for tool, package in (("unshare", "util-linux"), ("tcpdump", "tcpdump"), ("certutil", "libnss3-tools"),
                          ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"missing tool: {tool} (apt-get install {package}; scripts/install-libreswan does it)"
    root = installed_prefix()
    if root is None:
        return f"missing tool: libreswan pluto in {PREFIX} (run scripts/install-libreswan)"
    pluto = root / EXECDIR.lstrip("/") / "pluto"
    try:
        proc = subprocess.run([str(pluto), "--version"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"missing tool: libreswan pluto does not run ({e}; run scripts/install-libreswan)"
    if proc.returncode != 0 or b"Libreswan" not in proc.stdout + proc.stderr:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-300:]
        return f"missing tool: libreswan pluto does not run ({out}; run scripts/install-libreswan)"
    return None


def require() -> None:
    """Skip the calling test where pluto or a tool it needs is missing."""
    reason = missing_tool()
    if reason:
        raise SkipTest(reason)


# ---------------------------------------------------------------------------------------------------------------
# What a case does inside the namespace.


@dataclass
class Daemon:
    """Our daemon: started after pluto is ready, waited for until something is bound at ``wait_udp``; its log
    goes to ``<workdir>/<name>.log``.  ``control`` is its control socket and ``metrics`` ("address:port") its
    Prometheus endpoint, both read by :func:`status` snapshots."""

    argv: list
    control: str
    metrics: str
    env: dict = field(default_factory=dict)
    wait_udp: tuple = (RESPONDER_ADDRESS, IKE_PORT)
    name: str = "gdoi"


@dataclass
class Step:
    """One step: ``op`` is "whack" (``args`` to whack), "wait" (``log`` matching ``pattern`` ``count`` times
    within ``cap`` seconds; a wait that runs out is recorded, not fatal) or "status" (a snapshot kept under
    ``label``: the control API's status and SAs, as ``gdoictl status --json`` and ``gdoictl sas --json`` print
    them, and every counter as the metrics endpoint's ``gdoiserver_events_total`` gives it)."""

    op: str
    args: list = field(default_factory=list)
    log: str = ""
    pattern: str = ""
    count: int = 1
    cap: float = 10.0
    label: str = ""


def whack(*args) -> Step:
    return Step("whack", list(args))


def impair(*impairments) -> list:
    """Set pluto's impairments (``ipsec whack --impair NAME[:VALUE]``), one call each."""
    return [whack("--impair", i) for i in impairments]


def clear_impairments() -> Step:
    return whack("--impair", "none")


def initiate(connection: str) -> Step:
    """Start Main Mode for ``connection`` and return at once (pluto goes on with Quick Mode afterwards)."""
    return whack("--initiate", "--asynchronous", "--name", connection)


def terminate(connection: str) -> Step:
    """Delete every state of ``connection`` (an established ISAKMP SA goes with a Delete to the peer)."""
    return whack("--name", connection, "--terminate")


def wait(log: str, pattern: str, count: int = 1, cap: float = 10.0) -> Step:
    return Step("wait", log=log, pattern=pattern, count=count, cap=cap)


def status(label: str) -> Step:
    return Step("status", label=label)


@dataclass
class Run:
    """The outcome of :func:`run`: the capture, the logs, and what each step reported."""

    workdir: Path
    pcap: Path
    logs: dict
    statuses: dict
    waits: list
    whacks: list
    daemon_alive: bool
    seconds: float

    def tails(self, lines: int = 30) -> str:
        steps = "\n".join(f"wait {w['pattern']!r} in {w['log']}: {w['found']}/{w['count']} after {w['seconds']} s"
                          for w in self.waits)
        whacks = "\n".join(f"whack {' '.join(w['args'])} -> {w['returncode']}: {_tail(w['output'], 4)}"
                           for w in self.whacks)
        return f"--- steps ---\n{steps}\n{whacks}\n{_tails(self.logs, lines)}"

    def counters(self, label: str) -> dict:
        """Every counter of the daemon at snapshot ``label`` (from the metrics endpoint: ``gdoictl status`` leaves
        out counters whose names look secret, such as ``phase1_failed.INVALID_KEY_INFORMATION``)."""
        return self.statuses[label]["events"]

    def counters_moved(self, before: str, after: str) -> dict:
        """{counter: increase} between two snapshots, for the counters that moved."""
        a, b = self.counters(before), self.counters(after)
        return {k: b[k] - a.get(k, 0) for k in b if b[k] != a.get(k, 0)}

    def phase1_sas(self, label: str) -> list:
        """The Phase 1 SAs ``gdoictl sas`` listed at snapshot ``label``."""
        return self.statuses[label]["sas"]["phase1"]


def prepare(workdir) -> Path:
    """Make ``<workdir>/pluto/`` with ``ipsec.conf``, ``ipsec.secrets`` (mode 0600), ``ipsec.d/``, ``run/`` and an
    empty NSS database in ``nss/``; returns the folder."""
    d = Path(workdir).resolve() / "pluto"
    for sub in ("ipsec.d", "nss", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "ipsec.conf").write_text((CONFIGS / "ipsec.conf").read_text().replace("@DIR@", str(d)))
    fd = os.open(d / "ipsec.secrets", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write((CONFIGS / "ipsec.secrets").read_text())
    proc = subprocess.run(["certutil", "-N", "-d", f"sql:{d / 'nss'}", "--empty-password"], capture_output=True,
                          timeout=30, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"certutil -N failed: {(proc.stdout + proc.stderr).decode(errors='replace')}")
    return d


def run(workdir, daemon: Daemon, steps, *, capture_filter="udp", timeout=45.0) -> Run:
    """Run pluto and ``daemon`` in a fresh namespace, carry out ``steps``, and return what happened.

    Raises :class:`HarnessError` when the harness itself fails (pluto or our daemon did not start, a tool hung);
    what the steps showed is for the test to judge.
    """
    require()
    workdir = Path(workdir).resolve()
    folder = workdir / "pluto"
    if len(f"{folder}/run/pluto.ctl") > 100 or len(daemon.control) > 100:  # sun_path holds 108 octets
        raise HarnessError(f"{workdir} is too long a path for a unix socket; use tempfile.mkdtemp()")
    root = installed_prefix()
    plan = {
        "workdir": str(workdir),
        "pluto_dir": str(folder),
        "libexec": None if root == Path("/") else str(root / "usr" / "libexec"),
        "daemon": asdict(daemon),
        "steps": [asdict(s) for s in steps],
        "filter": capture_filter,
        "timeout": timeout,
    }
    plan_path, result_path = workdir / "plan.json", workdir / "result.json"
    result_path.unlink(missing_ok=True)
    plan_path.write_text(json.dumps(plan))
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            sys.executable, str(Path(__file__).resolve()), str(plan_path)]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout + 15, check=False)
        helper = (proc.stdout + proc.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc, helper = None, "the namespace helper timed out and was killed"
    logs = {name: p.read_text(errors="replace") for name, p in
            (("pluto", workdir / "pluto.log"), (daemon.name, workdir / f"{daemon.name}.log"),
             ("tcpdump", workdir / "tcpdump.log")) if p.exists()}
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if proc is None or proc.returncode != 0 or result is None or result["error"]:
        why = result["error"] if result and result["error"] else f"helper exited with {proc and proc.returncode}"
        raise HarnessError(f"{why}\nhelper output:\n{_tail(helper, 20)}\n{_tails(logs, 30)}")
    return Run(workdir=workdir, pcap=workdir / "capture.pcap", logs=logs, statuses=result["statuses"],
               waits=result["waits"], whacks=result["whacks"], daemon_alive=result["daemon_alive"],
               seconds=time.monotonic() - started)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tails(logs: dict, lines: int) -> str:
    return "\n".join(f"--- last {lines} lines of {name} ---\n{_tail(text, lines)}" for name, text in logs.items())


# ---------------------------------------------------------------------------------------------------------------
# Inside the namespace (this file run as a script).


class _Failure(Exception):
    pass


class _Namespace:
    """The steps run inside the namespace; every process started is stopped in :meth:`stop_all`."""

    def __init__(self, plan):
        self.plan = plan
        self.workdir = Path(plan["workdir"])
        self.pluto_dir = Path(plan["pluto_dir"])
        self.ctl = self.pluto_dir / "run" / "pluto.ctl"
        self.deadline = time.monotonic() + plan["timeout"]
        self.procs = []  # (name, Popen), in start order

    def remaining(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Failure(f"the case took longer than {self.plan['timeout']} s")
        return min(cap, left)

    def poll(self, condition, what: str, cap: float = 10.0, proc=None, fail: bool = True) -> bool:
        """Bounded wait: check ``condition`` every 20 ms for at most ``cap`` seconds."""
        limit = time.monotonic() + self.remaining(cap)
        while not condition():
            if proc is not None and proc.poll() is not None:
                raise _Failure(f"{what}: the process exited with code {proc.returncode}")
            if time.monotonic() > limit:
                if fail:
                    raise _Failure(f"timed out after {cap} s waiting for {what}")
                return False
            time.sleep(0.02)
        return True

    def start(self, name, argv, env=None):
        out = open(self.workdir / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})}, process_group=0)
        finally:
            out.close()
        self.procs.append((name, p))
        return p

    def tool(self, argv, what, env=None, cap=20.0):
        """Run a short-lived tool; return (returncode, output)."""
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env={**os.environ, **(env or {})},
                               timeout=self.remaining(cap), check=False)
        except subprocess.TimeoutExpired:
            raise _Failure(f"{what} did not finish in time") from None
        return p.returncode, (p.stdout + p.stderr).decode(errors="replace")

    def mount(self, *args):
        rc, out = self.tool(["mount", *args], "mount")
        if rc:
            raise _Failure(f"mount {' '.join(args)} failed: {out}")

    def setup(self):
        self.tool(["ip", "link", "set", "lo", "up"], "ip link set lo up")
        if not _can_bind(RESPONDER_ADDRESS):  # 127.0.0.0/8 is local on lo in a fresh namespace; check anyway
            self.tool(["ip", "addr", "add", f"{RESPONDER_ADDRESS}/8", "dev", "lo"], "ip addr add")
        for mountpoint in ("/run", "/var/run"):
            if os.path.isdir(mountpoint) and not os.path.islink(mountpoint):
                self.mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", mountpoint)
        libexec = self.plan["libexec"]
        if libexec is not None:
            self.lay_over_libexec(libexec)

    def lay_over_libexec(self, libexec: str):
        """Make ``/usr/libexec/ipsec`` the prefix's, here only: an overlay of the prefix's ``usr/libexec`` over the
        system's, or (where overlays are refused) a tmpfs on ``/usr/libexec`` with the prefix's folder bound in."""
        rc, out = self.tool(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={libexec}:/usr/libexec",
                             "/usr/libexec"], "mount overlay")
        if rc:
            self.mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/usr/libexec")
            os.mkdir(EXECDIR)
            self.mount("--bind", f"{libexec}/ipsec", EXECDIR)
        if not os.access(f"{EXECDIR}/addconn", os.X_OK):
            raise _Failure(f"{EXECDIR}/addconn is not there after mounting {libexec} (overlay: {out.strip()})")

    def capture(self):
        pcap, log = self.workdir / "capture.pcap", self.workdir / "tcpdump.log"
        p = self.start("tcpdump", ["tcpdump", "-i", "lo", "-n", "-U", "-Z", "root", "-s", "0", "-w", str(pcap),
                                   self.plan["filter"]])
        self.poll(lambda: b"listening on" in log.read_bytes(), "tcpdump to listen on lo", STARTUP, p)

    def start_pluto(self):
        d = self.pluto_dir
        p = self.start("pluto", [f"{EXECDIR}/pluto", "--nofork", "--stderrlog", "--config", str(d / "ipsec.conf"),
                                 "--rundir", str(d / "run"), "--ipsecdir", str(d / "ipsec.d"), "--nssdir",
                                 str(d / "nss"), "--secretsfile", str(d / "ipsec.secrets")])
        log = self.workdir / "pluto.log"
        self.poll(lambda: PLUTO_READY.search(log.read_text(errors="replace")) is not None,
                  "pluto to load its connections and bind UDP 500", STARTUP, p)
        self.poll(lambda: _udp_bound(PLUTO_ADDRESS, IKE_PORT), f"pluto to bind {PLUTO_ADDRESS}:{IKE_PORT}", STARTUP, p)
        self.poll(self.ctl.exists, "pluto's control socket", STARTUP, p)

    def start_daemon(self):
        c = self.plan["daemon"]
        p = self.start(c["name"], c["argv"], c["env"])
        addr, port = c["wait_udp"]
        self.poll(lambda: _udp_bound(addr, port), f"{c['name']} to bind UDP {addr}:{port}", STARTUP, p)
        self.poll(lambda: _accepts(socket.AF_UNIX, c["control"]), f"{c['name']}'s control socket", STARTUP, p)
        host, _, metrics_port = c["metrics"].rpartition(":")
        self.poll(lambda: _accepts(socket.AF_INET, (host, int(metrics_port))), f"{c['name']}'s metrics endpoint",
                  STARTUP, p)
        self.daemon = p

    def whack(self, args):
        rc, out = self.tool([f"{EXECDIR}/whack", "--ctlsocket", str(self.ctl), *args], f"whack {' '.join(args)}")
        return {"args": args, "returncode": rc, "output": out}

    def log_matches(self, name, pattern) -> int:
        log = self.workdir / f"{name}.log"
        return len(re.findall(pattern, log.read_text(errors="replace"), re.M)) if log.exists() else 0

    def wait(self, step):
        started = time.monotonic()
        self.poll(lambda: self.log_matches(step["log"], step["pattern"]) >= step["count"],
                  f"{step['count']} lines matching {step['pattern']!r} in {step['log']}", step["cap"], fail=False)
        return {"log": step["log"], "pattern": step["pattern"], "count": step["count"],
                "found": self.log_matches(step["log"], step["pattern"]),
                "seconds": round(time.monotonic() - started, 3)}

    def status(self):
        """Our daemon's control API (what ``gdoictl status --json`` and ``gdoictl sas --json`` print) and every
        counter from its metrics endpoint."""
        c = self.plan["daemon"]
        snapshot = {}
        for what in ("status", "sas"):
            connection = _UnixHTTPConnection(c["control"], self.remaining(10.0))
            try:
                connection.request("GET", f"/v1/{what}")
                answer = connection.getresponse()
                body = answer.read()
            finally:
                connection.close()
            if answer.status != 200:
                raise _Failure(f"GET /v1/{what} on {c['control']} answered {answer.status}: {body[:200]!r}")
            snapshot[what] = json.loads(body)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment
        with direct.open(f"http://{c['metrics']}/metrics", timeout=self.remaining(10.0)) as answer:
            text = answer.read().decode()
        snapshot["events"] = {m[1]: int(float(m[2])) for m in _EVENT.finditer(text)}
        return snapshot

    def flush_capture(self):
        pcap = self.workdir / "capture.pcap"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(SENTINEL, (PLUTO_ADDRESS, SENTINEL_PORT))
        self.poll(lambda: SENTINEL in pcap.read_bytes(), "the capture to reach the end marker")

    def stop(self, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
            except ProcessLookupError:
                pass

    def stop_all(self):
        # tcpdump first, so that nothing sent while the daemons shut down lands after the end marker
        for _, p in sorted(self.procs, key=lambda np: np[0] != "tcpdump"):
            self.stop(p)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over our daemon's control socket (a UNIX stream socket)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


#: 'gdoiserver_events_total{event="phase1_established"} 1.0' (prometheus-client's text format)
_EVENT = re.compile(r'^gdoiserver_events_total\{event="([^"]*)"\} (\S+)$', re.M)


def _accepts(family, address) -> bool:
    """True if a stream socket at ``address`` accepts a connection (it is bound and listening)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(address)
        return True
    except OSError:
        return False


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def _udp_bound(address: str, port: int) -> bool:
    """True if an IPv4 UDP socket is bound to address:port in this namespace (from /proc/net/udp)."""
    want = "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(address))[0], port)
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == want for line in list(f)[1:])


def _main(plan_path) -> int:
    plan = json.loads(Path(plan_path).read_text())
    ns = _Namespace(plan)
    result = {"error": None, "statuses": {}, "waits": [], "whacks": [], "daemon_alive": False}
    try:
        ns.setup()
        ns.capture()
        ns.start_pluto()
        ns.start_daemon()
        for step in plan["steps"]:
            if step["op"] == "whack":
                result["whacks"].append(ns.whack(step["args"]))
                if step["args"][0] == "--impair" and result["whacks"][-1]["returncode"]:
                    raise _Failure(f"pluto refused whack {' '.join(step['args'])}: {result['whacks'][-1]['output']}")
            elif step["op"] == "wait":
                result["waits"].append(ns.wait(step))
            elif step["op"] == "status":
                result["statuses"][step["label"]] = ns.status()
            else:
                raise _Failure(f"unknown step {step['op']!r}")
        result["daemon_alive"] = ns.daemon.poll() is None
        ns.flush_capture()
    except _Failure as e:
        result["error"] = str(e)
    except OSError as e:  # a socket or a file of a step: the harness failed, say where
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        ns.stop_all()
        Path(plan["workdir"], "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
