"""The control socket and gdoictl: the API resources over a real UNIX socket, driven by gdoictl's functions (in a
thread, as the reactor serves) and by ``python -m gdoiserver.tools.gdoictl`` as a subprocess."""

import base64
import io
import json
import os
import shutil
import socket
import stat
import sys
import tempfile

import attrs
from twisted.internet import defer, reactor, threads, utils
from twisted.trial import unittest

from gdoiserver.config import ConfigError, parse_config
from gdoiserver.control import ControlServer, ControlSocketError, public
from gdoiserver.group.keys import GroupTable
from gdoiserver.tools import gdoictl
from tests import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = 1795400000.0


class FakeKeyServer:
    """The KeyServerControl interface over plain dicts; it records each call."""

    def __init__(self):
        self.calls = []
        self.groups = {
            "video": {
                "ids": ["1234"], "generation": 3, "seq": 17, "kek_spi": "0a1b2c3d", "last_rekey": NOW - 300,
                "next_rekey": NOW + 3300, "rekey_transport": "multicast 239.192.0.1:848",
                "members": {
                    "gm1.example.org": {"identity": "gm1.example.org", "address": "192.0.2.10", "port": 848,
                                        "registered_at": NOW - 600, "leaf": 65536, "last_seq_acked": 17,
                                        "missed": 0, "stale": False, "ack_key": b"\x11" * 32},
                    "gm2.example.org": {"identity": "gm2.example.org", "address": "2001:db8::2", "port": 848,
                                        "registered_at": NOW - 60, "leaf": 65537, "last_seq_acked": 14,
                                        "missed": 3, "stale": True, "psk": "00ff" * 8},
                },
                "evicted": set(),
            },
            "wan": {"ids": ["2001", "1.3.6.1.4.1.99999.1"], "generation": 1, "seq": 0, "kek_spi": None,
                    "last_rekey": None, "next_rekey": None, "rekey_transport": "unicast", "members": {},
                    "evicted": set()},
        }
        self.counters = {"received": 40, "gdoi_registered": 2, "malformed.PAYLOAD_MALFORMED": 1}
        self.fail_status = None
        self.reload_error = None
        self.pending = []

    def status(self) -> dict:
        self.calls.append(("status",))
        if self.fail_status is not None:
            raise self.fail_status
        groups = [{"name": name, "ids": g["ids"], "members": len(g["members"]),
                   "stale": sum(m["stale"] for m in g["members"].values()), "evicted": sorted(g["evicted"]),
                   "generation": g["generation"], "seq": g["seq"], "kek_spi": g["kek_spi"],
                   "last_rekey": g["last_rekey"], "next_rekey": g["next_rekey"],
                   "rekey_transport": g["rekey_transport"]} for name, g in self.groups.items()]
        return {"version": "9.9", "uptime": 3723.0, "role": "key server", "groups": groups,
                "sas": {"phase1": 2, "phase2": 1, "half_open": 0}, "counters": dict(self.counters)}

    def members(self, group: str) -> list[dict]:
        self.calls.append(("members", group))
        return [dict(m) for m in self.groups[group]["members"].values()]

    def rekey(self, group: str):
        self.calls.append(("rekey", group))
        g = self.groups[group]
        if g["kek_spi"] is None:
            raise ValueError(f"group {group!r} has no KEK: it cannot be rekeyed by GROUPKEY-PUSH")
        d = defer.Deferred()  # fires later, as a real rekey does once the store committed

        def done():
            g["seq"] += 1
            g["generation"] += 1
            d.callback({"group": group, "seq": g["seq"], "generation": g["generation"]})

        reactor.callLater(0, done)
        return d

    def evict(self, group: str, member: str):
        self.calls.append(("evict", group, member))
        g = self.groups[group]
        if member not in g["members"]:
            raise LookupError(member)
        del g["members"][member]
        g["evicted"].add(member)
        g["seq"] += 2
        return defer.succeed({"group": group, "member": member, "seq": g["seq"]})

    def readmit(self, group: str, member: str):
        self.calls.append(("readmit", group, member))
        g = self.groups[group]
        if member not in g["evicted"]:
            raise LookupError(f"{member} is not evicted from group {group}")
        g["evicted"].discard(member)
        return {"group": group, "member": member}

    def sas(self) -> dict:
        self.calls.append(("sas",))
        return {
            "phase1": [{"peer": "192.0.2.10:500", "identity": "gm1.example.org", "cookies": "0102030405060708"
                        "1112131415161718", "established_at": NOW - 600, "expires_at": NOW + 28200,
                        "proposal": "aes256-sha256-group14-psk", "skeyid_e": "ab" * 16}],
            "phase2": [{"peer": "192.0.2.10:500", "kind": "GROUPKEY-PULL", "group": "video",
                        "established_at": NOW - 590, "selectors": ["10.0.0.0/8", "239.1.1.1"], "pfs": False}],
        }

    def reload(self):
        self.calls.append(("reload",))
        if self.reload_error is not None:
            return defer.fail(self.reload_error)
        return {"changed": ["groups[0].teks"], "unchanged": ["groups[1]"]}


class ControlTestCase(unittest.TestCase):
    def setUp(self):
        # Under /tmp: a UNIX socket path holds at most 107 octets, and trial's temporary paths are long.
        self.directory = tempfile.mkdtemp(prefix="gdoictl-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "ctl.sock")
        self.fake = FakeKeyServer()

    def start(self, control=None, path=None) -> ControlServer:
        server = ControlServer(path or self.path, control or self.fake, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server

    @defer.inlineCallbacks
    def ctl(self, *argv, socket_path=None):
        """gdoictl's main() in a thread (its HTTP client blocks; the reactor serves): (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        rc = yield threads.deferToThread(gdoictl.main, ["--socket", socket_path or self.path, *argv], out, err)
        return rc, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def raw(self, method: str, path: str, body: bytes | None = None):
        """One HTTP request over the socket: (status, headers, decoded JSON)."""

        def request():
            connection = gdoictl._UnixHTTPConnection(self.path, 10)
            try:
                connection.request(method, path, body=body)
                response = connection.getresponse()
                return response.status, dict(response.getheaders()), json.loads(response.read())
            finally:
                connection.close()

        result = yield threads.deferToThread(request)
        return result


class CommandTests(ControlTestCase):
    @defer.inlineCallbacks
    def test_status_table(self):
        """status prints the daemon line, the SA counts, one aligned row per group and the counters."""
        self.start()
        rc, out, err = yield self.ctl("status")
        self.assertEqual((rc, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "gdoiserver 9.9 (key server), up 1h 02m")
        self.assertEqual(lines[1], "SAs: 2 Phase 1, 1 Phase 2, 0 half-open")
        header = next(line for line in lines if line.startswith("GROUP"))
        video = next(line for line in lines if line.startswith("video"))
        wan = next(line for line in lines if line.startswith("wan "))
        for column in ("MEMBERS", "STALE", "EVICTED", "GEN", "SEQ", "KEK SPI", "LAST REKEY", "NEXT REKEY"):
            self.assertIn(column, header)
        self.assertEqual(video.index("0a1b2c3d"), header.index("KEK SPI"))  # aligned under its header
        self.assertEqual(video.split()[:8], ["video", "1234", "2", "1", "0", "3", "17", "0a1b2c3d"])
        self.assertEqual(wan.split()[:3], ["wan", "2001,", "1.3.6.1.4.1.99999.1"])
        self.assertIn("multicast 239.192.0.1:848", video)
        self.assertRegex(video, r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\d")
        self.assertIn("gdoi_registered              2", out)
        self.assertIn("malformed.PAYLOAD_MALFORMED  1", out)

    @defer.inlineCallbacks
    def test_status_json(self):
        """status --json prints the daemon's JSON as it came (option before or after the command)."""
        self.start()
        for argv in (("status", "--json"), ("--json", "status")):
            rc, out, err = yield self.ctl(*argv)
            self.assertEqual(rc, 0)
            self.assertEqual(json.loads(out), json.loads(json.dumps(self.fake.status())))

    @defer.inlineCallbacks
    def test_members(self):
        """members prints each member's identity, address and port, registration time, leaf, last SEQ acked,
        missed rekeys and state."""
        self.start()
        rc, out, err = yield self.ctl("members", "video")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], "Group video: 2 members")
        self.assertEqual(lines[1].split(), ["IDENTITY", "ADDRESS", "REGISTERED", "LEAF", "LAST", "SEQ", "ACKED",
                                            "MISSED", "STATE"])
        gm1 = lines[2].split()
        self.assertEqual(gm1[:2], ["gm1.example.org", "192.0.2.10:848"])
        self.assertEqual(gm1[-4:], ["65536", "17", "0", "ok"])
        gm2 = lines[3].split()
        self.assertEqual(gm2[:2], ["gm2.example.org", "[2001:db8::2]:848"])
        self.assertEqual(gm2[-4:], ["65537", "14", "3", "stale"])
        self.assertEqual(self.fake.calls, [("members", "video")])

    @defer.inlineCallbacks
    def test_members_json_leaves_secrets_out(self):
        """members --json carries every public field and none named like a key, nor any bytes value."""
        self.start()
        rc, out, err = yield self.ctl("members", "video", "--json")
        answer = json.loads(out)
        self.assertEqual(answer["group"], "video")
        gm1, gm2 = answer["members"]
        self.assertEqual(set(gm1), {"identity", "address", "port", "registered_at", "leaf", "last_seq_acked",
                                    "missed", "stale"})
        self.assertNotIn("psk", gm2)

    @defer.inlineCallbacks
    def test_unknown_group(self):
        """An unknown group is the daemon saying no: its message on stderr and exit status 1."""
        self.start()
        for argv in (("members", "nope"), ("rekey", "nope"), ("evict", "nope", "gm1"), ("readmit", "nope", "gm1")):
            rc, out, err = yield self.ctl(*argv)
            self.assertEqual((rc, out, err), (1, "", 'gdoictl: unknown group "nope"\n'), argv)

    @defer.inlineCallbacks
    def test_rekey(self):
        """rekey waits for the rekey to be done and prints the SEQ and generation it used."""
        self.start()
        rc, out, err = yield self.ctl("rekey", "video")
        self.assertEqual((rc, out), (0, "group video rekeyed: SEQ 18, generation 4\n"))
        rc, out, err = yield self.ctl("rekey", "video", "--json")
        self.assertEqual(json.loads(out), {"group": "video", "seq": 19, "generation": 5})

    @defer.inlineCallbacks
    def test_rekey_refused(self):
        """A rekey the daemon cannot make (a ValueError: the group has no KEK) is its message and status 1."""
        self.start()
        rc, out, err = yield self.ctl("rekey", "wan")
        self.assertEqual((rc, err), (1, "gdoictl: group 'wan' has no KEK: it cannot be rekeyed by GROUPKEY-PUSH\n"))

    @defer.inlineCallbacks
    def test_evict_and_readmit(self):
        """evict removes the member and says it is refused until readmitted; readmit undoes it; an unknown member
        is named with its group."""
        self.start()
        rc, out, err = yield self.ctl("evict", "video", "gm2.example.org")
        self.assertEqual((rc, out), (0, "member gm2.example.org evicted from group video (SEQ 19): refused until "
                                        "readmitted\n"))
        rc, out, err = yield self.ctl("members", "video")
        self.assertNotIn("gm2.example.org", out)
        rc, out, err = yield self.ctl("evict", "video", "gm2.example.org")
        self.assertEqual((rc, err), (1, 'gdoictl: unknown member "gm2.example.org" in group "video"\n'))
        rc, out, err = yield self.ctl("readmit", "video", "gm2.example.org")
        self.assertEqual((rc, out), (0, "member gm2.example.org readmitted to group video: it may register again\n"))
        rc, out, err = yield self.ctl("readmit", "video", "gm2.example.org")
        self.assertEqual((rc, err), (1, "gdoictl: gm2.example.org is not evicted from group video\n"))

    @defer.inlineCallbacks
    def test_names_with_slashes(self):
        """Group and member names travel intact, whatever characters they hold."""
        self.start()
        self.fake.groups["a/b c?"] = self.fake.groups.pop("video")
        rc, out, err = yield self.ctl("evict", "a/b c?", "gm1.example.org")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.fake.calls[-1], ("evict", "a/b c?", "gm1.example.org"))

    @defer.inlineCallbacks
    def test_sas(self):
        """sas prints the Phase 1 SAs (peer, identity, cookies, times, proposal) and the Phase 2 ones."""
        self.start()
        rc, out, err = yield self.ctl("sas")
        self.assertEqual(rc, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0], "Phase 1 SAs (1):")
        self.assertEqual(lines[1].split(), ["PEER", "IDENTITY", "COOKIES", "ESTABLISHED", "EXPIRES", "PROPOSAL"])
        self.assertTrue(lines[2].startswith("192.0.2.10:500  gm1.example.org  01020304050607081112131415161718"))
        self.assertTrue(lines[2].endswith("aes256-sha256-group14-psk"))
        self.assertIn("Phase 2 SAs (1):", lines)
        phase2 = lines[lines.index("Phase 2 SAs (1):") + 2]
        self.assertIn("GROUPKEY-PULL", phase2)
        self.assertIn("10.0.0.0/8, 239.1.1.1", phase2)
        rc, out, err = yield self.ctl("sas", "--json")
        self.assertEqual(json.loads(out)["phase1"][0]["cookies"], "01020304050607081112131415161718")
        self.assertNotIn("skeyid_e", out)  # left out by the API

    @defer.inlineCallbacks
    def test_reload(self):
        """reload prints what changed; a configuration error is the daemon's 400 and its line, status 1."""
        self.start()
        rc, out, err = yield self.ctl("reload")
        self.assertEqual((rc, out), (0, "configuration reloaded: 1 changed (groups[0].teks), 1 unchanged\n"))
        self.fake.reload_error = ConfigError("/etc/gdoiserver.toml", "groups[0].teks[0].key_bits",
                                             "got 100, expected one of 128, 192, 256")
        rc, out, err = yield self.ctl("reload")
        self.assertEqual((rc, err), (1, "gdoictl: /etc/gdoiserver.toml: groups[0].teks[0].key_bits: got 100, "
                                        "expected one of 128, 192, 256\n"))

    @defer.inlineCallbacks
    def test_internal_error(self):
        """A bug in the daemon is a 500 naming the exception type only; the traceback goes to the daemon's log."""
        self.start()
        self.fake.fail_status = RuntimeError("secret detail")
        rc, out, err = yield self.ctl("status")
        self.assertEqual((rc, err), (1, "gdoictl: internal error (RuntimeError): see the daemon's log\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_unreachable(self):
        """No daemon on the socket: exit status 69 and one line naming the socket, with a hint."""
        rc, out, err = yield self.ctl("status")
        self.assertEqual(rc, 69)
        self.assertEqual(err, f"gdoictl: cannot reach the daemon at {self.path}: No such file or directory (is "
                         "gdoiserver running? --socket PATH or --config FILE names its control socket)\n")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()
        rc, out, err = yield self.ctl("status")
        self.assertEqual(rc, 69)
        self.assertIn("Connection refused", err)

    @defer.inlineCallbacks
    def test_timeout(self):
        """A daemon that does not answer within --timeout: exit status 69 and a line saying so."""
        stuck = defer.Deferred()
        self.fake.rekey = lambda group: stuck
        self.start()
        self.addCleanup(lambda: stuck.called or stuck.callback({}))
        rc, out, err = yield self.ctl("rekey", "video", "--timeout", "0.05")
        self.assertEqual((rc, err), (69, f"gdoictl: no answer on {self.path} within 0.05 s (is the daemon busy or "
                                         "stuck?)\n"))

    @defer.inlineCallbacks
    def test_socket_from_config(self):
        """--config FILE finds the socket in its [control] table (only that table is read)."""
        self.start()
        config = os.path.join(self.directory, "gdoiserver.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f'[control]\nsocket = "{self.path}"\n[[peers]]\npsk_file = "/nonexistent"\n')
        out, err = io.StringIO(), io.StringIO()
        for argv in (["--config", config, "status"], ["status", "--config", config]):
            rc = yield threads.deferToThread(gdoictl.main, argv, out, err)
            self.assertEqual(rc, 0, err.getvalue())
        self.assertEqual(gdoictl.socket_from_config(config), self.path)
        with open(config, "w", encoding="utf-8") as f:
            f.write("[control]\nsocket = 5\n")
        rc = gdoictl.main(["--config", config, "status"], out, err)
        self.assertEqual(rc, 78)
        self.assertIn("control.socket: got 5, expected a non-empty string", err.getvalue())

    def test_socket_and_config_exclusive(self):
        """--socket and --config together are a usage error."""
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, gdoictl.main, ["--socket", "a", "--config", "b", "status"])
        self.assertEqual(e.code, 2)
        self.assertIn("not allowed with argument", stderr.getvalue())


class APITests(ControlTestCase):
    @defer.inlineCallbacks
    def test_unknown_endpoint(self):
        """A path the API does not have is a 404 with a JSON error."""
        self.start()
        status, headers, body = yield self.raw("GET", "/v1/nope")
        self.assertEqual((status, body), (404, {"error": "no such endpoint: /v1/nope"}))
        self.assertEqual(headers["Content-Type"], "application/json")
        status, headers, body = yield self.raw("GET", "/status")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_wrong_method(self):
        """The wrong method is a 405 with an Allow header; nothing is called."""
        self.start()
        status, headers, body = yield self.raw("POST", "/v1/status", b"{}")
        self.assertEqual((status, headers["Allow"]), (405, "GET"))
        status, headers, body = yield self.raw("GET", "/v1/groups/video/rekey")
        self.assertEqual((status, headers["Allow"]), (405, "POST"))
        self.assertEqual(self.fake.calls, [])

    @defer.inlineCallbacks
    def test_bad_bodies(self):
        """evict needs a JSON object with a member: anything else is a 400 (413 when over 64 KiB)."""
        self.start()
        for body, message in [(b"not json", "the request body is not JSON"),
                              (b"[1]", "the request body is not a JSON object"),
                              (b"{}", 'the request needs {"member": "IDENTITY"}'),
                              (b'{"member": 5}', 'the request needs {"member": "IDENTITY"}')]:
            status, headers, answer = yield self.raw("POST", "/v1/groups/video/evict", body)
            self.assertEqual((status, answer), (400, {"error": message}), body)
        status, headers, answer = yield self.raw("POST", "/v1/groups/video/evict", b" " * (65 * 1024))
        self.assertEqual(status, 413)
        self.assertEqual(self.fake.calls, [])

    @defer.inlineCallbacks
    def test_trailing_slash(self):
        """A trailing slash names the same endpoint."""
        self.start()
        status, headers, body = yield self.raw("GET", "/v1/status/")
        self.assertEqual((status, body["version"]), (200, "9.9"))

    def test_public(self):
        """public() leaves out fields named like secrets and bytes values at any depth, turns other objects into
        their text and an infinite time into null."""
        value = {"a": 1, "ack_key": "x", "nested": {"psk": 1, "data": b"\x00" * 4, "list": [b"x", "y", ("z",)]},
                 "kek_spi": "0a0b", "key_bits": 128, "when": None, "obj": ConfigError("f", "k", "p"),
                 "next": float("inf")}
        self.assertEqual(public(value), {"a": 1, "nested": {"list": ["y", ["z"]]}, "kek_spi": "0a0b",
                                         "key_bits": 128, "when": None, "obj": "f: k: p", "next": None})


class SocketTests(ControlTestCase):
    def test_modes(self):
        """The socket is made with mode 0600 whatever the umask, in a directory we make with mode 0700."""
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        path = os.path.join(self.directory, "run", "gdoi", "ctl.sock")
        self.start(path=path)
        self.assertTrue(stat.S_ISSOCK(os.lstat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.lstat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

    def test_existing_directory_kept(self):
        """A directory that exists keeps its mode (it is the operator's)."""
        os.chmod(self.directory, 0o755)
        self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o755)
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o600)

    @defer.inlineCallbacks
    def test_removed_on_stop(self):
        """Stopping the service removes the socket file."""
        server = ControlServer(self.path, self.fake, reactor)
        server.startService()
        self.assertTrue(os.path.exists(self.path))
        yield server.stopService()
        self.assertFalse(os.path.exists(self.path))

    @defer.inlineCallbacks
    def test_stale_socket_replaced(self):
        """A socket file nobody accepts on (a dead process's) is replaced."""
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()
        self.start()
        rc, out, err = yield self.ctl("status")
        self.assertEqual(rc, 0, err)

    @defer.inlineCallbacks
    def test_live_socket_refused(self):
        """A socket a running process accepts on is an error naming it, and that process keeps its socket."""
        self.start()
        other = ControlServer(self.path, FakeKeyServer(), reactor)
        e = self.assertRaises(ControlSocketError, other.startService)
        self.assertEqual(str(e), f"control socket {self.path} is in use by a running process (another "
                         "gdoiserver?): stop it or set control.socket")
        rc, out, err = yield self.ctl("status")
        self.assertEqual(rc, 0)

    def test_live_socket_exit(self):
        """For twistd (exit_on_error) the same is one line on stderr and exit status 69."""
        self.start()
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        other = ControlServer(self.path, FakeKeyServer(), reactor, exit_on_error=True)
        e = self.assertRaises(SystemExit, other.startService)
        self.assertEqual(e.code, 69)
        self.assertEqual(stderr.getvalue(), f"gdoi: control socket {self.path} is in use by a running process "
                         "(another gdoiserver?): stop it or set control.socket\n")

    def test_path_too_long(self):
        """A path the kernel refuses (too long for a socket address) is an error naming it, and leaves nothing
        running."""
        path = os.path.join(self.directory, "x" * 120)
        e = self.assertRaises(ControlSocketError, ControlServer(path, self.fake, reactor).startService)
        self.assertEqual(str(e), f"control socket {path}: cannot listen: AF_UNIX path too long")

    def test_not_a_socket(self):
        """A path that holds something other than a socket is an error, and the file is left alone."""
        with open(self.path, "w") as f:
            f.write("keep me")
        e = self.assertRaises(ControlSocketError, ControlServer(self.path, self.fake, reactor).startService)
        self.assertIn("exists and is not a socket", str(e))
        with open(self.path) as f:
            self.assertEqual(f.read(), "keep me")


class SubprocessTests(ControlTestCase):
    """``python -m gdoiserver.tools.gdoictl`` as the operator runs it."""

    def gdoictl(self, *argv):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return utils.getProcessOutputAndValue(sys.executable, ["-m", "gdoiserver.tools.gdoictl", "--socket",
                                                               self.path, *argv], env=env, path=REPO)

    @defer.inlineCallbacks
    def test_commands(self):
        """status, members, rekey, evict and an unknown group give the documented output and exit status."""
        self.start()
        out, err, code = yield self.gdoictl("status")
        self.assertEqual(code, 0, err)
        self.assertIn(b"gdoiserver 9.9 (key server), up 1h 02m", out)
        out, err, code = yield self.gdoictl("members", "video")
        self.assertEqual(code, 0, err)
        self.assertIn(b"gm2.example.org  [2001:db8::2]:848", out)
        out, err, code = yield self.gdoictl("rekey", "video")
        self.assertEqual((code, out), (0, b"group video rekeyed: SEQ 18, generation 4\n"))
        out, err, code = yield self.gdoictl("evict", "video", "gm1.example.org")
        self.assertEqual((code, out), (0, b"member gm1.example.org evicted from group video (SEQ 20): refused "
                                          b"until readmitted\n"))
        out, err, code = yield self.gdoictl("members", "nope")
        self.assertEqual((code, out, err), (1, b"", b'gdoictl: unknown group "nope"\n'))

    @defer.inlineCallbacks
    def test_unreachable(self):
        """Without a daemon the process exits with status 69."""
        out, err, code = yield self.gdoictl("status")
        self.assertEqual(code, 69)
        self.assertIn(b"cannot reach the daemon at", err)


def real_group(directory: str):
    """A group with a KEK from the configuration schema, its keys made: (group, secrets)."""
    signing = pki.write_key(os.path.join(directory, "ks-signing.key"), pki.key("p256", 3))
    config = parse_config({"groups": [{
        "name": "video", "number": 1234, "members": [{"pattern": "*.example.org"}],
        "teks": [{"name": "v4", "transform": "aes-cbc", "integrity": "hmac-sha256", "key_bits": 256,
                  "destination": "239.1.1.1"},
                 {"name": "gcm", "transform": "aes-gcm", "destination": "239.1.1.2"}],
        "kek": {"signature_key": signing}, "rekey": {"source": "192.0.2.1", "multicast_address": "239.192.0.1"},
    }]})
    group = GroupTable(config.groups, os.urandom).groups[0]
    generation, kek = group.keys.current(NOW), group.keys.kek(NOW)
    secrets = [kek.key] + [k for t in generation.teks for k in (t.encryption_key, t.integrity_key)]
    secrets.append(group.policy.kek.signature_key.private_numbers().private_value.to_bytes(32, "big"))
    return group, generation, kek, [s for s in secrets if len(s) >= 8]


class KeysControl:
    """A KeyServerControl over a real group that hands the API everything it holds, keys included (as bytes and as
    hex under their own names), so that the test sees what the API lets through."""

    def __init__(self, group, generation, kek):
        self.group, self.generation, self.kek = group, generation, kek
        self.ack_keys = [os.urandom(32) for _ in range(2)]

    def status(self):
        teks = [{"name": t.policy.name, "spi": t.spi.hex(), "encryption_key": t.encryption_key.hex(),
                 "integrity_key": t.integrity_key, "expires_at": t.expires_at} for t in self.generation.teks]
        kek = {k: v for k, v in attrs.asdict(self.kek, recurse=False).items() if k != "policy"}
        return {"version": "1", "uptime": 1.0, "role": "key server", "counters": {},
                "sas": {"phase1": 1, "phase2": 0, "half_open": 0},
                "groups": [{"name": self.group.policy.name, "ids": [str(i) for i in self.group.policy.ids],
                            "members": 2, "stale": 0, "evicted": [], "generation": self.generation.number,
                            "seq": self.kek.seq, "kek_spi": self.kek.spi.hex()[:8], "last_rekey": None,
                            "next_rekey": self.generation.expires_at, "rekey_transport": "multicast",
                            "teks": teks, "kek": kek, "kek_key": self.kek.key.hex()}]}

    def members(self, group):
        return [{"identity": f"gm{i}.example.org", "address": "192.0.2.1", "registered_at": NOW, "leaf": 65536 + i,
                 "last_seq_acked": 0, "missed": 0, "stale": False, "ack_key": key, "ack_key_hex": key.hex()}
                for i, key in enumerate(self.ack_keys)]

    def rekey(self, group):
        return {"group": group, "seq": 1, "generation": self.generation.number, "kek": self.kek.key}

    def evict(self, group, member):
        return {"group": group, "member": member, "seq": 2, "new_kek_key": self.kek.key.hex()}

    def readmit(self, group, member):
        return {"group": group, "member": member}

    def sas(self):
        return {"phase1": [{"peer": "192.0.2.1:500", "identity": "gm0.example.org", "cookies": "00" * 16,
                            "established_at": NOW, "expires_at": NOW + 60, "proposal": "p",
                            "skeyid_a": self.ack_keys[0].hex(), "keymat": self.kek.key}], "phase2": []}

    def reload(self):
        return {"changed": [], "unchanged": ["video"]}


class NoKeyMaterialTests(ControlTestCase):
    @defer.inlineCallbacks
    def test_no_command_prints_keys(self):
        """No command, in table or JSON form, prints a TEK key, the KEK key, the KEK signature key or a member's
        acknowledgement key of a real group, in any encoding; the public facts (generation, KEK SPI prefix) are
        there."""
        group, generation, kek, secrets = real_group(self.directory)
        control = KeysControl(group, generation, kek)
        secrets += control.ack_keys
        self.start(control)
        outputs = []
        for argv in (["status"], ["members", "video"], ["rekey", "video"], ["evict", "video", "gm1.example.org"],
                     ["readmit", "video", "gm1.example.org"], ["sas"], ["reload"]):
            for form in ([], ["--json"]):
                rc, out, err = yield self.ctl(*argv, *form)
                self.assertEqual(rc, 0, err)
                outputs.append(out + err)
        text = "\n".join(outputs)
        self.assertIn(kek.spi.hex()[:8], text)
        self.assertIn(f'"generation": {generation.number}', text)
        for secret in secrets:
            latin = secret.decode("latin-1")
            for form in (secret.hex(), secret.hex().upper(), repr(secret)[2:-1], latin, json.dumps(latin)[1:-1],
                         base64.b64encode(secret).decode("ascii")):
                self.assertNotIn(form, text)
