"""The operator's day, end to end: ``twistd -n gdoi`` and three ``twistd -n gdoi-member`` processes on loopback,
driven only through the documented commands (``gdoictl status``, ``members``, ``rekey``, ``evict``, ``sas``,
``reload``, SIGHUP) and watched through what an operator sees: gdoictl's tables and ``--json``, the daemons' log
files (``--logfile``), the members' sink files and the Prometheus endpoint.

The members write their keys to their sinks (``sink.debug_keys = true``), so that the test knows every TEK and KEK
key and can check that none of them, nor the PSK, shows in any command's output, log line or metric.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.logger import eventFromJSON, formatEvent
from twisted.trial import unittest

from tests import pki
from tests.test_gdoi_registration import write_private
from tests.test_rekey_e2e import free_port, until
from tests.test_tap import REPO, TWISTD

GROUP = "ops"
NUMBER = 4711
KS_ADDRESS = "127.0.0.2"
PSK = b"operator-e2e-psk-7f3a91"
#: gm0 and gm1 match the group's first member rule; gm2 only the rule the test adds while the server runs.
IDENTITIES = ("gm0.example.org", "gm1.example.org", "gm2.late.example.net")
#: Seconds any one thing (a process start, a registration, a rekey reaching the members) may take.
WAIT = 30.0
#: Seconds one gdoictl command may take.
COMMAND_SECONDS = 30


def key_server_toml(d: dict) -> str:
    return f"""\
[server]
listen = [ {{ address = "{KS_ADDRESS}", port = {d["ks_port"]} }} ]
nat_t_port = 0
log_format = "json"

[ike]
proposals = [ {{ encryption = "aes128", hash = "sha256", group = 19, auth = "psk" }} ]

[store]
path = "{d["store"]}"

[control]
socket = "{d["socket"]}"

[metrics]
listen = "127.0.0.1:{d["metrics_port"]}"

[[peers]]
address = "127.0.0.1"
psk_file = "{d["psk"]}"

[[groups]]
name = "{GROUP}"
number = {NUMBER}

[[groups.members]]
pattern = "*.example.org"
{d["extra_members"]}
[[groups.teks]]
name = "ops-gcm"
transform = "aes-gcm"
destination = "239.1.1.9"
lifetime = 3600

[groups.kek]
signature_key = "{d["signing_key"]}"
lifetime = 7200

[groups.rekey]
source = "{KS_ADDRESS}"
source_port = {d["ks_port"]}
multicast_address = "239.192.0.79"
multicast_port = {d["mc_port"]}
interface = "127.0.0.1"
ttl = 1
unicast = true
ack = true
retransmits = {d["retransmits"]}
retransmit_interval = 0.5

[groups.gap]
deactivation_delay = 60
"""


def member_toml(identity: str, d: dict) -> str:
    return f"""\
[[key_servers]]
address = "{KS_ADDRESS}"
port = {d["ks_port"]}

[[groups]]
name = "{GROUP}"
number = {NUMBER}

[identity]
id = "{identity}"

[auth]
psk_file = "{d["psk"]}"

[member]
listen = [ {{ address = "127.0.0.1", port = 0 }} ]
nat_t_port = 0

[registration]
retry_delay = 1
jitter = 0.0

[sink]
path = "{d["sink"]}"
debug_keys = true
"""


def table(text: str, first_header: str) -> list[dict]:
    """The rows of the table in gdoictl's ``text`` whose header line starts with ``first_header``, as {header:
    cell}: each column starts where its header does (cells are left-aligned)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_header + " "))
    header = lines[start]
    names = re.findall(r"\S+(?: \S+)*", header)  # headers are separated by two spaces or more
    offsets = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        bounds = offsets[1:] + [len(line)]
        rows.append({name: line[a:b].strip() for name, a, b in zip(names, offsets, bounds)})
    return rows


class Daemon:
    """A twistd process logging to its own file (``--logfile``); its stdout and stderr go to another file."""

    def __init__(self, case: "OperatorTests", name: str, plugin: str, config: str):
        self.name = name
        self.logfile = os.path.join(case.dir, f"{name}.log")
        self.output = os.path.join(case.dir, f"{name}.out")
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([*TWISTD, "--logfile", self.logfile, plugin, "--config", config], cwd=REPO,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out,
                                         stderr=subprocess.STDOUT)
        case.daemons.append(self)

    def log_text(self) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        """SIGTERM, and the exit status; SIGKILL if it does not end within the bound."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class OperatorTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        # A UNIX socket path must stay under 108 octets: trial's temp directories are too deep.
        run_dir = tempfile.mkdtemp(prefix="gdoi-ops-", dir="/tmp")
        self.addCleanup(shutil.rmtree, run_dir, ignore_errors=True)
        self.daemons: list[Daemon] = []
        self.addCleanup(self.stop_all)
        self.outputs: list[str] = []  # everything gdoictl printed, and each metrics scrape
        self.settings = {
            "ks_port": free_port(KS_ADDRESS),
            "mc_port": free_port("0.0.0.0"),
            "metrics_port": free_port("127.0.0.1", socket.SOCK_STREAM),
            "socket": os.path.join(run_dir, "gdoiserver.sock"),
            "store": os.path.join(self.dir, "state.db"),
            "psk": write_private(os.path.join(self.dir, "members.psk"), PSK + b"\n"),
            "signing_key": pki.write_key(os.path.join(self.dir, "kek-signing.key"), pki.key("p256", 7)),
            "extra_members": "",
            "retransmits": 1,
        }
        self.ks_config = os.path.join(self.dir, "gdoiserver.toml")
        self.write_ks_config()
        self.sinks = {}

    def stop_all(self):
        for daemon in self.daemons:
            daemon.stop()

    def write_ks_config(self, **changes) -> None:
        self.settings.update(changes)
        with open(self.ks_config, "w", encoding="utf-8") as f:
            f.write(key_server_toml(self.settings))

    # --- the processes ----------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start_key_server(self):
        self.ks = Daemon(self, "gdoiserver", "gdoi", self.ks_config)
        yield until(lambda: "loaded:" in self.ks_messages() or self.ks.proc.poll() is not None,
                    "the key server's store to load", WAIT)
        self.assertIsNone(self.ks.proc.poll(), self.read(self.ks.output) + self.ks.log_text())

    def start_member(self, i: int) -> Daemon:
        sink = self.sinks[i] = os.path.join(self.dir, f"gm{i}-sas.jsonl")
        config = os.path.join(self.dir, f"gm{i}.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(member_toml(IDENTITIES[i], dict(self.settings, sink=sink)))
        return Daemon(self, f"gm{i}", "gdoi-member", config)

    def ks_events(self) -> list[dict]:
        """The key server's log: one JSON object per line (server.log_format = "json")."""
        return [eventFromJSON(line) for line in self.ks.log_text().splitlines() if line.strip()]

    def ks_messages(self) -> str:
        return "\n".join(formatEvent(e) for e in self.ks_events())

    @staticmethod
    def read(path: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def sink(self, i: int) -> list[dict]:
        return [json.loads(line) for line in self.read(self.sinks[i]).splitlines()]

    def seqs(self, i: int) -> list[int]:
        """The SEQs of the registrations and rekeys member ``i``'s sink holds, in order."""
        return [r["seq"] for r in self.sink(i) if r["event"] == "installed"]

    def installed_spis(self, i: int) -> set[str]:
        return {spi for r in self.sink(i) if r["event"] == "installed" for spi in r["new_spis"]}

    # --- gdoictl ----------------------------------------------------------------------------------------------------

    def gdoictl(self, *args, json_output: bool = False, expect: int = 0):
        """Run ``gdoictl --socket S [--json] ARGS``; its stdout (parsed with --json).  Every output is kept for the
        key material check."""
        argv = [sys.executable, "-m", "gdoiserver.tools.gdoictl", "--socket", self.settings["socket"],
                *(["--json"] if json_output else []), *args]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_SECONDS)
        self.outputs += [proc.stdout, proc.stderr]
        self.assertEqual(proc.returncode, expect, f"gdoictl {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return json.loads(proc.stdout) if json_output and expect == 0 else proc.stdout + proc.stderr

    def members_json(self) -> list[dict]:
        return self.gdoictl("members", GROUP, json_output=True)["members"]

    def group_status(self) -> dict:
        status = self.gdoictl("status", json_output=True)
        return next(g for g in status["groups"] if g["name"] == GROUP)

    def scrape(self) -> dict:
        """The metrics endpoint's samples: {(name, ((label, value), ...)): value}."""
        url = f"http://127.0.0.1:{self.settings['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=COMMAND_SECONDS) as response:
            text = response.read().decode("utf-8")
        self.outputs.append(text)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    # --- the test ---------------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def rekey_reaches(self, members, seq: int):
        """Each of ``members`` writes a rekey of SEQ ``seq`` (new TEKs, their keys) to its sink."""
        yield until(lambda: all(seq in self.seqs(i) for i in members), f"members {members} at SEQ {seq}", WAIT)

    @defer.inlineCallbacks
    def test_operator_day(self):
        """Registrations, status, members, SAs, a rekey, a reload that admits a new member (members and keys
        stay), a SIGHUP reload, an eviction and the rekeys after it, as an operator runs them: every table and
        JSON answer says what happened, the members' sinks show the new TEKs (not the evicted member's), the
        metrics count it, and no key or PSK shows in any output, log or metric."""
        yield self.start_key_server()
        for i in range(3):
            self.start_member(i)

        # --- registration: gm0 and gm1 are admitted, gm2 is refused (no rule names it yet) ---------------------
        yield until(lambda: len(self.members_json()) == 2, "two registered members", WAIT)
        yield until(lambda: "registration of gm2.late.example.net at 127.0.0.1" in self.ks_messages(),
                    "gm2's refusal in the log", WAIT)
        self.assertIn("not authorized", self.ks_messages())
        members = {m["identity"]: m for m in self.members_json()}
        self.assertEqual(sorted(members), ["gm0.example.org", "gm1.example.org"])
        first_seq = {self.seqs(i)[0] for i in (0, 1)}
        self.assertEqual(len(first_seq), 1, "both members got the same keys")

        status = self.group_status()
        self.assertEqual((status["members"], status["stale"], status["evicted"]), (2, 0, 0))
        self.assertRegex(status["kek_spi"], r"^[0-9a-f]{8}$")
        self.assertIn("multicast 239.192.0.79", status["rekey_transport"])

        text = self.gdoictl("status")
        self.assertRegex(text, r"^gdoiserver \S+ \(key server\), up \d+s\n")
        self.assertRegex(text, r"SAs: \d+ Phase 1, 0 Phase 2, \d+ half-open")
        self.assertRegex(text, r"\nGROUP +ID +MEMBERS +STALE +EVICTED +GEN +SEQ +KEK SPI +LAST REKEY +NEXT REKEY +"
                               r"REKEY TRANSPORT\n")
        row = table(text, "GROUP")[0]
        self.assertEqual((row["GROUP"], row["ID"], row["MEMBERS"], row["STALE"], row["EVICTED"], row["KEK SPI"]),
                         (GROUP, f"group {NUMBER}", "2", "0", "0", status["kek_spi"]))
        self.assertEqual((row["GEN"], row["SEQ"]), (str(status["generation"]), str(status["seq"])))
        self.assertEqual(row["LAST REKEY"], "-")
        self.assertRegex(row["NEXT REKEY"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in \d+m \d\ds\)$")
        self.assertRegex(text, r"\nCOUNTER +VALUE\n")
        self.assertRegex(text, r"\ngdoi_registered +2\n")

        text = self.gdoictl("members", GROUP)
        lines = text.splitlines()
        self.assertEqual(lines[0], f"Group {GROUP}: 2 members")
        self.assertRegex(lines[1], r"^IDENTITY +ADDRESS +REGISTERED +LEAF +(LAST SEQ SENT +)?LAST SEQ ACKED +MISSED"
                                   r" +STATE$")
        rows = {row["IDENTITY"]: row for row in table(text, "IDENTITY")}
        self.assertEqual(sorted(rows), ["gm0.example.org", "gm1.example.org"])
        for identity, row in rows.items():
            self.assertEqual(row["ADDRESS"], f"127.0.0.1:{members[identity]['port']}")
            self.assertRegex(row["REGISTERED"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(((\d+[smh] ?)+ ago|now)\)$")
            self.assertEqual((row["LEAF"], row["STATE"]), (str(members[identity]["leaf"]), "ok"))

        sas = self.gdoictl("sas", json_output=True)
        peers = {sa["identity"] for sa in sas["phase1"]}
        self.assertTrue({"gm0.example.org", "gm1.example.org"} <= peers, sas)
        text = self.gdoictl("sas")
        self.assertRegex(text, r"^Phase 1 SAs \(\d+\):\nPEER +IDENTITY +COOKIES +ESTABLISHED +EXPIRES +PROPOSAL\n")
        rows = {row["IDENTITY"]: row for row in table(text, "PEER")}
        for identity in ("gm0.example.org", "gm1.example.org"):
            self.assertEqual(rows[identity]["PEER"], f"127.0.0.1:{members[identity]['port']}")
            self.assertRegex(rows[identity]["COOKIES"], r"^[0-9a-f]{32}$")
            self.assertEqual(rows[identity]["PROPOSAL"], "aes_cbc128-sha2_256-group19")
            self.assertRegex(rows[identity]["EXPIRES"], r"\(in 7h 5\dm\)$")
        self.assertIn("Phase 2 SAs (0):", text)

        # --- rekey GROUP: both members write the new TEKs ------------------------------------------------------
        answer = self.gdoictl("rekey", GROUP, json_output=True)
        self.assertEqual(set(answer), {"group", "seq", "generation"})
        self.assertEqual(answer["group"], GROUP)
        seq1 = answer["seq"]
        self.assertGreater(seq1, max(first_seq))
        yield self.rekey_reaches((0, 1), seq1)
        pushed = [next(r for r in self.sink(i) if r["event"] == "installed" and r["seq"] == seq1) for i in (0, 1)]
        self.assertEqual(pushed[0]["new_spis"], pushed[1]["new_spis"], "the same new TEK reached both members")
        self.assertEqual(len(pushed[0]["new_spis"]), 1)
        self.assertEqual(pushed[0]["teks"][0]["keys"], pushed[1]["teks"][0]["keys"])
        text = self.gdoictl("rekey", GROUP)
        match = re.fullmatch(rf"group {GROUP} rekeyed: SEQ (\d+), generation (\d+)\n", text)
        self.assertIsNotNone(match, text)
        seq2 = int(match.group(1))
        self.assertGreater(seq2, seq1)
        yield self.rekey_reaches((0, 1), seq2)
        # RFC 8263: both acknowledge; members shows it.
        yield until(lambda: all(m["last_seq_acked"] == seq2 for m in self.members_json()), "acks of the rekey", WAIT)
        status = self.group_status()
        self.assertEqual(status["seq"], seq2)
        self.assertIsNotNone(status["last_rekey"])

        # --- reload: a new member rule; members and keys stay -----------------------------------------------
        before = {m["identity"]: m["registered_at"] for m in self.members_json()}
        self.write_ks_config(extra_members='\n[[groups.members]]\npattern = "*.late.example.net"\n')
        answer = self.gdoictl("reload", json_output=True)
        self.assertEqual(answer["changed"], [f"groups.{GROUP}"])
        self.assertEqual(answer["restart_required"], [])
        kept = ("generation", "seq", "kek_spi", "last_rekey", "next_rekey")
        self.assertEqual({k: self.group_status()[k] for k in kept}, {k: status[k] for k in kept},
                         "the reload kept the keys, the SEQ and the schedule")
        yield until(lambda: len(self.members_json()) == 3, "gm2 admitted by the new rule", WAIT)
        after = {m["identity"]: m["registered_at"] for m in self.members_json()}
        self.assertEqual({k: after[k] for k in before}, before, "the registered members stayed registered")
        self.assertEqual(self.group_status()["kek_spi"], status["kek_spi"], "the KEK stayed")
        self.assertEqual(self.sink(2)[0]["seq"], seq2, "gm2 got the current keys")
        self.assertRegex(self.gdoictl("reload"), r"^configuration reloaded: \d+ changed \(.*\), \d+ unchanged\n$")

        # --- SIGHUP: the same reload, from a signal -------------------------------------------------------------
        self.write_ks_config(retransmits=2)
        reloads = self.ks_messages().count("reload of ")
        self.ks.proc.send_signal(signal.SIGHUP)
        yield until(lambda: self.ks_messages().count("reload of ") > reloads, "the SIGHUP reload", WAIT)
        self.assertRegex(self.ks_messages().split("reload of ")[-1], rf"changed groups\.{GROUP};")
        self.assertEqual(len(self.members_json()), 3)

        # --- evict GROUP MEMBER: the others follow, gm0 does not -----------------------------------------------
        held_by_gm0 = self.installed_spis(0)
        text = self.gdoictl("evict", GROUP, "gm0.example.org")
        match = re.fullmatch(rf"member gm0\.example\.org evicted from group {GROUP} \(SEQ (\d+)\): refused until "
                             r"readmitted\n", text)
        self.assertIsNotNone(match, text)
        yield until(lambda: self.group_status()["seq"] > int(match.group(1)), "the TEK rekey after the eviction", WAIT)
        seq3 = self.group_status()["seq"]
        yield self.rekey_reaches((1, 2), seq3)
        answer = self.gdoictl("rekey", GROUP, json_output=True)
        yield self.rekey_reaches((1, 2), answer["seq"])
        new_teks = (self.installed_spis(1) & self.installed_spis(2)) - self.installed_spis(0)
        self.assertGreaterEqual(len(new_teks), 2, "two TEK generations after the eviction")
        self.assertEqual(self.installed_spis(0), held_by_gm0, "the evicted member's sink got no new TEK")
        self.assertTrue(all(s < seq3 for s in self.seqs(0)))
        members = self.members_json()
        self.assertEqual(sorted(m["identity"] for m in members), ["gm1.example.org", "gm2.late.example.net"])
        status = self.group_status()
        self.assertEqual((status["members"], status["evicted"]), (2, 1))
        # Evicting again changes nothing: no LKH update, no SEQ.
        self.assertEqual(self.gdoictl("evict", GROUP, "gm0.example.org"),
                         f"member gm0.example.org evicted from group {GROUP}: refused until readmitted\n")
        self.assertEqual(self.group_status()["seq"], answer["seq"])
        self.assertRegex(self.gdoictl("members", "no-such-group", expect=1), r"^gdoictl: .*no-such-group")

        # --- metrics -----------------------------------------------------------------------------------------------
        samples = self.scrape()
        self.assertGreaterEqual(samples[("gdoi_registrations_total", ())], 3)
        self.assertGreaterEqual(samples[("gdoi_registration_failures_total", (("reason", "unauthorized"),))], 1)
        self.assertGreaterEqual(samples[("gdoi_rekeys_sent_total", ())], 4)
        self.assertGreaterEqual(samples[("gdoi_rekeys_acknowledged_total", ())], 2)
        self.assertEqual(samples[("gdoi_evictions_total", ())], 1)
        self.assertEqual(samples[("gdoi_group_members", (("group", GROUP),))], 2)
        self.assertEqual(samples[("gdoi_group_evicted_members", (("group", GROUP),))], 1)
        self.assertEqual(samples[("gdoi_group_seq", (("group", GROUP),))], answer["seq"])
        self.assertIn(("isakmp_half_open_sas", ()), samples)

        # --- the logs: every registration, refusal, rekey, eviction and reload -------------------------------
        log = self.ks_messages()
        for identity in IDENTITIES:
            self.assertRegex(log, rf"GDOI: member {re.escape(identity)} at 127\.0\.0\.1:\d+ registered in group "
                                  rf"{GROUP} \(group {NUMBER}\)")
        self.assertRegex(log, r"registration of gm2\.late\.example\.net at 127\.0\.0\.1:\d+ refused: .*not "
                              r"authorized")
        for seq in (seq1, seq2, seq3, answer["seq"]):
            self.assertRegex(log, rf"group {GROUP}: TEK rekey SEQ {seq}: ")
        self.assertRegex(log, rf"group {GROUP}: evicted gm0\.example\.org \(leaf \d+\): SEQ {match.group(1)}")
        self.assertEqual(log.count(f"reload of {self.ks_config}: "), 3)
        self.assertGreaterEqual(log.count(f"reload of {self.ks_config}: changed groups.{GROUP}"), 2)
        for i in (1, 2):
            self.assertRegex(self.daemons[i + 1].log_text(), rf"group member: rekey of .* SEQ {answer['seq']} from "
                                                             rf"{KS_ADDRESS}:")

        # --- no key material anywhere an operator looks --------------------------------------------------------
        secrets = {PSK.hex(), PSK.decode()}
        for i in range(3):
            for record in self.sink(i):
                for tek in record.get("teks", ()):
                    secrets |= {tek["keys"]["encryption"], tek["keys"]["integrity"]}
                if record.get("kek"):
                    secrets.add(record["kek"]["key"])
        secrets.discard("")
        self.assertGreaterEqual(len(secrets), 6)
        for daemon in self.daemons:
            # twistd ends a SIGTERM'd daemon by the same signal once it has shut down.
            self.assertIn(daemon.stop(), (0, -signal.SIGTERM), f"{daemon.name}: {self.read(daemon.output)}")
            self.assertIn("Server Shut Down.", daemon.log_text())
        seen = self.outputs + [d.log_text() for d in self.daemons] + [self.read(d.output) for d in self.daemons]
        for secret in secrets:
            for text in seen:
                self.assertNotIn(secret, text)
                self.assertNotIn(secret.upper(), text)
        for daemon in self.daemons:
            self.assertNotIn("Traceback", daemon.log_text() + self.read(daemon.output), daemon.name)
