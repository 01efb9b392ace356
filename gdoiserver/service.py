"""The key server as a Twisted service tree: one UDP listener per ``[[server.listen]]`` entry (and a NAT-T one per
address when an IKE engine serves them)."""

import os
from collections import Counter

from twisted.application.internet import UDPServer
from twisted.application.service import MultiService
from twisted.logger import Logger

from gdoiserver import __version__
from gdoiserver.config import WEAK_GROUPS, Config, Listen
from gdoiserver.doi.dispatch import Phase2Dispatcher
from gdoiserver.doi.ipsec.config import ipsec_config
from gdoiserver.doi.ipsec.plugin import IPsecDOI
from gdoiserver.doi.ipsec.plugin import from_config as ipsec_plugin
from gdoiserver.keylog import KeyLog, KeyLogError
from gdoiserver.net.ike import IKEEngine, MachineFactory
from gdoiserver.net.protocol import Dispatcher, ISAKMPProtocol, format_address


class GDOIService(MultiService):
    """Binds every configured address (IPv4 or IPv6) and feeds what arrives to :class:`ISAKMPProtocol`.

    The reactor is given, not imported.  ``counters`` is shared by every listener.  With a ``factory`` (of Phase 1
    machines) the listeners feed an :class:`IKEEngine` (``self.engine``), which also gets a NAT-T listener on
    ``server.nat_t_port`` of each address when ``ike.nat_t`` is on, the keylog when ``keylog.path`` is set, and a
    Phase 2 dispatcher (``self.phase2``) serving the DOI ``plugins`` (default: the IPsec DOI from ``[ipsec]``);
    without one, decoded messages go to ``dispatcher``.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor,
        dispatcher: Dispatcher | None = None,
        counters: Counter | None = None,
        factory: MachineFactory | None = None,
        rng=os.urandom,
        plugins: list | None = None,
    ):
        super().__init__()
        self.config = config
        self.counters = Counter() if counters is None else counters
        self.protocols = []
        self.dispatcher = dispatcher
        self.engine = None
        self.keylog = None
        self.plugins = []
        self.phase2 = None
        if factory is not None:
            if dispatcher is not None:
                raise ValueError("give a dispatcher or a factory, not both")
            ike = config.ike
            self.engine = IKEEngine(
                factory, reactor, rng, self.counters, halfopen_per_peer=ike.halfopen_per_peer,
                halfopen_total=ike.halfopen_total, exchange_timeout=ike.exchange_timeout, dpd_delay=ike.dpd_delay,
            )
            if config.keylog.path is not None:
                self.keylog = KeyLog(config.keylog.path)
                self.engine.on_established(self._write_keylog)
            if plugins is None:
                plugins = [ipsec_plugin(config)]
            self.plugins = plugins
            self.phase2 = Phase2Dispatcher(plugins, linger=ike.exchange_timeout,
                                           max_exchanges=ipsec_config(config).max_exchanges_per_sa)
            self.phase2.attach(self.engine)
            for plugin in plugins:
                if isinstance(plugin, IPsecDOI):
                    plugin.hooks.append(self._log_ipsec_sa)
        for listen, nat_t in self._listeners():
            self._listen(reactor, listen, nat_t)

    def _listeners(self) -> list:
        """(Listen, nat_t) pairs: the configured ones, plus the NAT-T port of each address when an engine runs."""
        listens = self.config.server.listen
        if self.engine is None or not self.config.ike.nat_t:
            return [(listen, None) for listen in listens]
        port = self.config.server.nat_t_port
        pairs = [(listen, listen.port == port and port != 0) for listen in listens]
        for host in dict.fromkeys(listen.address for listen in listens):
            if Listen(host, port) not in listens or port == 0:
                pairs.append((Listen(host, port), True))
        return pairs

    def _listen(self, reactor, listen: Listen, nat_t: bool | None) -> None:
        size = self.config.limits.max_datagram_size
        protocol = ISAKMPProtocol(self.counters, self.dispatcher, size, engine=self.engine,
                                  nat_t=nat_t)
        self.protocols.append(protocol)
        # One octet more than the limit, so that a longer datagram is seen whole enough to be counted as oversize
        # rather than arriving truncated.
        server = UDPServer(listen.port, protocol, interface=listen.address, maxPacketSize=size + 1, reactor=reactor)
        server.setServiceParent(self)

    def startService(self):
        config = self.config
        self.log.info(
            "gdoiserver {version} starting: {count} listen addresses ({addresses}), 0 groups (group policy is not"
            " configurable yet)",
            version=__version__, count=len(config.server.listen),
            addresses=", ".join(format_address(x.address, x.port) for x in config.server.listen),
        )
        if config.security.allow_weak_dh_groups:
            self.log.warn("security.allow_weak_dh_groups is on: proposals may use MODP groups 2 and 5 (under 2048"
                          " bits)")
        for i, proposal in enumerate(config.ike.proposals):
            if proposal.group in WEAK_GROUPS:
                self.log.warn("ike.proposals[{index}] uses MODP group {group}, which precomputation breaks (Logjam)",
                              index=i, group=proposal.group)
        if config.security.allow_legacy_3des:
            self.log.warn("security.allow_legacy_3des is on: peers may use 3DES (64-bit blocks)")
        if config.keylog.path is not None:
            self.log.warn("keylog.path is set: secret keys will be written to {path}", path=config.keylog.path)
            if self.keylog is not None:
                try:
                    self.keylog.check()
                except KeyLogError as e:
                    self.log.error("{error}: no keys will be written", error=str(e))
        super().startService()

    def stopService(self):
        for plugin in self.plugins:
            sink = getattr(plugin, "sink", None)
            if sink is not None:
                sink.close()
        return super().stopService()

    def _log_ipsec_sa(self, sa) -> None:
        self.log.info(
            "IPsec SA established: {protocol} {proposal} {mode}, SPIs in {spi_in} out {spi_out}, {local_ts} === "
            "{remote_ts} with {peer}", protocol=sa.suite.protocol_name, proposal=sa.suite.name(), mode=sa.mode,
            spi_in=sa.spi_in.hex(), spi_out=sa.spi_out.hex(), local_ts=str(sa.local_selector),
            remote_ts=str(sa.remote_selector), peer=format_address(*sa.peer),
        )

    def _write_keylog(self, sa) -> None:
        try:
            self.keylog.write_sa(sa)
        except KeyLogError as e:
            self.counters["keylog_error"] += 1
            self.log.error("{error}: the keys of an SA were not written", error=str(e))

    def addresses(self) -> list:
        """The bound addresses (IPv4Address/IPv6Address) of the running listeners, e.g. to learn port 0's pick."""
        return [p.transport.getHost() for p in self.protocols if p.transport is not None]
