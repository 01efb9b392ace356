"""ike-scan (an independent IKEv1 prober) against our daemon: proposals accepted and refused, Aggressive Mode.

Each probe runs in its own network namespace (:mod:`tests.interop.strongswan`, with no strongSwan side) with our
daemon on 127.0.0.2:500.  ike-scan sends one first message and prints what came back: ``Main Mode Handshake
returned`` with the SA of MM2 (RFC 2409 section 5.4), ``Aggressive Mode Handshake returned`` with AM2's payloads,
or ``Notify message N (NAME)``.  It binds UDP 500 unless told otherwise, so it runs with ``--sport=0``.

psk-crack, from the same package, recovers the pre-shared key from an Aggressive Mode exchange by recomputing
HASH_R (MD5 and SHA-1 only): an independent check of our HASH_R and SKEYID (RFC 2409 section 5).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

from tests.interop import strongswan as sw

IKE_SCAN = shutil.which("ike-scan")
PSK_CRACK = shutil.which("psk-crack")
REPO = Path(__file__).resolve().parent.parent
PSK = "ike-scan-test-psk-42"
TARGET = sw.ADDRESS[sw.RESPONDER]
#: ike-scan's --trans: (1=encryption 7 AES-CBC, 14=key length, 2=hash, 3=auth 1 PSK, 4=group), RFC 2409 appendix A.
AES256_SHA256_PSK_MODP2048 = "--trans=(1=7,14=256,2=4,3=1,4=14)"
AES256_SHA1_PSK_MODP2048 = "--trans=(1=7,14=256,2=2,3=1,4=14)"
#: 3DES-CBC, MD5, PSK, MODP-768 (group 1): nothing we accept.
TRIPLEDES_MD5_PSK_MODP768 = "--trans=5,1,1,1"
DPD_VID = "VID=afcad71368a1f1c96b8696fc77570100 (Dead Peer Detection v1.0)"
NAT_T_VID = "4a131c81070358455c5728f20e95452f"  # RFC 3947 section 3.1

CONFIG = """\
[server]
listen = [ {{ address = "{target}", port = 500 }} ]
[identity]
id = "resp.am.test"
[ike]
proposals = [
    {{ encryption = "aes256", hash = "sha256", group = 14, auth = "psk" }},
    {{ encryption = "aes256", hash = "sha1", group = 14, auth = "psk" }},
]
[[peers]]                       # Main Mode: the PSK by the prober's address
address = "127.0.0.1"
psk_file = "{psk}"
[[peers]]                       # Aggressive Mode: the PSK by the prober's ID
id = "init.am.test"
psk_file = "{psk}"
"""


def require_ike_scan():
    sw.require(())
    if IKE_SCAN is None:
        raise unittest.SkipTest("missing tool: ike-scan (apt-get install ike-scan)")


class IkeScanTests(unittest.TestCase):
    """One ike-scan probe per test against our responder."""

    def setUp(self):
        self.workdir = Path(tempfile.mkdtemp(prefix="gdoi-scan-"))
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def probe(self, *args) -> tuple[str, str]:
        """Run ``ike-scan --sport=0 ARGS 127.0.0.2`` against our daemon; return ike-scan's and the daemon's logs."""
        require_ike_scan()
        workdir = self.workdir
        psk = workdir / "psk"
        fd = os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(PSK)
        config = workdir / "gdoi.toml"
        config.write_text(CONFIG.format(target=TARGET, psk=psk))
        path = os.environ.get("PYTHONPATH")
        env = {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
        daemon = sw.Command("gdoi", [sys.executable, "-m", "twisted", "--log-format", "text", "gdoi", "--config",
                                     str(config)], env=env, wait_udp=(TARGET, 500))
        scan = sw.Command("ike-scan", [IKE_SCAN, "--sport=0", "--retry=2", *args, TARGET], background=False,
                          timeout=10)
        run = sw.run(workdir, strongswan=(), commands=[daemon, scan], timeout=30)
        self.assertEqual(run.commands["ike-scan"]["returncode"], 0, run.tails())
        return run.logs["ike-scan"], run.logs["gdoi"]

    def assertHandshake(self, output: str, mode: str, sa: str, rest: str = "") -> None:
        """One host answered with a handshake of ``mode`` whose SA (and what follows it) reads as given."""
        head = rf"^{re.escape(TARGET)}\t{mode} Mode Handshake returned HDR=\(CKY-R=([0-9a-f]{{16}})\) "
        m = re.search(head + re.escape(f"SA=({sa}){rest}"), output, re.M)
        self.assertIsNotNone(m, output)
        self.assertNotEqual(m[1], "0" * 16, "a responder cookie of zero")
        self.assertIn("1 returned handshake; 0 returned notify", output)

    def test_main_mode_proposal_accepted(self):
        """MM1 offering AES-256/SHA2-256/PSK/MODP-2048 gets MM2 choosing exactly that, with a responder cookie and
        our DPD vendor ID (RFC 3706), and no NAT-T vendor ID since the prober sent none (RFC 3947 section 3.1)."""
        output, log = self.probe(AES256_SHA256_PSK_MODP2048)
        self.assertHandshake(output, "Main", "Enc=AES KeyLength=256 Hash=SHA2-256 Auth=PSK Group=14:modp2048",
                             " " + DPD_VID)
        self.assertNotIn(NAT_T_VID, output)
        self.assertNotIn("Phase 1 failed", log)

    def test_main_mode_on_the_nat_t_port(self):
        """MM1 sent to UDP 4500 behind the non-ESP marker (``--nat-t``, as an initiator that knows of a NAT may
        start) is answered from UDP 4500 behind the marker (RFC 3948 section 2.2), which ike-scan accepts."""
        output, _ = self.probe("--nat-t", "--sport=0", AES256_SHA256_PSK_MODP2048)  # --nat-t sets --sport=4500
        self.assertHandshake(output, "Main", "Enc=AES KeyLength=256 Hash=SHA2-256 Auth=PSK Group=14:modp2048",
                             " " + DPD_VID)

    def test_aggressive_mode_on_the_nat_t_port(self):
        """AM1 sent to UDP 4500 behind the non-ESP marker gets AM2 from UDP 4500 behind the marker."""
        output, _ = self.probe("--nat-t", "--sport=0", "-A", "--id=init.am.test", "--idtype=2", "--dhgroup=14",
                               AES256_SHA256_PSK_MODP2048)
        self.assertHandshake(output, "Aggressive", "Enc=AES KeyLength=256 Hash=SHA2-256 Auth=PSK Group=14:modp2048")

    def test_main_mode_3des_md5_modp768_refused(self):
        """MM1 offering only 3DES/MD5/PSK/MODP-768 gets a clear Notify NO-PROPOSAL-CHOSEN (RFC 2408 section 5.6),
        and the daemon logs the failure."""
        output, log = self.probe(TRIPLEDES_MD5_PSK_MODP768)
        self.assertRegex(output, rf"(?m)^{re.escape(TARGET)}\tNotify message 14 \(NO-PROPOSAL-CHOSEN\) HDR=")
        self.assertIn("0 returned handshake; 1 returned notify", output)
        self.assertIn("Phase 1 failed", log)

    def test_aggressive_mode_answered(self):
        """AM1 with ID_FQDN init.am.test (a configured PSK) and a MODP-2048 KE gets AM2: our SA choice, a 256-octet
        KE, our nonce, ID_FQDN resp.am.test and a 32-octet HASH_R (RFC 2409 section 5.4)."""
        output, _ = self.probe("-A", "--id=init.am.test", "--idtype=2", "--dhgroup=14", AES256_SHA256_PSK_MODP2048)
        self.assertHandshake(output, "Aggressive", "Enc=AES KeyLength=256 Hash=SHA2-256 Auth=PSK Group=14:modp2048",
                             " KeyExchange(256 bytes) Nonce(32 bytes) ID(Type=ID_FQDN, Value=resp.am.test)"
                             " Hash(32 bytes) " + DPD_VID)

    def test_aggressive_mode_unknown_id_refused(self):
        """AM1 from an ID with no PSK configured gets a clear Notify INVALID-ID-INFORMATION."""
        output, _ = self.probe("-A", "--id=nobody.test", "--idtype=2", "--dhgroup=14", AES256_SHA256_PSK_MODP2048)
        self.assertRegex(output, rf"(?m)^{re.escape(TARGET)}\tNotify message 18 \(INVALID-ID-INFORMATION\) HDR=")

    def test_psk_crack_recovers_the_key_from_our_hash_r(self):
        """psk-crack recomputes our SHA-1 HASH_R from the AM2 ike-scan saved and finds the configured PSK in a
        dictionary, and only that word: our SKEYID and HASH_R are those of RFC 2409 section 5.4."""
        if PSK_CRACK is None:
            raise unittest.SkipTest("missing tool: psk-crack (apt-get install ike-scan)")
        params = "pskcrack.params"
        output, _ = self.probe("-A", "--id=init.am.test", "--idtype=2", "--dhgroup=14", AES256_SHA1_PSK_MODP2048,
                               f"--pskcrack={self.workdir / params}")
        self.assertHandshake(output, "Aggressive", "Enc=AES KeyLength=256 Hash=SHA1 Auth=PSK Group=14:modp2048")

        def crack(*words):
            dictionary = self.workdir / "dictionary"
            dictionary.write_text("".join(w + "\n" for w in words))
            proc = subprocess.run([PSK_CRACK, "-d", str(dictionary), str(self.workdir / params)],
                                  capture_output=True, text=True, timeout=30)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            return proc.stdout

        self.assertIn(f'key "{PSK}" matches SHA1 hash', crack("password", PSK, "letmein"))
        self.assertIn("no match found for SHA1 hash", crack("password", PSK + "x", "letmein"))
