"""The IKEv1 engine: routes decoded ISAKMP messages to exchange machines and carries out the effects they return.

The machines (:mod:`gdoiserver.exchanges`) are sans-IO; this module holds the tables and the timers.  It uses an
injected clock (``IReactorTime``) and the listeners (:class:`gdoiserver.net.protocol.ISAKMPProtocol`) that hand it
datagrams, and it never raises into them.

Routing (RFC 2408 section 3.1: the cookie pair names the ISAKMP SA):

- A Main Mode or Aggressive Mode message with a zero responder cookie is a *first message*.  It goes to the
  half-open responder already made for (initiator cookie, peer address), which answers a retransmission from its
  cache, or else to a new one from :meth:`MachineFactory.responder` if the half-open caps allow.  At the total
  cap, the oldest half-open responder whose peer never sent our responder cookie back (it has not shown that it
  receives our answers: a spoofed source) makes room (RFC 4987 section 3.4, recycling the oldest half-open
  state); only when every half-open responder has heard back is the first message dropped.
- Any other message goes by its cookie pair: to the exchange in progress, or, under an established SA, to the
  Phase 1 machine again (exchange types 2 and 4: retransmissions), to the Informational handling (5) or to the
  DOI's Phase 2 handler (32, 33 and the rest).  A message for no known SA is counted ``unknown_sa`` and dropped
  without an answer: INVALID-COOKIE is only a hint (RFC 2408 section 5.2), and answering would reflect.
- A machine's Sends reveal the cookie pair (their headers): a responder's first answer, an initiator's first
  message after the peer's answer.  From then on the pair routes to it.  Until then an initiator is found by its
  initiator cookie alone.

Messages are handled one at a time, each with all its effects carried out before the next one is looked at, even
when an effect (a hook, a loopback write) leads back into the engine.
"""

from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gdoiserver.codec.constants import ExchangeType, NotifyType, ProtocolID
from gdoiserver.codec.message import Message
from gdoiserver.codec.payloads import VendorID
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.dpd import DPD, supports_dpd
from gdoiserver.exchanges.effects import (
    Address, CancelTimer, Count, Established, Failed, Send, SendKeepalive, StartTimer,
)
from gdoiserver.exchanges.informational import DeleteReceived, NotifyReceived, Received
from gdoiserver.exchanges.lifetime import Expire, Lifetime, Reauthenticate
from gdoiserver.exchanges.natt import Keepalive, needs_keepalive
from gdoiserver.net.protocol import format_address

ZERO_COOKIE = bytes(8)
#: Exchanges that open an ISAKMP SA (RFC 2409 section 5): a first message of these makes a responder.
PHASE1_EXCHANGES = frozenset({ExchangeType.IDENTITY_PROTECTION, ExchangeType.AGGRESSIVE})
PHASE1 = "phase1"


class Machine(Protocol):
    """The interface of an exchange machine (see :mod:`gdoiserver.exchanges`)."""

    done: bool
    state: str

    def start(self, now: float, rng) -> list: ...

    def receive(self, message: Message, raw: bytes, now: float, rng, *, peer: Address, local: Address) -> list: ...

    def timer(self, key: str, now: float, rng) -> list: ...


class MachineFactory(Protocol):
    """Makes the Phase 1 machines, so that the engine does not depend on their constructors."""

    def responder(self, message: Message, peer: Address, local: Address, now: float) -> Machine | None:
        """A responder for this first message, or None to refuse it (an exchange we do not serve)."""

    def initiator(self, peer: Address, local: Address, **options) -> Machine:
        """An initiator towards ``peer``; ``options`` pass through from :meth:`IKEEngine.initiate`.  The engine
        itself passes ``replaces=sa`` when it re-authenticates ``sa`` before it expires."""


#: phase2_handler(sa, message, raw, peer, local, *, now, rng) -> effects or None; an optional attribute
#: ``timer(sa, key, now, rng)`` serves the timers its effects start.
Phase2Handler = Callable[..., Iterable | None]


class Listener(Protocol):
    """What the engine needs of a UDP listener (``ISAKMPProtocol`` is one)."""

    is_nat_t: bool
    local_address: Address | None

    def send(self, data: bytes, peer: Address) -> None: ...


class Phase1Failed(Exception):
    """An exchange we initiated ended without an SA: ``notify`` (a Notify type or None) and ``reason``."""

    def __init__(self, notify: int | None, reason: str):
        self.notify = notify
        self.reason = reason
        super().__init__(reason)


@attrs.define(eq=False)
class Runner:
    """One machine working for an SA entry (``name``: "phase1", "dpd", "lifetime", "phase2.<DOI>"), with the
    timers it started."""

    machine: Any
    owner: "SAEntry"
    name: str
    timers: dict = attrs.Factory(dict)


@attrs.define(eq=False)
class SAEntry:
    """One ISAKMP SA, half-open or established, and what hangs on it.

    ``peer`` follows the machine: it is the address of its last Send (which tells a NAT-T float).  ``source`` is
    the address whose half-open cap the entry counts against (responders only); ``first_key`` its (initiator
    cookie, peer) key while half-open.  ``deadline`` is exchange_timeout: while half-open, the end of the exchange;
    once established, when the finished Phase 1 machine (no longer needed for retransmissions) is dropped.
    """

    role: str
    peer: Address
    local: Address | None
    icookie: bytes | None = None
    rcookie: bytes | None = None
    source: str | None = None
    first_key: tuple | None = None
    sa: Any = None
    runners: dict = attrs.Factory(dict)
    deadline: Any = None
    result: Deferred | None = None
    closed: bool = False
    #: Why the SA is being ended early (:meth:`IKEEngine.delete_sa`), for the log line; None: its lifetime.
    ending: str | None = None

    @property
    def spi(self) -> bytes | None:
        if self.icookie is None or self.rcookie is None:
            return None
        return self.icookie + self.rcookie

    def describe(self) -> str:
        cookies = "/".join(c.hex() if c else "?" for c in (self.icookie, self.rcookie))
        return f"{self.role} SA {cookies} with {format_address(*self.peer)}"


def _reason_kind(failed: Failed) -> str:
    """A short, bounded name for a failure: the Notify type, or the reason's words before any detail."""
    if failed.notify is not None:
        try:
            return NotifyType(failed.notify).name
        except ValueError:
            return f"notify_{failed.notify}"
    head = failed.reason.split(":")[0].split("(")[0].strip().lower()
    return "".join(c if c.isalnum() else "_" for c in head)[:40] or "unknown"


class IKEEngine:
    """The routing tables and the effect runner of IKEv1 (see the module notes).

    ``clock`` is an IReactorTime; ``rng(n)`` gives n random octets.  ``counters`` may be shared with the
    listeners.  ``halfopen_per_peer``/``halfopen_total`` cap responder SAs not yet established, per source address
    and in all; ``exchange_timeout`` bounds how long one may stay half-open.  Each established SA gets a
    :class:`Lifetime` machine (expiry, and re-authentication for the SAs we initiated) and a :class:`DPD` machine,
    which probes after ``dpd_delay`` quiet seconds a peer that announced DPD (0: answer only).

    Counters: ``unknown_sa``, ``halfopen_cap_per_peer``, ``halfopen_cap_total``, ``halfopen_evicted``,
    ``responder_refused``,
    ``phase1_responder_started``, ``phase1_initiator_started``, ``phase1_established``,
    ``phase1_failed.<Notify name or reason>``, ``phase1_timeout``, ``phase1_removed``, ``phase1_after_established``,
    ``unhandled.<exchange type>``, ``sent``, ``send_error``, ``no_listener``, ``hook_error``, ``internal_error``,
    and whatever the machines Count.
    """

    log = Logger()

    def __init__(
        self,
        factory: MachineFactory,
        clock,
        rng: Callable[[int], bytes],
        counters: Counter | None = None,
        *,
        halfopen_per_peer: int = 32,
        halfopen_total: int = 4096,
        exchange_timeout: float = 60.0,
        dpd_delay: float = 0,
    ):
        self.factory = factory
        self.clock = clock
        self.rng = rng
        self.counters = Counter() if counters is None else counters
        self.halfopen_per_peer = halfopen_per_peer
        self.halfopen_total = halfopen_total
        self.exchange_timeout = exchange_timeout
        self.dpd_delay = dpd_delay
        self.listeners: list[Listener] = []
        # Exchanges in progress: by cookie pair, responders by (initiator cookie, peer), initiators by their cookie
        # until the answer names the responder cookie.
        self.exchanges: dict[bytes, SAEntry] = {}
        self.first_messages: dict[tuple, SAEntry] = {}
        self.initiating: dict[bytes, SAEntry] = {}
        self.half_open: set[SAEntry] = set()
        self.half_open_by_source: Counter = Counter()
        # Half-open responders whose peer has not sent our responder cookie back, oldest first.
        self.unproven: dict[SAEntry, None] = {}
        # Established ISAKMP SAs.
        self.sas: dict[bytes, SAEntry] = {}
        self.sas_by_peer: dict[Address, SAEntry] = {}
        self.sas_by_identity: dict[Any, SAEntry] = {}
        # Hooks of the layers above.
        self.established_hooks: list[Callable[[Any], object]] = []
        self.removed_hooks: list[Callable[[Any, str], object]] = []
        self.informational_hooks: list[Callable[[Any, object], object]] = []
        self.phase2_handlers: dict[int, Phase2Handler] = {}
        self.exchange_handlers: dict[int, Callable] = {}
        self._queue: deque = deque()
        self._busy = False
        self._closed_entries: list[SAEntry] = []

    # --- what the layers above call ----------------------------------------------------------------------------------

    def on_established(self, hook: Callable[[Any], object]) -> None:
        """Call ``hook(sa)`` with each ISAKMP SA when it is established (the keylog, Phase 2 and GDOI layers)."""
        self.established_hooks.append(hook)

    def on_removed(self, hook: Callable[[Any, str], object]) -> None:
        """Call ``hook(sa, reason)`` when an established SA goes (expired, deleted, peer dead)."""
        self.removed_hooks.append(hook)

    def register_phase2(self, doi: int, handler: Phase2Handler) -> None:
        """Hand messages other than Phase 1 and Informational under an SA of ``doi`` to ``handler``."""
        self.phase2_handlers[doi] = handler

    def register_exchange(self, exchange_type: int, handler: Callable) -> None:
        """Hand messages of ``exchange_type`` that no ISAKMP SA owns to ``handler(message, raw, peer, listener)``:
        GROUPKEY-PUSH and its acknowledgement (RFC 6407 section 4, RFC 8263), whose cookies are a KEK SPI and not a
        Phase 1 SA's.  The handler must not raise; what it raises is counted as ``internal_error``."""
        self.exchange_handlers[exchange_type] = handler

    def run_phase2(self, sa, step: Callable[[float, Callable[[int], bytes]], Iterable | None]) -> None:
        """Carry out the effects of ``step(now, rng)`` as those of the Phase 2 handler of the established ``sa``
        (its timers come back to ``handler.timer``): a Phase 2 exchange we start, a Delete we send.  Counted
        ``phase2_no_sa`` and skipped once ``sa`` is gone."""
        self._serially(self._run_phase2, sa, step)

    def start_phase2(self, sa, machine) -> None:
        """Start ``machine``, a Phase 2 exchange we initiate under the established ``sa``: the Phase 2 handler of
        ``sa``'s DOI adopts it (``handler.adopt(sa, machine, now, rng)`` routes its M-ID to it and returns the
        effects of ``machine.start``)."""
        handler = self.phase2_handlers.get(sa.doi)
        if handler is None or not hasattr(handler, "adopt"):
            self.counters["phase2_no_handler"] += 1
            return
        self.run_phase2(sa, lambda now, rng: handler.adopt(sa, machine, now, rng))

    def initiate(self, peer: Address, local: Address | None = None, **options) -> Deferred:
        """Start Phase 1 with ``peer`` as initiator; the Deferred fires with the SA or fails with Phase1Failed."""
        result = Deferred()
        self._serially(self._initiate, peer, local, options, result)
        return result

    def remove_sa(self, spi: bytes, reason: str) -> bool:
        """Forget the established SA ``spi`` (cookie pair); False if there is none."""
        entry = self.sas.get(spi)
        if entry is None:
            return False
        self._remove_sa(entry, reason)
        return True

    def delete_sa(self, spi: bytes, reason: str) -> bool:
        """End the established SA ``spi`` as its lifetime would: a Delete goes to the peer (RFC 2408 section
        3.15), then the SA is forgotten.  False if there is none."""
        entry = self.sas.get(spi)
        runner = entry.runners.get("lifetime") if entry is not None else None
        if runner is None or runner.machine.done:
            return self.remove_sa(spi, reason)
        entry.ending = reason
        self._serially(self._run, runner, lambda now: runner.machine.delete(now, self.rng))
        return True

    # --- listeners ----------------------------------------------------------------------------------------------------

    def attach(self, listener: Listener) -> None:
        """A listener started: its socket can send."""
        if listener not in self.listeners:
            self.listeners.append(listener)

    def detach(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def datagram_received(self, message: Message, raw: bytes, peer: Address, listener: Listener) -> None:
        """The entry point: ``message`` decoded from ``raw`` (without any non-ESP marker) from ``peer``."""
        self._serially(self._route, message, raw, tuple(peer[:2]), listener)

    # --- one thing at a time --------------------------------------------------------------------------------------

    def _serially(self, job, *args) -> None:
        """Run ``job`` now, or after the job under way if this call came from inside it."""
        self._queue.append((job, args))
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                job, args = self._queue.popleft()
                try:
                    job(*args)
                except Exception:
                    self.counters["internal_error"] += 1
                    self.log.failure("bug: {job} raised; went on with the next message", job=job.__name__)
        finally:
            self._busy = False
            closed, self._closed_entries = self._closed_entries, []
            for entry in closed:
                entry.runners.clear()

    # --- routing ----------------------------------------------------------------------------------------------------

    def _route(self, message: Message, raw: bytes, peer: Address, listener: Listener) -> None:
        local = listener.local_address
        spi = message.spi
        entry = self.sas.get(spi)
        if entry is not None:
            self._under_sa(entry, message, raw, peer, local)
            return
        handler = self.exchange_handlers.get(message.exchange_type)
        if handler is not None and message.message_id == 0 and spi not in self.exchanges:
            handler(message, raw, peer, listener)
            return
        entry = self.exchanges.get(spi)
        if entry is not None:
            self.unproven.pop(entry, None)  # the peer has our responder cookie: it receives what we send
        if entry is None and message.responder_cookie == ZERO_COOKIE:
            if message.exchange_type in PHASE1_EXCHANGES:
                self._first_message(message, raw, peer, local)
                return
            entry = self.initiating.get(message.initiator_cookie)  # e.g. a Notify answering our first message
        elif entry is None:
            # The answer to our first message: the initiator learns the responder cookie from its own next Send,
            # once it has accepted the answer.
            entry = self.initiating.get(message.initiator_cookie)
        if entry is None:
            self.counters["unknown_sa"] += 1
            self.log.debug(
                "dropped exchange type {exchange} from {source}: no SA {cookies}",
                exchange=message.exchange_type, source=format_address(*peer), cookies=spi.hex(),
            )
            return
        self._deliver(entry.runners[PHASE1], message, raw, peer, local)

    def _first_message(self, message: Message, raw: bytes, peer: Address, local: Address) -> None:
        key = (message.initiator_cookie, peer)
        entry = self.first_messages.get(key)
        if entry is None:
            entry = self._new_responder(message, peer, local)
            if entry is None:
                return
        self._deliver(entry.runners[PHASE1], message, raw, peer, local)

    def _new_responder(self, message: Message, peer: Address, local: Address) -> SAEntry | None:
        source = peer[0]
        if self.half_open_by_source[source] >= self.halfopen_per_peer:
            return self._refuse("halfopen_cap_per_peer", peer)
        if len(self.half_open) >= self.halfopen_total and not self._evict_unproven():
            return self._refuse("halfopen_cap_total", peer)
        machine = self.factory.responder(message, peer, local, self.clock.seconds())
        if machine is None:
            self.counters["responder_refused"] += 1
            return None
        entry = SAEntry("responder", peer, local, icookie=message.initiator_cookie, source=source,
                        first_key=(message.initiator_cookie, peer))
        entry.runners[PHASE1] = Runner(machine, entry, PHASE1)
        self.first_messages[entry.first_key] = entry
        self.half_open.add(entry)
        self.half_open_by_source[source] += 1
        self.unproven[entry] = None
        entry.deadline = self.clock.callLater(self.exchange_timeout, self._serially, self._timed_out, entry)
        self.counters["phase1_responder_started"] += 1
        return entry

    def _evict_unproven(self) -> bool:
        """Drop the oldest half-open responder that never heard back from its peer; False if there is none."""
        if not self.unproven:
            return False
        entry = next(iter(self.unproven))
        self.counters["halfopen_evicted"] += 1
        self.log.debug("half-open cap: dropped {sa}, whose peer never answered", sa=entry.describe())
        self._close(entry, Phase1Failed(None, "evicted at the half-open cap"))
        return True

    def _refuse(self, counter: str, peer: Address) -> None:
        self.counters[counter] += 1
        self.log.debug("dropped a first message from {source}: {cap}", source=format_address(*peer), cap=counter)
        return None

    def _initiate(self, peer: Address, local: Address | None, options: dict, result: Deferred) -> None:
        local = local or self._default_local(peer)
        try:
            machine = self.factory.initiator(peer, local, **options)
        except Exception as e:
            self.counters["internal_error"] += 1
            self.log.failure("bug: the factory could not make an initiator for {peer}", peer=format_address(*peer))
            result.errback(Phase1Failed(None, f"no initiator: {type(e).__name__}"))
            return
        entry = SAEntry("initiator", peer, local, result=result)
        runner = entry.runners[PHASE1] = Runner(machine, entry, PHASE1)
        entry.deadline = self.clock.callLater(self.exchange_timeout, self._serially, self._timed_out, entry)
        self.counters["phase1_initiator_started"] += 1
        self._run(runner, lambda now: machine.start(now, self.rng))

    def _learn_responder_cookie(self, entry: SAEntry, rcookie: bytes) -> None:
        if entry.rcookie is not None or rcookie == ZERO_COOKIE or entry.closed:
            return
        entry.rcookie = rcookie
        if entry.icookie is not None:
            self.initiating.pop(entry.icookie, None)
            if entry.sa is None:
                self.exchanges.setdefault(entry.spi, entry)

    def _under_sa(self, entry: SAEntry, message: Message, raw: bytes, peer: Address, local: Address) -> None:
        xchg = message.exchange_type
        if xchg in PHASE1_EXCHANGES:
            runner = entry.runners.get(PHASE1)
            if runner is None:
                self.counters["phase1_after_established"] += 1
            else:  # a retransmission: the machine answers from its cache
                self._deliver(runner, message, raw, peer, local)
        elif xchg == ExchangeType.INFORMATIONAL:
            self._informational(entry, message)
        elif entry.sa.doi in self.phase2_handlers:
            handler = self.phase2_handlers[entry.sa.doi]
            runner = self._phase2_runner(entry)
            self._run(runner, lambda now: handler(entry.sa, message, raw, peer, local, now=now, rng=self.rng))
        else:
            self.counters[f"unhandled.{xchg}"] += 1
            self.log.debug("no handler for exchange type {exchange} under {sa}", exchange=xchg, sa=entry.describe())

    def _phase2_runner(self, entry: SAEntry) -> Runner:
        name = f"phase2.{entry.sa.doi}"
        runner = entry.runners.get(name)
        if runner is None:
            runner = entry.runners[name] = Runner(_Phase2(self.phase2_handlers[entry.sa.doi], entry), entry, name)
        return runner

    def _run_phase2(self, sa, step) -> None:
        entry = self.sas.get(sa.spi)
        if entry is None or entry.closed or entry.sa.doi not in self.phase2_handlers:
            self.counters["phase2_no_sa"] += 1
            return
        self._run(self._phase2_runner(entry), lambda now: step(now, self.rng))

    def _informational(self, entry: SAEntry, message: Message) -> None:
        """An Informational message under an established SA (RFC 2408 section 4.8)."""
        result = informational.process(entry.sa, message)
        for effect in result.effects:
            self._count(effect.name)
        if not isinstance(result, Received):
            self.log.debug("Informational from {sa} not acted on: {reason}", sa=entry.describe(), reason=result.reason)
            return
        dpd = entry.runners.get("dpd")
        if dpd is not None:
            self._run(dpd, lambda now: dpd.machine.received(result.items, now, self.rng))
        for item in result.items:
            if entry.closed:
                break
            if isinstance(item, DeleteReceived) and item.protocol_id == ProtocolID.ISAKMP and entry.sa.spi in item.spis:
                self._remove_sa(entry, "deleted by the peer")
            elif isinstance(item, NotifyReceived) and item.notify_type == NotifyType.INITIAL_CONTACT:
                self._initial_contact(entry.sa)
            elif isinstance(item, (DeleteReceived, NotifyReceived)):
                for hook in self.informational_hooks:
                    self._call_hook(hook, entry.sa, item)

    # --- machines and their effects ---------------------------------------------------------------------------------

    def _deliver(self, runner: Runner, message: Message, raw: bytes, peer: Address, local: Address) -> None:
        machine = runner.machine
        self._run(runner, lambda now: machine.receive(message, raw, now, self.rng, peer=peer, local=local))

    def _run(self, runner: Runner, step: Callable[[float], Iterable | None]) -> None:
        """Feed one input to a machine and carry out what it returns, in order."""
        try:
            effects = step(self.clock.seconds()) or ()
        except Exception:
            self.counters["internal_error"] += 1
            self.log.failure("bug: the {name} machine of {sa} raised", name=runner.name, sa=runner.owner.describe())
            if runner.name == PHASE1 and runner.owner.sa is None:
                self._close(runner.owner, Phase1Failed(None, "internal error"))
            return
        for effect in effects:
            self._apply(runner, effect)

    def _apply(self, runner: Runner, effect) -> None:
        entry = runner.owner
        if isinstance(effect, Send):
            self._send(runner, effect)
        elif isinstance(effect, Count):
            self._count(effect.name)
            if effect.reason:
                self.log.debug("{machine}: {counter}: {reason} ({sa})", machine=runner.name, counter=effect.name,
                               reason=effect.reason, sa=runner.owner.describe())
        elif isinstance(effect, StartTimer):
            self._start_timer(runner, effect.key, effect.delay)
        elif isinstance(effect, CancelTimer):
            call = runner.timers.pop(effect.key, None)
            if call is not None and call.active():
                call.cancel()
        elif isinstance(effect, Established):
            if runner.name == PHASE1:
                self._establish(entry, effect.sa)
            else:
                self._count(f"{runner.name}.established")
        elif isinstance(effect, Failed):
            if runner.name == PHASE1:
                self._phase1_failed(entry, effect)
            elif runner.name == "dpd":
                self._remove_sa(entry, f"dead peer: {effect.reason}")
            else:
                self._count(f"{runner.name}.failed.{_reason_kind(effect)}")
                self.log.info("{name} failed under {sa}: {reason}", name=runner.name, sa=entry.describe(),
                              reason=effect.reason)
        elif isinstance(effect, SendKeepalive):
            self._send_keepalive(entry, effect)
        elif isinstance(effect, Expire):
            self._remove_sa(entry, entry.ending or "lifetime over")
        elif isinstance(effect, Reauthenticate):
            again = self.initiate(effect.sa.peer, effect.sa.local, replaces=effect.sa)
            again.addErrback(lambda failure: failure.trap(Phase1Failed))  # already logged and counted
        else:
            self.counters["internal_error"] += 1
            self.log.error("bug: the {name} machine returned {kind}", name=runner.name, kind=type(effect).__name__)

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    def _send_keepalive(self, entry: SAEntry, keepalive: SendKeepalive) -> None:
        listener = self._listener_for(keepalive.peer, keepalive.local or entry.local, True)
        if listener is None or not listener.is_nat_t:
            self.counters["no_listener"] += 1
            return
        try:
            listener.send_keepalive(keepalive.peer)
        except Exception as e:  # the socket refused
            self.counters["send_error"] += 1
            self.log.warn("cannot send a NAT-keepalive to {peer}: {error}", peer=format_address(*keepalive.peer),
                          error=str(e))

    def _send(self, runner: Runner, send: Send) -> None:
        entry = runner.owner
        if runner.name == PHASE1 and len(send.data) >= 16:
            icookie, rcookie = send.data[:8], send.data[8:16]
            if entry.icookie is None and not entry.closed:
                entry.icookie = icookie
                self.initiating[icookie] = entry
            self._learn_responder_cookie(entry, rcookie)
        if entry.peer != send.peer:
            self._moved(entry, send.peer)
        listener = self._listener_for(send.peer, send.local or entry.local, send.nat_t)
        if listener is None:
            self.counters["no_listener"] += 1
            self.log.error(
                "no listener to send to {peer} from {local}{nat_t}", peer=format_address(*send.peer),
                local=format_address(*(send.local or entry.local or ("?", 0))), nat_t=" (NAT-T)" if send.nat_t else "",
            )
            return
        try:
            listener.send(send.data, send.peer)
        except Exception as e:  # the socket refused: EMSGSIZE, no route...
            self.counters["send_error"] += 1
            self.log.warn("cannot send {length} octets to {peer}: {error}", length=len(send.data),
                          peer=format_address(*send.peer), error=str(e))
            return
        self.counters["sent"] += 1

    def _moved(self, entry: SAEntry, peer: Address) -> None:
        """The machine now talks to ``peer`` (a NAT-T float, RFC 3947 section 4): the SA follows."""
        if entry.sa is not None and self.sas_by_peer.get(entry.peer) is entry:
            del self.sas_by_peer[entry.peer]
            self.sas_by_peer[peer] = entry
        self.log.info("{sa} moved to {peer}", sa=entry.describe(), peer=format_address(*peer))
        entry.peer = peer

    def _listener_for(self, peer: Address, local: Address | None, nat_t: bool) -> Listener | None:
        """The socket to send from: same address family and NAT-T role, then the best match of ``local``."""
        family = ":" in peer[0]
        best, best_score = None, -1
        for listener in self.listeners:
            address = listener.local_address
            if address is None or listener.is_nat_t != nat_t or (":" in address[0]) != family:
                continue
            score = 0
            if local is not None:
                score = 2 * (address[0] == local[0]) + (address[1] == local[1] or nat_t)
            if score > best_score:
                best, best_score = listener, score
        return best

    def _default_local(self, peer: Address) -> Address | None:
        listener = self._listener_for(peer, ("", peer[1]), False)
        return None if listener is None else listener.local_address

    def _start_timer(self, runner: Runner, key: str, delay: float) -> None:
        if runner.owner.closed:
            return
        old = runner.timers.get(key)
        if old is not None and old.active():
            old.cancel()
        runner.timers[key] = self.clock.callLater(delay, self._serially, self._fire, runner, key)

    def _fire(self, runner: Runner, key: str) -> None:
        runner.timers.pop(key, None)
        if runner.owner.closed:
            return
        self._run(runner, lambda now: runner.machine.timer(key, now, self.rng))

    # --- the life of an SA ------------------------------------------------------------------------------------------

    def _establish(self, entry: SAEntry, sa) -> None:
        if entry.closed or entry.sa is not None:
            return
        self._leave_half_open(entry)
        if entry.icookie is not None and self.initiating.get(entry.icookie) is entry:
            del self.initiating[entry.icookie]
        entry.sa = sa
        entry.icookie, entry.rcookie = sa.initiator_cookie, sa.responder_cookie
        if entry.peer != tuple(sa.peer):
            self._moved(entry, tuple(sa.peer))
        self.sas[sa.spi] = entry
        self.sas_by_peer[entry.peer] = entry
        self.sas_by_identity[sa.peer_id] = entry
        self.counters["phase1_established"] += 1
        self.log.info(
            "ISAKMP SA established: {sa}, peer ID type {id_type}, {nat}",
            sa=entry.describe(), id_type=sa.peer_id.id_type, nat="NAT-T" if sa.nat_t else "no NAT-T",
        )
        # The finished machine answers retransmissions of the peer's last message for a while, then goes with the
        # key material it holds.
        entry.deadline = self.clock.callLater(self.exchange_timeout, self._serially, self._forget_phase1, entry)
        if sa.initial_contact:
            self._initial_contact(sa)
        self._attach(entry, "lifetime", Lifetime(sa))
        self._attach(entry, "dpd", DPD(sa, delay=self.dpd_delay if self.dpd_delay and _peer_does_dpd(sa) else None))
        if needs_keepalive(sa):
            self._attach(entry, "nat_keepalive", Keepalive(sa))
        for hook in self.established_hooks:
            self._call_hook(hook, sa)
        if entry.result is not None:
            result, entry.result = entry.result, None
            result.callback(sa)

    def _attach(self, entry: SAEntry, name: str, machine) -> None:
        runner = entry.runners[name] = Runner(machine, entry, name)
        self._run(runner, lambda now: machine.start(now, self.rng))

    def _forget_phase1(self, entry: SAEntry) -> None:
        entry.deadline = None
        runner = entry.runners.pop(PHASE1, None)
        for call in runner.timers.values() if runner else ():
            if call.active():
                call.cancel()

    def _initial_contact(self, sa) -> None:
        """The peer of ``sa`` kept no other SA with us: ours with it are stale (RFC 2407 section 4.6.3.3)."""
        for old in informational.initial_contact_victims(sa, [e.sa for e in self.sas.values()]):
            self._remove_sa(self.sas[old.spi], "replaced after INITIAL-CONTACT")

    def _phase1_failed(self, entry: SAEntry, failed: Failed) -> None:
        if entry.closed or entry.sa is not None:
            return
        kind = _reason_kind(failed)
        self.counters[f"phase1_failed.{kind}"] += 1
        self.log.info("Phase 1 failed: {sa} in state {state}: {reason}", sa=entry.describe(),
                      state=entry.runners[PHASE1].machine.state, reason=failed.reason)
        self._close(entry, Phase1Failed(failed.notify, failed.reason))

    def _timed_out(self, entry: SAEntry) -> None:
        entry.deadline = None
        if entry.closed or entry.sa is not None:
            return
        self.counters["phase1_timeout"] += 1
        self.log.info("Phase 1 timed out after {seconds} s: {sa} in state {state}", seconds=self.exchange_timeout,
                      sa=entry.describe(), state=entry.runners[PHASE1].machine.state)
        self._close(entry, Phase1Failed(None, "exchange timeout"))

    def _remove_sa(self, entry: SAEntry, reason: str) -> None:
        if entry.closed:
            return
        sa = entry.sa
        for name in ("dpd", "lifetime"):
            runner = entry.runners.get(name)
            if runner is not None and not runner.machine.done:
                runner.machine.stop()
        self._close(entry, None)
        self.counters["phase1_removed"] += 1
        self.log.info("ISAKMP SA removed: {sa}: {reason}", sa=entry.describe(), reason=reason)
        for hook in self.removed_hooks:
            self._call_hook(hook, sa, reason)

    def _close(self, entry: SAEntry, failure: Phase1Failed | None) -> None:
        """Take ``entry`` out of every table and cancel its timers."""
        entry.closed = True
        self._leave_half_open(entry)
        if entry.icookie is not None and self.initiating.get(entry.icookie) is entry:
            del self.initiating[entry.icookie]
        spi = entry.spi
        for table in (self.exchanges, self.sas):
            if spi is not None and table.get(spi) is entry:
                del table[spi]
        if self.sas_by_peer.get(entry.peer) is entry:
            del self.sas_by_peer[entry.peer]
        if entry.sa is not None and self.sas_by_identity.get(entry.sa.peer_id) is entry:
            del self.sas_by_identity[entry.sa.peer_id]
        for runner in entry.runners.values():
            for call in runner.timers.values():
                if call.active():
                    call.cancel()
            runner.timers.clear()
        if entry.deadline is not None and entry.deadline.active():
            entry.deadline.cancel()
        entry.deadline = None
        if entry.result is not None and failure is not None:
            result, entry.result = entry.result, None
            result.errback(failure)
        # An entry and its runners point at each other: break the cycle once the effects under way are carried
        # out, so that reference counting frees a closed SA at once (the daemon freezes what survives a collection,
        # and a frozen cycle would wait for the hourly full collection).
        if self._busy:
            self._closed_entries.append(entry)
        else:
            entry.runners.clear()

    def _leave_half_open(self, entry: SAEntry) -> None:
        if entry.first_key is not None and self.first_messages.get(entry.first_key) is entry:
            del self.first_messages[entry.first_key]
        self.unproven.pop(entry, None)
        if entry in self.half_open:
            self.half_open.discard(entry)
            self.half_open_by_source[entry.source] -= 1
            if not self.half_open_by_source[entry.source]:
                del self.half_open_by_source[entry.source]
        if entry.deadline is not None and entry.deadline.active():
            entry.deadline.cancel()
        entry.deadline = None
        if entry.sa is None and entry.spi is not None and self.exchanges.get(entry.spi) is entry:
            del self.exchanges[entry.spi]

    def _call_hook(self, hook, *args) -> None:
        try:
            hook(*args)
        except Exception:
            self.counters["hook_error"] += 1
            self.log.failure("bug: hook {hook} raised", hook=getattr(hook, "__qualname__", repr(hook)))


def _peer_does_dpd(sa) -> bool:
    """Whether the peer announced DPD in Phase 1 (RFC 3706 section 5); probing a peer that did not would end
    its SA after the first unanswered round."""
    return supports_dpd([VendorID(v) for v in sa.peer_vendor_ids])


@attrs.define
class _Phase2:
    """A Phase 2 handler seen as a machine, for the timers its effects start."""

    handler: Phase2Handler
    entry: SAEntry
    done: bool = False
    state: str = "serving"

    def timer(self, key: str, now: float, rng):
        timer = getattr(self.handler, "timer", None)
        return timer(self.entry.sa, key, now, rng) if timer is not None else ()
