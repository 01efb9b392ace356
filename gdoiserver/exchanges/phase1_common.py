"""What Main Mode and Aggressive Mode share (RFC 2409 section 5, RFC 3947): KE and nonces, SKEYID by
authentication method, HASH_I/HASH_R and signatures, NAT-D, the NAT-T vendor ID, ID payloads, Notify answers,
retransmission and the response cache, and :class:`Phase1Exchange`, the base of both machines.

A machine's ``receive`` looks the pair (role, state) up in its ``TRANSITIONS`` table: (message number, handler,
next state).  A handler either returns effects, or raises :class:`Drop` (ignore the message and count it: an
unauthenticated message must not end the exchange) or :class:`Abort` (the exchange fails; ``answer`` sends an
unencrypted Notify, which we do only for clear messages and never for a failed HASH or signature: RFC 2408
section 5 lets us stay silent, and silence tells an attacker nothing).

Randomness is drawn in a fixed order so tests can script it: cookie (8 octets) when the machine makes one, then
the DH private key (``dh_group(n).generate(rng)``), then the nonce (:data:`NONCE_SIZE` octets); a Notify answer
draws its 4-octet M-ID.
"""

import ipaddress
import socket
import struct
from typing import ClassVar

import attrs
from cryptography.hazmat.primitives.serialization import Encoding

from gdoiserver.codec.cipher import IVChain, cipher_for
from gdoiserver.codec.constants import DOI, NAT_T_VENDOR_ID, ExchangeType, NotifyType, OakleyAuth, ProtocolID
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.grammar import auth_variant, check, rule_for
from gdoiserver.codec.message import Message
from gdoiserver.codec.payloads import KE, NATD, Hash, Identification, Nonce, Notification, Signature, VendorID
from gdoiserver.crypto import certs
from gdoiserver.crypto import keys as keying
from gdoiserver.crypto.dh import dh_group
from gdoiserver.crypto.errors import InvalidKeyExchange
from gdoiserver.crypto.prf import HashAlgorithm, constant_time_equal, hash_algorithm
from gdoiserver.exchanges import proposals
from gdoiserver.exchanges.effects import Address, CancelTimer, Count, Effect, Established, Failed, Send, StartTimer
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER, ISAKMPSA, Phase1Policy, Phase1Proposal

#: The peer's NAT-T port (RFC 3947 section 4).
NAT_T_PORT = 4500
#: Octets of our nonces (RFC 2409 section 5 allows 8 to 256).
NONCE_SIZE = 32
ZERO_COOKIE = bytes(8)
RETRANSMIT, EXCHANGE_TIMEOUT = "retransmit", "exchange_timeout"
#: Notify types below this one report errors (RFC 2408 section 3.14.1).
_ERROR_TYPES_END = 16384
_UDP = 17


class Drop(Exception):
    """Ignore the message and add one to the counter ``counter``; ``reason`` says why, for a debug log line."""

    def __init__(self, counter: str, reason: str = ""):
        super().__init__(counter)
        self.counter = counter
        self.reason = reason


class Abort(Exception):
    """End the exchange with ``Failed(notify, reason)``; ``answer`` sends ``notify`` in a clear Informational."""

    def __init__(self, notify: int | None, reason: str, answer: bool = False):
        super().__init__(reason)
        self.notify = notify
        self.reason = reason
        self.answer = answer


# --- cookies, vendor IDs, NAT-D ------------------------------------------------------------------------------------


def new_cookie(rng) -> bytes:
    """An 8-octet cookie from ``rng``; never zero, which means "no cookie yet" (RFC 2408 section 3.1)."""
    cookie = bytes(rng(8))
    return cookie if cookie != ZERO_COOKIE else b"\0" * 7 + b"\1"


def vendor_ids(policy: Phase1Policy, nat_t: bool) -> list[VendorID]:
    """Our Vendor ID payloads: RFC 3947's when ``nat_t``, then the policy's own."""
    ids = [VendorID(NAT_T_VENDOR_ID)] if nat_t else []
    return ids + [VendorID(v) for v in policy.vendor_ids]


def peer_vendor_ids(payloads) -> tuple[bytes, ...]:
    return tuple(p.vendor_id for p in payloads if isinstance(p, VendorID))


def nat_d_hash(h: HashAlgorithm, cky_i: bytes, cky_r: bytes, address: Address) -> bytes:
    """HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash (RFC 3947 section 3.2)."""
    host = address[0].partition("%")[0]  # an IPv6 scope is not part of the address
    ip = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    return h.hash(cky_i, cky_r, ip, struct.pack("!H", address[1]))


def nat_d_payloads(h: HashAlgorithm, cky_i: bytes, cky_r: bytes, *, local: Address, peer: Address) -> list[NATD]:
    """The two NAT-D payloads: first the peer's address (the destination), then ours (RFC 3947 section 3.2)."""
    return [NATD(nat_d_hash(h, cky_i, cky_r, peer)), NATD(nat_d_hash(h, cky_i, cky_r, local))]


@attrs.frozen
class NatDetection:
    """What a peer's NAT-D payloads tell (RFC 3947 section 3.2)."""

    local_behind_nat: bool  # the first hash is not that of our address as the datagram reached it
    peer_behind_nat: bool  # no other hash is that of the address the datagram came from

    @property
    def detected(self) -> bool:
        return self.local_behind_nat or self.peer_behind_nat


def detect_nat(h: HashAlgorithm, cky_i: bytes, cky_r: bytes, payloads, *, local: Address, peer: Address):
    """A :class:`NatDetection` from the NAT-D payloads among ``payloads``, None if there are none."""
    hashes = [p.hash_of_address_and_port for p in payloads if isinstance(p, NATD)]
    if not hashes:
        return None
    local_behind = hashes[0] != nat_d_hash(h, cky_i, cky_r, local)
    peer_behind = nat_d_hash(h, cky_i, cky_r, peer) not in hashes[1:]
    return NatDetection(local_behind, peer_behind)


# --- identities, notifies --------------------------------------------------------------------------------------------


def local_identification(policy: Phase1Policy, local: Address) -> Identification:
    """Our ID payload: the policy's, else our address (ID_IPV4_ADDR / ID_IPV6_ADDR), protocol and port 0."""
    if policy.local_id is not None:
        return policy.local_id
    return Identification.of(ipaddress.ip_address(local[0]))


def check_peer_id(ident: Identification) -> None:
    """RFC 2407 section 4.6.2: in Phase 1 the ID's protocol and port are 0, or UDP and port 500 (4500 after a
    NAT-T float, which some peers send).  Anything else is INVALID-ID-INFORMATION."""
    if (ident.protocol_id, ident.port) == (0, 0):
        return
    if ident.protocol_id == _UDP and ident.port in (0, 500, NAT_T_PORT):
        return
    raise Abort(NotifyType.INVALID_ID_INFORMATION, f"ID protocol {ident.protocol_id} port {ident.port} in Phase 1")


def isakmp_notification(doi: int, notify_type: int, cky_i: bytes, cky_r: bytes) -> Notification:
    """A Notify about the ISAKMP SA: protocol ISAKMP, SPI = CKY-I | CKY-R (RFC 2408 section 3.14)."""
    return Notification(doi, ProtocolID.ISAKMP, notify_type, cky_i + cky_r)


def notify_datagram(message: Message, notify_type: int, doi: int, rng) -> bytes:
    """A clear Informational carrying ``notify_type`` with ``message``'s own cookies (RFC 2409 section 5.7)."""
    mid = int.from_bytes(rng(4), "big") or 1
    n = isakmp_notification(doi, notify_type, message.initiator_cookie, message.responder_cookie)
    informational = ExchangeType.INFORMATIONAL
    return Message(message.initiator_cookie, message.responder_cookie, informational, 0, mid, (n,)).encode()


def _notify_name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"Notify {notify_type}"


def first(payloads, cls):
    """The first payload of class ``cls`` (the grammar has made sure there is the right number)."""
    return next(p for p in payloads if isinstance(p, cls))


# --- retransmission and the response cache -------------------------------------------------------------------------


@attrs.define
class Retransmitter:
    """Our own retransmissions: the same datagrams again after ``initial``, then twice as long each time, up to
    ``tries`` times; then the peer has not answered."""

    initial: float
    tries: int
    sends: tuple[Send, ...] = ()
    delay: float = 0.0
    done_tries: int = 0

    def arm(self, sends) -> list[Effect]:
        self.sends, self.delay, self.done_tries = tuple(sends), self.initial, 0
        return [StartTimer(RETRANSMIT, self.delay)]

    @property
    def armed(self) -> bool:
        return bool(self.sends)

    def fire(self) -> list[Effect] | None:
        """The effects of one retransmission, or None when the tries are used up."""
        if self.done_tries >= self.tries:
            return None
        self.done_tries += 1
        self.delay *= 2
        return [Count("retransmit_sent"), *self.sends, StartTimer(RETRANSMIT, self.delay)]

    def disarm(self) -> None:
        self.sends = ()


@attrs.define
class ResponseCache:
    """The exact datagram last answered and the answer, resent as it was when that datagram comes again."""

    request: bytes | None = None
    answer: tuple[Send, ...] = ()

    def store(self, request: bytes, answer) -> None:
        self.request, self.answer = request, tuple(answer)

    def lookup(self, raw: bytes) -> tuple[Send, ...] | None:
        return self.answer if self.request is not None and raw == self.request and self.answer else None


@attrs.frozen
class Arrival:
    """One received message and where it came: the handler's input."""

    message: Message
    raw: bytes
    now: float
    rng: object
    peer: Address
    local: Address


# --- the machine base ----------------------------------------------------------------------------------------------


def _state(default):
    """A field the exchange fills in (not a constructor argument)."""
    return attrs.field(default=default, init=False)


def _secret(default):
    """A state field kept out of the repr (key material, or noise)."""
    return attrs.field(default=default, init=False, repr=False)


@attrs.define(eq=False)
class Phase1Exchange:
    """State and steps shared by :class:`MainMode` and :class:`AggressiveMode`; see the module notes.

    Build a machine with the subclass's ``initiator(...)`` or ``responder(...)``.  The fields after ``state``
    fill in as the exchange goes; key material never shows in a repr.
    """

    EXCHANGE: ClassVar[int]
    #: (role, state) -> (number of the message expected, handler, state after it).
    TRANSITIONS: ClassVar[dict]

    policy: Phase1Policy
    role: str
    local: Address | None = None
    peer: Address | None = None
    doi: int = DOI.IPSEC
    initiator_cookie: bytes | None = None
    responder_cookie: bytes | None = None
    initial_contact: bool = False

    state: str = _state("START")
    done: bool = _state(False)
    proposal: Phase1Proposal | None = _state(None)
    offered: tuple[Phase1Proposal, ...] = _state(())
    sai_b: bytes = _secret(b"")
    psk: bytes | None = _secret(None)
    dh: object = _secret(None)
    g_xi: bytes = _secret(b"")
    g_xr: bytes = _secret(b"")
    g_xy: bytes = _secret(b"")
    ni_b: bytes = _secret(b"")
    nr_b: bytes = _secret(b"")
    keys: keying.Phase1Keys | None = _secret(None)
    iv: IVChain | None = _secret(None)
    local_id: Identification | None = _state(None)
    peer_id: Identification | None = _state(None)
    peer_certificate: bytes | None = _secret(None)
    peer_vendor_ids: tuple[bytes, ...] = _state(())
    nat_t_agreed: bool = _state(False)
    nat: NatDetection | None = _state(None)
    nat_t: bool = _state(False)
    peer_initial_contact: bool = _state(False)
    _timers: set = _secret(attrs.Factory(set))
    _retransmitter: Retransmitter = _secret(
        attrs.Factory(lambda self: Retransmitter(self.policy.retransmit_initial, self.policy.retransmit_tries),
                      takes_self=True)
    )
    _cache: ResponseCache = _secret(attrs.Factory(ResponseCache))
    _last_raw: bytes | None = _secret(None)

    @classmethod
    def initiator(cls, policy: Phase1Policy, *, local: Address, peer: Address, doi: int = DOI.IPSEC,
                  initiator_cookie: bytes | None = None, initial_contact: bool = False):
        """A machine that starts an exchange with ``peer`` from ``local``: call ``start(now, rng)``.

        ``initial_contact`` adds N(INITIAL-CONTACT) to our last message (RFC 2407 section 4.6.3.3).
        """
        return cls(policy, INITIATOR, local, peer, doi, initiator_cookie, None, initial_contact)

    @classmethod
    def responder(cls, policy: Phase1Policy, *, responder_cookie: bytes | None = None):
        """A machine that answers a first message; addresses, DOI and cookies come from that message."""
        return cls(policy, RESPONDER, responder_cookie=responder_cookie)

    # --- inputs ---------------------------------------------------------------------------------------------------

    def start(self, now: float, rng) -> list[Effect]:
        """Send the first message (initiators only)."""
        if self.role != INITIATOR or self.state != "START":
            raise RuntimeError("start() is for a new initiator")
        try:
            return self._start(now, rng)
        except Abort as a:
            return self._finish_failed(a.notify, a.reason)

    def receive(self, message: Message, raw: bytes, now: float, rng, *, peer: Address, local: Address) -> list[Effect]:
        """Handle one decoded message; ``peer`` and ``local`` are the addresses it travelled between."""
        cached = self._cache.lookup(raw)
        if cached is not None:
            return [Count("retransmit_answered"), *cached]
        if raw == self._last_raw:
            return [Count("dropped_duplicate")]
        if self.done:
            return [Count("dropped_after_done")]
        entry = self.TRANSITIONS.get((self.role, self.state))
        if entry is None:
            return [Count("dropped_unexpected")]
        if not self._cookies_match(message):
            return self._dropped("dropped_wrong_cookie")
        if message.exchange_type != self.EXCHANGE:
            return self._other_exchange(message)
        if message.message_id != 0:
            return self._dropped("dropped_unexpected")
        _, handler, next_state = entry
        try:
            effects = handler(self, Arrival(message, raw, now, rng, peer, local))
        except Drop as d:
            return self._dropped(d.counter, d.reason)
        except Abort as a:
            return self._abort(a, message, raw, rng)
        except Exception as e:  # never let a bug in one exchange reach the adapter
            return [Count("internal_error"), *self._finish_failed(None, f"internal error: {type(e).__name__}")]
        self._last_raw = raw
        if not self.done:
            self.state = next_state
        return effects

    def timer(self, key: str, now: float, rng) -> list[Effect]:
        """A timer we started fired: retransmit (or give up), or end the exchange on its timeout."""
        if self.done or key not in self._timers:
            return []
        self._timers.discard(key)
        if key == RETRANSMIT and self._retransmitter.armed:
            effects = self._retransmitter.fire()
            if effects is None:
                return self._finish_failed(None, "peer did not answer")
            self._timers.add(RETRANSMIT)
            return effects
        if key == EXCHANGE_TIMEOUT:
            return self._finish_failed(None, "exchange timed out")
        return []

    def _start(self, now: float, rng) -> list[Effect]:
        raise NotImplementedError  # the first message of each mode

    # --- effects ------------------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> Send:
        return Send(data, self.peer, self.local, self.nat_t)

    def _start_timer(self, key: str, delay: float) -> StartTimer:
        self._timers.add(key)
        return StartTimer(key, delay)

    def _awaiting(self, send: Send) -> list[Effect]:
        """``send`` and the retransmission timer of a message that awaits an answer (initiator only)."""
        self._timers.add(RETRANSMIT)
        return [send, *self._retransmitter.arm([send])]

    def _answer(self, a: Arrival, send: Send) -> list[Effect]:
        """``send``, remembered as the answer to ``a`` for the peer's retransmissions."""
        self._cache.store(a.raw, [send])
        return [send]

    def _cancel_timers(self) -> list[Effect]:
        self._retransmitter.disarm()
        cancels = [CancelTimer(k) for k in (RETRANSMIT, EXCHANGE_TIMEOUT) if k in self._timers]
        self._timers.clear()
        return cancels

    def _finish_failed(self, notify: int | None, reason: str) -> list[Effect]:
        self.done, self.state = True, "FAILED"
        return [*self._cancel_timers(), Failed(notify, reason)]

    def _abort(self, a: Abort, message: Message, raw: bytes, rng) -> list[Effect]:
        effects: list[Effect] = []
        if a.answer and a.notify is not None and not message.encrypted and self.peer is not None:
            send = self._send(notify_datagram(message, a.notify, self.doi, rng))
            self._cache.store(raw, [send])
            effects.append(send)
        return effects + self._finish_failed(a.notify, a.reason)

    def _established(self, now: float) -> list[Effect]:
        nat = self.nat or NatDetection(False, False)
        sa = ISAKMPSA(
            initiator_cookie=self.initiator_cookie,
            responder_cookie=self.responder_cookie,
            role=self.role,
            doi=self.doi,
            proposal=self.proposal,
            keys=self.keys,
            last_iv=self.iv,
            local=self.local,
            peer=self.peer,
            local_id=self.local_id,
            peer_id=self.peer_id,
            established_at=now,
            nat_t=self.nat_t,
            peer_certificate=self.peer_certificate,
            peer_vendor_ids=self.peer_vendor_ids,
            initial_contact=self.peer_initial_contact,
            local_behind_nat=nat.local_behind_nat,
            peer_behind_nat=nat.peer_behind_nat,
        )
        self.done, self.state = True, "ESTABLISHED"
        self.dh = None  # the ephemeral key is no longer needed
        effects: list[Effect] = self._cancel_timers()
        if self.proposal.group in proposals.WEAK_GROUPS:
            effects.append(Count("weak_dh_group"))
        return [*effects, Established(sa)]

    # --- checks -------------------------------------------------------------------------------------------------

    def _cookies_match(self, message: Message) -> bool:
        if self.initiator_cookie is not None and message.initiator_cookie != self.initiator_cookie:
            return False
        if self.state == "START":  # a responder's first message: the initiator has no cookie of ours yet
            return message.responder_cookie == ZERO_COOKIE
        if self.role == INITIATOR and self.state in ("MM1_SENT", "AM1_SENT"):
            return True  # the responder's cookie is learnt from its answer
        return message.responder_cookie == self.responder_cookie

    def _dropped(self, counter: str, reason: str = "") -> list[Effect]:
        """Count a message we ignore.  A responder that ignores its first message is over: nothing started."""
        if self.state == "START":
            return [Count(counter, reason), *self._finish_failed(None, f"first message refused ({counter})")]
        return [Count(counter, reason)]

    def _other_exchange(self, message: Message) -> list[Effect]:
        """A message of another exchange under our cookies.  Only a clear error Notify answering our first
        message ends the exchange (the peer refused our proposals); anything else is left to the adapter."""
        if (
            self.role == INITIATOR
            and self.state in ("MM1_SENT", "AM1_SENT")
            and message.exchange_type == ExchangeType.INFORMATIONAL
            and not message.encrypted
        ):
            for n in message.payloads:
                if isinstance(n, Notification) and 0 < n.notify_type < _ERROR_TYPES_END:
                    return self._finish_failed(n.notify_type, f"peer answered {_notify_name(n.notify_type)}")
        return self._dropped("dropped_other_exchange")

    def _rule(self, number: int, auth: int | None = None):
        variant = auth_variant(auth) if auth is not None else None
        return rule_for(self.EXCHANGE, number, doi=self.doi, variant=variant)

    def _check_clear(self, a: Arrival, number: int, auth: int | None = None, *, answer: bool = False) -> None:
        """Hold a clear message to its rule.  A first message that fails is answered (``answer``); a later one is
        dropped, as anyone can send it."""
        if a.message.encrypted:  # an encrypted message where a clear one belongs: out of order, or not ours
            raise Drop("dropped_unexpected")
        try:
            check(a.message, self._rule(number, auth))
        except DecodeError as e:
            if answer:
                raise Abort(e.notify, f"message {number}: {e.reason}", answer=True) from None
            raise Drop("dropped_malformed", f"message {number}: {e.reason}") from None

    def _open(self, a: Arrival, number: int) -> tuple[Message, IVChain]:
        """Decrypt (when encrypted) and check an authenticating message; return it and the chain after it.

        A clear message where the rule wants an encrypted one is dropped; a body that does not decode is
        PAYLOAD-MALFORMED (the usual sign of a wrong key); a decrypted message that breaks the rule fails with the
        rule's Notify.  Neither is answered: the peer is not authenticated yet.
        """
        rule = self._rule(number, self.proposal.auth)
        message, chain = a.message, self.iv
        if message.encrypted:
            try:
                message, chain = self.iv.decrypt(message, self.doi)
            except DecodeError as e:
                raise Abort(NotifyType.PAYLOAD_MALFORMED, f"message {number} does not decode after decryption "
                            f"({e.reason}): wrong keys?") from None
        elif rule.encrypted:
            raise Drop("dropped_unencrypted")
        try:
            check(message, rule)
        except DecodeError as e:
            raise Abort(e.notify, f"message {number}: {e.reason}") from None
        return message, chain

    # --- key exchange and keys ------------------------------------------------------------------------------------

    def _dh_group(self):
        return dh_group(self.proposal.group, allow_weak=self.policy.allow_weak_groups)

    def _new_dh(self, rng) -> bytes:
        """Draw our DH private key; return our KE data."""
        self.dh = self._dh_group().generate(rng)
        return self.dh.public_bytes()

    def _shared_secret(self, peer_ke: bytes) -> bytes:
        try:
            return self.dh.exchange(peer_ke)
        except InvalidKeyExchange as e:
            raise Abort(NotifyType.INVALID_KEY_INFORMATION, str(e), answer=True) from None

    def _derive_keys(self) -> None:
        """SKEYID by authentication method, SKEYID_d/a/e, the cipher key and the first IV (RFC 2409 section 5,
        appendix B)."""
        h = hash_algorithm(self.proposal.hash)
        if self.proposal.auth == OakleyAuth.PRE_SHARED_KEY:
            skeyid = keying.skeyid_preshared(h, self.psk, self.ni_b, self.nr_b)
        else:
            skeyid = keying.skeyid_signature(h, self.ni_b, self.nr_b, self.g_xy)
        cipher = cipher_for(self.proposal.encryption, self.proposal.key_length)
        self.keys = keying.derive_phase1_keys(
            h, skeyid, self.g_xy, self.initiator_cookie, self.responder_cookie, self.g_xi, self.g_xr,
            cipher.key_size, cipher.block_size,
        )
        self.iv = IVChain(cipher, self.keys.enc_key, self.proposal.hash, self.keys.iv)

    def _hash(self) -> HashAlgorithm:
        return hash_algorithm(self.proposal.hash)

    def _auth_hash(self, signer: str, id_payload: Identification) -> bytes:
        """HASH_I (``signer`` initiator) or HASH_R over the signer's ID payload body (RFC 2409 section 5).

        With ECDSA the prf is HMAC with the method's own SHA-2 (RFC 4754 section 3, as strongSwan does it).
        """
        h = certs.hash_for_auth(self.proposal.auth, self._hash())
        f = keying.hash_i if signer == INITIATOR else keying.hash_r
        return f(h, self.keys.skeyid, self.g_xi, self.g_xr, self.initiator_cookie, self.responder_cookie,
                 self.sai_b, id_payload.encode_body(None))

    def _ke_nonce(self, payloads) -> tuple[bytes, bytes]:
        return first(payloads, KE).key_exchange_data, first(payloads, Nonce).nonce_data

    # --- authentication -----------------------------------------------------------------------------------------

    def _auth_payloads(self) -> list:
        """[CERT...,] HASH_I|HASH_R or SIG_I|SIG_R for our side (RFC 2409 sections 5.1 and 5.4)."""
        digest = self._auth_hash(self.role, self.local_id)
        if self.proposal.auth == OakleyAuth.PRE_SHARED_KEY:
            return [Hash(digest)]
        credentials = self.policy.credentials
        chain = [certs.certificate_payload(c) for c in (credentials.certificate, *credentials.chain)]
        return [*chain, Signature(certs.sign(credentials, self.proposal.auth, digest))]

    def _certificate_requests(self, wanted: bool | None = None) -> list:
        """CRs naming the CAs we trust when we authenticate the peer by signature (``wanted``; by default when the
        chosen suite is a signature one), so that it sends its certificate (RFC 2408 section 3.10)."""
        if wanted is None:
            wanted = proposals.is_signature(self.proposal.auth)
        return list(certs.certificate_request(self.policy.trust)) if wanted else []

    def _verify_peer(self, payloads, now: float) -> None:
        """Check the peer's HASH, or its certificate, ID and signature; raise Abort if any fails."""
        peer_role = RESPONDER if self.role == INITIATOR else INITIATOR
        expected = self._auth_hash(peer_role, self.peer_id)
        if self.proposal.auth == OakleyAuth.PRE_SHARED_KEY:
            if not constant_time_equal(first(payloads, Hash).hash_data, expected):
                raise Abort(NotifyType.INVALID_HASH_INFORMATION, "the peer's HASH does not verify (wrong key?)")
            return
        try:
            received = certs.certificates_from_payloads(payloads)
            if not received:
                raise Abort(NotifyType.CERTIFICATE_UNAVAILABLE, "the peer sent no certificate")
            leaf = certs.validate_chain(self.policy.trust, received[0], received[1:], now)
        except certs.CertificateError as e:
            raise Abort(e.notify, f"the peer's certificate: {e.reason}") from None
        if not certs.identity_matches(leaf, self.peer_id):
            raise Abort(NotifyType.INVALID_ID_INFORMATION, "the peer's ID does not name its certificate")
        if not certs.verify(leaf, self.proposal.auth, expected, first(payloads, Signature).signature_data):
            raise Abort(NotifyType.AUTHENTICATION_FAILED, "the peer's signature does not verify")
        self.peer_certificate = leaf.public_bytes(Encoding.DER)

    def _can_authenticate(self, proposal: Phase1Proposal, psk: bytes | None) -> bool:
        """Whether we hold what ``proposal``'s method needs: the pre-shared key, or a key of that method and CAs."""
        if proposal.auth == OakleyAuth.PRE_SHARED_KEY:
            return psk is not None
        credentials, trust = self.policy.credentials, self.policy.trust
        return credentials is not None and trust is not None and credentials.auth_method == proposal.auth

    # --- NAT-T --------------------------------------------------------------------------------------------------

    def _note_vendor_ids(self, payloads) -> None:
        self.peer_vendor_ids += peer_vendor_ids(payloads)
        if NAT_T_VENDOR_ID in self.peer_vendor_ids and self.policy.nat_t:
            self.nat_t_agreed = True

    def _nat_d(self) -> list[NATD]:
        """Our NAT-D pair once both sides announced RFC 3947 (section 3.2)."""
        if not self.nat_t_agreed:
            return []
        cookies = (self.initiator_cookie, self.responder_cookie)
        return nat_d_payloads(self._hash(), *cookies, local=self.local, peer=self.peer)

    def _detect_nat(self, a: Arrival, payloads) -> None:
        if self.nat_t_agreed:
            found = detect_nat(self._hash(), self.initiator_cookie, self.responder_cookie, payloads,
                               local=a.local, peer=a.peer)
            if found is not None:
                self.nat = found

    def _float_initiator(self) -> None:
        """After NAT-D shows a NAT the initiator moves to port 4500 (RFC 3947 section 4)."""
        if self.nat_t_agreed and self.nat is not None and self.nat.detected and not self.nat_t:
            self.nat_t = True
            self.local = (self.local[0], self.policy.nat_t_port)
            self.peer = (self.peer[0], NAT_T_PORT)

    def _first_arrival(self, a: Arrival) -> None:
        """A responder answers its first message where it came from: on our NAT-T port (where an initiator that
        knows of a NAT may start) that means over NAT-T, behind the non-ESP marker (RFC 3948 section 2.2)."""
        self.local, self.peer = a.local, a.peer
        self.nat_t = self.policy.nat_t and a.local[1] == self.policy.nat_t_port

    def _float_responder(self, a: Arrival) -> None:
        """An authenticated message on our NAT-T port moves the SA there, to where it came from (RFC 3947 4)."""
        if self.policy.nat_t and a.local[1] == self.policy.nat_t_port:
            self.nat_t = True
            self.local, self.peer = a.local, a.peer

    def _note_notifications(self, payloads) -> None:
        if any(isinstance(p, Notification) and p.notify_type == NotifyType.INITIAL_CONTACT for p in payloads):
            self.peer_initial_contact = True

    def _initial_contact(self) -> list[Notification]:
        if not self.initial_contact:
            return []
        return [isakmp_notification(self.doi, NotifyType.INITIAL_CONTACT, self.initiator_cookie, self.responder_cookie)]

    def _message(self, payloads, flags: int = 0) -> Message:
        cky_r = self.responder_cookie or ZERO_COOKIE
        return Message(self.initiator_cookie, cky_r, self.EXCHANGE, flags, 0, tuple(payloads))

    def _encrypt(self, payloads) -> bytes:
        """Encrypt a message under the Phase 1 chain and move the chain on (RFC 2409 appendix B)."""
        data, self.iv = self.iv.encrypt(self._message(payloads))
        return data


def sa_body(raw: bytes) -> bytes:
    """SAi_b as the initiator sent it: the body of the first payload of ``raw`` (the grammar puts the SA first in
    MM1 and AM1), so HASH_I and HASH_R cover the peer's octets, not our re-encoding (RFC 2409 section 5)."""
    length = struct.unpack_from("!H", raw, 28 + 2)[0]
    return bytes(raw[28 + 4 : 28 + length])

