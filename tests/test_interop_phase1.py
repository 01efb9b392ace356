"""Our Phase 1 (RFC 2409 Main Mode and Aggressive Mode) against strongSwan 5.9's charon, in both roles.

Each live case runs in its own network namespace (:mod:`tests.interop.strongswan`): the responder on 127.0.0.2
(UDP 500 and 4500), the initiator on 127.0.0.1 (UDP 5500 and 5501).  charon's kernel-libipsec backend makes it
fake NAT-D, so every exchange floats to the NAT-T ports after MM4/AM2 (RFC 3947 section 4) and our side must
follow.  We have no Quick Mode yet (issue 4): charon is asked for the IKE SA alone (``swanctl --initiate --ike``),
which IKEv1 allows, and a case passes when

- charon's ``swanctl --list-sas`` shows the IKE SA ESTABLISHED, with the suite and our ID at our NAT-T port;
- our side (the daemon's log as responder, ``ike_initiate``'s JSON line as initiator) shows the SA with the very
  same cookies, the float to NAT-T and the peer's ID type, and no Phase 1 failure;
- our keylog holds exactly one line for the SA, with the encryption key charon logged for it (RFC 2409
  appendix B), and that key appears in none of our output.

tshark (and ``pcapdump --keylog``) then decrypts a capture with nothing but our keylog.  The tests of
``gdoiserver.tools.ike_initiate`` itself run against our own responder in this process, without root or peers.
"""

import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import defer, reactor, utils
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.service import GDOIService
from gdoiserver.tools import ike_initiate
from gdoiserver.tools.decrypt import read_keylog
from tests import pki, tshark
from tests.interop import strongswan as sw

REPO = Path(__file__).resolve().parent.parent
PSK = sw.PSK
#: Our UDP ports (IKE, NAT-T) in each role: the responder's are the standard ones, the initiator's those of
#: configs/initiator.strongswan.conf (charon's socket-default binds the wildcard address on 500 and 4500).
OUR_PORTS = {sw.RESPONDER: (500, 4500), sw.INITIATOR: (5500, 5501)}
ID_TYPE_NUMBERS = {"IPV4_ADDR": 1, "FQDN": 2}
#: The engine's log line for an established SA (gdoiserver/net/ike.py).
OUR_SA = re.compile(
    r"ISAKMP SA established: (initiator|responder) SA ([0-9a-f]{16})/([0-9a-f]{16}) with (\S+), peer ID type (\d+),"
    r" (NAT-T|no NAT-T)$", re.M,
)
#: What must not be in our log: a failed or timed-out Phase 1, a bug caught by the engine, a traceback.
OUR_FAILURE = re.compile(r"Phase 1 failed|Phase 1 timed out|bug:|Traceback", re.M)
CASE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Case:
    """One Phase 1 flavour, as both strongSwan and our configuration name it.

    ``proposal`` is our ``[[ike.proposals]]`` entry (and what ``ike_initiate`` reports); ``ids`` the Phase 1 ID
    of each side (None: its address, ID_IPV4_ADDR); ``suite`` the IKE proposal as ``swanctl --list-sas`` shows it.
    """

    mode: str
    profile: str
    proposal: dict
    connections: dict
    suite: str
    ids: dict = field(default_factory=lambda: {sw.INITIATOR: None, sw.RESPONDER: None})


def _proposal(encryption, hash_, group, auth):
    return {"encryption": encryption, "hash": hash_, "group": group, "auth": auth}


_CERT_IDS = {sw.INITIATOR: "initiator.test", sw.RESPONDER: "responder.test"}
CASES = {
    "mm_psk_modp2048": Case(
        "main", "psk", _proposal("aes256", "sha256", 14, "psk"),
        {sw.INITIATOR: "mm-psk-modp2048", sw.RESPONDER: "mm-psk"},
        "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
    ),
    "mm_psk_ecp256": Case(
        "main", "psk", _proposal("aes128", "sha256", 19, "psk"),
        {sw.INITIATOR: "mm-psk-ecp256", sw.RESPONDER: "mm-psk"},
        "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256",
    ),
    "am_psk": Case(
        "aggressive", "psk", _proposal("aes256", "sha256", 14, "psk"),
        {sw.INITIATOR: "am-psk", sw.RESPONDER: "am-psk"},
        "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        {sw.INITIATOR: "init.am.test", sw.RESPONDER: "resp.am.test"},
    ),
    "mm_rsa": Case(
        "main", "rsa", _proposal("aes256", "sha256", 14, "rsa"),
        {sw.INITIATOR: "mm-rsa", sw.RESPONDER: "mm-rsa"},
        "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048", _CERT_IDS,
    ),
    "mm_ecdsa": Case(
        "main", "ecdsa", _proposal("aes256", "sha256", 19, "ecdsa256"),
        {sw.INITIATOR: "mm-ecdsa", sw.RESPONDER: "mm-ecdsa"},
        "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/ECP_256", _CERT_IDS,
    ),
}  # fmt: skip
#: The key kind (tests/pki.py) and the file names configs/<side>.<profile>.swanctl.conf expect.
CERT_PROFILES = {"rsa": ("rsa2048", ""), "ecdsa": ("p256", "-ecdsa")}


def _other(side: str) -> str:
    return sw.INITIATOR if side == sw.RESPONDER else sw.RESPONDER


def _env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _certificates(profile: str, workdir: Path, ours: str) -> tuple[dict, dict]:
    """A throwaway CA and a certificate per side whose SAN is the side's FQDN ID (RFC 2409 section 5.1).

    Returns the strongSwan side's files (for :func:`sw.prepare`) and our ``[[peers]]`` keys, whose files are
    written under ``workdir/gdoi``.
    """
    kind, suffix = CERT_PROFILES[profile]
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_before=now - pki.DAY, not_after=now + pki.DAY)
    root = pki.issue(f"gdoiserver interop CA {kind}", pki.key(kind, 0), ca=True, **valid)
    pem = serialization.Encoding.PEM
    files, config = {}, {}
    for side, slot in ((sw.INITIATOR, 1), (sw.RESPONDER, 2)):
        leaf = pki.issue(f"{kind} {side}", pki.key(kind, slot), root, sans=(_CERT_IDS[side],), **valid)
        if side == ours:
            d = workdir / "gdoi"
            d.mkdir(exist_ok=True)
            config = {
                "certificate": pki.write_certificates(d / "cert.pem", leaf.certificate),
                "private_key": pki.write_key(d / "key.pem", leaf.key),
                "ca": [pki.write_certificates(d / "ca.pem", root.certificate)],
            }
        else:
            files[f"{side}/x509ca/ca.pem"] = root.certificate.public_bytes(pem)
            files[f"{side}/x509/{side}{suffix}.pem"] = leaf.certificate.public_bytes(pem)
            files[f"{side}/private/{side}{suffix}.key"] = leaf.key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    return files, config


def _toml(value) -> str:
    """A TOML value: strings and arrays as JSON writes them (valid TOML for ASCII text), numbers as they are."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def our_config(workdir: Path, case: Case, role: str, credentials: dict) -> Path:
    """Our TOML configuration for ``role`` in ``case``; the keylog goes to ``workdir/gdoi.keylog``."""
    port, nat_t_port = OUR_PORTS[role]
    if case.profile != "psk":
        peer = {"id": case.ids[_other(role)], "auth": case.profile, **credentials}
    else:
        psk = _write_private(workdir / "gdoi.psk", PSK.encode() + b"\n")
        if case.mode == "aggressive":  # the PSK is chosen by the peer's ID (RFC 2409 section 5.4)
            peer = {"id": case.ids[_other(role)], "psk_file": str(psk)}
        else:  # by the peer's address: its ID is encrypted when the key is needed
            peer = {"address": sw.ADDRESS[_other(role)], "psk_file": str(psk)}
    lines = [
        "[server]",
        f"listen = [ {_toml({'address': sw.ADDRESS[role], 'port': port})} ]",
        f"nat_t_port = {nat_t_port}",
        "[keylog]",
        f"path = {_toml(str(workdir / 'gdoi.keylog'))}",
        "[ike]",
        f"proposals = [ {_toml(case.proposal)} ]",
    ]
    if case.ids[role] is not None:
        lines += ["[identity]", f"id = {_toml(case.ids[role])}"]
    lines += ["[[peers]]", *(f"{k} = {_toml(v)}" for k, v in peer.items())]
    path = workdir / "gdoi.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _our_sas(log: str) -> list:
    return [(m[1], bytes.fromhex(m[2]), bytes.fromhex(m[3]), m[4], int(m[5]), m[6]) for m in OUR_SA.finditer(log)]


def _json_lines(log: str) -> list:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


class LiveCase:
    """Set up and check one live case; mixed into test classes."""

    def workdir(self) -> Path:
        workdir = tempfile.mkdtemp(prefix="gdoi-p1-")  # short: charon's vici socket path must fit sun_path
        self.addCleanup(shutil.rmtree, workdir, True)
        return Path(workdir)

    def live(self, name: str, role: str):
        """Run case ``name`` with us in ``role`` and charon in the other; return (run, our log name, keylog)."""
        sw.require((_other(role),))
        case = CASES[name]
        workdir = self.workdir()
        files, credentials = ({}, {}) if case.profile == "psk" else _certificates(case.profile, workdir, role)
        self.strongswan_files = files
        sw.prepare(workdir, sides=(_other(role),), profiles=(case.profile,), files=files)
        config = str(our_config(workdir, case, role, credentials))
        if role == sw.RESPONDER:
            daemon = sw.Command("gdoi", [sys.executable, "-m", "twisted", "--log-format", "text", "gdoi", "--config",
                                         config], env=_env(), wait_udp=(sw.ADDRESS[role], OUR_PORTS[role][0]))
            run = sw.run(workdir, strongswan=(sw.INITIATOR,), initiate=[case.connections[sw.INITIATOR]], child=None,
                         commands=[daemon], settle_logs={"gdoi": (OUR_SA.pattern, 1)}, timeout=CASE_TIMEOUT)
            return run, "gdoi", workdir / "gdoi.keylog"
        initiator = sw.Command("ike_initiate", [sys.executable, "-m", "gdoiserver.tools.ike_initiate", "--config",
                                                config, "--peer", sw.ADDRESS[sw.RESPONDER], "--mode", case.mode,
                                                "--timeout", "10"], env=_env(), background=False, timeout=15)
        run = sw.run(workdir, strongswan=(sw.RESPONDER,), commands=[initiator], settle={sw.RESPONDER: 1},
                     settle_on="ike", timeout=CASE_TIMEOUT)
        return run, "ike_initiate", workdir / "gdoi.keylog"

    def assertBothEstablished(self, name: str, role: str, run, log_name: str, keylog: Path) -> bytes:
        """Both sides hold the same ISAKMP SA, floated to NAT-T, and our keylog has charon's key for it; returns
        the initiator cookie."""
        case, charon = CASES[name], _other(role)
        run.check_established(installed=1, child=False)
        sas = run.ike_sas(charon)
        self.assertEqual([(conn, state) for conn, state, _, _ in sas], [(case.connections[charon], "ESTABLISHED")],
                         run.tails())
        _, _, icookie, rcookie = sas[0]
        our_address = f"{sw.ADDRESS[role]}[{OUR_PORTS[role][1]}]"
        our_id = case.ids[role] or sw.ADDRESS[role]
        self.assertIn(case.suite, run.sas[charon])
        self.assertIn(f"remote '{our_id}' @ {our_address}", run.sas[charon])

        log = run.logs[log_name]
        peer_id = case.ids[charon]
        peer_type = ID_TYPE_NUMBERS["FQDN" if peer_id else "IPV4_ADDR"]
        charon_nat_t = f"{sw.ADDRESS[charon]}:{sw.PORTS[charon][1]}"
        self.assertEqual(_our_sas(log), [(role, icookie, rcookie, charon_nat_t, peer_type, "NAT-T")], run.tails())
        self.assertIsNone(OUR_FAILURE.search(log), run.tails())

        self.assertEqual(stat.S_IMODE(keylog.stat().st_mode), 0o600)
        keys = read_keylog(keylog)
        self.assertEqual(keys, {icookie: run.encryption_keys(charon)[icookie]})
        self.assertNotIn(keys[icookie].hex(), log.lower())  # keys go to the keylog and nowhere else
        return icookie

    def assertInitiatorReport(self, name: str, run, icookie: bytes) -> dict:
        """``ike_initiate`` exited 0 with one JSON line describing the SA charon lists."""
        case = CASES[name]
        self.assertEqual(run.commands["ike_initiate"]["returncode"], 0, run.tails())
        [report] = _json_lines(run.logs["ike_initiate"])
        rcookie = next(r for _, _, i, r in run.ike_sas(sw.RESPONDER) if i == icookie)
        peer_id = case.ids[sw.RESPONDER]
        our_id = case.ids[sw.INITIATOR]
        expected = {
            "established": True,
            "mode": case.mode,
            "initiator_cookie": icookie.hex(),
            "responder_cookie": rcookie.hex(),
            "local": f"{sw.ADDRESS[sw.INITIATOR]}:{OUR_PORTS[sw.INITIATOR][1]}",
            "peer": f"{sw.ADDRESS[sw.RESPONDER]}:{sw.PORTS[sw.RESPONDER][1]}",
            "local_id": {"type": "FQDN", "value": our_id} if our_id else {"type": "IPV4_ADDR", "value": "127.0.0.1"},
            "peer_id": {"type": "FQDN", "value": peer_id} if peer_id else {"type": "IPV4_ADDR", "value": "127.0.0.2"},
            "proposal": case.proposal,
            "lifetime": 28800,
            "nat_t": True,
            "local_behind_nat": False,
            "peer_behind_nat": True,  # charon fakes its NAT-D hashes (peers.md)
        }
        self.assertEqual({k: report[k] for k in expected}, expected)
        if case.profile != "psk":  # the certificate charon sent and we validated
            kind, suffix = CERT_PROFILES[case.profile]
            pem = self.strongswan_files[f"{sw.RESPONDER}/x509/{sw.RESPONDER}{suffix}.pem"]
            cert = x509.load_pem_x509_certificate(pem)
            self.assertEqual(report["peer_certificate"], {"subject": cert.subject.rfc4514_string(),
                                                          "sha256": cert.fingerprint(hashes.SHA256()).hex()})
        return report


class CharonInitiatorTests(LiveCase, unittest.TestCase):
    """charon initiates; our daemon (``python -m twisted gdoi``) responds on 127.0.0.2:500 and 4500."""

    def check(self, name):
        run, log_name, keylog = self.live(name, sw.RESPONDER)
        self.assertBothEstablished(name, sw.RESPONDER, run, log_name, keylog)

    def test_main_mode_psk_aes256_sha256_modp2048(self):
        """Main Mode with a PSK chosen by the initiator's address, AES-256/SHA-256/MODP-2048: the ISAKMP SA is up on
        both sides, floated to UDP 4500, and our keylog has charon's encryption key."""
        self.check("mm_psk_modp2048")

    def test_main_mode_psk_aes128_sha256_ecp256(self):
        """Main Mode with a PSK, AES-128/SHA-256/ECP-256 (RFC 5903): established on both sides."""
        self.check("mm_psk_ecp256")

    def test_aggressive_mode_psk(self):
        """Aggressive Mode with a PSK chosen by the initiator's FQDN ID; AM3 arrives on UDP 4500 and our
        responder follows the float: established on both sides."""
        self.check("am_psk")

    def test_main_mode_rsa_certificates(self):
        """Main Mode with RSA signatures: each side validates the other's certificate against the throwaway CA and
        its FQDN ID against the SAN; established on both sides."""
        self.check("mm_rsa")

    def test_main_mode_ecdsa_certificates(self):
        """Main Mode with ECDSA P-256 signatures (RFC 4754 method 9): established on both sides."""
        self.check("mm_ecdsa")


class CharonResponderTests(LiveCase, unittest.TestCase):
    """``python -m gdoiserver.tools.ike_initiate`` initiates from 127.0.0.1:5500; charon responds."""

    def check(self, name):
        run, log_name, keylog = self.live(name, sw.INITIATOR)
        icookie = self.assertBothEstablished(name, sw.INITIATOR, run, log_name, keylog)
        return self.assertInitiatorReport(name, run, icookie)

    def test_main_mode_psk_aes256_sha256_modp2048(self):
        """Our Main Mode initiator with a PSK chosen by the responder's address, AES-256/SHA-256/MODP-2048: the
        tool reports the SA charon lists, floated to UDP 4500 after NAT-D."""
        self.check("mm_psk_modp2048")

    def test_main_mode_psk_aes128_sha256_ecp256(self):
        """Our Main Mode initiator, AES-128/SHA-256/ECP-256: charon picks it from its three proposals."""
        self.check("mm_psk_ecp256")

    def test_aggressive_mode_psk(self):
        """Our Aggressive Mode initiator with FQDN IDs and the PSK chosen by charon's ID in AM2."""
        self.check("am_psk")

    def test_main_mode_rsa_certificates(self):
        """Our Main Mode initiator with RSA signatures: charon accepts our certificate and SIG_I, we accept its
        certificate, ID and SIG_R; the report names charon's certificate."""
        self.check("mm_rsa")

    def test_main_mode_ecdsa_certificates(self):
        """Our Main Mode initiator with ECDSA P-256 signatures: established on both sides."""
        self.check("mm_ecdsa")


class DecryptionTests(LiveCase, unittest.TestCase):
    """tshark and ``pcapdump --keylog`` decrypt a live capture with our keylog alone."""

    FIELDS = ("frame.number", "ip.src", "isakmp.ispi", "isakmp.exchangetype", "isakmp.flags", "isakmp.typepayload",
              "isakmp.id.type", "isakmp.id.data.ipv4_addr", "isakmp.id.data.fqdn", "isakmp.hash")

    def rows(self, pcap, *options) -> list[dict]:
        out = tshark._run(pcap, "-Y", "isakmp", "-T", "fields", "-E", "separator=|",
                          *(a for f in self.FIELDS for a in ("-e", f)), *options)
        return [dict(zip(self.FIELDS, line.split("|"))) for line in out.splitlines() if line]

    def check(self, role):
        tshark.require_tshark()
        run, log_name, keylog = self.live("mm_psk_modp2048", role)
        icookie = self.assertBothEstablished("mm_psk_modp2048", role, run, log_name, keylog)
        [(cookie, key)] = read_keylog(keylog).items()
        uat = ("-o", f"uat:ikev1_decryption_table:{cookie.hex()},{key.hex()}")

        def mm5_mm6(rows):
            return [r for r in rows if r["isakmp.exchangetype"] == "2" and int(r["isakmp.flags"], 16) & 1
                    and r["isakmp.ispi"] == icookie.hex()]

        # Without the key the encrypted messages show no payloads: what follows comes from our keylog.
        self.assertEqual([r["isakmp.typepayload"] for r in mm5_mm6(self.rows(run.pcap))], ["", ""])
        mm5, mm6 = mm5_mm6(self.rows(run.pcap, *uat))
        self.assertEqual((mm5["ip.src"], mm6["ip.src"]), (sw.ADDRESS[sw.INITIATOR], sw.ADDRESS[sw.RESPONDER]))
        for message, address in ((mm5, sw.ADDRESS[sw.INITIATOR]), (mm6, sw.ADDRESS[sw.RESPONDER])):
            # RFC 2409 section 5.4: HDR*, IDii|IDir, HASH_I|HASH_R, with ID_IPV4_ADDR (1) and SHA-256's 32 octets
            self.assertEqual(message["isakmp.typepayload"].split(",")[:2], ["5", "8"], message)
            self.assertEqual((message["isakmp.id.type"], message["isakmp.id.data.ipv4_addr"]), ("1", address))
            self.assertEqual(len(bytes.fromhex(message["isakmp.hash"])), 32)
        self.assertNotEqual(mm5["isakmp.hash"], mm6["isakmp.hash"])
        self.assertEqual(tshark.problems(run.pcap, *uat), [])

        proc = subprocess.run([sys.executable, "-m", "gdoiserver.tools.pcapdump", "--keylog", str(keylog),
                               str(run.pcap)], capture_output=True, text=True, timeout=60, env={**os.environ, **_env()})
        self.assertEqual(proc.returncode, 0, proc.stdout[-2000:] + proc.stderr[-2000:])
        decrypted = [line for line in _json_lines(proc.stdout) if line.get("decrypted")]
        self.assertGreaterEqual(len(decrypted), 2)

    def test_tshark_decrypts_our_responder(self):
        """charon against our responder (Main Mode, PSK): tshark, given only our keylog, decrypts MM5 and MM6 to
        ID (ID_IPV4_ADDR of each sender) and HASH payloads and flags nothing malformed or worse than a note;
        ``pcapdump --keylog`` decrypts and re-encrypts every message and exits 0."""
        self.check(sw.RESPONDER)

    def test_tshark_decrypts_our_initiator(self):
        """Our initiator against charon (Main Mode, PSK): the same checks on what our initiator sent."""
        self.check(sw.INITIATOR)


# ------------------------------------------------------------------------------------------------ the tool itself


_RESPONDER_PROPOSAL = _proposal("aes256", "sha256", 19, "psk")


def _config_text(psk_path: Path, proposal: dict, keylog: Path | None = None, listen: str = "127.0.0.1") -> str:
    lines = [
        "[server]",
        f"listen = [ {_toml({'address': listen, 'port': 0})} ]",
        "nat_t_port = 0",
        "[ike]",
        f"proposals = [ {_toml(proposal)} ]",
        "retransmit_initial = 0.5",
        "retransmit_tries = 1",
        "[[peers]]",
        'address = "127.0.0.1"',
        f"psk_file = {_toml(str(psk_path))}",
    ]
    if keylog is not None:
        lines += ["[keylog]", f"path = {_toml(str(keylog))}"]
    return "\n".join(lines) + "\n"


class _Silent(DatagramProtocol):
    def datagramReceived(self, datagram, addr):
        pass


class IkeInitiateToolTests(unittest.TestCase):
    """``python -m gdoiserver.tools.ike_initiate`` against our own responder in this process (no NAT, no root)."""

    def setUp(self):
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.psk = _write_private(self.dir / "psk", PSK.encode())

    def responder(self, proposal=_RESPONDER_PROPOSAL) -> tuple[GDOIService, int]:
        """Our daemon's service on 127.0.0.1 with a free port; returns it and its IKE port."""
        config = parse_config(tomllib.loads(_config_text(self.psk, proposal)))
        service = GDOIService(config, reactor, factory=Phase1Factory(policy_from_config(config)))
        service.startService()
        self.addCleanup(service.stopService)
        self.addCleanup(self.forget_sas, service.engine)
        port = next(p.local_address[1] for p in service.protocols if not p.is_nat_t)
        return service, port

    @staticmethod
    def forget_sas(engine):
        """Remove the responder's SAs, which cancels their lifetime, DPD and retransmission timers."""
        for spi in list(engine.sas):
            engine.remove_sa(spi, "test over")

    def tool(self, *args, proposal=_RESPONDER_PROPOSAL, listen="127.0.0.1") -> defer.Deferred:
        """Run the tool with a configuration offering ``proposal``; fires with (stdout, stderr, exit status)."""
        self.keylog = self.dir / "tool.keylog"
        config = self.dir / "tool.toml"
        config.write_text(_config_text(self.psk, proposal, self.keylog, listen))
        argv = ["-m", "gdoiserver.tools.ike_initiate", "--config", str(config), *args]
        return utils.getProcessOutputAndValue(sys.executable, argv, env={**os.environ, **_env()})

    @defer.inlineCallbacks
    def test_established(self):
        """Main Mode with our responder: exit 0 and one JSON line naming the SA the responder holds (same cookies,
        proposal, IDs, no NAT-T on a direct path); the keylog has the responder's key, and no key shows."""
        service, port = self.responder()
        out, err, code = yield self.tool("--peer", f"127.0.0.1:{port}", "--timeout", "10")
        self.assertEqual(code, 0, err)
        [report] = _json_lines(out.decode())
        [sa] = [entry.sa for entry in service.engine.sas.values()]
        self.assertEqual((report["initiator_cookie"], report["responder_cookie"]),
                         (sa.initiator_cookie.hex(), sa.responder_cookie.hex()))
        self.assertEqual(report["proposal"], _RESPONDER_PROPOSAL)
        self.assertEqual((report["mode"], report["established"], report["nat_t"], report["peer"]),
                         ("main", True, False, f"127.0.0.1:{port}"))
        self.assertEqual(report["peer_id"], {"type": "IPV4_ADDR", "value": "127.0.0.1"})
        self.assertEqual(read_keylog(self.keylog), {sa.initiator_cookie: sa.keys.enc_key})
        output = (out + err).decode().lower()
        for secret in (sa.keys.enc_key, sa.keys.skeyid, sa.keys.skeyid_d, sa.keys.skeyid_a, sa.keys.skeyid_e):
            self.assertNotIn(secret.hex(), output)

    @defer.inlineCallbacks
    def test_no_proposal_chosen(self):
        """A responder that accepts none of our proposals answers NO-PROPOSAL-CHOSEN: exit 1, and the JSON line
        says not established and names the Notify."""
        service, port = self.responder()
        out, err, code = yield self.tool("--peer", f"127.0.0.1:{port}", proposal=_proposal("aes128", "sha256", 14,
                                                                                             "psk"))
        self.assertEqual(code, 1, err)
        [report] = _json_lines(out.decode())
        self.assertEqual((report["established"], report["notify"]), (False, "NO_PROPOSAL_CHOSEN"))
        self.assertEqual(service.engine.sas, {})

    @defer.inlineCallbacks
    def test_timeout(self):
        """A peer that never answers: exit 1 after --timeout with the reason."""
        port = reactor.listenUDP(0, _Silent(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        out, err, code = yield self.tool("--peer", f"127.0.0.1:{port.getHost().port}", "--timeout", "0.5")
        self.assertEqual(code, 1, err)
        [report] = _json_lines(out.decode())
        self.assertFalse(report["established"])
        self.assertIn("within 0.5 s", report["reason"])

    @defer.inlineCallbacks
    def test_local_address(self):
        """--local names the listener to initiate from; an address no listener has, or a peer of an address family
        we do not listen on, is a usage error (exit 2) and nothing is sent."""
        service, port = self.responder()
        out, err, code = yield self.tool("--peer", f"127.0.0.1:{port}", "--local", "127.0.0.1")
        self.assertEqual(code, 0, err)
        self.assertTrue(_json_lines(out.decode())[0]["established"])
        for args in (("--local", "127.0.0.9"), ("--peer", "[::1]:500")):
            out, err, code = yield self.tool("--peer", f"127.0.0.1:{port}", *args)
            self.assertEqual((code, out), (2, b""), err)
            self.assertIn(b"ike_initiate: ", err)
        self.assertEqual(service.engine.counters["phase1_responder_started"], 1)

    @defer.inlineCallbacks
    def test_cannot_listen(self):
        """A listen address that is not ours: exit 1 with the reason in the JSON line."""
        out, err, code = yield self.tool("--peer", "127.0.0.1", listen="192.0.2.1")
        self.assertEqual(code, 1, err)
        [report] = _json_lines(out.decode())
        self.assertFalse(report["established"])
        self.assertIn("cannot listen", report["reason"])

    @defer.inlineCallbacks
    def test_configuration_error(self):
        """A configuration that does not load: exit 2 with the error on stderr and nothing on stdout."""
        missing = self.dir / "missing.toml"
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "gdoiserver.tools.ike_initiate", "--config", str(missing), "--peer", "127.0.0.1"],
            env={**os.environ, **_env()},
        )
        self.assertEqual((code, out), (2, b""))
        self.assertIn(b"configuration error", err)

    def test_parse_peer(self):
        """--peer takes an address with an optional port (IPv6 in brackets); the port defaults to 500."""
        self.assertEqual(ike_initiate.parse_peer("192.0.2.1"), ("192.0.2.1", 500))
        self.assertEqual(ike_initiate.parse_peer("192.0.2.1:4500"), ("192.0.2.1", 4500))
        self.assertEqual(ike_initiate.parse_peer("2001:db8::1"), ("2001:db8::1", 500))
        self.assertEqual(ike_initiate.parse_peer("[2001:db8::1]:848"), ("2001:db8::1", 848))
        for bad in ("gw.example.org", "192.0.2.1:0", "192.0.2.1:70000", "[2001:db8::1", "192.0.2.1:x"):
            self.assertRaises(ike_initiate.UsageError, ike_initiate.parse_peer, bad)
