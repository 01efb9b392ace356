"""Aggressive Mode (gdoiserver.exchanges.aggressive_mode, RFC 2409 sections 5.1 and 5.4) between our initiator
and responder with tests.machine_pair, against strongSwan's captured messages, and negative cases."""

import attrs
from twisted.trial import unittest

from gdoiserver.codec.cipher import IVChain, cipher_for
from gdoiserver.codec.constants import NAT_T_VENDOR_ID, ExchangeType, NotifyType, OakleyAuth, OakleyEncryption
from gdoiserver.codec.constants import OakleyHash
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.payloads import KE, SA, Hash, Identification, Nonce, Proposal, Transform
from gdoiserver.crypto import keys
from gdoiserver.crypto.prf import hash_algorithm
from gdoiserver.exchanges import phase1_common
from gdoiserver.exchanges.aggressive_mode import AggressiveMode
from gdoiserver.exchanges.effects import CancelTimer, Count, Failed, Send, StartTimer
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER, Phase1Policy, Phase1Proposal
from tests import pki
from tests.machine_pair import CAPTURE, DHSpy, MachinePair, seeded_rng
from tests.test_main_mode import AUTH_BY_KIND, encrypted, signature_pki

I_ADDR, R_ADDR = ("127.0.0.1", 500), ("127.0.0.2", 500)
INITIATOR_ID, RESPONDER_ID = Identification.of("init.am.test"), Identification.of("resp.am.test")
PSK = b"aggressive mode test psk"
AES = OakleyEncryption.AES_CBC
SUITE = Phase1Proposal(AES, 256, OakleyHash.SHA2_256, OakleyAuth.PRE_SHARED_KEY, 14, 28800)


def psk_policy(*suites, local_id, psks=None, **kw) -> Phase1Policy:
    """A policy whose pre-shared keys are looked up by the peer's ID (both test IDs by default)."""
    psks = {INITIATOR_ID: PSK, RESPONDER_ID: PSK} if psks is None else psks
    return Phase1Policy(suites or (SUITE,), psk_for_identity=psks.get, local_id=local_id, **kw)


def policies(*suites, **kw):
    return psk_policy(*suites, local_id=INITIATOR_ID, **kw), psk_policy(*suites, local_id=RESPONDER_ID, **kw)


def pair(initiator_policy, responder_policy, **kw) -> MachinePair:
    initiator = AggressiveMode.initiator(initiator_policy, local=I_ADDR, peer=R_ADDR, **kw.pop("initiator_kw", {}))
    return MachinePair(initiator, AggressiveMode.responder(responder_policy), **kw)


def names(payloads) -> list:
    return [type(x).__name__ for x in payloads]


def decrypt_am3(p: MachinePair, data: bytes) -> Message:
    """AM3 decrypted with the initiator's keys from the first Phase 1 IV (RFC 2409 appendix B)."""
    sa = p.established[INITIATOR]
    chain = IVChain(sa.last_iv.cipher, sa.keys.enc_key, sa.proposal.hash, sa.keys.iv)
    return chain.decrypt(decode_message(data))[0]


class ExchangeTests(unittest.TestCase):
    """Whole Aggressive Mode exchanges with pre-shared keys picked by identity."""

    def assertEstablished(self, p, proposal):
        self.assertEqual(p.failed, {})
        i, r = p.established[INITIATOR], p.established[RESPONDER]
        self.assertEqual(i.keys, r.keys)
        self.assertEqual(i.last_iv, r.last_iv)
        self.assertEqual((i.proposal, r.proposal), (proposal, proposal))
        self.assertEqual((i.local_id, i.peer_id, r.local_id, r.peer_id),
                         (INITIATOR_ID, RESPONDER_ID, RESPONDER_ID, INITIATOR_ID))
        self.assertEqual((i.role, r.role), (INITIATOR, RESPONDER))
        self.assertEqual(p.pending_timers(INITIATOR) | p.pending_timers(RESPONDER), set())
        return i, r

    def test_groups_and_hashes(self):
        """AM PSK with groups 14, 19, 20, 21 and each hash: both sides derive the same keys."""
        for group in (14, 19, 20, 21):
            for h in (OakleyHash.SHA, OakleyHash.SHA2_256, OakleyHash.SHA2_384, OakleyHash.SHA2_512):
                proposal = attrs.evolve(SUITE, group=group, hash=h, key_length=128)
                self.assertEstablished(pair(*policies(proposal)).start(), proposal)

    def test_effect_sequence(self):
        """The exact effects and payload chains: AM1 SA KE Ni IDii VID; AM2 SA KE Nr IDir HASH_R NAT-D NAT-D VID;
        AM3 encrypted with HASH_I NAT-D NAT-D (NAT-D after the hash, as strongSwan writes it)."""
        p = pair(*policies()).start()
        expected = [
            (INITIATOR, "Send"), (INITIATOR, StartTimer("retransmit", 2.0)),
            (INITIATOR, StartTimer("exchange_timeout", 60.0)),
            (RESPONDER, "Send"), (RESPONDER, StartTimer("exchange_timeout", 60.0)),
            (INITIATOR, "Send"), (INITIATOR, CancelTimer("retransmit")), (INITIATOR, CancelTimer("exchange_timeout")),
            (INITIATOR, "Established"),
            (RESPONDER, CancelTimer("exchange_timeout")), (RESPONDER, "Established"),
        ]
        got = [(s, e if isinstance(e, (StartTimer, CancelTimer)) else type(e).__name__) for s, e in p.log]
        self.assertEqual(got, expected)
        am1, am2, am3 = (s.data for s in p.effects(kind=Send))
        self.assertEqual(names(decode_message(am1).payloads), ["SA", "KE", "Nonce", "Identification", "VendorID"])
        self.assertEqual(names(decode_message(am2).payloads),
                         ["SA", "KE", "Nonce", "Identification", "Hash", "NATD", "NATD", "VendorID"])
        self.assertTrue(decode_message(am3).encrypted)
        self.assertEqual(names(decrypt_am3(p, am3).payloads), ["Hash", "NATD", "NATD"])
        self.assertTrue(all(decode_message(d).exchange_type == ExchangeType.AGGRESSIVE for d in (am1, am2, am3)))

    def test_one_group_offered(self):
        """The KE goes out in AM1, so the initiator offers only the suites of its first suite's group."""
        a, b, c = SUITE, attrs.evolve(SUITE, group=19), attrs.evolve(SUITE, key_length=128)
        ini, _ = policies(a, b, c)
        initiator = AggressiveMode.initiator(ini, local=I_ADDR, peer=R_ADDR)
        am1 = decode_message(initiator.start(0.0, seeded_rng(1))[0].data)
        transforms = am1.payloads[0].proposals[0].transforms
        self.assertEqual(len(transforms), 2)
        self.assertEqual({dict(t.attributes)[4] for t in transforms}, {14})
        self.assertEqual(len(am1.payloads[1].key_exchange_data), 256)  # MODP-2048

    def test_psk_by_identity(self):
        """Each side looks its key up by the peer's ID: the responder by IDii, the initiator by IDir."""
        seen = {INITIATOR: [], RESPONDER: []}

        def lookup(side):
            def psk_for_identity(ident):
                seen[side].append(ident)
                return PSK

            return psk_for_identity

        ini = Phase1Policy((SUITE,), psk_for_identity=lookup(INITIATOR), local_id=INITIATOR_ID)
        resp = Phase1Policy((SUITE,), psk_for_identity=lookup(RESPONDER), local_id=RESPONDER_ID)
        pair(ini, resp).start()
        self.assertEqual(seen, {INITIATOR: [RESPONDER_ID], RESPONDER: [INITIATOR_ID]})

    def test_clear_am3(self):
        """An AM3 sent in the clear (RFC 2409's figure) is accepted just as an encrypted one; the chain then
        stays at the first IV."""
        p = pair(*policies())
        p.intercept = lambda side, send: [] if encrypted(send.data) else [send.data]  # AM3 is lost
        p.start()
        am3 = decrypt_am3(p, p.sends(INITIATOR)[-1].data)
        clear = attrs.evolve(am3, flags=0, padding=b"")
        p.deliver(RESPONDER, clear.encode(), peer=I_ADDR, local=R_ADDR)
        r = p.established[RESPONDER]
        self.assertEqual(r.keys, p.established[INITIATOR].keys)
        self.assertEqual(r.last_iv.iv, r.keys.iv)

    def test_am3_nat_d_first(self):
        """An encrypted AM3 with its NAT-D before the hash is accepted too (the grammar puts no order on them)."""
        p = pair(*policies())
        p.intercept = lambda side, send: [] if encrypted(send.data) else [send.data]  # AM3 is lost
        p.start()
        am3 = decrypt_am3(p, p.sends(INITIATOR)[-1].data)
        reordered = attrs.evolve(am3, flags=0, padding=b"", payloads=am3.payloads[1:] + am3.payloads[:1])
        sa = p.established[INITIATOR]
        data, _ = IVChain(sa.last_iv.cipher, sa.keys.enc_key, sa.proposal.hash, sa.keys.iv).encrypt(reordered)
        p.deliver(RESPONDER, data, peer=I_ADDR, local=R_ADDR)
        self.assertEqual(p.established[RESPONDER].keys, sa.keys)
        self.assertEqual(p.established[RESPONDER].last_iv.iv, data[-16:])

    def test_nat_float(self):
        """Behind a NAT the initiator sends AM3 from and to port 4500; the responder moves there on AM3."""
        p = pair(*policies(), nat=lambda a: ("192.0.2.7", a[1] + 1000)).start()
        am3 = p.sends(INITIATOR)[-1]
        self.assertEqual((am3.peer, am3.local, am3.nat_t), (("127.0.0.2", 4500), ("127.0.0.1", 4500), True))
        i, r = p.established[INITIATOR], p.established[RESPONDER]
        self.assertEqual((i.nat_t, i.local_behind_nat), (True, True))
        self.assertEqual((r.nat_t, r.peer_behind_nat, r.peer), (True, True, ("192.0.2.7", 5500)))

    def test_initial_contact(self):
        """initial_contact adds N(INITIAL-CONTACT) to AM3; the responder's SA records it."""
        p = pair(*policies(), initiator_kw={"initial_contact": True}).start()
        self.assertTrue(p.established[RESPONDER].initial_contact)
        self.assertEqual(names(decrypt_am3(p, p.sends(INITIATOR)[-1].data).payloads)[-1], "Notification")


class NegativeTests(unittest.TestCase):
    """Aggressive Mode exchanges that must fail, and how."""

    def test_unknown_identity(self):
        """No key for IDii: INVALID-ID-INFORMATION, answered in the clear to AM1."""
        ini, _ = policies()
        resp = psk_policy(local_id=RESPONDER_ID, psks={})
        p = pair(ini, resp).start()
        self.assertEqual(p.failed[RESPONDER].notify, NotifyType.INVALID_ID_INFORMATION)
        (answer,) = p.sends(RESPONDER)
        self.assertEqual(decode_message(answer.data).payloads[0].notify_type, NotifyType.INVALID_ID_INFORMATION)
        self.assertEqual(p.failed[INITIATOR].notify, NotifyType.INVALID_ID_INFORMATION)

    def test_wrong_psk(self):
        """Different keys: the initiator finds HASH_R wrong (INVALID-HASH-INFORMATION) and sends nothing more;
        the responder never establishes and times out."""
        ini = psk_policy(local_id=INITIATOR_ID, psks={RESPONDER_ID: b"not the same"})
        _, resp = policies()
        p = pair(ini, resp).start()
        self.assertEqual(p.failed[INITIATOR].notify, NotifyType.INVALID_HASH_INFORMATION)
        self.assertEqual(len(p.sends(INITIATOR)), 1)
        self.assertEqual(p.established, {})
        p.advance(60)
        self.assertEqual(p.failed[RESPONDER], Failed(None, "exchange timed out"))

    def test_initiator_without_key_for_responder(self):
        """The initiator has no key for IDir: INVALID-ID-INFORMATION, nothing more sent."""
        ini = psk_policy(local_id=INITIATOR_ID, psks={})
        p = pair(ini, policies()[1]).start()
        self.assertEqual(p.failed[INITIATOR].notify, NotifyType.INVALID_ID_INFORMATION)
        self.assertEqual(len(p.sends(INITIATOR)), 1)

    def test_bad_hash_i(self):
        """An AM3 with a wrong HASH_I: INVALID-HASH-INFORMATION on the responder, nothing sent."""
        p = pair(*policies())
        p.intercept = lambda side, send: [] if encrypted(send.data) else [send.data]  # AM3 is lost
        p.start()
        am3 = decrypt_am3(p, p.sends(INITIATOR)[-1].data)
        forged = attrs.evolve(am3, flags=0, padding=b"", payloads=(Hash(bytes(32)),) + am3.payloads[1:])
        p.deliver(RESPONDER, forged.encode(), peer=I_ADDR, local=R_ADDR)
        self.assertEqual(p.failed[RESPONDER].notify, NotifyType.INVALID_HASH_INFORMATION)
        self.assertEqual(len(p.sends(RESPONDER)), 1)

    def test_group_mismatch(self):
        """The initiator's only group is one the responder does not take: NO-PROPOSAL-CHOSEN."""
        ini, _ = policies(attrs.evolve(SUITE, group=19))
        _, resp = policies(SUITE)
        p = pair(ini, resp).start()
        self.assertEqual(p.failed[RESPONDER].notify, NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertEqual(p.failed[INITIATOR].notify, NotifyType.NO_PROPOSAL_CHOSEN)

    def test_bad_ke(self):
        """An AM1 KE of the wrong length for the group: INVALID-KEY-INFORMATION in the clear."""
        p = pair(*policies())

        def short_ke(side, send):
            m = decode_message(send.data)
            if side == INITIATOR:
                payloads = tuple(KE(bytes(8)) if isinstance(x, KE) else x for x in m.payloads)
                return [attrs.evolve(m, payloads=payloads).encode()]
            return [send.data]

        p.intercept = short_ke
        p.start()
        self.assertEqual(p.failed[RESPONDER].notify, NotifyType.INVALID_KEY_INFORMATION)
        self.assertEqual(decode_message(p.sends(RESPONDER)[0].data).payloads[0].notify_type,
                         NotifyType.INVALID_KEY_INFORMATION)

    def test_am2_without_sa(self):
        """An AM2 that does not start with an SA is dropped; the initiator keeps waiting."""
        ini, _ = policies()
        initiator = AggressiveMode.initiator(ini, local=I_ADDR, peer=R_ADDR)
        initiator.start(0.0, seeded_rng(1))
        m = Message(initiator.initiator_cookie, b"\7" * 8, ExchangeType.AGGRESSIVE, 0, 0, (Nonce(bytes(16)),))
        effects = initiator.receive(m, m.encode(), 0.0, seeded_rng(2), peer=R_ADDR, local=I_ADDR)
        self.assertEqual(effects, [Count("dropped_malformed")])
        self.assertEqual(initiator.state, "AM1_SENT")

    def test_am2_with_a_suite_not_offered(self):
        """A responder that "chooses" a suite we did not offer fails the exchange with NO-PROPOSAL-CHOSEN."""
        ini, _ = policies()
        initiator = AggressiveMode.initiator(ini, local=I_ADDR, peer=R_ADDR)
        am1 = decode_message(initiator.start(0.0, seeded_rng(1))[0].data)
        aes128 = Transform(1, 1, tuple(Attribute(t, v) for t, v in ((1, 7), (14, 128), (2, 4), (3, 1), (4, 14))))
        other = SA(1, 1, (Proposal(1, 1, b"", (aes128,)),))  # we offered AES-256 only
        m = Message(initiator.initiator_cookie, b"\7" * 8, ExchangeType.AGGRESSIVE, 0, 0, (other, KE(bytes(256))))
        effects = initiator.receive(m, m.encode(), 0.0, seeded_rng(2), peer=R_ADDR, local=I_ADDR)
        self.assertEqual(effects[-1].notify, NotifyType.NO_PROPOSAL_CHOSEN)


class RetransmissionTests(unittest.TestCase):
    """AM1 retransmission and the cached AM2."""

    def test_am2_lost_once(self):
        """AM2 is lost: the initiator resends the same AM1 after 2 s, the responder resends the same AM2 from
        its cache without any new DH computation, and both establish."""
        spy = DHSpy()
        self.patch(phase1_common, "dh_group", spy.dh_group)
        p = pair(*policies())
        lost = []
        p.intercept = lambda side, send: lost.append(send.data) or [] if side == RESPONDER and not lost else [send.data]
        p.start()
        self.assertEqual((spy.generated, spy.exchanged), (2, 1))
        p.advance(2.0)
        self.assertEqual(p.sends(INITIATOR)[0], p.sends(INITIATOR)[1])
        answered = p.effects(RESPONDER).index(Count("retransmit_answered"))
        self.assertEqual(p.effects(RESPONDER)[answered + 1], Send(lost[0], I_ADDR, R_ADDR))
        self.assertEqual((spy.generated, spy.exchanged), (2, 2))
        self.assertEqual(set(p.established), {INITIATOR, RESPONDER})

    def test_give_up(self):
        """No answer at all: AM1 resent after 0.5 s and 1 s more (retransmit_tries 2), then "peer did not
        answer" 2 s after that."""
        ini, resp = policies(retransmit_initial=0.5, retransmit_tries=2, exchange_timeout=100.0)
        p = pair(ini, resp)
        times = []
        p.intercept = lambda side, send: times.append(p.clock.seconds()) or []
        p.start()
        for _ in range(3):
            p.advance(0.5)
        self.assertEqual(times, [0.0, 0.5, 1.5])
        p.advance(1.5)
        self.assertNotIn(INITIATOR, p.failed)
        p.advance(0.5)
        self.assertEqual(p.failed[INITIATOR], Failed(None, "peer did not answer"))

    def test_duplicate_am2(self):
        """The responder's AM2 arriving twice at an established initiator gets the same AM3 again."""
        p = pair(*policies()).start()
        am2 = p.sends(RESPONDER)[0].data
        p.deliver(INITIATOR, am2, peer=R_ADDR, local=I_ADDR)
        self.assertEqual(p.effects(INITIATOR)[-2:], [Count("retransmit_answered"), p.sends(INITIATOR)[1]])


class SignatureTests(unittest.TestCase):
    """Aggressive Mode with RSA and ECDSA certificates: CR in AM1 and AM2, CERT and SIG in AM2 and AM3."""

    def test_rsa_and_ecdsa(self):
        """Each signature method establishes with the same keys and the peer's certificate kept."""
        for kind in ("rsa2048", "p256", "p384"):
            ini_creds, resp_creds, trust = signature_pki(kind)
            suite = attrs.evolve(SUITE, auth=AUTH_BY_KIND[kind], group=19)
            ini = Phase1Policy((suite,), local_id=Identification.of("initiator.example.org"), credentials=ini_creds,
                               trust=trust)
            resp = Phase1Policy((suite,), local_id=Identification.of("responder.example.org"),
                                credentials=resp_creds, trust=trust)
            p = pair(ini, resp)
            p.clock.advance(pki.NOW.timestamp())
            p.start()
            self.assertEqual(p.failed, {}, kind)
            self.assertEqual(p.established[INITIATOR].keys, p.established[RESPONDER].keys)
            self.assertIsNotNone(p.established[RESPONDER].peer_certificate)
            am1, am2 = decode_message(p.sends(INITIATOR)[0].data), decode_message(p.sends(RESPONDER)[0].data)
            self.assertIn("CertificateRequest", names(am1.payloads))
            self.assertEqual(names(am2.payloads)[4:7], ["Certificate", "Certificate", "Signature"])
            self.assertEqual(names(decrypt_am3(p, p.sends(INITIATOR)[1].data).payloads)[:3],
                             ["Certificate", "Certificate", "Signature"])


class StrongSwanTests(unittest.TestCase):
    """strongSwan 5.9's Aggressive Mode (tests/data/captures/strongswan-mm-am.pcap; PSK interop-test-psk-123)."""

    PSK = b"interop-test-psk-123"

    def test_our_responder_answers_charons_am1(self):
        """Our responder picks charon's aes256-sha256-modp2048 suite, finds the key by charon's IDii
        (FQDN init.am.test), and answers AM2 with NAT-D and the RFC 3947 vendor ID."""
        resp = Phase1Policy((SUITE,), psk_for_identity={Identification.of("init.am.test"): self.PSK}.get,
                            local_id=Identification.of("resp.am.test"))
        responder = AggressiveMode.responder(resp)
        am1 = CAPTURE["am1"]
        charon = ("127.0.0.1", 5500)
        effects = responder.receive(decode_message(am1), am1, 0.0, seeded_rng(5), peer=charon, local=R_ADDR)
        am2 = decode_message(effects[0].data)
        self.assertEqual(names(am2.payloads),
                         ["SA", "KE", "Nonce", "Identification", "Hash", "NATD", "NATD", "VendorID"])
        self.assertEqual(am2.payloads[-1].vendor_id, NAT_T_VENDOR_ID)
        self.assertEqual(responder.proposal, SUITE)
        self.assertEqual(responder.state, "AM2_SENT")

    def test_hashes_of_charons_exchange(self):
        """HASH_R in charon's AM2 and HASH_I in its AM3 (decrypted with the logged Ka) equal ours over SAi_b cut
        from AM1's octets (phase1_common.sa_body) and the ID payload bodies."""
        am1, am2 = decode_message(CAPTURE["am1"]), decode_message(CAPTURE["am2"])

        def get(m, cls):
            return next(x for x in m.payloads if isinstance(x, cls))

        h = hash_algorithm(OakleyHash.SHA2_256)
        g_xi, g_xr = get(am1, KE).key_exchange_data, get(am2, KE).key_exchange_data
        skeyid = keys.skeyid_preshared(h, self.PSK, get(am1, Nonce).nonce_data, get(am2, Nonce).nonce_data)
        sai_b = phase1_common.sa_body(CAPTURE["am1"])
        args = (h, skeyid, g_xi, g_xr, am2.initiator_cookie, am2.responder_cookie, sai_b)
        self.assertEqual(get(am2, Hash).hash_data, keys.hash_r(*args, get(am2, Identification).encode_body(None)))
        ka = bytes.fromhex("19dc5ad65a650dbf9b7c2a5ade6b0c0bd34cdeab1bed1da2a43eb61123286a6e")  # the .keys file
        chain = IVChain.phase1(cipher_for(AES, 256), ka, OakleyHash.SHA2_256, g_xi, g_xr)
        am3, _ = chain.decrypt(decode_message(CAPTURE["am3"]))
        self.assertEqual(names(am3.payloads), ["Hash", "NATD", "NATD"])
        self.assertEqual(get(am3, Hash).hash_data, keys.hash_i(*args, get(am1, Identification).encode_body(None)))
