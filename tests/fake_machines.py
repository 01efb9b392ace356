"""Scripted stand-ins for the Phase 1 machines, to test the IKE engine without cryptography.

A :class:`FakeMachine` follows a script: its n-th new message goes to the n-th step, which returns the effects.
Like a real machine it answers a repeated datagram from its cache, retransmits its last message on the
"retransmit" timer and gives up after a few tries.  Every input is recorded in ``calls``.
"""

import hashlib
from collections.abc import Callable

import attrs
from twisted.internet.task import Clock

from gdoiserver.codec.cipher import IVChain, cipher_for
from gdoiserver.codec.constants import DOI, ExchangeType, OakleyAuth, OakleyEncryption, OakleyHash
from gdoiserver.codec.message import Message
from gdoiserver.codec.payloads import Identification, VendorID
from gdoiserver.crypto.keys import Phase1Keys
from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, Send, StartTimer
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER, ISAKMPSA, Phase1Proposal
from tests.test_protocol import PortTransport

ZERO = bytes(8)
MM = ExchangeType.IDENTITY_PROTECTION
#: Key material of the SAs the fakes establish: distinct octets, easy to look for in logs.
ENC_KEY = bytes(range(0xA0, 0xC0))  # 32 octets: AES-256
SKEYID_A = bytes(range(0x40, 0x60))


class CountingRandom:
    """A deterministic ``rng(n)``: SHA-256 of a counter, so that every call gives fresh octets."""

    def __init__(self, seed: bytes = b"fake"):
        self.seed = seed
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.calls += 1
            out += hashlib.sha256(self.seed + self.calls.to_bytes(8, "big")).digest()
        return out[:n]


def message(icookie: bytes, rcookie: bytes = ZERO, exchange_type: int = MM, flags: int = 0, message_id: int = 0,
            tag: bytes = b"fake") -> bytes:
    """An ISAKMP message of the given header whose only payload is a vendor ID ``tag`` (tells messages apart)."""
    return Message(icookie, rcookie, exchange_type, flags, message_id, (VendorID(tag),)).encode()


def make_sa(icookie: bytes, rcookie: bytes, peer, local, *, role: str = RESPONDER, now: float = 0.0,
            lifetime: int = 28800, nat_t: bool = False, peer_id: str = "peer.example", doi: int = DOI.IPSEC,
            initial_contact: bool = False, peer_vendor_ids: tuple = (), local_behind_nat: bool = False) -> ISAKMPSA:
    """An ISAKMP SA as a Phase 1 machine would establish it (AES-256, SHA2-256, PSK, group 14)."""
    proposal = Phase1Proposal(OakleyEncryption.AES_CBC, 256, OakleyHash.SHA2_256, OakleyAuth.PRE_SHARED_KEY, 14,
                              lifetime)
    keys = Phase1Keys(skeyid=b"\x01" * 32, skeyid_d=b"\x02" * 32, skeyid_a=SKEYID_A, skeyid_e=ENC_KEY,
                      enc_key=ENC_KEY, iv=b"\x03" * 16)
    last_iv = IVChain(cipher_for(OakleyEncryption.AES_CBC, 256), ENC_KEY, OakleyHash.SHA2_256, b"\x04" * 16)
    return ISAKMPSA(icookie, rcookie, role, doi, proposal, keys, last_iv, tuple(local), tuple(peer),
                    Identification.of("server.example"), Identification.of(peer_id), now, nat_t,
                    peer_vendor_ids=peer_vendor_ids, initial_contact=initial_contact,
                    local_behind_nat=local_behind_nat)


Step = Callable[..., list]


@attrs.define(eq=False)
class FakeMachine:
    """A Phase 1 machine that follows ``steps``; see the module notes."""

    role: str
    peer: tuple
    local: tuple | None
    steps: list
    icookie: bytes | None = None
    rcookie: bytes | None = None
    options: dict = attrs.Factory(dict)
    retransmit_delay: float = 1.0
    retransmit_tries: int = 2
    calls: list = attrs.Factory(list)
    done: bool = False
    state: str = "new"
    last_raw: bytes | None = None
    last_send: Send | None = None
    tries: int = 0

    def start(self, now: float, rng) -> list:
        self.calls.append(("start", now))
        self.icookie = rng(8)
        self.state = "sent-1"
        return self.send(message(self.icookie, ZERO, MM, tag=b"first"), self.peer)

    def receive(self, msg: Message, raw: bytes, now: float, rng, *, peer, local) -> list:
        self.calls.append(("receive", msg.exchange_type, raw, now, peer, local))
        if raw == self.last_raw and self.last_send is not None:
            return [self.last_send, Count("retransmit_answered")]
        if not self.steps:
            return [Count("fake_unexpected")]
        if self.role == INITIATOR and self.rcookie is None:
            self.rcookie = msg.responder_cookie
        self.last_raw = raw
        return self.steps.pop(0)(self, msg, now, rng, peer, local)

    def timer(self, key: str, now: float, rng) -> list:
        self.calls.append(("timer", key, now))
        if key != "retransmit" or self.done:
            return []
        if self.tries >= self.retransmit_tries:
            self.done, self.state = True, "failed"
            return [Failed(None, "peer did not answer: gave up after retransmissions")]
        self.tries += 1
        return [self.last_send, StartTimer("retransmit", self.retransmit_delay * 2**self.tries)]

    # What steps call.

    def send(self, data: bytes, peer, *, nat_t: bool = False, local=None) -> list:
        self.last_send = Send(data, tuple(peer), local if local is not None else self.local, nat_t)
        self.tries = 0
        return [self.last_send, StartTimer("retransmit", self.retransmit_delay)]

    def reply(self, rng, peer, *, tag: bytes = b"reply", nat_t: bool = False, local=None) -> list:
        if self.rcookie is None:
            self.rcookie = rng(8)
        self.state = f"sent-{tag.decode()}"
        return self.send(message(self.icookie, self.rcookie, MM, tag=tag), peer, nat_t=nat_t, local=local)

    def establish(self, now: float, peer, *, nat_t: bool = False, **sa_options) -> list:
        self.done, self.state = True, "established"
        sa = make_sa(self.icookie, self.rcookie, peer, self.local, role=self.role, now=now, nat_t=nat_t, **sa_options)
        return [CancelTimer("retransmit"), Established(sa)]


# Steps: step(machine, message, now, rng, peer, local) -> effects.


def answer(tag: bytes = b"reply", nat_t: bool = False) -> Step:
    """Answer with a message of our cookie pair (a responder makes its cookie on the first answer)."""
    return lambda m, msg, now, rng, peer, local: m.reply(rng, peer, tag=tag, nat_t=nat_t)


def answer_and_establish(tag: bytes = b"last", nat_t: bool = False, **sa_options) -> Step:
    """Send the last message of the exchange, then Established (Main Mode's responder after message 5)."""

    def step(m, msg, now, rng, peer, local):
        return m.reply(rng, peer, tag=tag, nat_t=nat_t)[:1] + m.establish(now, peer, nat_t=nat_t, **sa_options)

    return step


def establish(nat_t: bool = False, **sa_options) -> Step:
    """Established with nothing to send (Main Mode's initiator after message 6)."""
    return lambda m, msg, now, rng, peer, local: m.establish(now, peer, nat_t=nat_t, **sa_options)


def fail(notify: int | None, reason: str, tell_peer: bool = True) -> Step:
    """Failed, after a Notify in the clear (RFC 2408 section 5) when ``tell_peer``."""

    def step(m, msg, now, rng, peer, local):
        m.done, m.state = True, "failed"
        sent = [Send(message(m.icookie, m.rcookie or ZERO, ExchangeType.INFORMATIONAL, tag=b"notify"), peer)]
        return (sent if tell_peer else []) + [CancelTimer("retransmit"), Failed(notify, reason)]

    return step


def silent() -> Step:
    """Take the message and do nothing (a machine that waits)."""
    return lambda m, msg, now, rng, peer, local: []


def main_mode_responder() -> list:
    """MM1 -> MM2, MM3 -> MM4, MM5 -> MM6 and Established."""
    return [answer(b"MM2"), answer(b"MM4"), answer_and_establish(b"MM6")]


def main_mode_initiator() -> list:
    """(start: MM1) MM2 -> MM3, MM4 -> MM5, MM6 -> Established."""
    return [answer(b"MM3"), answer(b"MM5"), establish()]


@attrs.define
class FakeFactory:
    """A :class:`gdoiserver.net.ike.MachineFactory` of fake machines.  ``refuse`` lists exchange types it does
    not serve; ``keep`` records every machine made (off for floods)."""

    responder_script: Callable[[], list] = main_mode_responder
    initiator_script: Callable[[], list] = main_mode_initiator
    refuse: frozenset = frozenset()
    keep: bool = True
    responders: list = attrs.Factory(list)
    initiators: list = attrs.Factory(list)
    responder_calls: int = 0

    def responder(self, msg: Message, peer, local, now: float):
        self.responder_calls += 1
        if msg.exchange_type in self.refuse:
            return None
        machine = FakeMachine(RESPONDER, peer, local, self.responder_script(), icookie=msg.initiator_cookie)
        if self.keep:
            self.responders.append(machine)
        return machine

    def initiator(self, peer, local, **options):
        machine = FakeMachine(INITIATOR, peer, local, self.initiator_script(), options=options)
        self.initiators.append(machine)
        return machine


class FakeUDPReactor(Clock):
    """A Clock that also "binds" UDP ports: each listenUDP connects the protocol to a fake transport at once."""

    def __init__(self):
        super().__init__()
        self.bound = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == 0:
            port = 40000 + len(self.bound)
        protocol.makeConnection(PortTransport(port, interface))
        self.bound.append((interface, port, protocol))
        return _FakePort(protocol)


@attrs.define
class _FakePort:
    protocol: object

    def stopListening(self):
        self.protocol.doStop()
