"""The Prometheus text endpoint (prometheus-client, served by twisted.web on ``metrics.listen``, loopback only).

:class:`GDOICollector` reads the live objects at each scrape: the daemon's shared ``collections.Counter`` and, when
given, the key server's ``status()`` (:class:`~gdoiserver.control.api.KeyServerControl`).  Nothing is counted twice:
the counters stay where the daemon keeps them.

    gdoi_registrations_total                         GROUPKEY-PULL registrations served (counter gdoi_registered)
    gdoi_registration_failures_total{reason}         refusals and failures by reason (counters pull_<reason>)
    gdoi_rekeys_sent_total, _acknowledged_total, _retransmitted_total   GROUPKEY-PUSH (rekey_sent, rekey_acked,
                                                     rekey_retransmitted)
    gdoi_evictions_total                             (eviction)
    gdoi_group_members{group}, gdoi_group_stale_members{group}, gdoi_group_evicted_members{group},
    gdoi_group_seq{group}, gdoi_group_generation{group}, gdoi_group_last_rekey_timestamp_seconds{group}
    isakmp_sas{phase}, isakmp_half_open_sas          from the status
    isakmp_half_open_refused_total{cap}              first messages over a half-open cap (halfopen_cap_*)
    isakmp_malformed_packets_total{notify}           undecodable datagrams by the Notify type they earn (malformed.*)
    isakmp_received_total, isakmp_sent_total         datagrams (received, sent)
    gdoiserver_events_total{event}                   every counter, by its name
    gdoiserver_uptime_seconds, gdoiserver_info{version, role}
"""

import sys
from collections import Counter
from typing import Callable

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import resource, server

from gdoiserver.config import split_endpoint

#: Counters named pull_* that are not failures.
_PULL_NOT_FAILURES = frozenset({"pull_registered", "pull_request", "pull_started"})
_SIMPLE_COUNTERS = [
    ("gdoi_registrations", "GROUPKEY-PULL registrations completed", "gdoi_registered"),
    ("gdoi_rekeys_sent", "GROUPKEY-PUSH rekeys sent (each rekey once, not each copy)", "rekey_sent"),
    ("gdoi_rekeys_acknowledged", "GROUPKEY-PUSH acknowledgements accepted (RFC 8263)", "rekey_acked"),
    ("gdoi_rekeys_retransmitted", "GROUPKEY-PUSH copies sent again", "rekey_retransmitted"),
    ("gdoi_evictions", "members evicted", "eviction"),
    ("isakmp_received", "ISAKMP datagrams received", "received"),
    ("isakmp_sent", "ISAKMP datagrams sent", "sent"),
]
_GROUP_GAUGES = [
    ("gdoi_group_members", "registered members", "members"),
    ("gdoi_group_stale_members", "members that acknowledged none of the last rekeys", "stale"),
    ("gdoi_group_evicted_members", "evicted members (refused until readmitted)", "evicted"),
    ("gdoi_group_seq", "the last GROUPKEY-PUSH SEQ used", "seq"),
    ("gdoi_group_generation", "the newest TEK generation", "generation"),
    ("gdoi_group_last_rekey_timestamp_seconds", "UNIX time of the last rekey", "last_rekey"),
]


class GDOICollector:
    """A prometheus-client collector over ``counters`` (a Counter) and ``status`` (a callable returning the key
    server's status dict, or None)."""

    log = Logger()

    def __init__(self, counters: Counter, status: Callable[[], dict] | None = None):
        self.counters = counters
        self.status = status

    def describe(self):
        return []  # the families depend on live data: nothing to announce ahead

    def collect(self):
        counters = dict(self.counters)  # one consistent copy per scrape
        for name, documentation, counter in _SIMPLE_COUNTERS:
            yield _counter(name, documentation, [([], counters.get(counter, 0))])
        yield _counter("gdoi_registration_failures", "GROUPKEY-PULL registrations refused or failed, by reason",
                       [([name[len("pull_"):]], value) for name, value in sorted(counters.items())
                        if name.startswith("pull_") and name not in _PULL_NOT_FAILURES], ["reason"])
        yield _counter("isakmp_half_open_refused", "first messages dropped over a half-open SA cap",
                       [([cap], counters.get(f"halfopen_cap_{cap}", 0)) for cap in ("per_peer", "total")], ["cap"])
        yield _counter("isakmp_malformed_packets", "datagrams that did not decode, by the Notify type they earn",
                       [([name[len("malformed."):]], value) for name, value in sorted(counters.items())
                        if name.startswith("malformed.")], ["notify"])
        yield _counter("gdoiserver_events", "every counter of the daemon, by name",
                       [([name], value) for name, value in sorted(counters.items())], ["event"])
        status = self._status()
        if status is not None:
            yield from self._from_status(status)

    def _status(self) -> dict | None:
        if self.status is None:
            return None
        try:
            return self.status()
        except Exception:
            self.log.failure("metrics: the status could not be read")
            return None

    def _from_status(self, status: dict):
        info = GaugeMetricFamily("gdoiserver_info", "the daemon's version and role", labels=["version", "role"])
        info.add_metric([str(status.get("version", "")), str(status.get("role", ""))], 1)
        yield info
        if status.get("uptime") is not None:
            yield GaugeMetricFamily("gdoiserver_uptime_seconds", "seconds since the daemon started",
                                    value=float(status["uptime"]))
        sas = status.get("sas") or {}
        phases = GaugeMetricFamily("isakmp_sas", "established SAs by phase", labels=["phase"])
        for phase in ("1", "2"):
            phases.add_metric([phase], float(sas.get(f"phase{phase}", 0) or 0))
        yield phases
        yield GaugeMetricFamily("isakmp_half_open_sas", "responder exchanges begun and not yet established",
                                value=float(sas.get("half_open", 0) or 0))
        groups = status.get("groups") or []
        for name, documentation, field in _GROUP_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["group"])
            for group in groups:
                value = group.get(field)
                if isinstance(value, (list, tuple)):
                    value = len(value)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family.add_metric([str(group.get("name"))], float(value))
            yield family


def _counter(name: str, documentation: str, samples, labels=None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in samples:
        family.add_metric(label_values, float(value))
    return family


def registry(counters: Counter, status: Callable[[], dict] | None = None) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding only :class:`GDOICollector`."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GDOICollector(counters, status))
    return reg


class MetricsResource(resource.Resource):
    """GET /metrics: the registry in the text format (or OpenMetrics when the scraper asks for it)."""

    isLeaf = True

    def __init__(self, reg: CollectorRegistry):
        super().__init__()
        self.registry = reg

    def render_GET(self, request):
        if request.postpath not in ([b"metrics"], [b"metrics", b""]):
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"not found: the metrics are at /metrics\n"
        accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return encoder(self.registry)


class MetricsServer(Service):
    """Serves :class:`MetricsResource` over ``counters`` and ``status`` on ``listen`` ("127.0.0.1:9848",
    "[::1]:9848": a checked ``metrics.listen``).  Bound in ``privilegedStartService``; ``port`` is the listening
    port (``port.getHost().port`` tells port 0's pick).  A port that cannot be bound raises CannotListenError, or
    with ``exit_on_error`` (for twistd) ends the process with one line and status EX_UNAVAILABLE (69)."""

    log = Logger()
    name = "metrics"

    def __init__(self, listen: str, counters: Counter, status: Callable[[], dict] | None = None, reactor=None, *,
                 exit_on_error: bool = False):
        self.host, self.port_number = split_endpoint(listen)
        self.counters = counters
        self.exit_on_error = exit_on_error
        self.port = None
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.site = server.Site(MetricsResource(registry(counters, status)))
        self.site.noisy = False
        self.site.displayTracebacks = False
        self.site.log = lambda request: None

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.port is None:
            self.listen()

    def startService(self):
        super().startService()
        if self.port is None:
            self.listen()

    def listen(self) -> None:
        try:
            self.port = self.reactor.listenTCP(self.port_number, self.site, interface=self.host)
        except CannotListenError as e:
            if not self.exit_on_error:
                raise
            where = f"[{self.host}]:{self.port_number}" if ":" in self.host else f"{self.host}:{self.port_number}"
            line = f"gdoi: cannot listen on {where}/tcp (metrics.listen): {e.socketError}"
            self.log.critical("{line}", line=line)
            print(line, file=sys.stderr)
            raise SystemExit(69) from None
        host = self.port.getHost()
        self.log.info("metrics at http://{where}/metrics", where=f"[{host.host}]:{host.port}" if ":" in host.host
                      else f"{host.host}:{host.port}")

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()
