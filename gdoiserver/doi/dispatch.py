"""The Phase 2 dispatcher: the one handler the IKE engine hands every Phase 2 message to, whatever the DOI.

Under an established ISAKMP SA each Phase 2 exchange has its own M-ID (RFC 2408 section 3.1).  A message with a
new M-ID opens an exchange: the dispatcher decrypts it with the exchange's own IV chain,
``sa.last_iv.for_message_id(mid)`` (RFC 2409 appendix B), to see what it is, asks each DOI plugin in turn whether
it ``accepts`` it (a GDOI member may run GROUPKEY-PULL, exchange 32 like Quick Mode, under a Phase 1 SA of DOI 1),
and has the first that does make a ``responder``.  The machine gets the message as it came (still encrypted) and
every later message of that M-ID.  The peek proves nothing: the machine checks the HASH itself.

Timers of a machine come back through the engine under the key ``x<mid>:<key>``; a plugin's own under
``p<doi>:<key>``.  A finished machine lingers ``linger`` seconds to answer retransmissions (a lost last message),
then goes; its M-ID is remembered (the last ``remembered`` per SA), so that a replayed first message cannot open
the exchange again.  At most ``max_exchanges`` exchanges run at once under one SA.

The dispatcher does no I/O: what it returns are effects for the engine, and Counts name what it dropped
(``phase2_*``).  :meth:`attach` wires it to an engine (handlers, hooks); the engine's ``start_phase2(sa,
machine)`` starts an exchange we initiate through :meth:`adopt`.
"""

from collections import OrderedDict
from collections.abc import Iterable

import attrs

from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.message import Message
from gdoiserver.exchanges import informational
from gdoiserver.doi import DOIPlugin, Phase2Machine, StartPhase2
from gdoiserver.doi import plugins as registered_plugins
from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, StartTimer

MACHINE_TIMER, LINGER_TIMER, PLUGIN_TIMER = "x", "l", "p"


@attrs.define(eq=False)
class Slot:
    """One exchange under an SA: its machine, the plugin that made it, and whether it is only lingering."""

    plugin: DOIPlugin | None
    machine: Phase2Machine
    lingering: bool = False


@attrs.define(eq=False)
class SAState:
    """The exchanges of one ISAKMP SA: those running or lingering by M-ID, and the M-IDs of those gone."""

    exchanges: dict = attrs.Factory(dict)
    finished: OrderedDict = attrs.Factory(OrderedDict)

    def active(self) -> int:
        return sum(1 for slot in self.exchanges.values() if not slot.lingering)


def _mid_key(kind: str, mid: int, key: str = "") -> str:
    return f"{kind}{mid:08x}:{key}"


class Phase2Dispatcher:
    """Routes Phase 2 messages by (ISAKMP SA, M-ID) to DOI machines; see the module notes.

    ``plugins`` defaults to the registered ones (:func:`gdoiserver.doi.plugins`), asked lowest number first.
    """

    def __init__(self, plugins: Iterable[DOIPlugin] | None = None, *, linger: float = 60.0, max_exchanges: int = 32,
                 remembered: int = 256):
        self.plugins = list(registered_plugins() if plugins is None else plugins)
        self.by_number = {p.number: p for p in self.plugins}
        self.linger = linger
        self.max_exchanges = max_exchanges
        self.remembered = remembered
        self.sas: dict[bytes, SAState] = {}
        self.engine = None

    # --- wiring -----------------------------------------------------------------------------------------------------

    def attach(self, engine) -> None:
        """Serve ``engine``: its Phase 2 handler for every plugin's DOI number, and its SA and Informational hooks."""
        self.engine = engine
        for p in self.plugins:
            engine.register_phase2(p.number, self)
        engine.on_established(self._phase1_established)
        engine.on_removed(self._phase1_removed)
        engine.informational_hooks.append(self._informational)

    # --- the engine's Phase 2 handler ----------------------------------------------------------------------------

    def __call__(self, sa, message: Message, raw: bytes, peer, local, *, now: float, rng) -> list:
        """A Phase 2 message under the established ``sa``: to its exchange's machine, or to a new one."""
        state = self.sas.setdefault(sa.spi, SAState())
        mid = message.message_id
        slot = state.exchanges.get(mid)
        if slot is None:
            slot, refusal = self._open(sa, state, message)
            if slot is None:
                return [Count(refusal)]
        effects = slot.machine.receive(message, raw, now, rng, peer=peer, local=local)
        return self._machine_effects(sa, state, slot, effects, now, rng)

    def timer(self, sa, key: str, now: float, rng) -> list:
        """A timer of a machine (``x``), of a lingering machine's end (``l``) or of a plugin (``p``) fired."""
        state = self.sas.get(sa.spi)
        kind, rest = key[:1], key[1:]
        if kind == PLUGIN_TIMER:
            number, _, inner = rest.partition(":")
            p = self.by_number.get(int(number)) if number.isdigit() else None
            hook = getattr(p, "timer", None)
            return self._plugin_effects(sa, p, hook(sa, inner, now, rng), now, rng) if hook else []
        if state is None:
            return []
        mid_hex, _, inner = rest.partition(":")
        mid = int(mid_hex, 16)
        slot = state.exchanges.get(mid)
        if slot is None:
            return []
        if kind == LINGER_TIMER:
            self._forget(state, mid)
            return []
        return self._machine_effects(sa, state, slot, slot.machine.timer(inner, now, rng), now, rng)

    def adopt(self, sa, machine: Phase2Machine, now: float, rng, plugin: DOIPlugin | None = None) -> list:
        """Take on ``machine``, an exchange we initiate under ``sa``, and return the effects of its start.

        ``plugin`` gets its hooks (``established``...); by default the plugin of the machine's ``doi``, if any.
        """
        state = self.sas.setdefault(sa.spi, SAState())
        if machine.message_id is None:  # the machine leaves the M-ID to us: a fresh one, unused under this SA
            for _ in range(8):
                candidate = informational.message_id(rng)
                if candidate not in state.exchanges and candidate not in state.finished:
                    machine.message_id = candidate
                    break
        mid = machine.message_id
        if mid is None or mid in state.exchanges or mid in state.finished:
            return [Count("phase2_mid_in_use")]
        if state.active() >= self.max_exchanges:
            return [Count("phase2_too_many")]
        if plugin is None:
            plugin = self.by_number.get(getattr(machine, "doi", None))
        slot = state.exchanges[mid] = Slot(plugin, machine)
        return [Count("phase2_initiated"), *self._machine_effects(sa, state, slot, machine.start(now, rng), now, rng)]

    # --- new exchanges --------------------------------------------------------------------------------------------

    def _open(self, sa, state: SAState, message: Message) -> tuple[Slot | None, str]:
        """A machine for the first message of a new M-ID, or (None, the counter that says why not)."""
        mid = message.message_id
        if mid == 0:
            return None, "phase2_zero_mid"
        if mid in state.finished:
            return None, "phase2_finished_mid"
        if not message.encrypted:
            return None, "phase2_unencrypted"  # RFC 2409 section 5.5: everything after the header is encrypted
        if state.active() >= self.max_exchanges:
            return None, "phase2_too_many"
        first = self._peek(sa, message)
        if first is None:
            return None, "phase2_undecryptable"
        plugin = next((p for p in self.plugins if p.accepts(sa, first)), None)
        if plugin is None:
            return None, "phase2_no_doi"
        machine = plugin.responder(sa, first)
        if machine is None:
            return None, "phase2_refused"
        slot = state.exchanges[mid] = Slot(plugin, machine)
        return slot, ""

    def _peek(self, sa, message: Message) -> Message | None:
        """The first message decrypted, under the SA's DOI or else any plugin's payload registry; None if it does
        not decrypt to a payload chain under any."""
        chain = sa.last_iv.for_message_id(message.message_id)
        for doi in dict.fromkeys([sa.doi, *self.by_number]):
            try:
                return chain.decrypt(message, doi)[0]
            except DecodeError:
                continue
        return None

    # --- effects --------------------------------------------------------------------------------------------------

    def _machine_effects(self, sa, state: SAState, slot: Slot, effects, now: float, rng) -> list:
        """A machine's effects for the engine: timer keys made its own, plugin hooks on its outcome, and the
        lingering once it is done."""
        mid = slot.machine.message_id
        out = []
        for effect in effects or ():
            if isinstance(effect, StartTimer):
                out.append(StartTimer(_mid_key(MACHINE_TIMER, mid, effect.key), effect.delay))
            elif isinstance(effect, CancelTimer):
                out.append(CancelTimer(_mid_key(MACHINE_TIMER, mid, effect.key)))
            elif isinstance(effect, Established):
                out.append(effect)
                out += self._hook(sa, slot.plugin, "established", slot.machine, effect.sa, now, rng)
            elif isinstance(effect, Failed):
                out.append(effect)
                out += self._hook(sa, slot.plugin, "failed", slot.machine, effect.notify, effect.reason, now, rng)
            else:
                out.append(effect)
        if slot.machine.done and not slot.lingering and state.exchanges.get(mid) is slot:
            slot.lingering = True
            out.append(StartTimer(_mid_key(LINGER_TIMER, mid), self.linger))
        return out

    def _hook(self, sa, plugin, name: str, *args) -> list:
        hook = getattr(plugin, name, None)
        if hook is None:
            return []
        now, rng = args[-2], args[-1]
        return self._plugin_effects(sa, plugin, hook(sa, *args), now, rng)

    def _plugin_effects(self, sa, plugin, effects, now: float, rng) -> list:
        """A plugin hook's effects for the engine: its timer keys made its own, StartPhase2 carried out."""
        out = []
        for effect in effects or ():
            if isinstance(effect, StartTimer):
                out.append(StartTimer(f"{PLUGIN_TIMER}{plugin.number}:{effect.key}", effect.delay))
            elif isinstance(effect, CancelTimer):
                out.append(CancelTimer(f"{PLUGIN_TIMER}{plugin.number}:{effect.key}"))
            elif isinstance(effect, StartPhase2):
                out += self.adopt(sa, effect.machine, now, rng, plugin)
            else:
                out.append(effect)
        return out

    def _forget(self, state: SAState, mid: int) -> None:
        state.exchanges.pop(mid, None)
        state.finished[mid] = None
        while len(state.finished) > self.remembered:
            state.finished.popitem(last=False)

    # --- engine hooks ---------------------------------------------------------------------------------------------

    def _phase1_established(self, sa) -> None:
        for p in self.plugins:
            hook = getattr(p, "phase1_established", None)
            if hook is not None:
                self.engine.run_phase2(sa, lambda now, rng, p=p, hook=hook: self._plugin_effects(
                    sa, p, hook(sa, now, rng), now, rng))

    def _phase1_removed(self, sa, reason: str) -> None:
        self.sas.pop(sa.spi, None)
        now = self.engine.clock.seconds()
        for p in self.plugins:
            hook = getattr(p, "removed", None)
            if hook is not None:
                hook(sa, reason, now)

    def _informational(self, sa, item) -> None:
        """An authenticated Notify or Delete the core did not act on: to the running machines that listen
        (``notified``), then to every plugin's ``informational`` hook."""
        self.engine.run_phase2(sa, lambda now, rng: self.informational(sa, item, now, rng))

    def informational(self, sa, item, now: float, rng) -> list:
        """The effects of an authenticated Informational item under ``sa`` (see :meth:`_informational`)."""
        out = []
        state = self.sas.get(sa.spi)
        for slot in list(state.exchanges.values()) if state else ():
            notified = getattr(slot.machine, "notified", None)
            if notified is not None and not slot.machine.done:
                out += self._machine_effects(sa, state, slot, notified(item, now, rng), now, rng)
        for p in self.plugins:
            out += self._hook(sa, p, "informational", item, now, rng)
        return out
