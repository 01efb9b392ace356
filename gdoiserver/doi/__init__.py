"""DOI plugins (RFC 2408 section 2.1): what a Domain of Interpretation adds to the ISAKMP core.

The core (codec, Phase 1, Informational, the engine) knows no DOI's details.  A DOI is a package under
``gdoiserver/doi/`` that registers a :class:`DOIPlugin` here by its number: 1 for the IPsec DOI (RFC 2407,
``gdoiserver.doi.ipsec``) and 2 for GDOI (RFC 6407, ``gdoiserver.doi.gdoi``).  Adding a DOI is adding a package.

:class:`gdoiserver.doi.dispatch.Phase2Dispatcher` is the one Phase 2 handler of the engine: it picks a plugin for
each new Phase 2 exchange (by ``accepts``), makes its machine (``responder``), and routes the exchange's later
messages and timers to that machine.  A plugin may also keep state across exchanges (the IPsec SAs it set up, a
group's members) through the optional hooks of :class:`StatefulDOI`.
"""

from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

import attrs

from gdoiserver.codec.message import Message


class Phase2Machine(Protocol):
    """One Phase 2 exchange under an ISAKMP SA (one M-ID), with the same inputs as the Phase 1 machines.

    ``receive`` takes the message as decoded (still encrypted): the machine decrypts it with its own IV chain,
    ``sa.last_iv.for_message_id(message_id)`` (RFC 2409 appendix B).  A machine may also have
    ``notified(item, now, rng) -> effects``: an authenticated Informational item (a Notify or a Delete,
    :mod:`gdoiserver.exchanges.informational`) came from the peer while the exchange runs (the peer refused it).
    """

    message_id: int
    done: bool
    state: str

    def start(self, now: float, rng) -> list: ...

    def receive(self, message: Message, raw: bytes, now: float, rng, *, peer, local) -> list: ...

    def timer(self, key: str, now: float, rng) -> list: ...


class DOIPlugin(Protocol):
    """A DOI: its number, its Phase 2 exchanges and the names of its notify types."""

    number: ClassVar[int]
    name: ClassVar[str]

    def accepts(self, sa, first: Message) -> bool:
        """Whether this DOI serves a new Phase 2 exchange whose first message, decrypted, is ``first``.

        GDOI members may authenticate under a Phase 1 SA of DOI 1 or 2 (RFC 6407 section 3.1): the exchange, not
        the Phase 1 DOI alone, decides (an SA payload names its DOI; GROUPKEY-PULL's first message has none).
        """

    def responder(self, sa, first: Message) -> Phase2Machine | None:
        """A machine that answers the exchange ``first`` begins, or None to refuse it."""

    def notify_names(self) -> dict[int, str]:
        """Names of this DOI's own Notify types, for logs."""


class StatefulDOI(Protocol):
    """Optional hooks of a plugin; the dispatcher calls each one only where the plugin has it.

    Every hook returns effects (:mod:`gdoiserver.exchanges.effects`, plus :class:`StartPhase2`) that the engine
    carries out under the ISAKMP SA ``sa``.  A ``StartTimer`` a hook returns comes back as ``timer(sa, key, ...)``
    of the same plugin while ``sa`` lives.
    """

    def phase1_established(self, sa, now: float, rng) -> Iterable:
        """A new ISAKMP SA (of any DOI): e.g. start a Phase 2 exchange that the configuration asks for."""

    def established(self, sa, machine: Phase2Machine, result: Any, now: float, rng) -> Iterable:
        """A machine of this plugin returned ``Established(result)``."""

    def failed(self, sa, machine: Phase2Machine, notify: int | None, reason: str, now: float, rng) -> Iterable:
        """A machine of this plugin returned ``Failed``."""

    def timer(self, sa, key: str, now: float, rng) -> Iterable:
        """A timer the plugin started under ``sa`` fired."""

    def informational(self, sa, item, now: float, rng) -> Iterable:
        """An authenticated Notify or Delete under ``sa`` that the core does not act on itself."""

    def removed(self, sa, reason: str, now: float) -> None:
        """The ISAKMP SA ``sa`` is gone (expired, deleted, dead peer): forget what hangs on it."""


@attrs.frozen
class StartPhase2:
    """Effect of a plugin hook: start ``machine`` (an exchange we initiate) under the hook's ISAKMP SA."""

    machine: Any


_PLUGINS: dict[int, DOIPlugin] = {}


def register(plugin: DOIPlugin) -> DOIPlugin:
    """Register ``plugin`` under its DOI number; a number is registered once."""
    if plugin.number in _PLUGINS and _PLUGINS[plugin.number] is not plugin:
        raise ValueError(f"DOI {plugin.number} is already registered")
    _PLUGINS[plugin.number] = plugin
    return plugin


def unregister(plugin: DOIPlugin) -> None:
    """Forget ``plugin`` (a service that stops, a test)."""
    if _PLUGINS.get(plugin.number) is plugin:
        del _PLUGINS[plugin.number]


def plugins() -> Iterable[DOIPlugin]:
    """The registered DOIs, lowest number first."""
    return [_PLUGINS[n] for n in sorted(_PLUGINS)]


def plugin(number: int) -> DOIPlugin | None:
    return _PLUGINS.get(number)
