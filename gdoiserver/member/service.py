"""The group member as a Twisted service: Phase 1 to the key servers in fallback order, GROUPKEY-PULL, the sink,
and registering again before the TEKs run out.

For each configured group the member tries the key servers in the order of the file.  With each it uses a live
ISAKMP SA of ours if there is one, else runs Phase 1 (Main or Aggressive Mode, PSK or signatures, DOI 2 or 1), checks
the key server's identity when the file names one, and runs GROUPKEY-PULL under the SA
(:class:`~gdoiserver.doi.gdoi.pull.PullInitiator` through the engine's ``start_phase2``; the machine verifies
everything the key server sends).  The first key server that registers us wins; the registration goes to the sink
and a timer is set to register again (:mod:`.schedule`).  When every key server failed, the member tries again
after ``registration.retry_delay``.  TEKs that no registration renewed leave the sink when their lifetime ends.

Sockets, the engine and the keylog are those of the key server (:class:`gdoiserver.service.GDOIService`); the
member answers no Phase 1 (:class:`InitiatorOnly`) and no Phase 2 exchange (:class:`MemberDOI`).
"""

import ipaddress
import os
from collections import Counter

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from gdoiserver.codec.constants import DOI
from gdoiserver.config import _id_key
from gdoiserver.doi.gdoi.pull import PullInitiator
from gdoiserver.doi.gdoi.registration import GroupRegistration
from gdoiserver.doi.ipsec.algorithms import CIPHERS
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.exchanges.phase1 import INITIATOR
from gdoiserver.group.policy import GroupId, identity_text
from gdoiserver.member.config import GroupEntry, KeyServer, MemberSetup, key_server_identity, route_source
from gdoiserver.member.schedule import reregister_delay, retry_delay, uniform
from gdoiserver.member.sink import GroupSink, SinkError, sink_for
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
    """One configured group: its latest registration and the timers that hang on it."""

    entry: GroupEntry
    registration: GroupRegistration | None = None
    server: KeyServer | None = None
    timer: object = None  # the next registration (IDelayedCall)
    teks: dict = attrs.Factory(dict)  # SPI -> (TEKInfo, IDelayedCall of its end)


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
            for _, call in state.teks.values():
                if call.active():
                    call.cancel()
            state.teks.clear()
        d = defer.maybeDeferred(super().stopService)
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
        attempts = []
        for index, ks in enumerate(self.config.key_servers):
            if not self.running:
                attempts.append("the member stopped")
                break
            try:
                registration = await self._attempt(state, ks, index)
            except _AttemptFailed as e:
                attempts.append(f"{ks}: {e}")
                self.log.info("group member: key server {server} did not register us in {group}: {reason}",
                              server=str(ks), group=str(state.entry), reason=str(e))
                continue
            if self.running:  # a registration that lands while the member stops sets no timer
                self._accept(state, registration, ks)
            return registration
        self.counters["member_registration_failed"] += 1
        error = RegistrationFailed(state.entry, attempts)
        self.log.warn("group member: {error}", error=str(error))
        for hook in self.on_failed:
            hook(state.entry, error)
        raise error

    async def _attempt(self, state: GroupState, ks: KeyServer, index: int) -> GroupRegistration:
        # One exchange at a time with a key server: the groups share one Phase 1, and an error Notify under the
        # ISAKMP SA names no exchange (RFC 2408 section 3.14), so a refusal would end every PULL running under it.
        lock = self._locks.setdefault((ks.address, ks.port), defer.DeferredLock())
        await lock.acquire()
        try:
            return await self._attempt_locked(state, ks, index)
        finally:
            lock.release()

    async def _attempt_locked(self, state: GroupState, ks: KeyServer, index: int) -> GroupRegistration:
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
            return await waiting
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

    def _accept(self, state: GroupState, registration: GroupRegistration, ks: KeyServer) -> None:
        """A registration: to the sink, TEK end timers, the next registration."""
        now = self.reactor.seconds()
        new_spis = frozenset(t.spi for t in registration.teks) - set(state.teks)
        state.registration, state.server = registration, ks
        for tek in registration.teks:
            old = state.teks.get(tek.spi)
            if old is not None and old[1].active():
                old[1].cancel()
            ends = max(registration.registered_at + tek.lifetime - now, 0)
            state.teks[tek.spi] = (tek, self.reactor.callLater(ends, self._tek_ended, state, tek.spi))
        self.counters["member_registered"] += 1
        if self.sink is not None:
            try:
                self.sink.installed(registration, new_spis, now)
            except SinkError as e:
                self.counters["member_sink_error"] += 1
                self.log.error("group member: the sink refused the registration in {group}: {error}",
                               group=str(state.entry), error=str(e))
        self.log.info(
            "group member: registered in {group} by {server}: TEKs {teks}; KEK {kek}; sender IDs {sids}; PFS {pfs}",
            group=str(state.entry), server=format_address(*registration.server), teks=_describe_teks(registration),
            kek=registration.kek.spi.hex() if registration.kek else "none",
            sids=", ".join(map(str, registration.sender_ids)) or "none", pfs="yes" if registration.pfs else "no",
        )
        for hook in self.on_registered:
            hook(state.entry, registration)
        if self.automatic and self.running:
            c = self.config.registration
            delay = reregister_delay(registration, now, uniform(self.rng), margin=c.reregister_margin,
                                     jitter=c.jitter, renewed=bool(new_spis))
            self.log.info("group member: next registration in {group} in {delay:.0f} s", group=str(state.entry),
                          delay=delay)
            self._schedule(state, delay)

    def _tek_ended(self, state: GroupState, spi: bytes) -> None:
        tek, _ = state.teks.pop(spi)
        now = self.reactor.seconds()
        self.counters["member_tek_expired"] += 1
        self.log.info("group member: TEK {spi} of {group} expired", spi=spi.hex(), group=str(state.entry))
        if self.sink is not None:
            try:
                self.sink.removed(state.entry.group_id, tek, "lifetime over", now)
            except SinkError as e:
                self.counters["member_sink_error"] += 1
                self.log.error("group member: the sink could not remove TEK {spi}: {error}", spi=spi.hex(),
                               error=str(e))

    # --- timers -----------------------------------------------------------------------------------------------------

    def _schedule(self, state: GroupState, delay: float) -> None:
        self._cancel(state)
        state.timer = self.reactor.callLater(delay, self._run, state)

    def _cancel(self, state: GroupState) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None

    def _run(self, state: GroupState) -> None:
        state.timer = None
        if state.registration is not None:
            self.counters["member_reregister"] += 1
        d = self.register(state.entry.group_id)
        d.addErrback(self._retry_later, state)

    def _retry_later(self, failure, state: GroupState) -> None:
        if not failure.check(RegistrationFailed):
            self.counters["internal_error"] += 1
            self.log.failure("bug: registering in {group} raised", failure, group=str(state.entry))
        if self.automatic and self.running:
            c = self.config.registration
            self._schedule(state, retry_delay(c.retry_delay, uniform(self.rng), c.jitter))


def _describe_teks(registration: GroupRegistration) -> str:
    parts = []
    for t in registration.teks:
        cipher = CIPHERS.get(t.transform_id)
        name = cipher.rfc_name if cipher else f"transform {t.transform_id}"
        parts.append(f"{t.spi.hex()} {name}-{t.key_bits} {t.destination.value()} ({t.lifetime} s)")
    return ", ".join(parts)
