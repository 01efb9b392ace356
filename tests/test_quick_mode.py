"""Quick Mode (gdoiserver.doi.ipsec.quick_mode, RFC 2409 section 5.5) between our initiator and our responder.

The machines run under a pair of ISAKMP SA views with fixed keys (:func:`isakmp_pair`), wired by
tests.machine_pair.  Vectors recompute HASH(1), HASH(2), HASH(3) and KEYMAT here with hmac and decrypt with
``cryptography`` directly; the other tests cover every suite, PFS groups, selectors, lifetimes, encapsulation,
retransmission and the refusals (INVALID-ID-INFORMATION, NO-PROPOSAL-CHOSEN, INVALID-KEY-INFORMATION, the Commit
bit), and one Quick Mode runs after a real Main Mode.
"""

import hashlib
import hmac
import struct

import attrs
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.trial import unittest

from gdoiserver.codec.attributes import Attribute, decode_attributes
from gdoiserver.codec.cipher import IVChain, cipher_for
from gdoiserver.codec.constants import (
    DOI,
    EncapsulationMode,
    ExchangeType,
    IDType,
    NotifyType,
    OakleyAuth,
    OakleyEncryption,
    OakleyHash,
    ProtocolID,
)
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payloads import SA, Hash, Identification, Notification, Proposal, Transform
from gdoiserver.crypto.keys import Phase1Keys
from gdoiserver.doi.ipsec.policy import IPsecPolicy, PolicyTable
from gdoiserver.doi.ipsec.proposals import Lifetime, NoProposalChosen, Suite, accept_reply, offers
from gdoiserver.doi.ipsec.quick_mode import QuickMode, QuickModeSettings
from gdoiserver.doi.ipsec.selectors import Selector
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import Count, Failed, Send
from gdoiserver.exchanges.informational import NotifyReceived, Received
from gdoiserver.exchanges.phase1 import INITIATOR, RESPONDER, ISAKMPSA, Phase1Proposal
from tests.machine_pair import CAPTURE, CAPTURE_FILE, MachinePair, ScriptedRng, seeded_rng
from tests.test_main_mode import pair as main_mode_pair
from tests.test_main_mode import psk_policy


CKY_I = bytes.fromhex("0011223344556677")
CKY_R = bytes.fromhex("8899aabbccddeeff")
SKEYID_D = bytes(range(0x10, 0x30))
SKEYID_A = bytes(range(0x30, 0x50))
ENC_KEY = bytes(range(0x50, 0x70))
LAST_BLOCK = bytes(range(0x70, 0x80))  # the last CBC block of Phase 1
I_ADDR, R_ADDR = ("127.0.0.1", 500), ("127.0.0.2", 500)
I_NAT, R_NAT = ("127.0.0.1", 4500), ("127.0.0.2", 4500)
SETTINGS = QuickModeSettings(retransmit_initial=2.0, retransmit_tries=3, exchange_timeout=60.0)
MID = 0x01020304
ESP, AH = ProtocolID.IPSEC_ESP, ProtocolID.IPSEC_AH
QM = ExchangeType.QUICK_MODE


# --- helpers (test_doi_dispatch and test_interop_quick_mode use them too) ----------------------------------------


def isakmp_pair(*, nat_t: bool = False, hash_: int = OakleyHash.SHA2_256,
                addresses=None) -> tuple[ISAKMPSA, ISAKMPSA]:
    """(initiator's, responder's) view of one ISAKMP SA: AES-256, ``hash_``, fixed keys, floated to NAT-T if
    ``nat_t``."""
    proposal = Phase1Proposal(OakleyEncryption.AES_CBC, 256, hash_, OakleyAuth.PRE_SHARED_KEY, 19, 28800)
    keys = Phase1Keys(skeyid=b"\x01" * 32, skeyid_d=SKEYID_D, skeyid_a=SKEYID_A, skeyid_e=ENC_KEY, enc_key=ENC_KEY,
                      iv=b"\x02" * 16)
    chain = IVChain(cipher_for(OakleyEncryption.AES_CBC, 256), ENC_KEY, hash_, LAST_BLOCK)
    i_addr, r_addr = addresses or ((I_NAT, R_NAT) if nat_t else (I_ADDR, R_ADDR))

    def view(role, local, peer):
        ours, theirs = ("initiator.test", "responder.test") if role == INITIATOR else ("responder.test",
                                                                                        "initiator.test")
        return ISAKMPSA(CKY_I, CKY_R, role, DOI.IPSEC, proposal, keys, chain, local, peer, Identification.of(ours),
                        Identification.of(theirs), 0.0, nat_t=nat_t)

    return view(INITIATOR, i_addr, r_addr), view(RESPONDER, r_addr, i_addr)


def policy(*suites: str, name: str = "test", **kw) -> IPsecPolicy:
    """A policy of ``suites`` (default aes256-sha256), an hour's lifetime unless given."""
    kw.setdefault("lifetime", Lifetime(3600, 0))
    return IPsecPolicy(name, tuple(Suite.parse(s) for s in suites or ("aes256-sha256",)), **kw)


def qm_pair(initiator_policy: IPsecPolicy, responder_policies=None, *, nat_t: bool = False, mid: int = MID,
            settings: QuickModeSettings = SETTINGS, **kw) -> MachinePair:
    """A Quick Mode initiator under ``initiator_policy`` and a responder under ``responder_policies`` (default:
    the same policy), wired as a MachinePair, not started."""
    isa_i, isa_r = isakmp_pair(nat_t=nat_t)
    if responder_policies is None:
        responder_policies = [initiator_policy]
    table = responder_policies if isinstance(responder_policies, PolicyTable) else PolicyTable(responder_policies)
    initiator = QuickMode.initiator(isa_i, initiator_policy, settings, mid)
    responder = QuickMode.responder(isa_r, table, settings, mid)
    kw.setdefault("initiator_rng", seeded_rng("qm initiator"))
    kw.setdefault("responder_rng", seeded_rng("qm responder"))
    return MachinePair(initiator, responder, initiator_address=isa_i.local, responder_address=isa_r.local, **kw)


def prf(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def phase2_iv(mid: int) -> bytes:
    """RFC 2409 appendix B: hash(last Phase 1 CBC block | M-ID), cut to the AES block."""
    return hashlib.sha256(LAST_BLOCK + struct.pack("!I", mid)).digest()[:16]


def decrypt(datagram: bytes, iv: bytes) -> bytes:
    """The plaintext body of an encrypted ISAKMP message under ENC_KEY (AES-256-CBC)."""
    d = Cipher(algorithms.AES(ENC_KEY), modes.CBC(iv)).decryptor()
    return d.update(datagram[28:]) + d.finalize()


def chain_end(plaintext: bytes, first: int) -> int:
    """Where the payload chain of ``plaintext`` ends (Next Payload 0), read with struct alone."""
    pos, nxt = 0, first
    while nxt:
        nxt, length = plaintext[pos], struct.unpack_from("!H", plaintext, pos + 2)[0]
        pos += length
    return pos


def keymat(protocol: int, spi: bytes, ni: bytes, nr: bytes, length: int, g_qm_xy: bytes = b"") -> bytes:
    """RFC 2409 section 5.5's KEYMAT with SHA-256's HMAC, written out here."""
    seed = g_qm_xy + bytes([protocol]) + spi + ni + nr
    out, block = b"", b""
    while len(out) < length:
        block = prf(SKEYID_D, block, seed)
        out += block
    return out[:length]


def informational_items(data: bytes, sa: ISAKMPSA) -> list:
    """The items of an Informational datagram sent under ``sa``, checked as the engine would."""
    result = informational.process(sa, decode_message(data))
    assert isinstance(result, Received), result
    return list(result.items)


# --- tests ---------------------------------------------------------------------------------------------------------


class VectorTests(unittest.TestCase):
    """Fixed SPIs and nonces through a scripted rng; every octet and HASH recomputed here."""

    SPI_I, SPI_R = bytes.fromhex("c0ffee01"), bytes.fromhex("5a5a0001")
    NI, NR = bytes(range(0x80, 0xA0)), bytes(range(0xA0, 0xC0))
    # RFC 5903 section 8.1 ECP-256 private keys i and r, and g^ir (the dh module draws 40 octets c, c = i - 1)
    I = int("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433", 16)
    R = int("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53", 16)
    GIR = bytes.fromhex("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")

    def run_pair(self, suite: str, pfs: bool):
        irng = [self.SPI_I, self.NI] + ([(self.I - 1).to_bytes(40, "big")] if pfs else [])
        rrng = [self.SPI_R, self.NR] + ([(self.R - 1).to_bytes(40, "big")] if pfs else [])
        irng, rrng = ScriptedRng(irng), ScriptedRng(rrng)
        p = qm_pair(policy(suite), initiator_rng=irng, responder_rng=rrng).start()
        self.assertEqual((irng.chunks, rrng.chunks), ([], []))
        return p

    def test_qm_without_pfs(self):
        """aes256-sha256, tunnel, no PFS: QM1's plaintext octet by octet, HASH(1) = prf(SKEYID_a, M-ID | SA | Ni |
        IDci | IDcr), HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr | IDci | IDcr), HASH(3) = prf(SKEYID_a, 0 |
        M-ID | Ni_b | Nr_b), the IV chain, and KEYMAT = prf(SKEYID_d, protocol | SPI | Ni_b | Nr_b) for each
        direction with the receiver's SPI, cipher key first."""
        p = self.run_pair("aes256-sha256", pfs=False)
        qm1, qm2, qm3 = [s.data for s in p.effects(kind=Send)]
        mid = struct.pack("!I", MID)
        self.assertEqual(qm1[:28], CKY_I + CKY_R + bytes.fromhex(
            "08"  # Next Payload: HASH
            "10"  # version 1.0
            "20"  # exchange 32: Quick Mode
            "01"  # flags: Encryption
            "01020304"  # M-ID
        ) + struct.pack("!I", len(qm1)))
        body = bytes.fromhex(
            "0a000034" "00000001" "00000001"  # SA: next Nonce, length 52; DOI IPsec, SIT_IDENTITY_ONLY
            "00000028" "01030401" "c0ffee01"  # Proposal: last, 40; #1, PROTO_IPSEC_ESP, SPI size 4, 1 transform; SPI
            "0000001c" "010c0000"  # Transform: last, 28; #1, ESP_AES (12), RESERVED2
            "80010001" "80020e10"  # SA Life Type seconds, SA Life Duration 3600
            "80040001"  # Encapsulation Mode: Tunnel
            "80050005"  # Authentication Algorithm: HMAC-SHA2-256
            "80060100"  # Key Length 256
            "05000024"  # Nonce: next ID, length 36
        ) + self.NI + bytes.fromhex(
            "0500000c" "01000000" "7f000001"  # IDci: next ID, 12; ID_IPV4_ADDR, protocol 0, port 0; 127.0.0.1
            "0000000c" "01000000" "7f000002"  # IDcr: last, 12; 127.0.0.2
        )
        hash1 = prf(SKEYID_A, mid, body)
        plain1 = decrypt(qm1, phase2_iv(MID))
        self.assertEqual(plain1, bytes.fromhex("01000024") + hash1 + body + bytes(12))  # HASH: next SA, 36; padding

        plain2 = decrypt(qm2, qm1[-16:])  # the chain goes on from QM1's last block
        end = chain_end(plain2, 8)
        self.assertEqual(plain2[4:36], prf(SKEYID_A, mid, self.NI, plain2[36:end]))
        reply = decode_message(qm2).with_plaintext(plain2)
        self.assertEqual(reply.payloads[1], SA(1, 1, (Proposal(1, ESP, self.SPI_R, decode_message(qm1).with_plaintext(
            plain1).payloads[1].proposals[0].transforms),)))  # the Transform echoed, with the responder's SPI
        self.assertEqual(reply.payloads[2].nonce_data, self.NR)
        self.assertEqual([type(x).__name__ for x in reply.payloads],
                         ["Hash", "SA", "Nonce", "Identification", "Identification"])

        plain3 = decrypt(qm3, qm2[-16:])
        self.assertEqual(plain3, bytes.fromhex("00000024") + prf(SKEYID_A, b"\0", mid, self.NI, self.NR) + bytes(12))

        i_sa, r_sa = p.established[INITIATOR], p.established[RESPONDER]
        to_r = keymat(ESP, self.SPI_R, self.NI, self.NR, 64)  # what the initiator sends: the responder's SPI
        to_i = keymat(ESP, self.SPI_I, self.NI, self.NR, 64)
        self.assertEqual((i_sa.spi_in, i_sa.spi_out, r_sa.spi_in, r_sa.spi_out),
                         (self.SPI_I, self.SPI_R, self.SPI_R, self.SPI_I))
        self.assertEqual((i_sa.keys_out.encryption, i_sa.keys_out.integrity), (to_r[:32], to_r[32:]))
        self.assertEqual((i_sa.keys_in.encryption, i_sa.keys_in.integrity), (to_i[:32], to_i[32:]))
        self.assertEqual((r_sa.keys_in, r_sa.keys_out), (i_sa.keys_out, i_sa.keys_in))

    def test_qm_with_pfs_ecp256(self):
        """aes128gcm16-ecp256: the Group Description attribute, KE payloads with the RFC 5903 public values, and
        KEYMAT = prf(SKEYID_d, g(qm)^xy | protocol | SPI | Ni_b | Nr_b) with g^ir from RFC 5903 section 8.1; the
        GCM key is 16 octets and 4 of salt (RFC 4106 section 8.1), and there is no integrity key."""
        p = self.run_pair("aes128gcm16-ecp256", pfs=True)
        qm1 = p.effects(INITIATOR, Send)[0].data
        plain1 = decode_message(qm1).with_plaintext(decrypt(qm1, phase2_iv(MID)))
        [transform] = plain1.payloads[1].proposals[0].transforms
        self.assertEqual(transform.transform_id, 20)  # ESP_AES_GCM_16 (RFC 4106 section 8.4)
        self.assertEqual(transform.attributes, (Attribute(1, 1), Attribute(2, 3600), Attribute(3, 19),
                                                Attribute(4, 1), Attribute(6, 128)))  # no Authentication Algorithm
        i_sa, r_sa = p.established[INITIATOR], p.established[RESPONDER]
        to_r = keymat(ESP, self.SPI_R, self.NI, self.NR, 20, self.GIR)
        self.assertEqual((i_sa.keys_out.encryption, i_sa.keys_out.integrity), (to_r, b""))
        self.assertEqual(r_sa.keys_in, i_sa.keys_out)
        self.assertEqual(r_sa.keys_out.encryption, keymat(ESP, self.SPI_I, self.NI, self.NR, 20, self.GIR))


class SuiteTests(unittest.TestCase):
    """Every suite we implement, both ends agreeing on SPIs, algorithms and keys."""

    def assertAgreed(self, p: MachinePair, suite: str) -> tuple:
        i_sa, r_sa = p.established.get(INITIATOR), p.established.get(RESPONDER)
        self.assertIsNotNone(i_sa, p.log)
        self.assertIsNotNone(r_sa, p.log)
        self.assertEqual(i_sa.suite.name(), suite)
        self.assertEqual(r_sa.suite, i_sa.suite)
        self.assertEqual((r_sa.spi_in, r_sa.spi_out), (i_sa.spi_out, i_sa.spi_in))
        self.assertEqual((r_sa.keys_in, r_sa.keys_out), (i_sa.keys_out, i_sa.keys_in))
        self.assertNotEqual(i_sa.keys_in, i_sa.keys_out)
        enc, integ = Suite.parse(suite).keymat_sizes()
        for keys in (i_sa.keys_in, i_sa.keys_out):
            self.assertEqual((len(keys.encryption), len(keys.integrity)), (enc, integ))
        return i_sa, r_sa

    def check(self, suite: str, expected_sizes: tuple):
        self.assertEqual(Suite.parse(suite).keymat_sizes(), expected_sizes)
        self.assertAgreed(qm_pair(policy(suite)).start(), suite)

    def test_esp_aes_cbc_with_every_hmac(self):
        """ESP AES-CBC 128/192/256 with HMAC-SHA-1-96 and HMAC-SHA-256/384/512 (RFC 4868 key sizes 32/48/64)."""
        for bits in (128, 192, 256):
            for integrity, size in (("sha1", 20), ("sha256", 32), ("sha384", 48), ("sha512", 64)):
                self.check(f"aes{bits}-{integrity}", (bits // 8, size))

    def test_esp_aes_gcm(self):
        """ESP AES-GCM with ICVs of 8, 12 and 16 octets: key plus 4 octets of salt, no integrity key."""
        for icv in (8, 12, 16):
            for bits in (128, 256):
                self.check(f"aes{bits}gcm{icv}", (bits // 8 + 4, 0))

    def test_esp_aes_ctr(self):
        """ESP AES-CTR (RFC 3686): key plus a 4-octet nonce, with an HMAC."""
        self.check("aes128ctr-sha256", (20, 32))
        self.check("aes256ctr-sha1", (36, 20))

    def test_ah(self):
        """AH with HMAC-SHA-1 and SHA-2: transform IDs 3, 5, 6, 7 with the matching Authentication Algorithm."""
        for integrity, tid in (("sha1", 3), ("sha256", 5), ("sha384", 6), ("sha512", 7)):
            p = qm_pair(policy(f"ah-{integrity}")).start()
            i_sa, _ = self.assertAgreed(p, f"ah-{integrity}")
            self.assertEqual((i_sa.protocol, i_sa.suite.transform_id), (AH, tid))

    def test_pfs_groups(self):
        """PFS with MODP 2048 and ECP 256/384: KE in QM1 and QM2, both ends with the same keys."""
        for group in ("modp2048", "ecp256", "ecp384"):
            p = qm_pair(policy(f"aes256-sha256-{group}")).start()
            self.assertAgreed(p, f"aes256-sha256-{group}")

    def test_responder_preference(self):
        """The initiator offers aes128gcm16 then aes256-sha256 as two proposals; the responder, preferring
        aes256-sha256, picks it (its own order, as in Phase 1) and answers with proposal number 2."""
        p = qm_pair(policy("aes128gcm16", "aes256-sha256"), [policy("aes256-sha256", "aes128gcm16")]).start()
        self.assertAgreed(p, "aes256-sha256")
        qm2 = p.effects(RESPONDER, Send)[0].data
        reply = decode_message(qm2).with_plaintext(decrypt(qm2, p.effects(INITIATOR, Send)[0].data[-16:]))
        self.assertEqual(reply.payloads[1].proposals[0].proposal_number, 2)

    def test_initiator_offers_one_pfs_group(self):
        """An initiator offers only the suites of its first suite's PFS group (one KE serves all): with
        "aes256-sha256-ecp256, aes128-sha1-modp2048, aes128-sha1-ecp256" QM1 carries proposals 1 and 2."""
        p = qm_pair(policy("aes256-sha256-ecp256", "aes128-sha1-modp2048", "aes128-sha1-ecp256"))
        p.start(run=False)
        qm1 = p.effects(INITIATOR, Send)[0].data
        offered = decode_message(qm1).with_plaintext(decrypt(qm1, phase2_iv(MID))).payloads[1]
        self.assertEqual([o.suite.name() for o in offers(offered)], ["aes256-sha256-ecp256", "aes128-sha1-ecp256"])

    def test_after_real_main_mode(self):
        """Main Mode (PSK, AES-128, SHA-256, ECP-256) then Quick Mode under the SA it made: both ends agree."""
        mm = main_mode_pair(psk_policy()).start()
        isa_i, isa_r = mm.established[INITIATOR], mm.established[RESPONDER]
        pol = policy("aes256-sha256-modp2048")
        q = MachinePair(QuickMode.initiator(isa_i, pol, SETTINGS, 7), QuickMode.responder(
            isa_r, PolicyTable([pol]), SETTINGS, 7)).start()
        self.assertAgreed(q, "aes256-sha256-modp2048")


class SelectorAndModeTests(unittest.TestCase):
    """IDci/IDcr, encapsulation modes and lifetimes."""

    def ids(self, p: MachinePair) -> list:
        qm1 = p.effects(INITIATOR, Send)[0].data
        return [x for x in decode_message(qm1).with_plaintext(decrypt(qm1, phase2_iv(MID))).payloads
                if isinstance(x, Identification)]

    def test_subnets_ranges_protocol_port(self):
        """A subnet with TCP port 443 against a range: IDci is ID_IPV4_ADDR_SUBNET with protocol 6 port 443,
        IDcr ID_IPV4_ADDR_RANGE; a responder policy of wider selectors accepts them as they came."""
        ours = policy(local=(Selector.parse("10.1.0.0/16[tcp/443]"),), remote=(Selector.parse("10.2.0.5-10.2.0.9"),))
        theirs = policy(local=(Selector.parse("10.2.0.0/24"),), remote=(Selector.parse("10.0.0.0/8[tcp]"),))
        p = qm_pair(ours, [theirs]).start()
        self.assertEqual(self.ids(p), [
            Identification(IDType.IPV4_ADDR_SUBNET, 6, 443, bytes([10, 1, 0, 0, 255, 255, 0, 0])),
            Identification(IDType.IPV4_ADDR_RANGE, 0, 0, bytes([10, 2, 0, 5, 10, 2, 0, 9])),
        ])
        r_sa = p.established[RESPONDER]
        self.assertEqual((str(r_sa.remote_selector), str(r_sa.local_selector)), ("10.1.0.0/16[tcp/443]",
                                                                                 "10.2.0.5-10.2.0.9"))

    def test_ipv6_selectors(self):
        """IPv6 subnets travel as ID_IPV6_ADDR_SUBNET and are matched as IPv6."""
        ours = policy(local=(Selector.parse("2001:db8:1::/48"),), remote=(Selector.parse("2001:db8:2::1"),))
        theirs = policy(local=(Selector.parse("2001:db8:2::/64"),), remote=(Selector.parse("2001:db8::/32"),))
        p = qm_pair(ours, [theirs]).start()
        self.assertEqual([i.id_type for i in self.ids(p)], [IDType.IPV6_ADDR_SUBNET, IDType.IPV6_ADDR])
        self.assertIn(RESPONDER, p.established)

    def test_policy_picks_by_selectors(self):
        """Of two responder policies for the peer, the one whose selectors hold the IDs decides the suites."""
        ours = policy("aes128gcm16", local=(Selector.parse("10.9.0.0/24"),))
        first = policy("aes256-sha256", name="other", remote=(Selector.parse("10.8.0.0/24"),))
        second = policy("aes128gcm16", name="mine", remote=(Selector.parse("10.9.0.0/16"),))
        p = qm_pair(ours, [first, second]).start()
        self.assertEqual(p.established[RESPONDER].policy, "mine")

    def test_udp_encapsulated_tunnel(self):
        """Under an ISAKMP SA floated to NAT-T the initiator proposes UDP-Encapsulated-Tunnel (3, RFC 3947 5.1),
        the responder accepts it, and the SAs use the NAT-T ports; no NAT-OA in tunnel mode."""
        p = qm_pair(policy(), nat_t=True).start()
        i_sa, r_sa = p.established[INITIATOR], p.established[RESPONDER]
        self.assertEqual((i_sa.encapsulation, r_sa.encapsulation), (3, 3))
        self.assertEqual((i_sa.mode, i_sa.udp_encapsulated), ("tunnel", True))
        self.assertEqual((r_sa.local, r_sa.peer), (R_NAT, I_NAT))
        self.assertTrue(all(s.nat_t for s in p.effects(kind=Send)))
        self.assertIsNone(r_sa.nat_oa)

    def test_udp_encapsulated_transport_with_nat_oa(self):
        """Transport mode under NAT-T: mode 4 and NAT-OAi/NAT-OAr (RFC 3947 section 5.2) both ways."""
        p = qm_pair(policy(mode="transport"), nat_t=True).start()
        i_sa, r_sa = p.established[INITIATOR], p.established[RESPONDER]
        self.assertEqual((i_sa.encapsulation, r_sa.encapsulation), (4, 4))
        self.assertEqual((i_sa.nat_oa, r_sa.nat_oa), (("127.0.0.1", "127.0.0.2"), ("127.0.0.1", "127.0.0.2")))

    def test_transport_mode(self):
        """Transport mode without NAT-T: Encapsulation Mode 2 on both ends."""
        p = qm_pair(policy(mode="transport")).start()
        self.assertEqual(p.established[RESPONDER].mode, "transport")
        self.assertEqual(p.established[INITIATOR].encapsulation, EncapsulationMode.TRANSPORT)

    def test_mode_mismatch(self):
        """A tunnel-mode proposal to a transport-only responder: NO-PROPOSAL-CHOSEN."""
        p = qm_pair(policy(), [policy(mode="transport")]).start()
        self.assertEqual(p.failed[RESPONDER].notify, NotifyType.NO_PROPOSAL_CHOSEN)

    def test_responder_lifetime(self):
        """Offered 3600 s and 10000 KB, kept 1800 s and 5000 KB: the responder sends RESPONDER-LIFETIME (RFC 2407
        4.6.3.1) with its SPI and both limits, and both ends keep the shorter values."""
        p = qm_pair(policy(lifetime=Lifetime(3600, 10000)), [policy(lifetime=Lifetime(1800, 5000))]).start()
        i_sa, r_sa = p.established[INITIATOR], p.established[RESPONDER]
        self.assertEqual((i_sa.lifetime, r_sa.lifetime), (Lifetime(1800, 5000), Lifetime(1800, 5000)))
        qm2 = p.effects(RESPONDER, Send)[0].data
        plain = decode_message(qm2).with_plaintext(decrypt(qm2, p.effects(INITIATOR, Send)[0].data[-16:]))
        [n] = [x for x in plain.payloads if isinstance(x, Notification)]
        self.assertEqual((n.notify_type, n.protocol_id, n.spi), (NotifyType.RESPONDER_LIFETIME, ESP, r_sa.spi_in))
        self.assertEqual(decode_attributes(n.data), (Attribute(1, 1), Attribute(2, 1800), Attribute(1, 2),
                                                     Attribute(2, 5000)))

    def test_longer_responder_lifetime(self):
        """A responder that would keep SAs longer than offered takes the offer's lifetime and sends no Notify."""
        p = qm_pair(policy(lifetime=Lifetime(600, 0)), [policy(lifetime=Lifetime(3600, 0))]).start()
        self.assertEqual(p.established[RESPONDER].lifetime, Lifetime(600, 0))
        qm2 = p.effects(RESPONDER, Send)[0].data
        plain = decode_message(qm2).with_plaintext(decrypt(qm2, p.effects(INITIATOR, Send)[0].data[-16:]))
        self.assertFalse(any(isinstance(x, Notification) for x in plain.payloads))


class RefusalTests(unittest.TestCase):
    """What the responder refuses, and how it says so."""

    def refusal(self, p: MachinePair, notify: int) -> Notification:
        """The responder failed with ``notify`` and told it in a protected Informational naming our SPI."""
        self.assertEqual(p.failed[RESPONDER].notify, notify)
        self.assertNotIn(RESPONDER, p.established)
        sends = p.effects(RESPONDER, Send)
        self.assertEqual(len(sends), 1)
        [item] = informational_items(sends[0].data, isakmp_pair()[0])
        self.assertEqual(item.notify_type, notify)
        return item

    def test_selectors_outside_policy(self):
        """IDs no policy of the peer holds: INVALID-ID-INFORMATION, naming the initiator's SPI (protocol ESP)."""
        p = qm_pair(policy(local=(Selector.parse("10.0.0.0/24"),)), [policy(remote=(Selector.parse("10.1.0.0/24"),))])
        p.start()
        item = self.refusal(p, NotifyType.INVALID_ID_INFORMATION)
        self.assertEqual((item.protocol_id, item.spi), (ESP, p.initiator.spi))

    def test_port_outside_policy(self):
        """A policy for TCP port 80 refuses IDs for any protocol: the selector would carry more than allowed."""
        theirs = policy(remote=(Selector.parse("127.0.0.1[tcp/80]"),))
        self.refusal(qm_pair(policy(), [theirs]).start(), NotifyType.INVALID_ID_INFORMATION)

    def test_no_policy_for_peer(self):
        """A peer that no policy names gets INVALID-ID-INFORMATION too."""
        self.refusal(qm_pair(policy(), [policy(peer="192.0.2.1")]).start(), NotifyType.INVALID_ID_INFORMATION)

    def test_no_proposal_chosen(self):
        """Suites the responder does not allow: NO-PROPOSAL-CHOSEN; the same QM1 again (the Notify was lost) gets
        the same Informational again, computed once."""
        p = qm_pair(policy("aes128-sha1"), [policy("aes256-sha256")]).start()
        self.refusal(p, NotifyType.NO_PROPOSAL_CHOSEN)
        qm1, notify = p.effects(INITIATOR, Send)[0].data, p.effects(RESPONDER, Send)[0]
        effects = p.responder.receive(decode_message(qm1), qm1, 1.0, seeded_rng("x"), peer=I_ADDR, local=R_ADDR)
        self.assertEqual(effects, [Count("retransmit_answered"), notify])

    def test_pfs_required(self):
        """A responder that requires PFS refuses a Quick Mode without KE (NO-PROPOSAL-CHOSEN)."""
        self.refusal(qm_pair(policy("aes256-sha256"), [policy("aes256-sha256-modp2048")]).start(),
                     NotifyType.NO_PROPOSAL_CHOSEN)

    def test_pfs_group_mismatch(self):
        """KE of ECP-256 against a responder of MODP-2048 only: NO-PROPOSAL-CHOSEN."""
        self.refusal(qm_pair(policy("aes256-sha256-ecp256"), [policy("aes256-sha256-modp2048")]).start(),
                     NotifyType.NO_PROPOSAL_CHOSEN)

    def test_weak_pfs_group(self):
        """MODP 1024 for PFS is refused unless allowed (Logjam): the initiator does not even start."""
        p = qm_pair(policy("aes256-sha256-modp1024"))
        p.start()
        self.assertIsNotNone(p.failed[INITIATOR])
        self.assertEqual(p.effects(INITIATOR, Send), [])

    def test_bad_ke_value(self):
        """A KE that is no point on the curve: INVALID-KEY-INFORMATION."""
        pol = policy("aes256-sha256-ecp256")
        isa_i, isa_r = isakmp_pair()
        qm1 = QuickModeBuilder(isa_i).qm1(pol, ke=bytes(64))
        responder = QuickMode.responder(isa_r, PolicyTable([pol]), SETTINGS, MID)
        effects = responder.receive(decode_message(qm1), qm1, 0.0, seeded_rng("r"), peer=I_ADDR, local=R_ADDR)
        self.assertEqual([e.notify for e in effects if isinstance(e, Failed)], [NotifyType.INVALID_KEY_INFORMATION])
        [item] = informational_items(next(e for e in effects if isinstance(e, Send)).data, isa_i)
        self.assertEqual(item.notify_type, NotifyType.INVALID_KEY_INFORMATION)

    def test_commit_bit(self):
        """QM1 with the Commit bit (RFC 2408 section 3.1): the responder refuses with INVALID-FLAGS and keeps no
        state; the HASH does not cover the header, so the flag is set on the wire here."""

        def commit(side, send):
            data = bytearray(send.data)
            if side == INITIATOR:
                data[19] |= 0x02
            return [bytes(data)]

        p = qm_pair(policy(), intercept=commit).start()
        self.refusal(p, NotifyType.INVALID_FLAGS)

    def test_several_sa_payloads(self):
        """QM1 asking for two SAs at once (RFC 2409 section 9) gets NO-PROPOSAL-CHOSEN: one SA per Quick Mode."""
        pol = policy()
        isa_i, isa_r = isakmp_pair()
        qm1 = QuickModeBuilder(isa_i).qm1(pol, extra_sa=True)
        responder = QuickMode.responder(isa_r, PolicyTable([pol]), SETTINGS, MID)
        effects = responder.receive(decode_message(qm1), qm1, 0.0, seeded_rng("r"), peer=I_ADDR, local=R_ADDR)
        self.assertEqual([e.notify for e in effects if isinstance(e, Failed)], [NotifyType.NO_PROPOSAL_CHOSEN])

    def test_bad_hash_is_silent(self):
        """A QM1 whose HASH(1) fails (a flipped octet of the HASH itself) is dropped without an answer."""

        def corrupt(side, send):
            if side != INITIATOR:
                return [send.data]
            isa_i, _ = isakmp_pair()
            message = decode_message(send.data)
            chain = isa_i.last_iv.for_message_id(MID)
            plain, _ = chain.decrypt(message)
            bad = attrs.evolve(plain, payloads=(Hash(bytes(32)), *plain.payloads[1:]))
            return [chain.encrypt(bad)[0]]

        p = qm_pair(policy(), intercept=corrupt).start()
        self.assertEqual(p.effects(RESPONDER, Send), [])
        self.assertIn(Count("qm_bad_hash"), p.effects(RESPONDER))
        self.assertIsNone(p.failed[RESPONDER].notify)

    def test_wrong_key_is_silent(self):
        """A QM1 under another ISAKMP key does not decrypt to a HASH: dropped, counted, unanswered."""
        isa_i, isa_r = isakmp_pair()
        other = attrs.evolve(isa_i, last_iv=attrs.evolve(isa_i.last_iv, key=bytes(32)))
        qm1 = QuickModeBuilder(other).qm1(policy())
        responder = QuickMode.responder(isa_r, PolicyTable([policy()]), SETTINGS, MID)
        effects = responder.receive(decode_message(qm1), qm1, 0.0, seeded_rng("r"), peer=I_ADDR, local=R_ADDR)
        self.assertFalse(any(isinstance(e, Send) for e in effects))
        self.assertTrue({Count("qm_undecryptable"), Count("qm_bad_hash")} & set(effects))

    def test_responder_changes_ids(self):
        """A QM2 (with a good HASH(2)) whose IDci/IDcr differ from those we sent: the initiator refuses it with
        INVALID-ID-INFORMATION (RFC 2409 section 5.5: the responder returns the IDs it was given)."""
        isa_i, _ = isakmp_pair()
        initiator = QuickMode.initiator(isa_i, policy(), SETTINGS, MID)
        qm1 = initiator.start(0.0, seeded_rng("i"))[1].data
        swapped = (Selector.parse("127.0.0.2").identification(), Selector.parse("127.0.0.1").identification())
        qm2 = QuickModeBuilder(isa_i).qm2(qm1, ids=swapped)
        effects = initiator.receive(decode_message(qm2), qm2, 0.0, seeded_rng("i"), peer=R_ADDR, local=I_ADDR)
        self.assertEqual([e.notify for e in effects if isinstance(e, Failed)], [NotifyType.INVALID_ID_INFORMATION])
        [item] = informational_items(next(e for e in effects if isinstance(e, Send)).data, isakmp_pair()[1])
        self.assertEqual((item.notify_type, item.spi), (NotifyType.INVALID_ID_INFORMATION, initiator.spi))
        good = QuickModeBuilder(isa_i).qm2(qm1, ids=initiator.ids)  # the same QM2 with our IDs is accepted
        again = QuickMode.initiator(isa_i, policy(), SETTINGS, MID)
        again.start(0.0, seeded_rng("i"))
        again.receive(decode_message(good), good, 0.0, seeded_rng("i"), peer=R_ADDR, local=I_ADDR)
        self.assertEqual(again.state, "ESTABLISHED")

    def test_initiator_hears_refusal(self):
        """The initiator's ``notified`` ends its exchange when the peer's NO-PROPOSAL-CHOSEN names its SPI, and
        ignores one that names another SPI."""
        p = qm_pair(policy("aes128-sha1"), [policy("aes256-sha256")])
        p.start()
        initiator = p.initiator
        other = NotifyReceived(NotifyType.NO_PROPOSAL_CHOSEN, ESP, b"\0\0\1\0", b"")
        self.assertEqual(initiator.notified(other, 1.0, seeded_rng("x")), [])
        [item] = informational_items(p.effects(RESPONDER, Send)[0].data, isakmp_pair()[0])
        effects = initiator.notified(item, 1.0, seeded_rng("x"))
        self.assertEqual([e.notify for e in effects if isinstance(e, Failed)], [NotifyType.NO_PROPOSAL_CHOSEN])
        self.assertTrue(initiator.done)


class RetransmissionTests(unittest.TestCase):
    """Lost messages, repeated messages and a silent peer."""

    def test_lost_qm2(self):
        """QM2 lost once: the initiator resends the same QM1 octets after 2 s; the responder answers from its cache
        with the same QM2 (nothing drawn from its rng again)."""
        dropped = []

        def drop_first_qm2(side, send):
            if side == RESPONDER and not dropped:
                dropped.append(send.data)
                return []
            return [send.data]

        p = qm_pair(policy(), intercept=drop_first_qm2)
        p.start()
        self.assertEqual(p.established, {})
        calls = len(p.responder_rng.calls)
        p.advance(2.0)
        self.assertEqual(len(p.established), 2)
        qm1s = [s.data for s in p.effects(INITIATOR, Send)][:2]
        self.assertEqual(qm1s[0], qm1s[1])
        self.assertIn(Count("retransmit_answered"), p.effects(RESPONDER))
        self.assertEqual(p.effects(RESPONDER, Send)[1].data, dropped[0])
        self.assertEqual(len(p.responder_rng.calls), calls)

    def test_lost_qm3(self):
        """QM3 lost once: the responder resends QM2 and the finished initiator answers with the same QM3."""
        dropped = []

        def drop_first_qm3(side, send):
            if side == INITIATOR and len(p.effects(INITIATOR, Send)) == 2 and not dropped:
                dropped.append(send.data)
                return []
            return [send.data]

        p = qm_pair(policy(), intercept=drop_first_qm3)
        p.start()
        self.assertEqual(list(p.established), [INITIATOR])
        p.advance(2.0)
        self.assertEqual(len(p.established), 2)
        self.assertEqual(p.effects(INITIATOR, Send)[-1].data, dropped[0])

    def test_silent_peer(self):
        """Nobody answers: QM1 goes out 1 + 3 times (2, 4, 8 s apart), then the initiator fails."""
        p = qm_pair(policy(), intercept=lambda side, send: [])
        p.start()
        p.advance(2.0)
        p.advance(4.0)
        p.advance(8.0)
        self.assertNotIn(INITIATOR, p.failed)
        p.advance(16.0)
        self.assertEqual(p.failed[INITIATOR].reason, "peer did not answer")
        self.assertEqual(len(p.effects(INITIATOR, Send)), 4)
        self.assertEqual(p.pending_timers(INITIATOR), set())

    def test_exchange_timeout(self):
        """A responder that gets QM1 and never QM3 gives up at the exchange timeout, having resent QM2."""
        p = qm_pair(policy(), intercept=lambda side, send: [send.data] if side == INITIATOR and
                    len(p.effects(INITIATOR, Send)) == 1 else [])
        p.start()
        for _ in range(6):
            p.advance(10.0)
        self.assertIn(RESPONDER, p.failed)
        self.assertNotIn(RESPONDER, p.established)

    def test_repeated_qm3_is_ignored(self):
        """A repeated QM3 after the exchange is over changes nothing."""
        p = qm_pair(policy()).start()
        qm3 = p.effects(INITIATOR, Send)[-1].data
        effects = p.responder.receive(decode_message(qm3), qm3, 0.0, seeded_rng("x"), peer=I_ADDR, local=R_ADDR)
        self.assertEqual(effects, [Count("qm_after_done")])


class ReadingTests(unittest.TestCase):
    """Reading peers' SA payloads."""

    def test_strongswan_qm1_offer(self):
        """strongSwan's own QM1 (tests/data/captures, Main Mode PSK AES-128 then Quick Mode) decrypted with its
        logged Phase 1 key: one ESP proposal aes128-sha256-ecp256 in UDP-Encapsulated-Tunnel mode (3), no life
        attributes (so RFC 2407's default of 28800 s), the 4-octet SPI we would answer with keys for."""
        mm6, qm1 = decode_message(CAPTURE["mm6"]), decode_message(CAPTURE["qm1"])
        keys = {}
        for line in CAPTURE_FILE.with_suffix(".keys").read_text().splitlines():
            if "," in line and not line.startswith("#"):
                cookie, key = line.strip().split(",")
                keys[bytes.fromhex(cookie)] = bytes.fromhex(key)
        chain = IVChain(cipher_for(OakleyEncryption.AES_CBC, 128), keys[mm6.initiator_cookie], OakleyHash.SHA2_256,
                        mm6.ciphertext[-16:]).for_message_id(qm1.message_id)
        plain, _ = chain.decrypt(qm1)
        [offer] = offers(next(p for p in plain.payloads if isinstance(p, SA)))
        self.assertEqual(offer.suite.name(), "aes128-sha256-ecp256")
        self.assertEqual((offer.encapsulation, offer.lifetime), (3, Lifetime(28800, 0)))
        self.assertEqual(len(offer.proposal.spi), 4)

    def test_unreadable_transforms_are_passed_over(self):
        """Transforms with an unknown attribute, a repeated one, AES without a key length, or a bundle (two
        Proposals under one number) are not offers; the readable ones still are."""
        spi = b"\0\0\1\0"
        good = Transform(1, 12, (Attribute(4, 1), Attribute(5, 5), Attribute(6, 128)))
        unknown = Transform(2, 12, (Attribute(4, 1), Attribute(5, 5), Attribute(6, 128), Attribute(11, 1)))
        repeated = Transform(3, 12, (Attribute(4, 1), Attribute(5, 5), Attribute(5, 2), Attribute(6, 128)))
        no_length = Transform(4, 12, (Attribute(4, 1), Attribute(5, 5)))
        sa = SA(1, 1, (Proposal(1, ESP, spi, (unknown, repeated, no_length, good)),
                       Proposal(2, AH, spi, (Transform(1, 5, (Attribute(5, 5),)),)),
                       Proposal(2, ESP, spi, (good,))))
        self.assertEqual([(o.proposal.proposal_number, o.transform) for o in offers(sa)], [(1, good)])

    def test_accept_reply_checks_the_offer(self):
        """The responder's SA must name a proposal number we offered, with one of its transforms."""
        offered = SA(1, 1, (Proposal(1, ESP, b"\0\0\1\0", (Transform(1, 12, (Attribute(4, 1), Attribute(5, 5),
                                                                               Attribute(6, 256))),)),))
        ok = SA(1, 1, (Proposal(1, ESP, b"\0\0\2\0", offered.proposals[0].transforms),))
        self.assertEqual(accept_reply(ok, offered)[3], b"\0\0\2\0")
        for bad in (SA(1, 1, (Proposal(2, ESP, b"\0\0\2\0", offered.proposals[0].transforms),)),
                    SA(1, 1, (Proposal(1, ESP, b"\0\0\2\0", (Transform(1, 12, (Attribute(4, 1), Attribute(5, 2),
                                                                              Attribute(6, 256))),)),))):
            self.assertRaises(NoProposalChosen, accept_reply, bad, offered)


@attrs.define
class QuickModeBuilder:
    """Builds QM1 datagrams by hand for cases our initiator never sends."""

    sa: ISAKMPSA

    def qm1(self, pol: IPsecPolicy, *, ke: bytes | None = None, extra_sa: bool = False) -> bytes:
        from gdoiserver.codec.payload import context_for, encode_chain
        from gdoiserver.codec.payloads import KE, Nonce
        from gdoiserver.doi.ipsec import proposals as props

        suite = pol.suites[0]
        sa = props.sa_payload((suite,), {suite.protocol: b"\0\0\x10\0"}, pol.lifetime, 1)
        payloads = [sa, *([sa] if extra_sa else []), Nonce(bytes(32))]
        if ke is not None:
            payloads.append(KE(ke))
        payloads += [Selector.host(self.sa.local[0]).identification(), Selector.host(self.sa.peer[0]).identification()]
        ctx = context_for(DOI.IPSEC, QM)
        body = encode_chain(tuple(payloads), ctx)
        digest = prf(SKEYID_A, struct.pack("!I", MID), body)
        message = Message(self.sa.initiator_cookie, self.sa.responder_cookie, QM, 0, MID, (Hash(digest), *payloads))
        return self.sa.last_iv.for_message_id(MID).encrypt(message, ctx)[0]

    def qm2(self, qm1: bytes, *, ids) -> bytes:
        """The responder's answer to our own ``qm1`` (SA echoed with SPI 0x00002000, a zero nonce, ``ids``),
        with a correct HASH(2), encrypted on the chain after QM1."""
        from gdoiserver.codec.payload import context_for, encode_chain
        from gdoiserver.codec.payloads import Nonce

        chain = self.sa.last_iv.for_message_id(MID)
        plain, chain = chain.decrypt(decode_message(qm1))
        offer, ni = plain.payloads[1], plain.payloads[2].nonce_data
        reply = SA(offer.doi, offer.situation, (attrs.evolve(offer.proposals[0], spi=b"\0\0\x20\0"),))
        payloads = (reply, Nonce(bytes(32)), *ids)
        ctx = context_for(DOI.IPSEC, QM)
        digest = prf(SKEYID_A, struct.pack("!I", MID), ni, encode_chain(payloads, ctx))
        message = Message(self.sa.initiator_cookie, self.sa.responder_cookie, QM, 0, MID, (Hash(digest), *payloads))
        return chain.encrypt(message, ctx)[0]


class SelectorTests(unittest.TestCase):
    """Traffic selectors: text, ID payloads, containment."""

    def test_text_round_trip(self):
        """The text forms read back to themselves; a /32 prints as its address, a CIDR-shaped range as a subnet."""
        for text in ("10.0.0.0/24", "192.0.2.7", "10.0.0.1-10.0.0.9", "2001:db8::/32", "10.0.0.0/8[tcp/443]",
                     "::1[udp]", "10.0.0.0/24[47]"):
            self.assertEqual(str(Selector.parse(text)), text.replace("[47]", "[gre]"))
        self.assertEqual(str(Selector.parse("10.0.0.0-10.0.0.255")), "10.0.0.0/24")
        self.assertEqual(str(Selector.parse("10.0.0.5/32")), "10.0.0.5")

    def test_bad_text(self):
        """Host bits in a network, a reversed range, mixed families, a port without TCP/UDP/SCTP, an unknown
        protocol: ValueError."""
        for text in ("10.0.0.1/24", "10.0.0.9-10.0.0.1", "10.0.0.1-::1", "10.0.0.0/8[icmp/80]", "10.0.0.0/8[xyz]",
                     "10.0.0.0/8[tcp/0]", "10.0.0.0/8[tcp/70000]", "host.example"):
            self.assertRaises(ValueError, Selector.parse, text)

    def test_identification(self):
        """An address is ID_IPV4_ADDR, a CIDR range ID_IPV4_ADDR_SUBNET, any other range ID_IPV4_ADDR_RANGE,
        protocol and port carried (RFC 2407 sections 4.6.2.2 to 4.6.2.12); and back."""
        cases = {
            "10.0.0.1": Identification(IDType.IPV4_ADDR, 0, 0, bytes([10, 0, 0, 1])),
            "10.0.0.0/24[udp/53]": Identification(IDType.IPV4_ADDR_SUBNET, 17, 53,
                                                  bytes([10, 0, 0, 0, 255, 255, 255, 0])),
            "10.0.0.1-10.0.0.9": Identification(IDType.IPV4_ADDR_RANGE, 0, 0, bytes([10, 0, 0, 1, 10, 0, 0, 9])),
            "2001:db8::/32": Identification(IDType.IPV6_ADDR_SUBNET, 0, 0, bytes.fromhex("20010db8" + "00" * 12 +
                                                                                          "ffffffff" + "00" * 12)),
        }
        for text, ident in cases.items():
            self.assertEqual(Selector.parse(text).identification(), ident)
            self.assertEqual(Selector.from_identification(ident), Selector.parse(text))

    def test_identification_refused(self):
        """An FQDN, a non-contiguous mask or a reversed range in IDci/IDcr is INVALID-ID-INFORMATION."""
        from gdoiserver.codec.errors import DecodeError

        for ident in (Identification.of("host.example"),
                      Identification(IDType.IPV4_ADDR_SUBNET, 0, 0, bytes([10, 0, 0, 0, 255, 0, 255, 0])),
                      Identification(IDType.IPV4_ADDR_RANGE, 0, 0, bytes([10, 0, 0, 9, 10, 0, 0, 1]))):
            with self.assertRaises(DecodeError) as caught:
                Selector.from_identification(ident)
            self.assertEqual(caught.exception.notify, NotifyType.INVALID_ID_INFORMATION)

    def test_contains(self):
        """Containment by addresses, protocol (0: any) and port (0: any), never across IP versions."""
        wide = Selector.parse("10.0.0.0/8")
        tcp = Selector.parse("10.0.0.0/8[tcp]")
        https = Selector.parse("10.0.0.0/8[tcp/443]")
        self.assertTrue(wide.contains(Selector.parse("10.1.2.0/24[tcp/80]")))
        self.assertTrue(tcp.contains(https))
        self.assertFalse(https.contains(tcp))
        self.assertFalse(https.contains(Selector.parse("10.1.0.0/16[tcp/80]")))
        self.assertFalse(tcp.contains(Selector.parse("10.1.0.0/16[udp]")))
        self.assertFalse(wide.contains(Selector.parse("11.0.0.0/24")))
        self.assertFalse(wide.contains(Selector.parse("10.0.0.0/7")))
        self.assertFalse(Selector.parse("::/0").contains(Selector.parse("10.0.0.1")))

    def test_port_refused_by_responder(self):
        """A peer asking for TCP port 443 where the policy allows TCP port 80 gets INVALID-ID-INFORMATION."""
        ours = policy(local=(Selector.parse("127.0.0.1[tcp/443]"),))
        theirs = policy(remote=(Selector.parse("127.0.0.1[tcp/80]"),))
        p = qm_pair(ours, [theirs]).start()
        self.assertEqual(p.failed[RESPONDER].notify, NotifyType.INVALID_ID_INFORMATION)


class PolicyTests(unittest.TestCase):
    """Suite names and the choice of a peer's policies."""

    def test_suite_names(self):
        """strongSwan's esp_proposals names read and print back; wrong ones are refused."""
        for name in ("aes128-sha1", "aes256-sha512-modp4096", "aes192ctr-sha384-ecp521", "aes256gcm12",
                     "aes128gcm8-ecp384", "ah-sha256", "ah-sha1-modp3072"):
            self.assertEqual(Suite.parse(name).name(), name)
        self.assertEqual(Suite.parse("esp-aes256-sha256").name(), "aes256-sha256")
        for bad in ("aes256", "aes128gcm16-sha256", "des-sha1", "aes256-md5", "aes512-sha1", "ah-aes128-sha1",
                    "aes256-sha256-modp768", "aes256-sha256-ecp256-x"):
            self.assertRaises(ValueError, Suite.parse, bad)

    def test_for_peer_order(self):
        """A peer's policies come most specific first: identity and address, address, network, "any"; a policy
        naming another peer or identity is left out."""
        isa, _ = isakmp_pair()
        isa = attrs.evolve(isa, peer=("192.0.2.7", 500), peer_id=Identification.of("gw.example"))
        table = PolicyTable([
            policy(name="any"), policy(name="net", peer="192.0.2.0/24"), policy(name="addr", peer="192.0.2.7"),
            policy(name="other", peer="192.0.2.8"), policy(name="id", peer="192.0.2.7", peer_id="GW.example"),
            policy(name="other-id", peer_id="other.example"), policy(name="wide-net", peer="192.0.0.0/16"),
        ])
        self.assertEqual([p.name for p in table.for_peer(isa)], ["id", "addr", "net", "wide-net", "any"])

    def test_lifetime_within(self):
        """The shorter of two lifetimes in each unit; 0 kilobytes is no limit."""
        self.assertEqual(Lifetime(3600, 0).within(Lifetime(1800, 500)), Lifetime(1800, 500))
        self.assertEqual(Lifetime(600, 100).within(Lifetime(1800, 0)), Lifetime(600, 100))
        self.assertEqual(Lifetime(600, 100).within(Lifetime(600, 50)), Lifetime(600, 50))


class ConfigTests(unittest.TestCase):
    """The [ipsec] section (gdoiserver.doi.ipsec.config) and the plugin it makes."""

    def test_policies(self):
        """A policy's keys become an IPsecPolicy; absent keys take their defaults, and the name its index."""
        from gdoiserver.config import parse_config
        from gdoiserver.doi.ipsec.config import DEFAULT_PROPOSALS, ipsec_config
        from gdoiserver.doi.ipsec.plugin import from_config

        config = parse_config({"ipsec": {"policies": [
            {"peer": "192.0.2.0/24", "local": ["10.0.0.0/16"], "remote": ["10.1.0.0/16[tcp/443]"],
             "proposals": ["aes128gcm16-ecp256", "ah-sha256"], "mode": "transport", "lifetime": 600,
             "lifetime_kilobytes": 1000, "initiate": True, "rekey_margin": 0.5, "peer_id": "gw.example"},
            {"name": "fallback"},
        ]}})
        first, second = ipsec_config(config).ipsec_policies()
        self.assertEqual(first, IPsecPolicy(
            "policies[0]", (Suite.parse("aes128gcm16-ecp256"), Suite.parse("ah-sha256")), "192.0.2.0/24",
            "gw.example", (Selector.parse("10.0.0.0/16"),), (Selector.parse("10.1.0.0/16[tcp/443]"),), "transport",
            Lifetime(600, 1000), True, 0.5))
        self.assertEqual((second.name, second.peer, second.mode, second.lifetime, second.initiate),
                         ("fallback", "any", "tunnel", Lifetime(3600, 0), False))
        self.assertEqual([s.name() for s in second.suites], list(DEFAULT_PROPOSALS))
        plugin = from_config(config)
        self.assertEqual(plugin.policies.policies, (first, second))
        self.assertIsNone(plugin.sink)

    def test_errors(self):
        """Each mistake names its key: an unknown proposal or selector, a bad mode, a duplicate name, debug_keys
        without a file, an unknown key; a weak PFS group without security.allow_weak_dh_groups."""
        from gdoiserver.config import ConfigError, parse_config
        from gdoiserver.doi.ipsec.plugin import from_config

        cases = {
            "ipsec.policies[0].proposals[1]": {"policies": [{"proposals": ["aes256-sha256", "des-md5"]}]},
            "ipsec.policies[0].remote[0]": {"policies": [{"remote": ["10.0.0.1/8"]}]},
            "ipsec.policies[0].mode": {"policies": [{"mode": "beet"}]},
            "ipsec.policies[1].name": {"policies": [{"name": "a"}, {"name": "a"}]},
            "ipsec.policies[0].rekey_margin": {"policies": [{"rekey_margin": 1.0}]},
            "ipsec.debug_keys": {"debug_keys": True},
            "ipsec.sink": {"sink": "jsonl"},
        }
        for key, section in cases.items():
            with self.assertRaises(ConfigError) as caught:
                parse_config({"ipsec": section})
            self.assertEqual(caught.exception.key, key)
        weak = parse_config({"ipsec": {"policies": [{"proposals": ["aes256-sha256-modp1024"]}]}})
        with self.assertRaises(ConfigError) as caught:
            from_config(weak)
        self.assertEqual(caught.exception.key, "ipsec.policies[0].proposals[0]")
        allowed = parse_config({"security": {"allow_weak_dh_groups": True},
                                "ipsec": {"policies": [{"proposals": ["aes256-sha256-modp1024"]}]}})
        self.assertTrue(from_config(allowed).settings.allow_weak_groups)

    def test_example_file(self):
        """etc/gdoiserver.toml loads, with its [ipsec] section at the defaults."""
        from pathlib import Path

        from gdoiserver.config import load_config
        from gdoiserver.doi.ipsec.config import IPsecConfig

        config = load_config(str(Path(__file__).resolve().parent.parent / "etc" / "gdoiserver.toml"))
        self.assertEqual(config.ipsec, IPsecConfig())
