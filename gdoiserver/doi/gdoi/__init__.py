"""The GDOI (RFC 6407, DOI 2) plugin: GROUPKEY-PULL for the key server, and the group member's initiator.

Importing this package registers :data:`PLUGIN` with :mod:`gdoiserver.doi`.  It answers GROUPKEY-PULL once it has
a key server policy (:meth:`GDOIPlugin.configure`); until then it refuses every request (``responder`` is None).
A member registers with :class:`gdoiserver.doi.gdoi.pull.PullInitiator` under an ISAKMP SA of its own.

GDOI members authenticate in Phase 1 under DOI 1 or 2 (RFC 6407 section 2), so the plugin looks at the exchange:
GROUPKEY-PULL is exchange 32, as IPsec DOI Quick Mode is, but its first message carries an ID naming a group and
no SA payload, where Quick Mode's first message always has an SA (RFC 2409 section 5.5).
"""

from typing import ClassVar

from gdoiserver.codec.constants import DOI, ExchangeType, IDType, PayloadType
from gdoiserver.codec.message import Message
from gdoiserver.doi import register
from gdoiserver.exchanges.phase1 import ISAKMPSA

#: The ID types that name a group in GROUPKEY-PULL message 1 (RFC 6407 section 5.1.1; RFC 8052 section 4).
GROUP_ID_TYPES = frozenset({IDType.KEY_ID, IDType.OID})


class GDOIPlugin:
    """DOI 2: answers GROUPKEY-PULL with :class:`~gdoiserver.doi.gdoi.pull.PullResponder`."""

    number: ClassVar[int] = DOI.GDOI
    name: ClassVar[str] = "GDOI"

    def __init__(self, key_server=None):
        #: The :class:`~gdoiserver.doi.gdoi.pull.KeyServerPolicy` the responders share, or None (no groups).
        self.key_server = key_server

    def configure(self, groups, rng, **options) -> None:
        """Serve ``groups`` (GroupPolicy objects, e.g. ``Config.groups``); ``options`` go to KeyServerPolicy."""
        from gdoiserver.doi.gdoi.pull import KeyServerPolicy
        from gdoiserver.group.keys import GroupTable

        self.key_server = KeyServerPolicy(GroupTable(groups, rng), **options)

    def accepts(self, sa: ISAKMPSA, first: Message) -> bool:
        """A GROUPKEY-PULL request: exchange 32 with an ID of a group type and no SA payload."""
        if first.exchange_type != ExchangeType.GROUPKEY_PULL:
            return False
        types = [p.payload_type for p in first.payloads]
        if PayloadType.SA in types:
            return False
        return any(p.payload_type == PayloadType.ID and p.id_type in GROUP_ID_TYPES for p in first.payloads)

    def responder(self, sa: ISAKMPSA, first: Message):
        """A responder for the request ``first`` begins, or None while no groups are configured."""
        from gdoiserver.doi.gdoi.pull import PullResponder

        if self.key_server is None:
            return None
        return PullResponder(sa, first.message_id, policy=self.key_server)

    def notify_names(self) -> dict[int, str]:
        """RFC 6407 defines no Notify types of its own."""
        return {}


PLUGIN = register(GDOIPlugin())
