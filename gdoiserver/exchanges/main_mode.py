"""Main Mode (Identity Protection, RFC 2409 sections 5.1 and 5.4) as initiator and responder, sans-IO.

    Initiator                              Responder
    MM1  HDR, SA [, VID...]           ->
                                      <-   MM2  HDR, SA [, VID...]
    MM3  HDR, KE, Ni [, NAT-D, NAT-D] [, CR] ->
                                      <-   MM4  HDR, KE, Nr [, NAT-D, NAT-D] [, CR]
    MM5  HDR*, IDii, [CERT,] HASH_I|SIG_I [, N(INITIAL-CONTACT)] ->
                                      <-   MM6  HDR*, IDir, [CERT,] HASH_R|SIG_R

The responder picks the pre-shared key by the peer's address: the peer's ID is encrypted in MM5, and the key is
needed to decrypt it.  NAT-D travels in MM3 and MM4 when both sides sent RFC 3947's vendor ID; when it shows a
NAT, the initiator sends MM5 from and to port 4500, and the responder moves once MM5 arrives there (RFC 3947
section 4).
"""

from typing import ClassVar

import attrs

from gdoiserver.codec.constants import ExchangeType, NotifyType
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
class MainMode(Phase1Exchange):
    """One Main Mode exchange: ``MainMode.initiator(policy, local=..., peer=...)`` or
    ``MainMode.responder(policy)``; see :class:`Phase1Exchange` for the inputs and effects."""

    EXCHANGE: ClassVar[int] = ExchangeType.MAIN_MODE

    # --- initiator ----------------------------------------------------------------------------------------------

    def _start(self, now, rng):
        """MM1: our SA with every suite we can authenticate with for this peer, and our vendor IDs."""
        self.psk = self.policy.psk_for_address(self.peer[0])
        self.offered = tuple(p for p in proposals.usable(self.policy) if self._can_authenticate(p, self.psk))
        if not self.offered:
            raise Abort(None, "no usable Phase 1 proposal for this peer (pre-shared key or credentials missing?)")
        if self.initiator_cookie is None:
            self.initiator_cookie = new_cookie(rng)
        sa = proposals.sa_payload(self.offered, self.doi)
        self.sai_b = sa.encode_body(None)
        self.state = "MM1_SENT"
        send = self._send(self._message([sa, *vendor_ids(self.policy, self.policy.nat_t)]).encode())
        return [*self._awaiting(send), self._start_timer(EXCHANGE_TIMEOUT, self.policy.exchange_timeout)]

    def _on_mm2(self, a: Arrival):
        """MM2: the responder's choice; answer with MM3 (KE, Ni, and NAT-D when both sides do NAT-T)."""
        self._check_clear(a, 2)
        if a.message.responder_cookie == ZERO_COOKIE:
            raise Drop("dropped_malformed")
        try:
            self.proposal = proposals.accept_reply(self.offered, first(a.message.payloads, SA))
        except proposals.NoProposalChosen as e:
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, str(e)) from None
        self.responder_cookie = a.message.responder_cookie
        self._note_vendor_ids(a.message.payloads)
        self.g_xi = self._new_dh(a.rng)
        self.ni_b = a.rng(NONCE_SIZE)
        payloads = [KE(self.g_xi), Nonce(self.ni_b), *self._nat_d(), *self._certificate_requests()]
        return self._awaiting(self._send(self._message(payloads).encode()))

    def _on_mm4(self, a: Arrival):
        """MM4: the responder's KE and nonce give the keys; answer with the encrypted MM5."""
        self._check_clear(a, 4)
        self.g_xr, self.nr_b = self._ke_nonce(a.message.payloads)
        self.g_xy = self._shared_secret(self.g_xr)
        self._detect_nat(a, a.message.payloads)
        self._derive_keys()
        self._float_initiator()
        self.local_id = local_identification(self.policy, self.local)
        payloads = [self.local_id, *self._auth_payloads(), *self._initial_contact()]
        return self._awaiting(self._send(self._encrypt(payloads)))

    def _on_mm6(self, a: Arrival):
        """MM6: the responder's ID and HASH_R or SIG_R; the ISAKMP SA is established."""
        message, chain = self._open(a, 6)
        self.peer_id = first(message.payloads, Identification)
        check_peer_id(self.peer_id)
        self._verify_peer(message.payloads, a.now)
        self.iv = chain
        return self._established(a.now)

    # --- responder ----------------------------------------------------------------------------------------------

    def _on_mm1(self, a: Arrival):
        """MM1: choose from the initiator's SA by our order of preference; answer with MM2."""
        self._first_arrival(a)
        self._check_clear(a, 1, answer=True)
        sa = first(a.message.payloads, SA)
        self.doi = sa.doi
        self.psk = self.policy.psk_for_address(self.peer[0])
        try:
            choice = proposals.choose(self.policy, sa, lambda p: self._can_authenticate(p, self.psk))
        except proposals.NoProposalChosen as e:
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, str(e), answer=True) from None
        self.proposal = choice.proposal
        self.initiator_cookie = a.message.initiator_cookie
        if self.responder_cookie is None:
            self.responder_cookie = new_cookie(a.rng)
        self.sai_b = sa_body(a.raw)
        self._note_vendor_ids(a.message.payloads)
        payloads = [choice.reply, *vendor_ids(self.policy, self.nat_t_agreed)]
        send = self._answer(a, self._send(self._message(payloads).encode()))
        return [*send, self._start_timer(EXCHANGE_TIMEOUT, self.policy.exchange_timeout)]

    def _on_mm3(self, a: Arrival):
        """MM3: the initiator's KE and nonce; answer with MM4 and derive the keys."""
        self._check_clear(a, 3)
        self.g_xi, self.ni_b = self._ke_nonce(a.message.payloads)
        self.g_xr = self._new_dh(a.rng)
        self.g_xy = self._shared_secret(self.g_xi)
        self.nr_b = a.rng(NONCE_SIZE)
        self._detect_nat(a, a.message.payloads)
        self._derive_keys()
        payloads = [KE(self.g_xr), Nonce(self.nr_b), *self._nat_d(), *self._certificate_requests()]
        return self._answer(a, self._send(self._message(payloads).encode()))

    def _on_mm5(self, a: Arrival):
        """MM5: the initiator's ID and HASH_I or SIG_I; answer with MM6, and the ISAKMP SA is established."""
        message, chain = self._open(a, 5)
        self.peer_id = first(message.payloads, Identification)
        check_peer_id(self.peer_id)
        self._verify_peer(message.payloads, a.now)
        self._note_notifications(message.payloads)
        self.iv = chain
        self._float_responder(a)
        self.local_id = local_identification(self.policy, self.local)
        mm6 = self._answer(a, self._send(self._encrypt([self.local_id, *self._auth_payloads()])))
        return [*mm6, *self._established(a.now)]

    TRANSITIONS: ClassVar[dict] = {
        (INITIATOR, "MM1_SENT"): (2, _on_mm2, "MM3_SENT"),
        (INITIATOR, "MM3_SENT"): (4, _on_mm4, "MM5_SENT"),
        (INITIATOR, "MM5_SENT"): (6, _on_mm6, "ESTABLISHED"),
        (RESPONDER, "START"): (1, _on_mm1, "MM2_SENT"),
        (RESPONDER, "MM2_SENT"): (3, _on_mm3, "MM4_SENT"),
        (RESPONDER, "MM4_SENT"): (5, _on_mm5, "ESTABLISHED"),
    }
