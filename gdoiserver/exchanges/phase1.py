"""Phase 1 (RFC 2409): the policy a machine takes, and the ISAKMP SA it produces.

The Main Mode and Aggressive Mode machines live in :mod:`gdoiserver.exchanges.main_mode` and
:mod:`gdoiserver.exchanges.aggressive_mode`; both take a :class:`Phase1Policy` and end with an
``Established(ISAKMPSA)`` effect.
"""

from collections.abc import Callable

import attrs

from gdoiserver.codec.cipher import IVChain
from gdoiserver.codec.payloads import Identification
from gdoiserver.crypto.keys import Phase1Keys
from gdoiserver.exchanges.effects import Address

INITIATOR = "initiator"
RESPONDER = "responder"


@attrs.frozen
class Phase1Proposal:
    """One acceptable Phase 1 transform (RFC 2409 appendix A numbers; key length in bits, None if fixed)."""

    encryption: int
    key_length: int | None
    hash: int
    auth: int
    group: int
    lifetime: int = 28800


@attrs.frozen
class Phase1Policy:
    """What a Phase 1 machine may accept and offer.

    ``proposals`` are in order of preference: a responder picks the first of its own that the peer offered
    (section 5 of the issue: "the responder picks by the configured order of preference").  Pre-shared keys come
    from ``psk_for_address`` in Main Mode (the peer's ID is encrypted when the key is needed) and from
    ``psk_for_identity`` in Aggressive Mode.  ``credentials`` and ``trust`` serve signature authentication.
    """

    proposals: tuple[Phase1Proposal, ...]
    psk_for_address: Callable[[str], bytes | None] = attrs.field(default=lambda addr: None, repr=False)
    psk_for_identity: Callable[[Identification], bytes | None] = attrs.field(default=lambda ident: None, repr=False)
    local_id: Identification | None = None
    credentials: object | None = None
    trust: object | None = None
    allow_weak_groups: bool = False
    allow_legacy_3des: bool = False
    nat_t: bool = True
    retransmit_initial: float = 2.0
    retransmit_tries: int = 5
    exchange_timeout: float = 60.0
    #: Vendor IDs sent in the first message of each side besides the NAT-T one (e.g. DPD's, RFC 3706 section 2).
    vendor_ids: tuple[bytes, ...] = ()
    #: Our UDP port for NAT-T: a message that arrives on it has floated (RFC 3947 section 4).
    nat_t_port: int = 4500


@attrs.frozen
class ISAKMPSA:
    """An established ISAKMP SA: what Phase 2, Informational and GDOI exchanges need from Phase 1.

    ``last_iv`` is the Phase 1 CBC chain after the last Phase 1 message: Phase 2 and Informational exchanges start
    from ``last_iv.for_message_id(mid)`` (RFC 2409 appendix B).  ``keys`` never shows in a repr.
    """

    initiator_cookie: bytes
    responder_cookie: bytes
    role: str
    doi: int
    proposal: Phase1Proposal
    keys: Phase1Keys = attrs.field(repr=False)
    last_iv: IVChain = attrs.field(repr=False)
    local: Address
    peer: Address
    local_id: Identification
    peer_id: Identification
    established_at: float
    nat_t: bool = False
    peer_certificate: bytes | None = attrs.field(default=None, repr=False)
    #: The peer's Vendor ID payloads in Phase 1 (DPD support is announced there, RFC 3706 section 2).
    peer_vendor_ids: tuple[bytes, ...] = ()
    #: The peer sent INITIAL-CONTACT in its last Phase 1 message (RFC 2407 section 4.6.3.3).
    initial_contact: bool = False
    #: NAT-D results (RFC 3947 section 3.2): a NAT in front of us (we send keepalives, RFC 3948 section 4), or
    #: in front of the peer.
    local_behind_nat: bool = False
    peer_behind_nat: bool = False

    @property
    def spi(self) -> bytes:
        return self.initiator_cookie + self.responder_cookie

    @property
    def expires_at(self) -> float:
        return self.established_at + self.proposal.lifetime
