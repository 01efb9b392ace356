"""GROUPKEY-PULL (RFC 6407 section 3.2), sans-IO: the key server's responder and the group member's initiator.

    GM -> GCKS: HDR*, HASH(1), Ni, ID
    GCKS -> GM: HDR*, HASH(2), Nr, SA
    GM -> GCKS: HDR*, HASH(3) [, KE_I] [, CERT] [, POP_I] [, GAP]
    GCKS -> GM: HDR*, HASH(4) [, KE_R] [, SEQ], KD [, CERT] [, POP_R]

Both run under an established ISAKMP SA (:class:`ISAKMPSA`), with the interface of the Phase 1 machines
(:mod:`gdoiserver.exchanges`): ``start`` (the member only), ``receive`` (a message as decoded, still encrypted; the
machine decrypts it with its own IV chain, from ``sa.last_iv.for_message_id(M-ID)``, RFC 2409 appendix B),
``timer``, ``done`` and ``state``.  Effects are those of :mod:`gdoiserver.exchanges.effects`.

How each side treats what it receives:

- A message whose HASH does not verify is dropped and counted: it proves nothing, and whoever sent it must not be
  able to end a registration in progress.  The exception is the key server's first message: nothing has started,
  so the member is told (INVALID-HASH-INFORMATION) and the machine is over.
- Once a HASH verifies, a message that breaks the rules ends the exchange with a Notify, sent protected under the
  ISAKMP SA as an Informational (RFC 2409 section 5.7).
- The key server changes no state of a group before a request passes every check: a refused member leaves no
  trace but the log line (Failed names the member's identity and the group) and a counter.  Sender IDs and the
  member's LKH leaf (RFC 6407 section 5.6.3) are given out at message 3, after the member proved it holds the
  nonces.  An evicted member is refused at message 1 (AUTHENTICATION-FAILED, "evicted").
- Retransmissions: the member resends the same octets (``retransmit_initial``, doubling, ``retransmit_tries``);
  either side answers the exact octets of a request it answered with the same answer, computed once.
"""

from typing import Callable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from gdoiserver.codec.attributes import Attribute, attribute_map
from gdoiserver.codec.cipher import IVChain
from gdoiserver.codec.constants import DOI, ExchangeType, NotifyType, OakleyAuth, PayloadType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import GAP, KD, POP, SEQ, GAPAttr, GroupSA
from gdoiserver.codec.grammar import check, rule_for
from gdoiserver.codec.message import Message
from gdoiserver.codec.payload import UnknownPayload, context_for, encode_chain
from gdoiserver.codec.payloads import KE, Certificate, Hash, Identification, Nonce, Signature
from gdoiserver.crypto import certs
from gdoiserver.crypto.dh import dh_group
from gdoiserver.crypto.errors import CryptoError
from gdoiserver.crypto.prf import constant_time_equal
from gdoiserver.doi.gdoi import download
from gdoiserver.doi.gdoi.ack import ack_key_for
from gdoiserver.doi.gdoi.hashes import (
    after_first,
    hash_1,
    hash_2,
    hash_3,
    hash_4,
    kd_mask,
    payload_spans,
    pop_digest,
    xor,
)
from gdoiserver.doi.gdoi.registration import MemberPolicy, RegistrationRefused, read_keys, read_policy
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import CancelTimer, Count, Effect, Established, Failed, Send, StartTimer
from gdoiserver.exchanges.phase1 import ISAKMPSA
from gdoiserver.exchanges.phase1_common import ResponseCache, Retransmitter
from gdoiserver.group.keys import Generation, Group, GroupTable, KEKKeys
from gdoiserver.group.lkh import LKHError
from gdoiserver.group.policy import PFS, GroupId, Member, identity_text
from gdoiserver.group.sender_ids import SenderIDsExhausted

PULL = ExchangeType.GROUPKEY_PULL
CTX = context_for(DOI.GDOI, PULL)
#: Octets of our nonces (RFC 2409 section 5 allows 8 to 256).
NONCE_SIZE = 32
RETRANSMIT, EXCHANGE_TIMEOUT = "retransmit", "exchange_timeout"
_ECDSA_AUTH = {"secp256r1": OakleyAuth.ECDSA_SHA256_P256, "secp384r1": OakleyAuth.ECDSA_SHA384_P384,
               "secp521r1": OakleyAuth.ECDSA_SHA512_P521}


@attrs.frozen
class KeyServerPolicy:
    """What the key server's PULL responders share: the groups (and their key state), the key server's own
    certificate and key (sent as CERT and POP_R in every message 4 when set), and the CAs a member's CERT in
    message 3 must chain to (without them a member's CERT and POP_I are not read).

    Two hooks the rekey service gives, both called with (group name, member identity as text):
    ``leaf_for`` returns the member's LKH path (:class:`gdoiserver.group.lkh.NodeKey` values, leaf first, up to
    just below the root), joining it to the group's tree if new, or None; it may raise LKHError (tree full).
    ``is_evicted`` says whether the member was evicted (RFC 6407 section 5.6.3) and is refused until readmitted.
    """

    groups: GroupTable
    credentials: certs.Credentials | None = None
    trust: certs.TrustStore | None = None
    exchange_timeout: float = 60.0
    leaf_for: Callable[[str, str], tuple | None] | None = None
    is_evicted: Callable[[str, str], bool] | None = None


@attrs.frozen
class MemberRegistered:
    """The key server's result of a registration: who joined which group, with which sender IDs, at which LKH
    ``leaf`` (None without LKH), and the ``ack_key`` its GROUPKEY-PUSH acknowledgements are checked with
    (RFC 8263; :func:`gdoiserver.doi.gdoi.ack.ack_key_for` of the Phase 1 SA it registered under)."""

    group: str
    group_id: GroupId
    member: str
    identity: Identification
    address: tuple[str, int]
    generation: int
    sender_ids: tuple[int, ...] = ()
    pfs: bool = False
    certificate: bytes | None = attrs.field(default=None, repr=False)
    leaf: int | None = None
    ack_key: bytes = attrs.field(default=b"", repr=False)


class _Ignore(Exception):
    """Drop the message and count ``counter``."""

    def __init__(self, counter: str):
        super().__init__(counter)
        self.counter = counter


class _Refuse(Exception):
    """End the exchange: ``notify`` goes to the peer (protected) when ``answer``; ``counter`` is counted."""

    def __init__(self, notify: int | None, reason: str, counter: str, answer: bool = True):
        super().__init__(reason)
        self.notify, self.reason, self.counter, self.answer = notify, reason, counter, answer


def auth_method_of(public_key) -> int:
    """The signature method a certificate's key signs with (RSA, or ECDSA for its curve)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return OakleyAuth.RSA_SIGNATURES
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _ECDSA_AUTH:
        return _ECDSA_AUTH[public_key.curve.name]
    raise CryptoError(f"a {type(public_key).__name__} cannot sign a POP")


def _payload(payloads, cls):
    return next((p for p in payloads if isinstance(p, cls)), None)


@attrs.define(eq=False)
class _PullExchange:
    """What both sides share: the SA, the M-ID and its IV chain, nonces, timers, retransmission and the cache."""

    HANDLERS = {}  # state -> method name; filled in by each side
    doi = DOI.GDOI  # the plugin that owns the machine (the dispatcher's hooks)

    sa: ISAKMPSA
    message_id: int | None
    state: str = attrs.field(default="START", init=False)
    done: bool = attrs.field(default=False, init=False)
    _chain: IVChain | None = attrs.field(default=None, init=False, repr=False)
    _ni_b: bytes = attrs.field(default=b"", init=False, repr=False)
    _nr_b: bytes = attrs.field(default=b"", init=False, repr=False)
    _timers: set = attrs.field(factory=set, init=False, repr=False)
    _cache: ResponseCache = attrs.field(factory=ResponseCache, init=False, repr=False)
    _last_raw: bytes | None = attrs.field(default=None, init=False, repr=False)

    # --- inputs ---------------------------------------------------------------------------------------------------

    def receive(self, message: Message, raw: bytes, now: float, rng, *, peer=None, local=None) -> list[Effect]:
        """Handle one message of this exchange, as decoded (still encrypted)."""
        cached = self._cache.lookup(raw)
        if cached is not None:
            return [Count("retransmit_answered"), *cached]
        if raw == self._last_raw:
            return [Count("dropped_duplicate")]
        if self.done:
            return [Count("dropped_after_done")]
        handler = self.HANDLERS.get(self.state)
        if handler is None:
            return [Count("dropped_unexpected")]
        try:
            if message.exchange_type != PULL or message.message_id != self.message_id or message.spi != self.sa.spi:
                raise _Ignore("dropped_unexpected")
            if not message.encrypted or message.ciphertext is None:
                raise _Ignore("dropped_unencrypted")
            effects = getattr(self, handler)(message, raw, now, rng)
        except _Ignore as e:
            return self._ignored(e.counter)
        except _Refuse as r:
            return self._refused(r, rng)
        except Exception as e:  # a bug in one exchange must not reach the adapter
            return [Count("internal_error"), *self._finish_failed(None, f"internal error: {type(e).__name__}")]
        self._last_raw = raw
        return effects

    def notified(self, item, now: float, rng) -> list[Effect]:
        """An authenticated Notify from the peer under ``sa`` while the exchange runs (the dispatcher passes the
        items of Informational messages): an error Notify (RFC 2408 section 3.14.1) means the peer refused it."""
        notify_type = getattr(item, "notify_type", None)
        if self.done or notify_type is None or notify_type >= informational.ERROR_TYPES_END:
            return []
        try:
            name = NotifyType(notify_type).name
        except ValueError:
            name = f"Notify {notify_type}"
        return [Count("pull_refused_by_peer"),
                *self._finish_failed(notify_type, f"{self._peer_name()} refused GROUPKEY-PULL{self._about()}: {name}")]

    def timer(self, key: str, now: float, rng) -> list[Effect]:
        """A timer we started fired: retransmit (or give up), or end the exchange on its timeout."""
        if self.done or key not in self._timers:
            return []
        self._timers.discard(key)
        if key == RETRANSMIT and self._retransmitter.armed:
            effects = self._retransmitter.fire()
            if effects is None:
                return self._finish_failed(None, f"{self._peer_name()} did not answer")
            self._timers.add(RETRANSMIT)
            return effects
        if key == EXCHANGE_TIMEOUT:
            reason = f"GROUPKEY-PULL{self._about()} with {self._peer_name()} timed out"
            return [Count("pull_timeout"), *self._finish_failed(None, reason)]
        return []

    # --- messages ---------------------------------------------------------------------------------------------------

    def _decrypt(self, message: Message) -> tuple[bytes, list, IVChain]:
        """The plaintext body, its payload spans and the chain for the next message (not adopted yet)."""
        chain = self._chain
        try:
            plaintext = chain.cipher.decrypt(chain.key, chain.iv, message.ciphertext)
            spans = payload_spans(plaintext, message.next_payload)
        except DecodeError:
            raise _Ignore("dropped_malformed") from None
        if not spans or spans[0][0] != PayloadType.HASH:
            raise _Ignore("dropped_malformed")
        return plaintext, spans, attrs.evolve(chain, iv=message.ciphertext[-chain.cipher.block_size :])

    @staticmethod
    def _hash_ok(plaintext: bytes, spans, expected) -> bool:
        _, start, end = spans[0]
        return constant_time_equal(bytes(plaintext[start + 4 : end]), expected(after_first(plaintext, spans)))

    def _decode(self, message: Message, plaintext: bytes, number: int) -> tuple:
        """The payloads of an authenticated message, held to the message's rule; a failure ends the exchange."""
        try:
            decoded = message.with_plaintext(plaintext, DOI.GDOI, CTX)
            check(decoded, rule_for(PULL, number, doi=DOI.GDOI))
        except DecodeError as e:
            raise _Refuse(e.notify, f"message {number}: {e.reason}", "pull_malformed") from None
        return decoded.payloads

    def _encrypt(self, payloads) -> Send:
        """HDR* and the payloads under our chain, which moves on (RFC 2409 appendix B)."""
        m = Message(self.sa.initiator_cookie, self.sa.responder_cookie, PULL, 0, self.message_id, tuple(payloads))
        data, self._chain = self._chain.encrypt(m, CTX)
        return Send(data, self.sa.peer, self.sa.local, self.sa.nat_t)

    def _pop(self, credentials: certs.Credentials) -> list:
        """CERT (ours, then the chain) and a SIG payload proving we hold the key (POP_I or POP_R)."""
        chain = [certs.certificate_payload(c) for c in (credentials.certificate, *credentials.chain)]
        digest = pop_digest(self.sa, credentials.auth_method, self._ni_b, self._nr_b)
        return [*chain, Signature(certs.sign(credentials, credentials.auth_method, digest))]

    def _verify_pop(self, payloads, trust: certs.TrustStore, now: float) -> x509.Certificate:
        """The peer's CERT validated to ``trust`` and its POP verified over hash(Ni_b | Nr_b); else _Refuse."""
        pop = _payload(payloads, Signature) or _payload(payloads, POP)
        try:
            received = certs.certificates_from_payloads(payloads)
            if not received or pop is None:
                raise _Refuse(NotifyType.CERTIFICATE_UNAVAILABLE, "CERT and POP go together", "pull_bad_pop")
            leaf = certs.validate_chain(trust, received[0], received[1:], now)
            method = auth_method_of(leaf.public_key())
        except certs.CertificateError as e:
            raise _Refuse(e.notify, f"the peer's certificate: {e.reason}", "pull_bad_certificate") from None
        except CryptoError as e:
            raise _Refuse(NotifyType.INVALID_CERTIFICATE, str(e), "pull_bad_certificate") from None
        data = pop.signature_data if isinstance(pop, Signature) else pop.pop_data
        if not certs.verify(leaf, method, pop_digest(self.sa, method, self._ni_b, self._nr_b), data):
            raise _Refuse(NotifyType.INVALID_SIGNATURE, "the POP does not verify", "pull_bad_pop")
        return leaf

    # --- effects ----------------------------------------------------------------------------------------------------

    def _start_timer(self, key: str, delay: float) -> StartTimer:
        self._timers.add(key)
        return StartTimer(key, delay)

    def _cancel_timers(self) -> list[Effect]:
        self._retransmitter.disarm()
        cancels = [CancelTimer(k) for k in (RETRANSMIT, EXCHANGE_TIMEOUT) if k in self._timers]
        self._timers.clear()
        return cancels

    def _finish_failed(self, notify: int | None, reason: str) -> list[Effect]:
        self.done, self.state = True, "FAILED"
        return [*self._cancel_timers(), Failed(notify, reason)]

    def _ignored(self, counter: str) -> list[Effect]:
        return [Count(counter)]

    def _refused(self, r: _Refuse, rng) -> list[Effect]:
        effects: list[Effect] = [Count(r.counter)]
        if r.answer and r.notify is not None:
            effects.append(informational.send(self.sa, [informational.notify(self.sa, r.notify)], rng))
        return effects + self._finish_failed(r.notify, r.reason)

    def _peer_name(self) -> str:
        return identity_text(self.sa.peer_id)

    def _about(self) -> str:
        return ""


# --- the key server ------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class PullResponder(_PullExchange):
    """The key server's side of one GROUPKEY-PULL (one M-ID under ``sa``)."""

    HANDLERS = {"START": "_on_request", "SA_SENT": "_on_ack"}

    policy: KeyServerPolicy = attrs.field(kw_only=True)
    _retransmitter: Retransmitter = attrs.field(factory=lambda: Retransmitter(1.0, 0), init=False, repr=False)
    group: Group | None = attrs.field(default=None, init=False)
    _generation: Generation | None = attrs.field(default=None, init=False, repr=False)
    _kek: KEKKeys | None = attrs.field(default=None, init=False, repr=False)
    _deferred: bool = attrs.field(default=False, init=False)
    _member: Member | None = attrs.field(default=None, init=False)

    def start(self, now: float, rng) -> list[Effect]:
        raise RuntimeError("the key server answers GROUPKEY-PULL; it never starts one")

    def _ignored(self, counter: str) -> list[Effect]:
        if self.state == "START":  # nothing started: the machine is over
            return [Count(counter), *self._finish_failed(None, f"first message dropped ({counter})")]
        return [Count(counter)]

    def _about(self) -> str:
        return f" for {self.group}" if self.group is not None else ""

    def _who(self) -> str:
        return f"member {self._member or self._peer_name()} at {self.sa.peer[0]}{self._about()}"

    def _on_request(self, message: Message, raw: bytes, now: float, rng) -> list[Effect]:
        """Message 1: check, find the group, authorize; then answer with Nr and the group's SA."""
        self._chain = self.sa.last_iv.for_message_id(self.message_id)
        plaintext, spans, chain = self._decrypt(message)
        if not self._hash_ok(plaintext, spans, lambda rest: hash_1(self.sa, self.message_id, rest)):
            raise _Refuse(NotifyType.INVALID_HASH_INFORMATION, f"{self._who()}: HASH(1) does not verify",
                          "pull_bad_hash")
        payloads = self._decode(message, plaintext, 1)
        ident = _payload(payloads, Identification)
        self._member = Member(self.sa.peer_id, self._phase1_certificate(), self.sa.peer[0])
        try:
            group_id = GroupId.from_identification(ident)
        except DecodeError as e:
            raise _Refuse(e.notify, f"{self._who()}: {e.reason}", "pull_unknown_group") from None
        group = self.policy.groups.lookup(group_id)
        if group is None:
            raise _Refuse(NotifyType.INVALID_ID_INFORMATION, f"{self._who()} asked for unknown {group_id}",
                          "pull_unknown_group")
        self.group = group
        if not group.policy.authorizes(self._member):
            if not (group.policy.certificate_rules and self.policy.trust is not None):
                raise _Refuse(NotifyType.AUTHENTICATION_FAILED, f"{self._who()}: not authorized", "pull_unauthorized")
            self._deferred = True  # it may still prove a certificate the group admits, in message 3
        if self.policy.is_evicted is not None and self.policy.is_evicted(group.policy.name, str(self._member)):
            raise _Refuse(NotifyType.AUTHENTICATION_FAILED, f"{self._who()}: evicted", "pull_evicted")
        # Every check passed: from here on the group's key state may change.
        self._generation, self._kek = group.keys.current(now), group.keys.kek(now)
        self._ni_b, self._nr_b = _payload(payloads, Nonce).nonce_data, bytes(rng(NONCE_SIZE))
        sa_payload = download.sa_payload(group, self._generation, self._kek, self.sa.peer, now)
        reply = (Nonce(self._nr_b), sa_payload)
        digest = hash_2(self.sa, self.message_id, self._ni_b, encode_chain(reply, CTX))
        self._chain = chain
        send = self._encrypt((Hash(digest), *reply))
        self._cache.store(raw, [send])
        self.state = "SA_SENT"
        return [Count("pull_request"), send, self._start_timer(EXCHANGE_TIMEOUT, self.policy.exchange_timeout)]

    def _on_ack(self, message: Message, raw: bytes, now: float, rng) -> list[Effect]:
        """Message 3: check PFS, CERT/POP and sender IDs; answer with the keys and end the exchange."""
        plaintext, spans, chain = self._decrypt(message)
        if not self._hash_ok(plaintext, spans, lambda rest: hash_3(self.sa, self.message_id, self._ni_b,
                                                                    self._nr_b, rest)):
            raise _Ignore("pull_bad_hash")
        self._chain = chain
        payloads = self._decode(message, plaintext, 3)
        policy = self.group.policy
        ke = _payload(payloads, KE)
        if ke is None and policy.pfs == PFS.REQUIRE:
            raise _Refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{self._who()}: the group requires PFS (KE_I)",
                          "pull_pfs_refused")
        if ke is not None and policy.pfs == PFS.REFUSE:
            raise _Refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{self._who()}: the group refuses PFS (KE_I)",
                          "pull_pfs_refused")
        certificate = None
        if self.policy.trust is not None and (_payload(payloads, Certificate) or _payload(payloads, Signature)
                                              or _payload(payloads, POP)):
            certificate = self._verify_pop(payloads, self.policy.trust, now)
            self._member = attrs.evolve(self._member, certificate=certificate)
        if self._deferred and not (certificate is not None and policy.authorizes(self._member)):
            raise _Refuse(NotifyType.AUTHENTICATION_FAILED, f"{self._who()}: not authorized", "pull_unauthorized")
        count = self._sender_ids_wanted(_payload(payloads, GAP))
        reply: list = []
        g_xy = None
        if ke is not None:
            dh = dh_group(self.sa.proposal.group, allow_weak=True).generate(rng)
            try:
                g_xy = dh.exchange(ke.key_exchange_data)
            except CryptoError as e:
                raise _Refuse(NotifyType.INVALID_KEY_INFORMATION, f"{self._who()}: KE_I: {e}", "pull_bad_ke") from None
            reply.append(KE(dh.public_bytes()))
        lkh_path = None
        if self._kek is not None and self.policy.leaf_for is not None:
            try:  # the member keeps its leaf (its identity's) even if the sender IDs below run out
                lkh_path = self.policy.leaf_for(policy.name, str(self._member))
            except LKHError as e:
                raise _Refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{self._who()}: {e}", "pull_lkh_full") from None
        sids = ()
        if count:
            try:  # the last step that can fail: a refused member takes no sender IDs
                sids = self._generation.sender_ids.allocate(str(self._member), count)
            except SenderIDsExhausted as e:
                raise _Refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{self._who()}: {e}", "pull_sender_ids_exhausted") \
                    from None
        if self._kek is not None:
            reply.append(SEQ(self._kek.seq))
        kd = download.kd_payload(self._generation, self._kek, sids, policy.sender_id_bits, lkh_path)
        if g_xy is not None:
            body = kd.encode_body(CTX)
            kd = UnknownPayload(PayloadType.KD, xor(body, kd_mask(self.sa, g_xy, self._ni_b, self._nr_b, len(body))))
        reply.append(kd)
        if self.policy.credentials is not None:
            reply += self._pop(self.policy.credentials)
        digest = hash_4(self.sa, self.message_id, self._ni_b, self._nr_b, encode_chain(tuple(reply), CTX))
        send = self._encrypt((Hash(digest), *reply))
        self._cache.store(raw, [send])
        result = MemberRegistered(
            group=policy.name, group_id=policy.ids[0], member=str(self._member), identity=self.sa.peer_id,
            address=self.sa.peer, generation=self._generation.number, sender_ids=sids, pfs=g_xy is not None,
            certificate=None if certificate is None else certificate.public_bytes(Encoding.DER),
            leaf=lkh_path[0].node if lkh_path else None, ack_key=ack_key_for(self.sa),
        )
        self.done, self.state = True, "REGISTERED"
        return [Count("pull_registered"), send, *self._cancel_timers(), Established(result)]

    def _phase1_certificate(self) -> x509.Certificate | None:
        if self.sa.peer_certificate is None:
            return None
        try:
            return x509.load_der_x509_certificate(self.sa.peer_certificate)
        except ValueError:
            return None

    def _sender_ids_wanted(self, gap: GAP | None) -> int:
        """How many SIDs to give: what the member asked (at least one) when the group has counter-mode TEKs, up to
        the group's ``max_sender_ids`` (RFC 6054 section 4)."""
        if self._generation.sender_ids is None:
            return 0
        asked = 0
        if gap is not None:
            request = attribute_map(gap.attributes).get(GAPAttr.SENDER_ID_REQUEST)
            asked = request.as_int() if request is not None else 0
        return min(max(asked, 1), self.group.policy.max_sender_ids)


# --- the group member ----------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class PullInitiator(_PullExchange):
    """The group member's side: ask the key server under ``sa`` for ``group``; ends with
    ``Established(GroupRegistration)``."""

    HANDLERS = {"REQUEST_SENT": "_on_policy", "KEYS_REQUESTED": "_on_keys"}

    group: GroupId = attrs.field(kw_only=True)
    policy: MemberPolicy = attrs.field(kw_only=True, factory=MemberPolicy)
    _retransmitter: Retransmitter = attrs.field(init=False, repr=False)
    _offered: object = attrs.field(default=None, init=False, repr=False)
    _dh: object = attrs.field(default=None, init=False, repr=False)
    _asked_sender_ids: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self):
        self._retransmitter = Retransmitter(self.policy.retransmit_initial, self.policy.retransmit_tries)

    def start(self, now: float, rng) -> list[Effect]:
        """Send message 1: HASH(1), Ni and the group's ID."""
        if self.state != "START":
            raise RuntimeError("start() is for a new GROUPKEY-PULL")
        if self.message_id is None:
            self.message_id = informational.message_id(rng)
        self._chain = self.sa.last_iv.for_message_id(self.message_id)
        self._ni_b = bytes(rng(NONCE_SIZE))
        request = (Nonce(self._ni_b), self.group.identification())
        digest = hash_1(self.sa, self.message_id, encode_chain(request, CTX))
        send = self._encrypt((Hash(digest), *request))
        self.state = "REQUEST_SENT"
        return [Count("pull_started"), *self._awaiting(send),
                self._start_timer(EXCHANGE_TIMEOUT, self.policy.exchange_timeout)]

    def _about(self) -> str:
        return f" for {self.group}"

    def _awaiting(self, send: Send) -> list[Effect]:
        self._timers.add(RETRANSMIT)
        return [send, *self._retransmitter.arm([send])]

    def _on_policy(self, message: Message, raw: bytes, now: float, rng) -> list[Effect]:
        """Message 2: check HASH(2) and the SA against our policy; send message 3."""
        plaintext, spans, chain = self._decrypt(message)
        if not self._hash_ok(plaintext, spans, lambda rest: hash_2(self.sa, self.message_id, self._ni_b, rest)):
            raise _Ignore("pull_bad_hash")
        self._chain = chain
        payloads = self._decode(message, plaintext, 2)
        sa_payload = _payload(payloads, GroupSA)
        if sa_payload is None:
            raise _Refuse(NotifyType.DOI_NOT_SUPPORTED, "message 2 carries no GDOI SA", "pull_bad_policy")
        try:
            self._offered = read_policy(sa_payload, self.policy)
        except RegistrationRefused as e:
            raise _Refuse(e.notify, f"{self.group}: {e.reason}", "pull_bad_policy") from None
        self._nr_b = _payload(payloads, Nonce).nonce_data
        ack: list = []
        if self.policy.pfs:
            self._dh = dh_group(self.sa.proposal.group, allow_weak=True).generate(rng)
            ack.append(KE(self._dh.public_bytes()))
        if self.policy.credentials is not None:
            ack += self._pop(self.policy.credentials)
        if self._offered.counter_mode and self.policy.sender_ids:
            self._asked_sender_ids = self.policy.sender_ids
            ack.append(GAP((Attribute(GAPAttr.SENDER_ID_REQUEST, self.policy.sender_ids),)))
        digest = hash_3(self.sa, self.message_id, self._ni_b, self._nr_b, encode_chain(tuple(ack), CTX))
        send = self._encrypt((Hash(digest), *ack))
        self.state = "KEYS_REQUESTED"
        return self._awaiting(send)

    def _on_keys(self, message: Message, raw: bytes, now: float, rng) -> list[Effect]:
        """Message 4: check HASH(4), undo the PFS mask, verify the keys against the SA; the registration."""
        plaintext, spans, chain = self._decrypt(message)
        if not self._hash_ok(plaintext, spans, lambda rest: hash_4(self.sa, self.message_id, self._ni_b,
                                                                    self._nr_b, rest)):
            raise _Ignore("pull_bad_hash")
        self._chain = chain
        plaintext = self._unmask(plaintext, spans)
        payloads = self._decode(message, plaintext, 4)
        if self.policy.require_server_pop or _payload(payloads, Signature) or _payload(payloads, POP):
            if self.policy.trust is None:
                if self.policy.require_server_pop:
                    raise _Refuse(NotifyType.CERTIFICATE_UNAVAILABLE, "no CAs to check the key server's POP with",
                                  "pull_bad_pop")
            else:
                self._verify_pop(payloads, self.policy.trust, now)
        seq = _payload(payloads, SEQ)
        try:
            registration = read_keys(
                self._offered, _payload(payloads, KD), None if seq is None else seq.sequence_number,
                group=self.group, server=self.sa.peer, now=now, asked_sender_ids=self._asked_sender_ids,
                pfs=self._dh is not None,
            )
        except RegistrationRefused as e:
            raise _Refuse(e.notify, f"{self.group}: {e.reason}", "pull_bad_keys") from None
        self.done, self.state = True, "REGISTERED"
        self._dh = None
        return [Count("pull_registered"), *self._cancel_timers(), Established(registration)]

    def _unmask(self, plaintext: bytes, spans) -> bytes:
        """With PFS, KE_R gives g^xy, and the KD body is XORed with the mask derived from it."""
        types = [t for t, _, _ in spans]
        if self._dh is None:
            if PayloadType.KE in types:
                raise _Refuse(NotifyType.INVALID_PAYLOAD_TYPE, "KE_R without KE_I", "pull_bad_ke")
            return plaintext
        if PayloadType.KE not in types or PayloadType.KD not in types:
            raise _Refuse(NotifyType.NO_PROPOSAL_CHOSEN, f"{self._peer_name()} did not answer KE_I (PFS)",
                          "pull_bad_ke")
        _, ke_start, ke_end = spans[types.index(PayloadType.KE)]
        try:
            g_xy = self._dh.exchange(bytes(plaintext[ke_start + 4 : ke_end]))
        except CryptoError as e:
            raise _Refuse(NotifyType.INVALID_KEY_INFORMATION, f"KE_R: {e}", "pull_bad_ke") from None
        _, start, end = spans[types.index(PayloadType.KD)]
        body = bytes(plaintext[start + 4 : end])
        clear = xor(body, kd_mask(self.sa, g_xy, self._ni_b, self._nr_b, len(body)))
        return plaintext[: start + 4] + clear + plaintext[end:]
