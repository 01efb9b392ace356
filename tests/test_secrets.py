"""Secrets (issue 9): no key, PSK or private-key byte string appears in any log line, metrics scrape or gdoictl
output, and secret files that group or others may read are refused at start-up.

:class:`LeakTests` runs ``twistd -n gdoi`` (its log in the text format, then in the JSON one) with a known PSK, KEK
signing key and keylog, and our group members in this process on real loopback sockets.  It drives registrations,
two refusals (a wrong PSK, an identity no member rule names), rekeys and an eviction through ``gdoictl``, reads
every ``gdoictl`` command in both output forms and the Prometheus endpoint, then collects every secret the run
made: the PSKs, the KEK signing key (its scalar, its DER and PEM body), each TEK, KEK, LKH node and
acknowledgement key from the key store (which holds them by design: it is checked for mode 0600 instead of being
searched), the keylog's keys and the members' ISAKMP SA keys (SKEYID, SKEYID_d/a/e, the encryption key).  Each is
searched for as raw octets, hexadecimal (either case) and base64 (standard and URL-safe, at each alignment) in
the key server's log and output, the members' log events written by our text and JSON observers, every command's
output and every scrape.

:class:`StartupTests` gives ``twistd -n gdoi`` each secret file with mode 0644 in turn (the PSK file, the KEK
signing key, the certificate's private key, the key store, the keylog) and checks the documented refusal.
"""

import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from io import StringIO

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from gdoiserver.logs import json_observer, text_observer
from gdoiserver.member.config import parse_member_config
from gdoiserver.member.service import GroupMember
from tests import pki
from tests.test_gdoi_registration import Files, write_private
from tests.test_rekey_e2e import free_port, until
from tests.test_tap import REPO, TWISTD

KS_ADDRESS = "127.0.0.2"
GROUP = "secrets"
NUMBER = 3201
PSK = b"secrets-test-psk-4be1c07d"
WRONG_PSK = b"not-the-psk-9d2a61f3e0"
#: Seconds one step (a start, a registration, a rekey reaching the members, a command) may take.
WAIT = 30.0
#: Secrets shorter than this are not searched for (they would match by chance).
SHORTEST = 8


def group_toml(signing_key: str, ks_port: int) -> str:
    return f"""
[[groups]]
name = "{GROUP}"
number = {NUMBER}
[[groups.members]]
pattern = "*.example.org"
[[groups.teks]]
name = "secrets-cbc"
transform = "aes-cbc"
integrity = "hmac-sha256"
destination = "239.1.1.9"
lifetime = 3600
[groups.kek]
signature_key = "{signing_key}"
[groups.rekey]
source = "{KS_ADDRESS}"
source_port = {ks_port}
unicast = true
ack = true
retransmits = 1
retransmit_interval = 0.5
"""


def forms(secret: bytes) -> set[bytes]:
    """The ways ``secret`` could be written: the octets, hexadecimal in either case, and base64 (standard and
    URL-safe) of the secret from each of its first three octets on, cut to the characters that depend on the
    secret alone (so that the forms are found inside a longer encoded string too)."""
    out = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for shift in range(3):
        part = secret[shift:]
        part = part[:len(part) - len(part) % 3]
        if len(part) >= 6:
            out |= {base64.b64encode(part), base64.urlsafe_b64encode(part)}
    return out


def signing_key_secrets(path: str) -> dict[str, bytes]:
    """The KEK signing key's private parts: the scalar (P-256: 32 octets), the PKCS#8 DER and the PEM body."""
    with open(path, "rb") as f:
        pem = f.read()
    key = serialization.load_pem_private_key(pem, None)
    value = key.private_numbers().private_value
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return {"signing key scalar": value.to_bytes(32, "big"), "signing key DER": der, "signing key PEM body": body}


def store_secrets(path: str) -> dict[str, bytes]:
    """Every key the store holds (read after the key server stopped)."""
    out = {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for table, columns in (("teks", ("encryption_key", "integrity_key")), ("keks", ("key",)),
                               ("lkh_nodes", ("key",)), ("members", ("ack_key",))):
            for i, row in enumerate(db.execute(f"SELECT {', '.join(columns)} FROM {table}")):
                for column, value in zip(columns, row):
                    out[f"store {table}[{i}].{column}"] = bytes(value)
    finally:
        db.close()
    return out


def keylog_secrets(path: str) -> dict[str, bytes]:
    out = {}
    with open(path, encoding="ascii") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("KEK "):
                out[f"keylog KEK line {i}"] = bytes.fromhex(line.split()[2])
            else:
                out[f"keylog SA line {i}"] = bytes.fromhex(line.split(",")[1])
    return out


class LeakTests(unittest.TestCase):
    """See the module notes."""

    timeout = 240

    def setUp(self):
        self.files = Files(self)
        self.run_dir = tempfile.mkdtemp(prefix="gdoi-sec-", dir="/tmp")  # a short path for the control socket
        self.addCleanup(shutil.rmtree, self.run_dir, ignore_errors=True)
        self.psk = write_private(self.files.path("members.psk"), PSK + b"\n")
        self.wrong_psk = write_private(self.files.path("wrong.psk"), WRONG_PSK + b"\n")
        self.signing_key = pki.write_key(self.files.path("kek-signing.key"), pki.key("p256", 11))
        self.keylog = self.files.path("gdoi.keylog")
        self.store = self.files.path("state.db")
        self.ks_port = free_port(KS_ADDRESS)
        self.metrics_port = free_port("127.0.0.1", socket.SOCK_STREAM)
        self.socket = os.path.join(self.run_dir, "ks.sock")
        self.proc = None
        self.outputs: list[str] = []  # every command's output and every scrape
        self.member_sa_keys: dict[str, bytes] = {}
        self.member_group_keys: dict[str, bytes] = {}
        self.text_log, self.json_log = StringIO(), StringIO()
        observers = [text_observer(self.text_log), json_observer(self.json_log)]
        for observer in observers:
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)

    def tearDown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # --- the key server and members -------------------------------------------------------------------------------

    def ks_config(self, log_format: str) -> str:
        extra = (f'[control]\nsocket = "{self.socket}"\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
                 f'[keylog]\npath = "{self.keylog}"\n')
        text = self.files.ks_config(group_toml(self.signing_key, self.ks_port), address=KS_ADDRESS,
                                    port=self.ks_port, extra=extra)
        text = text.replace(f'psk_file = "{self.files.psk}"', f'psk_file = "{self.psk}"')
        text = text.replace('nat_t_port = 0', f'nat_t_port = 0\nlog_format = "{log_format}"', 1)
        return self.files.write(f"ks-{log_format}.toml", text)

    @defer.inlineCallbacks
    def start_key_server(self, log_format: str):
        self.logfile = self.files.path(f"ks-{log_format}.log")
        self.output = self.files.path(f"ks-{log_format}.out")
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([*TWISTD, "--logfile", self.logfile, "gdoi", "--config",
                                          self.ks_config(log_format)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        yield until(lambda: "loaded" in self.read(self.logfile) or self.proc.poll() is not None, "the key server",
                    WAIT)
        self.assertIsNone(self.proc.poll(), self.read(self.output))

    def start_member(self, identity: str, psk: str | None = None) -> GroupMember:
        extra = "[registration]\nretry_delay = 300\n[ike]\nretransmit_initial = 0.2\nretransmit_tries = 2\n" \
                "exchange_timeout = 5.0\n"
        text = self.files.member_config([(KS_ADDRESS, self.ks_port)], [GROUP], identity=identity, psk=psk or self.psk,
                                        extra=extra)
        text = text.replace(f'name = "{GROUP}"\nnumber = 4242', f'name = "{GROUP}"\nnumber = {NUMBER}')
        member = GroupMember(parse_member_config(tomllib.loads(text)), reactor)
        member.startService()
        self.addCleanup(member.stopService)
        return member

    def keep_member_keys(self, name: str, member: GroupMember) -> None:
        """The member's ISAKMP SA keys and group keys, while it holds them."""
        for entry in member.engine.sas.values():
            keys = entry.sa.keys
            for field in ("skeyid", "skeyid_d", "skeyid_a", "skeyid_e", "enc_key"):
                self.member_sa_keys[f"{name} {entry.spi.hex()} {field}"] = getattr(keys, field)
        for state in member.groups.values():
            for spi, entry in state.teks.items():
                self.member_group_keys[f"{name} TEK {spi.hex()} encryption"] = entry[0].encryption_key
                self.member_group_keys[f"{name} TEK {spi.hex()} integrity"] = entry[0].integrity_key
            if state.rekey is not None:
                self.member_group_keys[f"{name} KEK"] = state.rekey.kek.key

    @staticmethod
    def seq(member) -> int:
        state = next(iter(member.groups.values()))
        return -1 if state.rekey is None else state.rekey.seq

    # --- what an operator reads -------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def gdoictl(self, *args, expect: int = 0):
        """``gdoictl`` in both forms (table and --json); its --json answer parsed."""
        answers = []
        for form in ([], ["--json"]):
            proc = subprocess.Popen([sys.executable, "-m", "gdoiserver.tools.gdoictl", "--socket", self.socket, *form,
                                     *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            yield until(lambda: proc.poll() is not None, f"gdoictl {' '.join(args)}", WAIT)
            out, err = proc.communicate()
            self.outputs += [out, err]
            self.assertEqual(proc.returncode, expect, out + err)
            answers.append(out)
        return json.loads(answers[1]) if expect == 0 else None

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=WAIT) as response:
            text = response.read().decode("utf-8")
        self.outputs.append(text)
        return text

    @staticmethod
    def read(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # --- the run ----------------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def run_operations(self, log_format: str):
        yield self.start_key_server(log_format)
        members = [self.start_member(f"gm{i}.example.org") for i in range(2)]
        yield until(lambda: all(self.seq(m) >= 0 for m in members), "registrations", WAIT)
        for i, member in enumerate(members):
            self.keep_member_keys(f"gm{i}", member)
        # Refusals: a wrong PSK (Phase 1), an identity no rule admits (GROUPKEY-PULL).
        refused = [self.start_member("gm9.example.org", psk=self.wrong_psk),
                   self.start_member("intruder.example.net")]
        try:
            yield until(lambda: all(m.counters["member_registration_failed"] for m in refused), "the refusals", WAIT)
        except AssertionError:
            self.fail(f"the refusals: {[dict(m.counters) for m in refused]}")
        # Rekeys and an eviction, as the operator asks for them.
        for _ in range(2):
            answer = yield self.gdoictl("rekey", GROUP)
            yield until(lambda: all(self.seq(m) >= answer["seq"] for m in members), "the rekey", WAIT)
            for i, member in enumerate(members):
                self.keep_member_keys(f"gm{i}", member)
        yield self.gdoictl("evict", GROUP, "gm1.example.org")
        yield until(lambda: self.seq(members[0]) > answer["seq"] + 1, "the rekeys after the eviction", WAIT)
        self.keep_member_keys("gm0", members[0])
        for args in (("status",), ("members", GROUP), ("sas",)):
            yield self.gdoictl(*args)
        yield self.gdoictl("members", "no-such-group", expect=1)
        self.assertIn("gdoi_registrations_total", self.scrape())
        self.proc.send_signal(signal.SIGTERM)
        yield until(lambda: self.proc.poll() is not None, "the key server to stop", WAIT)

    def secrets(self) -> dict[str, bytes]:
        found = {"PSK": PSK, "wrong PSK": WRONG_PSK, **signing_key_secrets(self.signing_key),
                 **store_secrets(self.store), **keylog_secrets(self.keylog), **self.member_sa_keys,
                 **self.member_group_keys}
        return {name: value for name, value in found.items() if len(value) >= SHORTEST}

    def check(self, log_format: str):
        secrets = self.secrets()
        kinds = {" ".join(name.split()[:2]) for name in secrets}
        self.assertTrue({"store teks[0].encryption_key", "store keks[0].key", "store lkh_nodes[0].key",
                         "store members[0].ack_key", "keylog KEK", "keylog SA"} <= kinds, kinds)
        self.assertGreaterEqual(len(self.member_sa_keys), 10)
        ks_log = self.read(self.logfile)
        self.assertIn("GDOI: registration of intruder.example.net", ks_log if log_format == "text" else
                      "\n".join(json.loads(line)["log_text"] for line in ks_log.splitlines() if line.strip()))
        if log_format == "json":
            self.assertTrue(all(json.loads(line) for line in ks_log.splitlines() if line.strip()))
        texts = {
            f"the key server's log ({log_format})": ks_log.encode(),
            "the key server's stdout and stderr": self.read(self.output).encode(),
            "the members' log (text)": self.text_log.getvalue().encode(),
            "the members' log (JSON)": self.json_log.getvalue().encode(),
            **{f"output {i}": text.encode() for i, text in enumerate(self.outputs)},
        }
        self.assertGreater(len(self.outputs), 20)
        for where in (f"the key server's log ({log_format})", "the members' log (text)", "the members' log (JSON)"):
            self.assertGreater(len(texts[where]), 1000, where)
        for where, text in texts.items():
            for name, secret in secrets.items():
                for form in forms(secret):
                    self.assertNotIn(form, text, f"{name} ({form[:12]!r}…) appears in {where}")
        # The files that hold keys by design are private.
        for path in (self.store, self.keylog):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

    @defer.inlineCallbacks
    def test_no_secret_in_text_logs_commands_or_metrics(self):
        """The key server logging in the text format: no PSK, signing key, TEK, KEK, LKH, acknowledgement or ISAKMP
        SA key shows in its log, the members' logs, any gdoictl output or any metrics scrape, in any encoding."""
        yield self.run_operations("text")
        self.check("text")

    @defer.inlineCallbacks
    def test_no_secret_in_json_logs_commands_or_metrics(self):
        """The same with the key server logging JSON lines (server.log_format = "json")."""
        yield self.run_operations("json")
        self.check("json")

    def test_forms(self):
        """The forms searched for: raw octets, both hex cases, and base64 found inside a longer encoding whatever
        the secret's alignment in it."""
        secret = bytes(range(1, 33))
        found = forms(secret)
        self.assertIn(secret.hex().encode(), found)
        for prefix in (b"", b"x", b"xy"):
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                encoded = encode(b"some text before " + prefix + secret + b" and after")
                self.assertTrue(any(f in encoded for f in found), (prefix, encode))
        self.assertFalse(any(f in base64.b64encode(bytes(32)) for f in found))


class StartupTests(unittest.TestCase):
    """Each secret file with mode 0644: ``twistd -n gdoi`` refuses to start, with one line naming the file, its mode
    and ``chmod 600``, and the exit status of its kind (EX_CONFIG 78 for the configuration's files, EX_CANTCREAT 73
    for the key store)."""

    timeout = 120

    def setUp(self):
        self.files = Files(self)
        self.certificates = self.files.pki("p256")
        self.keylog = self.files.path("gdoi.keylog")
        self.store = self.files.path("state.db")

    def start(self, text: str) -> subprocess.CompletedProcess:
        config = self.files.write("ks.toml", text)
        return subprocess.run([*TWISTD, "--logfile", self.files.path("ks.log"), "gdoi", "--config", config], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    def psk_config(self, extra: str = "") -> str:
        groups = group_toml(self.files.signing_key, free_port(KS_ADDRESS))
        return self.files.ks_config(groups, address=KS_ADDRESS, extra=extra)

    def loose(self, path: str) -> None:
        os.chmod(path, 0o644)
        self.addCleanup(os.chmod, path, 0o600)

    def refused(self, proc, status: int, *words: str) -> None:
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, status, out)
        self.assertNotIn("Traceback", out)
        for word in words:
            self.assertIn(word, out)

    def test_good_files_start(self):
        """The control: with every secret file at 0600 the key server starts (and is stopped)."""
        config = self.files.write("ks.toml", self.psk_config())
        proc = subprocess.Popen([*TWISTD, "--logfile", self.files.path("ks.log"), "gdoi", "--config", config],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + WAIT
            while "loaded" not in LeakTests.read(self.files.path("ks.log")):
                self.assertIsNone(proc.poll(), proc.stdout.read() if proc.poll() is not None else "")
                self.assertLess(time.monotonic(), end, "the key server did not start")
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(WAIT)
            proc.stdout.close()

    def test_psk_file(self):
        """A PSK file others may read: configuration error naming peers[0].psk_file."""
        self.loose(self.files.psk)
        self.refused(self.start(self.psk_config()), os.EX_CONFIG, "peers[0].psk_file", "mode 0644",
                     f"chmod 600 {self.files.psk}")

    def test_kek_signing_key(self):
        """A KEK signing key others may read: configuration error naming the key file."""
        self.loose(self.files.signing_key)
        self.refused(self.start(self.psk_config()), os.EX_CONFIG, self.files.signing_key, "0644", "chmod 600")

    def test_certificate_private_key(self):
        """The private key of the key server's certificate, readable by others: configuration error."""
        c = self.certificates
        self.loose(c.ks_key)
        text = self.files.ks_config(group_toml(self.files.signing_key, free_port(KS_ADDRESS)), address=KS_ADDRESS,
                                    certificates=c)
        self.refused(self.start(text), os.EX_CONFIG, c.ks_key, "0644", "chmod 600")

    def test_store(self):
        """A key store others may read: key store error, exit status EX_CANTCREAT."""
        write_private(self.store, b"")
        self.loose(self.store)
        self.refused(self.start(self.psk_config()), os.EX_CANTCREAT, "key store", self.store, "mode 0644",
                     f"chmod 600 {self.store}")

    def test_keylog(self):
        """A keylog others may read: the key server refuses it at start-up, like the other secret files."""
        write_private(self.keylog, b"")
        self.loose(self.keylog)
        config = self.files.write("ks.toml", self.psk_config(f'[keylog]\npath = "{self.keylog}"\n'))
        log = self.files.path("ks.log")
        proc = subprocess.Popen([*TWISTD, "--logfile", log, "gdoi", "--config", config], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + WAIT
            while proc.poll() is None and "loaded" not in LeakTests.read(log) and time.monotonic() < end:
                time.sleep(0.05)
            started = proc.poll() is None
        finally:
            if proc.poll() is None:
                proc.terminate()
            out = proc.communicate(timeout=WAIT)[0]
        self.assertFalse(started, "the key server started with a keylog others may read: "
                         + LeakTests.read(log)[-600:])
        self.assertEqual(proc.returncode, os.EX_CONFIG, out)
        for word in (self.keylog, "mode 0644", f"chmod 600 {self.keylog}"):
            self.assertIn(word, out)

