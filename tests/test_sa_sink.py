"""SA sinks (gdoiserver.doi.ipsec.sa_sink, gdoiserver.doi.ipsec.xfrm): JSON lines, several sinks at once, and the
Linux kernel over XFRM netlink where pyroute2 and the kernel's ESP support exist."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs
from twisted.trial import unittest

from gdoiserver.config import parse_config
from gdoiserver.doi.ipsec.config import ipsec_config
from gdoiserver.doi.ipsec.keymat import DirectionKeys
from gdoiserver.doi.ipsec.plugin import IPsecDOI
from gdoiserver.doi.ipsec.policy import PolicyTable
from gdoiserver.doi.ipsec.proposals import Lifetime, Suite
from gdoiserver.doi.ipsec.sa import IPsecSA
from gdoiserver.doi.ipsec.sa_sink import JsonLinesSink, SinkError, TeeSink, read_records, sink_for
from gdoiserver.doi.ipsec.selectors import Selector
from gdoiserver.exchanges.effects import Count

REPO = Path(__file__).resolve().parent.parent
KEY_IN, KEY_OUT = bytes(range(32)), bytes(range(100, 132))
INTEG_IN, INTEG_OUT = bytes(range(50, 82)), bytes(range(150, 182))


def ipsec_sa(suite: str = "aes256-sha256-modp2048", encapsulation: int = 3, **kw) -> IPsecSA:
    """An established SA as a responder would hold it, with recognisable keys."""
    values = dict(
        isakmp_spi=bytes(range(16)), role="responder", message_id=0xC0DE, policy="lab", suite=Suite.parse(suite),
        encapsulation=encapsulation, spi_in=bytes.fromhex("c1c2c3c4"), spi_out=bytes.fromhex("d1d2d3d4"),
        local_selector=Selector.parse("10.0.0.0/24"), remote_selector=Selector.parse("10.1.0.1[tcp/22]"),
        local=("127.0.0.2", 4500), peer=("127.0.0.1", 5501), lifetime=Lifetime(3600, 2048), established_at=100.5,
        keys_in=DirectionKeys(KEY_IN, INTEG_IN), keys_out=DirectionKeys(KEY_OUT, INTEG_OUT),
    )
    values.update(kw)
    return IPsecSA(**values)


class JsonLinesTests(unittest.TestCase):
    def path(self) -> str:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        return os.path.join(d, "sas.jsonl")

    def test_installed_record(self):
        """One line per event: SPIs, selectors, algorithms, mode, lifetimes and endpoints; no keys by default, and
        the file is created with mode 0600."""
        path = self.path()
        sink = JsonLinesSink(path)
        sink.installed(ipsec_sa(), 100.5)
        sink.close()
        [record] = read_records(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(record, {
            "event": "installed", "time": 100.5, "protocol": "esp", "spi_in": "c1c2c3c4", "spi_out": "d1d2d3d4",
            "role": "responder", "isakmp_sa": bytes(range(16)).hex(), "message_id": 0xC0DE, "policy": "lab",
            "proposal": "aes256-sha256-modp2048", "encryption": {"name": "AES-CBC", "key_bits": 256},
            "integrity": "HMAC-SHA-256-128", "pfs_group": "modp2048", "mode": "tunnel", "udp_encapsulation": True,
            "local": {"address": "127.0.0.2", "port": 4500}, "peer": {"address": "127.0.0.1", "port": 5501},
            "local_selector": "10.0.0.0/24", "remote_selector": "10.1.0.1[tcp/22]",
            "lifetime": {"seconds": 3600, "kilobytes": 2048}, "established_at": 100.5, "expires_at": 3700.5,
        })
        text = Path(path).read_text()
        for key in (KEY_IN, KEY_OUT, INTEG_IN, INTEG_OUT):
            self.assertNotIn(key.hex(), text)

    def test_keys_when_asked(self):
        """With ``keys`` (the debug option) each direction's cipher and integrity keys are written in hex."""
        path = self.path()
        sink = JsonLinesSink(path, keys=True)
        sink.installed(ipsec_sa(), 1.0)
        [record] = read_records(path)
        self.assertEqual(record["keys"], {"in": {"encryption": KEY_IN.hex(), "integrity": INTEG_IN.hex()},
                                          "out": {"encryption": KEY_OUT.hex(), "integrity": INTEG_OUT.hex()}})

    def test_removed_record_and_append(self):
        """Removal is one more line with the reason; a second sink on the same file appends."""
        path = self.path()
        JsonLinesSink(path).installed(ipsec_sa(), 1.0)
        sink = JsonLinesSink(path)
        sink.removed(ipsec_sa(), "lifetime over", 3601.0)
        records = read_records(path)
        self.assertEqual([r["event"] for r in records], ["installed", "removed"])
        self.assertEqual(records[1], {"event": "removed", "time": 3601.0, "reason": "lifetime over", "protocol": "esp",
                                      "spi_in": "c1c2c3c4", "spi_out": "d1d2d3d4",
                                      "isakmp_sa": bytes(range(16)).hex()})

    def test_refuses_a_readable_file(self):
        """An existing file that others may read is refused (it may hold keys); a missing folder is an error."""
        path = self.path()
        Path(path).write_text("")
        os.chmod(path, 0o644)
        self.assertRaises(SinkError, JsonLinesSink(path).installed, ipsec_sa(), 1.0)
        self.assertRaises(SinkError, JsonLinesSink(path + ".d/x").installed, ipsec_sa(), 1.0)

    def test_gcm_and_ah_records(self):
        """AES-GCM has no integrity algorithm; AH has no encryption; transport mode without UDP."""
        gcm = ipsec_sa("aes128gcm16", encapsulation=2).record()
        self.assertEqual((gcm["encryption"], gcm["integrity"], gcm["pfs_group"], gcm["mode"], gcm["udp_encapsulation"]),
                         ({"name": "AES-GCM-16", "key_bits": 128}, None, None, "transport", False))
        ah = ipsec_sa("ah-sha512", encapsulation=1).record()
        self.assertEqual((ah["protocol"], ah["encryption"], ah["integrity"]), ("ah", None, "HMAC-SHA-512-256"))


@attrs.define
class Failing:
    calls: list = attrs.Factory(list)

    def installed(self, sa, now):
        self.calls.append("installed")
        raise SinkError("no")

    def removed(self, sa, reason, now):
        self.calls.append("removed")

    def close(self):
        self.calls.append("close")


class TeeAndPluginTests(unittest.TestCase):
    def test_tee(self):
        """TeeSink tells every sink even when one fails, then raises the first error."""
        a, b = Failing(), Failing()
        tee = TeeSink([a, b])
        self.assertRaises(SinkError, tee.installed, ipsec_sa(), 1.0)
        tee.removed(ipsec_sa(), "x", 2.0)
        tee.close()
        self.assertEqual((a.calls, b.calls), (["installed", "removed", "close"],) * 2)

    def test_plugin_counts_sink_errors(self):
        """A sink that fails does not stop the SA: the plugin keeps it and counts ipsec_sink_error."""
        plugin = IPsecDOI(PolicyTable([]), sink=Failing())

        class Sa:
            spi = b"\1" * 16

        effects = plugin.established(Sa(), object(), ipsec_sa(role="responder"), 0.0, lambda n: bytes(n))
        self.assertIn(Count("ipsec_sink_error"), effects)
        self.assertEqual(plugin.all_sas(), [ipsec_sa(role="responder")])

    def test_sink_from_config(self):
        """``[ipsec] sink_path`` makes a JSON lines sink (with keys when ``debug_keys``); nothing, no sink."""
        self.assertIsNone(sink_for(ipsec_config(parse_config({}))))
        sink = sink_for(ipsec_config(parse_config({"ipsec": {"sink_path": "/tmp/x.jsonl", "debug_keys": True}})))
        self.assertIsInstance(sink, JsonLinesSink)
        self.assertEqual((sink.path, sink.keys), ("/tmp/x.jsonl", True))


# --- the kernel (XFRM) -------------------------------------------------------------------------------------------

#: Run inside ``unshare -n``: install the SA through XfrmSink, list the SAD with ``ip xfrm state``, remove it.
_XFRM_SCRIPT = """
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from tests.test_sa_sink import ipsec_sa
from gdoiserver.doi.ipsec.sa_sink import SinkError
from gdoiserver.doi.ipsec.xfrm import XfrmSink, xfrm_unavailable
out = {"unavailable": xfrm_unavailable()}
if out["unavailable"] is None:
    sink = XfrmSink()
    try:
        sink.installed(ipsec_sa(), 0.0)
        out["installed"] = subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout
        sink.removed(ipsec_sa(), "test", 1.0)
        out["after"] = subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout
    except SinkError as e:
        out["error"] = str(e)
print(json.dumps(out))
"""


class XfrmTests(unittest.TestCase):
    def test_install_and_remove(self):
        """In a fresh network namespace the SA's two directions go into the kernel's SAD (ESP in UDP on the NAT-T
        ports, AES-CBC-256 and HMAC-SHA-256 truncated to 128 bits, the hard lifetimes) and leave it again.  Where
        the kernel lacks the ESP type it answers EPROTONOSUPPORT, which shows our message passed its attribute
        checks; the test is then skipped, as it is without pyroute2 or root."""
        if shutil.which("unshare") is None or os.geteuid() != 0:
            raise unittest.SkipTest("optional: the XFRM test needs root and unshare for a network namespace")
        proc = subprocess.run(["unshare", "-n", sys.executable, "-c", _XFRM_SCRIPT, str(REPO)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = json.loads(proc.stdout.splitlines()[-1])
        if out["unavailable"] is not None:
            raise unittest.SkipTest(f"optional: {out['unavailable']}")
        if "error" in out:
            self.assertIn("EPROTONOSUPPORT", out["error"])  # the kernel looked our SA's protocol up: no ESP here
            raise unittest.SkipTest(f"optional: this kernel has no XFRM ESP type ({out['error']})")
        state = out["installed"]
        for needle in ("spi 0xc1c2c3c4", "spi 0xd1d2d3d4", "cbc(aes)", "hmac(sha256)", "128", "espinudp",
                       KEY_IN.hex(), INTEG_OUT.hex()):
            self.assertIn(needle, state)
        self.assertNotIn("spi 0xc1c2c3c4", out["after"])

    def test_message_layout(self):
        """The XFRM_MSG_NEWSA body: struct xfrm_usersa_info of 224 octets (SPI at 72-75 in network order,
        protocol 50 at 76, family at 212, mode 1 = tunnel), then the algorithm and encapsulation attributes."""
        from gdoiserver.doi.ipsec import xfrm

        if xfrm.nlmsg is None:
            raise unittest.SkipTest("optional: pyroute2 is not installed (pip install pyroute2)")
        msg = xfrm.sa_message(ipsec_sa(), inbound=True)
        msg.encode()
        body = bytes(msg.data[16:])  # after the 16-octet netlink header
        self.assertEqual(body[56:60], bytes([127, 0, 0, 2]))  # xfrm_id.daddr (after the 56-octet selector): us
        self.assertEqual(body[72:76], bytes.fromhex("c1c2c3c4"))  # xfrm_id.spi of the inbound SA: our SPI
        self.assertEqual(body[76], 50)  # xfrm_id.proto: IPPROTO_ESP
        self.assertEqual(body[80:84], bytes([127, 0, 0, 1]))  # saddr: the peer
        self.assertEqual(body[212:217], bytes([2, 0, 1, 32, 0]))  # AF_INET, tunnel mode, replay window 32, flags
        attributes = body[224:]
        self.assertIn(b"cbc(aes)", attributes)
        self.assertIn(KEY_IN, attributes)
        self.assertIn(INTEG_IN, attributes)
        self.assertNotIn(KEY_OUT, attributes)
