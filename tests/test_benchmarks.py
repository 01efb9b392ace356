"""Smoke tests of the Phase 1 benchmarks (benchmarks/loadgen.py, benchmarks/phase1_vs_charon.py) with tiny loads.

They check that each command runs, that its JSON has the documented shape, and that the handshakes it counts are
real: the responder holds (or logged) the same number of SAs.  The figures themselves belong in
docs/performance.md, not in tests.
"""

import importlib.util
import json
import os
import sys
import tomllib
from pathlib import Path

from twisted.internet import defer, reactor, utils
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.service import GDOIService

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
PSK = "benchmark-smoke-psk"
#: The keys of loadgen.py's report, and of each side in phase1_vs_charon.py's.
LOADGEN_KEYS = {"benchmark", "parameters", "started", "established", "failures", "failure_reasons", "timeouts",
                "unfinished", "seconds", "handshakes_per_s", "latency_ms", "retransmits", "counts", "loadgen_cpu_s",
                "machine"}
SIDE_KEYS = {"handshakes_per_s", "rates", "p50_ms", "p99_ms", "responder_cpu_ms_per_handshake", "failures",
             "timeouts", "established"}


def _module(name: str):
    """A benchmark script imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


class _Silent(DatagramProtocol):
    def datagramReceived(self, datagram, addr):
        pass


class LoadgenTests(unittest.TestCase):
    """benchmarks/loadgen.py against our responder in this process, on 127.0.0.1 (no root, no NAT)."""

    def responder(self) -> tuple[GDOIService, int]:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        psk = self.dir / "psk"
        psk.write_text(PSK)
        psk.chmod(0o600)
        text = f"""[server]
listen = [ {{ address = "127.0.0.1", port = 0 }} ]
nat_t_port = 0
[ike]
proposals = [ {{ encryption = "aes128", hash = "sha256", group = 19, auth = "psk" }} ]
[[peers]]
address = "127.0.0.1"
psk_file = "{psk}"
"""
        config = parse_config(tomllib.loads(text))
        service = GDOIService(config, reactor, factory=Phase1Factory(policy_from_config(config)))
        service.startService()
        self.addCleanup(service.stopService)
        self.addCleanup(lambda: [service.engine.remove_sa(spi, "test over") for spi in list(service.engine.sas)])
        return service, next(p.local_address[1] for p in service.protocols if not p.is_nat_t)

    def loadgen(self, port: int, *args) -> defer.Deferred:
        argv = [str(BENCHMARKS / "loadgen.py"), "--target", "127.0.0.1", "--port", str(port), "--source",
                "127.0.0.1", "--psk", PSK, *args]
        return utils.getProcessOutputAndValue(sys.executable, argv, env=_env())

    @defer.inlineCallbacks
    def test_handshakes_against_our_responder(self):
        """20 handshakes from 2 workers all establish: the report has every documented key, a positive rate and
        ordered latencies, and our responder holds 20 SAs with 20 distinct initiator cookies."""
        service, port = self.responder()
        out, err, code = yield self.loadgen(port, "--count", "20", "--concurrency", "4", "--workers", "2",
                                            "--timeout", "10")
        self.assertEqual(code, 0, err)
        report = json.loads(out)
        self.assertEqual(set(report), LOADGEN_KEYS)
        self.assertEqual((report["started"], report["established"], report["failures"], report["timeouts"],
                          report["unfinished"]), (20, 20, 0, 0, 0))
        self.assertEqual(report["parameters"]["workers"], 2)
        self.assertGreater(report["handshakes_per_s"], 0)
        latency = report["latency_ms"]
        self.assertTrue(0 < latency["p50"] <= latency["p99"] <= latency["max"], latency)
        cookies = {entry.sa.initiator_cookie for entry in service.engine.sas.values()}
        self.assertEqual(len(cookies), 20)

    @defer.inlineCallbacks
    def test_silent_responder_times_out(self):
        """A responder that never answers: every handshake is a timeout after retransmissions, none established,
        exit status 1."""
        silent = reactor.listenUDP(0, _Silent(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        out, err, code = yield self.loadgen(silent.getHost().port, "--count", "3", "--workers", "1", "--timeout",
                                            "0.6", "--retransmit", "0.2")
        self.assertEqual(code, 1, err)
        report = json.loads(out)
        self.assertEqual((report["established"], report["timeouts"], report["failures"]), (0, 3, 0))
        self.assertGreaterEqual(report["retransmits"], 3)
        self.assertIsNone(report["latency_ms"]["p50"])


class PercentileTests(unittest.TestCase):
    def test_nearest_rank(self):
        """loadgen.percentile is the nearest-rank percentile: p50 of 1..10 is 5, p99 is 10, of one value that
        value, of none None."""
        percentile = _module("loadgen").percentile
        values = list(range(1, 11))
        self.assertEqual((percentile(values, 50), percentile(values, 99), percentile(values, 100)), (5, 10, 10))
        self.assertEqual(percentile([7.0], 99), 7.0)
        self.assertIsNone(percentile([], 50))


class ProfileSummaryTests(unittest.TestCase):
    def test_own_and_inclusive(self):
        """phase1_vs_charon.profile_summary reads py-spy's raw (folded) format: own time goes to the innermost
        frame, inclusive time once per stack to each function on it, line numbers merged, percent of samples."""
        run, f, g = "run (/x/site-packages/twisted/internet/base.py:10)", "f (/x/gdoiserver/net/ike.py:{})", \
            "g (/x/gdoiserver/net/ike.py:9)"
        raw = Path(self.mktemp())
        raw.write_text(f"{run};{f.format(5)};{g} 6\n{run};{f.format(7)} 3\n{run};{f.format(5)};{f.format(6)} 1\n")
        summary = _module("phase1_vs_charon").profile_summary(raw)
        self.assertEqual(summary["samples"], 10)
        self.assertEqual(summary["top_own"], [["g (gdoiserver/net/ike.py)", 60.0],
                                              ["f (gdoiserver/net/ike.py)", 40.0]])
        self.assertEqual(dict(summary["top_inclusive"]), {"run (twisted/internet/base.py)": 100.0,
                                                          "f (gdoiserver/net/ike.py)": 100.0,
                                                          "g (gdoiserver/net/ike.py)": 60.0})


class PhaseOneVersusCharonTests(unittest.TestCase):
    """benchmarks/phase1_vs_charon.py end to end with 20 handshakes a side (root, unshare and strongSwan)."""

    @defer.inlineCallbacks
    def test_one_round(self):
        """One round of 20 handshakes against each responder: both establish all 20 (charon after the NAT-T float
        its faked NAT-D forces, which the generator must follow), both responders count 20 SAs, and the report
        has both sides, the ratio and the parameters."""
        reason = _module("phase1_vs_charon").missing_tool()
        if reason:
            raise unittest.SkipTest(reason)
        argv = [str(BENCHMARKS / "phase1_vs_charon.py"), "--count", "20", "--rounds", "1", "--concurrency", "4",
                "--workers", "1", "--sources", "4", "--timeout", "5"]
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, argv, env=_env())
        self.assertEqual(code, 0, err.decode(errors="replace"))
        report = json.loads(out)
        self.assertEqual(report["parameters"]["count_per_round"], 20)
        self.assertEqual(report["machine"]["cores"], os.cpu_count())
        for side in ("ours", "charon"):
            self.assertEqual(set(report[side]), SIDE_KEYS)
            self.assertEqual((report[side]["established"], report[side]["failures"], report[side]["timeouts"]),
                             (20, 0, 0), report[side])
        self.assertEqual([(r["side"], r["established"], r["responder_established"]) for r in report["rounds"]],
                         [("ours", 20, 20), ("charon", 20, 20)])
        expected = round(report["ours"]["handshakes_per_s"] / report["charon"]["handshakes_per_s"], 3)
        self.assertEqual(report["ratio_ours_over_charon"], expected)
