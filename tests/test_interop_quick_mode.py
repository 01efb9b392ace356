"""Our Quick Mode (RFC 2409 section 5.5) against strongSwan 5.9's charon, in both roles.

Each case runs in its own network namespace (:mod:`tests.interop.strongswan`): Main Mode with a PSK, the float to
NAT-T that charon's kernel-libipsec forces, then Quick Mode for 127.0.0.1/32 on both sides in
UDP-Encapsulated-Tunnel mode (RFC 3947 mode 3, the only one kernel-libipsec takes).  A case passes when

- charon lists the CHILD_SA INSTALLED with the ESP suite asked for;
- our JSON lines SA sink has exactly one installed SA with the same two SPIs (its inbound SPI is charon's
  outbound one), the same algorithms and PFS group, and the mode charon shows;
- the keys our sink writes (``[ipsec] debug_keys``) are those charon logged at chd log level 4, each direction
  matched by who sends with it;
- our log shows no failure.

As responder our daemon runs (``python -m twisted gdoi``); as initiator this module itself, run as
``python -m tests.test_interop_quick_mode --config FILE --peer ADDR``, brings Phase 1 up with the engine and lets
the policy's ``initiate`` start Quick Mode, then prints the SA (no keys) as one JSON line.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.trial import unittest

from gdoiserver.doi.ipsec.sa_sink import read_records
from tests.interop import strongswan as sw
from tests.test_interop_phase1 import OUR_FAILURE, OUR_PORTS, _env, _toml, _write_private

CASE_TIMEOUT = 30.0
#: The service's log line for an installed IPsec SA (gdoiserver/service.py).
OUR_IPSEC_SA = r"IPsec SA established: esp "
#: Our responder's policy: every suite the cases ask for, in this order of preference.
RESPONDER_PROPOSALS = ["aes256-sha256-modp2048", "aes256-sha256-ecp256", "aes256-sha256", "aes128gcm16"]


@dataclass(frozen=True)
class Case:
    """One Quick Mode suite: our name for it, and how ``swanctl --list-sas`` shows it."""

    ours: str
    charon: str


CASES = {
    "aes256-sha256": Case("aes256-sha256", "ESP:AES_CBC-256/HMAC_SHA2_256_128"),
    "aes256-sha256-modp2048": Case("aes256-sha256-modp2048", "ESP:AES_CBC-256/HMAC_SHA2_256_128/MODP_2048"),
    "aes256-sha256-ecp256": Case("aes256-sha256-ecp256", "ESP:AES_CBC-256/HMAC_SHA2_256_128/ECP_256"),
    "aes128gcm16": Case("aes128gcm16", "ESP:AES_GCM_16-128"),
}


def our_config(workdir: Path, role: str, proposals: list, initiate: bool) -> Path:
    """Our TOML for ``role``: Main Mode PSK by the peer's address, one IPsec policy for 127.0.0.1/32 both ways,
    the SA sink with keys at ``workdir/sas.jsonl``."""
    port, nat_t_port = OUR_PORTS[role]
    psk = _write_private(workdir / "gdoi.psk", sw.PSK.encode() + b"\n")
    peer = sw.ADDRESS[sw.INITIATOR if role == sw.RESPONDER else sw.RESPONDER]
    lines = [
        "[server]",
        f"listen = [ {_toml({'address': sw.ADDRESS[role], 'port': port})} ]",
        f"nat_t_port = {nat_t_port}",
        "[ike]",
        "proposals = [ { encryption = \"aes256\", hash = \"sha256\", group = 14, auth = \"psk\" } ]",
        "dpd_delay = 0",
        "[[peers]]",
        f"address = {_toml(peer)}",
        f"psk_file = {_toml(str(psk))}",
        "[ipsec]",
        f"sink_path = {_toml(str(workdir / 'sas.jsonl'))}",
        "debug_keys = true",
        "[[ipsec.policies]]",
        "name = \"interop\"",
        f"peer = {_toml(peer)}",
        "local = [\"127.0.0.1/32\"]",
        "remote = [\"127.0.0.1/32\"]",
        f"proposals = {_toml(proposals)}",
        f"initiate = {_toml(initiate)}",
    ]
    path = workdir / "gdoi.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class LiveQuickMode:
    """Set up and check one live case; mixed into the test classes."""

    def workdir(self) -> Path:
        workdir = tempfile.mkdtemp(prefix="gdoi-qm-")  # short: charon's vici socket path must fit sun_path
        self.addCleanup(shutil.rmtree, workdir, True)
        return Path(workdir)

    def assertSameSA(self, run, charon: str, case: Case, role: str, log: str) -> dict:
        """charon's CHILD_SA and our sink's SA agree (module notes); returns our record."""
        [child] = run.child_sas(charon)
        self.assertEqual((child["state"], child["mode"], child["proposal"]), ("INSTALLED", "TUNNEL-in-UDP",
                                                                              case.charon), run.tails())
        records = read_records(run.workdir / "sas.jsonl")
        [ours] = [r for r in records if r["event"] == "installed"]
        self.assertEqual((bytes.fromhex(ours["spi_in"]), bytes.fromhex(ours["spi_out"])),
                         (child["spi_out"], child["spi_in"]))
        self.assertEqual((ours["proposal"], ours["role"], ours["mode"], ours["udp_encapsulation"], ours["protocol"]),
                         (case.ours, role, "tunnel", True, "esp"))
        self.assertEqual((ours["local_selector"], ours["remote_selector"]), ("127.0.0.1", "127.0.0.1"))
        self.assertEqual((ours["local"]["port"], ours["peer"]["port"]), (OUR_PORTS[role][1], sw.PORTS[charon][1]))
        self.assertIsNone(OUR_FAILURE.search(log), run.tails())
        self.assertNotIn("failed under", log)
        self.assertNotIn(ours["keys"]["in"]["encryption"], log.lower())  # keys go to the sink and nowhere else
        return ours

    def assertSameKeys(self, run, charon: str, ours: dict, role: str) -> None:
        """Each key our sink wrote is the one charon logged for that direction: "initiator" keys protect what
        the Quick Mode initiator sends (RFC 2409 section 5.5: KEYMAT with the receiver's SPI)."""
        logged = run.child_keys(charon)
        sent_by_us, sent_by_charon = ("initiator", "responder") if role == sw.INITIATOR else ("responder",
                                                                                           "initiator")
        expected = {f"encryption {sent_by_us} key": ours["keys"]["out"]["encryption"],
                    f"encryption {sent_by_charon} key": ours["keys"]["in"]["encryption"]}
        if ours["integrity"] is not None:
            expected.update({f"integrity {sent_by_us} key": ours["keys"]["out"]["integrity"],
                             f"integrity {sent_by_charon} key": ours["keys"]["in"]["integrity"]})
        self.assertEqual({k: v.hex() for k, v in logged.items()}, expected, run.tails())


class CharonInitiatorTests(LiveQuickMode, unittest.TestCase):
    """charon initiates Main Mode and Quick Mode; our daemon responds on 127.0.0.2:500 and 4500."""

    def check(self, name: str):
        sw.require((sw.INITIATOR,))
        case = CASES[name]
        workdir = self.workdir()
        sw.prepare(workdir, sides=(sw.INITIATOR,), profiles=("psk", "qm"))
        config = str(our_config(workdir, sw.RESPONDER, RESPONDER_PROPOSALS, initiate=False))
        daemon = sw.Command("gdoi", [sys.executable, "-m", "twisted", "--log-format", "text", "gdoi", "--config",
                                     config], env=_env(), wait_udp=(sw.ADDRESS[sw.RESPONDER], 500))
        run = sw.run(workdir, strongswan=(sw.INITIATOR,), initiate=[f"qm-{name}"], child="qm", commands=[daemon],
                     settle={sw.INITIATOR: 1}, settle_logs={"gdoi": (OUR_IPSEC_SA, 1)}, timeout=CASE_TIMEOUT)
        run.check_established()
        ours = self.assertSameSA(run, sw.INITIATOR, case, sw.RESPONDER, run.logs["gdoi"])
        self.assertSameKeys(run, sw.INITIATOR, ours, sw.RESPONDER)
        self.assertEqual(ours["pfs_group"], name.rpartition("-")[2] if name.count("-") == 2 else None)

    def test_aes256_sha256(self):
        """ESP AES-256-CBC with HMAC-SHA-256-128, no PFS: installed on charon's side with the SPIs, algorithms and
        keys our sink shows."""
        self.check("aes256-sha256")

    def test_aes256_sha256_modp2048(self):
        """The same with PFS over MODP-2048 (KE in QM1 and QM2)."""
        self.check("aes256-sha256-modp2048")

    def test_aes256_sha256_ecp256(self):
        """The same with PFS over ECP-256 (RFC 5903)."""
        self.check("aes256-sha256-ecp256")

    def test_aes128gcm16(self):
        """ESP AES-128-GCM with a 16-octet ICV (RFC 4106): 20 octets of KEYMAT per direction (key and salt), no
        integrity key, the same on both sides."""
        self.check("aes128gcm16")


class CharonResponderTests(LiveQuickMode, unittest.TestCase):
    """This module initiates Main Mode and Quick Mode from 127.0.0.1:5500; charon responds ("mm-psk")."""

    def check(self, name: str):
        sw.require((sw.RESPONDER,))
        case = CASES[name]
        workdir = self.workdir()
        sw.prepare(workdir, sides=(sw.RESPONDER,))
        config = str(our_config(workdir, sw.INITIATOR, [case.ours], initiate=True))
        initiator = sw.Command("qm_initiate", [sys.executable, "-m", "tests.test_interop_quick_mode", "--config",
                                               config, "--peer", sw.ADDRESS[sw.RESPONDER], "--timeout", "12"],
                               env=_env(), background=False, timeout=18)
        run = sw.run(workdir, strongswan=(sw.RESPONDER,), commands=[initiator], settle={sw.RESPONDER: 1},
                     timeout=CASE_TIMEOUT)
        log = run.logs["qm_initiate"]
        self.assertEqual(run.commands["qm_initiate"]["returncode"], 0, run.tails())
        [report] = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        ours = self.assertSameSA(run, sw.RESPONDER, case, sw.INITIATOR, log)
        self.assertEqual({k: report[k] for k in ("spi_in", "spi_out", "proposal")},
                         {k: ours[k] for k in ("spi_in", "spi_out", "proposal")})
        self.assertNotIn("keys", report)
        self.assertSameKeys(run, sw.RESPONDER, ours, sw.INITIATOR)

    def test_aes256_sha256_modp2048(self):
        """Our Quick Mode initiator with PFS over MODP-2048: charon installs the CHILD_SA we report."""
        self.check("aes256-sha256-modp2048")

    def test_aes256_sha256(self):
        """Our Quick Mode initiator without PFS: charon picks aes256-sha256 from its list."""
        self.check("aes256-sha256")


# ------------------------------------------------------------------------------------------------ the initiator


def _arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m tests.test_interop_quick_mode")
    parser.add_argument("--config", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--port", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=15.0)
    return parser.parse_args(argv)


async def initiate(reactor, argv) -> None:
    """Phase 1 with ``--peer``, then wait for the IPsec SA that the policy's ``initiate`` asks for; print it."""
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gdoiserver.config import load_config, policy_from_config
    from gdoiserver.exchanges.factory import Phase1Factory
    from gdoiserver.service import GDOIService

    args = _arguments(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    config = load_config(args.config)
    service = GDOIService(config, reactor, factory=Phase1Factory(policy_from_config(config, args.config)))
    [plugin] = service.plugins
    done = Deferred()
    plugin.hooks.append(lambda ipsec: done.called or done.callback(ipsec))
    started = time.monotonic()
    service.startService()
    try:
        service.engine.initiate((args.peer, args.port))
        done.addTimeout(args.timeout, reactor)
        ipsec = await done
        record = ipsec.record()
        record["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(record), flush=True)
    finally:
        await service.stopService()


if __name__ == "__main__":
    from twisted.internet.task import react

    react(initiate, (sys.argv[1:],))
