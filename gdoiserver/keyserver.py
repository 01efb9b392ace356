"""The key server daemon as one service tree: the ISAKMP listeners and engine (:class:`GDOIService`), the key store,
the rekey service, the control socket and the metrics endpoint; and the operator's view of all of it
(:class:`~gdoiserver.control.api.KeyServerControl`: status, members, rekey, evict, SAs, reload).

Start-up order: the listeners bind (twistd binds them before it drops privileges), then the store is loaded and the
rekey service restores each group's keys, SEQ and members; until that is done GROUPKEY-PULL requests are dropped
(counted ``pull_not_ready``; members retransmit), so no registration hands out keys the store does not hold.
"""

import ipaddress
import os
import socket
from collections import Counter

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from gdoiserver import __version__
from gdoiserver.codec.constants import ExchangeType
from gdoiserver.config import ConfigError, load_config, policy_from_config
from gdoiserver.doi.ipsec.plugin import from_config as ipsec_plugin
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.group.policy import identity_text
from gdoiserver.net.protocol import format_address
from gdoiserver.rekey.delivery import MulticastSender, outgoing_interface
from gdoiserver.rekey.service import RekeyError, RekeyService
from gdoiserver.service import GDOIService, KeyServerDOI, gdoi_plugin


class KeyServer(MultiService):
    """Everything ``twistd gdoi`` runs (see the module notes).

    ``reactor`` binds sockets; ``clock`` (default: the reactor) drives every timer.  ``store`` defaults to the
    SQLite store at ``store.path`` (made only when a group has a KEK, since only rekeyed groups have state worth
    keeping).  ``config_path`` is what ``reload`` reads again.
    """

    log = Logger()

    def __init__(self, config, reactor, policy=None, *, config_path: str | None = None, rng=os.urandom, store=None,
                 clock=None, control: bool = True, metrics: bool = True, exit_on_error: bool = False):
        super().__init__()
        self.config = config
        self.config_path = config_path
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.rng = rng
        self.counters: Counter = Counter()
        self.started_at: float | None = None
        policy = policy if policy is not None else policy_from_config(config, config_path or "<config>")
        self.ipsec = ipsec_plugin(config, config_path or "<config>")
        self.gdoi: KeyServerDOI | None = gdoi_plugin(config, policy, rng) if config.groups else None
        plugins = [self.ipsec] + ([self.gdoi] if self.gdoi is not None else [])
        self.transport = GDOIService(config, _Clocked(reactor, self.clock), factory=Phase1Factory(policy), rng=rng,
                                     counters=self.counters, plugins=plugins)
        self.transport.exit_on_listen_error = exit_on_error
        self.transport.setServiceParent(self)
        self.store = None
        self.rekeying: RekeyService | None = None
        self._releases: dict = {}  # Phase 1 SA (cookies) -> the IDelayedCall that deletes it
        if self.gdoi is not None:
            self.gdoi.ready = False
            if store is None and any(g.kek is not None for g in config.groups):
                from gdoiserver.store.sqlite import SQLiteStore

                store = SQLiteStore(config.store.path, reactor)
            if store is None:
                from gdoiserver.store.base import MemoryStore

                store = MemoryStore()
            self.store = store
            self.rekeying = RekeyService(self.gdoi.key_server.groups, store, self.clock, rng, self._send_unicast,
                                      self.counters, keylog=self.transport.keylog,
                                      seq_block=config.store.seq_block, multicast=self._multicast_sender)
            self.gdoi.key_server = attrs.evolve(self.gdoi.key_server, leaf_for=self.rekeying.leaf_for,
                                                is_evicted=self.rekeying.is_evicted)
            self.gdoi.on_registered.append(self.rekeying.member_registered)
            self.gdoi.on_registered_under.append(self._release_later)
            self.engine.register_exchange(ExchangeType.GROUPKEY_PUSH_ACK, self.rekeying.ack_received)
        if control and config.control.socket:
            from gdoiserver.control.server import ControlServer

            ControlServer(config.control.socket, self, reactor, exit_on_error=exit_on_error).setServiceParent(self)
        if metrics and config.metrics.listen:
            from gdoiserver.metrics import MetricsServer

            MetricsServer(config.metrics.listen, self.counters, self.status, reactor,
                          exit_on_error=exit_on_error).setServiceParent(self)

    @property
    def engine(self):
        return self.transport.engine

    # --- life cycle -------------------------------------------------------------------------------------------------

    def startService(self):
        self.started_at = self.clock.seconds()
        super().startService()
        if self.rekeying is None:
            return
        self.ready = self.rekeying.start()
        self.ready.addCallbacks(self._ready, self._not_ready)

    def _ready(self, _):
        self.gdoi.ready = True
        self.log.info("key store {store} loaded: {groups} groups ready to register members and rekey",
                      store=getattr(self.store, "location", "in memory"), groups=len(self.rekeying.runs))

    def _not_ready(self, failure):
        self.counters["store_error"] += 1
        self.log.failure("the key store could not be loaded: no group is served", failure)
        return None

    @defer.inlineCallbacks
    def stopService(self):
        for call in self._releases.values():
            if call.active():
                call.cancel()
        self._releases.clear()
        if self.rekeying is not None:
            self.rekeying.stop()
            yield self.rekeying.idle()
        yield defer.maybeDeferred(super().stopService)
        store, self.store = self.store, None
        if store is not None:
            yield store.close()

    def _release_later(self, sa, result) -> None:
        """``ike.registration_sa_linger`` seconds after the last registration under ``sa``, delete it: the
        member's rekeys and acknowledgements need no Phase 1 SA, and each one kept costs memory and DPD traffic."""
        linger = self.config.ike.registration_sa_linger
        if not linger:
            return
        spi = sa.initiator_cookie + sa.responder_cookie
        call = self._releases.pop(spi, None)
        if call is not None and call.active():
            call.cancel()
        self._releases[spi] = self.clock.callLater(linger, self._release, spi)

    def _release(self, spi: bytes) -> None:
        self._releases.pop(spi, None)
        if self.engine.delete_sa(spi, "the member registered: rekeys need no Phase 1 SA"):
            self.counters["phase1_released"] += 1

    def _send_unicast(self, datagram: bytes, peer) -> None:
        """A unicast PUSH leaves by the GDOI listener of the peer's address family (port 848 if we have it)."""
        family_v6 = ":" in peer[0]
        best = None
        for protocol in self.transport.protocols:
            local = protocol.local_address
            if protocol.transport is None or protocol.is_nat_t or (":" in local[0]) != family_v6:
                continue
            if best is None or local[1] == 848:
                best = protocol
        if best is None:
            self.counters["rekey_no_listener"] += 1
            return
        best.send(datagram, peer)

    def _multicast_sender(self, rekey):
        """Multicast rekeys leave from the listener bound to the SAK's SRC (``rekey.source``:``source_port``, 848
        by default) when there is one, so that members see them come from the port they acknowledge to; else from a
        socket of their own."""
        for protocol in self.transport.protocols:
            if protocol.is_nat_t:
                continue
            host, port = protocol.local_address
            if port == rekey.source_port and _same_address(host, rekey.source):
                return ListenerMulticast(protocol, rekey)
        return MulticastSender(rekey.multicast_address, rekey.multicast_port, rekey.ttl, rekey.interface,
                               rekey.source)

    # --- KeyServerControl -------------------------------------------------------------------------------------------

    def status(self) -> dict:
        groups = []
        rekey_status = self.rekeying.status() if self.rekeying is not None else {}
        for group in (self.gdoi.key_server.groups.groups if self.gdoi is not None else ()):
            policy = group.policy
            s = rekey_status.get(policy.name, {})
            groups.append({
                "name": policy.name, "ids": [str(i) for i in policy.ids], "members": s.get("members", 0),
                "stale": s.get("stale", 0), "evicted": len(s.get("evicted", ())), "generation": s.get("generation"),
                "seq": s.get("seq"), "kek_spi": (s.get("kek_spi") or "")[:8] or None,
                "last_rekey": s.get("last_rekey_at"), "next_rekey": s.get("next_wake"),
                "rekey_transport": _transport_text(policy.rekey),
            })
        engine = self.engine
        return {
            "version": __version__, "role": "key server",
            "uptime": None if self.started_at is None else self.clock.seconds() - self.started_at,
            "ready": bool(getattr(self.gdoi, "ready", True)),
            "groups": groups,
            "sas": {"phase1": len(engine.sas), "phase2": len(self.ipsec.all_sas()),
                    "half_open": len(engine.half_open)},
            "counters": dict(self.counters),
        }

    def members(self, group: str) -> list[dict]:
        self._group(group)
        return self.rekeying.members(group)

    def rekey(self, group: str) -> defer.Deferred:
        self._group(group)
        return self._rekey_call(lambda: self.rekeying.rekey(group)).addCallback(
            lambda seq: {"group": group, "seq": seq, "generation": self.rekeying.status()[group]["generation"]})

    def evict(self, group: str, member: str) -> defer.Deferred:
        self._group(group)
        return self._rekey_call(lambda: self.rekeying.evict(group, member)).addCallback(
            lambda seq: {"group": group, "member": member, "seq": seq})

    def readmit(self, group: str, member: str) -> defer.Deferred:
        self._group(group)
        return self._rekey_call(lambda: self.rekeying.readmit(group, member)).addCallback(
            lambda changed: {"group": group, "member": member, "readmitted": bool(changed)})

    def sas(self) -> dict:
        phase1 = []
        for entry in self.engine.sas.values():
            sa = entry.sa
            phase1.append({
                "peer": format_address(*entry.peer), "identity": identity_text(sa.peer_id),
                "cookies": entry.spi.hex(), "role": sa.role, "established_at": sa.established_at,
                "expires_at": sa.established_at + sa.proposal.lifetime, "proposal": _proposal_text(sa.proposal),
                "doi": sa.doi,
            })
        phase2 = [{
            "peer": format_address(*s.peer), "protocol": s.suite.protocol_name, "proposal": s.suite.name(),
            "mode": str(s.mode), "spi_in": s.spi_in.hex(), "spi_out": s.spi_out.hex(),
            "local": str(s.local_selector), "remote": str(s.remote_selector),
        } for s in self.ipsec.all_sas()]
        return {"phase1": phase1, "phase2": phase2}

    def reload(self) -> defer.Deferred:
        return defer.maybeDeferred(self._reload)

    def _group(self, group: str) -> None:
        if self.rekeying is None or group not in self.rekeying.runs:
            raise KeyError(f"no group {group!r}")

    @staticmethod
    def _rekey_call(call) -> defer.Deferred:
        d = defer.maybeDeferred(call)

        def refused(failure):
            failure.trap(RekeyError)
            raise ValueError(str(failure.value))

        return d.addErrback(refused)

    # --- reload -----------------------------------------------------------------------------------------------------

    def _reload(self) -> dict:
        """Read the config file again and apply what can change while members stay registered and keys stay
        current: peers (PSKs, certificates, CAs, CRLs), Phase 1 proposals and limits, and each group's member
        rules, rekey transport and timing.  New or removed groups, TEK or KEK algorithms, listen addresses and the
        store need a restart: they are reported, not applied."""
        if self.config_path is None:
            raise ValueError("this key server was not started from a file: nothing to reload")
        try:
            new = load_config(self.config_path)
            policy = policy_from_config(new, self.config_path)
            ipsec_plugin(new, self.config_path)
        except ConfigError as e:
            self.counters["config_error"] += 1
            self.log.error("reload: configuration error, nothing changed: {error}", error=str(e))
            raise ValueError(f"configuration error, nothing changed: {e}") from None
        old = self.config
        changed, unchanged, restart = [], [], []
        for section in ("server", "store", "control", "metrics", "keylog", "ipsec", "limits"):
            (restart if getattr(old, section) != getattr(new, section) else unchanged).append(section)
        for section in ("ike", "peers", "identity", "security"):
            (changed if getattr(old, section) != getattr(new, section) else unchanged).append(section)
        self.engine.factory = Phase1Factory(policy)
        if self.gdoi is not None:
            self.gdoi.key_server = attrs.evolve(self.gdoi.key_server, credentials=getattr(policy, "credentials", None),
                                                trust=getattr(policy, "trust", None))
        old_groups = {g.name: g for g in old.groups}
        new_groups = {g.name: g for g in new.groups}
        for name in sorted(set(old_groups) ^ set(new_groups)):
            restart.append(f"groups.{name}")
        table = self.gdoi.key_server.groups if self.gdoi is not None else None
        for name in sorted(set(old_groups) & set(new_groups)):
            before, after = old_groups[name], new_groups[name]
            if before == after:
                unchanged.append(f"groups.{name}")
                continue
            if before.teks != after.teks or before.ids != after.ids or (before.kek is None) != (after.kek is None) \
                    or (before.kek and (before.kek.key_bits, before.kek.lkh_depth)
                        != (after.kek.key_bits, after.kek.lkh_depth)):
                restart.append(f"groups.{name}")
                continue
            group = next(g for g in table.groups if g.policy.name == name)
            group.policy = after
            group.keys.policy = after
            if before.rekey != after.rekey and self.rekeying is not None:
                self.rekeying.reconfigure(name)
            changed.append(f"groups.{name}")
        self.config = attrs.evolve(new, groups=tuple(
            new_groups[g] if f"groups.{g}" in changed else old_groups[g] for g in old_groups))
        self.counters["config_reload"] += 1
        self.log.info("reload of {path}: changed {changed}; unchanged {unchanged}; needs a restart {restart}",
                      path=self.config_path, changed=", ".join(changed) or "nothing",
                      unchanged=", ".join(unchanged) or "nothing", restart=", ".join(restart) or "nothing")
        return {"changed": changed, "unchanged": unchanged, "restart_required": restart}


def _same_address(a: str, b) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(str(b))
    except ValueError:
        return False


class ListenerMulticast:
    """Sends a group's multicast rekeys through an ISAKMP listener's own socket: before each copy it sets the
    group's TTL (hop limit), outgoing interface and loopback on that socket, which only multicast sends read."""

    def __init__(self, protocol, rekey):
        self.protocol = protocol
        self.address = ipaddress.ip_address(rekey.multicast_address)
        self.port = rekey.multicast_port
        v4 = self.address.version == 4
        level = socket.IPPROTO_IP if v4 else socket.IPPROTO_IPV6
        self._options = [
            (level, socket.IP_MULTICAST_TTL if v4 else socket.IPV6_MULTICAST_HOPS, rekey.ttl),
            (level, socket.IP_MULTICAST_LOOP if v4 else socket.IPV6_MULTICAST_LOOP, 1),
        ]
        option = outgoing_interface(self.address, rekey.interface)  # ValueError for an unknown interface
        if option is not None:
            self._options.append(option)
        self.closed = False

    def send(self, datagram: bytes) -> None:
        transport = self.protocol.transport
        if self.closed or transport is None:
            raise OSError("the listener is closed")
        sock = transport.socket
        for option in self._options:
            sock.setsockopt(*option)
        sock.sendto(datagram, (str(self.address), self.port))

    def close(self) -> None:
        self.closed = True


class _Clocked:
    """The reactor for sockets, ``clock`` for time: tests drive timers on a Clock over real sockets."""

    def __init__(self, reactor, clock):
        self._reactor, self._clock = reactor, clock

    def __getattr__(self, name):
        if name in ("callLater", "seconds", "getDelayedCalls"):
            return getattr(self._clock, name)
        return getattr(self._reactor, name)


def _transport_text(rekey) -> str:
    if rekey is None:
        return "none (no KEK)"
    parts = []
    if rekey.multicast_address is not None:
        parts.append(f"multicast {format_address(str(rekey.multicast_address), rekey.multicast_port)} ttl {rekey.ttl}")
    if rekey.unicast:
        parts.append("unicast")
    if rekey.ack:
        parts.append("acknowledged")
    return ", ".join(parts)


def _proposal_text(p) -> str:
    from gdoiserver.codec.constants import OakleyEncryption, OakleyHash

    try:
        enc = OakleyEncryption(p.encryption).name.lower()
    except ValueError:
        enc = str(p.encryption)
    try:
        hash_name = OakleyHash(p.hash).name.lower()
    except ValueError:
        hash_name = str(p.hash)
    bits = f"{p.key_length}" if p.key_length else ""
    return f"{enc}{bits}-{hash_name}-group{p.group}"


__all__ = ["KeyServer"]
