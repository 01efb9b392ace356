#!/usr/bin/env python3
"""Coverage-guided fuzzing of the exchange machines with atheris (issue 9), and the contract each input is held to.

Every machine is brought into each of its states by a real exchange between our own two sides
(:class:`tests.machine_pair.MachinePair`), recorded once at import: a copy of the machine and of its random source
is taken before every message it receives, and after the last.  An input picks one of those snapshots (a *target*)
and feeds a fresh copy of it one to four steps:

* the genuine next message of the recorded exchange, or a replay of any recorded message (both directions);
* a recorded message with some octets changed (header, IV or ciphertext);
* a hostile payload chain sealed as the machine expects it: the right cookies, M-ID and exchange type (or not), the
  body encrypted with the machine's own key and IV chain (or the KEK), so that it reaches the machine's logic.
  The chain is built from the payloads of the recorded exchange, in any order, duplicated, left out, mutated, with
  wrong lengths, with their lists inflated to thousands of elements (attributes, proposals, transforms, key
  packets, SPIs), random payloads of any type, and thousands of payloads in a row.  Its authenticator (HASH(n),
  HASH_I/HASH_R, SIG_I/SIG_R, the PUSH's SIG, the ACK's HASH) is computed with the right keys (*authentic*), or
  random, or one bit off (*forged*);
* random octets under the right header; a timer firing.

Machines (``TARGETS``): Main Mode and Aggressive Mode (both roles; PSK, and ECDSA certificates for Main Mode),
Quick Mode (both roles, with and without PFS), Informational (``informational.process`` under either side's SA),
GROUPKEY-PULL (``PullResponder`` and ``PullInitiator``, plain and with PFS, CERT and POP), the member's
GROUPKEY-PUSH handling (``GroupRekey.on_push``, plain and with an LKH eviction) and the key server's ACK handling
(``RekeyService.ack_received``).

The contract (:func:`check` raises AssertionError, or lets the stray exception out, when it is broken):

1. Only typed outcomes: no exception escapes, no ``Count("internal_error")`` (the machines' own catch-alls), every
   effect is one of the machine's effect classes, every datagram sent decodes as an ISAKMP message.
2. A message that is ignored (only counters, nothing sent, the machine not over) leaves every field of the machine
   as it was; a retransmission answered from the cache too.
3. No security state changes without an authentic message: after a forged, replayed, tampered or random input the
   machine's security state (keys, nonces, cookies, peer identity, chosen proposal, SPIs, selectors, established
   SA, SEQ, KEK, TEKs, LKH path, a key server's group state, a member's ACK state) is what it was, or exactly what
   the genuine message makes of the machine as it stood (a replay of it, or a copy whose changes the authenticator
   does not cover and the machine ignores).  What an established result holds is compared, not only that one
   came.  IV chains are left out: they follow the octets received (RFC 2409 appendix B), and rule 2 holds them.
4. A forged input ends an exchange in progress only where the machine documents that it does (a responder's first
   message, and Phase 1's authenticating messages, which fail on a bad HASH, RFC 2408 section 5); each such end
   is counted per target.
5. After inputs that were all ignored, the genuine next message still does what it did in the recorded exchange.

The messages of Phase 1 before its authentication (MM1-MM4, AM1) have no authenticator: they may change a
machine's state by design (rule 3 does not apply); rules 1, 2 and 5 do, and none of them may establish anything.
Findings left to the lead (``KNOWN_FINDINGS``) are recognized narrowly and counted instead of raised.

    python fuzz/exchanges_fuzz.py --write-seeds SEEDS
    python fuzz/exchanges_fuzz.py WORK SEEDS fuzz/corpus_exchanges -max_total_time=600 -max_len=1024  # libFuzzer

Recording is deterministic (seeded random sources; tests.pki keys from fixed seeds, counted serial numbers and RFC
6979 certificate signatures while it runs) but for the values of ECDSA signatures in messages, so that a crash file
replays in another process.
``EXCHANGES_FUZZ_STATS=FILE`` writes the inputs per target and their outcomes to FILE (JSON) every 1,000 inputs.
fuzz/README.md gives the whole procedure.
"""

import contextlib
import os
import sys

if __name__ == "__main__":  # run as a script: the repository root holds gdoiserver and tests
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__" and "--write-seeds" not in sys.argv:
    import atheris

    _instrumented = atheris.instrument_imports(include=["gdoiserver"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import collections
    import copy
    import hashlib
    import json
    import random
    import struct

    import attrs

    from gdoiserver.codec.constants import DOI, ExchangeType, Flags, NotifyType, OakleyAuth, PayloadType
    from gdoiserver.codec.errors import DecodeError
    from gdoiserver.codec.message import HEADER_SIZE, decode_message
    from gdoiserver.codec.payload import context_for, decode_chain
    from gdoiserver.codec.payloads import Identification, Notification
    from gdoiserver.crypto import certs
    from gdoiserver.crypto.prf import hash_algorithm
    from gdoiserver.doi.gdoi import hashes as gdoi_hashes
    from gdoiserver.doi.gdoi import push as gdoi_push
    from gdoiserver.doi.gdoi.ack import build_ack
    from gdoiserver.doi.gdoi.ack import prf_for as ack_prf_for
    from gdoiserver.doi.gdoi.hashes import payload_spans
    from gdoiserver.doi.gdoi.pull import KeyServerPolicy, PullInitiator, PullResponder
    from gdoiserver.doi.gdoi.registration import MemberPolicy
    from gdoiserver.doi.ipsec.policy import PolicyTable
    from gdoiserver.doi.ipsec.quick_mode import QuickMode
    from gdoiserver.exchanges import informational
    from gdoiserver.exchanges.aggressive_mode import AggressiveMode
    from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, Send, SendKeepalive, StartTimer
    from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER
    from gdoiserver.group.keys import GroupTable
    from gdoiserver.member import rekey as member_rekey

from tests import pki  # noqa: E402  (the test helpers are not instrumented: they are not under test)
from tests.machine_pair import MachinePair, seeded_rng  # noqa: E402

GDOI_PORT = 848
#: Datagrams above this are cut: UDP over IPv4 carries at most 65,507 octets.
MAX_DATAGRAM = 65000
#: Elements an inflated list may reach (attributes, proposals, transforms, key packets, SPIs, payloads).
MAX_INFLATE = 16384
MM, AM, QM = ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE, ExchangeType.QUICK_MODE
INFO, PULL, PUSH, ACK = (ExchangeType.INFORMATIONAL, ExchangeType.GROUPKEY_PULL, ExchangeType.GROUPKEY_PUSH,
                         ExchangeType.GROUPKEY_PUSH_ACK)
#: Exchange types a header tweak may put instead of the right one.
OTHER_EXCHANGES = (MM, AM, INFO, QM, PULL, PUSH, ACK, 0, 255)
#: Payload types a random payload or a Next Payload tweak may name (every registered one, and 14, 0, 255).
PAYLOAD_TYPES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 0, 130, 255)
TIME_OFFSETS = (0.0, 0.0, 0.0, 0.0, 5.0, 61.0, 30 * 86400.0, -3600.0)


class Breach(AssertionError):
    """The contract is broken: libFuzzer reports it as a crash and writes the input out."""


# --- reading an input ------------------------------------------------------------------------------------------------


class Reader:
    """The fuzzer's octets, read front to back; past the end every read gives zeros (the default choices)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.u8() << 8 | self.u8()

    def u32(self) -> int:
        return self.u16() << 16 | self.u16()

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return bytes(out)


# --- raw payload chains ----------------------------------------------------------------------------------------------


@attrs.define
class Raw:
    """One payload as it goes on the wire: its type, its body, and what its generic header says wrongly."""

    ptype: int
    body: bytes
    length_delta: int = 0
    next_override: int | None = None
    reserved: int = 0


def encode_raw(payloads) -> bytes:
    """The generic headers and bodies of ``payloads`` chained (RFC 2408 section 3.2), with their tweaks."""
    out = bytearray()
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].ptype if i + 1 < len(payloads) else 0
        if p.next_override is not None:
            nxt = p.next_override
        length = min(max(4 + len(p.body) + p.length_delta, 0), 0xFFFF)
        out += struct.pack("!BBH", nxt & 0xFF, p.reserved, length) + p.body
    return bytes(out)


def split_chain(first: int, plaintext: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each payload of a decrypted chain, from the generic headers alone."""
    try:
        spans = payload_spans(plaintext, first)
    except DecodeError:
        return []
    return [(t, bytes(plaintext[s + 4 : e])) for t, s, e in spans]


def mutate(body: bytes, r: Reader, pool) -> bytes:
    """``body`` changed 1 to 4 times: a bit flipped, an octet or a 16-bit field set, cut, grown, spliced."""
    for _ in range(1 + r.u8() % 4):
        kind, pos = r.u8() % 8, r.u16()
        at = pos % (len(body) + 1)
        if kind == 0 and body:
            at %= len(body)
            body = body[:at] + bytes([body[at] ^ (1 << (r.u8() % 8))]) + body[at + 1 :]
        elif kind == 1 and body:
            at %= len(body)
            body = body[:at] + bytes([r.u8()]) + body[at + 1 :]
        elif kind == 2:
            body = body[:at] + r.u16().to_bytes(2, "big") + body[at + 2 :]
        elif kind == 3:
            body = body[:at] + b"\xff\xff" + body[at + 2 :]
        elif kind == 4:
            body = body[:at]
        elif kind == 5:
            body = body[:at] + r.take(r.u8() % 64) + body[at:]
        elif kind == 6:
            body = body[:at] + body[at + 1 + r.u8() % 16 :]
        elif pool:
            other = pool[r.u16() % len(pool)][1]
            body = body[:at] + other[r.u16() % (len(other) + 1) :]
    return body


def _inflate(obj, k: int, n: int):
    """``obj`` with its ``k``-th non-empty tuple (depth first) grown to ``n`` elements by repeating them."""
    if isinstance(obj, tuple):
        if not obj or isinstance(obj[0], (int, bytes, str)):
            return obj, k
        if k == 0:
            return tuple(obj[i % len(obj)] for i in range(n)), -1
        k -= 1
        out = []
        for x in obj:
            if k >= 0:
                x, k = _inflate(x, k, n)
            out.append(x)
        return tuple(out), k
    if attrs.has(type(obj)):
        changes = {}
        for f in attrs.fields(type(obj)):
            if k < 0:
                break
            if not f.init:
                continue
            v = getattr(obj, f.name)
            if isinstance(v, tuple) or attrs.has(type(v)):
                v2, k = _inflate(v, k, n)
                if v2 is not v:
                    changes[f.alias] = v2
        return (attrs.evolve(obj, **changes) if changes else obj), k
    return obj, k


def inflate(ptype: int, body: bytes, ctx, k: int, n: int) -> bytes:
    """The body of the payload ``(ptype, body)`` with one of its lists inflated to ``n`` elements, fewer if that
    would pass 60,000 octets; ``body`` itself if it does not decode or has no list."""
    try:
        (obj,), _ = decode_chain(ptype, struct.pack("!BBH", 0, 0, len(body) + 4) + body, ctx)
        if _inflate(obj, k, 1)[1] >= 0:  # fewer lists than k: the first one
            k = 0
        one, two = (len(_inflate(obj, k, i)[0].encode_body(ctx)) for i in (1, 2))
        n = min(n, 1 + max(0, 60000 - one) // max(1, two - one))
        out = _inflate(obj, k, n)[0].encode_body(ctx)
        return out if len(out) <= 60000 else body
    except Exception:  # whatever does not inflate stays as it was (the harness's own limits, not a finding)
        return body


# --- what a machine expects ------------------------------------------------------------------------------------------


@attrs.frozen
class Expect:
    """How a message to the machine in its current state is sealed: header fields, the CBC chain (None: sent in
    clear), and ``authenticate(payloads, how) -> payloads`` that fills the authenticator in (None: there is none,
    a message before Phase 1's authentication)."""

    exchange: int
    message_id: int
    icookie: bytes
    rcookie: bytes
    chain: object = None
    authenticate: object = None
    prepend_hash: int = 0  # the octets of a HASH payload that leads the chain (Quick Mode, Informational, PULL)
    doi: int = DOI.IPSEC
    push_key: object = None  # (cipher, key) of a GROUPKEY-PUSH: a random IV leads the ciphertext


AUTH, FORGED, FLIPPED, ASIS = 0, 1, 2, 3


def _hash_first(digest):
    """An authenticate() for chains led by HASH(n) = ``digest(rest)`` over the payloads after it."""

    def authenticate(payloads, how, r: Reader):
        rest = encode_raw(payloads[1:])
        if how == AUTH:
            value = digest(rest)
        elif how == FLIPPED:
            value = bytearray(digest(rest))
            value[r.u8() % len(value)] ^= 1 << (r.u8() % 8)
            value = bytes(value)
        else:
            value = hashlib.sha256(r.take(8) + rest).digest()[: len(payloads[0].body) or 32]
        payloads[0].body = value
        return payloads

    return authenticate


class _RawID:
    """An ID payload body that did not decode, hashed as it is."""

    def __init__(self, body):
        self.body = body

    def encode_body(self, ctx=None):
        return self.body


def _phase1_authenticate(m, signer_role: str, credentials):
    """Fill HASH_I/HASH_R (or SIG_I/SIG_R) of a Phase 1 message in, over the first ID payload of the chain."""

    def authenticate(payloads, how, r: Reader):
        if how == ASIS:
            return payloads
        ids = [p for p in payloads if p.ptype == PayloadType.ID]
        # AM3 carries no ID: HASH_I covers the IDii of AM1, which the machine holds (RFC 2409 section 5)
        ident = _RawID(ids[0].body) if ids else (m.peer_id or _RawID(b""))
        if ids:
            try:
                (ident,), _ = decode_chain(PayloadType.ID, struct.pack("!BBH", 0, 0, len(ids[0].body) + 4)
                                           + ids[0].body, context_for(m.doi, m.EXCHANGE))
            except DecodeError:
                pass
        if how == FORGED:
            digest = hashlib.sha256(r.take(8)).digest()
        else:
            digest = m._auth_hash(signer_role, ident)
        psk = m.proposal.auth == OakleyAuth.PRE_SHARED_KEY
        for p in payloads:
            if psk and p.ptype == PayloadType.HASH:
                p.body = digest
            elif not psk and p.ptype == PayloadType.SIG and credentials is not None:
                p.body = certs.sign(credentials, m.proposal.auth, digest) if how == AUTH else digest * 2
        if how == FLIPPED:
            for p in payloads:
                if p.body and p.ptype in (PayloadType.HASH, PayloadType.SIG):
                    p.body = bytes([p.body[0] ^ 0x80]) + p.body[1:]
        return payloads

    return authenticate


# --- the targets -----------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Scenario:
    """One recorded exchange: every datagram delivered (to_side, octets, peer, local, now) in order, the snapshot
    of the receiving machine (and its rng) before each delivery and of both after the last, and per family what
    a target needs (``info``)."""

    name: str
    family: str
    deliveries: list = attrs.Factory(list)
    snapshots: list = attrs.Factory(list)  # (side, machine, rng) before each delivery
    final: dict = attrs.Factory(dict)  # side -> (machine, rng) after the exchange
    info: dict = attrs.Factory(dict)
    payloads: list = attrs.Factory(list)  # (type, body) of every recorded message, decrypted
    pool: list = attrs.Factory(list)  # the payloads of every scenario of the same protocol, to splice from


@attrs.define(eq=False)
class Recorder(MachinePair):
    """A MachinePair that keeps a copy of the receiving machine and its rng before every delivery."""

    scenario: Scenario = None

    def deliver(self, side, data, *, peer, local):
        machine = self.machine(side)
        self.scenario.snapshots.append((side, *clone((machine, self.rng(side)))))
        self.scenario.deliveries.append((side, data, peer, local, self.clock.seconds()))
        super().deliver(side, data, peer=peer, local=local)


@attrs.define(eq=False)
class Target:
    """One snapshot to fuzz: a machine (and rng) in one state, the genuine next message (delivery index or None),
    and what the genuine message makes of it."""

    name: str
    scenario: Scenario
    side: str
    machine: object
    rng: object
    next: int | None
    honest_kinds: tuple = ()  # the effect classes the genuine next message gave
    next_payloads: list = attrs.Factory(list)  # (type, body) of the genuine next message (or the last one)
    genuine: tuple = ()  # the deliveries to this side from ``next`` on

    @property
    def family(self) -> str:
        return self.scenario.family

    def fresh(self):
        return clone((self.machine, self.rng), self.family)


@attrs.frozen
class _Probe:
    pass


class FastRng:
    """``rng(n)`` from a seeded random.Random whose copies are cheap (its state is copied, not deep-copied)."""

    __slots__ = ("random",)

    def __init__(self, seed):
        self.random = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.random.randbytes(n)

    def __deepcopy__(self, memo):
        other = FastRng(0)
        other.random.setstate(self.random.getstate())
        return other


#: Modules whose frozen attrs classes hold only immutable values (keys, IV chains, payloads, policies, SAs,
#: registrations): a copy of a machine shares them instead of copying them.
_VALUE_MODULES = ("gdoiserver.codec.", "gdoiserver.crypto.", "gdoiserver.exchanges.phase1",
                  "gdoiserver.exchanges.effects", "gdoiserver.doi.ipsec.", "gdoiserver.doi.gdoi.registration",
                  "gdoiserver.group.policy", "gdoiserver.group.lkh", "gdoiserver.member.rekey")


def _value_classes() -> dict:
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_VALUE_MODULES) and name not in _VALUE_MODULES:
            continue
        for cls in vars(module).values():
            if isinstance(cls, type) and attrs.has(cls) and cls.__module__ == name \
                    and cls.__setattr__ is _Probe.__setattr__:
                found[cls] = copy._deepcopy_atomic
    return found


def clone(pair, family: str = ""):
    """A copy of (machine, rng) to feed, sharing what the machine never changes (policies, SAs, credentials,
    immutable values)."""
    dispatch = copy._deepcopy_dispatch
    added = [cls for cls in _VALUES if cls not in dispatch]
    dispatch.update((cls, _VALUES[cls]) for cls in added)
    try:
        return copy.deepcopy(pair, _shared(pair[0]))
    finally:
        for cls in added:
            del dispatch[cls]


def _shared(m) -> dict:
    names = ("policy", "sa", "settings", "policies", "allocate_spi", "ack", "dh", "_dh")
    shared = [getattr(m, n, None) for n in names]
    if isinstance(m, PullResponder):
        shared = [m.sa, m.policy.credentials, m.policy.trust, *(g.policy for g in m.policy.groups.groups)]
    elif getattr(m, "runs", None) is not None:
        return _service_memo(m)
    return {id(x): x for x in shared if x is not None}


# --- per family: feeding, expectations, fingerprints ------------------------------------------------------------------


class Family:
    """How inputs reach one kind of machine and what its state is."""

    effects = (Send, SendKeepalive, StartTimer, CancelTimer, Established, Failed, Count)
    established = (Established,)

    def feed(self, t: Target, m, data: bytes, now: float, rng, peer, local) -> list:
        try:
            message = decode_message(data, t.scenario.info.get("doi", DOI.IPSEC))
        except DecodeError:
            return None  # the adapter drops it before any machine
        return m.receive(message, data, now, rng, peer=peer, local=local)

    def timer(self, t: Target, m, key: int, now: float, rng) -> list:
        return m.timer(("retransmit", "exchange_timeout", "dpd")[key % 3], now, rng)

    def done(self, m) -> bool:
        return m.done

    def fingerprint(self, m):
        shared = ("policy", "sa", "settings", "policies", "allocate_spi")  # never replaced, and large: by identity
        return tuple((f.name, id(getattr(m, f.name)) if f.name in shared else _val(getattr(m, f.name)))
                     for f in attrs.fields(type(m)))

    def view(self, m):
        return tuple(_val(getattr(m, name)) for name in self.SECURITY)

    def result(self, effect):
        return effect.sa


#: Frozen classes of these modules hold only immutable values: their comparison values are cached per input.
_IMMUTABLE_MODULES = ("gdoiserver.codec", "gdoiserver.crypto", "gdoiserver.exchanges.phase1", "gdoiserver.doi.ipsec")
_IMMUTABLE: dict = {}
_CACHE: dict = {}


def _immutable(cls) -> bool:
    known = _IMMUTABLE.get(cls)
    if known is None:
        known = _IMMUTABLE[cls] = (cls.__setattr__ is _Probe.__setattr__
                                   and cls.__module__.startswith(_IMMUTABLE_MODULES))
    return known


def _val(v, depth: int = 0):
    """A value for comparison, whatever ``v`` is: attrs objects field by field (their own ``__eq__`` may compare a
    member by identity), containers element by element, a key by its public value, anything else by its class."""
    if v is None or isinstance(v, (bytes, str, int, float, bool)):
        return v
    if depth > 8:
        return type(v).__name__
    if attrs.has(type(v)) and _immutable(type(v)):
        hit = _CACHE.get(id(v))
        if hit is None:
            hit = _CACHE[id(v)] = (v, type(v).__name__, tuple(_val(getattr(v, f.name), depth + 1)
                                                               for f in attrs.fields(type(v))))
        return hit[1:]
    if isinstance(v, (tuple, list)):
        return tuple(_val(x, depth + 1) for x in v)
    if isinstance(v, (set, frozenset)):
        return "set", tuple(sorted(repr(_val(x, depth + 1)) for x in v))
    if isinstance(v, dict):
        return "dict", tuple((repr(k), _val(x, depth + 1)) for k, x in sorted(v.items(), key=lambda kv: repr(kv[0])))
    if attrs.has(type(v)):
        return type(v).__name__, tuple(_val(getattr(v, f.name), depth + 1) for f in attrs.fields(type(v)))
    try:
        return "key", v.public_bytes()
    except Exception:
        return type(v).__name__


class Phase1Family(Family):
    SECURITY = ("keys", "iv", "proposal", "initiator_cookie", "responder_cookie", "peer_id", "local_id",
                "peer_certificate", "g_xi", "g_xr", "g_xy", "ni_b", "nr_b", "sai_b", "psk", "doi",
                "peer_initial_contact")

    def result(self, effect):
        sa = effect.sa  # what Phase 1 authenticates (vendor IDs, NAT-D and addresses travel unauthenticated)
        return (sa.initiator_cookie, sa.responder_cookie, sa.role, sa.doi, sa.proposal, sa.keys, sa.last_iv,
                sa.local_id, sa.peer_id, sa.peer_certificate, sa.initial_contact)

    def expect(self, t: Target, m, mid=None) -> Expect:
        cookies = t.scenario.info["cookies"]
        if m.role == RESPONDER and m.state == "START":
            cookies = (cookies[0], bytes(8))
        exchange = m.EXCHANGE
        encrypted_states = {("responder", "MM4_SENT"), ("initiator", "MM5_SENT"), ("responder", "AM2_SENT")}
        chain = m.iv if (m.role, m.state) in encrypted_states or m.state == "ESTABLISHED" else None
        authenticate = None
        peer_role = RESPONDER if m.role == INITIATOR else INITIATOR
        credentials = t.scenario.info.get("credentials", {}).get(peer_role)
        if chain is not None:
            authenticate = _phase1_authenticate(m, peer_role, credentials)
        elif (m.role, m.state) == (INITIATOR, "AM1_SENT"):
            # AM2 is clear but carries HASH_R: the responder of the recording computes it (the keys follow from
            # the genuine KE and Nr, which a hostile AM2 may keep or not)
            authenticate = _phase1_authenticate(t.scenario.final[RESPONDER][0], RESPONDER, credentials)
        return Expect(exchange, 0, *cookies, chain, authenticate, doi=m.doi)


class QuickModeFamily(Family):
    SECURITY = ("spi", "peer_spi", "suite", "lifetime", "encapsulation", "local_selector", "remote_selector",
                "nat_oa", "ni_b", "nr_b", "g_qm_xy", "chain", "ids", "offered", "policy", "result")

    def view(self, m):
        return (*super().view(m), repr(sorted(m.allocated.items())))

    def expect(self, t: Target, m, mid=None) -> Expect:
        sa, mid = m.sa, m.message_id
        chain = m.chain if m.chain is not None else sa.last_iv.for_message_id(mid)
        prf = hash_algorithm(sa.proposal.hash)
        midb = struct.pack("!I", mid)
        if m.role == RESPONDER and m.state == "START":
            digest = lambda rest: prf.prf(sa.keys.skeyid_a, midb, rest)  # noqa: E731
        elif m.role == INITIATOR:
            digest = lambda rest: prf.prf(sa.keys.skeyid_a, midb, m.ni_b, rest)  # noqa: E731
        else:
            digest = lambda rest: prf.prf(sa.keys.skeyid_a, b"\0", midb, m.ni_b, m.nr_b)  # noqa: E731
        return Expect(QM, mid, sa.initiator_cookie, sa.responder_cookie, chain, _hash_first(digest),
                      prf.digest_size)


class InformationalFamily(Family):
    """``informational.process`` under one side's SA: stateless; its result is the thing to check."""

    effects = (informational.Received, informational.Dropped, informational.Hint)
    established = (informational.Received,)

    def feed(self, t, m, data, now, rng, peer, local):
        try:
            message = decode_message(data, m.doi)
        except DecodeError:
            return None
        return [informational.process(m, message)]

    def timer(self, t, m, key, now, rng):
        return []

    def done(self, m) -> bool:
        return False

    def fingerprint(self, m):
        return m

    def view(self, m):
        return m

    def result(self, effect):
        return effect.items

    def expect(self, t: Target, m, mid=None) -> Expect:
        prf = hash_algorithm(m.proposal.hash)
        mid = mid or t.scenario.info["mid"]
        return Expect(INFO, mid, m.initiator_cookie, m.responder_cookie, m.last_iv.for_message_id(mid),
                      _hash_first(lambda rest: informational.hash_1(m, mid, rest)), prf.digest_size, m.doi)


class PullFamily(Family):
    SECURITY_RESPONDER = ("_chain", "_ni_b", "_nr_b", "group", "_generation", "_kek", "_member", "_deferred")
    SECURITY_INITIATOR = ("_chain", "_ni_b", "_nr_b", "_offered", "_asked_sender_ids", "message_id")

    def view(self, m):
        if isinstance(m, PullResponder):
            fields = tuple(_val(getattr(m, n)) for n in self.SECURITY_RESPONDER)
            groups = []
            for g in m.policy.groups.groups:
                keys = g.keys
                newest = keys.newest
                sids = None if newest is None or newest.sender_ids is None else newest.sender_ids.remaining
                groups.append((keys.generations_made, keys.keks_made, sids, _val(keys.current_kek)))
            return fields + tuple(groups)
        return tuple(_val(getattr(m, n)) for n in self.SECURITY_INITIATOR)

    def expect(self, t: Target, m, mid=None) -> Expect:
        sa, mid = m.sa, m.message_id
        chain = m._chain if m._chain is not None and m.state != "START" else sa.last_iv.for_message_id(mid)
        h = gdoi_hashes
        if isinstance(m, PullResponder):
            if m.state == "START":
                digest = lambda rest: h.hash_1(sa, mid, rest)  # noqa: E731
            else:
                digest = lambda rest: h.hash_3(sa, mid, m._ni_b, m._nr_b, rest)  # noqa: E731
        elif m.state == "REQUEST_SENT":
            digest = lambda rest: h.hash_2(sa, mid, m._ni_b, rest)  # noqa: E731
        else:
            digest = lambda rest: h.hash_4(sa, mid, m._ni_b, m._nr_b, rest)  # noqa: E731
        size = hash_algorithm(sa.proposal.hash).digest_size
        return Expect(PULL, mid, sa.initiator_cookie, sa.responder_cookie, chain, _hash_first(digest), size,
                      DOI.GDOI)


class PushFamily(Family):
    """``GroupRekey.on_push``: datagrams in, decisions out."""

    effects = (Count, member_rekey.Rejected, member_rekey.Accepted, member_rekey.Install, member_rekey.Activate,
               member_rekey.Retire, member_rekey.SwitchKEK, member_rekey.SendAck, member_rekey.Reregister)
    established = (member_rekey.Accepted, member_rekey.Install, member_rekey.Activate, member_rekey.Retire,
                   member_rekey.SwitchKEK)

    def feed(self, t, m, data, now, rng, peer, local):
        return m.on_push(data, peer, now, multicast=local == "multicast")

    def timer(self, t, m, key, now, rng):
        return m.expired(now + 86400.0 * (key % 4))

    def done(self, m) -> bool:
        return False

    def fingerprint(self, m):
        state = dict(vars(m))
        state.pop("unknown_in_row")  # forged PUSHes under unknown KEKs count towards registering again, by design
        state["_recent"] = tuple(m._recent.items())
        return tuple((k, _val(v)) for k, v in sorted(state.items()))

    def view(self, m):
        return _val((m.kek, m.seq, m.lkh_path, m.registration, tuple(m._recent.values())))

    def result(self, effect):
        return effect

    def expect(self, t: Target, m, mid=None) -> Expect:
        spi = m.kek.spi
        return Expect(PUSH, 0, spi[:8], spi[8:], None, None, doi=DOI.GDOI,
                      push_key=(gdoi_push.kek_cipher(m.kek.key_bits), m.kek.key))


class AckFamily(Family):
    """``RekeyService.ack_received``: returns nothing; its counters and member table are what it does."""

    effects = (Count,)
    established = ()

    def feed(self, t, service, data, now, rng, peer, local):
        before = collections.Counter(service.counters)
        message = None
        try:
            message = decode_message(data, DOI.GDOI)
        except DecodeError:
            pass
        service.ack_received(message, data, peer, None)
        return [Count(name) for name in service.counters if service.counters[name] != before[name]]

    def timer(self, t, m, key, now, rng):
        return []

    def done(self, m) -> bool:
        return False

    def fingerprint(self, service):
        return self.view(service)

    def view(self, service):
        out = []
        for name, run in sorted(service.runs.items()):
            members = tuple((m.identity, m.last_seq_acked, m.last_seq_sent, m.missed, m.stale)
                            for _, m in sorted(run.members.members.items()))
            pending = tuple((seq, tuple(sorted(p.acked))) for seq, p in sorted(run.delivery.pending.items())) \
                if run.delivery is not None else ()
            out.append((name, members, pending))
        return tuple(out)

    def expect(self, t: Target, service, mid=None) -> Expect:
        info = t.scenario.info
        spi = info["kek_spi"]
        return Expect(ACK, 0, spi[:8], spi[8:], None, None, doi=DOI.GDOI)


FAMILIES = {"main_mode": Phase1Family(), "aggressive_mode": Phase1Family(), "quick_mode": QuickModeFamily(),
            "informational": InformationalFamily(), "pull": PullFamily(), "push": PushFamily(),
            "ack": AckFamily()}


# --- recording the scenarios ------------------------------------------------------------------------------------------


def _record(name: str, family: str, initiator, responder, *, now: float = 0.0, info=None, **pair) -> Scenario:
    scenario = Scenario(name, family, info=dict(info or {}))
    pair.setdefault("initiator_rng", FastRng(f"{name} initiator"))
    pair.setdefault("responder_rng", FastRng(f"{name} responder"))
    p = Recorder(initiator, responder, scenario=scenario, **pair)
    p.clock.advance(now)
    p.start()
    for side in (INITIATOR, RESPONDER):
        scenario.final[side] = clone((p.machine(side), p.rng(side)))
    scenario.info.setdefault("established", dict(p.established))
    if p.failed:
        raise RuntimeError(f"scenario {name}: the honest exchange failed: {p.failed}")
    return scenario


def _phase1_scenarios() -> list[Scenario]:
    from tests.test_aggressive_mode import INITIATOR_ID, RESPONDER_ID
    from tests.test_aggressive_mode import psk_policy as am_policy
    from tests.test_main_mode import SUITE, signature_policies
    from tests.test_main_mode import pair as mm_pair
    from tests.test_main_mode import psk_policy as mm_policy

    out = []
    p = mm_pair(mm_policy(), initiator_kw={"initial_contact": True})  # MM5 brings N(INITIAL-CONTACT) to the pool
    out.append(_record("mm-psk", "main_mode", p.initiator, p.responder,
                       initiator_address=p.initiator_address, responder_address=p.responder_address))
    ini, resp = signature_policies("p256")
    p = mm_pair(ini, resp)
    out.append(_record("mm-ecdsa", "main_mode", p.initiator, p.responder, now=pki.NOW.timestamp(),
                       info={"credentials": {INITIATOR: ini.credentials, RESPONDER: resp.credentials}}))
    suite = attrs.evolve(SUITE, key_length=256)  # ECP-256: every genuine AM1 costs one fast DH
    ini, resp = am_policy(suite, local_id=INITIATOR_ID), am_policy(suite, local_id=RESPONDER_ID)
    i = AggressiveMode.initiator(ini, local=("127.0.0.1", 500), peer=("127.0.0.2", 500), initial_contact=False)
    out.append(_record("am-psk", "aggressive_mode", i, AggressiveMode.responder(resp)))
    for s in out:
        sa = s.info["established"][INITIATOR]
        s.info["cookies"] = (sa.initiator_cookie, sa.responder_cookie)
    return out


def _quick_mode_scenarios() -> list[Scenario]:
    from tests.test_quick_mode import SETTINGS, isakmp_pair, policy

    out = []
    for name, suites, nat_t in (("qm", ("aes256-sha256",), False), ("qm-pfs-natt", ("aes128gcm16-ecp256",), True)):
        pol = policy(*suites, **({"mode": "transport"} if nat_t else {}))
        isa_i, isa_r = isakmp_pair(nat_t=nat_t)
        i = QuickMode.initiator(isa_i, pol, SETTINGS, 0x01020304)
        r = QuickMode.responder(isa_r, PolicyTable([pol]), SETTINGS, 0x01020304)
        out.append(_record(name, "quick_mode", i, r, initiator_address=isa_i.local, responder_address=isa_r.local,
                           initiator_rng=FastRng("qm initiator"), responder_rng=FastRng("qm responder")))
    return out


def _pull_scenarios() -> list[Scenario]:
    from tests.test_gdoi_pull import CBC, GCM, group
    from tests.test_informational import sa_pair

    from gdoiserver.group.policy import CertificateAttributes, IdentityPattern

    out = []
    members = pki.hierarchy("p256", sans=("gm.members.example.org",))
    servers = pki.hierarchy("p256", sans=("ks.example.org",))
    gm_cred = certs.Credentials(members.leaf.certificate, (members.intermediate.certificate,), members.leaf.key)
    ks_cred = certs.Credentials(servers.leaf.certificate, (servers.intermediate.certificate,), servers.leaf.key)
    gm_trust = certs.TrustStore((servers.root.certificate,))
    ks_trust = certs.TrustStore((members.root.certificate,))
    variants = (
        ("pull", (GCM, CBC), (IdentityPattern("*"),), {"sender_ids": 2}, {}),
        ("pull-pfs-pop", (CBC,), (CertificateAttributes(dns="gm.members.example.org"),),
         {"pfs": True, "credentials": gm_cred, "trust": gm_trust, "require_server_pop": True},
         {"credentials": ks_cred, "trust": ks_trust}),
    )
    for name, teks, rules, member, server in variants:
        gm_sa, ks_sa = sa_pair(doi=DOI.GDOI)
        table = GroupTable([group(teks, members=rules)], FastRng(f"{name} keys"))
        i = PullInitiator(gm_sa, 0x11223344, group=_group_id(1234), policy=MemberPolicy(**member))
        r = PullResponder(ks_sa, 0x11223344, policy=KeyServerPolicy(table, **server))
        out.append(_record(name, "pull", i, r, now=pki.NOW.timestamp(), info={"doi": DOI.GDOI},
                           initiator_address=gm_sa.local, responder_address=ks_sa.local))
    return out


def _group_id(number):
    from gdoiserver.group.policy import GroupId

    return GroupId(number=number)


def _informational_scenarios() -> list[Scenario]:
    """No exchange to record: the SA of each side, and a genuine message of Notify and Delete payloads."""
    from tests.test_informational import sa_pair

    out = []
    initiator_sa, responder_sa = sa_pair()
    mid = 0x5EED1234
    for side, sa, other in ((INITIATOR, initiator_sa, responder_sa), (RESPONDER, responder_sa, initiator_sa)):
        payloads = [informational.notify(other, NotifyType.R_U_THERE, b"\0\0\0\7"),
                    Notification(DOI.IPSEC, 3, NotifyType.INVALID_SPI, b"\1\2\3\4"),
                    informational.delete_ipsec(other, 3, [b"\x10\x20\x30\x40", b"\x50\x60\x70\x80"]),
                    informational.delete_isakmp(other)]
        data = informational.build(other, payloads, lambda n: mid.to_bytes(4, "big"))
        s = Scenario(f"info-{side}", "informational", info={"mid": mid})
        s.deliveries.append((side, data, sa.peer, sa.local, 0.0))
        s.snapshots.append((side, sa, None))
        s.final[side] = (sa, None)
        out.append(s)
    return out


def _push_scenarios() -> list[Scenario]:
    """A member's GroupRekey after its registration, fed the key server's PUSHes in turn (TEK rekeys, a KEK rekey
    with acknowledgements asked, and an LKH eviction of another member)."""
    from tests.test_member_rekey import SERVER, KeyServer, LKHKeyServer, asking_for_acks

    out = []
    ks = KeyServer(seed=3)
    reg = asking_for_acks(ks.pull())
    machine = member_rekey.GroupRekey(reg, ack=lambda spi, seq: build_ack(spi, seq, _group_id(1234).identification(),
                                                                           bytes(range(32))))
    pushes = [ks.rekey(100.0), ks.rekey(200.0), ks.rekey(300.0, new_kek=ks.new_kek(300.0)), ks.rekey(400.0)]
    out.append(_feed_pushes("push", machine, pushes, SERVER, (100.0, 200.0, 300.0, 400.0)))
    out[-1].info["signer"] = gdoi_push.Signer.for_kek(ks.kek)
    lkh = LKHKeyServer(seed=5)
    _, reg = lkh.join()
    other, _ = lkh.join()
    machine = member_rekey.GroupRekey(reg)
    pushes = [lkh.rekey(100.0), lkh.evict(other, 200.0), lkh.rekey(300.0)]
    out.append(_feed_pushes("push-lkh", machine, pushes, SERVER, (100.0, 200.0, 300.0)))
    out[-1].info["signer"] = gdoi_push.Signer.for_kek(lkh.kek)
    return out


def _feed_pushes(name, machine, pushes, server, times) -> Scenario:
    s = Scenario(name, "push")
    for data, now in zip(pushes, times):
        s.snapshots.append((RESPONDER, *clone((machine, None))))
        s.deliveries.append((RESPONDER, data, server, None, now))
        effects = machine.on_push(data, server, now)
        if not any(isinstance(e, member_rekey.Accepted) for e in effects):
            raise RuntimeError(f"scenario {name}: a genuine PUSH was refused: {effects}")
    s.final[RESPONDER] = clone((machine, None))
    return s


def _ack_scenarios() -> list[Scenario]:
    """The key server's RekeyService after a rekey to two members that asked for acknowledgements; member A's
    genuine ACK, then the next rekey and A's ACK of it."""
    from twisted.internet import task

    from gdoiserver.rekey.service import RekeyService
    from gdoiserver.store.base import MemoryStore
    from tests.test_rekey_service import T0, Registered, group_policy

    clock = task.Clock()
    clock.advance(T0)
    table = GroupTable([group_policy(ack=True, stale_after=2, retransmits=2, retransmit_interval=5.0)],
                       seeded_rng(7))
    service = RekeyService(table, MemoryStore(), clock, seeded_rng(8), lambda data, peer: None,
                           collections.Counter(), seq_block=8)
    service.start()
    keys = {"a": bytes(range(32)), "b": bytes(range(1, 33))}
    peers = {"a": ("192.0.2.10", 1000), "b": ("192.0.2.11", 1001)}
    for who in ("a", "b"):
        identity = f"{who}.example.org"
        path = service.leaf_for("g", identity)
        service.member_registered(Registered("g", identity, Identification.of(identity), peers[who],
                                             leaf=path[0].node, ack_key=keys[who]))
    s = Scenario("ack", "ack", info={"keys": keys, "peers": peers, "group": _group_id(4242)})
    for _ in range(2):
        seqs = []
        service.rekey("g").addCallback(seqs.append)
        spi = service.runs["g"].keys.current_kek.spi
        data = build_ack(spi, seqs[0], _group_id(4242).identification(), keys["a"])
        s.snapshots.append((RESPONDER, *clone((service, None))))
        s.deliveries.append((RESPONDER, data, peers["a"], None, clock.seconds()))
        service.ack_received(None, data, peers["a"], None)
    s.final[RESPONDER] = clone((service, None))
    s.info["kek_spi"] = service.runs["g"].keys.current_kek.spi
    s.info["service"] = service
    return [s]


def _service_memo(service) -> dict:
    """Share what a copy of the service need not copy (the clock, store, logger, keys and callables)."""
    shared = [service.clock, service.store, service.send, service.rng, service.multicast]
    for run in service.runs.values():
        shared += [run.group, run.lock, run.timer, run.lkh]
        if run.delivery is not None:
            shared += [run.delivery.clock, run.delivery.send, run.delivery.on_closed]
            shared += [p.call for p in run.delivery.pending.values()]
    return {id(x): x for x in shared if x is not None}


# --- building the targets ---------------------------------------------------------------------------------------------


#: (family, role, state) of Phase 1 states before the authenticating message.
_PREAUTH = {("main_mode", RESPONDER, "START"), ("main_mode", RESPONDER, "MM2_SENT"),
            ("main_mode", INITIATOR, "MM1_SENT"), ("main_mode", INITIATOR, "MM3_SENT"),
            ("aggressive_mode", RESPONDER, "START")}
#: Where the machine documents that a forged message ends the exchange.
_FORGED_MAY_FAIL = {("main_mode", RESPONDER, "START"), ("main_mode", RESPONDER, "MM2_SENT"),
                    ("main_mode", INITIATOR, "MM1_SENT"), ("main_mode", INITIATOR, "MM3_SENT"),
                    ("aggressive_mode", RESPONDER, "START"),
                    # Phase 1 authenticating messages: _open/_verify_peer end the exchange on a bad body or HASH
                    ("main_mode", RESPONDER, "MM4_SENT"), ("main_mode", INITIATOR, "MM5_SENT"),
                    ("aggressive_mode", RESPONDER, "AM2_SENT"), ("aggressive_mode", INITIATOR, "AM1_SENT"),
                    # a responder's first message: nothing has started (quick_mode.py, pull.py)
                    ("quick_mode", RESPONDER, "START"), ("pull", RESPONDER, "START")}


def _state_of(family: str, m) -> str:
    return getattr(m, "state", "-") if family not in ("push", "ack", "informational") else "-"


def _role_of(m, side):
    return getattr(m, "role", None) or (RESPONDER if isinstance(m, PullResponder) else side)


def _decrypted(t: Target, m, data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of the payloads of ``data`` as the machine ``m`` would read them."""
    fam = FAMILIES[t.family]
    try:
        e = fam.expect(t, m)
        header = decode_message(data, e.doi)
    except (DecodeError, KeyError):
        return []
    if header.ciphertext is None:
        return split_chain(data[16], data[HEADER_SIZE:])
    try:
        if e.push_key is not None:
            cipher, key = e.push_key
            plaintext = cipher.decrypt(key, header.ciphertext[:16], header.ciphertext[16:])
        elif t.family == "informational":
            chain = m.last_iv.for_message_id(header.message_id)
            plaintext = chain.cipher.decrypt(chain.key, chain.iv, header.ciphertext)
        elif e.chain is not None:
            plaintext = e.chain.cipher.decrypt(e.chain.key, e.chain.iv, header.ciphertext)
        else:
            return []
    except (DecodeError, ValueError):
        return []
    return split_chain(header.next_payload, plaintext)


def _key(family: str, m, side) -> tuple:
    return family, _role_of(m, side), _state_of(family, m)


def _targets_of(s: Scenario) -> list[Target]:
    fam = FAMILIES[s.family]
    out = []
    for i, (side, machine, rng) in enumerate(s.snapshots):
        t = Target(f"{s.name}/{_role_of(machine, side)}/{_state_of(s.family, machine)}/{i}", s, side, machine, rng,
                   i)
        t.genuine = tuple(j for j in range(i, len(s.deliveries)) if s.deliveries[j][0] == side)
        t.next_payloads = _decrypted(t, machine, s.deliveries[i][1])
        s.payloads += t.next_payloads
        m, r = t.fresh()
        _, data, peer, local, now = s.deliveries[i]
        effects = fam.feed(t, m, data, now, r, peer, local) or []
        t.honest_kinds = _kinds(fam, effects)
        out.append(t)
    for side, (machine, rng) in s.final.items():
        if s.family == "informational" and any(t.side == side for t in out):
            continue
        t = Target(f"{s.name}/{_role_of(machine, side)}/{_state_of(s.family, machine)}/done", s, side, machine, rng,
                   None)
        last = [i for i, d in enumerate(s.deliveries) if d[0] == side]
        if last:
            t.next_payloads = _decrypted(t, s.snapshots[last[-1]][1], s.deliveries[last[-1]][1])
        out.append(t)
    return out


def _kinds(fam: Family, effects) -> tuple:
    """What a message did, to compare with the recording: the effect classes (the counters, for an ACK)."""
    if isinstance(fam, AckFamily):
        return tuple(sorted(e.name for e in effects))
    return tuple(type(e).__name__ for e in effects if not isinstance(e, Count))


def _results(fam: Family, effects) -> tuple:
    return tuple(_val(fam.result(e)) for e in effects if isinstance(e, fam.established))


@contextlib.contextmanager
def _fixed_pki():
    """tests.pki with keys from fixed seeds, serial numbers counted and certificates signed with deterministic ECDSA
    (RFC 6979) while the scenarios are recorded, so that the certificates, and so every recorded message but the
    values of ECDSA signatures (SIG_I/SIG_R, POP, the PUSH's SIG), are the same in every process and a crash file
    replays.  Everything is put back afterwards."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
    serials = iter(range(1000, 10**6))
    sign = x509.CertificateBuilder.sign

    def key(kind: str, slot: int = 0):
        seed = int.from_bytes(hashlib.sha512(f"exchanges_fuzz {kind} {slot}".encode()).digest(), "big")
        return ec.derive_private_key(seed % (2**255) + 1, curves[kind]())

    def deterministic_sign(self, private_key, algorithm, backend=None, **kw):
        return sign(self, private_key, algorithm, backend, ecdsa_deterministic=True)

    saved = pki.key, x509.random_serial_number
    pki.key, x509.random_serial_number, x509.CertificateBuilder.sign = key, lambda: next(serials), deterministic_sign
    try:
        yield
    finally:
        (pki.key, x509.random_serial_number), x509.CertificateBuilder.sign = saved, sign


def _build_targets() -> list[Target]:
    with _fixed_pki():
        scenarios = (_phase1_scenarios() + _quick_mode_scenarios() + _informational_scenarios()
                     + _pull_scenarios() + _push_scenarios() + _ack_scenarios())
    targets = []
    for s in scenarios:
        targets += _targets_of(s)
    pools: dict = {}
    for s in scenarios:  # Main Mode and Aggressive Mode share one pool (Phase 1), every other family its own
        pools.setdefault(_POOLS.get(s.family, s.family), []).extend(s.payloads)
    for s in scenarios:
        s.pool = pools[_POOLS.get(s.family, s.family)]
    return targets


_POOLS = {"main_mode": "phase1", "aggressive_mode": "phase1"}




# --- one input -------------------------------------------------------------------------------------------------------

GENUINE, REPLAY, TAMPER, BUILD, CLEAR, NOISE, TIMER, BUILD2 = range(8)
#: Classes of a step: what its sender could have known.
C_GENUINE, C_AUTH, C_PREAUTH, C_FORGED, C_REPLAY, C_TAMPERED, C_TIMER = (
    "genuine", "authentic", "preauth", "forged", "replay", "tampered", "timer")
#: Classes that come from whoever holds the keys: they may change the security state.
KEYHOLDER = (C_GENUINE, C_AUTH)


def _addresses(t: Target, delivery, variant: int):
    _, _, peer, local, _ = delivery
    if t.family == "ack":
        info = t.scenario.info
        return ((info["peers"]["a"], (info["peers"]["a"][0], 4500), info["peers"]["b"], ("198.51.100.7", 1000))
                [variant], None)
    if t.family == "push":
        return peer, ("multicast" if variant == 1 else None)
    if variant == 1 and local is not None:
        return peer, (local[0], 4500)
    if variant == 2 and peer is not None:
        return ("198.51.100.7", peer[1]), local
    if variant == 3 and peer is not None:
        return (peer[0], (peer[1] + 1) & 0xFFFF), local
    return peer, local


def _header(e: Expect, r: Reader, tweak: int, first: int, flags: int, length: int) -> bytes:
    icky, rcky = e.icookie, e.rcookie
    cookies, mid_kind, exchange_kind = tweak & 3, tweak >> 2 & 3, tweak >> 6
    if cookies == 1:
        icky, rcky = rcky, icky
    elif cookies == 2:
        rcky = bytes(8)
    elif cookies == 3:
        icky, rcky = r.take(8).ljust(8, b"\0"), r.take(8).ljust(8, b"\0")
    mid = e.message_id
    if mid_kind == 1:
        mid = 0
    elif mid_kind == 2:
        mid = (mid + 1) & 0xFFFFFFFF
    elif mid_kind == 3:
        mid = r.u32()
    if tweak & 0x10:
        flags ^= Flags.COMMIT
    if tweak & 0x20:
        flags ^= Flags.AUTHENTICATION_ONLY
    exchange = e.exchange
    if exchange_kind == 1:
        exchange = OTHER_EXCHANGES[r.u8() % len(OTHER_EXCHANGES)]
    elif exchange_kind == 3:
        exchange = r.u8()
    return struct.pack("!8s8sBBBBII", icky, rcky, first, 0x10, exchange, flags, mid, HEADER_SIZE + length)


def _pick(pool, index: int):
    return pool[index % len(pool)] if pool else None


def build_chain(t: Target, e: Expect, r: Reader) -> list[Raw]:
    """A hostile payload chain: see the module notes."""
    ctx = context_for(e.doi, e.exchange)
    near, every = t.next_payloads or t.scenario.payloads, t.scenario.pool
    out: list[Raw] = []
    size = 0
    for _ in range(r.u8() % 13):
        src = r.u8() % 8
        base = _pick(every if src in (1, 4) else near, r.u16() if src in (1, 4) else r.u8())
        many = 1
        if src == 3 or base is None:
            ptype, body = PAYLOAD_TYPES[r.u8() % len(PAYLOAD_TYPES)], r.take(r.u8() % 160)
        elif src == 2:
            ptype, body = base[0], mutate(base[1], r, every)
        elif src == 4:
            ptype, body = base[0], inflate(base[0], base[1], ctx, r.u8() % 8, 2 + r.u16() % MAX_INFLATE)
        elif src == 5 and out:
            ptype, body = out[-1].ptype, out[-1].body
        elif src == 6:
            ptype, body = base
            many = 2 + r.u16() % 4096
        else:
            ptype, body = base
        tweak = r.u8()
        for _ in range(many):
            if size + 4 + len(body) > 60000:
                break
            p = Raw(ptype, body)
            if tweak & 3 == 1:
                p.length_delta = (tweak >> 2) % 17 - 8 or 1
            elif tweak & 3 == 2:
                p.next_override = PAYLOAD_TYPES[(tweak >> 2) % len(PAYLOAD_TYPES)]
            elif tweak & 3 == 3:
                p.reserved = tweak >> 2 or 1
            out.append(p)
            size += 4 + len(body)
    return out


def _seal_push(t: Target, e: Expect, payloads, how: int, r: Reader, htweak: int, clear: bool) -> tuple[bytes, str]:
    """A GROUPKEY-PUSH: signed by the key server (authentic) or not, encrypted under the KEK with a fresh IV.  The
    signature covers "rekey", the header as sent (with the E flag and the Length of the clear chain) and every
    payload before the SIG (RFC 3547 section 4, as push.py reads it)."""
    signer = t.scenario.info["signer"]
    if how != ASIS and (not payloads or payloads[-1].ptype != PayloadType.SIG):
        payloads.append(Raw(PayloadType.SIG, b""))
    if how != ASIS:
        payloads[-1].body = bytes(signer.size)
    first = payloads[0].ptype if payloads else 0
    size = len(encode_raw(payloads))
    padded = size + -size % 16
    flags = 0 if clear else Flags.ENCRYPTION
    header = _header(e, r, htweak, first, flags, size if clear else 16 + padded)
    cls = C_FORGED
    if how != ASIS:
        before = encode_raw(payloads)[: size - 4 - signer.size]
        signed = gdoi_push.REKEY_PREFIX + header[:19] + bytes([header[19] | Flags.ENCRYPTION]) + header[20:24] \
            + struct.pack("!I", HEADER_SIZE + size) + before
        signature = signer.sign(signed)
        if how == AUTH:
            cls = C_AUTH
        elif how == FLIPPED:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        else:
            signature = r.take(signer.size).ljust(signer.size, b"\1")
        payloads[-1].body = signature
    body = encode_raw(payloads)
    if clear:
        return header + body, cls
    cipher, key = e.push_key
    iv = r.take(16).ljust(16, b"\0")
    return header + iv + cipher.encrypt(key, iv, body + bytes(padded - size)), cls


def _seal_ack(t: Target, e: Expect, payloads, how: int, r: Reader, htweak: int, mode: int) -> tuple[bytes, str]:
    """A GROUPKEY-PUSH ACK in clear: HASH = prf(ack_key, SEQ body | ID body) of member a or b, or forged."""
    cls = C_FORGED
    if how != ASIS:
        if not payloads or payloads[0].ptype != PayloadType.HASH:
            payloads.insert(0, Raw(PayloadType.HASH, b""))
        key = t.scenario.info["keys"]["b" if mode & 0x20 else "a"]
        covered = b"".join(p.body for p in payloads[1:3])
        digest = ack_prf_for(key).prf(key, covered)
        if how == AUTH:
            cls = C_AUTH
        elif how == FLIPPED:
            digest = bytes([digest[0] ^ 1]) + digest[1:]
        else:
            digest = hashlib.sha256(r.take(8) + covered).digest()
        payloads[0].body = digest
    body = encode_raw(payloads)
    return _header(e, r, htweak, payloads[0].ptype if payloads else 0, 0, len(body)) + body, cls


def seal(t: Target, m, r: Reader, clear: bool) -> tuple[bytes, str]:
    """A hostile chain sealed as the machine in its current state expects it; its class."""
    fam = FAMILIES[t.family]
    mode, htweak = r.u8(), r.u8()
    how, clear = mode & 3, clear or bool(mode & 0x10)
    mid = r.u32() if t.family == "informational" and htweak & 0x0C == 0x0C else None
    e = fam.expect(t, m, mid)
    if mid is not None:  # the M-ID decides the IV and HASH(1): seal under it, keep it in the header
        htweak &= ~0x0C
    payloads = build_chain(t, e, r)
    if t.family == "push":
        return _seal_push(t, e, payloads, how, r, htweak, clear)
    if t.family == "ack":
        return _seal_ack(t, e, payloads, how, r, htweak, mode)
    if e.prepend_hash and not mode & 0x40 and (not payloads or payloads[0].ptype != PayloadType.HASH):
        payloads.insert(0, Raw(PayloadType.HASH, bytes(e.prepend_hash)))
    if e.authenticate is None:  # nothing to authenticate with: before Phase 1's authentication, or AM2
        cls = C_PREAUTH if _key(t.family, m, t.side) in _PREAUTH else C_FORGED
    else:
        cls = C_AUTH if how == AUTH else C_FORGED
    if e.authenticate is not None and payloads and (e.prepend_hash == 0 or payloads[0].ptype == PayloadType.HASH):
        payloads = e.authenticate(payloads, how, r)
    body = encode_raw(payloads)
    first = payloads[0].ptype if payloads else 0
    if clear or e.chain is None:
        return _header(e, r, htweak, first, 0, len(body)) + body, cls
    chain = e.chain
    if mode & 4:  # the IV of another message: from whoever holds the key, but out of step
        chain = attrs.evolve(chain, iv=bytes(chain.cipher.block_size))
    padding = r.take(r.u8() % 40) if mode & 8 else b""
    plaintext = body + padding
    plaintext += bytes(-len(plaintext) % chain.cipher.block_size)
    if not plaintext:
        plaintext = bytes(chain.cipher.block_size)
    ciphertext = chain.cipher.encrypt(chain.key, chain.iv, plaintext)
    return _header(e, r, htweak, first, Flags.ENCRYPTION, len(ciphertext)) + ciphertext, cls


def _noise(t: Target, m, r: Reader) -> bytes:
    fam = FAMILIES[t.family]
    htweak, n = r.u8(), r.u16() % 2048
    e = fam.expect(t, m)
    body = random.Random(r.u32()).randbytes(n - n % 8 if n % 8 else n)
    flags = 0 if t.family == "ack" else Flags.ENCRYPTION
    return _header(e, r, htweak, r.u8() if htweak & 0x80 else PayloadType.HASH, flags, len(body)) + body


def _tamper(data: bytes, r: Reader) -> bytes:
    """``data`` with 1 to 4 octets changed (XOR with a non-zero octet)."""
    out = bytearray(data)
    for _ in range(1 + r.u8() % 4):
        pos, value = r.u16() % len(out), r.u8() or 1
        out[pos] ^= value
    return bytes(out)


# --- the contract --------------------------------------------------------------------------------------------------


def _outcome(fam: Family, effects, was_done: bool, now_done: bool) -> str:
    if effects is None:
        return "undecodable"
    names = [e.name for e in effects if isinstance(e, Count)]
    if isinstance(fam, AckFamily):
        return "accepted" if "rekey_acked" in names else "ignored"
    if any(isinstance(e, Failed) for e in effects):
        return "failed"
    if any(isinstance(e, fam.established) for e in effects):
        return "accepted"
    if "retransmit_answered" in names or (isinstance(fam, PushFamily) and member_rekey.DUPLICATE in names):
        return "retransmit"
    if any(isinstance(e, member_rekey.Reregister) for e in effects):
        return "reregister"
    if all(isinstance(e, (Count, member_rekey.Rejected, informational.Dropped, informational.Hint))
           for e in effects) and not (now_done and not was_done):
        return "ignored"
    return "advanced"


def _typed(t: Target, fam: Family, effects, where: str) -> None:
    """Rule 1: every effect is one of the machine's classes; no internal_error; every datagram decodes."""
    if effects is None:
        return
    if not isinstance(effects, list):
        raise Breach(f"{where}: effects are a {type(effects).__name__}, not a list")
    doi = t.scenario.info.get("doi", DOI.IPSEC)
    for e in effects:
        if not isinstance(e, fam.effects):
            raise Breach(f"{where}: effect of class {type(e).__name__}")
        if isinstance(e, Count) and (e.name == "internal_error" or not isinstance(e.name, str)):
            raise Breach(f"{where}: Count({e.name!r}): an exception was caught inside the machine")
        if isinstance(e, Failed) and not (isinstance(e.reason, str) and isinstance(e.notify, (int, type(None)))):
            raise Breach(f"{where}: {e!r}")
        if isinstance(e, Send):
            if not isinstance(e.data, bytes) or len(e.data) > 0xFFFF:
                raise Breach(f"{where}: a Send of {type(e.data).__name__}")
            try:
                decode_message(e.data, doi)
            except DecodeError as d:
                raise Breach(f"{where}: we sent a datagram that does not decode: {d.reason}") from None
        if isinstance(e, informational.Received):
            for item in e.items:
                if not isinstance(item, (informational.NotifyReceived, informational.DeleteReceived,
                                         informational.RUThere, informational.RUThereAck)):
                    raise Breach(f"{where}: item {item!r}")


def _feed(t: Target, fam: Family, m, rng, step):
    kind, data, peer, local, now, key = step
    if kind == TIMER:
        return fam.timer(t, m, key, now, rng)
    return fam.feed(t, m, data, now, rng, peer, local)


def _strip(x):
    """``x`` with every IV chain left out."""
    if isinstance(x, tuple) and len(x) == 2 and x[0] == "IVChain":
        return "IV"
    if isinstance(x, tuple):
        return tuple(_strip(v) for v in x)
    return x


#: Findings left to the lead (docs/security.md, "Exchange fuzzing"): counted, not raised, until their fix is in.
KNOWN_FINDINGS = {
    "F2": "a Quick Mode initiator ends its exchange (INVALID-FLAGS) when someone on the path sets the Commit bit in "
          "the header of the genuine QM2: HASH(2) does not cover the header (RFC 2409 section 5.5)",
    "F4": "an Aggressive Mode initiator keeps the proposal of an AM2 it then drops (it breaks its rule, or has no "
          "responder cookie): the genuine AM2 sets it again, so nothing comes of it but a field changed by an "
          "ignored message",
    "F5": "the responder's choice in MM2 and AM2 is not under HASH_R (RFC 2409 section 5: it covers SAi_b): "
          "someone on the path may shorten the ISAKMP SA's lifetime, which the initiator takes (the smaller of "
          "the two); Main Mode's MM2 is not checked here (no authenticator), Aggressive Mode's AM2 is",
}


def _known(state_key, effects, cls: str) -> str | None:
    """The known finding a step's effects show, or None."""
    if cls not in KEYHOLDER and state_key == ("quick_mode", INITIATOR, "QM1_SENT") and any(
            isinstance(e, Failed) and e.notify == NotifyType.INVALID_FLAGS for e in effects):
        return "F2"
    return None


def _count_known(t: Target, log: list, cls: str, finding: str) -> None:
    STATS[t.name]["known-" + finding] += 1
    log[-1] = (cls, "known-" + finding)


def _lifetimeless(x):
    """``x`` with the lifetime of every Phase 1 proposal left out (F5)."""
    if isinstance(x, tuple) and len(x) == 2 and x[0] == "Phase1Proposal":
        return "Phase1Proposal", x[1][:-1]
    if isinstance(x, tuple):
        return tuple(_lifetimeless(v) for v in x)
    return x


def _replayed(t: Target, fam: Family, history):
    """A fresh copy of the target with ``history`` fed again: the machine as it stood before the last step (every
    step is a function of the input, so it comes out the same)."""
    m, rng = t.fresh()
    if rng is None:
        rng = FastRng(0)
    for step in history:
        _feed(t, fam, m, rng, step)
    return m, rng


def _reference(t: Target, fam: Family, before, genuine_index, step):
    """(view, results, outcome) the genuine message ``genuine_index`` gives the machine as it stood before
    ``step``, with the same time, addresses and random source."""
    m, rng = before
    _, data, _, _, _ = t.scenario.deliveries[genuine_index]
    _, _, peer, local, now, key = step
    was_done = fam.done(m)
    effects = fam.feed(t, m, data, now, rng, peer, local)
    return fam.view(m), _results(fam, effects or []), _outcome(fam, effects, was_done, fam.done(m))


def check(data: bytes) -> dict:
    """Hold one input to the contract (module notes); return what each step did (for the statistics)."""
    _CACHE.clear()
    r = Reader(bytes(data))
    t = TARGETS[r.u8() % len(TARGETS)]
    fam = FAMILIES[t.family]
    m, rng = t.fresh()
    if rng is None:
        rng = FastRng(0)
    s = t.scenario
    pending = list(t.genuine)  # genuine deliveries to this side not yet made, in order
    history = []  # the steps fed so far
    log = []
    for _ in range(1 + r.u8() % 4):
        op = r.u8()
        kind, variant, toff = op & 7, op >> 3 & 3, TIME_OFFSETS[op >> 5]
        anchor = s.deliveries[pending[0] if pending else (t.genuine[-1] if t.genuine else -1)]
        peer, local = _addresses(t, anchor, variant)
        now, key, index = anchor[4] + toff, 0, None
        if kind in (GENUINE, REPLAY, TAMPER):
            index = pending[0] if kind == GENUINE and pending else r.u8() % len(s.deliveries)
            raw = s.deliveries[index][1]
            if pending and index == pending[0]:
                cls = C_GENUINE
            elif t.family == "push" and index in pending:
                cls = C_AUTH  # a later PUSH, signed and of a higher SEQ: a member may miss PUSHes
            else:
                cls = C_REPLAY
            if kind == TAMPER:
                raw, cls = _tamper(raw, r), C_TAMPERED
            if kind != TAMPER and s.deliveries[index][0] == t.side and index in pending:
                peer, local = _addresses(t, s.deliveries[index], variant)
        elif kind in (BUILD, BUILD2, CLEAR):
            raw, cls = seal(t, m, r, kind == CLEAR)
        elif kind == NOISE:
            raw, cls = _noise(t, m, r), C_FORGED
        else:
            raw, cls, key = b"", C_TIMER, r.u8()
        raw = raw[:MAX_DATAGRAM]
        step = (kind if kind == TIMER else GENUINE, raw, peer, local, now, key)
        state_key = _key(t.family, m, t.side)
        was_done = fam.done(m)
        fp_before, view_before = fam.fingerprint(m), fam.view(m)
        history.append(step)
        effects = _feed(t, fam, m, rng, step)
        where = f"{t.name} step {len(log) + 1} ({cls}, {kind})"
        _typed(t, fam, effects, where)
        outcome = _outcome(fam, effects, was_done, fam.done(m))
        log.append((cls, outcome))
        if cls == C_GENUINE:
            pending.remove(index)
        known = _known(state_key, effects or [], cls)
        if known is not None:  # a finding left to the lead: counted, and the machine is over
            _count_known(t, log, cls, known)
            continue
        if outcome in ("ignored", "retransmit", "undecodable") and cls != C_TIMER:  # rule 2
            fp_after = fam.fingerprint(m)
            if fp_after != fp_before:
                changed = [a[0] if isinstance(a, tuple) else "?" for a, b in zip(fp_before, fp_after) if a != b]
                if changed == ["proposal"] and state_key == ("aggressive_mode", INITIATOR, "AM1_SENT"):
                    _count_known(t, log, cls, "F4")
                    continue
                raise Breach(f"{where}: {outcome}, but the machine changed: {changed}")
        if was_done and outcome not in ("ignored", "retransmit", "undecodable"):
            raise Breach(f"{where}: the exchange was over, and a message did {outcome}")
        if cls in KEYHOLDER or was_done:
            continue
        view_after, results = fam.view(m), _results(fam, effects or [])
        if cls == C_TIMER:
            if (view_after, results) != (view_before, ()):
                raise Breach(f"{where}: a timer changed the security state")
            continue
        if (view_after, results) == (view_before, ()) and outcome != "failed":
            continue
        # What the genuine message would have done instead: the next one, or the one replayed or tampered with.
        candidates = {pending[0]} if pending else set()
        if index is not None and s.deliveries[index][0] == t.side:
            candidates.add(index)
        refs = [_reference(t, fam, _replayed(t, fam, history[:-1]), i, step) for i in sorted(candidates)]
        if outcome == "failed":  # rule 4
            if state_key in _FORGED_MAY_FAIL or any(ref[2] == "failed" for ref in refs):
                STATS[t.name]["killed-" + cls] += 1
                continue
            raise Breach(f"{where}: a {cls} message ended the exchange in state {state_key[2]}: "
                         f"{[e for e in effects if isinstance(e, Failed)]}")
        if state_key in _PREAUTH and cls in (C_PREAUTH, C_REPLAY, C_TAMPERED, C_FORGED) and not results:
            continue  # before Phase 1's authentication, clear messages move the exchange on by design
        # IV chains are left out: they follow the octets of the last message either way (RFC 2409 appendix B), and
        # those depend on what the protocol leaves unauthenticated (a copy's padding, vendor IDs that decide NAT-D
        # in our answer, a random ECDSA signature).  A forged message that moves a chain is caught by rule 2.
        if not any(_strip((view_after, results)) == _strip(ref[:2]) for ref in refs):  # rule 3
            if state_key[0] in ("main_mode", "aggressive_mode") and state_key[1] == INITIATOR and any(
                    _strip(_lifetimeless((view_after, results))) == _strip(_lifetimeless(ref[:2])) for ref in refs):
                _count_known(t, log, cls, "F5")
                continue
            what = "established " + repr(results)[:300] if results else "changed its security state"
            raise Breach(f"{where}: a {cls} message {what}; the genuine message does otherwise")
    # Rule 5: after inputs that were all ignored, the genuine next message does what it did when recorded.
    if log and pending and pending[0] == t.next and all(o in ("ignored", "retransmit", "undecodable")
                                                         and c != C_TIMER for c, o in log):
        anchor = s.deliveries[t.next]
        effects = fam.feed(t, m, anchor[1], anchor[4], rng, anchor[2], anchor[3]) or []
        kinds = _kinds(fam, effects)
        if kinds != t.honest_kinds:
            raise Breach(f"{t.name}: after ignored inputs the genuine message gave {kinds}, not {t.honest_kinds}")
        log.append(("probe", "ok"))
    return {"target": t.name, "family": t.family, "steps": log}


# --- statistics -------------------------------------------------------------------------------------------------------

STATS: dict = collections.defaultdict(collections.Counter)
_RUNS = [0]


def _note(result: dict) -> None:
    stats = STATS[result["target"]]
    stats["inputs"] += 1
    for cls, outcome in result["steps"]:
        stats[f"{cls}:{outcome}"] += 1
    _RUNS[0] += 1
    path = os.environ.get("EXCHANGES_FUZZ_STATS")
    if path and _RUNS[0] % 1000 == 0:
        write_stats(path)


def write_stats(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump({"inputs": _RUNS[0], "targets": STATS}, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


_VALUES = _value_classes()
TARGETS = _build_targets()


# --- the seed corpus --------------------------------------------------------------------------------------------------


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _chain(specs) -> bytes:
    return bytes([len(specs)]) + b"".join(specs)


def _honest(i: int, tweak: int = 0) -> bytes:
    """A chain item: payload ``i`` of the genuine next message, as it came."""
    return bytes([0, i, tweak])


def seeds():
    """(name, octets) of the seed corpus: for every target, its genuine message, replays, hostile chains built from
    its genuine payloads (in order, reversed, duplicated, one left out, inflated, thousands in a row), forged and
    flipped authenticators, header tweaks, tampered octets, noise and timers."""
    for n, t in enumerate(TARGETS):
        name = t.name.replace("/", "_")
        tb = bytes([n])
        k = len(t.next_payloads)
        everything = t.scenario.pool
        spots = [everything.index(p) for p in t.next_payloads]

        def one(*steps):
            return tb + bytes([len(steps) - 1]) + b"".join(steps)

        def build(mode, htweak, specs):
            return bytes([BUILD, mode, htweak]) + _chain(specs)

        in_order = [_honest(i) for i in range(k)]
        yield f"{name}-genuine", one(bytes([GENUINE]))
        for i in range(len(t.scenario.deliveries)):
            yield f"{name}-replay{i}", one(bytes([REPLAY, i]))
        for mode, label in ((AUTH, "auth"), (FORGED, "forged"), (FLIPPED, "flipped"), (ASIS, "asis")):
            yield f"{name}-{label}", one(build(mode, 0, in_order))
        yield f"{name}-reversed", one(build(AUTH, 0, in_order[::-1]))
        yield f"{name}-doubled", one(build(AUTH, 0, [x for x in in_order for _ in (0, 1)]))
        yield f"{name}-empty", one(build(AUTH, 0, []))
        for i in range(k):
            yield f"{name}-without{i}", one(build(AUTH, 0, in_order[:i] + in_order[i + 1 :]))
            yield f"{name}-long{i}", one(build(AUTH, 0, in_order[:i] + [_honest(i, 1 | 12 << 2)] + in_order[i + 1 :]))
            yield f"{name}-short{i}", one(build(AUTH, 0, in_order[:i] + [_honest(i, 1 | 2 << 2)] + in_order[i + 1 :]))
            for field in range(3):
                big = bytes([4]) + _u16(spots[i]) + bytes([field]) + _u16(4000) + b"\0"
                yield f"{name}-inflated{i}.{field}", one(build(AUTH, 0, in_order[:i] + [big] + in_order[i + 1 :]))
            many = bytes([6, i]) + _u16(2000) + b"\0"
            yield f"{name}-many{i}", one(build(AUTH, 0, in_order + [many]))
        for htweak, label in ((0x10, "commit"), (0x20, "authonly"), (0x01, "swapped"), (0x02, "zero-rcookie"),
                              (0x04, "mid0"), (0x08, "mid+1"), (0x40, "exchange")):
            yield f"{name}-{label}", one(build(AUTH, htweak, in_order))
        yield f"{name}-clear", one(bytes([CLEAR, AUTH, 0]) + _chain(in_order))
        yield f"{name}-staleiv", one(build(AUTH | 4, 0, in_order))
        yield f"{name}-noise", one(bytes([NOISE, 0]) + _u16(64) + b"\0\0\0\1")
        for key in range(3):
            yield f"{name}-timer{key}", one(bytes([TIMER, key]))
        if t.next is not None:
            d = len(t.scenario.deliveries[t.next][1])
            for pos in (19, 18, 30, d - 1):
                yield f"{name}-tamper{pos}", one(bytes([TAMPER, t.next, 0]) + _u16(pos) + b"\x01")
            yield f"{name}-forged-then-genuine", one(build(FORGED, 0, in_order), bytes([GENUINE]))
            yield f"{name}-genuine-twice", one(bytes([GENUINE]), bytes([GENUINE]))
            yield f"{name}-genuine-nat", one(bytes([GENUINE | 1 << 3]))
            yield f"{name}-genuine-late", one(bytes([GENUINE | 6 << 5]))


def write_seeds(directory: str) -> int:
    import pathlib

    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, octets in seeds():
        (out / name).write_bytes(octets)
        n += 1
    return n


def test_one_input(data: bytes) -> None:
    _note(check(data))


def main(argv) -> None:
    if "--write-seeds" in argv:
        print(write_seeds(argv[argv.index("--write-seeds") + 1]), "seed files written")
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
