"""The ``gdoi`` twistd plugin, the service it makes, and the server run as a real process."""

import io
import os
import re
import selectors
import socket
import subprocess
import sys
import time

import twisted.plugins
from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, formatEvent
from twisted.plugin import getPlugins
from twisted.trial import unittest

from gdoiserver.codec import Message, NotifyType, VendorID, decode_message
from gdoiserver.config import load_config
from gdoiserver.keyserver import KeyServer
from gdoiserver.service import GDOIService
from gdoiserver.tap import Options, makeService
from tests.test_protocol import IKEV2_SA_INIT, MAIN_MODE_1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Bound on every wait for a server process: each process test stays under 10 s.
PROCESS_SECONDS = 30  # a bound, not a wait: generous for loaded CI machines


def write_config(case: unittest.TestCase, text: str) -> str:
    path = os.path.abspath(case.mktemp() + ".toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


LOOPBACK_PORT_0 = """\
[server]
nat_t_port = 0
listen = [
    { address = "127.0.0.1", port = 0 },
    { address = "::1", port = 0 },
]
"""


class PluginTests(unittest.TestCase):
    def test_discoverable(self):
        """getPlugins(IServiceMaker) finds the `gdoi` plugin in twisted/plugins/ when the repository is on the path."""
        path = os.path.join(REPO, "twisted", "plugins")
        if path not in twisted.plugins.__path__:
            self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, path])
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("gdoi", makers)
        self.assertIsInstance(makers["gdoi"].options(), Options)

    def test_config_option(self):
        """--config defaults to etc/gdoiserver.toml and takes another file."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["config"], os.path.join("etc", "gdoiserver.toml"))
        options.parseOptions(["--config", "/tmp/x.toml"])
        self.assertEqual(options["config"], "/tmp/x.toml")


class MakeServiceTests(unittest.TestCase):
    def options(self, path: str) -> Options:
        options = Options()
        options.parseOptions(["--config", path])
        return options

    @defer.inlineCallbacks
    def test_starts_and_stops(self):
        """makeService on a port-0 loopback config makes the KeyServer tree, which binds IPv4 and IPv6 ports (ISAKMP
        and NAT-T) and the control socket at start and releases them at stop."""
        service = makeService(self.options(write_config(self, LOOPBACK_PORT_0 + '[control]\nsocket = "gdoiserver.sock"\n')))
        key_server = service.key_server
        self.assertIsInstance(key_server, KeyServer)
        self.assertIsInstance(key_server.transport, GDOIService)
        service.startService()
        try:
            hosts = key_server.transport.addresses()
            self.assertEqual(sorted(h.host for h in hosts), ["127.0.0.1", "127.0.0.1", "::1", "::1"])
            self.assertTrue(all(h.port > 0 for h in hosts), hosts)
            self.assertTrue(os.path.exists("gdoiserver.sock"))
        finally:
            yield service.stopService()
        self.assertEqual(key_server.transport.addresses(), [])
        self.assertFalse(os.path.exists("gdoiserver.sock"))

    def test_bad_config_exits(self):
        """A bad config ends makeService with exit status 78 (EX_CONFIG) and one line naming file, key and problem."""
        path = write_config(self, "[limits]\nmax_datagram_size = 10\n")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, makeService, self.options(path))
        self.assertEqual(e.code, os.EX_CONFIG)
        problem = "limits.max_datagram_size: got 10, expected an integer from 28 to 65535"
        self.assertEqual(stderr.getvalue(), f"gdoi: configuration error: {path}: {problem}\n")


class Client(DatagramProtocol):
    pass


class ServiceTests(unittest.TestCase):
    """GDOIService on real loopback sockets with the running trial reactor."""

    timeout = 5  # seconds: a datagram that never reaches the dispatcher fails the test rather than hanging it

    def start(self, text: str, dispatcher=None) -> GDOIService:
        service = GDOIService(load_config(write_config(self, text)), reactor, dispatcher)
        self.events = []
        service.log = Logger(observer=self.events.append)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def client(self, interface: str):
        port = reactor.listenUDP(0, Client(), interface=interface)
        self.addCleanup(port.stopListening)
        return port

    @defer.inlineCallbacks
    def test_receives_on_ipv4_and_ipv6(self):
        """Datagrams sent to each bound address are decoded; a malformed one sent first is counted on the way."""
        arrived = []
        done = defer.Deferred()

        def dispatcher(message, addr, local_port):
            arrived.append((addr[0], local_port))
            if len(arrived) == 2:
                done.callback(None)

        service = self.start(LOOPBACK_PORT_0, dispatcher)
        v4, v6 = service.addresses()
        self.client("127.0.0.1").write(IKEV2_SA_INIT, ("127.0.0.1", v4.port))
        self.client("127.0.0.1").write(MAIN_MODE_1, ("127.0.0.1", v4.port))
        self.client("::1").write(MAIN_MODE_1, ("::1", v6.port))
        yield done
        self.assertEqual(sorted(arrived), [("127.0.0.1", v4.port), ("::1", v6.port)])
        self.assertEqual(service.counters["received"], 3)
        self.assertEqual(service.counters["malformed.INVALID_MAJOR_VERSION"], 1)

    @defer.inlineCallbacks
    def test_large_datagram_whole(self):
        """A 9000-octet message arrives whole (Twisted's default 8192-octet read would truncate it)."""
        got = defer.Deferred()
        service = self.start(LOOPBACK_PORT_0, lambda message, addr, port: got.callback(message))
        big = Message(b"\x01" * 8, bytes(8), 2, payloads=(VendorID(b"v" * 8968),)).encode()
        self.assertEqual(len(big), 9000)
        self.client("127.0.0.1").write(big, ("127.0.0.1", service.addresses()[0].port))
        message = yield got
        self.assertEqual(message.encode(), big)

    @defer.inlineCallbacks
    def test_oversize_dropped(self):
        """A datagram one octet over limits.max_datagram_size is counted as oversize, the next one still decoded."""
        got = defer.Deferred()
        service = self.start(LOOPBACK_PORT_0 + "[limits]\nmax_datagram_size = 1000\n",
                             lambda message, addr, port: got.callback(message))
        port = service.addresses()[0].port
        client = self.client("127.0.0.1")
        client.write(Message(b"\x01" * 8, bytes(8), 2, payloads=(VendorID(b"v" * 969),)).encode(), ("127.0.0.1", port))
        client.write(MAIN_MODE_1, ("127.0.0.1", port))
        yield got
        self.assertEqual(service.counters["oversize"], 1)
        self.assertEqual(service.counters["decoded"], 1)

    def test_start_log_and_warnings(self):
        """Start-up logs the listen addresses and the group count, and warns about each weakening option."""
        service = self.start(
            LOOPBACK_PORT_0 + "[security]\nallow_weak_dh_groups = true\n[keylog]\npath = 'k.log'\n"
        )
        lines = [(e["log_level"].name, formatEvent(e)) for e in self.events]
        self.assertIn("127.0.0.1:0, [::1]:0", lines[0][1])
        self.assertIn("0 groups", lines[0][1])
        warnings = [text for level, text in lines if level == "warn"]
        self.assertEqual(len(warnings), 2, lines)
        self.assertIn("allow_weak_dh_groups", warnings[0])
        self.assertIn("k.log", warnings[1])
        self.assertEqual(len(service.addresses()), 2)

    def test_no_warning_by_default(self):
        """The default security settings log no warning."""
        self.start(LOOPBACK_PORT_0)
        self.assertEqual([e for e in self.events if e["log_level"].name == "warn"], [])


# --- the server as a process ---------------------------------------------------------------------------------------

TWIST = [sys.executable, "-m", "twisted", "--log-format", "text"]
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
          "-n", "--pidfile="]


def run_bad(command: list, config: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "gdoi", "--config", config], cwd=REPO, capture_output=True, text=True,
                          timeout=PROCESS_SECONDS)


class Output:
    """The merged output of a running process, read until patterns show up or a deadline passes."""

    def __init__(self, proc: subprocess.Popen, deadline: float):
        self.proc, self.deadline, self.text = proc, deadline, ""
        self.selector = selectors.DefaultSelector()
        self.selector.register(proc.stdout, selectors.EVENT_READ)

    def wait_for(self, pattern: str) -> re.Match:
        while True:
            match = re.search(pattern, self.text)
            if match:
                return match
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {PROCESS_SECONDS} s; output:\n{self.text}")
            if self.selector.select(remaining):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"process ended before {pattern!r}; output:\n{self.text}")
                self.text += chunk.decode(errors="replace")


class ProcessTests(unittest.TestCase):
    def check_bad_config(self, command: list):
        path = write_config(self, '[server]\nlisten = [{ address = "127.0.0.1", port = 70000 }]\n')
        proc = run_bad(command, path)
        self.assertEqual(proc.returncode, os.EX_CONFIG, proc.stderr)
        self.assertIn(f"{path}: server.listen[0].port: got 70000, expected an integer from 0 to 65535", proc.stderr)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)

    def test_bad_config_twist(self):
        """`python -m twisted gdoi --config BAD` exits 78 with file, key and problem and no traceback."""
        self.check_bad_config([sys.executable, "-m", "twisted"])

    def test_bad_config_twistd(self):
        """`twistd -n gdoi --config BAD` exits 78 with file, key and problem and no traceback."""
        self.check_bad_config(TWISTD)

    def test_missing_config_twist(self):
        """A config path that does not exist is named, with no traceback."""
        proc = run_bad([sys.executable, "-m", "twisted"], "no/such/file.toml")
        self.assertEqual(proc.returncode, os.EX_CONFIG)
        self.assertIn("no/such/file.toml: cannot read the file: No such file or directory", proc.stderr)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)

    def test_port_in_use_twistd(self):
        """A listen address whose port is taken ends `twistd -n gdoi` with exit 69 (EX_UNAVAILABLE) and one line
        naming the address and the reason, with no traceback."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            config = write_config(self, f'[server]\nnat_t_port = 0\nlisten = [{{ address = "127.0.0.1", port = {port} }}]\n')
            proc = subprocess.run([*TWISTD, "gdoi", "--config", config], cwd=REPO, capture_output=True, text=True,
                                  timeout=PROCESS_SECONDS)
        self.assertEqual(proc.returncode, os.EX_UNAVAILABLE)
        self.assertIn(f"gdoi: cannot listen on 127.0.0.1:{port}/udp", proc.stderr + proc.stdout)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)

    def check_serves(self, command: list):
        config = write_config(self, '[server]\nnat_t_port = 0\nlisten = [{ address = "127.0.0.1", port = 0 }]\n')
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([*command, "gdoi", "--config", config], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            out = Output(proc, time.monotonic() + PROCESS_SECONDS)
            port = int(out.wait_for(r"ISAKMP listening on 127\.0\.0\.1:(\d+)/udp").group(1))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(PROCESS_SECONDS)
                s.sendto(MAIN_MODE_1, ("127.0.0.1", port))
                s.sendto(MAIN_MODE_1[:40], ("127.0.0.1", port))
                # The offered suite is not in the default policy: the answer is NO-PROPOSAL-CHOSEN in the clear.
                reply = decode_message(s.recv(65535))
            notify = reply.payloads[0]
            self.assertEqual((reply.exchange_type, notify.notify_type), (5, NotifyType.NO_PROPOSAL_CHOSEN))
            self.assertEqual(reply.initiator_cookie, MAIN_MODE_1[:8])
            out.wait_for(r"Phase 1 failed: responder SA 0102030405060708/\? with 127\.0\.0\.1:\d+ .*matches our policy")
            out.wait_for(r"dropped a malformed datagram from 127\.0\.0\.1:\d+ \(40 octets.*UNEQUAL_PAYLOAD_LENGTHS")
            self.assertNotIn("Traceback", out.text)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=PROCESS_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    def test_serves_twist(self):
        """`python -m twisted gdoi` serves: a valid and a malformed datagram each show up in the log."""
        self.check_serves(TWIST)

    def test_serves_twistd(self):
        """`twistd -n gdoi` serves: a valid and a malformed datagram each show up in the log."""
        self.check_serves(TWISTD)
