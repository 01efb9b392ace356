"""Crash safety of rekeying: ``twistd gdoi`` runs as a subprocess and is killed with SIGKILL in the middle of
rekeys that ``gdoictl rekey`` asks for, then started again on the same SQLite store.  Our group members (in this
process, on real loopback sockets) must go on accepting its rekeys without registering again, and must never see a
SEQ twice (RFC 6407 section 4: a replayed or reused SEQ is rejected)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest

from gdoiserver.member.config import parse_member_config
from gdoiserver.member.service import GroupMember
from tests.test_gdoi_registration import Files
from tests.test_rekey_e2e import free_port, until
from tests.test_tap import REPO, TWISTD, Output

MEMBERS = 3
KS_ADDRESS = "127.0.0.2"
NUMBER = 3001
#: Seconds a key server process gets to start (twistd, the store, the listeners).
START_SECONDS = 20


def group_toml(signing_key: str, ks_port: int) -> str:
    return f"""
[[groups]]
name = "crash"
number = {NUMBER}
[[groups.members]]
pattern = "*.example.org"
[[groups.teks]]
name = "crash-gcm"
transform = "aes-gcm"
destination = "239.1.1.9"
lifetime = 3600
[groups.kek]
signature_key = "{signing_key}"
[groups.rekey]
source = "{KS_ADDRESS}"
source_port = {ks_port}
unicast = true
retransmits = 1
retransmit_interval = 0.5
[groups.gap]
deactivation_delay = 60
"""


class CrashTests(unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.files = Files(self)
        # A UNIX socket path must stay under 108 octets: trial's temp directories are too deep.
        self.run_dir = tempfile.mkdtemp(prefix="gdoi-crash-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.run_dir, ignore_errors=True)
        self.socket = os.path.join(self.run_dir, "control.sock")
        self.ks_port = free_port(KS_ADDRESS)
        text = self.files.ks_config(group_toml(self.files.signing_key, self.ks_port), address=KS_ADDRESS,
                                    port=self.ks_port, extra=f'[control]\nsocket = "{self.socket}"\n')
        self.config = self.files.write("ks.toml", text)
        self.procs = []
        self.members = []
        self.accepted = {}  # member index -> [SEQ, ...] in the order accepted

    def tearDown(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()

    def start_key_server(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([*TWISTD, "gdoi", "--config", self.config], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        Output(proc, time.monotonic() + START_SECONDS).wait_for(r"key store .* loaded")
        return proc

    def start_member(self, i: int) -> GroupMember:
        text = self.files.member_config([(KS_ADDRESS, self.ks_port)], ["crash"], identity=f"gm{i}.example.org")
        text = text.replace('name = "crash"\nnumber = 4242', f'name = "crash"\nnumber = {NUMBER}')
        member = GroupMember(parse_member_config(tomllib.loads(text)), reactor)
        self.accepted[i] = []

        def observe(event, i=i):
            if event.get("log_format", "").startswith("group member: rekey{group} SEQ") and "seq" in event:
                self.accepted[i].append(event["seq"])

        member.log = Logger(observer=observe)
        member.startService()
        self.addCleanup(member.stopService)
        return member

    def seq(self, member) -> int:
        state = next(iter(member.groups.values()))
        return -1 if state.rekey is None else state.rekey.seq

    def gdoictl(self, *args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "gdoiserver.tools.gdoictl", "--socket", self.socket, "--json",
                                 *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @defer.inlineCallbacks
    def rekey(self) -> int:
        """``gdoictl rekey crash`` to completion; every member accepts the SEQ it reports."""
        ctl = self.gdoictl("rekey", "crash")
        yield until(lambda: ctl.poll() is not None, "gdoictl rekey", timeout=30)
        out, err = ctl.communicate()
        self.assertEqual(ctl.returncode, 0, out + err)
        seq = json.loads(out)["seq"]
        yield until(lambda: all(self.seq(m) == seq for m in self.members), f"every member at SEQ {seq}", 30)
        return seq

    @defer.inlineCallbacks
    def test_kill_9_while_rekeying(self):
        """Six times, a rekey is asked for and the key server is killed with SIGKILL: as soon as the request is
        sent, as soon as one member has the new keys, or once gdoictl has its answer.  Each time the restarted
        server (same store) finishes what it owed and rekeys again; the members accept every rekey, need no new
        registration, count no replay, and the SEQs each member accepted rise strictly."""
        ks = self.start_key_server()
        self.members = [self.start_member(i) for i in range(MEMBERS)]
        yield until(lambda: all(self.seq(m) >= 0 for m in self.members), "registrations", 30)
        reported = [(yield self.rekey())]
        for point in ("sent", "first member", "answered") * 2:
            before = max(self.seq(m) for m in self.members)
            ctl = self.gdoictl("rekey", "crash")
            if point == "first member":
                yield until(lambda: any(self.seq(m) > before for m in self.members), "a member with new keys", 30)
            elif point == "answered":
                yield until(lambda: ctl.poll() is not None, "gdoictl's answer", 30)
            ks.send_signal(signal.SIGKILL)
            ks.wait()
            yield until(lambda: ctl.poll() is not None, "gdoictl to end", 30)
            ctl.communicate()
            ks = self.start_key_server()
            reported.append((yield self.rekey()))
        self.assertEqual(reported, sorted(set(reported)), "the SEQs gdoictl reported rise strictly")
        for i, member in enumerate(self.members):
            seqs = self.accepted[i]
            self.assertEqual(seqs, sorted(set(seqs)), f"member {i} accepted SEQs {seqs}: strictly rising")
            self.assertGreaterEqual(len(seqs), len(reported))
            self.assertEqual(member.counters["push_replay"], 0, "no SEQ was reused")
            self.assertEqual(member.counters["reregister_lost"], 0)
        log = b""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            log += proc.stdout.read()
        self.assertNotIn(b"Traceback", log)
