"""Quick Mode (RFC 2409 section 5.5) as initiator and responder, sans-IO.

    Initiator                                   Responder
    QM1  HDR*, HASH(1), SA, Ni [, KE] [, IDci, IDcr] [, NAT-OAi, NAT-OAr] ->
                                           <-   QM2  HDR*, HASH(2), SA, Nr [, KE] [, IDci, IDcr] [, NAT-OA...]
                                                     [, N(RESPONDER-LIFETIME)]
    QM3  HDR*, HASH(3)                     ->

    HASH(1) = prf(SKEYID_a, M-ID | the message after the HASH payload)
    HASH(2) = prf(SKEYID_a, M-ID | Ni_b | the message after the HASH payload)
    HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)

Every message is encrypted under the ISAKMP SA with the exchange's own IV chain (RFC 2409 appendix B).  The
responder chooses by its policy (:mod:`gdoiserver.doi.ipsec.policy`): selectors outside every policy of the peer
get INVALID-ID-INFORMATION, no acceptable transform NO-PROPOSAL-CHOSEN, a bad PFS value INVALID-KEY-INFORMATION,
each in a protected Informational (the message was authenticated by its HASH, so an answer tells nothing to an
attacker).  The Commit bit (RFC 2408 section 3.1, which would add a fourth message) is refused with
INVALID-FLAGS.  A message that does not decrypt or whose HASH fails is dropped and counted: it may not come from
the peer.  Both ends install only once the exchange is over: the responder after QM3 (it learns then that the
initiator has the keys), the initiator as it sends QM3.  UDP-encapsulated modes (RFC 3947 section 5.1) are
proposed and accepted exactly when the ISAKMP SA floated to NAT-T; NAT-OA goes with transport mode then.

Randomness is drawn in a fixed order: the SPI (4 octets, from ``allocate_spi``), the nonce, then the PFS key; a
Notify answer draws its 4-octet M-ID.
"""

import ipaddress
import struct
from collections.abc import Callable
from typing import ClassVar

import attrs

from gdoiserver.codec.constants import DOI, ExchangeType, Flags, NotifyType, PayloadType, ProtocolID
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.grammar import check, rule_for
from gdoiserver.codec.message import Message
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.payloads import KE, NATOA, SA, Hash, Identification, Nonce, Notification
from gdoiserver.crypto.dh import dh_group
from gdoiserver.crypto.errors import InvalidKeyExchange
from gdoiserver.crypto.prf import constant_time_equal, hash_algorithm
from gdoiserver.doi.ipsec import keymat
from gdoiserver.doi.ipsec import proposals as props
from gdoiserver.doi.ipsec.policy import IPsecPolicy, PolicyTable
from gdoiserver.doi.ipsec.sa import IPsecSA
from gdoiserver.doi.ipsec.selectors import Selector
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, Send, StartTimer
from gdoiserver.exchanges.informational import NotifyReceived
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER, ISAKMPSA
from gdoiserver.exchanges.phase1_common import (
    EXCHANGE_TIMEOUT,
    RETRANSMIT,
    Abort,
    Drop,
    ResponseCache,
    Retransmitter,
)

QUICK_MODE = ExchangeType.QUICK_MODE
NONCE_SIZE = 32
#: Notify types below this one report errors (RFC 2408 section 3.14.1).
_ERROR_TYPES_END = 16384


@attrs.frozen
class QuickModeSettings:
    """What every Quick Mode shares: retransmission (as in Phase 1) and the weak-group opt-in."""

    retransmit_initial: float = 2.0
    retransmit_tries: int = 5
    exchange_timeout: float = 60.0
    allow_weak_groups: bool = False


def random_spi(protocol: int, rng) -> bytes:
    """A random SPI of 4 octets, never one of the reserved values 0-255 (RFC 4303 section 2.1)."""
    for _ in range(8):
        spi = bytes(rng(4))
        if int.from_bytes(spi, "big") > 255:
            return spi
    raise ValueError("the random source gave a reserved SPI 8 times")


def _state(default):
    return attrs.field(default=default, init=False)


def _secret(default=None):
    return attrs.field(default=default, init=False, repr=False)


@attrs.define(eq=False)
class QuickMode:
    """One Quick Mode exchange (one M-ID) under ``sa``.  Make it with :meth:`initiator` or :meth:`responder`.

    ``result`` is the :class:`IPsecSA` once established.  States: START, QM1_SENT (initiator), QM2_SENT
    (responder), ESTABLISHED, FAILED.
    """

    doi: ClassVar[int] = DOI.IPSEC

    sa: ISAKMPSA
    role: str
    message_id: int
    settings: QuickModeSettings
    policies: PolicyTable | None = None
    policy: IPsecPolicy | None = None
    allocate_spi: Callable = random_spi
    replaces: bytes | None = None

    state: str = _state("START")
    done: bool = _state(False)
    result: IPsecSA | None = _state(None)
    suite: props.Suite | None = _state(None)
    lifetime: props.Lifetime | None = _state(None)
    encapsulation: int | None = _state(None)
    spi: bytes | None = _state(None)
    peer_spi: bytes | None = _state(None)
    local_selector: Selector | None = _state(None)
    remote_selector: Selector | None = _state(None)
    nat_oa: tuple | None = _state(None)
    notify_protocol: int = _state(ProtocolID.IPSEC_ESP)  # of the peer's first proposal, for Notify answers
    #: Every inbound SPI this exchange took from ``allocate_spi``, by protocol (the plugin frees the unused).
    allocated: dict = _state(attrs.Factory(dict))
    offered: SA | None = _secret()
    ids: tuple | None = _secret()
    ni_b: bytes = _secret(b"")
    nr_b: bytes = _secret(b"")
    dh: object = _secret()
    g_qm_xy: bytes = _secret(b"")
    chain: object = _secret()
    _timers: set = _secret(attrs.Factory(set))
    _retransmitter: Retransmitter = _secret(attrs.Factory(
        lambda self: Retransmitter(self.settings.retransmit_initial, self.settings.retransmit_tries), takes_self=True))
    _cache: ResponseCache = _secret(attrs.Factory(ResponseCache))

    @classmethod
    def initiator(cls, sa: ISAKMPSA, policy: IPsecPolicy, settings: QuickModeSettings, message_id: int, *,
                  allocate_spi: Callable = random_spi, replaces: bytes | None = None) -> "QuickMode":
        """A Quick Mode that asks the peer of ``sa`` for SAs under ``policy``; call ``start(now, rng)``.

        ``policy``'s suites are offered in its order; those with PFS must all name one group (one KE payload
        serves them all, RFC 2409 section 5.5), and suites of another group are left out.
        """
        return cls(sa, INITIATOR, message_id, settings, None, policy, allocate_spi, replaces)

    @classmethod
    def responder(cls, sa: ISAKMPSA, policies: PolicyTable, settings: QuickModeSettings, message_id: int, *,
                  allocate_spi: Callable = random_spi) -> "QuickMode":
        """A Quick Mode that answers the peer's QM1 of ``message_id`` under ``policies``."""
        return cls(sa, RESPONDER, message_id, settings, policies, None, allocate_spi)

    # --- inputs ---------------------------------------------------------------------------------------------------

    def start(self, now: float, rng) -> list:
        """Send QM1 (initiators only)."""
        if self.role != INITIATOR or self.state != "START":
            raise RuntimeError("start() is for a new initiator")
        try:
            effects = self._send_qm1(now, rng)
        except Abort as a:
            return self._fail(a.notify, a.reason)
        self.state = "QM1_SENT"
        return effects

    def receive(self, message: Message, raw: bytes, now: float, rng, *, peer, local) -> list:
        """Handle one message of this exchange (as decoded, still encrypted)."""
        cached = self._cache.lookup(raw)
        if cached is not None:
            return [Count("retransmit_answered"), *cached]
        if self.done:
            return [Count("qm_after_done")]
        handler = _HANDLERS.get((self.role, self.state))
        if handler is None:
            return [Count("qm_unexpected")]
        if (message.spi != self.sa.spi or message.message_id != self.message_id
                or message.exchange_type != QUICK_MODE):
            return self._dropped("qm_not_this_exchange")
        try:
            return handler(self, message, raw, now, rng)
        except Drop as d:
            return self._dropped(d.counter)
        except Abort as a:
            return self._abort(a, raw, rng)
        except Exception as e:  # never let a bug in one exchange reach the adapter
            return [Count("internal_error"), *self._fail(None, f"internal error: {type(e).__name__}")]

    def timer(self, key: str, now: float, rng) -> list:
        """Retransmit our last message (or give up), or end the exchange on its timeout."""
        if self.done or key not in self._timers:
            return []
        self._timers.discard(key)
        if key == RETRANSMIT and self._retransmitter.armed:
            effects = self._retransmitter.fire()
            if effects is None:
                return self._fail(None, "peer did not answer")
            self._timers.add(RETRANSMIT)
            return effects
        if key == EXCHANGE_TIMEOUT:
            return self._fail(None, "exchange timed out")
        return []

    def notified(self, item, now: float, rng) -> list:
        """An authenticated Informational item from the peer: an error Notify about our SPI refuses our QM1."""
        if (self.role == INITIATOR and self.state == "QM1_SENT" and isinstance(item, NotifyReceived)
                and 0 < item.notify_type < _ERROR_TYPES_END and item.spi == self.spi):
            reason = f"peer answered {_name(item.notify_type)}"
            return [Count("qm_refused_by_peer"), *self._fail(item.notify_type, reason)]
        return []

    # --- the initiator ----------------------------------------------------------------------------------------------

    def _send_qm1(self, now: float, rng) -> list:
        policy, sa = self.policy, self.sa
        suites = _offered_suites(policy.suites)
        group = suites[0].group
        if group is not None and group in props.WEAK_GROUPS and not self.settings.allow_weak_groups:
            raise Abort(None, f"PFS group {group} needs allow_weak_dh_groups")
        self.local_selector = policy.local_selectors(sa)[0]
        self.remote_selector = policy.remote_selectors(sa)[0]
        udp = sa.nat_t
        self.encapsulation = props.encapsulation_mode(policy.mode, udp)
        protocols = dict.fromkeys(s.protocol for s in suites)
        spis = self.allocated = {p: self.allocate_spi(p, rng) for p in protocols}
        self.spi = spis[suites[0].protocol]
        self.offered = props.sa_payload(suites, spis, policy.lifetime, self.encapsulation)
        self.ni_b = bytes(rng(NONCE_SIZE))
        payloads = [self.offered, Nonce(self.ni_b)]
        if group is not None:
            self.dh = dh_group(group, allow_weak=self.settings.allow_weak_groups).generate(rng)
            payloads.append(KE(self.dh.public_bytes()))
        self.ids = (self.local_selector.identification(), self.remote_selector.identification())
        payloads += self.ids
        if udp and policy.mode == props.TRANSPORT:
            payloads += [NATOA.of(sa.local[0]), NATOA.of(sa.peer[0])]  # RFC 3947 section 5.2
        data = self._seal(payloads, lambda rest: self._prf(self._mid(), rest), self.sa.last_iv.for_message_id(
            self.message_id))
        send = self._send(data)
        self._timers.update((RETRANSMIT, EXCHANGE_TIMEOUT))
        return [Count("qm_initiated"), send, *self._retransmitter.arm([send]),
                StartTimer(EXCHANGE_TIMEOUT, self.settings.exchange_timeout)]

    def _on_qm2(self, message: Message, raw: bytes, now: float, rng) -> list:
        decrypted, rest, chain = self._open(message, self.chain)
        if not constant_time_equal(decrypted.payloads[0].hash_data, self._prf(self._mid(), self.ni_b, rest)):
            raise Drop("qm_bad_hash")
        self._check(decrypted, 2)
        self.chain = chain
        payloads = decrypted.payloads
        if message.flags & Flags.COMMIT:
            raise Abort(NotifyType.INVALID_FLAGS, "the responder set the Commit bit, which we do not support",
                        answer=True)
        try:
            suite, lifetime, encapsulation, self.peer_spi = props.accept_reply(_first(payloads, SA), self.offered)
        except props.NoProposalChosen as e:
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, str(e), answer=True) from None
        self.suite, self.encapsulation = suite, encapsulation
        for n in payloads:
            if isinstance(n, Notification) and n.protocol_id == suite.protocol:
                told = props.responder_lifetime(n)
                if told is not None:
                    lifetime = lifetime.within(told)
        self.lifetime = lifetime
        self.nr_b = _first(payloads, Nonce).nonce_data
        ke = _first(payloads, KE)
        if (ke is None) != (suite.group is None):
            raise Abort(NotifyType.INVALID_KEY_INFORMATION, "KE payload and PFS group disagree", answer=True)
        if ke is not None:
            self.g_qm_xy = self._exchange(ke.key_exchange_data)
        ids = tuple(p for p in payloads if isinstance(p, Identification))
        if ids != self.ids:
            raise Abort(NotifyType.INVALID_ID_INFORMATION, "the responder's IDci/IDcr differ from ours", answer=True)
        self.nat_oa = _nat_oa(payloads)
        digest = self._prf(b"\x00", self._mid(), self.ni_b, self.nr_b)
        data, self.chain = self.chain.encrypt(self._message((Hash(digest),)), context_for(DOI.IPSEC, QUICK_MODE))
        send = self._send(data)
        self._cache.store(raw, [send])
        return [send, *self._established(now)]

    # --- the responder --------------------------------------------------------------------------------------------

    def _on_qm1(self, message: Message, raw: bytes, now: float, rng) -> list:
        sa = self.sa
        decrypted, rest, chain = self._open(message, sa.last_iv.for_message_id(self.message_id))
        if not constant_time_equal(decrypted.payloads[0].hash_data, self._prf(self._mid(), rest)):
            raise Drop("qm_bad_hash")
        payloads = decrypted.payloads
        offer = _first(payloads, SA)
        proposal = offer.proposals[0] if isinstance(offer, SA) and offer.proposals else None
        if proposal is not None and proposal.protocol_id in (ProtocolID.IPSEC_AH, ProtocolID.IPSEC_ESP):
            self.peer_spi = proposal.spi  # Notify answers name it (as strongSwan does)
            self.notify_protocol = proposal.protocol_id
        self._check(decrypted, 1)
        self.chain = chain
        if message.flags & Flags.COMMIT:
            raise Abort(NotifyType.INVALID_FLAGS, "the initiator set the Commit bit, which we do not support",
                        answer=True)
        if sum(isinstance(p, SA) for p in payloads) != 1:
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, "several SA payloads in one Quick Mode (RFC 2409 section 9)"
                        " are not supported", answer=True)
        self.ni_b = _first(payloads, Nonce).nonce_data
        ids = tuple(p for p in payloads if isinstance(p, Identification))
        try:
            remote, local = ((Selector.from_identification(ids[0]), Selector.from_identification(ids[1])) if ids
                             else (Selector.host(sa.peer[0]), Selector.host(sa.local[0])))
        except DecodeError as e:
            raise Abort(NotifyType.INVALID_ID_INFORMATION, e.reason, answer=True) from None
        policy = self.policies.decide(sa, local=local, remote=remote)
        if policy is None:
            raise Abort(NotifyType.INVALID_ID_INFORMATION, f"no policy lets this peer have {remote} === {local}",
                        answer=True)
        self.policy, self.local_selector, self.remote_selector, self.ids = policy, local, remote, ids
        ke = _first(payloads, KE)
        spis = self.allocated

        def spi_for(protocol):
            if protocol not in spis:
                spis[protocol] = self.allocate_spi(protocol, rng)
            return spis[protocol]

        try:
            choice = props.choose(offer, policy.suites, lifetime=policy.lifetime, mode=policy.mode, udp=sa.nat_t,
                                  ke_group_ok=lambda g: self._ke_fits(g, ke), spi_for=spi_for)
        except props.NoProposalChosen as e:
            raise Abort(NotifyType.NO_PROPOSAL_CHOSEN, str(e), answer=True) from None
        self.suite, self.lifetime, self.encapsulation = choice.suite, choice.lifetime, choice.encapsulation
        self.peer_spi, self.spi = choice.offer.proposal.spi, choice.reply.proposals[0].spi
        self.nr_b = bytes(rng(NONCE_SIZE))
        out = [choice.reply, Nonce(self.nr_b)]
        if ke is not None:
            self.dh = dh_group(choice.suite.group, allow_weak=self.settings.allow_weak_groups).generate(rng)
            self.g_qm_xy = self._exchange(ke.key_exchange_data)
            out.append(KE(self.dh.public_bytes()))
        out += ids
        self.nat_oa = _nat_oa(payloads)
        if props.ENCAPSULATIONS[choice.encapsulation] == (props.TRANSPORT, True):
            out += [NATOA.of(sa.peer[0]), NATOA.of(sa.local[0])]  # RFC 3947 section 5.2
        if choice.lifetime != choice.offer.lifetime:
            out.append(props.responder_lifetime_notify(choice.suite.protocol, self.spi, choice.lifetime))
        data = self._seal(out, lambda rest: self._prf(self._mid(), self.ni_b, rest), self.chain)
        send = self._send(data)
        self._cache.store(raw, [send])
        self.state = "QM2_SENT"
        self._timers.update((RETRANSMIT, EXCHANGE_TIMEOUT))
        return [send, *self._retransmitter.arm([send]), StartTimer(EXCHANGE_TIMEOUT, self.settings.exchange_timeout)]

    def _on_qm3(self, message: Message, raw: bytes, now: float, rng) -> list:
        decrypted, rest, chain = self._open(message, self.chain)
        expected = self._prf(b"\x00", self._mid(), self.ni_b, self.nr_b)
        if not constant_time_equal(decrypted.payloads[0].hash_data, expected):
            raise Drop("qm_bad_hash")
        self._check(decrypted, 3)
        self.chain = chain
        return self._established(now)

    # --- helpers --------------------------------------------------------------------------------------------------

    def _mid(self) -> bytes:
        return struct.pack("!I", self.message_id)

    def _prf(self, *parts: bytes) -> bytes:
        return hash_algorithm(self.sa.proposal.hash).prf(self.sa.keys.skeyid_a, *parts)

    def _message(self, payloads) -> Message:
        return Message(self.sa.initiator_cookie, self.sa.responder_cookie, QUICK_MODE, 0, self.message_id,
                       tuple(payloads))

    def _seal(self, payloads, digest, chain) -> bytes:
        """HASH(n) over the payloads that follow it, then the message encrypted; the chain moves on."""
        ctx = context_for(DOI.IPSEC, QUICK_MODE)
        payloads = tuple(payloads)
        message = self._message((Hash(digest(encode_chain(payloads, ctx))), *payloads))
        data, self.chain = chain.encrypt(message, ctx)
        return data

    def _open(self, message: Message, chain) -> tuple[Message, bytes, object]:
        """Decrypt ``message``: the decoded message, the octets its HASH covers (what follows the HASH payload,
        padding left out) and the chain after it.  Raises Drop if it does not decrypt to a chain led by HASH."""
        if not message.encrypted:
            raise Drop("qm_unencrypted")
        try:
            plaintext = chain.cipher.decrypt(chain.key, chain.iv, message.ciphertext)
            decrypted = message.with_plaintext(plaintext, DOI.IPSEC)
        except DecodeError:
            raise Drop("qm_undecryptable") from None
        if not decrypted.payloads or decrypted.payloads[0].payload_type != PayloadType.HASH:
            raise Drop("qm_undecryptable")
        start = 4 + len(decrypted.payloads[0].hash_data)
        rest = plaintext[start : len(plaintext) - len(decrypted.padding)]
        return decrypted, rest, attrs.evolve(chain, iv=message.ciphertext[-chain.cipher.block_size :])

    def _check(self, decrypted: Message, number: int) -> None:
        """Hold an authenticated message to its rule: a breach is answered with the rule's Notify."""
        try:
            check(decrypted, rule_for(QUICK_MODE, number, doi=DOI.IPSEC))
        except DecodeError as e:
            raise Abort(e.notify, f"QM{number}: {e.reason}", answer=True) from None

    def _ke_fits(self, group: int | None, ke) -> bool:
        """Whether the peer's KE payload (or none) suits PFS ``group`` (or none)."""
        if group is None or ke is None:
            return group is None and ke is None
        try:
            g = dh_group(group, allow_weak=self.settings.allow_weak_groups)
        except ValueError:  # unsupported, or weak without the opt-in
            return False
        return len(ke.key_exchange_data) == g.public_length

    def _exchange(self, peer_ke: bytes) -> bytes:
        try:
            return self.dh.exchange(peer_ke)
        except InvalidKeyExchange as e:
            raise Abort(NotifyType.INVALID_KEY_INFORMATION, f"PFS: {e}", answer=True) from None

    def _send(self, data: bytes) -> Send:
        return Send(data, self.sa.peer, self.sa.local, self.sa.nat_t)

    def _established(self, now: float) -> list:
        h = hash_algorithm(self.sa.proposal.hash)
        derive = keymat.derive
        skeyid_d, suite = self.sa.keys.skeyid_d, self.suite
        self.result = IPsecSA(
            isakmp_spi=self.sa.spi,
            role=self.role,
            message_id=self.message_id,
            policy=self.policy.name,
            suite=suite,
            encapsulation=self.encapsulation,
            spi_in=self.spi,
            spi_out=self.peer_spi,
            local_selector=self.local_selector,
            remote_selector=self.remote_selector,
            local=self.sa.local,
            peer=self.sa.peer,
            lifetime=self.lifetime,
            established_at=now,
            keys_in=derive(h, skeyid_d, suite, self.spi, self.ni_b, self.nr_b, self.g_qm_xy),
            keys_out=derive(h, skeyid_d, suite, self.peer_spi, self.ni_b, self.nr_b, self.g_qm_xy),
            nat_oa=self.nat_oa,
            replaces=self.replaces,
        )
        self.done, self.state = True, "ESTABLISHED"
        self.dh, self.g_qm_xy = None, b""
        return [*self._cancel_timers(), Count("qm_established"), Established(self.result)]

    def _cancel_timers(self) -> list:
        self._retransmitter.disarm()
        cancels = [CancelTimer(k) for k in (RETRANSMIT, EXCHANGE_TIMEOUT) if k in self._timers]
        self._timers.clear()
        return cancels

    def _fail(self, notify: int | None, reason: str) -> list:
        self.done, self.state = True, "FAILED"
        self.dh = None
        return [*self._cancel_timers(), Failed(notify, reason)]

    def _dropped(self, counter: str) -> list:
        """Count a message we ignore; a responder whose first message is ignored has nothing to wait for."""
        if self.role == RESPONDER and self.state == "START":
            return [Count(counter), *self._fail(None, f"first message refused ({counter})")]
        return [Count(counter)]

    def _abort(self, a: Abort, raw: bytes, rng) -> list:
        """Fail, and tell the peer ``a.notify`` in a protected Informational when ``a.answer`` (sent again if the
        same message comes again: the peer may have lost it)."""
        effects = []
        if a.answer and a.notify is not None:
            if self.peer_spi is not None and self.role == RESPONDER:
                n = Notification(DOI.IPSEC, self.notify_protocol, a.notify, self.peer_spi)
            elif self.spi is not None:
                n = Notification(DOI.IPSEC, self.suite.protocol if self.suite else self.notify_protocol, a.notify,
                                 self.spi)
            else:
                n = informational.notify(self.sa, a.notify)
            effects.append(informational.send(self.sa, [n], rng))
            self._cache.store(raw, effects)
        return effects + self._fail(a.notify, a.reason)


_HANDLERS = {
    (RESPONDER, "START"): QuickMode._on_qm1,
    (INITIATOR, "QM1_SENT"): QuickMode._on_qm2,
    (RESPONDER, "QM2_SENT"): QuickMode._on_qm3,
}


def _offered_suites(suites) -> tuple:
    """The suites an initiator offers: all of the first suite's PFS group (or all without PFS)."""
    if not suites:
        raise Abort(None, "the policy has no suite to offer")
    group = suites[0].group
    return tuple(s for s in suites if s.group == group)


def _first(payloads, cls):
    return next((p for p in payloads if isinstance(p, cls)), None)


def _nat_oa(payloads) -> tuple[str, str] | None:
    """(NAT-OAi, NAT-OAr) as addresses, when the message carries the pair (RFC 3947 section 5.2)."""
    pair = [p for p in payloads if isinstance(p, NATOA)]
    if len(pair) != 2:
        return None
    return tuple(str(ipaddress.ip_address(p.address)) for p in pair)


def _name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"Notify {notify_type}"
