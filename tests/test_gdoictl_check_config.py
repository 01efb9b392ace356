"""``gdoictl check-config FILE``: good key server and member configurations pass with a one-line summary; bad ones
(a missing key, a wrong type, a world-readable secret file, ...) give the documented error line and exit 78."""

import io
import os
import sqlite3
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from gdoiserver.store.sqlite import SQLiteStore
from gdoiserver.tap import Options, makeService
from gdoiserver.tools import gdoictl
from tests import pki

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "gdoictl: configuration error: "

SERVER = """\
[server]
listen = [ { address = "127.0.0.1", port = 0 } ]

[[peers]]
address = "any"
psk_file = "{psk}"

[metrics]
listen = "127.0.0.1:9848"

[[groups]]
name = "video"
number = 1234

[[groups.members]]
pattern = "*.example.org"

[[groups.teks]]
name = "v4"
transform = "aes-gcm"
destination = "239.1.1.1"

[groups.kek]
signature_key = "{signing}"

[groups.rekey]
source = "127.0.0.1"
multicast_address = "239.192.0.1"
ack = true
"""

MEMBER = """\
[[key_servers]]
address = "127.0.0.1"

[[groups]]
number = 1234

[identity]
id = "gm1.example.org"

[auth]
psk_file = "{psk}"

[member]
listen = [ { address = "127.0.0.1", port = 0 } ]
"""


class ConfigFiles(unittest.TestCase):
    """A temp directory with a PSK file and a KEK signing key (mode 0600), and configurations written there."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.psk = self.secret("members.psk", b"correct horse battery staple\n")
        self.signing = pki.write_key(os.path.join(self.dir, "ks-signing.key"), pki.key("p256", 4))

    def secret(self, name: str, data: bytes, mode: int = 0o600) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def write(self, text: str, name: str = "config.toml") -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("{psk}", self.psk).replace("{signing}", self.signing))
        return path


class CheckConfigTests(ConfigFiles):
    def check(self, *argv) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = gdoictl.main(["check-config", *argv], out, err)
        return rc, out.getvalue(), err.getvalue()

    def error(self, text: str, *options) -> str:
        """The error line for a configuration ``text`` (exit 78, nothing on stdout), without the prefix and the
        file name."""
        path = self.write(text)
        rc, out, err = self.check(path, *options)
        self.assertEqual((rc, out), (78, ""), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith(f"{PREFIX}{path}: "), err)
        return err[len(f"{PREFIX}{path}: "):].rstrip("\n")

    def test_good_server(self):
        """A good key server configuration: exit 0 and one line saying what it holds."""
        path = self.write(SERVER)
        rc, out, err = self.check(path)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(out, f"{path}: OK: key server, 1 listen addresses, 2 Phase 1 proposals, 1 peers, 1 groups "
                         "(video), control socket off, metrics 127.0.0.1:9848\n")

    def test_good_member(self):
        """A member configuration is told by its content ([[key_servers]]) and checked as the member's start-up
        does."""
        path = self.write(MEMBER)
        rc, out, err = self.check(path)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(out, f"{path}: OK: group member, 1 key servers, 1 groups (group 1234), pre-shared key, "
                         "Phase 1 main mode\n")
        self.assertEqual(self.check(path, "--member")[0], 0)

    def test_kind_forced(self):
        """--member and --key-server force the schema: the other kind's file is then an error naming a key."""
        self.assertTrue(self.error(SERVER, "--member").startswith("server: unknown key (expected one of: "
                                                                  "key_servers, "))
        self.assertEqual(self.error(MEMBER, "--key-server"),
                         "key_servers: unknown key (expected one of: server, security, limits, keylog, store, "
                         "control, metrics, ike, identity, peers, groups, ipsec)")

    def test_missing_key(self):
        """A required key left out names its dotted path; a member's file without [[key_servers]] is still told
        by its other tables."""
        text = SERVER.replace('name = "v4"\n', "")
        self.assertEqual(self.error(text), "groups[0].teks[0].name: missing (this key is required)")
        text = MEMBER.replace('[[key_servers]]\naddress = "127.0.0.1"\n', "")
        self.assertEqual(self.error(text), "key_servers: missing (this key is required)")

    def test_wrong_type(self):
        """A value of the wrong type names the key, the value and what was expected."""
        text = SERVER.replace('number = 1234', 'number = "1234"')
        self.assertEqual(self.error(text), 'groups[0].number: got "1234", expected an integer from 0 to 4294967295')
        text = SERVER.replace("ack = true", "ack = 1")
        self.assertEqual(self.error(text), "groups[0].rekey.ack: got 1, expected true or false")
        text = MEMBER.replace("[auth]", "[registration]\npfs = \"yes\"\n[auth]")
        self.assertEqual(self.error(text), 'registration.pfs: got "yes", expected true or false')

    def test_world_readable_psk(self):
        """A pre-shared key file that others may read is refused, with its mode and the fix."""
        os.chmod(self.psk, 0o644)
        self.assertEqual(self.error(SERVER), f'peers[0].psk_file: "{self.psk}" has mode 0644, expected 0600 or '
                         f"stricter (chmod 600 {self.psk}): it holds a secret")
        self.assertEqual(self.error(MEMBER), f'auth.psk_file: "{self.psk}" has mode 0644, expected 0600 or '
                         f"stricter (chmod 600 {self.psk}): it holds a secret")

    def test_group_readable_signing_key(self):
        """The KEK signature key file must be private too."""
        os.chmod(self.signing, 0o640)
        self.assertEqual(self.error(SERVER), f'groups[0].kek.signature_key: "{self.signing}" has mode 0640, expected '
                         f"0600 or stricter (chmod 600 {self.signing}): it holds a secret")

    def test_metrics_not_loopback(self):
        """A metrics endpoint on a non-loopback address is refused at the check."""
        text = SERVER.replace('listen = "127.0.0.1:9848"', 'listen = "0.0.0.0:9848"')
        self.assertEqual(self.error(text), 'metrics.listen: got "0.0.0.0:9848", expected "address:port" on a loopback'
                         ' address, such as "127.0.0.1:9848" or "[::1]:9848" (the endpoint has no authentication)')

    def test_checks_beyond_the_schema(self):
        """The checks start-up makes after the schema run too: the IPsec DOI's PFS groups (Logjam)."""
        text = SERVER + '\n[[ipsec.policies]]\nproposals = ["aes128-sha256-modp1024"]\n'
        self.assertIn("ipsec.policies[0].proposals[0]: ", self.error(text) + ": ")

    def test_xfrm_sinks_as_startup(self):
        """The SA sinks are made as start-up makes them: ``xfrm = true`` passes where the kernel takes SAs, and is
        an error at ``sink.xfrm`` (member) or ``ipsec.xfrm`` (key server) naming the reason where it does not; the
        member's start-up (``twistd gdoi-member``) agrees."""
        from gdoiserver.doi.ipsec.xfrm import xfrm_unavailable
        from gdoiserver.member import tap as member_tap

        reason = xfrm_unavailable()
        member = self.write(MEMBER + "\n[sink]\nxfrm = true\n", "member.toml")
        server = self.write(SERVER + "\n[ipsec]\nxfrm = true\n", "server.toml")
        options = member_tap.Options()
        options.parseOptions(["--config", member])
        if reason is None:
            self.assertEqual(self.check(member)[0], 0)
            self.assertEqual(self.check(server)[0], 0)
            member_tap.makeService(options).sink.close()
            return
        self.assertEqual(self.check(member), (78, "", f"{PREFIX}{member}: sink.xfrm: cannot install group SAs in the "
                                                      f"kernel: {reason}\n"))
        self.assertEqual(self.check(server), (78, "", f"{PREFIX}{server}: ipsec.xfrm: cannot install SAs in the "
                                                      f"kernel: {reason}\n"))
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(self.assertRaises(SystemExit, member_tap.makeService, options).code, 78)
        self.assertEqual(stderr.getvalue(), f"gdoi-member: configuration error: {member}: sink.xfrm: cannot install "
                                            f"group SAs in the kernel: {reason}\n")

    def test_unreadable_and_bad_toml(self):
        """A file that is missing or not TOML is an error naming it."""
        missing = os.path.join(self.dir, "missing.toml")
        rc, out, err = self.check(missing)
        self.assertEqual((rc, err), (78, f"{PREFIX}{missing}: cannot read the file: No such file or directory\n"))
        self.assertIn("not valid TOML", self.error("[server\n"))

    @defer.inlineCallbacks
    def test_subprocess(self):
        """``python -m gdoiserver.tools.gdoictl check-config`` exits 78 with the error line, 0 with the summary."""
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        bad = self.write(SERVER.replace("ack = true", 'ack = "yes"'), "bad.toml")
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "gdoiserver.tools.gdoictl", "check-config", bad], env=env, path=REPO)
        self.assertEqual((code, out), (78, b""))
        self.assertEqual(err.decode(), f'{PREFIX}{bad}: groups[0].rekey.ack: got "yes", expected true or false\n')
        good = self.write(SERVER, "good.toml")
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "gdoiserver.tools.gdoictl", "check-config", good], env=env, path=REPO)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(f"{good}: OK: key server".encode()))


class StoreTests(ConfigFiles):
    """check-config opens no key store, but finds what would stop start-up from opening it (exit 73, EX_CANTCREAT,
    in start-up's words) without creating, locking or writing anything."""

    def config(self, store: str) -> str:
        return self.write(SERVER + f'\n[store]\npath = "{store}"\n')

    def check(self, path: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = gdoictl.main(["check-config", path], out, err)
        return rc, out.getvalue(), err.getvalue()

    def startup_error(self, path: str) -> str:
        """What ``twistd gdoi`` prints for the configuration at ``path`` before it exits 73."""
        options = Options()
        options.parseOptions(["--config", path])
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(e.code, os.EX_CANTCREAT)
        return stderr.getvalue()

    def assertStoreRefused(self, store: str, problem: str) -> None:
        path = self.config(store)
        rc, out, err = self.check(path)
        self.assertEqual((rc, out), (73, ""), err)
        self.assertEqual(err, f"gdoictl: key store error (store.path): {problem}\n")
        self.assertEqual(self.startup_error(path), f"gdoi: key store error (store.path): {problem}\n",
                         "start-up says the same")

    def test_loose_mode(self):
        """A store file that group or others may read is refused, naming the file, its mode and the fix."""
        store = os.path.join(self.dir, "state.db")
        with open(store, "wb"):
            pass
        os.chmod(store, 0o644)
        self.assertStoreRefused(store, f"{store}: the key store holds keys but has mode 0644; group and others must "
                                       f"have no access (chmod 600 {store})")

    def test_foreign_database(self):
        """An SQLite file that is not a gdoiserver store is refused."""
        store = os.path.join(self.dir, "other.db")
        with sqlite3.connect(store) as db:
            db.execute("CREATE TABLE t (x)")
        db.close()
        os.chmod(store, 0o600)
        self.assertStoreRefused(store, f"{store}: an SQLite database but not a gdoiserver key store")

    def test_not_a_database(self):
        """A file that is not SQLite at all is refused."""
        store = os.path.join(self.dir, "junk.db")
        with open(os.open(store, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(b"not a database, " * 512)
        self.assertStoreRefused(store, f"{store}: not a gdoiserver key store (not an SQLite database, or corrupt: "
                                       "file is not a database)")

    def test_directory_cannot_be_made(self):
        """A store below a regular file: its directory cannot be made."""
        blocker = os.path.join(self.dir, "blocker")
        with open(blocker, "w"):
            pass
        store = os.path.join(blocker, "sub", "state.db")
        self.assertStoreRefused(store, f"{blocker}/sub: cannot create the key store's directory: Not a directory")

    def test_missing_store_untouched(self):
        """A store that does not exist yet is fine where it can be made, and check-config does not make it (nor
        its directories)."""
        store = os.path.join(self.dir, "new", "deeper", "state.db")
        rc, out, err = self.check(self.config(store))
        self.assertEqual((rc, err), (0, ""))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "new")))

    def test_store_in_use(self):
        """The store of a running key server (held in SQLite's exclusive lock) passes, and is left as it was."""
        store = os.path.join(self.dir, "live.db")
        live = SQLiteStore(store, reactor)
        self.addCleanup(live.close)
        path = self.config(store)
        before = {name: os.stat(os.path.join(self.dir, name)).st_mtime_ns for name in os.listdir(self.dir)}
        rc, out, err = self.check(path)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual({name: os.stat(os.path.join(self.dir, name)).st_mtime_ns for name in os.listdir(self.dir)},
                         before)

    def test_group_without_kek(self):
        """Without a rekeyed group the key server opens no store, so a bad store path does not matter."""
        blocker = os.path.join(self.dir, "blocker")
        with open(blocker, "w"):
            pass
        text = SERVER.split("[groups.kek]")[0] + f'\n[store]\npath = "{blocker}/state.db"\n'
        rc, out, err = self.check(self.write(text))
        self.assertEqual((rc, err), (0, ""))
