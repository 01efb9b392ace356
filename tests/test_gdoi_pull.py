"""GROUPKEY-PULL (gdoiserver.doi.gdoi): a group member's initiator and the key server's responders over one ISAKMP
SA built from fixed keys (tests.test_informational.sa_pair), with no network.

The harness routes datagrams as the engine will: by M-ID to a responder the plugin makes, and an Informational
Notify to the member's ``refused``.  HASH(1)-(4) are checked against hmac and hashlib over the octets decrypted with
the cryptography package directly, and tshark reads the four messages written in the clear on port 848.
"""

import hashlib
import hmac
import ipaddress
import struct

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import (
    DOI,
    AuthAlgorithm,
    ESPTransformID,
    ExchangeType,
    IDType,
    NotifyType,
    PayloadType,
)
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import KD, SEQ, GroupSA, KeyPacket, KeyPacketType, SigAlgorithm
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.payloads import KE, SA, Hash, Identification, Nonce, Proposal, Transform
from gdoiserver.crypto import certs
from gdoiserver.doi import plugin as doi_plugin
from gdoiserver.doi.gdoi import PLUGIN, GDOIPlugin
from gdoiserver.doi.gdoi import download, lkh_wire
from gdoiserver.doi.gdoi.ack import ack_key_for
from gdoiserver.doi.gdoi.hashes import hash_1, kd_mask, payload_spans
from gdoiserver.doi.gdoi.pull import KeyServerPolicy, MemberRegistered, PullInitiator, PullResponder
from gdoiserver.doi.gdoi.registration import (
    GroupRegistration,
    MemberPolicy,
    OfferedPolicy,
    RegistrationRefused,
    read_keys,
    read_policy,
    selector_network,
)
from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import CancelTimer, Count, Established, Failed, Send, StartTimer
from gdoiserver.exchanges.informational import DeleteReceived, NotifyReceived, Received
from gdoiserver.group.keys import GroupTable
from gdoiserver.group.lkh import LKHError, LKHTree, LKHUpdate, NodeKey
from gdoiserver.group.policy import (
    PFS,
    CertificateAttributes,
    ExactIdentity,
    GAPPolicy,
    GroupId,
    GroupPolicy,
    IdentityPattern,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
)
from tests import pki
from tests.machine_pair import seeded_rng
from tests.test_informational import sa_pair
from tests.tshark import field_values, packets, problems, require_tshark, write_messages

NOW = pki.NOW.timestamp()
NET, IP = ipaddress.ip_network, ipaddress.ip_address
PULL = ExchangeType.GROUPKEY_PULL
CTX = context_for(DOI.GDOI, PULL)
GM_ID = Identification.of("initiator.example")  # the member's Phase 1 identity in sa_pair
V4 = TrafficSelector(NET("0.0.0.0/0"), NET("239.1.1.1/32"), 17, 0, 5004)
V6 = TrafficSelector(NET("2001:db8::/32"), NET("ff3e::1234/128"))
SITES = TrafficSelector(NET("0.0.0.0/0"), NET("0.0.0.0/0"))
REKEY = RekeyTransport(IP("192.0.2.1"), multicast_address=IP("239.192.0.1"))

#: One TEK of each transform the key server offers (RFC 3602 + RFC 4868, RFC 4106, RFC 3686).
TRANSFORMS = {
    "aes128-cbc-sha256": TEKPolicy("aes128-cbc-sha256", TEKTransform.AES_CBC, V4, 128, "hmac-sha256"),
    "aes192-cbc-sha384": TEKPolicy("aes192-cbc-sha384", TEKTransform.AES_CBC, V4, 192, "hmac-sha384"),
    "aes256-cbc-sha512": TEKPolicy("aes256-cbc-sha512", TEKTransform.AES_CBC, V4, 256, "hmac-sha512"),
    "aes128-gcm-8": TEKPolicy("aes128-gcm-8", TEKTransform.AES_GCM, V4, 128, icv_bits=64),
    "aes192-gcm-12": TEKPolicy("aes192-gcm-12", TEKTransform.AES_GCM, V4, 192, icv_bits=96),
    "aes256-gcm-16": TEKPolicy("aes256-gcm-16", TEKTransform.AES_GCM, V4, 256, icv_bits=128),
    "aes128-ctr-sha256": TEKPolicy("aes128-ctr-sha256", TEKTransform.AES_CTR, V4, 128, "hmac-sha256"),
    "aes256-ctr-sha512": TEKPolicy("aes256-ctr-sha512", TEKTransform.AES_CTR, SITES, 256, "hmac-sha512"),
}
CBC = TRANSFORMS["aes128-cbc-sha256"]
GCM = TRANSFORMS["aes256-gcm-16"]


def group(teks=(CBC,), members=(ExactIdentity(GM_ID),), **kw) -> GroupPolicy:
    kw.setdefault("number", 1234)
    if kw.setdefault("kek", KEKPolicy(pki.key("p256"))) is not None:
        kw.setdefault("rekey", REKEY)
    return GroupPolicy("g", tuple(teks), tuple(members), **kw)


def effects_of(effects, cls):
    return [e for e in effects if isinstance(e, cls)]


def counts(effects):
    return [e.name for e in effects if isinstance(e, Count)]


class Harness:
    """A key server (its group table, the GDOI plugin) and the members that register with it over ``sa_pair``."""

    def __init__(self, groups, *, seed=0, credentials=None, trust=None, ks_sa=None, gm_sa=None):
        gm, ks = sa_pair(doi=DOI.GDOI)
        self.gm_sa, self.ks_sa = gm_sa or gm, ks_sa or ks
        self.rng = seeded_rng(seed)
        self.table = GroupTable(groups, self.rng)
        self.plugin = GDOIPlugin(KeyServerPolicy(self.table, credentials, trust))
        self.responders: dict[int, PullResponder] = {}
        self.ks_effects: list = []
        self.wire: dict[int, list[bytes]] = {}  # the PULL datagrams of each M-ID, in order

    def group(self, number=1234):
        return self.table.lookup(GroupId(number=number))

    def member(self, group_id=GroupId(number=1234), sa=None, **policy) -> PullInitiator:
        return PullInitiator(sa or self.gm_sa, None, group=group_id, policy=MemberPolicy(**policy))

    def _note(self, data: bytes) -> None:
        m = decode_message(data, DOI.GDOI)
        if m.exchange_type == PULL:
            self.wire.setdefault(m.message_id, []).append(data)

    def to_ks(self, data: bytes, sa=None) -> list:
        """Deliver a datagram to the key server as the engine would: by M-ID, a new responder for a new one."""
        try:
            m = decode_message(data, DOI.GDOI)
        except DecodeError:
            return []
        if m.exchange_type != PULL:
            return []
        r = self.responders.get(m.message_id)
        if r is None:
            r = self.responders[m.message_id] = self.plugin.responder(sa or self.ks_sa, m)
        effects = r.receive(m, data, NOW, self.rng, peer=self.ks_sa.peer, local=self.ks_sa.local)
        self.ks_effects += effects
        return effects

    def to_gm(self, gm: PullInitiator, data: bytes) -> list:
        m = decode_message(data, DOI.GDOI)
        if m.exchange_type == ExchangeType.INFORMATIONAL:  # the engine reads it and tells the machine
            result = informational.process(gm.sa, m)
            if isinstance(result, Received):
                return [e for item in result.items for e in gm.notified(item, NOW, self.rng)]
            return []
        return gm.receive(m, data, NOW, self.rng, peer=gm.sa.peer, local=gm.sa.local)

    def run(self, gm: PullInitiator, ks_sa=None, tamper=None) -> list:
        """Start ``gm`` and carry datagrams both ways until none is left; ``tamper(direction, n, data)`` may
        replace (or drop, with None) the n-th datagram of a direction.  Returns the member's effects."""
        gm_effects = gm.start(NOW, self.rng)
        pending = [("ks", s.data) for s in effects_of(gm_effects, Send)]
        n = {"ks": 0, "gm": 0}
        for _ in range(20):
            if not pending:
                break
            direction, data = pending.pop(0)
            n[direction] += 1
            if tamper is not None:
                data = tamper(direction, n[direction], data)
                if data is None:
                    continue
            self._note(data)
            if direction == "ks":
                pending += [("gm", s.data) for s in effects_of(self.to_ks(data, ks_sa), Send)]
            else:
                effects = self.to_gm(gm, data)
                gm_effects += effects
                pending += [("ks", s.data) for s in effects_of(effects, Send)]
        return gm_effects

    def registration(self, gm_effects) -> GroupRegistration:
        (done,) = effects_of(gm_effects, Established)
        return done.sa


def decrypt_exchange(sa, datagrams) -> list[bytes]:
    """The plaintext bodies of one exchange, decrypted with the cryptography package: IV = SHA-256(last Phase 1
    block | M-ID), then each message's last ciphertext block (RFC 2409 appendix B), written out apart from the
    code under test."""
    iv = hashlib.sha256(sa.last_iv.iv + datagrams[0][20:24]).digest()[:16]
    out = []
    for d in datagrams:
        decryptor = Cipher(algorithms.AES(sa.keys.enc_key), modes.CBC(iv)).decryptor()
        out.append(decryptor.update(d[28:]) + decryptor.finalize())
        iv = d[-16:]
    return out


def split(plaintext: bytes, first: int) -> list[tuple[int, bytes]]:
    """(payload type, whole payload octets) of a decrypted chain, read from the generic headers."""
    out, pos, ptype = [], 0, first
    while ptype:
        nxt, _, length = struct.unpack_from("!BBH", plaintext, pos)
        out.append((ptype, plaintext[pos : pos + length]))
        pos, ptype = pos + length, nxt
    return out


class RegistrationTests(unittest.TestCase):
    def check_registration(self, h: Harness, reg: GroupRegistration, number=1234):
        """The member holds exactly the key server's current generation and KEK."""
        grp = h.group(number)
        generation = grp.keys.current(NOW)
        self.assertEqual(grp.keys.generations_made, 1)
        self.assertEqual(len(reg.teks), len(generation.teks))
        for info, keys in zip(reg.teks, generation.teks):
            p = keys.policy
            self.assertEqual((info.spi, info.transform_id, info.key_bits, info.integrity_algorithm, info.lifetime),
                             (keys.spi, p.transform_id, p.key_bits, p.auth_algorithm, p.lifetime))
            self.assertEqual((info.encryption_key, info.integrity_key), (keys.encryption_key, keys.integrity_key))
            self.assertEqual(reg.expires_at(info), keys.expires_at)
            self.assertEqual((info.ip_protocol, info.source.port, info.destination.port),
                             (p.selector.protocol, p.selector.source_port, p.selector.destination_port))
            self.assertEqual((selector_network(info.source), selector_network(info.destination)),
                             (p.selector.source, p.selector.destination))
        kek = grp.keys.kek(NOW)
        if kek is None:
            self.assertIsNone(reg.kek)
            self.assertIsNone(reg.seq)
        else:
            self.assertEqual((reg.kek.spi, reg.kek.key, reg.kek.key_bits, reg.seq), (kek.spi, kek.key, 128, 0))
            self.assertEqual(reg.kek.signature_public_key, kek.policy.public_key_der)
            self.assertEqual((reg.kek.source.value(), reg.kek.destination.value()),
                             (IP("192.0.2.1"), IP("239.192.0.1")))

    def test_each_transform_with_and_without_pfs(self):
        """A full registration for every TEK transform, with and without KE (PFS): the member ends with the key
        server's TEK keys and SPIs, the KEK and its signature key, and the key server records the member."""
        for name, tek in TRANSFORMS.items():
            for pfs in (False, True):
                h = Harness([group((tek,))], seed=name)
                gm = h.member(pfs=pfs)
                reg = h.registration(h.run(gm))
                self.check_registration(h, reg)
                self.assertEqual(reg.pfs, pfs, name)
                (done,) = effects_of(h.ks_effects, Established)
                self.assertIsInstance(done.sa, MemberRegistered)
                self.assertEqual((done.sa.member, done.sa.group, done.sa.pfs, done.sa.generation),
                                 ("initiator.example", "g", pfs, 1))
                self.assertEqual(bool(reg.sender_ids), tek.counter_mode, name)

    def test_pfs_puts_ke_in_messages_3_and_4_and_masks_kd(self):
        """With PFS, KE_I and KE_R travel in messages 3 and 4, and the KD on the wire is not the clear KD."""
        h = Harness([group((GCM,))])
        gm = h.member(pfs=True)
        h.registration(h.run(gm))
        (mid,) = h.wire
        d1, d2, d3, d4 = h.wire[mid]
        p3, p4 = (split(pt, decode_message(d).next_payload)
                  for pt, d in zip(decrypt_exchange(h.gm_sa, h.wire[mid])[2:], (d3, d4)))
        self.assertEqual([t for t, _ in p3], [PayloadType.HASH, PayloadType.KE, PayloadType.GAP])
        self.assertEqual([t for t, _ in p4], [PayloadType.HASH, PayloadType.KE, PayloadType.SEQ, PayloadType.KD])
        masked_kd = p4[3][1][4:]
        self.assertRaises((DecodeError, ValueError, struct.error, IndexError), _strict_kd, masked_kd, h)

    def test_sender_ids(self):
        """Counter-mode TEKs come with the member's own sender IDs, as many as it asked (up to the group's limit),
        never the same for two registrations; CBC TEKs carry none (RFC 6054)."""
        h = Harness([group((CBC, GCM, TRANSFORMS["aes128-ctr-sha256"]), max_sender_ids=4, sender_id_bits=10)])
        first = h.registration(h.run(h.member(sender_ids=3)))
        second = h.registration(h.run(h.member(sender_ids=100)))
        third = h.registration(h.run(h.member(sender_ids=0)))  # asks none: one anyway, it cannot send without
        self.assertEqual((len(first.sender_ids), len(second.sender_ids), len(third.sender_ids)), (3, 4, 1))
        self.assertEqual(first.sender_id_bits, 10)
        everyone = first.sender_ids + second.sender_ids + third.sender_ids
        self.assertEqual(len(set(everyone)), len(everyone))
        cbc, gcm, ctr = first.teks
        self.assertEqual((cbc.sender_ids, gcm.sender_ids, ctr.sender_ids), ((), first.sender_ids, first.sender_ids))
        ks_sids = [e.sa.sender_ids for e in effects_of(h.ks_effects, Established)]
        self.assertEqual(ks_sids, [first.sender_ids, second.sender_ids, third.sender_ids])
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 1023 - 8)

    def test_no_sender_ids_for_cbc_groups(self):
        """A group of CBC TEKs sends no SID key packet, and the member asks for none (no GAP in message 3)."""
        h = Harness([group((CBC,))])
        reg = h.registration(h.run(h.member(sender_ids=5)))
        self.assertEqual((reg.sender_ids, reg.sender_id_bits), ((), None))
        (mid,) = h.wire
        m3 = decrypt_exchange(h.gm_sa, h.wire[mid])[2]
        self.assertEqual([t for t, _ in split(m3, PayloadType.HASH)], [PayloadType.HASH])

    def test_ipv6_group_named_by_oid(self):
        """A group named by ID_OID (RFC 8052) with IPv6 multicast selectors registers like one named by number."""
        oid = "1.3.6.1.4.1.99999.6"
        h = Harness([group((TEKPolicy("v6", TEKTransform.AES_GCM, V6),), number=None, oid=oid,
                           rekey=RekeyTransport(IP("2001:db8::1"), multicast_address=IP("ff3e::8000:1")))])
        reg = h.registration(h.run(h.member(GroupId(oid=oid))))
        (tek,) = reg.teks
        self.assertEqual((tek.source.value(), tek.destination.value()), (NET("2001:db8::/32"), IP("ff3e::1234")))
        self.assertEqual(reg.kek.destination.value(), IP("ff3e::8000:1"))
        self.assertEqual(reg.group, GroupId(oid=oid))

    def test_unicast_rekeys_point_at_the_member(self):
        """With unicast rekeys only, the SAK's destination is the member's own address and port."""
        h = Harness([group(rekey=RekeyTransport(IP("192.0.2.1"), unicast=True))])
        reg = h.registration(h.run(h.member()))
        self.assertEqual((reg.kek.destination.value(), reg.kek.destination.port), (IP("127.0.0.1"), 500))

    def test_rsa_kek_and_gap(self):
        """An RSA KEK signature key goes out as its DER SubjectPublicKeyInfo; GAP delays reach the member."""
        h = Harness([group(kek=KEKPolicy(pki.key("rsa2048"), 256), gap=GAPPolicy(30, 90))])
        reg = h.registration(h.run(h.member()))
        spki = pki.key("rsa2048").public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual((reg.kek.signature_algorithm, reg.kek.signature_key_bits, reg.kek.signature_public_key),
                         (SigAlgorithm.SIG_ALG_RSA, 2048, spki))
        self.assertEqual((reg.kek.key_bits, len(reg.kek.key)), (256, 32))
        self.assertEqual((reg.activation_delay, reg.deactivation_delay), (30, 90))

    def test_group_without_kek(self):
        """Without a KEK the SA has no SAK, message 4 no SEQ, and the registration no KEK."""
        h = Harness([group(kek=None)])
        reg = h.registration(h.run(h.member()))
        self.check_registration(h, reg)
        (mid,) = h.wire
        m4 = decrypt_exchange(h.gm_sa, h.wire[mid])[3]
        self.assertEqual([t for t, _ in split(m4, PayloadType.HASH)], [PayloadType.HASH, PayloadType.KD])

    def test_seq_is_the_last_push(self):
        """SEQ in message 4 is the KEK's current sequence number: rekeys after it are the new ones."""
        h = Harness([group()])
        h.group().keys.kek(NOW).seq = 41
        self.assertEqual(h.registration(h.run(h.member())).seq, 41)

    def test_many_members_one_generation(self):
        """Forty members registering at once, their messages interleaved, all succeed with the same keys, made once,
        and sender IDs nobody shares."""
        rule = IdentityPattern("gm*.example.org")
        h = Harness([group((GCM, CBC), members=(rule,))])
        machines = []
        pending = []
        for i in range(40):
            gm_sa = attrs.evolve(h.gm_sa, local_id=Identification.of(f"gm{i}.example.org"))
            ks_sa = attrs.evolve(h.ks_sa, peer_id=Identification.of(f"gm{i}.example.org"))
            gm = h.member(sa=gm_sa, pfs=i % 2 == 0, sender_ids=2)
            machines.append((gm, ks_sa))
            pending += [(i, "ks", s.data) for s in effects_of(gm.start(NOW, h.rng), Send)]
        results = {}
        while pending:
            i, direction, data = pending.pop(len(pending) // 2)  # not in order
            gm, ks_sa = machines[i]
            if direction == "ks":
                pending += [(i, "gm", s.data) for s in effects_of(h.to_ks(data, ks_sa), Send)]
            else:
                effects = h.to_gm(gm, data)
                pending += [(i, "ks", s.data) for s in effects_of(effects, Send)]
                for e in effects_of(effects, Established):
                    results[i] = e.sa
        self.assertEqual(len(results), 40)
        self.assertEqual((h.group().keys.generations_made, h.group().keys.keks_made), (1, 1))
        keys = {tuple((t.spi, t.encryption_key) for t in r.teks) for r in results.values()}
        self.assertEqual(len(keys), 1)
        sids = [s for r in results.values() for s in r.sender_ids]
        self.assertEqual(len(sids), 80)
        self.assertEqual(len(set(sids)), 80)
        members = sorted(e.sa.member for e in effects_of(h.ks_effects, Established))
        self.assertEqual(members, sorted(f"gm{i}.example.org" for i in range(40)))

    def test_registration_hides_keys(self):
        """No key of the registration shows in its repr."""
        h = Harness([group((CBC, GCM))])
        reg = h.registration(h.run(h.member()))
        text = repr(reg)
        for secret in [t.encryption_key for t in reg.teks] + [reg.teks[0].integrity_key, reg.kek.key]:
            self.assertNotIn(repr(secret), text)
            self.assertNotIn(secret.hex(), text)


def _strict_kd(body: bytes, h: Harness):
    """Decode a KD body and check it holds exactly the group's key packets (raises if it does not)."""
    kd = KD.decode_body(body, CTX)
    spis = {p.spi for p in kd.key_packets}
    if spis != {t.spi for t in h.group().keys.current(NOW).teks} | {h.group().keys.kek(NOW).spi, b""}:
        raise ValueError("not the group's key packets")
    return kd


class HashTests(unittest.TestCase):
    def test_hashes_independently(self):
        """HASH(1)-(4) on the wire equal HMAC-SHA-256(SKEYID_a, M-ID | [Ni_b] | [Nr_b] | payloads after HASH),
        recomputed with hmac over octets decrypted apart from the code under test (RFC 6407 section 3.2)."""
        for pfs in (False, True):
            h = Harness([group((GCM,), gap=GAPPolicy(1, 2))])
            h.registration(h.run(h.member(pfs=pfs, sender_ids=2)))
            (mid,) = h.wire
            datagrams = h.wire[mid]
            plain = decrypt_exchange(h.gm_sa, datagrams)
            parts = [split(pt, decode_message(d).next_payload) for pt, d in zip(plain, datagrams)]
            ni_b = next(p for t, p in parts[0] if t == PayloadType.NONCE)[4:]
            nr_b = next(p for t, p in parts[1] if t == PayloadType.NONCE)[4:]
            prefixes = [b"", ni_b, ni_b + nr_b, ni_b + nr_b]
            for n, (payloads, prefix) in enumerate(zip(parts, prefixes), 1):
                (htype, hash_payload), *rest = payloads
                self.assertEqual(htype, PayloadType.HASH)
                expected = hmac.new(h.gm_sa.keys.skeyid_a, datagrams[0][20:24] + prefix
                                    + b"".join(p for _, p in rest), hashlib.sha256).digest()
                self.assertEqual(hash_payload[4:], expected, f"HASH({n})")
            self.assertEqual([t for t, _ in parts[0]], [PayloadType.HASH, PayloadType.NONCE, PayloadType.ID])
            self.assertEqual([t for t, _ in parts[1]], [PayloadType.HASH, PayloadType.NONCE, PayloadType.SA])

    def test_kd_mask_formula(self):
        """The PFS mask is Quick Mode's KEYMAT with g^xy, protocol 17 (KD) and no SPI: K1 = prf(SKEYID_d, g^xy |
        17 | Ni_b | Nr_b), K2 = prf(SKEYID_d, K1 | g^xy | 17 | Ni_b | Nr_b) (docs/wire-format.md, an assumption)."""
        sa, _ = sa_pair(doi=DOI.GDOI)
        g_xy, ni, nr = b"\x11" * 256, b"\x22" * 32, b"\x33" * 32
        k1 = hmac.new(sa.keys.skeyid_d, g_xy + b"\x11" + ni + nr, hashlib.sha256).digest()
        k2 = hmac.new(sa.keys.skeyid_d, k1 + g_xy + b"\x11" + ni + nr, hashlib.sha256).digest()
        self.assertEqual(kd_mask(sa, g_xy, ni, nr, 50), (k1 + k2)[:50])

    def test_payload_spans(self):
        """payload_spans reads the generic headers up to Next Payload 0 and refuses short or overrunning lengths."""
        chain = bytes([10, 0, 0, 8]) + b"\x01" * 4 + bytes([0, 0, 0, 5]) + b"\x02" + b"\0\0\0"
        self.assertEqual(payload_spans(chain, 8), [(8, 0, 8), (10, 8, 13)])
        self.assertRaises(DecodeError, payload_spans, bytes([0, 0, 0, 3]), 8)
        self.assertRaises(DecodeError, payload_spans, bytes([0, 0, 0, 9]) + b"\0" * 4, 8)
        self.assertRaises(DecodeError, payload_spans, b"\0\0", 8)


class RefusalTests(unittest.TestCase):
    def assertUntouched(self, h: Harness):
        """The group's key state is as it was before: no generation, no KEK, no sender ID made."""
        keys = h.group().keys
        self.assertEqual((keys.generations_made, keys.keks_made), (0, 0))
        self.assertEqual(effects_of(h.ks_effects, Established), [])

    def refused(self, h, gm_effects, notify):
        (ks_failed,) = effects_of(h.ks_effects, Failed)
        self.assertEqual(ks_failed.notify, notify)
        (gm_failed,) = effects_of(gm_effects, Failed)
        self.assertEqual(gm_failed.notify, notify)
        self.assertEqual(effects_of(gm_effects, Established), [])
        return ks_failed

    def test_unauthorized_identity(self):
        """A member that authenticated but is not named by the group is refused with AUTHENTICATION-FAILED; the
        log line names it and the group; the group's state is unchanged."""
        h = Harness([group(members=(ExactIdentity(Identification.of("someone.example")),))])
        failed = self.refused(h, h.run(h.member()), NotifyType.AUTHENTICATION_FAILED)
        self.assertIn("initiator.example", failed.reason)
        self.assertIn("group 1234", failed.reason)
        self.assertIn("pull_unauthorized", counts(h.ks_effects))
        self.assertUntouched(h)

    def test_unknown_group(self):
        """A request for a group the key server does not serve is refused with INVALID-ID-INFORMATION."""
        h = Harness([group()])
        failed = self.refused(h, h.run(h.member(GroupId(number=999))), NotifyType.INVALID_ID_INFORMATION)
        self.assertIn("group 999", failed.reason)
        self.assertIn("initiator.example", failed.reason)
        self.assertUntouched(h)

    def test_bad_hash_1(self):
        """A request whose HASH(1) does not verify (another SKEYID_a) is refused with INVALID-HASH-INFORMATION."""
        h = Harness([group()])
        wrong = attrs.evolve(h.gm_sa, keys=attrs.evolve(h.gm_sa.keys, skeyid_a=b"\x5a" * 32))
        h.run(h.member(sa=wrong))
        (failed,) = effects_of(h.ks_effects, Failed)
        self.assertEqual(failed.notify, NotifyType.INVALID_HASH_INFORMATION)
        self.assertUntouched(h)

    def test_bad_hash_3_is_dropped(self):
        """A message 3 whose HASH(3) does not verify is dropped without an answer or any sender ID given; the
        genuine message 3 that follows still registers the member."""
        h = Harness([group((GCM,))])
        kept = {}

        def tamper(direction, n, data):
            if direction == "ks" and n == 2:
                kept["m3"] = data
                bad = bytearray(data)
                bad[28 + 16] ^= 1  # garbles the second plaintext block: the middle of HASH(3)
                return bytes(bad)
            return data

        h.run(h.member(), tamper=tamper)
        self.assertIn("pull_bad_hash", counts(h.ks_effects))
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 65535)
        (responder,) = h.responders.values()
        self.assertEqual(responder.state, "SA_SENT")
        answer = h.to_ks(kept["m3"])
        self.assertTrue(effects_of(answer, Established))

    def test_pfs_required(self):
        """A group that requires PFS refuses a message 3 without KE_I (NO-PROPOSAL-CHOSEN) and gives no SIDs."""
        h = Harness([group((GCM,), pfs=PFS.REQUIRE)])
        self.refused(h, h.run(h.member(pfs=False)), NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 65535)
        h2 = Harness([group((GCM,), pfs=PFS.REQUIRE)])
        self.assertTrue(h2.registration(h2.run(h2.member(pfs=True))).pfs)

    def test_pfs_refused(self):
        """A group that refuses PFS refuses a message 3 with KE_I."""
        h = Harness([group(pfs=PFS.REFUSE)])
        self.refused(h, h.run(h.member(pfs=True)), NotifyType.NO_PROPOSAL_CHOSEN)

    def test_sender_ids_exhausted(self):
        """When the SID space is used up the next member is refused, and nothing more is allocated."""
        h = Harness([group((GCM,), sender_id_bits=1, members=(IdentityPattern("*"),))])
        self.assertEqual(h.registration(h.run(h.member())).sender_ids, (1,))
        gm_effects = h.run(h.member())
        self.assertEqual(effects_of(gm_effects, Failed)[0].notify, NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertIn("pull_sender_ids_exhausted", counts(h.ks_effects))
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 0)

    def test_member_refuses_unacceptable_policy(self):
        """A member refuses an SA it cannot use (a transform it does not accept) with NO-PROPOSAL-CHOSEN, asks for
        no keys, and the key server's responder ends on its timeout without handing out sender IDs."""
        h = Harness([group((GCM,))])
        gm_effects = h.run(h.member(transforms=frozenset({ESPTransformID.AES_CBC})))
        (failed,) = effects_of(gm_effects, Failed)
        self.assertEqual(failed.notify, NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertEqual(len([s for s in effects_of(gm_effects, Send)]), 2)  # message 1, then the Notify
        (responder,) = h.responders.values()
        self.assertEqual(responder.state, "SA_SENT")
        effects = responder.timer("exchange_timeout", NOW + 60, h.rng)
        self.assertEqual(effects_of(effects, Failed)[0].reason,
                         "GROUPKEY-PULL for 'g' (group 1234) with initiator.example timed out")
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 65535)

    def test_refusal_ends_the_peer_exchange(self):
        """An error Notify from the peer (passed in by the dispatcher as ``notified``) ends either side's exchange;
        a status Notify or a Delete does not."""
        h = Harness([group()])
        gm = h.member()
        (m1,) = effects_of(gm.start(NOW, h.rng), Send)
        h.to_ks(m1.data)
        (responder,) = h.responders.values()
        self.assertEqual(responder.notified(NotifyReceived(NotifyType.INITIAL_CONTACT, 1, b"", b""), NOW, h.rng), [])
        self.assertEqual(responder.notified(DeleteReceived(1, (h.ks_sa.spi,)), NOW, h.rng), [])
        effects = responder.notified(NotifyReceived(NotifyType.NO_PROPOSAL_CHOSEN, 1, b"", b""), NOW, h.rng)
        (failed,) = effects_of(effects, Failed)
        self.assertEqual(failed.notify, NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertIn("initiator.example refused GROUPKEY-PULL for 'g' (group 1234)", failed.reason)
        self.assertIn(CancelTimer("exchange_timeout"), effects)
        self.assertTrue(responder.done)
        self.assertEqual(responder.notified(NotifyReceived(14, 1, b"", b""), NOW, h.rng), [])
        effects = gm.notified(NotifyReceived(NotifyType.AUTHENTICATION_FAILED, 1, b"", b""), NOW, h.rng)
        self.assertIn("responder.example refused GROUPKEY-PULL for group 1234", effects_of(effects, Failed)[0].reason)
        self.assertIn(CancelTimer("retransmit"), effects)

    def test_member_wants_a_kek(self):
        """A member that requires rekeys refuses a group without a KEK."""
        h = Harness([group(kek=None)])
        (failed,) = effects_of(h.run(h.member(require_kek=True)), Failed)
        self.assertEqual(failed.notify, NotifyType.NO_PROPOSAL_CHOSEN)

    def test_member_ignores_bad_hash_2_and_4(self):
        """The member drops messages 2 and 4 whose HASH does not verify and keeps waiting (and retransmitting)."""
        for which in (1, 2):
            h = Harness([group()])

            def tamper(direction, n, data):
                if direction == "gm" and n == which:
                    bad = bytearray(data)
                    bad[28 + 16] ^= 1
                    return bytes(bad)
                return data

            gm = h.member()
            gm_effects = h.run(gm, tamper=tamper)
            self.assertIn("pull_bad_hash", counts(gm_effects))
            self.assertFalse(gm.done)
            self.assertEqual(effects_of(gm_effects, Established), [])


class CertificateTests(unittest.TestCase):
    def setUp(self):
        self.members = pki.hierarchy("p256", sans=("gm.members.example.org",))
        self.servers = pki.hierarchy("rsa2048", sans=("ks.example.org",))
        leaf, inter = self.members.leaf, self.members.intermediate
        self.gm_credentials = certs.Credentials(leaf.certificate, (inter.certificate,), leaf.key)
        leaf, inter = self.servers.leaf, self.servers.intermediate
        self.ks_credentials = certs.Credentials(leaf.certificate, (inter.certificate,), leaf.key)
        self.gm_trust = certs.TrustStore((self.servers.root.certificate,))
        self.ks_trust = certs.TrustStore((self.members.root.certificate,))

    def test_cert_and_pop_both_ways(self):
        """A member sends CERT and POP_I (a SIG over hash(Ni_b | Nr_b)), the key server CERT and POP_R; each
        verifies the other's; a group admits the member by its certificate's name (service-identity)."""
        rule = CertificateAttributes(dns="gm.members.example.org")
        h = Harness([group(members=(rule,))], credentials=self.ks_credentials, trust=self.ks_trust)
        gm = h.member(credentials=self.gm_credentials, trust=self.gm_trust, require_server_pop=True)
        reg = h.registration(h.run(gm))
        self.assertEqual(len(reg.teks), 1)
        (done,) = effects_of(h.ks_effects, Established)
        self.assertEqual(done.sa.certificate, self.members.leaf.certificate.public_bytes(serialization.Encoding.DER))
        (mid,) = h.wire
        _, _, m3, m4 = decrypt_exchange(h.gm_sa, h.wire[mid])
        self.assertEqual([t for t, _ in split(m3, PayloadType.HASH)],
                         [PayloadType.HASH, PayloadType.CERT, PayloadType.CERT, PayloadType.SIG])
        self.assertEqual([t for t, _ in split(m4, PayloadType.HASH)],
                         [PayloadType.HASH, PayloadType.SEQ, PayloadType.KD, PayloadType.CERT, PayloadType.CERT,
                          PayloadType.SIG])

    def test_certificate_rule_without_certificate(self):
        """A group that admits members by certificate refuses one that proves none (AUTHENTICATION-FAILED at
        message 3), and hands out no sender IDs."""
        rule = CertificateAttributes(dns="gm.members.example.org")
        h = Harness([group((GCM,), members=(rule,))], trust=self.ks_trust)
        (failed,) = effects_of(h.run(h.member()), Failed)
        self.assertEqual(failed.notify, NotifyType.AUTHENTICATION_FAILED)
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 65535)

    def test_certificate_of_another_name(self):
        """A valid certificate for another name does not admit the member."""
        rule = CertificateAttributes(dns="other.members.example.org")
        h = Harness([group(members=(rule,))], trust=self.ks_trust)
        (failed,) = effects_of(h.run(h.member(credentials=self.gm_credentials)), Failed)
        self.assertEqual(failed.notify, NotifyType.AUTHENTICATION_FAILED)

    def test_untrusted_certificate(self):
        """A member certificate from a CA the key server does not trust is INVALID-CERT-AUTHORITY."""
        rule = CertificateAttributes(dns="gm.members.example.org")
        h = Harness([group(members=(rule,))], trust=self.gm_trust)
        (failed,) = effects_of(h.run(h.member(credentials=self.gm_credentials)), Failed)
        self.assertEqual(failed.notify, NotifyType.INVALID_CERT_AUTHORITY)

    def test_phase1_certificate(self):
        """A member whose Phase 1 certificate carries the name is admitted at message 1, with no CERT in PULL."""
        rule = CertificateAttributes(dns="gm.members.example.org")
        h = Harness([group(members=(rule,))])
        der = self.members.leaf.certificate.public_bytes(serialization.Encoding.DER)
        ks_sa = attrs.evolve(h.ks_sa, peer_certificate=der)
        self.assertTrue(h.registration(h.run(h.member(), ks_sa=ks_sa)))

    def test_server_pop_required(self):
        """A member that requires the key server's POP refuses a message 4 without one."""
        h = Harness([group()])
        gm = h.member(trust=self.gm_trust, require_server_pop=True)
        (failed,) = effects_of(h.run(gm), Failed)
        self.assertEqual(failed.notify, NotifyType.CERTIFICATE_UNAVAILABLE)

    def test_server_pop_from_untrusted_ca(self):
        """A key server POP whose certificate the member cannot chain is refused."""
        h = Harness([group()], credentials=self.ks_credentials)
        (failed,) = effects_of(h.run(h.member(trust=self.ks_trust)), Failed)
        self.assertEqual(failed.notify, NotifyType.INVALID_CERT_AUTHORITY)


class RetransmissionTests(unittest.TestCase):
    def test_member_retransmits_same_bytes(self):
        """Unanswered, the member resends message 1 unchanged after 2 s, then 4 s..., then gives up."""
        h = Harness([group()])
        gm = h.member(retransmit_initial=2.0, retransmit_tries=2)
        start = gm.start(NOW, h.rng)
        (first,) = effects_of(start, Send)
        self.assertIn(StartTimer("retransmit", 2.0), start)
        again = gm.timer("retransmit", NOW + 2, h.rng)
        self.assertEqual(effects_of(again, Send), [first])
        self.assertIn(StartTimer("retransmit", 4.0), again)
        self.assertEqual(effects_of(gm.timer("retransmit", NOW + 6, h.rng), Send), [first])
        effects = gm.timer("retransmit", NOW + 14, h.rng)
        (failed,) = effects_of(effects, Failed)
        self.assertIn("did not answer", failed.reason)
        self.assertIn(CancelTimer("exchange_timeout"), effects)
        self.assertTrue(gm.done)

    def test_key_server_answers_retransmissions_from_its_cache(self):
        """The same message 1 or 3 again gets the same answer, computed once: no second generation, no second
        set of sender IDs."""
        h = Harness([group((GCM,))])
        gm = h.member()
        (m1,) = effects_of(gm.start(NOW, h.rng), Send)
        (m2,) = effects_of(h.to_ks(m1.data), Send)
        again = h.to_ks(m1.data)
        self.assertEqual((counts(again), effects_of(again, Send)), (["retransmit_answered"], [m2]))
        (m3,) = effects_of(h.to_gm(gm, m2.data), Send)
        (m4,) = effects_of(h.to_ks(m3.data), Send)
        again = h.to_ks(m3.data)
        self.assertEqual((counts(again), effects_of(again, Send)), (["retransmit_answered"], [m4]))
        self.assertEqual(h.group().keys.current(NOW).sender_ids.remaining, 65534)
        self.assertTrue(effects_of(h.to_gm(gm, m4.data), Established))
        self.assertEqual(counts(h.to_gm(gm, m4.data)), ["dropped_duplicate"])

    def test_lost_message_4(self):
        """When message 4 is lost the member's retransmitted message 3 fetches it again."""
        h = Harness([group()])
        gm = h.member()
        (m1,) = effects_of(gm.start(NOW, h.rng), Send)
        (m2,) = effects_of(h.to_ks(m1.data), Send)
        (m3,) = effects_of(h.to_gm(gm, m2.data), Send)
        h.to_ks(m3.data)  # its answer is lost
        (m3_again,) = effects_of(gm.timer("retransmit", NOW + 2, h.rng), Send)
        self.assertEqual(m3_again, m3)
        (m4,) = effects_of(h.to_ks(m3_again.data), Send)
        self.assertTrue(effects_of(h.to_gm(gm, m4.data), Established))

    def test_key_server_timeout(self):
        """A responder whose member never sends message 3 ends on its exchange timeout."""
        h = Harness([group()])
        (m1,) = effects_of(h.member().start(NOW, h.rng), Send)
        effects = h.to_ks(m1.data)
        self.assertIn(StartTimer("exchange_timeout", 60.0), effects)
        (responder,) = h.responders.values()
        timeout = responder.timer("exchange_timeout", NOW + 60, h.rng)
        self.assertEqual(counts(timeout), ["pull_timeout"])
        self.assertTrue(responder.done)
        self.assertEqual(responder.timer("exchange_timeout", NOW + 61, h.rng), [])


class PluginTests(unittest.TestCase):
    def test_registered(self):
        """Importing the package registers the GDOI plugin as DOI 2."""
        self.assertIs(doi_plugin(DOI.GDOI), PLUGIN)
        self.assertEqual((PLUGIN.number, PLUGIN.name, PLUGIN.notify_names()), (2, "GDOI", {}))

    def test_accepts(self):
        """The plugin takes exchange 32 with a group ID and no SA; Quick Mode's first message (with an SA) and
        other exchanges are not GDOI's."""
        sa, _ = sa_pair(doi=DOI.GDOI)
        request = Message(sa.initiator_cookie, sa.responder_cookie, PULL, 1, 7,
                          (Hash(b"\0" * 32), Nonce(b"\1" * 16), GroupId(number=5).identification()))
        self.assertTrue(PLUGIN.accepts(sa, request))
        oid = attrs.evolve(request, payloads=(Hash(b"\0" * 32), Nonce(b"\1" * 16),
                                              GroupId(oid="1.2.3").identification()))
        self.assertTrue(PLUGIN.accepts(sa, oid))
        qm_sa = SA(1, 1, (Proposal(1, 3, b"\0\0\0\1", (Transform(1, 12, ()),)),))
        quick = attrs.evolve(request, payloads=(Hash(b"\0" * 32), qm_sa, Nonce(b"\1" * 16)))
        self.assertFalse(PLUGIN.accepts(sa, quick))
        fqdn = attrs.evolve(request, payloads=(Hash(b"\0" * 32), Nonce(b"\1" * 16), Identification.of("a.b")))
        self.assertFalse(PLUGIN.accepts(sa, fqdn))
        self.assertFalse(PLUGIN.accepts(sa, attrs.evolve(request, exchange_type=ExchangeType.QUICK_MODE + 1)))

    def test_responder_needs_groups(self):
        """Without a key server policy the plugin refuses (None); configure() sets one up from group policies."""
        sa, _ = sa_pair(doi=DOI.GDOI)
        request = Message(sa.initiator_cookie, sa.responder_cookie, PULL, 1, 7, ())
        plugin = GDOIPlugin()
        self.assertIsNone(plugin.responder(sa, request))
        plugin.configure([group()], seeded_rng(1))
        r = plugin.responder(sa, request)
        self.assertIsInstance(r, PullResponder)
        self.assertEqual((r.message_id, r.state), (7, "START"))
        self.assertRaises(RuntimeError, r.start, NOW, seeded_rng(2))


class ReadKeysTests(unittest.TestCase):
    """The member's checks of message 4's keys against message 2's SA, on KDs crafted to be wrong."""

    def setUp(self):
        h = Harness([group((CBC, GCM))])
        h.registration(h.run(h.member()))
        (mid,) = h.wire
        plain = decrypt_exchange(h.gm_sa, h.wire[mid])
        d2, d4 = h.wire[mid][1], h.wire[mid][3]
        sa_payload = decode_message(d2, DOI.GDOI).with_plaintext(plain[1], DOI.GDOI).payloads[2]
        self.assertIsInstance(sa_payload, GroupSA)
        self.offered = read_policy(sa_payload, MemberPolicy())
        self.kd = decode_message(d4, DOI.GDOI).with_plaintext(plain[3], DOI.GDOI).payloads[2]
        self.assertIsInstance(self.kd, KD)

    def read(self, kd, seq=0, asked=1):
        return read_keys(self.offered, kd, seq, group=GroupId(number=1234), server=("127.0.0.2", 500), now=NOW,
                         asked_sender_ids=asked, pfs=False)

    def refusal(self, kd, notify, seq=0, asked=1):
        e = self.assertRaises(RegistrationRefused, self.read, kd, seq, asked)
        self.assertEqual(e.notify, notify, e.reason)
        return e

    def replace(self, kd_type, change):
        return KD(tuple(change(p) if p.kd_type == kd_type else p for p in self.kd.key_packets))

    def test_genuine(self):
        """The genuine KD reads."""
        self.assertEqual(len(self.read(self.kd).teks), 2)

    def test_wrong_key_lengths(self):
        """A TEK or KEK key one octet short is INVALID-KEY-INFORMATION."""
        def short_tek(p):
            return KeyPacket(p.kd_type, p.spi, (Attribute(1, p.attributes[0].value[:-1]),) + p.attributes[1:])

        self.refusal(self.replace(KeyPacketType.TEK, short_tek), NotifyType.INVALID_KEY_INFORMATION)
        self.refusal(self.replace(KeyPacketType.KEK, short_tek), NotifyType.INVALID_KEY_INFORMATION)

    def test_missing_and_extra_packets(self):
        """A TEK without keys, a key packet for an SPI the SA did not announce, or a second KEK packet is refused."""
        teks = self.kd.packets_of(KeyPacketType.TEK)
        without = KD(tuple(p for p in self.kd.key_packets if p is not teks[0]))
        self.refusal(without, NotifyType.INVALID_SPI)
        stranger = KD(self.kd.key_packets + (KeyPacket(KeyPacketType.TEK, b"\x7f\0\0\1", teks[0].attributes),))
        self.refusal(stranger, NotifyType.INVALID_SPI)
        kek = self.kd.packets_of(KeyPacketType.KEK)[0]
        self.refusal(KD(self.kd.key_packets + (kek,)), NotifyType.INVALID_SPI)
        lkh = KD(self.kd.key_packets + (KeyPacket(KeyPacketType.LKH, b"", ()),))
        self.refusal(lkh, NotifyType.INVALID_KEY_INFORMATION)

    def test_signature_key_mismatch(self):
        """A SIG_ALGORITHM_KEY that is not the algorithm and size the SAK named, or not a key at all, is refused."""
        rsa_spki = pki.key("rsa2048").public_key().public_bytes(serialization.Encoding.DER,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        for spki in (rsa_spki, b"\x30\x03\x02\x01\x01"):
            kd = self.replace(KeyPacketType.KEK, lambda p: KeyPacket(p.kd_type, p.spi, (p.attributes[0],
                                                                                           Attribute(2, spki))))
            self.refusal(kd, NotifyType.INVALID_KEY_INFORMATION)

    def test_seq_required_with_kek(self):
        """A KEK without SEQ cannot be used: the member could not tell new rekeys from replays."""
        self.refusal(self.kd, NotifyType.PAYLOAD_MALFORMED, seq=None)

    def test_sender_ids(self):
        """Counter-mode TEKs without SIDs (when asked), SIDs that do not fit their bits or repeat, or a SID packet
        with an SPI are refused."""
        no_sid = KD(tuple(p for p in self.kd.key_packets if p.kd_type != KeyPacketType.SID))
        self.refusal(no_sid, NotifyType.INVALID_KEY_INFORMATION)
        self.assertEqual(self.read(no_sid, asked=0).sender_ids, ())
        for attributes, spi in (((Attribute(1, 2), Attribute(2, b"\0\0\0\4")), b""),
                                ((Attribute(1, 16), Attribute(2, b"\0\1"), Attribute(2, b"\0\1")), b""),
                                ((Attribute(1, 16), Attribute(2, b"\0\1")), b"\1"),
                                ((Attribute(1, 16),), b""),
                                ((Attribute(1, 40), Attribute(2, b"\1")), b"")):
            kd = self.replace(KeyPacketType.SID, lambda p: KeyPacket(p.kd_type, spi, attributes))
            self.refusal(kd, NotifyType.INVALID_KEY_INFORMATION)


class ReadPolicyTests(unittest.TestCase):
    """The member's checks of message 2's SA payload."""

    def sa_payload(self, tek, **kw):
        h = Harness([group((tek,), **kw)])
        grp = h.group()
        return download.sa_payload(grp, grp.keys.current(NOW), grp.keys.kek(NOW), ("127.0.0.1", 500), NOW)

    def test_policies(self):
        """Transforms, key sizes, integrity algorithms and lifetimes outside the member's policy are refused."""
        sa = self.sa_payload(GCM)
        self.assertIsInstance(read_policy(sa, MemberPolicy()), OfferedPolicy)
        for policy in (MemberPolicy(transforms=frozenset({ESPTransformID.AES_CBC})), MemberPolicy(min_key_bits=512),
                       MemberPolicy(max_lifetime=60)):
            e = self.assertRaises(RegistrationRefused, read_policy, sa, policy)
            self.assertEqual(e.notify, NotifyType.NO_PROPOSAL_CHOSEN)
        cbc = self.sa_payload(TRANSFORMS["aes256-cbc-sha512"])
        e = self.assertRaises(RegistrationRefused, read_policy, cbc,
                              MemberPolicy(integrity=frozenset({AuthAlgorithm.HMAC_SHA2_256})))
        self.assertEqual(e.notify, NotifyType.NO_PROPOSAL_CHOSEN)

    def test_unknown_attribute(self):
        """A TEK attribute the member does not understand is ATTRIBUTES-NOT-SUPPORTED, not ignored."""
        sa = self.sa_payload(CBC)
        sak, sat = sa.payloads
        tek = attrs.evolve(sat.tek, attributes=sat.tek.attributes + (Attribute(7, 1),))  # Key Rounds
        e = self.assertRaises(RegistrationRefused, read_policy, GroupSA(payloads=(sak, attrs.evolve(sat, tek=tek))),
                              MemberPolicy())
        self.assertEqual(e.notify, NotifyType.ATTRIBUTES_NOT_SUPPORTED)

    def test_selectors_and_spis(self):
        """A TEK selector that is not an address or subnet, two TEKs with one SPI, or an SA without TEKs is refused."""
        sa = self.sa_payload(CBC)
        sak, sat = sa.payloads
        named = attrs.evolve(sat, tek=attrs.evolve(sat.tek, dst=attrs.evolve(sat.tek.dst, id_type=IDType.FQDN)))
        for payloads, notify in (((sak, named), NotifyType.INVALID_ID_INFORMATION),
                                 ((sak, sat, sat), NotifyType.INVALID_SPI),
                                 ((sak,), NotifyType.BAD_PROPOSAL_SYNTAX),
                                 ((sak, sak, sat), NotifyType.BAD_PROPOSAL_SYNTAX)):
            e = self.assertRaises(RegistrationRefused, read_policy, GroupSA(payloads=payloads), MemberPolicy())
            self.assertEqual(e.notify, notify)

    def test_kek_policy(self):
        """A KEK with an algorithm other than AES or a weak signature hash is refused."""
        sa = self.sa_payload(CBC)
        sak, sat = sa.payloads
        for attr in (Attribute(2, 2), Attribute(5, 2)):  # 3DES; SHA-1
            bad = attrs.evolve(sak, attributes=tuple(attr if a.type == attr.type else a for a in sak.attributes))
            e = self.assertRaises(RegistrationRefused, read_policy, GroupSA(payloads=(bad, sat)), MemberPolicy())
            self.assertEqual(e.notify, NotifyType.NO_PROPOSAL_CHOSEN)


class LKHRegistrationTests(unittest.TestCase):
    """The key server's hooks for LKH and eviction (KeyServerPolicy.leaf_for, is_evicted), and what message 4 gives
    the member (RFC 6407 section 5.6.3)."""

    def harness(self, leaf_for=None, is_evicted=None, **kw) -> Harness:
        h = Harness([group(**kw)])
        h.plugin.key_server = attrs.evolve(h.plugin.key_server, leaf_for=leaf_for, is_evicted=is_evicted)
        return h

    def test_path_in_message_4(self):
        """The member's LKH path from leaf_for (called with the group's name and the member's identity) reaches
        the member as lkh_path and lkh_leaf; the key server's MemberRegistered names the leaf and the ack_key,
        which the member derives alike from its side of the Phase 1 SA."""
        tree = LKHTree(4, 16, seeded_rng(3))
        calls = []

        def leaf_for(group_name, identity):
            calls.append((group_name, identity))
            return tree.path(tree.join())

        h = self.harness(leaf_for)
        reg = h.registration(h.run(h.member()))
        self.assertEqual(calls, [("g", "initiator.example")])
        self.assertEqual((reg.lkh_leaf, reg.lkh_path), (16, tree.path(16)))
        (done,) = effects_of(h.ks_effects, Established)
        self.assertEqual(done.sa.leaf, 16)
        self.assertEqual(done.sa.ack_key, ack_key_for(h.ks_sa))
        self.assertEqual(done.sa.ack_key, ack_key_for(h.gm_sa))
        self.assertEqual(len(done.sa.ack_key), 32)  # prf output of the Phase 1 hash, SHA-256
        self.assertNotIn(done.sa.ack_key.hex(), repr(done.sa))
        self.assertNotIn(repr(tree.path(16)[0].key), repr(reg))

    def test_no_path(self):
        """Without the hook, with a hook that returns None, or in a group without KEK, message 4 has no LKH
        packet and the registration no path; the hook is never called for a group without KEK."""
        for h in (self.harness(), self.harness(lambda g, i: None)):
            reg = h.registration(h.run(h.member()))
            self.assertEqual((reg.lkh_path, reg.lkh_leaf), ((), None))
            self.assertIsNone(effects_of(h.ks_effects, Established)[0].sa.leaf)
        h = self.harness(lambda g, i: self.fail("called"), kek=None)
        self.assertIsNone(h.registration(h.run(h.member())).kek)

    def test_evicted_member_refused(self):
        """An evicted member is refused at message 1 with AUTHENTICATION-FAILED and the reason "evicted"; the
        group's state is untouched and no leaf is asked for."""
        h = self.harness(lambda g, i: self.fail("called"), lambda g, i: (g, i) == ("g", "initiator.example"))
        gm_effects = h.run(h.member())
        (failed,) = effects_of(h.ks_effects, Failed)
        self.assertEqual(failed.notify, NotifyType.AUTHENTICATION_FAILED)
        self.assertIn("evicted", failed.reason)
        self.assertIn("pull_evicted", counts(h.ks_effects))
        self.assertEqual(effects_of(gm_effects, Established), [])
        self.assertEqual((h.group().keys.generations_made, h.group().keys.keks_made), (0, 0))

    def test_readmitted_member_registers(self):
        """is_evicted answering False lets the member register."""
        h = self.harness(None, lambda g, i: False)
        self.assertIsNotNone(h.registration(h.run(h.member())).kek)

    def test_full_tree(self):
        """A full tree (leaf_for raises LKHError) refuses the member with NO-PROPOSAL-CHOSEN."""
        def full(group_name, identity):
            raise LKHError("the LKH tree is full")

        h = self.harness(full)
        h.run(h.member())
        (failed,) = effects_of(h.ks_effects, Failed)
        self.assertEqual(failed.notify, NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertIn("pull_lkh_full", counts(h.ks_effects))


class ReadLKHKeysTests(unittest.TestCase):
    """The member's checks of message 4's LKH key packet."""

    def setUp(self):
        h = Harness([group()])
        grp = h.group()
        self.kek = grp.keys.kek(NOW)
        sa = download.sa_payload(grp, grp.keys.current(NOW), self.kek, ("127.0.0.1", 500), NOW)
        self.offered = read_policy(sa, MemberPolicy())
        self.kd = download.kd_payload(grp.keys.current(NOW), self.kek, (), 16)
        self.path = (NodeKey(13, 1, b"\x01" * 16), NodeKey(6, 2, b"\x02" * 16), NodeKey(3, 1, b"\x03" * 16))

    def read(self, packet):
        kd = KD(self.kd.key_packets + (packet,))
        return read_keys(self.offered, kd, 0, group=GroupId(number=1234), server=("127.0.0.2", 500), now=NOW,
                         asked_sender_ids=0, pfs=False)

    def refusal(self, packet):
        e = self.assertRaises(RegistrationRefused, self.read, packet)
        self.assertEqual(e.notify, NotifyType.INVALID_KEY_INFORMATION, e.reason)

    def test_path(self):
        """A download array of a leaf and its ancestors below the root gives lkh_path and lkh_leaf."""
        reg = self.read(lkh_wire.download_packet(self.kek.spi, self.path))
        self.assertEqual((reg.lkh_path, reg.lkh_leaf), (self.path, 13))

    def test_refusals(self):
        """Nodes that are no path up to a child of the root, the root itself, keys not of the KEK's size, an update
        array in GROUPKEY-PULL, another SPI, two LKH packets, or no array: INVALID-KEY-INFORMATION."""
        for path in (self.path[:2], self.path[1:] + self.path[:1], (NodeKey(1, 1, bytes(16)),),
                     (self.path[0], NodeKey(7, 1, bytes(16)), self.path[2]),
                     tuple(k._replace(key=bytes(32)) for k in self.path)):
            self.refusal(lkh_wire.download_packet(self.kek.spi, path))
        self.refusal(lkh_wire.update_packet(self.kek.spi, [LKHUpdate(1, 2, 2, 1, bytes(24))]))
        self.refusal(lkh_wire.download_packet(bytes(16), self.path))
        packet = lkh_wire.download_packet(self.kek.spi, self.path)
        self.refusal(attrs.evolve(packet, attributes=()))
        self.refusal(attrs.evolve(packet, attributes=(Attribute(1, b"\x01\x01\x00\x00"),)))
        e = self.assertRaises(RegistrationRefused, read_keys, self.offered, KD(self.kd.key_packets + (packet, packet)),
                              0, group=GroupId(number=1234), server=None, now=NOW, asked_sender_ids=0, pfs=False)
        self.assertEqual(e.notify, NotifyType.INVALID_KEY_INFORMATION)

    def test_without_kek(self):
        """An LKH key packet in a group without KEK is refused."""
        h = Harness([group(kek=None)])
        grp = h.group()
        sa = download.sa_payload(grp, grp.keys.current(NOW), None, ("127.0.0.1", 500), NOW)
        kd = download.kd_payload(grp.keys.current(NOW), None, (), 16)
        kd = KD(kd.key_packets + (lkh_wire.download_packet(self.kek.spi, self.path),))
        self.assertRaises(RegistrationRefused, read_keys, read_policy(sa, MemberPolicy()), kd, None,
                          group=GroupId(number=1234), server=None, now=NOW, asked_sender_ids=0, pfs=False)
        self.assertRaises(ValueError, download.kd_payload, grp.keys.current(NOW), None, (), 16, self.path)

    def test_sa_of_a_kek_alone(self):
        """An SA with the SAK and no SAT is refused in GROUPKEY-PULL and read in a PUSH (rekey=True); an SA with
        neither is refused in both."""
        sak = download.kek_payload(self.kek, REKEY, ("127.0.0.1", 500), NOW)
        self.assertRaises(RegistrationRefused, read_policy, GroupSA(payloads=(sak,)), MemberPolicy())
        offered = read_policy(GroupSA(payloads=(sak,)), MemberPolicy(), rekey=True)
        self.assertEqual((offered.teks, offered.kek.spi), ((), self.kek.spi))
        self.assertRaises(RegistrationRefused, read_policy, GroupSA(), MemberPolicy(), rekey=True)


def junk_strategy():
    kinds = st.sampled_from(["random", "short", "replay_other_mid", "forged_order", "unknown_group", "clear"])
    return st.tuples(kinds, st.binary(min_size=0, max_size=96), st.integers(1, 2**32 - 1))


class RobustnessTests(unittest.TestCase):
    def junk(self, h: Harness, kind: str, noise: bytes, mid: int, seen: list) -> bytes:
        sa = h.gm_sa
        header = Message(sa.initiator_cookie, sa.responder_cookie, PULL, 1, mid)
        if kind == "random":
            return header.header_bytes(len(noise) + 16) + noise + bytes(16)
        if kind == "short":
            return header.header_bytes(len(noise))[: 28 + len(noise) // 2] + noise[: len(noise) // 2]
        if kind == "replay_other_mid" and seen:
            d = seen[mid % len(seen)]
            return d[:20] + struct.pack("!I", mid) + d[24:]
        # Correctly encrypted and hashed (as HASH(1)) under a new M-ID, but the payloads of message 3 or 4, or a
        # request for a group nobody serves: out of order, or refused.
        if kind == "unknown_group":
            payloads = (Nonce(noise[:8].ljust(8, b"\0")), GroupId(number=mid % 1000 + 5000).identification())
        elif kind == "forged_order":
            payloads = (SEQ(mid % 100), KD(()))
        else:
            payloads = (KE(noise or b"\1"),)
        digest = hash_1(sa, mid, encode_chain(payloads, CTX))
        m = Message(sa.initiator_cookie, sa.responder_cookie, PULL, 0, mid, (Hash(digest), *payloads))
        if kind == "clear":
            return m.encode(CTX)
        return sa.last_iv.for_message_id(mid).encrypt(m, CTX)[0]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), members=st.integers(1, 4), junk=st.lists(junk_strategy(), max_size=12))
    def test_junk_never_corrupts_state(self, data, members, junk):
        """Malformed, replayed, out-of-order and refused PULL messages, mixed at random among concurrent good
        registrations, never raise, never make key material or give out sender IDs, and the good registrations
        all succeed with distinct sender IDs."""
        h = Harness([group((GCM, CBC), members=(IdentityPattern("*"),))], seed=data.draw(st.integers(0, 9)))
        machines = [h.member(pfs=i % 2 == 1, sender_ids=2) for i in range(members)]
        pending = []
        for i, gm in enumerate(machines):
            pending += [(i, "ks", s.data) for s in effects_of(gm.start(NOW, h.rng), Send)]
        pending += [(None, "junk", j) for j in junk]
        seen: list[bytes] = []
        registrations = {}
        for _ in range(200):
            if not pending:
                break
            i, direction, item = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            if direction == "junk":
                h.to_ks(self.junk(h, *item, seen))
            elif direction == "ks":
                seen.append(item)
                pending += [(i, "gm", s.data) for s in effects_of(h.to_ks(item), Send)]
            else:
                effects = h.to_gm(machines[i], item)
                pending += [(i, "ks", s.data) for s in effects_of(effects, Send)]
                registrations.update({i: e.sa for e in effects_of(effects, Established)})
        self.assertEqual(sorted(registrations), list(range(members)))
        keys = h.group().keys
        self.assertEqual((keys.generations_made, keys.keks_made), (1, 1))
        sids = [s for r in registrations.values() for s in r.sender_ids]
        self.assertEqual(len(sids), 2 * members)
        self.assertEqual(len(set(sids)), len(sids))
        self.assertEqual(keys.current(NOW).sender_ids.remaining, 65535 - 2 * members)
        self.assertEqual(len(effects_of(h.ks_effects, Established)), members)
        self.assertEqual(counts(h.ks_effects).count("internal_error"), 0)


class TsharkPullTests(unittest.TestCase):
    """tshark reads the four PULL messages, decrypted and written in the clear on port 848 (decryption with a keylog
    comes with the engine)."""

    def setUp(self):
        require_tshark()

    def capture(self, h: Harness) -> tuple[str, list[Message]]:
        (mid,) = h.wire
        datagrams = h.wire[mid]
        clear = []
        for d, plaintext in zip(datagrams, decrypt_exchange(h.gm_sa, datagrams)):
            m = decode_message(d, DOI.GDOI).with_plaintext(plaintext, DOI.GDOI)
            clear.append(attrs.evolve(m, flags=0, padding=b""))
        path = self.mktemp() + ".pcap"
        write_messages(path, [m.encode(CTX) for m in clear], sport=848, dport=848)
        return path, clear

    def test_four_messages(self):
        """Messages 1-4 of a registration with KEK, three TEKs and sender IDs dissect with no malformed or warning
        item, and tshark reads the group ID, the SA's SAK and SATs, the KD's key packets and SEQ as we sent them."""
        h = Harness([group((GCM, CBC, TEKPolicy("v6", TEKTransform.AES_CTR, V6, 256, "hmac-sha256")))])
        reg = h.registration(h.run(h.member(sender_ids=2)))
        pcap, clear = self.capture(h)
        self.assertEqual(problems(pcap), [])
        p1, p2, p3, p4 = packets(pcap)
        self.assertEqual(field_values(p1, "isakmp.exchangetype"), ["32"])
        self.assertEqual(field_values(p1, "isakmp.id.data.key_id"), ["00:00:04:d2"])
        self.assertEqual(field_values(p2, "isakmp.sa.doi"), ["2"])
        self.assertEqual(field_values(p2, "isakmp.sak.spi"), [reg.kek.spi.hex(":")])
        self.assertEqual(field_values(p2, "isakmp.sat.spi"), [t.spi.hex(":") for t in reg.teks])
        self.assertEqual(field_values(p2, "isakmp.sat.transform_id"), [str(t.transform_id) for t in reg.teks])
        self.assertEqual(field_values(p3, "isakmp.datapayload"), ["80:03:00:02"])  # GAP(SENDER_ID_REQUEST 2)
        kd = clear[3].payloads[2]
        self.assertEqual(field_values(p4, "isakmp.seq.seq"), ["0"])
        self.assertEqual(field_values(p4, "isakmp.kd.num_pkt"), [str(len(kd.key_packets))])
        self.assertEqual(field_values(p4, "isakmp.kd.payload.type"), ["2", "1", "1", "1", "4"])
        self.assertEqual(field_values(p4, "isakmp.kd.payload.spi"),
                         [reg.kek.spi.hex(":")] + [t.spi.hex(":") for t in reg.teks])

    def test_certificates_and_pop(self):
        """With CERT and POP (SIG payloads) in messages 3 and 4 tshark still finds nothing malformed."""
        members = pki.hierarchy("p256", sans=("gm.members.example.org",))
        leaf = members.leaf
        creds = certs.Credentials(leaf.certificate, (members.intermediate.certificate,), leaf.key)
        h = Harness([group()], credentials=creds, trust=certs.TrustStore((members.root.certificate,)))
        h.registration(h.run(h.member(credentials=creds)))
        pcap, _ = self.capture(h)
        self.assertEqual(problems(pcap), [])
        _, _, p3, p4 = packets(pcap)
        self.assertEqual(len(field_values(p3, "isakmp.cert.data")), 2)
        self.assertEqual(len(field_values(p3, "isakmp.sig")), 1)
        self.assertEqual(len(field_values(p4, "isakmp.sig")), 1)

    def test_gap_defect(self):
        """tshark defect "tshark-sa-gap-stops": with a GAP in the SA (after the SAK, as RFC 6407 orders them) tshark
        shows no SAT after it, and flags nothing."""
        h = Harness([group(gap=GAPPolicy(10, 20))])
        h.registration(h.run(h.member()))
        pcap, _ = self.capture(h)
        self.assertEqual(problems(pcap), [])
        _, p2, _, _ = packets(pcap)
        self.assertEqual(len(field_values(p2, "isakmp.sak.spi")), 1)
        self.assertEqual(field_values(p2, "isakmp.sat.spi"), [])
