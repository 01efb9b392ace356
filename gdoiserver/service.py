"""The key server as a Twisted service tree: one UDP listener per ``[[server.listen]]`` entry (and a NAT-T one per
address when an IKE engine serves them)."""

import os
import sys
from collections import Counter

from twisted.application.internet import UDPServer
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from gdoiserver import __version__
from gdoiserver.config import WEAK_GROUPS, Config, Listen
from gdoiserver.doi.dispatch import Phase2Dispatcher
from gdoiserver.doi.gdoi import GDOIPlugin
from gdoiserver.doi.ipsec.config import ipsec_config
from gdoiserver.doi.ipsec.plugin import IPsecDOI
from gdoiserver.doi.ipsec.plugin import from_config as ipsec_plugin
from gdoiserver.exchanges.effects import Count
from gdoiserver.group.policy import identity_text
from gdoiserver.keylog import KeyLog, KeyLogError
from gdoiserver.net.ike import IKEEngine, MachineFactory, Phase1Failed
from gdoiserver.net.protocol import Dispatcher, ISAKMPProtocol, format_address


class KeyServerDOI(GDOIPlugin):
    """The GDOI plugin as the key server runs it: it remembers who registered in which group (``registered``:
    group name -> member identity -> :class:`~gdoiserver.doi.gdoi.pull.MemberRegistered`) and tells
    ``on_registered`` and ``on_refused`` of each registration and refusal."""

    def __init__(self, key_server=None):
        super().__init__(key_server)
        self.registered: dict[str, dict] = {}
        self.on_registered: list = []
        self.on_refused: list = []
        #: ``hook(sa, result)``: the Phase 1 SA a registration came under, too.
        self.on_registered_under: list = []
        #: False while the key store loads: GROUPKEY-PULL requests are dropped (the dispatcher counts
        #: ``phase2_refused``; members retransmit), so that no registration hands out keys the store lacks.
        self.ready = True

    def responder(self, sa, first):
        if not self.ready:
            return None
        return super().responder(sa, first)

    def established(self, sa, machine, result, now: float, rng) -> list:
        # The latest registration of each member (by identity: a member that comes back from another address
        # replaces its entry, so the table does not grow with address changes).
        self.registered.setdefault(result.group, {})[result.member] = result
        for hook in self.on_registered:
            hook(result)
        for hook in self.on_registered_under:
            hook(sa, result)
        return [Count("gdoi_registered")]

    def failed(self, sa, machine, notify, reason: str, now: float, rng) -> list:
        for hook in self.on_refused:
            hook(sa, notify, reason)
        return [Count("gdoi_refused")]


def gdoi_plugin(config: Config, phase1_policy=None, rng=os.urandom) -> KeyServerDOI:
    """The key server's GDOI plugin for ``config.groups`` (their KEK signature keys are loaded with the config).
    The Phase 1 certificate and key, when there are some, also go into message 4 as CERT and POP_R, and the
    Phase 1 CAs check a member's CERT and POP_I in message 3 (RFC 6407 section 3.2)."""
    plugin = KeyServerDOI()
    plugin.configure(config.groups, rng, credentials=getattr(phase1_policy, "credentials", None),
                     trust=getattr(phase1_policy, "trust", None), exchange_timeout=config.ike.exchange_timeout)
    return plugin


class GDOIService(MultiService):
    """Binds every configured address (IPv4 or IPv6) and feeds what arrives to :class:`ISAKMPProtocol`.

    The reactor is given, not imported.  ``counters`` is shared by every listener.  With a ``factory`` (of Phase 1
    machines) the listeners feed an :class:`IKEEngine` (``self.engine``), which also gets a NAT-T listener on
    ``server.nat_t_port`` of each address when ``ike.nat_t`` is on, the keylog when ``keylog.path`` is set, and a
    Phase 2 dispatcher (``self.phase2``) serving the DOI ``plugins`` (default: the IPsec DOI from ``[ipsec]``, and
    GDOI for ``[[groups]]`` when there are some); without one, decoded messages go to ``dispatcher``.  ``role``
    names the process in the start-up line (the group member runs on this service too).
    """

    #: End the process on a port that cannot be bound (twistd); library users get the exception.
    exit_on_listen_error = False

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
        role: str = "key server",
    ):
        super().__init__()
        self.config = config
        self.role = role
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
                if config.groups:
                    plugins.append(gdoi_plugin(config, getattr(factory, "policy", None), rng))
            self.plugins = plugins
            self.phase2 = Phase2Dispatcher(plugins, linger=ike.exchange_timeout,
                                           max_exchanges=ipsec_config(config).max_exchanges_per_sa)
            self.phase2.attach(self.engine)
            for plugin in plugins:
                if isinstance(plugin, IPsecDOI):
                    plugin.hooks.append(self._log_ipsec_sa)
                if isinstance(plugin, KeyServerDOI):
                    plugin.on_registered.append(self._log_registration)
                    plugin.on_refused.append(self._log_refusal)
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
        groups = f", {len(config.groups)} groups" if self.role == "key server" else ""
        self.log.info(
            "gdoiserver {version} {role} starting: {count} listen addresses ({addresses}){groups}",
            version=__version__, role=self.role, count=len(config.server.listen),
            addresses=", ".join(format_address(x.address, x.port) for x in config.server.listen), groups=groups,
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

    def privilegedStartService(self):
        """Bind the listeners (twistd does this before it drops privileges).

        A port that cannot be bound is a deployment error, not a bug: with ``exit_on_listen_error`` (set for
        twistd by :mod:`gdoiserver.tap`) it ends the process with one line naming the address and the reason, and
        exit status EX_UNAVAILABLE (69), rather than a traceback.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            if not self.exit_on_listen_error:
                raise
            where = format_address(e.interface or "*", e.port)
            line = f"gdoi: cannot listen on {where}/udp (server.listen / server.nat_t_port): {e.socketError}"
            self.log.critical("{line}", line=line)
            print(line, file=sys.stderr)
            raise SystemExit(os.EX_UNAVAILABLE) from None

    def stopService(self):
        if self.engine is not None:
            self._forget_sas()
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

    def _forget_sas(self) -> None:
        """Drop every SA and exchange, which cancels their timers (a stopped service leaves no call pending)."""
        engine = self.engine
        for spi in list(engine.sas):
            engine.remove_sa(spi, "service stopping")
        for entry in {*engine.exchanges.values(), *engine.initiating.values(), *engine.first_messages.values()}:
            engine._close(entry, Phase1Failed(None, "service stopping"))

    def _log_registration(self, registered) -> None:
        sids = ", ".join(map(str, registered.sender_ids)) or "none"
        self.log.info(
            "GDOI: member {member} at {address} registered in group {group} ({group_id}): generation {generation},"
            " sender IDs {sids}, PFS {pfs}", member=registered.member, address=format_address(*registered.address),
            group=registered.group, group_id=str(registered.group_id), generation=registered.generation, sids=sids,
            pfs="yes" if registered.pfs else "no",
        )

    def _log_refusal(self, sa, notify, reason: str) -> None:
        self.log.info("GDOI: registration of {member} at {address} refused: {reason}", member=identity_text(sa.peer_id),
                      address=format_address(*sa.peer), reason=reason)

    def _write_keylog(self, sa) -> None:
        try:
            self.keylog.write_sa(sa)
        except KeyLogError as e:
            self.counters["keylog_error"] += 1
            self.log.error("{error}: the keys of an SA were not written", error=str(e))

    def addresses(self) -> list:
        """The bound addresses (IPv4Address/IPv6Address) of the running listeners, e.g. to learn port 0's pick."""
        return [p.transport.getHost() for p in self.protocols if p.transport is not None]
