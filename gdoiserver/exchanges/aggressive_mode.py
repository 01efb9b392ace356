"""Aggressive Mode (RFC 2409 sections 5.1 and 5.4) as initiator and responder, sans-IO.

    Initiator                              Responder
    AM1  HDR, SA, KE, Ni, IDii [, CR] [, VID...] ->
                                      <-   AM2  HDR, SA, KE, Nr, IDir, [CERT,] HASH_R|SIG_R
                                                [, NAT-D, NAT-D] [, CR] [, VID...]
    AM3  HDR*, [CERT,] HASH_I|SIG_I [, NAT-D, NAT-D] [, N(INITIAL-CONTACT)] ->

The KE goes out before any choice, so every suite the initiator offers shares one DH group (RFC 2409 section
5: Aggressive Mode cannot negotiate the group).  The pre-shared key is picked by the peer's identity, which
travels in the clear.  We send AM3 encrypted; a peer's AM3 may come either way, its NAT-D after the hash as
strongSwan writes it (RFC 3947 section 3.2).  With a NAT on the path the initiator sends AM3 from and to port
4500 (RFC 3947 section 4).  Nothing answers AM3: a lost AM3 leaves the responder to its exchange timeout.
"""

from typing import ClassVar

import attrs

from gdoiserver.codec.constants import ExchangeType, NotifyType, OakleyAuth
from gdoiserver.codec.payloads import KE, SA, Identification, Nonce
from gdoiserver.exchanges import proposals
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER
from gdoiserver.exchanges.phase1_common import (
    EXCHANGE_TIMEOUT,
    NONCE_SIZE,
    ZERO_COOKIE,
    Abort,
    Arrival,
    Drop,
    Phase1Exchange,
    check_peer_id,
    first,
    local_identification,
    new_cookie,
    sa_body,
    vendor_ids,
)


@attrs.define(eq=False)
class AggressiveMode(Phase1Exchange):
    """One Aggressive Mode exchange: ``AggressiveMode.initiator(policy, local=..., peer=...)`` or
    ``AggressiveMode.responder(policy)``; see :class:`Phase1Exchange` for the inputs and effects."""

    EXCHANGE: ClassVar[int] = ExchangeType.AGGRESSIVE

    # --- initiator ----------------------------------------------------------------------------------------------

    def _start(self, now, rng):
        """AM1: our SA (one DH group), KE, Ni and IDii."""
        usable = [p for p in proposals.usable(self.policy) if self._may_offer(p)]
        if not usable:
            raise Abort(None, "no usable Phase 1 proposal (credentials missing?)")
        group = usable[0].group
        self.offered = tuple(p for p in usable if p.group == group)
        # Until the choice, the group and the hash of our first suite stand for the exchange's.
        self.proposal = self.offered[0]
        if self.initiator_cookie is None:
            self.initiator_cookie = new_cookie(rng)
        self.g_xi = self._new_dh(rng)
        self.ni_b = rng(NONCE_SIZE)
        self.local_id = local_identification(self.policy, self.local)
        sa = proposals.sa_payload(self.offered, self.doi)
        self.sai_b = sa.encode_body(None)
        crs = self._certificate_requests(any(proposals.is_signature(p.auth) for p in self.offered))
        payloads = [sa, KE(self.g_xi), Nonce(self.ni_b), self.local_id, *crs,
                    *vendor_ids(self.policy, self.policy.nat_t)]
        self.state = "AM1_SENT"
        send = self._send(self._message(payloads).encode())
        return [*self._awaiting(send), self._start_timer(EXCHANGE_TIMEOUT, self.policy.exchange_timeout)]

    def _may_offer(self, p) -> bool:
        # The pre-shared key is looked up by the responder's ID, which only AM2 brings.
        return p.auth == OakleyAuth.PRE_SHARED_KEY or self._can_authenticate(p, None)

    def _on_am2(self, a: Arrival):
        """AM2: the responder's choice, KE, nonce, ID and HASH_R or SIG_R; answer with AM3, established."""
        payloads = a.message.payloads
        if not payloads or not isinstance(payloads[0], SA):
            raise Drop("dropped_malformed")
        try:
            self.proposal = proposals.accept_reply(self.offered, payloads[0])
        except proposals.NoProposalChosen as e:
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, str(e)) from None
        self._check_clear(a, 2, self.proposal.auth)
        if a.message.responder_cookie == ZERO_COOKIE:
            raise Drop("dropped_malformed")
        self.responder_cookie = a.message.responder_cookie
        self.g_xr, self.nr_b = self._ke_nonce(payloads)
        self.g_xy = self._shared_secret(self.g_xr)
        self.peer_id = first(payloads, Identification)
        check_peer_id(self.peer_id)
        if self.proposal.auth == OakleyAuth.PRE_SHARED_KEY:
            self.psk = self.policy.psk_for_identity(self.peer_id)
            if self.psk is None:
                raise Abort(NotifyType.INVALID_ID_INFORMATION, "no pre-shared key for the responder's ID")
        self._note_vendor_ids(payloads)
        self._derive_keys()
        self._verify_peer(payloads, a.now)
        self._detect_nat(a, payloads)
        self._float_initiator()
        am3 = [*self._auth_payloads(), *self._nat_d(), *self._initial_contact()]
        send = self._answer(a, self._send(self._encrypt(am3)))
        return [*send, *self._established(a.now)]

    # --- responder ----------------------------------------------------------------------------------------------

    def _on_am1(self, a: Arrival):
        """AM1: choose by our preference among the suites we can authenticate for IDii; answer with AM2."""
        self._first_arrival(a)
        self._check_clear(a, 1, answer=True)
        payloads = a.message.payloads
        sa = first(payloads, SA)
        self.doi = sa.doi
        self.peer_id = first(payloads, Identification)
        try:
            check_peer_id(self.peer_id)
        except Abort as e:
            raise Abort(e.notify, e.reason, answer=True) from None
        self.psk = self.policy.psk_for_identity(self.peer_id)
        try:
            choice = proposals.choose(self.policy, sa, lambda p: self._can_authenticate(p, self.psk))
        except proposals.NoProposalChosen as e:
            if self.psk is None and self._would_choose_psk(sa):
                raise Abort(NotifyType.INVALID_ID_INFORMATION, "no pre-shared key for the initiator's ID",
                            answer=True) from None
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, str(e), answer=True) from None
        self.proposal = choice.proposal
        self.initiator_cookie = a.message.initiator_cookie
        if self.responder_cookie is None:
            self.responder_cookie = new_cookie(a.rng)
        self.sai_b = sa_body(a.raw)
        self._note_vendor_ids(payloads)
        self.g_xi, self.ni_b = self._ke_nonce(payloads)
        self.g_xr = self._new_dh(a.rng)
        self.g_xy = self._shared_secret(self.g_xi)
        self.nr_b = a.rng(NONCE_SIZE)
        self._derive_keys()
        self.local_id = local_identification(self.policy, self.local)
        am2 = [choice.reply, KE(self.g_xr), Nonce(self.nr_b), self.local_id, *self._auth_payloads(),
               *self._nat_d(), *self._certificate_requests(), *vendor_ids(self.policy, self.nat_t_agreed)]
        send = self._answer(a, self._send(self._message(am2).encode()))
        return [*send, self._start_timer(EXCHANGE_TIMEOUT, self.policy.exchange_timeout)]

    def _would_choose_psk(self, sa) -> bool:
        """Whether a pre-shared-key suite would match if we had a key for this ID (INVALID-ID-INFORMATION then)."""
        try:
            proposals.choose(self.policy, sa, lambda p: p.auth == OakleyAuth.PRE_SHARED_KEY)
        except proposals.NoProposalChosen:
            return False
        return True

    def _on_am3(self, a: Arrival):
        """AM3: the initiator's HASH_I or SIG_I, encrypted or not; the ISAKMP SA is established."""
        message, chain = self._open(a, 3)
        self._verify_peer(message.payloads, a.now)
        self._detect_nat(a, message.payloads)
        # HASH_I does not cover a Notify: only an encrypted AM3 vouches for INITIAL-CONTACT (RFC 2409 section 5.4)
        self._note_notifications(message.payloads if a.message.encrypted else ())
        self.iv = chain
        self._float_responder(a)
        return self._established(a.now)

    TRANSITIONS: ClassVar[dict] = {
        (INITIATOR, "AM1_SENT"): (2, _on_am2, "ESTABLISHED"),
        (RESPONDER, "START"): (1, _on_am1, "AM2_SENT"),
        (RESPONDER, "AM2_SENT"): (3, _on_am3, "ESTABLISHED"),
    }

