"""The group member as a Twisted service: Phase 1 to the key servers in fallback order, GROUPKEY-PULL, the sink,
and registering again before the TEKs run out.

For each configured group the member tries the key servers in the order of the file.  With each it uses a live
ISAKMP SA of ours if there is one, else runs Phase 1 (Main or Aggressive Mode, PSK or signatures, DOI 2 or 1), checks
the key server's identity when the file names one, and runs GROUPKEY-PULL under the SA
(:class:`~gdoiserver.doi.gdoi.pull.PullInitiator` through the engine's ``start_phase2``; the machine verifies
everything the key server sends).  The first key server that registers us wins; the registration goes to the sink
and a timer is set to register again (:mod:`.schedule`).  When every key server failed, the member tries again
after ``registration.retry_delay``.  TEKs that no registration renewed leave the sink when their lifetime ends.

A group with a KEK is rekeyed by GROUPKEY-PUSH (RFC 6407 section 4): by unicast to our ISAKMP sockets (the
engine hands exchange 33 with a KEK SPI for cookies to us) and, in a running member, on the multicast group the KEK
names (a socket bound to the group's address and port, joined on ``rekey.interface``).  The pure
:class:`~gdoiserver.member.rekey.GroupRekey` of each group decides; this module carries its effects out: the sink,
TEK activation and removal timers, the KEK's end, acknowledgements, and registering again when the member lost
track of the group.

Sockets, the engine and the keylog are those of the key server (:class:`gdoiserver.service.GDOIService`); the
member answers no Phase 1 (:class:`InitiatorOnly`) and no Phase 2 exchange (:class:`MemberDOI`).
"""

import ipaddress
import os
from collections import Counter

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from gdoiserver.codec.constants import DOI, ExchangeType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.config import _id_key
from gdoiserver.doi.gdoi import ack
from gdoiserver.doi.gdoi.pull import PullInitiator
from gdoiserver.doi.gdoi.registration import GroupRegistration
from gdoiserver.doi.ipsec.algorithms import CIPHERS
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import Count
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.exchanges.phase1 import INITIATOR
from gdoiserver.group.policy import GDOI_PORT, GroupId, identity_text
from gdoiserver.keylog import KeyLogError
from gdoiserver.member import multicast, rekey
from gdoiserver.member.config import GroupEntry, KeyServer, MemberSetup, key_server_identity, route_source
from gdoiserver.member.schedule import reregister_delay, retry_delay, uniform
from gdoiserver.member.sink import GroupSink, SinkError, notify_activated, sink_for
from gdoiserver.net.ike import Phase1Failed
from gdoiserver.net.protocol import format_address
from gdoiserver.service import GDOIService

#: Seconds added to the machines' own timeouts before the member stops waiting for them (they always end first;
#: this only bounds a wait on an exchange the engine could not start).
GRACE = 5.0
_DEFAULT = object()


class PullFailed(Exception):
    """A GROUPKEY-PULL we started ended without a registration: ``notify`` (or None) and ``reason``."""

    def __init__(self, notify, reason: str):
        super().__init__(reason)
        self.notify, self.reason = notify, reason


class RegistrationFailed(Exception):
    """No key server registered us in ``group``; ``attempts`` says what each one did."""

    def __init__(self, group: GroupEntry, attempts: list[str]):
        super().__init__(f"no key server registered us in {group}: " + "; ".join(attempts))
        self.group, self.attempts = group, attempts


class _AttemptFailed(Exception):
    pass


@attrs.frozen
class InitiatorOnly(Phase1Factory):
    """Phase 1 machines for the member: it starts exchanges with its key servers and answers none."""

    def responder(self, message, peer, local, now):
        return None


class MemberDOI:
    """DOI 2 on the member's side: it serves no exchange a peer starts, and hears how our GROUPKEY-PULL
    initiators end (the dispatcher's ``established``, ``failed`` and ``removed`` hooks)."""

    number = DOI.GDOI
    name = "GDOI member"

    def __init__(self):
        self.pending: dict[PullInitiator, defer.Deferred] = {}

    def accepts(self, sa, first) -> bool:
        return False

    def responder(self, sa, first):
        return None

    def notify_names(self) -> dict:
        return {}

    def expect(self, machine: PullInitiator) -> defer.Deferred:
        """A Deferred that fires with ``machine``'s registration or fails with :class:`PullFailed`."""
        d = self.pending[machine] = defer.Deferred(lambda _: self.pending.pop(machine, None))
        return d

    def established(self, sa, machine, result, now: float, rng) -> list:
        d = self.pending.pop(machine, None)
        if d is not None:
            d.callback(result)
        return []

    def failed(self, sa, machine, notify, reason: str, now: float, rng) -> list:
        d = self.pending.pop(machine, None)
        if d is not None:
            d.errback(PullFailed(notify, reason))
        return []

    def removed(self, sa, reason: str, now: float) -> None:
        for machine in [m for m in self.pending if m.sa.spi == sa.spi]:
            self.pending.pop(machine).errback(PullFailed(None, f"the ISAKMP SA went: {reason}"))


@attrs.define(eq=False)
class GroupState:
    """One configured group: its latest registration (or the state a rekey left), its rekey machine, and the
    timers that hang on it."""

    entry: GroupEntry
    registration: GroupRegistration | None = None
    server: KeyServer | None = None
    timer: object = None  # the next registration (IDelayedCall)
    teks: dict = attrs.Factory(dict)  # SPI -> (TEKInfo, IDelayedCall of its end)
    rekey: "rekey.GroupRekey | None" = None
    kek_timer: object = None  # the KEK's end (IDelayedCall)
    activations: list = attrs.Factory(list)  # IDelayedCalls of TEK activations (GAP)
    multicast: tuple | None = None  # the key of the multicast socket it hears rekeys on
    local: str | None = None  # our address towards the key server that registered us
    registering: bool = False


class RekeyProtocol(DatagramProtocol):
    """A socket bound to a multicast group's address: what it hears goes to the member's groups on it."""

    def __init__(self, member: "GroupMember", key: tuple):
        self.member, self.key = member, key
        self.groups: list[GroupState] = []
        self.port = None

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            self.member._multicast_push(self, data, (addr[0], addr[1]))
        except Exception:
            self.member.counters["internal_error"] += 1
            self.member.log.failure("bug: a multicast rekey datagram raised")


class GroupMember(MultiService):
    """Enrolls this host in the configured groups (see the module notes).

    ``sink`` defaults to the one ``[sink]`` asks for.  With ``automatic`` the member registers each group when it
    starts and keeps it registered; without, :meth:`register` is called by the owner (``gdoi_member --once``).
    ``on_registered(group_entry, registration)`` and ``on_failed(group_entry, error)`` are told of each outcome.
    """

    log = Logger()

    def __init__(self, setup: MemberSetup, reactor, *, rng=os.urandom, counters: Counter | None = None,
                 sink: GroupSink | None = _DEFAULT, automatic: bool = True):
        super().__init__()
        self.setup = setup
        self.config = setup.config
        self.reactor = reactor
        self.rng = rng
        self.counters = Counter() if counters is None else counters
        self.automatic = automatic
        self.sink = sink_for(self.config.sink) if sink is _DEFAULT else sink
        self.plugin = MemberDOI()
        self.transport = GDOIService(setup.transport, reactor, factory=InitiatorOnly(setup.phase1), rng=rng,
                                     counters=self.counters, plugins=[self.plugin], role="group member")
        self.transport.setServiceParent(self)
        # GROUPKEY-PULL runs under a Phase 1 SA of either DOI (RFC 6407 section 2).
        self.engine.register_phase2(DOI.IPSEC, self.transport.phase2)
        self.groups = {g.group_id: GroupState(g) for g in self.config.groups}
        self.on_registered: list = []
        self.on_failed: list = []
        self._locks: dict = {}
        self._multicast: dict[tuple, RekeyProtocol] = {}
        # GROUPKEY-PUSH by unicast: cookies are a KEK SPI, not an ISAKMP SA (RFC 6407 section 4).
        self.engine.register_exchange(ExchangeType.GROUPKEY_PUSH, self._unicast_push)

    @property
    def engine(self):
        return self.transport.engine

    # --- service ----------------------------------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self.log.info("group member: {groups} groups ({names}); key servers in order: {servers}",
                      groups=len(self.groups), names=", ".join(str(s.entry) for s in self.groups.values()),
                      servers=", ".join(map(str, self.config.key_servers)))
        if self.config.sink.debug_keys:
            self.log.warn("sink.debug_keys is on: group keys will be written to {path}", path=self.config.sink.path)
        if self.automatic:
            for state in self.groups.values():
                self._schedule(state, 0)

    def stopService(self):
        for state in self.groups.values():
            self._cancel(state)
            for call in [c for _, c in state.teks.values()] + state.activations + [state.kek_timer]:
                if call is not None and call.active():
                    call.cancel()
            state.teks.clear()
            state.activations.clear()
            state.kek_timer = state.multicast = None
        stopping = [defer.maybeDeferred(p.port.stopListening) for p in self._multicast.values()]
        self._multicast.clear()
        d = defer.maybeDeferred(super().stopService)
        if stopping:
            d = defer.gatherResults([d, *stopping], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
        if self.sink is not None:
            d.addBoth(self._close_sink)
        return d

    def _close_sink(self, result):
        self.sink.close()
        return result

    # --- registering ------------------------------------------------------------------------------------------------

    def register(self, group_id: GroupId) -> defer.Deferred:
        """Register in ``group_id`` (one of the configured groups) with the first key server that will; fires with
        the :class:`GroupRegistration`, or fails with :class:`RegistrationFailed`."""
        return defer.Deferred.fromCoroutine(self._register(self.groups[group_id]))

    async def _register(self, state: GroupState) -> GroupRegistration:
        state.registering = True
        try:
            return await self._register_with_any(state)
        finally:
            state.registering = False

    async def _register_with_any(self, state: GroupState) -> GroupRegistration:
        attempts = []
        for index, ks in enumerate(self.config.key_servers):
            if not self.running:
                attempts.append("the member stopped")
                break
            try:
                registration, sa = await self._attempt(state, ks, index)
            except _AttemptFailed as e:
                attempts.append(f"{ks}: {e}")
                self.log.info("group member: key server {server} did not register us in {group}: {reason}",
                              server=str(ks), group=str(state.entry), reason=str(e))
                continue
            if self.running:  # a registration that lands while the member stops sets no timer
                self._accept(state, registration, ks, sa)
            return registration
        self.counters["member_registration_failed"] += 1
        error = RegistrationFailed(state.entry, attempts)
        self.log.warn("group member: {error}", error=str(error))
        for hook in self.on_failed:
            hook(state.entry, error)
        raise error

    async def _attempt(self, state: GroupState, ks: KeyServer, index: int) -> tuple:
        # One exchange at a time with a key server: the groups share one Phase 1, and an error Notify under the
        # ISAKMP SA names no exchange (RFC 2408 section 3.14), so a refusal would end every PULL running under it.
        lock = self._locks.setdefault((ks.address, ks.port), defer.DeferredLock())
        await lock.acquire()
        try:
            return await self._attempt_locked(state, ks, index)
        finally:
            lock.release()

    async def _attempt_locked(self, state: GroupState, ks: KeyServer, index: int) -> tuple:
        sa = self._live_sa(ks)
        if sa is None:
            sa = await self._phase1(ks, index)
        # The dispatcher routes by M-ID from the moment it adopts the machine, before start() (RFC 2408 3.1).
        machine = PullInitiator(sa, informational.message_id(self.rng), group=state.entry.group_id,
                                policy=self.setup.pull)
        waiting = self.plugin.expect(machine)
        waiting.addTimeout(self.setup.pull.exchange_timeout + GRACE, self.reactor)
        self.engine.start_phase2(sa, machine)
        try:
            return await waiting, sa
        except PullFailed as e:
            self.counters["member_pull_failed"] += 1
            raise _AttemptFailed(f"GROUPKEY-PULL: {e.reason}") from None
        except defer.TimeoutError:
            self.counters["member_pull_failed"] += 1
            raise _AttemptFailed("GROUPKEY-PULL did not end") from None

    async def _phase1(self, ks: KeyServer, index: int):
        try:
            local = self._local_for(ks)
        except ValueError as e:
            raise _AttemptFailed(str(e)) from None
        started = self.engine.initiate((ks.address, ks.port), local, mode=self.config.member.mode,
                                       doi=self.config.member.phase1_doi)
        started.addTimeout(self.config.ike.exchange_timeout + GRACE, self.reactor)
        try:
            sa = await started
        except Phase1Failed as e:
            self.counters["member_phase1_failed"] += 1
            raise _AttemptFailed(f"Phase 1: {e.reason}") from None
        except defer.TimeoutError:
            self.counters["member_phase1_failed"] += 1
            raise _AttemptFailed("Phase 1 did not end") from None
        expected = key_server_identity(ks, index)
        if expected is not None and _id_key(sa.peer_id) != _id_key(expected):
            self.engine.remove_sa(sa.spi, "not the key server we asked for")
            self.counters["member_wrong_key_server"] += 1
            raise _AttemptFailed(f"Phase 1: the peer is {identity_text(sa.peer_id)}, not {identity_text(expected)}")
        return sa

    def _live_sa(self, ks: KeyServer):
        """Our newest ISAKMP SA with ``ks`` that outlives a GROUPKEY-PULL, or None."""
        now = self.reactor.seconds()
        margin = self.setup.pull.exchange_timeout + GRACE
        best = None
        for entry in self.engine.sas.values():
            sa = entry.sa
            if entry.closed or sa.role != INITIATOR or sa.peer[0] != ks.address:
                continue
            if sa.peer[1] != ks.port and not sa.nat_t:
                continue
            if sa.expires_at - now > margin and (best is None or sa.established_at > best.established_at):
                best = sa
        return best

    def _local_for(self, ks: KeyServer) -> tuple[str, int]:
        """Our listener towards ``ks``: its address (the one the kernel routes from, if it is bound to every
        address, as NAT-D and our default ID need ours) and port."""
        version = ipaddress.ip_address(ks.address).version
        for p in self.transport.protocols:
            if p.local_address is None or p.is_nat_t:
                continue
            host, port = p.local_address
            if ipaddress.ip_address(host).version != version:
                continue
            if ipaddress.ip_address(host).is_unspecified:
                try:
                    host = route_source(ks.address)
                except OSError:
                    pass
            return host, port
        raise ValueError(f"no member.listen address is IPv{version} like the key server {ks}")

    # --- outcomes ---------------------------------------------------------------------------------------------------

    def _accept(self, state: GroupState, registration: GroupRegistration, ks: KeyServer, sa=None) -> None:
        """A registration (under the Phase 1 SA ``sa``): to the sink, TEK end timers, the rekey state, the next
        registration."""
        now = self.reactor.seconds()
        state.server = ks
        if sa is not None:
            state.local = sa.local[0]
        new_spis = self._install(state, registration, now)
        self.counters["member_registered"] += 1
        self.log.info(
            "group member: registered in {group} by {server}: TEKs {teks}; KEK {kek}; sender IDs {sids}; PFS {pfs}",
            group=str(state.entry), server=format_address(*registration.server), teks=_describe_teks(registration),
            kek=registration.kek.spi.hex() if registration.kek else "none",
            sids=", ".join(map(str, registration.sender_ids)) or "none", pfs="yes" if registration.pfs else "no",
        )
        self._follow_rekeys(state, registration, sa)
        for hook in self.on_registered:
            hook(state.entry, registration)
        self._next_registration(state, registration, now, renewed=bool(new_spis))

    def _install(self, state: GroupState, registration: GroupRegistration, now: float) -> frozenset:
        """The registration's TEKs to the sink, each with a timer for its end; returns the SPIs that are new."""
        new_spis = frozenset(t.spi for t in registration.teks) - set(state.teks)
        state.registration = registration
        for tek in registration.teks:
            old = state.teks.get(tek.spi)
            if old is not None and old[1].active():
                old[1].cancel()
            ends = max(registration.registered_at + tek.lifetime - now, 0)
            state.teks[tek.spi] = (tek, self.reactor.callLater(ends, self._tek_ended, state, tek.spi))
        if self.sink is not None:
            try:
                self.sink.installed(registration, new_spis, now)
            except SinkError as e:
                self.counters["member_sink_error"] += 1
                self.log.error("group member: the sink refused the keys of {group}: {error}",
                               group=str(state.entry), error=str(e))
        return new_spis

    def _next_registration(self, state: GroupState, registration: GroupRegistration, now: float, *,
                           renewed: bool, pushed: bool = False) -> None:
        if not (self.automatic and self.running) or (pushed and state.registering):
            return  # a registration under way sets the timer when it ends
        c = self.config.registration
        delay = reregister_delay(registration, now, uniform(self.rng), margin=c.reregister_margin, jitter=c.jitter,
                                 renewed=renewed, rekeys=registration.kek is not None)
        self.log.info("group member: next registration in {group} in {delay:.0f} s", group=str(state.entry),
                      delay=delay)
        self._schedule(state, delay, "renew")

    def _tek_ended(self, state: GroupState, spi: bytes, reason: str = "lifetime over") -> None:
        tek, _ = state.teks.pop(spi)
        now = self.reactor.seconds()
        self.counters["member_tek_expired" if reason == "lifetime over" else "member_tek_retired"] += 1
        self.log.info("group member: TEK {spi} of {group} removed: {reason}", spi=spi.hex(), group=str(state.entry),
                      reason=reason)
        if self.sink is not None:
            try:
                self.sink.removed(state.entry.group_id, tek, reason, now)
            except SinkError as e:
                self.counters["member_sink_error"] += 1
                self.log.error("group member: the sink could not remove TEK {spi}: {error}", spi=spi.hex(),
                               error=str(e))

    # --- rekeys (GROUPKEY-PUSH) -------------------------------------------------------------------------------------

    def _follow_rekeys(self, state: GroupState, registration: GroupRegistration, sa) -> None:
        """After a registration: the group's rekey state, the KEK's end, the multicast group to hear."""
        if registration.kek is None:
            state.rekey = None
            self._cancel_kek_timer(state)
            self._leave_multicast(state)
            return
        ack = acknowledger(sa, registration.group)
        if state.rekey is None:
            # A PUSH's SA need not carry a SAK (a TEK rekey): require_kek is for GROUPKEY-PULL only.
            state.rekey = rekey.GroupRekey(registration, ack=ack, policy=attrs.evolve(self.setup.pull,
                                                                                        require_kek=False),
                                           unknown_kek_limit=self.config.rekey.unknown_kek_limit,
                                           holddown=self.config.registration.retry_delay)
        else:
            state.rekey.registered(registration, ack)
        self._log_kek(registration.kek)
        self._arm_kek_timer(state)
        self._hear_multicast(state, registration.kek)

    def _log_kek(self, kek) -> None:
        """The KEK to the keylog, when there is one: pcapdump --keylog and tshark then open its rekeys."""
        keylog = self.transport.keylog
        if keylog is None:
            return
        try:
            keylog.write_kek(kek.spi, kek.key, kek.key_bits)
        except KeyLogError as e:
            self.counters["keylog_error"] += 1
            self.log.error("{error}: the KEK {spi} was not written", error=str(e), spi=kek.spi.hex())

    def _unicast_push(self, message, raw: bytes, peer, listener) -> None:
        """The engine's handler of exchange 33 whose cookies are no ISAKMP SA: a rekey by unicast.  A PUSH under
        a KEK none of our groups holds counts towards losing track in the groups the sender registered us in."""
        states = [s for s in self.groups.values() if s.rekey is not None]
        suspects = [s for s in states if s.rekey.registration.server[0] == peer[0]]
        self._deliver(states, suspects, raw, (peer[0], peer[1]), listener.send)

    def _multicast_push(self, protocol: "RekeyProtocol", data: bytes, peer) -> None:
        """A datagram on a multicast group our groups' KEKs name."""
        if len(data) > self.setup.transport.limits.max_datagram_size:
            self.counters["push_oversize"] += 1
            return
        states = [s for s in protocol.groups if s.rekey is not None]
        self._deliver(states, states, data, peer, self._sender(peer, protocol), multicast=True)

    def _deliver(self, states, suspects, data: bytes, peer, send, multicast: bool = False) -> None:
        now = self.reactor.seconds()
        machine = rekey.route([s.rekey for s in states], data)
        if machine is not None:
            state = next(s for s in states if s.rekey is machine)
            self._apply(state, machine.on_push(data, peer, now, multicast=multicast), peer, send)
            return
        effects = rekey.stray(data)
        self._apply(None, effects, peer, send)
        if any(isinstance(e, Count) and e.name == rekey.UNKNOWN_KEK for e in effects):
            for state in suspects:
                self._apply(state, state.rekey.unknown_kek(now), peer, send)

    def _sender(self, peer, protocol: "RekeyProtocol"):
        """How to acknowledge a multicast PUSH from ``peer``: from our ISAKMP socket of its IP version, the one
        we registered from."""
        v6 = ":" in peer[0]
        for p in self.transport.protocols:
            if p.local_address is not None and not p.is_nat_t and (":" in p.local_address[0]) == v6:
                return p.send
        return protocol.transport.write

    def _apply(self, state: GroupState | None, effects, peer, send) -> None:
        """Carry out what the rekey machine of ``state`` decided."""
        now = self.reactor.seconds()
        group = "" if state is None else f" of {state.entry}"
        for e in effects:
            if isinstance(e, Count):
                self.counters[e.name] += 1
            elif isinstance(e, rekey.Rejected):
                log = self.log.debug if e.counter == rekey.DUPLICATE else self.log.info
                log("group member: dropped a GROUPKEY-PUSH{group} from {peer}: {reason}", group=group,
                    peer=format_address(*peer), reason=e.reason)
            elif isinstance(e, rekey.Accepted):
                self.log.info("group member: rekey{group} SEQ {seq} from {peer} under KEK {kek}: new TEKs {new}; "
                              "retired {old}; new KEK {new_kek}", group=group, seq=e.seq, peer=format_address(*peer),
                              kek=e.kek_spi.hex(), new=_spis(e.new_teks), old=_spis(e.deleted_teks),
                              new_kek=e.new_kek.hex() if e.new_kek else "none")
            elif isinstance(e, rekey.Install):
                self._install(state, e.registration, now)
                self._next_registration(state, e.registration, now, renewed=True, pushed=True)
            elif isinstance(e, rekey.Activate):
                state.activations = [c for c in state.activations if c.active()]
                state.activations.append(self.reactor.callLater(max(e.at - now, 0), self._activate, state, e.spis))
            elif isinstance(e, rekey.Retire):
                self._retire(state, e.spis, e.at, now)
            elif isinstance(e, rekey.SwitchKEK):
                self._log_kek(e.kek)
                self._arm_kek_timer(state)
                self._hear_multicast(state, e.kek)
            elif isinstance(e, rekey.SendAck):
                try:
                    send(e.datagram, e.peer)
                except OSError as error:
                    self.counters["ack_send_failed"] += 1
                    self.log.warn("group member: could not acknowledge a rekey to {peer}: {error}",
                                  peer=format_address(*e.peer), error=str(error))
            elif isinstance(e, rekey.Reregister):
                self._lost(state, e.reason)
            else:
                raise TypeError(f"unknown rekey effect {e!r}")

    def _activate(self, state: GroupState, spis) -> None:
        teks = tuple(state.teks[s][0] for s in spis if s in state.teks)
        if not teks or self.sink is None:
            return
        try:
            notify_activated(self.sink, state.entry.group_id, teks, self.reactor.seconds())
        except SinkError as e:
            self.counters["member_sink_error"] += 1
            self.log.error("group member: the sink could not activate TEKs of {group}: {error}",
                           group=str(state.entry), error=str(e))

    def _retire(self, state: GroupState, spis, at: float, now: float) -> None:
        """TEKs a rekey deleted leave at ``at``, or at their own end if that comes first."""
        for spi in spis:
            entry = state.teks.get(spi)
            if entry is None:
                continue
            tek, call = entry
            if call.active() and call.getTime() <= at:
                continue
            if call.active():
                call.cancel()
            state.teks[spi] = (tek, self.reactor.callLater(max(at - now, 0), self._tek_ended, state, spi,
                                                           "retired by rekey"))

    def _lost(self, state: GroupState, reason: str) -> None:
        self.counters[rekey.REREGISTER_LOST] += 1
        self.log.warn("group member: lost track of {group}: {reason}; registering again", group=str(state.entry),
                      reason=reason)
        if self.automatic and self.running and not state.registering:
            self._schedule(state, 0, "lost")

    def _arm_kek_timer(self, state: GroupState) -> None:
        self._cancel_kek_timer(state)
        delay = max(state.rekey.kek_expires_at - self.reactor.seconds(), 0)
        state.kek_timer = self.reactor.callLater(delay, self._kek_due, state)

    def _cancel_kek_timer(self, state: GroupState) -> None:
        if state.kek_timer is not None and state.kek_timer.active():
            state.kek_timer.cancel()
        state.kek_timer = None

    def _kek_due(self, state: GroupState) -> None:
        state.kek_timer = None
        if state.rekey is not None:
            self._apply(state, state.rekey.expired(self.reactor.seconds()), ("", 0), None)

    # --- multicast --------------------------------------------------------------------------------------------------

    def _multicast_key(self, state: GroupState, kek) -> tuple | None:
        """(group address, port, interface) to hear ``kek``'s rekeys on, or None (unicast, or not wanted)."""
        if not (self.automatic and self.config.rekey.multicast):
            return None
        try:
            destination = kek.destination.value()
        except DecodeError:
            return None
        if not isinstance(destination, (ipaddress.IPv4Address, ipaddress.IPv6Address)) or \
                not destination.is_multicast:
            return None
        return str(destination), kek.destination.port or GDOI_PORT, self.config.rekey.interface or state.local

    def _hear_multicast(self, state: GroupState, kek) -> None:
        key = self._multicast_key(state, kek)
        if key == state.multicast:
            return
        self._leave_multicast(state)
        if key is None:
            return
        protocol = self._multicast.get(key) or self._open_multicast(key)
        if protocol is not None:
            protocol.groups.append(state)
            state.multicast = key

    def _open_multicast(self, key: tuple) -> "RekeyProtocol | None":
        address, port, interface = key
        where = f"{format_address(address, port)} on {interface or 'the default interface'}"
        if not hasattr(self.reactor, "listenMulticast"):
            self.log.info("group member: this reactor cannot hear multicast rekeys at {where}", where=where)
            return None
        protocol = RekeyProtocol(self, key)
        try:
            protocol.port = self.reactor.listenMulticast(port, protocol, interface=address, listenMultiple=True)
        except CannotListenError as e:
            self.counters["multicast_join_failed"] += 1
            self.log.error("group member: cannot listen for rekeys at {where}: {error}", where=where, error=str(e))
            return None
        try:
            level, option, value = multicast.membership(address, interface)
            protocol.port.socket.setsockopt(level, option, value)
        except (OSError, ValueError) as e:
            protocol.port.stopListening()
            self.counters["multicast_join_failed"] += 1
            self.log.error("group member: cannot join {where}: {error}", where=where, error=str(e))
            return None
        self._multicast[key] = protocol
        self.log.info("group member: hearing rekeys at {where}", where=where)
        return protocol

    def _leave_multicast(self, state: GroupState) -> None:
        key, state.multicast = state.multicast, None
        protocol = self._multicast.get(key) if key is not None else None
        if protocol is None:
            return
        protocol.groups.remove(state)
        if not protocol.groups:
            del self._multicast[key]
            protocol.port.stopListening()

    # --- timers -----------------------------------------------------------------------------------------------------

    def _schedule(self, state: GroupState, delay: float, kind: str = "retry") -> None:
        self._cancel(state)
        state.timer = self.reactor.callLater(delay, self._run, state, kind)

    def _cancel(self, state: GroupState) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None

    def _run(self, state: GroupState, kind: str = "retry") -> None:
        state.timer = None
        if state.registering:
            return  # the registration under way sets the next timer
        if state.registration is not None:
            self.counters["member_reregister"] += 1
        if kind == "renew" and state.rekey is not None:
            self.counters[rekey.REREGISTER_LOST] += 1
            self.log.warn("group member: no rekey brought {group} new TEKs in time; registering again",
                          group=str(state.entry))
        d = self.register(state.entry.group_id)
        d.addErrback(self._retry_later, state)

    def _retry_later(self, failure, state: GroupState) -> None:
        if not failure.check(RegistrationFailed):
            self.counters["internal_error"] += 1
            self.log.failure("bug: registering in {group} raised", failure, group=str(state.entry))
        if self.automatic and self.running:
            c = self.config.registration
            self._schedule(state, retry_delay(c.retry_delay, uniform(self.rng), c.jitter))


def acknowledger(sa, group: GroupId):
    """``ack(kek_spi, seq) -> bytes``: the GROUPKEY-PUSH-ACK keyed from the Phase 1 SA ``sa`` the member registered
    under (RFC 8263; :mod:`gdoiserver.doi.gdoi.ack`), or None without one."""
    if sa is None:
        return None
    key, prf_hash, ident = ack.ack_key_for(sa), sa.proposal.hash, group.identification()
    return lambda kek_spi, seq: ack.build_ack(kek_spi, seq, ident, key, prf_hash)


def _spis(spis) -> str:
    return ", ".join(s.hex() for s in spis) or "none"


def _describe_teks(registration: GroupRegistration) -> str:
    parts = []
    for t in registration.teks:
        cipher = CIPHERS.get(t.transform_id)
        name = cipher.rfc_name if cipher else f"transform {t.transform_id}"
        parts.append(f"{t.spi.hex()} {name}-{t.key_bits} {t.destination.value()} ({t.lifetime} s)")
    return ", ".join(parts)
