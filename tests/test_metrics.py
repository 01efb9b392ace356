"""gdoiserver.metrics: the Prometheus endpoint scraped over loopback TCP and read with prometheus_client's parser."""

import io
import socket
import sys
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from gdoiserver.metrics import GDOICollector, MetricsServer, registry

STATUS = {
    "version": "1.2.3", "uptime": 125.5, "role": "key server",
    "groups": [
        {"name": "video", "ids": ["1234"], "members": 3, "stale": 1, "evicted": ["gm9.example.org"], "generation": 4,
         "seq": 17, "kek_spi": "0a1b2c3d", "last_rekey": 1795400000.0, "next_rekey": None,
         "rekey_transport": "multicast 239.192.0.1:848"},
        {"name": "wan", "ids": ["2001"], "members": 0, "stale": 0, "evicted": 0, "generation": None, "seq": 0,
         "kek_spi": None, "last_rekey": None, "next_rekey": None, "rekey_transport": "unicast"},
    ],
    "sas": {"phase1": 5, "phase2": 2, "half_open": 7},
    "counters": {},
}


def samples(text: str) -> dict:
    """(sample name, frozenset of labels) -> value, from the text format."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def one(values: dict, name: str, **labels) -> float:
    return values[(name, frozenset(labels.items()))]


class MetricsEndpointTests(unittest.TestCase):
    def setUp(self):
        self.counters = Counter({
            "received": 40, "sent": 38, "gdoi_registered": 12, "pull_registered": 12, "pull_request": 13,
            "pull_unauthorized": 2, "pull_bad_ke": 1, "pull_timeout": 3, "rekey_sent": 5, "rekey_acked": 14,
            "rekey_retransmitted": 10, "eviction": 1, "halfopen_cap_total": 4, "malformed.PAYLOAD_MALFORMED": 6,
            "malformed.INVALID_PAYLOAD_TYPE": 2,
        })
        self.status = dict(STATUS)

    def start(self, listen: str = "127.0.0.1:0", status=True) -> MetricsServer:
        server = MetricsServer(listen, self.counters, (lambda: self.status) if status else None, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server

    @defer.inlineCallbacks
    def get(self, server: MetricsServer, path: str = "/metrics", accept: bytes | None = None):
        host = server.port.getHost()
        where = f"[{host.host}]" if ":" in host.host else host.host
        headers = Headers({b"Accept": [accept]}) if accept else None
        response = yield Agent(reactor).request(b"GET", f"http://{where}:{host.port}{path}".encode(), headers)
        body = yield readBody(response)
        return response, body.decode("utf-8")

    @defer.inlineCallbacks
    def scrape(self, server: MetricsServer) -> dict:
        response, body = yield self.get(server)
        self.assertEqual(response.code, 200)
        return samples(body)

    @defer.inlineCallbacks
    def test_counters(self):
        """Registrations, failures by reason, rekeys sent/acknowledged/retransmitted, half-open refusals and
        malformed packets by Notify type come from the shared counters."""
        values = yield self.scrape(self.start())
        self.assertEqual(one(values, "gdoi_registrations_total"), 12)
        self.assertEqual(one(values, "gdoi_registration_failures_total", reason="unauthorized"), 2)
        self.assertEqual(one(values, "gdoi_registration_failures_total", reason="bad_ke"), 1)
        self.assertEqual(one(values, "gdoi_registration_failures_total", reason="timeout"), 3)
        reasons = {dict(labels)["reason"] for name, labels in values if name == "gdoi_registration_failures_total"}
        self.assertEqual(reasons, {"unauthorized", "bad_ke", "timeout"})  # not registered, request, started
        self.assertEqual(one(values, "gdoi_rekeys_sent_total"), 5)
        self.assertEqual(one(values, "gdoi_rekeys_acknowledged_total"), 14)
        self.assertEqual(one(values, "gdoi_rekeys_retransmitted_total"), 10)
        self.assertEqual(one(values, "gdoi_evictions_total"), 1)
        self.assertEqual(one(values, "isakmp_half_open_refused_total", cap="total"), 4)
        self.assertEqual(one(values, "isakmp_half_open_refused_total", cap="per_peer"), 0)
        self.assertEqual(one(values, "isakmp_malformed_packets_total", notify="PAYLOAD_MALFORMED"), 6)
        self.assertEqual(one(values, "isakmp_malformed_packets_total", notify="INVALID_PAYLOAD_TYPE"), 2)
        self.assertEqual(one(values, "isakmp_received_total"), 40)
        self.assertEqual(one(values, "gdoiserver_events_total", event="pull_request"), 13)

    @defer.inlineCallbacks
    def test_status_gauges(self):
        """Members, stale and evicted members, SEQ and generation per group, SAs and half-open SAs come from the
        status; a group without a generation has no generation sample."""
        values = yield self.scrape(self.start())
        self.assertEqual(one(values, "gdoi_group_members", group="video"), 3)
        self.assertEqual(one(values, "gdoi_group_members", group="wan"), 0)
        self.assertEqual(one(values, "gdoi_group_stale_members", group="video"), 1)
        self.assertEqual(one(values, "gdoi_group_evicted_members", group="video"), 1)
        self.assertEqual(one(values, "gdoi_group_seq", group="video"), 17)
        self.assertEqual(one(values, "gdoi_group_generation", group="video"), 4)
        self.assertNotIn(("gdoi_group_generation", frozenset({("group", "wan")})), values)
        self.assertEqual(one(values, "gdoi_group_last_rekey_timestamp_seconds", group="video"), 1795400000.0)
        self.assertEqual(one(values, "isakmp_half_open_sas"), 7)
        self.assertEqual(one(values, "isakmp_sas", phase="1"), 5)
        self.assertEqual(one(values, "isakmp_sas", phase="2"), 2)
        self.assertEqual(one(values, "gdoiserver_uptime_seconds"), 125.5)
        self.assertEqual(one(values, "gdoiserver_info", version="1.2.3", role="key server"), 1)

    @defer.inlineCallbacks
    def test_live(self):
        """Each scrape reads the live objects: a counter or the status changed in between shows at once."""
        server = self.start()
        yield self.scrape(server)
        self.counters["gdoi_registered"] += 1
        self.counters["malformed.UNEQUAL_PAYLOAD_LENGTHS"] += 1
        self.status = {**STATUS, "sas": {"phase1": 5, "phase2": 2, "half_open": 0}}
        values = yield self.scrape(server)
        self.assertEqual(one(values, "gdoi_registrations_total"), 13)
        self.assertEqual(one(values, "isakmp_malformed_packets_total", notify="UNEQUAL_PAYLOAD_LENGTHS"), 1)
        self.assertEqual(one(values, "isakmp_half_open_sas"), 0)

    @defer.inlineCallbacks
    def test_without_status(self):
        """Without a status callable (the group member) the counter metrics are served alone."""
        values = yield self.scrape(self.start(status=False))
        self.assertEqual(one(values, "gdoi_registrations_total"), 12)
        self.assertFalse(any(name.startswith("gdoi_group_") for name, _ in values))

    @defer.inlineCallbacks
    def test_status_failure(self):
        """A status that raises costs the status metrics of that scrape, not the scrape; the error is logged."""
        def broken():
            raise RuntimeError("status broke")

        server = MetricsServer("127.0.0.1:0", self.counters, broken, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        values = yield self.scrape(server)
        self.assertEqual(one(values, "gdoi_rekeys_sent_total"), 5)
        self.assertNotIn(("isakmp_half_open_sas", frozenset()), values)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_content_types(self):
        """The text format by default; OpenMetrics when the scraper asks for it."""
        server = self.start()
        response, body = yield self.get(server)
        self.assertTrue(response.headers.getRawHeaders(b"Content-Type")[0].startswith(b"text/plain; version=0.0.4"))
        response, body = yield self.get(server, accept=b"application/openmetrics-text; version=1.0.0")
        self.assertTrue(response.headers.getRawHeaders(b"Content-Type")[0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.rstrip().endswith("# EOF"))

    @defer.inlineCallbacks
    def test_other_paths(self):
        """Only /metrics is served; another path is a 404 saying where the metrics are."""
        response, body = yield self.get(self.start(), "/")
        self.assertEqual(response.code, 404)
        self.assertIn("/metrics", body)

    @defer.inlineCallbacks
    def test_ipv6_loopback(self):
        """An IPv6 loopback endpoint ("[::1]:0") is served too."""
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise unittest.SkipTest("this host has no IPv6 loopback address")
        server = self.start("[::1]:0")
        self.assertEqual(server.port.getHost().host, "::1")
        values = yield self.scrape(server)
        self.assertEqual(one(values, "gdoi_registrations_total"), 12)

    def test_port_in_use(self):
        """A port that cannot be bound raises CannotListenError; for twistd (exit_on_error) it is one line on
        stderr naming the address and metrics.listen, and exit status 69."""
        from twisted.internet.error import CannotListenError

        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        listen = f"127.0.0.1:{taken.getHost().port}"
        self.assertRaises(CannotListenError, MetricsServer(listen, self.counters, None, reactor).startService)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, MetricsServer(listen, self.counters, None, reactor,
                                                         exit_on_error=True).startService)
        self.assertEqual(e.code, 69)
        self.assertIn(f"cannot listen on {listen}/tcp (metrics.listen)", stderr.getvalue())
        self.flushLoggedErrors()


class CollectorTests(unittest.TestCase):
    def test_registry_is_private(self):
        """Each registry holds only its own collector (not prometheus_client's global default registry)."""
        a, b = registry(Counter(received=1)), registry(Counter(received=2))
        self.assertEqual((a.get_sample_value("isakmp_received_total"), b.get_sample_value("isakmp_received_total")),
                         (1, 2))
        self.assertIsNone(a.get_sample_value("process_cpu_seconds_total"))

    def test_counters_copied_once(self):
        """A scrape reads the counters once: a counter that changes while the families are made does not make
        two samples of one scrape disagree."""
        counters = Counter(received=3)
        families = GDOICollector(counters).collect()
        next(families)
        counters["received"] += 1
        received = [s.value for f in families for s in f.samples
                    if s.name == "isakmp_received_total" or s.labels.get("event") == "received"]
        self.assertEqual(received, [3, 3])
