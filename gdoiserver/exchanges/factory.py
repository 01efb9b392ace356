"""The Phase 1 machine factory the IKE engine asks for machines: Main Mode and Aggressive Mode, by exchange type."""

import attrs

from gdoiserver.codec.constants import ExchangeType
from gdoiserver.exchanges.aggressive_mode import AggressiveMode
from gdoiserver.exchanges.main_mode import MainMode
from gdoiserver.exchanges.phase1 import Phase1Policy

#: Exchange type -> machine class for a first message (RFC 2409 sections 5 and 5.4).
MODES = {ExchangeType.MAIN_MODE: MainMode, ExchangeType.AGGRESSIVE: AggressiveMode}
#: Names for the initiator's ``mode`` option (config and command line).
MODE_NAMES = {"main": MainMode, "aggressive": AggressiveMode}


@attrs.frozen
class Phase1Factory:
    """Makes Phase 1 machines under one policy; the engine calls it for each new exchange."""

    policy: Phase1Policy

    def responder(self, message, peer, local, now):
        """A responder for a first Main Mode or Aggressive Mode message; None for anything else."""
        cls = MODES.get(message.exchange_type)
        return None if cls is None else cls.responder(self.policy)

    def initiator(self, peer, local, *, mode: str = "main", replaces=None, **options):
        """An initiator towards ``peer``; ``mode`` is "main" or "aggressive".  A re-authentication (``replaces``)
        sends INITIAL-CONTACT only if the first SA did."""
        cls = MODE_NAMES[mode]
        return cls.initiator(self.policy, local=local, peer=peer, **options)
