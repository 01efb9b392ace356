"""The group member (gdoiserver.member): its configuration, its sinks, when it registers again, its service on
a Clock (over tests.test_gdoi_registration.Wire), the ``gdoi-member`` twistd plugin and the ``gdoi_member`` console
command (against our key server in this process)."""

import io
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tomllib

import twisted.plugins
from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor
from twisted.plugin import getPlugins
from twisted.trial import unittest

from gdoiserver.codec.constants import AuthAlgorithm, ESPTransformID, OakleyAuth
from gdoiserver.codec.gdoi import SADirection, Selector
from gdoiserver.config import ConfigError
from gdoiserver.doi.gdoi.registration import GroupRegistration, KEKInfo, TEKInfo
from gdoiserver.doi.ipsec.sa_sink import read_records
from gdoiserver.group.policy import GroupId
from gdoiserver.member import schedule
from gdoiserver.member.config import load_member_config, parse_member_config
from gdoiserver.member.service import GroupMember
from gdoiserver.member.sink import GroupJsonLinesSink, GroupTeeSink, SinkError, registration_record, sink_for
from gdoiserver.member.tap import Options, makeService
from gdoiserver.tools import gdoi_member
from tests.machine_pair import seeded_rng
from tests.test_gdoi_registration import (
    FAST_IKE,
    Files,
    Wire,
    group_id,
    group_toml,
    ks_plugin,
    ks_port,
    outcome,
    start_key_server,
    start_member,
    with_timeout,
)
from tests.test_protocol import MAIN_MODE_1
from tests.test_tap import REPO

NET, IP = ipaddress.ip_network, ipaddress.ip_address
GROUP = GroupId(number=1002)


def minimal(psk: str, extra: str = "") -> dict:
    return tomllib.loads(f'[auth]\npsk_file = "{psk}"\n[[key_servers]]\naddress = "127.0.0.2"\n'
                         f"[[groups]]\nnumber = 7\n{extra}")


def tek(spi="0000a001", transform=ESPTransformID.AES_CBC, auth=AuthAlgorithm.HMAC_SHA2_256, destination="239.1.1.1",
        source="0.0.0.0/0", sids=(), direction=None) -> TEKInfo:
    enc = bytes(range(16)) + (b"SALT" if transform != ESPTransformID.AES_CBC else b"")
    integrity = bytes(range(100, 132)) if auth else b""
    return TEKInfo(bytes.fromhex(spi), transform, 128, auth, enc, integrity, 17, Selector.of(NET(source)),
                   Selector.of(NET(destination) if "/" in destination else IP(destination), 5004), 1, 600, None,
                   direction,
                   sids)


def registration(*teks, at=100.0) -> GroupRegistration:
    kek = KEKInfo(b"K" * 16, 3, 128, b"\x11" * 16, 4, 3, 256, b"spki", 86400, Selector.of(IP("192.0.2.1"), 848),
                  Selector.of(IP("239.192.0.1"), 848))
    return GroupRegistration(GROUP, ("192.0.2.1", 848), at, teks or (tek(),), kek, 0, 0, 0, 16, (5,), False)


class ConfigTests(unittest.TestCase):
    def setUp(self):
        self.files = Files(self)

    def error(self, data: dict) -> ConfigError:
        return self.assertRaises(ConfigError, parse_member_config, data, "m.toml")

    def test_minimal(self):
        """A key server, a group and a PSK file are enough: Main Mode, the daemon's proposals, one SID asked for,
        JSON lines, GDOI's port on the address that routes to the key server, the PSK for any key server."""
        setup = parse_member_config(minimal(self.files.psk))
        config = setup.config
        self.assertEqual((config.key_servers[0].address, config.key_servers[0].port), ("127.0.0.2", 848))
        self.assertEqual(config.groups[0].group_id, GroupId(number=7))
        self.assertEqual(config.member.mode, "main")
        self.assertEqual([(x.address, x.port) for x in setup.transport.server.listen], [("127.0.0.1", 848)])
        self.assertEqual(setup.phase1.psk_for_address("127.0.0.2"), b"group-members-psk-42")
        self.assertEqual(setup.phase1.psk_for_identity(None), b"group-members-psk-42")
        self.assertEqual((setup.pull.sender_ids, setup.pull.pfs, setup.pull.credentials), (1, False, None))
        self.assertEqual(config.sink.path, "gdoi-member-sas.jsonl")
        self.assertFalse(config.sink.debug_keys)

    def test_example_file(self):
        """etc/member.toml is a working configuration (with our PSK file and sink in place of its paths, and a
        listen address, as its key servers' addresses do not route here)."""
        with open(os.path.join(REPO, "etc", "member.toml"), encoding="utf-8") as f:
            text = f.read()
        text = text.replace("/etc/gdoiserver/member.psk", self.files.psk)
        text = text.replace("/var/lib/gdoiserver/member-sas.jsonl", self.files.path("sas.jsonl"))
        text = text.replace('# listen = [ { address = "192.0.2.10", port = 848 } ]',
                            'listen = [ { address = "127.0.0.1", port = 848 } ]')
        setup = parse_member_config(tomllib.loads(text))
        config = setup.config
        self.assertEqual([ks.address for ks in config.key_servers], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual([str(g) for g in config.groups], ["'video' (group 1234)"])
        self.assertEqual((config.member.mode, config.member.phase1_doi, config.sink.xfrm), ("main", 2, False))
        self.assertEqual((config.rekey.multicast, config.rekey.interface, config.rekey.unknown_kek_limit),
                         (True, None, 3))

    def test_groups_example_of_the_daemon(self):
        """The commented [[groups]] example at the end of etc/gdoiserver.toml parses once uncommented."""
        from gdoiserver.config import parse_config

        with open(os.path.join(REPO, "etc", "gdoiserver.toml"), encoding="utf-8") as f:
            lines = f.read().split("\n# [[groups]]\n", 1)[1].splitlines()
        text = "[[groups]]\n" + "\n".join(line[2:] for line in lines if line.startswith("# "))
        text = text.replace("/etc/gdoiserver/ks-signing.key", self.files.signing_key)
        [group] = parse_config(tomllib.loads(text)).groups
        self.assertEqual((group.name, group.number, group.teks[0].transform.value), ("video", 1234, "aes-gcm"))

    def test_load_from_file(self):
        """load_member_config reads the file and names it in errors."""
        path = self.files.write("m.toml", '[[key_servers]]\naddress = "127.0.0.2"\n[[groups]]\nnumber = 1\n')
        e = self.assertRaises(ConfigError, load_member_config, path)
        self.assertEqual(str(e), f"{path}: auth: needs exactly one of psk_file or certificate (with private_key and "
                                 "ca)")
        self.assertRaises(ConfigError, load_member_config, self.files.path("missing.toml"))

    def test_psk_file_must_be_private(self):
        """A PSK file that others may read is refused, naming the key."""
        os.chmod(self.files.psk, 0o644)
        e = self.error(minimal(self.files.psk))
        self.assertEqual(e.key, "auth.psk_file")
        self.assertIn("0644", e.problem)

    def test_certificates(self):
        """With a certificate (and no ike.proposals) the proposals sign with the key's method; the credentials
        and CAs serve Phase 1 and CERT/POP in GROUPKEY-PULL."""
        c = self.files.pki("p256")
        data = tomllib.loads(f'[auth]\ncertificate = "{c.gm_cert}"\nprivate_key = "{c.gm_key}"\nca = ["{c.root}"]\n'
                             '[[key_servers]]\naddress = "127.0.0.2"\n[[groups]]\nnumber = 7\n')
        setup = parse_member_config(data)
        self.assertEqual({p.auth for p in setup.phase1.proposals}, {OakleyAuth.ECDSA_SHA256_P256})
        self.assertIs(setup.pull.credentials, setup.phase1.credentials)
        self.assertEqual(len(setup.pull.trust.certificates), 1)
        self.assertIsNone(setup.phase1.psk_for_address("127.0.0.2"))

    def test_certificate_errors(self):
        """A certificate without CAs, without its key, beside a PSK, or with PSK-only proposals is refused."""
        c = self.files.pki("p256")
        cert = f'certificate = "{c.gm_cert}"\nprivate_key = "{c.gm_key}"\n'
        servers = '[[key_servers]]\naddress = "127.0.0.2"\n[[groups]]\nnumber = 7\n'
        cases = {
            "auth.ca": f"[auth]\n{cert}",
            "auth.private_key": f'[auth]\ncertificate = "{c.gm_cert}"\nca = ["{c.root}"]\n',
            "auth": f'[auth]\n{cert}ca = ["{c.root}"]\npsk_file = "{self.files.psk}"\n',
            "ike.proposals": (f'[auth]\n{cert}ca = ["{c.root}"]\n[ike]\nproposals = [{{ encryption = "aes128", '
                              'hash = "sha256", group = 19, auth = "psk" }]\n'),
        }
        for key, text in cases.items():
            self.assertEqual(self.error(tomllib.loads(text + servers)).key, key, text)

    def test_rekey_section(self):
        """[rekey]: multicast on, the interface of our address, three unknown KEKs by default; each can be set, and
        an empty interface or a limit of 0 is refused."""
        rekey = parse_member_config(minimal(self.files.psk)).config.rekey
        self.assertEqual((rekey.multicast, rekey.interface, rekey.unknown_kek_limit), (True, None, 3))
        rekey = parse_member_config(minimal(self.files.psk, '[rekey]\nmulticast = false\ninterface = "eth0"\n'
                                                            "unknown_kek_limit = 5\n")).config.rekey
        self.assertEqual((rekey.multicast, rekey.interface, rekey.unknown_kek_limit), (False, "eth0", 5))
        self.assertEqual(self.error(minimal(self.files.psk, '[rekey]\ninterface = ""\n')).key, "rekey.interface")
        self.assertEqual(self.error(minimal(self.files.psk, "[rekey]\nunknown_kek_limit = 0\n")).key,
                         "rekey.unknown_kek_limit")

    def test_schema_errors(self):
        """Each error names its key: a group with neither number nor oid, a key server twice, an unknown key, a
        bad mode, 3DES without the opt-in, an empty sink path, a key server ID that is no identity."""
        psk = self.files.psk
        cases = {
            "groups[1]": minimal(psk, '[[groups]]\nname = "x"\n'),
            "key_servers[1]": minimal(psk, '[[key_servers]]\naddress = "127.0.0.2"\n'),
            "member.colour": minimal(psk, '[member]\ncolour = "blue"\n'),
            "member.mode": minimal(psk, '[member]\nmode = "quick"\n'),
            "ike.proposals[0].encryption": minimal(psk, '[ike]\nproposals = [{ encryption = "3des", hash = "sha256",'
                                                        ' group = 14, auth = "psk" }]\n'),
            "sink.path": minimal(psk, '[sink]\npath = ""\n'),
            "key_servers[0].id": minimal(psk).copy(),
        }
        cases["key_servers[0].id"]["key_servers"][0]["id"] = "has space"
        for key, data in cases.items():
            self.assertEqual(self.error(data).key, key, data)


class SinkTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "member.jsonl")

    def test_records_without_keys(self):
        """Each registration is one "installed" line (group, server, TEKs with selectors and sender IDs, the KEK
        with a fingerprint of the signature key, the new SPIs) in a file of mode 0600, without any key; a TEK
        that ends is a "removed" line."""
        sink = GroupJsonLinesSink(self.path)
        gcm = tek("0000a002", ESPTransformID.AES_GCM_16, None, sids=(5,))
        reg = registration(tek(), gcm)
        sink.installed(reg, frozenset({gcm.spi}), 101.0)
        sink.removed(GROUP, gcm, "lifetime over", 700.0)
        sink.close()
        installed, removed = read_records(self.path)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual((installed["event"], installed["time"], installed["group"]), ("installed", 101.0,
                                                                                      {"number": 1002}))
        self.assertEqual(installed["new_spis"], ["0000a002"])
        cbc, aead = installed["teks"]
        self.assertEqual((cbc["transform"], cbc["integrity"], cbc["key_bits"]), ("AES-CBC", "HMAC-SHA-256-128", 128))
        self.assertEqual((aead["transform"], aead["integrity"], aead["sender_ids"]), ("AES-GCM-16", None, [5]))
        self.assertEqual((cbc["destination"], cbc["source"]), ({"address": "239.1.1.1", "port": 5004},
                                                               {"address": "0.0.0.0/0", "port": 0}))
        self.assertEqual((cbc["expires_at"], cbc["mode"]), (700.0, "tunnel"))
        self.assertEqual(installed["kek"]["spi"], (b"K" * 16).hex())
        self.assertEqual(installed["kek"]["signature_algorithm"], "SIG_ALG_ECDSA_256")
        text = open(self.path).read()
        for secret in (bytes(range(16)).hex(), bytes(range(100, 132)).hex(), (b"\x11" * 16).hex()):
            self.assertNotIn(secret, text)
        self.assertEqual(removed, {"event": "removed", "time": 700.0, "group": {"number": 1002}, "spi": "0000a002",
                                   "reason": "lifetime over"})

    def test_debug_keys(self):
        """With keys (sink.debug_keys) the TEK and KEK keys are in the record, in hex."""
        record = registration_record(registration(), keys=True)
        self.assertEqual(record["teks"][0]["keys"], {"encryption": bytes(range(16)).hex(),
                                                     "integrity": bytes(range(100, 132)).hex()})
        self.assertEqual(record["kek"]["key"], (b"\x11" * 16).hex())

    def test_tee_and_sink_for(self):
        """sink_for gives JSON lines at the path; a tee tells every sink and raises the first error once all were
        told."""
        section = parse_member_config(minimal(Files(self).psk, f'[sink]\npath = "{self.path}"\n')).config.sink
        self.assertIsInstance(sink_for(section), GroupJsonLinesSink)

        class Broken:
            def installed(self, *args):
                raise SinkError("broken")

            def close(self):
                pass

        good = GroupJsonLinesSink(self.path)
        tee = GroupTeeSink([Broken(), good])
        self.assertRaises(SinkError, tee.installed, registration(), frozenset(), 1.0)
        tee.close()
        self.assertEqual(len(read_records(self.path)), 1)


class ScheduleTests(unittest.TestCase):
    def test_renewed(self):
        """Fresh TEKs: again at the margin of their lifetime, less up to the jitter of it (RFC 6407 section 1:
        before they expire)."""
        reg = registration(at=100.0)  # TEK lifetime 600
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 0.0, margin=0.9, jitter=0.05, renewed=True), 540.0)
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 0.5, margin=0.9, jitter=0.05, renewed=True), 525.0)
        self.assertEqual(schedule.reregister_delay(reg, 150.0, 0.0, margin=0.9, jitter=0.05, renewed=True), 490.0)

    def test_not_renewed(self):
        """The same TEKs again: the next attempt waits for their end (and the second their whole-second lifetime
        may have lost), plus at most 10 s of jitter."""
        reg = registration(at=100.0)
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 0.0, margin=0.9, jitter=0.05, renewed=False), 601.0)
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 0.5, margin=0.9, jitter=0.05, renewed=False), 606.0)

    def test_renewed_with_rekeys(self):
        """Fresh TEKs of a group with a KEK: again only after the key server's rekey was due, at 95 % of their
        lifetime (1 - (1 - margin) / 2) less up to half the jitter of it."""
        reg = registration(at=100.0)  # TEK lifetime 600
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 0.0, margin=0.9, jitter=0.05, renewed=True,
                                                   rekeys=True), 570.0)
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 1.0, margin=0.9, jitter=0.05, renewed=True,
                                                   rekeys=True), 555.0)
        self.assertEqual(schedule.reregister_delay(reg, 100.0, 0.0, margin=0.9, jitter=0.05, renewed=False,
                                                   rekeys=True), 601.0)

    def test_bounds(self):
        """Never sooner than a second; the retry after failures is the base plus up to the jitter of it; uniform
        draws lie in [0, 1)."""
        self.assertEqual(schedule.reregister_delay(registration(at=0.0), 5000.0, 0.3, margin=0.9, jitter=0.05,
                                                   renewed=True), schedule.MIN_DELAY)
        self.assertEqual(schedule.retry_delay(30.0, 0.5, 0.2), 33.0)
        rng = seeded_rng(3)
        self.assertTrue(all(0 <= schedule.uniform(rng) < 1 for _ in range(100)))
        self.assertEqual(schedule.uniform(lambda n: b"\xff" * n), (2**32 - 1) / 2**32)


class ServiceTests(unittest.TestCase):
    """GroupMember and our key server on a :class:`Wire` (a Clock): time passes only when the test says."""

    def setUp(self):
        self.files = Files(self)
        self.wire = Wire()
        lifetime = "\nlifetime = 600"
        groups = group_toml("gcm", self.files.signing_key, teks=[TEKS_GCM + lifetime])
        self.ks = start_key_server(self, self.files.ks_config(groups, port=848), self.wire, seeded_rng(1))

    def member(self, extra: str = "", automatic=True, servers=(("127.0.0.2", 848),)) -> GroupMember:
        text = self.files.member_config(list(servers), ["gcm"], port=848) + extra
        return start_member(self, text, self.wire, seeded_rng(2), automatic=automatic)

    def test_keeps_registered(self):
        """Started, the member registers at once; before the TEKs expire it registers again (the group has a KEK,
        so after the rekey the key server was due to push: at 95 % of their lifetime less up to 2.5 %); the same
        TEKs come back, so it waits for their end, when the TEK leaves the sink and the next registration brings
        the key server's new TEKs to it.  No rekey came, so each of these counts as losing track."""
        member = self.member()
        registered = []
        member.on_registered.append(lambda entry, reg: registered.append(reg))
        self.wire.run()
        [first] = registered
        state = member.groups[GROUP]
        self.assertTrue(555 <= state.timer.getTime() <= 570, state.timer.getTime())
        self.wire.wait(state.timer.getTime() - self.wire.seconds())
        self.assertEqual(len(registered), 2)
        self.assertEqual([t.spi for t in registered[1].teks], [t.spi for t in first.teks])
        self.assertTrue(599 <= state.timer.getTime() <= 610, state.timer.getTime())  # lifetimes are whole seconds
        self.wire.wait(state.timer.getTime() - self.wire.seconds() + 1)
        self.assertEqual(len(registered), 3)
        self.assertNotEqual(registered[2].teks[0].spi, first.teks[0].spi)
        events = [(r["event"], r.get("new_spis")) for r in read_records(member.config.sink.path)]
        spi_1, spi_2 = first.teks[0].spi.hex(), registered[2].teks[0].spi.hex()
        self.assertEqual(events, [("installed", [spi_1]), ("installed", []), ("removed", None),
                                  ("installed", [spi_2])])
        self.assertEqual(ks_plugin(self.ks).key_server.groups.lookup(GROUP).keys.generations_made, 2)
        self.assertEqual((member.counters["member_reregister"], member.counters["member_tek_expired"]), (2, 1))
        self.assertEqual(member.counters["reregister_lost"], 2)

    def test_retries_when_every_key_server_fails(self):
        """When no key server registers it (here: the group is unknown), the member tries again after
        registration.retry_delay (plus up to the jitter of it)."""
        text = self.files.member_config([("127.0.0.2", 848)], ["nosuch"], port=848)
        member = start_member(self, text + "[registration]\nretry_delay = 30\n", self.wire, seeded_rng(2),
                              automatic=True)
        self.wire.run()
        self.assertEqual(member.counters["member_registration_failed"], 1)
        [state] = member.groups.values()
        self.assertTrue(30 <= state.timer.getTime() - self.wire.seconds() <= 31.5)
        self.wire.wait(32)
        self.assertEqual(member.counters["member_registration_failed"], 2)

    def test_wrong_key_server_identity(self):
        """A key server that authenticates as another identity than key_servers[].id is left (its SA removed) and
        the next one is tried."""
        text = self.files.member_config([("127.0.0.2", 848)], ["gcm"], port=848)
        text = text.replace('port = 848\n[[groups]]', 'port = 848\nid = "ks.example.org"\n[[groups]]')
        member = start_member(self, text, self.wire, seeded_rng(2))
        result = outcome(member.register(GROUP))
        self.wire.run(until=lambda: result)
        self.assertIn("the peer is 127.0.0.2, not ks.example.org", result[0].value.attempts[0])
        self.assertEqual(member.engine.sas, {})
        self.assertEqual(self.ks.counters["gdoi_registered"], 0)

    def test_answers_no_phase1(self):
        """The member starts Phase 1 and answers none: a Main Mode message 1 sent to it gets nothing back."""
        member = self.member(automatic=False)
        self.wire.queue.append((("127.0.0.2", 500), ("127.0.0.1", 848), MAIN_MODE_1))
        self.wire.run()
        self.assertEqual(member.counters["responder_refused"], 1)
        self.assertEqual(self.wire.queue, [])

    def test_stop_leaves_nothing_pending(self):
        """Stopping the member and the key server cancels every timer (SAs, DPD, the next registration, TEK
        ends) and closes the sink."""
        member = self.member()
        self.wire.run()
        self.assertEqual(member.counters["member_registered"], 1)
        member.stopService()
        self.ks.stopService()
        self.assertEqual(self.wire.getDelayedCalls(), [])
        self.assertIsNone(member.sink._file)


TEKS_GCM = 'transform = "aes-gcm"\ndestination = "239.1.1.2"'


class XfrmTests(unittest.TestCase):
    def test_tek_message(self):
        """A TEK as XFRM_MSG_NEWSA: destination the group's address, the TEK's SPI, ESP, its selector, replay window
        0, its lifetime as the hard limit; counter-mode TEKs input only (XFRMA_SA_DIR)."""
        from gdoiserver.doi.ipsec import xfrm as ipsec_xfrm

        if ipsec_xfrm.nlmsg is None:
            raise unittest.SkipTest("optional: pyroute2 is not installed (pip install pyroute2)")
        from gdoiserver.member.xfrm import input_only, tek_message

        cbc = tek()
        msg = tek_message(cbc)
        msg.encode()
        body = bytes(msg.data[16:])  # after the netlink header
        self.assertEqual(body[56:60], bytes([239, 1, 1, 1]))  # xfrm_id.daddr after the 56-octet selector
        self.assertEqual(body[72:76], bytes.fromhex("0000a001"))  # xfrm_id.spi
        self.assertEqual(body[76], 50)  # IPPROTO_ESP
        self.assertEqual((msg["sel_prefixlen_d"], msg["sel_dport"], msg["sel_proto"]), (32, 5004, 17))
        self.assertEqual((msg["replay_window"], msg["lft_hard_add_expires_seconds"]), (0, 600))
        names = [a[0] for a in msg["attrs"]]
        self.assertEqual(names, ["XFRMA_ALG_CRYPT", "XFRMA_ALG_AUTH_TRUNC"])
        gcm = tek("0000a002", ESPTransformID.AES_GCM_16, None, sids=(1,))
        self.assertEqual([a[0] for a in tek_message(gcm)["attrs"]], ["XFRMA_ALG_AEAD", "XFRMA_SA_DIR"])
        self.assertTrue(input_only(tek(direction=SADirection.RECEIVER_ONLY)))
        self.assertFalse(input_only(cbc))
        self.assertRaises(SinkError, tek_message, tek(destination="10.0.0.0/8"))

    def test_kernel(self):
        """Inside ``unshare -n``: GroupXfrmSink installs a CBC and a GCM TEK (``ip xfrm state`` lists both SPIs,
        the GCM one input only) and removes them again."""
        if shutil.which("unshare") is None or os.geteuid() != 0:
            raise unittest.SkipTest("optional: the XFRM test needs root and unshare for a network namespace")
        proc = subprocess.run(["unshare", "-n", sys.executable, "-c", _XFRM_SCRIPT, REPO], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = json.loads(proc.stdout)
        if out.get("unavailable"):
            raise unittest.SkipTest(f"optional: {out['unavailable']}")
        if "EPROTONOSUPPORT" in out.get("error", ""):
            raise unittest.SkipTest(f"optional: this kernel has no XFRM ESP type ({out['error']})")
        self.assertNotIn("error", out)
        self.assertIn("spi 0x0000a001", out["installed"])
        self.assertIn("spi 0x0000a002", out["installed"])
        self.assertIn("dir in", out["installed"])
        self.assertNotIn("spi 0x", out["after"])


_XFRM_SCRIPT = """
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from tests.test_member import registration, tek
from gdoiserver.codec.constants import ESPTransformID
from gdoiserver.doi.ipsec.xfrm import xfrm_unavailable
from gdoiserver.member.sink import SinkError
out = {"unavailable": xfrm_unavailable()}
if out["unavailable"] is None:
    from gdoiserver.member.xfrm import GroupXfrmSink
    sink = GroupXfrmSink()
    cbc, gcm = tek(), tek("0000a002", ESPTransformID.AES_GCM_16, None, destination="239.1.1.2", sids=(1,))
    try:
        sink.installed(registration(cbc, gcm), frozenset({cbc.spi, gcm.spi}), 0.0)
        out["installed"] = subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout
        for t in (cbc, gcm):
            sink.removed(None, t, "test", 0.0)
        out["after"] = subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout
    except SinkError as e:
        out["error"] = str(e)
print(json.dumps(out))
"""


# --- the twistd plugin and the console command, against our key server on loopback ----------------------------------


class LoopbackCase(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.files = Files(self)
        self.ks = start_key_server(self, self.files.ks_config(group_toml("gcm", self.files.signing_key)))

    def member_config(self, groups=("gcm",)) -> str:
        return self.files.write("member.toml", self.files.member_config([("127.0.0.2", ks_port(self.ks))],
                                                                        list(groups)) + FAST_IKE)


class PluginTests(LoopbackCase):
    def test_discoverable(self):
        """getPlugins(IServiceMaker) finds ``gdoi-member`` beside ``gdoi``; --config defaults to etc/member.toml."""
        path = os.path.join(REPO, "twisted", "plugins")
        if path not in twisted.plugins.__path__:
            self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, path])
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("gdoi", makers)
        self.assertIsInstance(makers["gdoi-member"].options(), Options)
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["config"], os.path.join("etc", "member.toml"))

    @defer.inlineCallbacks
    def test_loads_config_and_registers(self):
        """makeService reads the config; started, the member registers in its group by itself."""
        options = Options()
        options.parseOptions(["--config", self.member_config()])
        member = makeService(options)
        self.assertIsInstance(member, GroupMember)
        done = defer.Deferred()
        member.on_registered.append(lambda entry, reg: done.called or done.callback(reg))
        member.startService()
        self.addCleanup(member.stopService)
        reg = yield with_timeout(done)
        self.assertEqual(reg.group, GroupId(number=1002))
        self.assertEqual(len(ks_plugin(self.ks).registered["gcm"]), 1)

    def test_bad_config_exits(self):
        """A bad config ends makeService with EX_CONFIG and one line naming file, key and problem."""
        path = self.files.write("bad.toml", "[[groups]]\nnumber = 1\n")
        options = Options()
        options.parseOptions(["--config", path])
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(e.code, os.EX_CONFIG)
        self.assertEqual(stderr.getvalue(), f"gdoi-member: configuration error: {path}: key_servers: missing (this "
                                            "key is required)\n")


class ConsoleTests(LoopbackCase):
    @defer.inlineCallbacks
    def run_command(self, *argv):
        out = io.StringIO()
        status = yield defer.Deferred.fromCoroutine(gdoi_member.run(reactor, list(argv), out, start_logging=False))
        return status, [json.loads(line) for line in out.getvalue().splitlines()]

    @defer.inlineCallbacks
    def test_enrolls_once(self):
        """``gdoi_member --config FILE --once`` registers, prints the registration as one JSON line without keys,
        and returns 0."""
        status, [view] = yield self.run_command("--config", self.member_config(), "--once")
        self.assertEqual(status, 0)
        self.assertEqual((view["registered"], view["name"], view["group"]), (True, "gcm", {"number": 1002}))
        generation = ks_plugin(self.ks).key_server.groups.lookup(group_id("gcm")).keys.generations[-1]
        self.assertEqual(view["teks"][0]["spi"], generation.teks[0].spi.hex())
        self.assertNotIn(generation.teks[0].encryption_key.hex(), json.dumps(view))

    @defer.inlineCallbacks
    def test_refused_once(self):
        """One group registers, the other is not served: a JSON line each, the second with "registered": false
        and the key server's answer; exit status 1."""
        status, [ok, view] = yield self.run_command("--config", self.member_config(("gcm", "nosuch")), "--once")
        self.assertEqual(status, 1)
        self.assertEqual((ok["registered"], view["registered"], view["group"]), (True, False, "group 4242"))
        self.assertIn("INVALID_ID_INFORMATION", view["attempts"][0])

    @defer.inlineCallbacks
    def test_bad_config(self):
        """A configuration error is exit status 2."""
        path = self.files.write("bad.toml", "nonsense")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        status, lines = yield self.run_command("--config", path, "--once")
        self.assertEqual((status, lines), (2, []))
        self.assertIn(f"gdoi_member: configuration error: {path}: not valid TOML", stderr.getvalue())
