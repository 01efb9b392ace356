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


class RegistrationTests(unittest.TestCase):
    """benchmarks/registration.py with a tiny load against a twistd key server on 127.0.0.1 (no namespace)."""

    @defer.inlineCallbacks
    def test_rounds_half_rate_and_scale(self):
        """One round of 20 registrations, half a second at half their rate, and a scale run to 30 members: every
        registration succeeds, the key server counts each member once, and the JSON has the medians, the goals
        and a rate at each scale point."""
        argv = [str(BENCHMARKS / "registration.py"), "--namespace", "no", "--count", "20", "--rounds", "1",
                "--concurrency", "4", "--workers", "2", "--sources", "3", "--half-seconds", "0.5", "--scale", "10,20",
                "--window", "10", "--timeout", "10"]
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, argv, env=_env())
        self.assertEqual(code, 0, err.decode(errors="replace"))
        report = json.loads(out)
        self.assertEqual(report["machine"]["cores"], os.cpu_count())
        full, half = report["full"], report["half"]
        self.assertEqual((full["registered"], full["failures"], full["timeouts"]), (20, 0, 0), full)
        self.assertGreater(full["registrations_per_s"], 0)
        self.assertTrue(0 < full["p50_ms"] <= full["p99_ms"], full)
        self.assertEqual((half["failures"], half["timeouts"]), (0, 0), half)
        self.assertLessEqual(abs(half["offered_rate_per_s"] - full["registrations_per_s"] / 2), 0.1, (full, half))
        [round_] = report["rounds"]
        self.assertEqual(round_["keyserver_members"], 20 + half["registered"])
        self.assertEqual(set(report["goals"]), {"rate_at_least_1000_per_s", "p99_under_100_ms_at_half_rate",
                                                "flat_within_20_percent"})
        scale = report["scale"]
        self.assertEqual((scale["registered"], scale["keyserver_members"]), (25, 25))
        self.assertEqual([p["members"] for p in scale["points"]], [10, 20])
        self.assertTrue(all(p["registrations_per_s"] > 0 for p in scale["points"]), scale["points"])


class RekeyFanoutTests(unittest.TestCase):
    """benchmarks/rekey_fanout.py with 30 members (no namespace: every member at 127.0.0.1)."""

    @defer.inlineCallbacks
    def test_unicast_fanout(self):
        """Two rekeys to 30 members: each sends 30 copies, the discard receiver gets all 30, the fan-out time and
        CPU time are positive, and multicast is reported as skipped outside a namespace."""
        argv = [str(BENCHMARKS / "rekey_fanout.py"), "--namespace", "no", "--members", "30", "--rekeys", "2"]
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, argv, env=_env())
        self.assertEqual(code, 0, err.decode(errors="replace"))
        report = json.loads(out)
        [unicast] = report["unicast"]
        self.assertEqual(unicast["members"], 30)
        self.assertEqual([(r["sent"], r["received"], r["send_errors"]) for r in unicast["rekeys"]],
                         [(30, 30, 0), (30, 30, 0)])
        self.assertEqual([r["seq"] for r in unicast["rekeys"]], [1, 2])
        self.assertTrue(unicast["fanout_s"] > 0 and unicast["cpu_s_per_rekey"] > 0, unicast)
        self.assertEqual(report["fanout_s_by_members"], {"30": unicast["fanout_s"]})
        self.assertIn("skipped", report["multicast"])


class MemoryTests(unittest.TestCase):
    """benchmarks/memory.py with 20 members (no namespace, no settling)."""

    @defer.inlineCallbacks
    def test_rss_and_attribution(self):
        """RSS at 10 and 20 members of the twistd key server, and a tracemalloc attribution of 10 members with
        the in-process one: the key server holds exactly those members, and the attribution names source lines
        with a positive size per member."""
        argv = [str(BENCHMARKS / "memory.py"), "--namespace", "no", "--members", "10,20", "--settle", "0",
                "--attribute", "10", "--concurrency", "4", "--sources", "2"]
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, argv, env=_env())
        self.assertEqual(code, 0, err.decode(errors="replace"))
        report = json.loads(out)
        points = report["rss"]["points"]
        self.assertEqual([(p["members"], p["registered"], p["failures"]) for p in points], [(10, 10, 0), (20, 20, 0)])
        self.assertTrue(all(p["rss_mib_settled"] >= report["rss"]["rss_mib_before"] for p in points), points)
        attribution = report["attribution"]
        self.assertEqual((attribution["members"], attribution["failures"]), (10, 0))
        self.assertGreater(attribution["traced_octets_per_member"], 0)
        self.assertTrue(attribution["top_lines"] and attribution["top_lines"][0]["octets_per_member"] > 0)
        self.assertIn("at_most_4_KiB_per_member", report["goals"])
