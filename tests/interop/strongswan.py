"""Run strongSwan IKEv1 peers in a private network namespace and capture what goes over the wire.

The test process calls :func:`prepare` (one folder per side, configs from ``configs/``) and then :func:`run`, which
starts this very file as a script under ``unshare`` with new network, mount and PID namespaces.  Inside, the script
brings ``lo`` up, mounts a tmpfs over ``/run`` (``/usr/lib/ipsec/charon`` writes a fixed ``/var/run/charon.pid``),
starts ``tcpdump``, then the strongSwan sides asked for (RESPONDER: ``/usr/lib/ipsec/charon`` on 127.0.0.2:500/4500;
INITIATOR: ``/usr/sbin/charon-systemd`` on 127.0.0.1:5500/5501), loads their connections with ``swanctl``, starts
any extra :class:`Command` (our own daemon, standing in for one side), initiates the connections, waits until the
SAs are up and the capture has flushed, and stops everything.  The namespace's PID 1 is this script, so when it
ends (or is killed) the kernel kills whatever is left in the namespace.

Only the standard library is used, as the script runs with the interpreter that runs the tests.
"""

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import SkipTest

RESPONDER = "responder"
INITIATOR = "initiator"
#: Where each side listens (peers.md: tshark tells initiator from responder by address alone).
ADDRESS = {RESPONDER: "127.0.0.2", INITIATOR: "127.0.0.1"}
#: IKE and NAT-T ports of each strongSwan side (see configs/*.strongswan.conf).
PORTS = {RESPONDER: (500, 4500), INITIATOR: (5500, 5501)}
DAEMON = {RESPONDER: "/usr/lib/ipsec/charon", INITIATOR: "/usr/sbin/charon-systemd"}
SWANCTL = "/usr/sbin/swanctl"
CONFIGS = Path(__file__).resolve().parent / "configs"
#: The PSK every PSK connection in configs/ uses.
PSK = "interop-test-psk-123"
#: The datagram sent to 127.0.0.1:9 (discard) last: once it is in the capture file, everything before it is too.
SENTINEL = b"gdoiserver interop capture end"
SENTINEL_PORT = 9


class HarnessError(AssertionError):
    """The namespace, a daemon or a tool failed; the message carries the tail of every log."""


@dataclass
class Command:
    """A process started inside the namespace next to (or instead of) a strongSwan side.

    A ``background`` command (a daemon) starts after the strongSwan sides have loaded their connections and runs
    until the end; with ``wait_udp=(address, port)`` the harness waits until something is bound there.  A
    foreground command runs after the ``swanctl`` initiations and must exit within ``timeout`` seconds.  Output
    goes to ``<workdir>/<name>.log``.
    """

    name: str
    argv: list
    env: dict = field(default_factory=dict)
    background: bool = True
    wait_udp: tuple | None = None
    timeout: float = 20.0


@dataclass
class Initiation:
    """What ``swanctl --initiate`` said for one connection (``child`` None: the IKE SA alone was asked for)."""

    ike: str
    child: str | None
    returncode: int
    output: str
    seconds: float

    @property
    def established(self) -> bool:
        if self.returncode != 0:
            return False
        if self.child is None:
            return re.search(rf"IKE_SA {re.escape(self.ike)}\[\d+\] established", self.output) is not None
        return f"CHILD_SA {self.child}{{" in self.output and "established" in self.output


@dataclass
class Run:
    """The outcome of :func:`run`: the capture, every log and what the tools reported."""

    workdir: Path
    pcap: Path
    logs: dict
    initiations: list
    sas: dict
    commands: dict
    seconds: float

    def tails(self, lines: int = 25) -> str:
        return _tails(self.logs, lines)

    def encryption_keys(self, side: str = INITIATOR) -> dict:
        """{initiator cookie: the Phase 1 encryption key Ka} of every IKE SA that ``side`` still listed at the end.

        charon logs Ka at ike log level 4 (configs/ set it), tagged with the IKE SA's unique id;
        ``swanctl --list-sas`` gives the cookies for that id.
        """
        cookies = {m[2]: bytes.fromhex(m[3]) for m in _LIST_SAS.finditer(self.sas.get(side, ""))}
        keys = {}
        for tag, key in _logged_chunks(self.logs.get(side, ""), "encryption key Ka"):
            unique = tag.rpartition("|")[2]  # "<name|id>", or "<id>" before a responder has picked its config
            if unique in cookies:
                keys[cookies[unique]] = key
        return keys

    def check_established(self, installed: int | None = None, *, child: bool = True) -> None:
        """Fail unless every initiation reported its SA established and every strongSwan side lists ``installed``
        (default: one per initiation) ESTABLISHED IKE SAs and, with ``child``, INSTALLED CHILD SAs.

        The responder's side matters: the initiator can report success after the responder failed (peers.md).
        """
        bad = [i for i in self.initiations if not i.established]
        want = len(self.initiations) if installed is None else installed
        states = ("ESTABLISHED", "INSTALLED") if child else ("ESTABLISHED",)
        short = {side: text for side, text in self.sas.items() if any(text.count(s) < want for s in states)}
        if bad or short:
            parts = [f"initiation of {i.ike} failed (rc {i.returncode}):\n{_tail(i.output, 15)}" for i in bad]
            parts += [f"{side} lists fewer than {want} {'/'.join(states)} SAs:\n{text}"
                      for side, text in short.items()]
            raise AssertionError("\n".join(parts) + "\n" + self.tails())

    def child_sas(self, side: str) -> list:
        """[{name, state, mode, proposal, spi_in, spi_out}] of the CHILD SAs ``side`` listed at the end (SPIs as
        octets: ``spi_in`` is the one ``side`` receives with)."""
        return [{"name": m[1], "state": m[2], "mode": m[3], "proposal": m[4], "spi_in": bytes.fromhex(m[5]),
                 "spi_out": bytes.fromhex(m[6])} for m in _LIST_CHILD.finditer(self.sas.get(side, ""))]

    def child_keys(self, side: str = INITIATOR) -> dict:
        """{label: octets} of the Quick Mode keys charon logged at chd log level 4 (configs/ set it): "encryption
        initiator key", "integrity responder key"... ("initiator": sent by the Quick Mode initiator).  The last
        logged value of each label wins."""
        labels = [f"{kind} {role} key" for kind in ("encryption", "integrity") for role in ("initiator", "responder")]
        return {label: octets for label in labels for _, octets in _logged_chunks(self.logs.get(side, ""), label)}

    def ike_sas(self, side: str) -> list:
        """[(connection, state, initiator cookie, responder cookie)] of the IKE SAs ``side`` listed at the end."""
        return [(m[1], m[3], bytes.fromhex(m[4]), bytes.fromhex(m[5]))
                for m in _LIST_SAS_STATE.finditer(self.sas.get(side, ""))]


def missing_tool(sides=(RESPONDER, INITIATOR)) -> str | None:
    """The skip reason (beginning "missing tool:") if something the harness needs is absent, else None.  With no
    ``sides`` only the namespace and the capture are needed (our daemon against another tool)."""
    for side in sides:
        if not os.access(DAEMON[side], os.X_OK):
            return f"missing tool: strongswan ({DAEMON[side]}; apt-get install strongswan charon-systemd)"
    if sides and not os.access(SWANCTL, os.X_OK):
        return "missing tool: strongswan (swanctl; apt-get install strongswan-swanctl)"
    if shutil.which("unshare") is None:
        return "missing tool: unshare (util-linux)"
    if os.geteuid() != 0:
        return "missing tool: unshare as root (network namespaces need root; scripts/test uses sudo)"
    if shutil.which("tcpdump") is None:
        return "missing tool: tcpdump (apt-get install tcpdump)"
    return None


def require(sides=(RESPONDER, INITIATOR)) -> None:
    """Skip the calling test where a tool is missing."""
    reason = missing_tool(sides)
    if reason:
        raise SkipTest(reason)


def prepare(workdir, sides=(RESPONDER, INITIATOR), profiles=("psk",), files=None, substitutions=None) -> dict:
    """Make ``<workdir>/<side>/`` for each side with ``strongswan.conf`` and ``swanctl.conf`` from ``configs/``.

    ``swanctl.conf`` joins ``configs/<side>.<profile>.swanctl.conf`` for each profile ("psk", "rsa").  ``files``
    maps a path relative to ``workdir`` (e.g. ``"responder/x509ca/ca.pem"``) to bytes to write.  ``@DIR@`` is
    replaced by the side's folder, and each key of ``substitutions`` by its value.  Returns {side: folder}.
    """
    workdir = Path(workdir).resolve()
    out = {}
    for side in sides:
        d = workdir / side
        for sub in ("x509", "x509ca", "private", "x509crl", "x509ocsp", "x509aa", "x509ac", "pubkey", "rsa", "ecdsa",
                    "bliss", "pkcs8", "pkcs12"):  # the folders swanctl --load-all reads
            (d / sub).mkdir(parents=True, exist_ok=True)
        subs = {"@DIR@": str(d), **(substitutions or {})}
        conf = (CONFIGS / f"{side}.strongswan.conf").read_text()
        swanctl = "\n".join((CONFIGS / f"{side}.{p}.swanctl.conf").read_text() for p in profiles)
        for key, value in subs.items():
            conf, swanctl = conf.replace(key, value), swanctl.replace(key, value)
        (d / "strongswan.conf").write_text(conf)
        (d / "swanctl.conf").write_text(swanctl)
        out[side] = d
    for rel, data in (files or {}).items():
        p = workdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if "private" in p.parts:
            p.chmod(0o600)
    return out


def run(workdir, *, strongswan=(RESPONDER, INITIATOR), initiate=(), child="qm", commands=(),
        capture_filter="udp", settle=None, settle_on="child", settle_logs=None, timeout=45.0) -> Run:
    """Run one case in a fresh namespace and return the capture and logs.

    ``strongswan``: the sides to start as strongSwan (leave one out to put our daemon there via ``commands``).
    ``initiate``: connection names the strongSwan initiator initiates, one after the other, each with ``child``
    (None: ``swanctl --initiate --ike NAME`` alone, which for IKEv1 sets up the ISAKMP SA without Quick Mode).
    ``settle``: {side: n}: wait until that strongSwan side lists n INSTALLED CHILD SAs, or with
    ``settle_on="ike"`` n ESTABLISHED IKE SAs (default: the responder, one per initiation, when both sides are
    strongSwan).  ``settle_logs``: {command name: (regex, n)}: then wait until that command's log matches n times
    (our daemon logging its SAs).  Each settling wait is bounded (5 s) and never fails the run: the test reads the
    outcome from the logs and ``sas``.  Raises :class:`HarnessError` if the harness itself fails; a failed
    initiation is reported in the result (see :meth:`Run.check_established`).
    """
    require(strongswan)
    workdir = Path(workdir).resolve()
    if len(f"{workdir}/{RESPONDER}/charon.vici") > 100:  # sun_path holds 108 octets
        raise HarnessError(f"{workdir} is too long a path for charon's unix socket; use tempfile.mkdtemp()")
    if settle is None:
        settle = {RESPONDER: len(initiate)} if RESPONDER in strongswan and INITIATOR in strongswan else {}
    plan = {
        "workdir": str(workdir),
        "strongswan": list(strongswan),
        "initiate": list(initiate),
        "child": child,
        "commands": [asdict(c) for c in commands],
        "filter": capture_filter,
        "settle": settle,
        "settle_state": {"child": "INSTALLED", "ike": "ESTABLISHED"}[settle_on],
        "settle_logs": {name: list(pattern) for name, pattern in (settle_logs or {}).items()},
        "timeout": timeout,
    }
    plan_path = workdir / "plan.json"
    result_path = workdir / "result.json"
    result_path.unlink(missing_ok=True)
    plan_path.write_text(json.dumps(plan))
    argv = ["unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            sys.executable, str(Path(__file__).resolve()), str(plan_path)]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout + 10, check=False)
        helper = (proc.stdout + proc.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc, helper = None, "the namespace helper timed out and was killed"
    logs = _read_logs(workdir, strongswan, commands)
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if proc is None or proc.returncode != 0 or result is None or result["error"]:
        why = result["error"] if result and result["error"] else f"helper exited with {proc and proc.returncode}"
        raise HarnessError(f"{why}\nhelper output:\n{_tail(helper, 20)}\n{_tails(logs, 25)}")
    return Run(
        workdir=workdir,
        pcap=workdir / "capture.pcap",
        logs=logs,
        initiations=[Initiation(**i) for i in result["initiations"]],
        sas=result["sas"],
        commands=result["commands"],
        seconds=time.monotonic() - started,
    )


def _read_logs(workdir, strongswan, commands) -> dict:
    paths = {side: workdir / side / "charon.log" for side in strongswan}
    paths.update({f"{side} stdout": workdir / side / "stdout.log" for side in strongswan})
    paths.update({c.name: workdir / f"{c.name}.log" for c in commands})
    paths["tcpdump"] = workdir / "tcpdump.log"
    logs = {name: p.read_text(errors="replace") for name, p in paths.items() if p.exists()}
    return {name: text for name, text in logs.items() if text or not name.endswith(" stdout")}


#: "mm-psk: #1, ESTABLISHED, IKEv1, 79945120c451b177_i 5ea215d96fe09c68_r*"
_LIST_SAS = re.compile(r"^(\S+): #(\d+), \w+, IKEv1, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)
_LIST_SAS_STATE = re.compile(r"^(\S+): #(\d+), (\w+), IKEv1, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", re.M)
#: "  qm: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-256/HMAC_SHA2_256_128/MODP_2048" then its
#: "    in  6ff04ef7,      0 bytes, ..." and "    out e3f08469, ..." lines
_LIST_CHILD = re.compile(r"^\s+(\S+): #\d+, reqid \d+, (\w+), (\S+), (\S+)\n(?:.*\n)*?\s+in\s+([0-9a-f]{8})[^\n]*\n"
                         r"\s+out\s+([0-9a-f]{8})", re.M)
#: "01:13:15 07[IKE] <mm-psk|1> encryption key Ka => 32 bytes @ 0x55c2f1f492a0"
_CHUNK_HEAD = re.compile(r"^\S+ (\d+)\[\w+\] <([^>]*)> (.*?) => (\d+) bytes @ ")
#: "01:13:15 07[IKE] <mm-psk|1>    0: FC 22 3A 06 ...  .\":...": 16 octets in 47 columns, then the text column
_CHUNK_LINE = re.compile(r"^\S+ (\d+)\[\w+\] <([^>]*)>\s+\d+: (.{1,47})")


def _logged_chunks(log: str, label: str):
    """Yield (tag, octets) for each chunk that charon logged as "<label> => N bytes", followed by hex lines."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        head = _CHUNK_HEAD.match(line)
        if not head or head[3] != label:
            continue
        thread, tag, size = head[1], head[2], int(head[4])
        data = bytearray()
        for follow in lines[i + 1 :]:
            if len(data) >= size:
                break
            m = _CHUNK_LINE.match(follow)
            if m and m[1] == thread and m[2] == tag:
                data += bytes.fromhex(m[3])
        if len(data) == size:
            yield tag, bytes(data)


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
        self.deadline = time.monotonic() + plan["timeout"]
        self.procs = []  # (name, Popen), in start order

    def remaining(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Failure(f"the case took longer than {self.plan['timeout']} s")
        return min(cap, left)

    def poll(self, condition, what: str, cap: float = 10.0, proc=None) -> None:
        """Bounded wait: check ``condition`` every 20 ms for at most ``cap`` seconds."""
        limit = time.monotonic() + self.remaining(cap)
        while not condition():
            if proc is not None and proc.poll() is not None:
                raise _Failure(f"{what}: the process exited with code {proc.returncode}")
            if time.monotonic() > limit:
                raise _Failure(f"timed out after {cap} s waiting for {what}")
            time.sleep(0.02)

    def start(self, name, argv, env=None, log=None):
        out = open(log or self.workdir / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})}, process_group=0)
        finally:
            out.close()
        self.procs.append((name, p))
        return p

    def tool(self, argv, what, env=None, cap=25.0):
        """Run a short-lived tool; return (returncode, output)."""
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env={**os.environ, **(env or {})},
                               timeout=self.remaining(cap), check=False)
        except subprocess.TimeoutExpired:
            raise _Failure(f"{what} did not finish in time") from None
        return p.returncode, (p.stdout + p.stderr).decode(errors="replace")

    def setup(self):
        self.tool(["ip", "link", "set", "lo", "up"], "ip link set lo up")
        if not _can_bind(ADDRESS[RESPONDER]):  # 127.0.0.0/8 is local on lo in a fresh namespace; check anyway
            self.tool(["ip", "addr", "add", f"{ADDRESS[RESPONDER]}/8", "dev", "lo"], "ip addr add")
        for mountpoint in ("/run", "/var/run"):
            if os.path.isdir(mountpoint) and not os.path.islink(mountpoint):
                rc, out = self.tool(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", mountpoint], "mount")
                if rc:
                    raise _Failure(f"mount tmpfs on {mountpoint} failed: {out}")

    def capture(self):
        pcap, log = self.workdir / "capture.pcap", self.workdir / "tcpdump.log"
        p = self.start("tcpdump", ["tcpdump", "-i", "lo", "-n", "-U", "-Z", "root", "-s", "0", "-w", str(pcap),
                                   self.plan["filter"]], log=log)
        self.poll(lambda: b"listening on" in log.read_bytes(), "tcpdump to listen on lo", proc=p)

    def swanctl(self, side, *args, cap=25.0):
        d = self.workdir / side
        env = {"SWANCTL_DIR": str(d), "STRONGSWAN_CONF": str(d / "strongswan.conf")}
        return self.tool([SWANCTL, *args, "--uri", f"unix://{d}/charon.vici"], f"swanctl {args[0]} ({side})", env, cap)

    def start_strongswan(self, side):
        d = self.workdir / side
        p = self.start(side, [DAEMON[side]], {"STRONGSWAN_CONF": str(d / "strongswan.conf")}, d / "stdout.log")
        self.poll(lambda: (d / "charon.vici").exists(), f"the {side} charon's vici socket", proc=p)
        self.poll(lambda: _udp_bound(ADDRESS[side], PORTS[side][0]) or _udp_bound("0.0.0.0", PORTS[side][0]),
                  f"the {side} charon to bind UDP {PORTS[side][0]}", proc=p)
        rc, out = self.swanctl(side, "--load-all", "--noprompt", "--file", str(d / "swanctl.conf"))
        if rc:
            raise _Failure(f"swanctl --load-all for the {side} failed ({rc}):\n{out}")

    def start_command(self, c):
        p = self.start(c["name"], c["argv"], c["env"])
        if c["wait_udp"]:
            addr, port = c["wait_udp"]
            self.poll(lambda: _udp_bound(addr, port), f"{c['name']} to bind UDP {addr}:{port}", c["timeout"], p)

    def run_command(self, c):
        p = self.start(c["name"], c["argv"], c["env"])
        try:
            rc = p.wait(self.remaining(c["timeout"]))
        except subprocess.TimeoutExpired:
            raise _Failure(f"{c['name']} did not exit within {c['timeout']} s") from None
        return {"returncode": rc}

    def initiate(self, ike):
        t0 = time.monotonic()
        child = ["--child", self.plan["child"]] if self.plan["child"] else []
        rc, out = self.swanctl(INITIATOR, "--initiate", "--ike", ike, *child, "--timeout", "20", cap=25.0)
        return {"ike": ike, "child": self.plan["child"], "returncode": rc, "output": out,
                "seconds": round(time.monotonic() - t0, 3)}

    def log_matches(self, name, pattern) -> int:
        log = self.workdir / f"{name}.log"
        return len(re.findall(pattern, log.read_text(errors="replace"), re.M)) if log.exists() else 0

    def list_sas(self, side) -> str:
        return self.swanctl(side, "--list-sas")[1]

    def flush_capture(self):
        pcap = self.workdir / "capture.pcap"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(SENTINEL, (ADDRESS[INITIATOR], SENTINEL_PORT))
        self.poll(lambda: SENTINEL in pcap.read_bytes(), "the capture to reach the end marker")

    def stop(self, name, p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(3)
            except ProcessLookupError:
                pass

    def stop_all(self):
        # tcpdump first, so that nothing sent while the daemons shut down lands after the end marker
        for name, p in sorted(self.procs, key=lambda np: np[0] != "tcpdump"):
            self.stop(name, p)


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
    result = {"error": None, "initiations": [], "sas": {}, "commands": {}}
    try:
        ns.setup()
        ns.capture()
        for side in plan["strongswan"]:
            ns.start_strongswan(side)
        for c in plan["commands"]:
            if c["background"]:
                ns.start_command(c)
        for ike in plan["initiate"]:
            result["initiations"].append(ns.initiate(ike))
        for c in plan["commands"]:
            if not c["background"]:
                result["commands"][c["name"]] = ns.run_command(c)
        state = plan.get("settle_state", "INSTALLED")
        for side, n in plan["settle"].items():
            try:
                ns.poll(lambda: ns.list_sas(side).count(state) >= n, f"{n} {state} SAs on the {side}", 5.0)
            except _Failure:
                pass  # reported through the final --list-sas below
        for name, (pattern, n) in plan.get("settle_logs", {}).items():
            try:
                ns.poll(lambda: ns.log_matches(name, pattern) >= n, f"{n} lines matching {pattern!r} in {name}", 5.0)
            except _Failure:
                pass  # the test reads the log
        for side in plan["strongswan"]:
            result["sas"][side] = ns.list_sas(side)
        ns.flush_capture()
    except _Failure as e:
        result["error"] = str(e)
    finally:
        ns.stop_all()
        for c in plan["commands"]:
            if c["background"]:
                p = dict(ns.procs).get(c["name"])
                result["commands"][c["name"]] = {"returncode": p.returncode if p else None}
        Path(plan["workdir"], "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
