"""DOI plugins (RFC 2408 section 2.1): what a Domain of Interpretation adds to the ISAKMP core.

The core (codec, Phase 1, Informational, the engine) knows no DOI's details.  A DOI is a package under
``gdoiserver/doi/`` that registers a :class:`DOIPlugin` here by its number: 1 for the IPsec DOI (RFC 2407,
``gdoiserver.doi.ipsec``) and 2 for GDOI (RFC 6407, ``gdoiserver.doi.gdoi``).  Adding a DOI is adding a package.
"""

from collections.abc import Iterable
from typing import ClassVar, Protocol

from gdoiserver.codec.message import Message


class Phase2Machine(Protocol):
    """One Phase 2 exchange under an ISAKMP SA (one M-ID), with the same inputs as the Phase 1 machines.

    ``receive`` takes the message as decoded (still encrypted): the machine decrypts it with its own IV chain,
    ``sa.last_iv.for_message_id(message_id)`` (RFC 2409 appendix B).
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


_PLUGINS: dict[int, DOIPlugin] = {}


def register(plugin: DOIPlugin) -> DOIPlugin:
    """Register ``plugin`` under its DOI number; a number is registered once."""
    if plugin.number in _PLUGINS and _PLUGINS[plugin.number] is not plugin:
        raise ValueError(f"DOI {plugin.number} is already registered")
    _PLUGINS[plugin.number] = plugin
    return plugin


def plugins() -> Iterable[DOIPlugin]:
    """The registered DOIs, lowest number first."""
    return [_PLUGINS[n] for n in sorted(_PLUGINS)]


def plugin(number: int) -> DOIPlugin | None:
    return _PLUGINS.get(number)
