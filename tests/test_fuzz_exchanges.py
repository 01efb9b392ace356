"""The exchange machines under hostile payload chains (issue 9): the corpus of fuzz/exchanges_fuzz.py replayed in CI,
properties over generated inputs, checks that the harness reaches the machines' logic and that its contract can
fail, and every crash the fuzzer found kept as a named case.

The contract (fuzz/exchanges_fuzz.py, module notes): only typed outcomes; an ignored message changes nothing; no
security state changes without an authentic message; a forged message ends an exchange only where the machine
documents it; after ignored inputs the genuine message still works.
"""

import functools
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from fuzz import exchanges_fuzz as fx
from gdoiserver.doi.gdoi import pull
from gdoiserver.doi.ipsec import quick_mode
from gdoiserver.exchanges import informational

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus_exchanges"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])


def target(name: str) -> int:
    """The index of the target called ``name`` (the first byte of an input)."""
    return next(i for i, t in enumerate(fx.TARGETS) if t.name == name)


def sealed(index: int, mode: int, items=None, htweak: int = 0) -> bytes:
    """One input: target ``index``, one BUILD step sealing ``items`` (default: the genuine next message's
    payloads in order, each as it came) with the authenticator ``mode``."""
    t = fx.TARGETS[index]
    if items is None:
        items = [bytes([0, i, 0]) for i in range(len(t.next_payloads))]
    return bytes([index, 0, fx.BUILD, mode, htweak, len(items)]) + b"".join(items)


def steps(index: int, *step_octets: bytes) -> bytes:
    """One input: target ``index`` and the given steps."""
    return bytes([index, len(step_octets) - 1]) + b"".join(step_octets)


def seal_and_feed(index: int, mode: int):
    """Seal the genuine next message's payloads for target ``index`` and feed them to a fresh copy of it; the
    step's class and the machine's effects."""
    t = fx.TARGETS[index]
    fam = fx.FAMILIES[t.family]
    m, rng = t.fresh()
    raw, cls = fx.seal(t, m, fx.Reader(sealed(index, mode)[3:]), False)
    delivery = t.scenario.deliveries[t.next]
    step = (fx.GENUINE, raw, *fx._addresses(t, delivery, 0), delivery[4], 0)
    return cls, fx._feed(t, fam, m, rng, step) or []


@functools.lru_cache(maxsize=None)
def replay_corpus() -> tuple:
    """(file name, check()'s result or the AssertionError it raised) for every file of the corpus, once."""
    out = []
    for path in sorted(CORPUS.iterdir()):
        try:
            out.append((path.name, fx.check(path.read_bytes())))
        except AssertionError as e:
            out.append((path.name, e))
    return tuple(out)


class CorpusTests(unittest.TestCase):
    """fuzz/corpus_exchanges/, the fuzzer's minimized corpus, replayed through the contract."""

    def test_corpus_holds_the_contract(self):
        """Every file of the corpus holds the contract of fuzz/exchanges_fuzz.check."""
        results = replay_corpus()
        self.assertGreater(len(results), 500)
        self.assertEqual([(name, str(r)) for name, r in results if isinstance(r, AssertionError)], [])

    def test_corpus_reaches_every_target(self):
        """The corpus feeds every target (each machine in each state), and its inputs end in every outcome: genuine
        and authentic messages accepted, forged ones ignored, replays answered from the cache."""
        results = [r for _, r in replay_corpus() if isinstance(r, dict)]
        self.assertEqual({r["target"] for r in results}, {t.name for t in fx.TARGETS})
        outcomes = {step for r in results for step in r["steps"]}
        for expected in (("genuine", "accepted"), ("authentic", "accepted"), ("forged", "ignored"),
                         ("replay", "retransmit"), ("tampered", "ignored"), ("preauth", "advanced"),
                         ("probe", "ok")):
            self.assertIn(expected, outcomes)


class SealTests(unittest.TestCase):
    """The harness reaches the machines' logic: what it seals with the right keys is what the peer would send."""

    def test_authentic_seal_of_the_genuine_chain(self):
        """For every target with a genuine next message, its payloads sealed by the harness (cookies, M-ID, IV
        chain, and the authenticator computed with the right keys) do what the genuine datagram did."""
        checked = 0
        for i, t in enumerate(fx.TARGETS):
            if t.next is None:
                continue
            cls, effects = seal_and_feed(i, fx.AUTH)
            self.assertEqual(fx._kinds(fx.FAMILIES[t.family], effects), t.honest_kinds, t.name)
            checked += 1
        self.assertEqual(checked, sum(t.next is not None for t in fx.TARGETS))

    def test_flipped_authenticator_is_refused(self):
        """The same chains with one bit of their authenticator flipped (HASH(n), HASH_I/HASH_R, SIG, the PUSH's
        SIG, the ACK's HASH) never establish anything; check() holds them to the whole contract."""
        for i, t in enumerate(fx.TARGETS):
            if t.next is None:
                continue
            cls, effects = seal_and_feed(i, fx.FLIPPED)
            if cls == fx.C_PREAUTH:  # MM1-MM4 and AM1 carry no authenticator
                continue
            self.assertEqual(cls, fx.C_FORGED, t.name)
            self.assertEqual(fx._results(fx.FAMILIES[t.family], effects), (), t.name)
            fx.check(sealed(i, fx.FLIPPED))


class OracleTests(unittest.TestCase):
    """The contract can fail: machines broken on purpose are caught."""

    def test_state_changed_by_a_dropped_message(self):
        """A Quick Mode initiator that keeps a field of a QM2 whose HASH(2) fails, and drops it, breaks rule 2."""
        original = quick_mode.QuickMode._on_qm2

        def leaky(self, message, raw, now, rng):
            self.nr_b = b"leaked"
            return original(self, message, raw, now, rng)

        handlers = dict(quick_mode._HANDLERS)
        handlers[(fx.INITIATOR, "QM1_SENT")] = leaky
        self.patch(quick_mode, "_HANDLERS", handlers)
        with self.assertRaises(fx.Breach) as e:
            fx.check(sealed(target("qm/initiator/QM1_SENT/1"), fx.FLIPPED))
        self.assertIn("ignored, but the machine changed: ['nr_b']", str(e.exception))

    def test_forged_message_accepted(self):
        """A Quick Mode initiator whose HASH(2) check always passes establishes on a forged QM2 with another Nr:
        rule 3 breaks (a forged copy of the genuine QM2 would give the genuine result, which is allowed)."""
        self.patch(quick_mode, "constant_time_equal", lambda a, b: True)
        index = target("qm/initiator/QM1_SENT/1")
        types = [ptype for ptype, _ in fx.TARGETS[index].next_payloads]
        nonce = types.index(fx.PayloadType.NONCE)
        items = [bytes([0, i, 0]) if i != nonce else bytes([2, i, 0, 0, 0, 0, 0, 0]) for i in range(len(types))]
        with self.assertRaises(fx.Breach) as e:
            fx.check(sealed(index, fx.FLIPPED, items))
        self.assertIn("forged message established", str(e.exception))

    def test_forged_message_ends_an_exchange(self):
        """A GROUPKEY-PULL member that gives up on a message 2 whose HASH(2) fails breaks rule 4 (pull.py drops
        it: whoever sent it must not end a registration in progress)."""
        self.patch(pull.PullInitiator, "_ignored", lambda self, counter: self._finish_failed(None, counter))
        with self.assertRaises(fx.Breach) as e:
            fx.check(sealed(target("pull/initiator/REQUEST_SENT/1"), fx.FLIPPED))
        self.assertIn("ended the exchange", str(e.exception))

    def test_internal_error(self):
        """An exception that a machine's own catch-all turns into Count("internal_error") breaks rule 1."""

        def broken(self, message, raw, now, rng):
            raise ValueError("a bug")

        self.patch(pull.PullResponder, "_on_request", broken)
        with self.assertRaises(fx.Breach) as e:
            fx.check(bytes([target("pull/responder/START/0"), 0, fx.GENUINE]))
        self.assertIn("internal_error", str(e.exception))

    def test_exception_escapes(self):
        """An exception out of a function without a catch-all (Informational) reaches check() as it is."""

        def broken(sa, message):
            raise KeyError("a bug")

        self.patch(informational, "process", broken)
        self.assertRaises(KeyError, fx.check, bytes([target("info-initiator/initiator/-/0"), 0, fx.GENUINE]))

    def test_genuine_message_broken_after_ignored_input(self):
        """A Quick Mode responder whose dropped QM3 still moves its IV chain: the genuine QM3 that follows fails,
        which rule 2 (the chain is a field) reports."""
        original = quick_mode.QuickMode._open

        def moving(self, message, chain):
            self.chain = fx.attrs.evolve(chain, iv=bytes(16))
            return original(self, message, chain)

        self.patch(quick_mode.QuickMode, "_open", moving)
        index = target("qm/responder/QM2_SENT/2")
        forged = sealed(index, fx.FORGED)[2:]
        with self.assertRaises(fx.Breach) as e:
            fx.check(steps(index, forged, bytes([fx.GENUINE])))
        self.assertIn("'chain'", str(e.exception))

    def test_probe_after_ignored_input(self):
        """After an input the machine ignored (an empty MM3, dropped by its rule), the genuine MM3 is fed and must
        do what it did in the recording (rule 5)."""
        result = fx.check(steps(target("mm-psk/responder/MM2_SENT/2"), bytes([fx.BUILD, fx.AUTH, 0, 0])))
        self.assertEqual(result["steps"], [("preauth", "ignored"), ("probe", "ok")])


# --- generated inputs ---------------------------------------------------------------------------------------------


def _item():
    """One payload of a hostile chain, in the harness's input format (fuzz/exchanges_fuzz.build_chain)."""
    tweak = st.sampled_from([0, 0, 0, 1 | 3 << 2, 1 | 12 << 2, 2 | 5 << 2, 3 | 4])
    i = st.integers(0, 255)
    u16 = st.integers(0, 0xFFFF).map(lambda n: struct.pack("!H", n))
    return st.one_of(
        st.tuples(st.sampled_from([0, 7]), i, tweak).map(bytes),
        st.tuples(u16, tweak).map(lambda x: b"\x01" + x[0] + bytes([x[1]])),
        st.tuples(i, st.lists(st.tuples(st.integers(0, 7), u16, i), min_size=1, max_size=4), tweak).map(
            lambda x: bytes([2, x[0], len(x[1]) - 1]) + b"".join(bytes([k]) + p + bytes([v]) for k, p, v in x[1])
            + bytes([x[2]])),
        st.tuples(i, st.binary(max_size=64), tweak).map(
            lambda x: bytes([3, 0, x[0], len(x[1])]) + x[1] + bytes([x[2]])),
        st.tuples(u16, st.integers(0, 7), st.integers(2, 3000), tweak).map(
            lambda x: b"\x04" + x[0] + bytes([x[1]]) + struct.pack("!H", x[2]) + bytes([x[3]])),
        st.tuples(i, st.integers(2, 600), tweak).map(
            lambda x: bytes([6, x[0]]) + struct.pack("!H", x[1]) + bytes([x[2]])),
        tweak.map(lambda t: bytes([5, 0, t])),
    )


def _step():
    high = st.integers(0, 31).map(lambda n: n << 3)
    return st.one_of(
        high.map(lambda h: bytes([fx.GENUINE | h])),
        st.tuples(high, st.integers(0, 255)).map(lambda x: bytes([fx.REPLAY | x[0], x[1]])),
        st.tuples(high, st.binary(min_size=5, max_size=13)).map(lambda x: bytes([fx.TAMPER | x[0]]) + x[1]),
        st.tuples(high, st.integers(0, 255), st.integers(0, 255), st.lists(_item(), max_size=8),
                  st.binary(max_size=24)).map(
            lambda x: bytes([fx.BUILD | x[0], x[1], x[2], len(x[3])]) + b"".join(x[3]) + x[4]),
        st.tuples(high, st.binary(min_size=3, max_size=8)).map(lambda x: bytes([fx.NOISE | x[0]]) + x[1]),
        st.integers(0, 2).map(lambda k: bytes([fx.TIMER, k])),
    )


@st.composite
def inputs(draw):
    """An input of the harness: a target, then one to four steps built field by field."""
    index = draw(st.integers(0, len(fx.TARGETS) - 1))
    steps = draw(st.lists(_step(), min_size=1, max_size=4))
    return bytes([index, len(steps) - 1]) + b"".join(steps)


class PropertyTests(unittest.TestCase):
    """The contract over inputs hypothesis generates (the fuzzer's long campaign is in docs/security.md)."""

    @SETTINGS
    @given(inputs())
    def test_structured_inputs(self, data):
        """Genuine, replayed, tampered, sealed hostile chains, noise and timers, on any machine in any state, hold
        the contract."""
        fx.check(data)

    @SETTINGS
    @given(st.binary(max_size=400))
    def test_any_octets(self, data):
        """Any octets read as an input hold the contract."""
        fx.check(data)


# --- crashes found by the fuzzer --------------------------------------------------------------------------------------


class CrashRegressionTests(unittest.TestCase):
    """Each input the fuzzer reported, with what it showed."""

    def test_initial_contact_in_a_clear_am3(self):
        """An AM3 may come in the clear, and its HASH_I does not cover a Notify (RFC 2409 section 5.4): someone on
        the path could add N(INITIAL-CONTACT) to a clear AM3 of the genuine initiator, and the responder's SA said
        initial_contact, which makes the engine delete the peer's other SAs (RFC 2407 section 4.6.3.3).  Found while
        writing rule 3: the genuine HASH_I, the NAT-D pair and an added INITIAL-CONTACT, in clear, established an
        SA unlike the genuine one.  Now the responder takes INITIAL-CONTACT from an encrypted AM3 only."""
        index = target("am-psk/responder/AM2_SENT/2")
        icky, rcky = fx.TARGETS[index].scenario.info["cookies"]
        # DOI 1, Protocol-ID PROTO_ISAKMP, SPI Size 16, Notify INITIAL-CONTACT (24578), SPI = the cookies
        notify = struct.pack("!IBBH", 1, 1, 16, 24578) + icky + rcky
        genuine = [bytes([0, i, 0]) for i in range(3)]  # HASH_I, NAT-D, NAT-D of the genuine AM3
        added = bytes([3, 0, fx.PAYLOAD_TYPES.index(11), len(notify)]) + notify + b"\0"  # a Notification payload
        data = steps(index, bytes([fx.CLEAR, fx.ASIS, 0, 4]) + b"".join(genuine) + added)
        self.assertEqual(fx.check(data)["steps"], [("forged", "accepted")])
        t = fx.TARGETS[index]
        m, rng = t.fresh()
        raw, _ = fx.seal(t, m, fx.Reader(data[3:]), True)
        effects = m.receive(fx.decode_message(raw), raw, 0.0, rng, peer=("127.0.0.1", 500), local=("127.0.0.2", 500))
        (established,) = [e for e in effects if isinstance(e, fx.Established)]
        self.assertFalse(established.sa.initial_contact)

    def test_commit_bit_on_a_genuine_qm2(self):
        """Finding F2: HASH(2) does not cover the ISAKMP header (RFC 2409 section 5.5), so anyone on the path may
        set the Commit bit on the responder's genuine QM2; the initiator answered INVALID-FLAGS and ended the
        exchange.  It should drop such a QM2 (left to the lead: the quick_mode.py diff in docs/security.md), and
        the genuine QM2, resent, then establishes."""
        index = target("qm/initiator/QM1_SENT/1")
        flags = 19  # the header's Flags octet (RFC 2408 section 3.1); 0x02 is the Commit bit
        tampered = bytes([fx.TAMPER, fx.TARGETS[index].next, 0]) + struct.pack("!H", flags) + b"\x02"
        result = fx.check(steps(index, tampered))
        self.assertEqual(result["steps"], [("tampered", "ignored"), ("probe", "ok")])

    test_commit_bit_on_a_genuine_qm2.todo = "F2: apply the quick_mode.py diff of docs/security.md, then drop this todo"

    def test_commit_bit_is_counted_until_fixed(self):
        """Until F2 is fixed, the harness counts the failure as the known finding instead of stopping the campaign;
        a failure of any other kind in that state is still a breach of rule 4."""
        index = target("qm/initiator/QM1_SENT/1")
        tampered = bytes([fx.TAMPER, fx.TARGETS[index].next, 0]) + struct.pack("!H", 19) + b"\x02"
        steps_done = fx.check(steps(index, tampered))["steps"]
        self.assertIn(steps_done, ([("tampered", "known-F2")], [("tampered", "ignored"), ("probe", "ok")]))
        state = ("quick_mode", fx.INITIATOR, "QM1_SENT")
        self.assertIsNone(fx._known(state, [fx.Failed(None, "timed out")], fx.C_TAMPERED))
        refused = [fx.Failed(fx.NotifyType.INVALID_FLAGS, "the responder set the Commit bit")]
        self.assertEqual(fx._known(state, refused, fx.C_TAMPERED), "F2")
        self.assertIsNone(fx._known(state, refused, fx.C_AUTH))  # a responder that sets the bit itself may end it

    def certificate_cases(self):
        """(label, input) of the CERT payloads the fuzzer reported (finding F3): a certificate of the genuine chain
        with its version set to 6 (offset 12 of the DER: InvalidVersion at loading), with an AttributeValue tag of
        its issuer set to 5 (offset 40: KeyError when the issuer is read), and a ciphertext octet of MM6 changed
        so that the responder's certificate repeats keyUsage (DuplicateExtension)."""
        cases = []
        for name in ("mm-ecdsa/responder/MM4_SENT/4", "pull-pfs-pop/responder/SA_SENT/2",
                     "pull-pfs-pop/initiator/KEYS_REQUESTED/3"):
            index = target(name)
            types = [ptype for ptype, _ in fx.TARGETS[index].next_payloads]
            cert = types.index(fx.PayloadType.CERT)
            for label, offset in (("version", 13), ("issuer", 41)):  # +1: the CERT body starts with its encoding
                edit = bytes([2, cert, 0, 1]) + struct.pack("!H", offset) + b"\x05\x00"  # set one octet to 5
                items = [bytes([0, i, 0]) if i != cert else edit for i in range(len(types))]
                cases.append((f"{name} {label}", sealed(index, fx.AUTH, items)))
        index = target("mm-ecdsa/initiator/MM5_SENT/5")
        mm6 = bytes([fx.TAMPER, fx.TARGETS[index].next, 0]) + struct.pack("!H", 872) + b"\x01"
        cases.append(("MM6 tampered", steps(index, mm6)))
        return cases

    def test_certificates_that_do_not_parse(self):
        """Finding F3: a CERT payload whose certificate does not parse is refused with INVALID-CERTIFICATE.  The
        loader raised InvalidVersion, and it parses lazily, so that a broken issuer or a repeated extension raised
        KeyError, ValueError or DuplicateExtension from validate_chain later: Main Mode (before any signature is
        checked: anyone who completed MM3/MM4), Aggressive Mode and GROUPKEY-PULL (an authenticated member)
        counted internal_error and ended the exchange.  Fixed in gdoiserver/crypto/certs.py; now the exchange ends
        with the Notify of the refused certificate, and nothing escapes (rule 1 of check())."""
        for label, data in self.certificate_cases():
            self.assertEqual(fx.check(data)["steps"][0][1], "failed", label)
            if data[2] != fx.BUILD:
                continue
            t = fx.TARGETS[data[0]]
            m, rng = t.fresh()
            raw, _ = fx.seal(t, m, fx.Reader(data[3:]), False)
            delivery = t.scenario.deliveries[t.next]
            effects = fx._feed(t, fx.FAMILIES[t.family], m, rng,
                               (fx.GENUINE, raw, *fx._addresses(t, delivery, 0), delivery[4], 0))
            (failed,) = [e for e in effects if isinstance(e, fx.Failed)]
            self.assertEqual(failed.notify, fx.NotifyType.INVALID_CERTIFICATE, label)

    def am2_with_lifetime(self, drop_nonce: bool) -> bytes:
        """An input for the Aggressive Mode initiator: the genuine AM2's payloads in clear, as they came (HASH_R
        included), its SA's Life Duration (TV attribute 0x800c, RFC 2409 appendix A) set from 28800 to 20608 s, and
        without its Nonce payload when ``drop_nonce`` (AM2 then breaks its rule and is dropped)."""
        index = target("am-psk/initiator/AM1_SENT/1")
        payloads = fx.TARGETS[index].next_payloads
        sa = payloads[0][1]
        at = sa.index(bytes.fromhex("800c7080")) + 2  # the first octet of the value
        shorter = bytes([2, 0, 0, 1]) + struct.pack("!H", at) + b"\x50\x00"  # set one octet: 0x7080 -> 0x5080
        items = [shorter] + [bytes([0, i, 0]) for i in range(1, len(payloads))
                             if not (drop_nonce and payloads[i][0] == fx.PayloadType.NONCE)]
        return steps(index, bytes([fx.CLEAR, fx.ASIS, 0, len(items)]) + b"".join(items))

    def test_dropped_am2_leaves_the_proposal(self):
        """Finding F4: the Aggressive Mode initiator took the responder's choice from an AM2 before checking its
        rule, so an AM2 it then dropped (here: without Nonce) left another lifetime in ``proposal``.  Harmless (the
        genuine AM2 sets it again) but a field changed by an ignored message; the aggressive_mode.py diff in
        docs/security.md takes the choice only once the AM2 is kept.  Left to the lead."""
        self.assertEqual(fx.check(self.am2_with_lifetime(drop_nonce=True))["steps"],
                         [("forged", "ignored"), ("probe", "ok")])

    test_dropped_am2_leaves_the_proposal.todo = "F4: apply the aggressive_mode.py diff of docs/security.md"

    def test_dropped_am2_is_counted_until_fixed(self):
        """Until F4 is fixed, the harness counts that input as the known finding; any other field changed by an
        ignored message is still a breach of rule 2."""
        outcomes = fx.check(self.am2_with_lifetime(drop_nonce=True))["steps"]
        self.assertIn(outcomes, ([("forged", "known-F4")], [("forged", "ignored"), ("probe", "ok")]))

    def test_responder_lifetime_is_unauthenticated(self):
        """Finding F5 (IKEv1 itself): HASH_R covers the initiator's SA (SAi_b), not the responder's choice (RFC 2409
        section 5), and the initiator takes the smaller lifetime; someone on the path can shorten the ISAKMP SA's
        lifetime in a clear AM2 (or MM2).  The harness counts it apart, and only when the SA established differs
        from the genuine one in that lifetime alone: same keys, cookies, suite and identities."""
        self.assertEqual(fx.check(self.am2_with_lifetime(drop_nonce=False))["steps"], [("forged", "known-F5")])
        index = target("am-psk/initiator/AM1_SENT/1")
        t = fx.TARGETS[index]
        m, rng = t.fresh()
        raw, _ = fx.seal(t, m, fx.Reader(self.am2_with_lifetime(drop_nonce=False)[3:]), True)
        effects = m.receive(fx.decode_message(raw), raw, 0.0, rng, peer=("127.0.0.2", 500), local=("127.0.0.1", 500))
        (established,) = [e for e in effects if isinstance(e, fx.Established)]
        self.assertEqual(established.sa.proposal.lifetime, 20608)
