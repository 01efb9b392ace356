"""The GROUPKEY-PUSH messages of the rekey service (gdoiserver.rekey.messages), read back as a member would."""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.codec.attributes import attribute_map
from gdoiserver.codec.constants import DOI, IDType, PayloadType
from gdoiserver.codec.gdoi import KEKAttr, KEKKeyAttr, KeyPacketType
from gdoiserver.codec.grammar import check, rule_for
from gdoiserver.doi.gdoi import push
from gdoiserver.doi.gdoi.download import kd_payload, sa_payload
from gdoiserver.doi.gdoi.hashes import payload_spans
from gdoiserver.doi.gdoi.registration import MemberPolicy, read_keys, read_policy
from gdoiserver.group.keys import Group, GroupKeys
from gdoiserver.group.lkh import LKHTree
from gdoiserver.group.policy import (
    GAPPolicy,
    GroupId,
    GroupPolicy,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
)
from gdoiserver.rekey import messages
from tests import pki
from tests.machine_pair import seeded_rng

NET = ipaddress.ip_network
SELECTOR = TrafficSelector(NET("0.0.0.0/0"), NET("239.1.1.1/32"), 17, 0, 5004)
CBC = TEKPolicy("cbc", TEKTransform.AES_CBC, SELECTOR, 256, "hmac-sha256", lifetime=600)
GCM = TEKPolicy("gcm", TEKTransform.AES_GCM, SELECTOR, 128, lifetime=600)
GID = GroupId(number=77)
SERVER = ("192.0.2.1", 848)
MEMBER = ("192.0.2.10", 848)


def group(teks=(CBC,), kind="p256", **rekey) -> Group:
    rekey.setdefault("multicast_address", ipaddress.ip_address("239.192.0.1"))
    transport = RekeyTransport(ipaddress.ip_address("192.0.2.1"), **rekey)
    p = GroupPolicy("g", teks, number=GID.number, kek=KEKPolicy(pki.key(kind), 128, lifetime=3000),
                    rekey=transport, gap=GAPPolicy(5, 10))
    keys = GroupKeys(p, seeded_rng(3))
    keys.install_kek(keys.make_kek(0.0))
    keys.new_generation(0.0)
    return Group(p, keys)


def registration(g: Group):
    """What a member holds after GROUPKEY-PULL at time 0."""
    keys = g.keys
    sa = sa_payload(g, keys.newest, keys.current_kek, MEMBER, 0.0)
    kd = kd_payload(keys.newest, keys.current_kek, (1,), 16)
    return read_keys(read_policy(sa, MemberPolicy()), kd, keys.current_kek.seq, group=GID, server=SERVER, now=0.0,
                     asked_sender_ids=1, pfs=False)


def opened(datagram: bytes, kek):
    """The payloads of a PUSH under ``kek`` (a KEKKeys), after the checks verify_push makes before it reads the
    SA and KD: decryption, the PUSH grammar and the SIG."""
    header, plaintext = push.open_push(datagram, kek.spi, kek.key, kek.policy.key_bits)
    message = header.with_plaintext(plaintext, DOI.GDOI, push.CTX)
    check(message, rule_for(push.PUSH, 1, doi=DOI.GDOI))
    _, sig_start, sig_end = payload_spans(plaintext, header.next_payload)[-1]
    data = push.signed_data(header, sig_end, plaintext[:sig_start])
    if not push.signature_holds(kek.policy.public_key_der, 3, data, message.payloads[-1].signature_data):
        raise AssertionError("the SIG does not verify")
    return message.payloads


def kinds(payloads) -> list:
    return [p.payload_type for p in payloads]


class CountingSigner:
    def __init__(self, inner):
        self.inner, self.size, self.count = inner, inner.size, 0

    def sign(self, data):
        self.count += 1
        return self.inner.sign(data)


class TEKRekeyTests(SynchronousTestCase):
    def test_member_reads_the_next_generation(self):
        """A member holding generation 1 reads the TEK rekey of generation 2: SEQ, the new TEKs' SPIs and keys,
        the old TEKs deleted, the KEK kept, the GAP delays."""
        g = group()
        reg = registration(g)
        old = g.keys.newest
        new = g.keys.make_generation(100.0)
        data = messages.tek_rekey(g, new, g.keys.current_kek, 1, 100.0, retired=[old], rng=seeded_rng(4))
        result = push.verify_push(data, reg.kek, reg.seq, group=GID, server=SERVER, now=100.0)
        self.assertEqual(result.seq, 1)
        self.assertIsNone(result.kek)
        ((got,), (tek,)) = result.teks, new.teks
        self.assertEqual((got.spi, got.encryption_key, got.integrity_key),
                         (tek.spi, tek.encryption_key, tek.integrity_key))
        self.assertEqual(got.lifetime, 600)
        self.assertEqual(result.deleted_teks, (old.teks[0].spi,))
        self.assertEqual((result.registration.activation_delay, result.registration.deactivation_delay), (5, 10))

    def test_layout(self):
        """SEQ, D, SA(GAP, SAT), KD(TEK packets only), SIG: no SAK, no KEK packet, no SID packet even for a
        counter-mode TEK (sender IDs stay with the member's registration, RFC 6054)."""
        g = group((CBC, GCM))
        old, new = g.keys.newest, g.keys.make_generation(50.0)
        payloads = opened(messages.tek_rekey(g, new, g.keys.current_kek, 9, 50.0, retired=[old],
                                             rng=seeded_rng(5)), g.keys.current_kek)
        self.assertEqual(kinds(payloads), [PayloadType.SEQ, PayloadType.D, PayloadType.SA, PayloadType.KD,
                                           PayloadType.SIG])
        seq, delete, sa, kd, _ = payloads
        self.assertEqual(seq.sequence_number, 9)
        self.assertEqual(set(delete.spis), {t.spi for t in old.teks})
        self.assertEqual([p.payload_type for p in sa.payloads], [PayloadType.GAP, PayloadType.SAT, PayloadType.SAT])
        self.assertEqual([p.kd_type for p in kd.key_packets], [KeyPacketType.TEK, KeyPacketType.TEK])
        self.assertEqual([p.spi for p in kd.key_packets], [t.spi for t in new.teks])

    def test_no_delete_without_retired(self):
        """With no older generation to retire, the PUSH carries no Delete."""
        g = group()
        payloads = opened(messages.tek_rekey(g, g.keys.make_generation(5.0), g.keys.current_kek, 1, 5.0,
                                             rng=seeded_rng(6)), g.keys.current_kek)
        self.assertEqual(kinds(payloads), [PayloadType.SEQ, PayloadType.SA, PayloadType.KD, PayloadType.SIG])

    def test_with_new_kek(self):
        """A TEK rekey that also changes the KEK goes under the old KEK, with the new SAK and KEK key packet and
        a Delete of the old KEK; the member switches KEK and the next PUSH under the new one verifies."""
        g = group()
        reg = registration(g)
        under = g.keys.current_kek
        new_kek = g.keys.make_kek(200.0)
        gen = g.keys.make_generation(200.0)
        data = messages.tek_rekey(g, gen, under, 4, 200.0, new_kek=new_kek, retired=[g.keys.newest],
                                  rng=seeded_rng(7))
        result = push.verify_push(data, reg.kek, reg.seq, group=GID, server=SERVER, now=200.0)
        self.assertEqual((result.kek.spi, result.kek.key), (new_kek.spi, new_kek.key))
        self.assertEqual(result.kek.lifetime, 3000)
        self.assertEqual(result.deleted_keks, (under.spi,))
        under.seq = 4
        g.keys.install_kek(new_kek)
        g.keys.install(gen)
        after = messages.tek_rekey(g, g.keys.make_generation(300.0), new_kek, 5, 300.0, rng=seeded_rng(8))
        self.assertEqual(push.verify_push(after, result.kek_after(reg.kek), 4, group=GID, server=SERVER).seq, 5)

    def test_signed_once(self):
        """However many members read it, a rekey is signed once."""
        g = group()
        signer = CountingSigner(push.Signer.for_kek(g.keys.current_kek))
        data = messages.tek_rekey(g, g.keys.make_generation(1.0), g.keys.current_kek, 1, 1.0, signer=signer,
                                  rng=seeded_rng(9))
        reg = registration(g)
        for _ in range(3):
            push.verify_push(data, reg.kek, 0, group=GID, server=SERVER)
        self.assertEqual(signer.count, 1)

    def test_seq_must_rise(self):
        """A SEQ not above the KEK's last one is refused on the key server."""
        g = group()
        g.keys.current_kek.seq = 8
        self.assertRaises(ValueError, messages.tek_rekey, g, g.keys.make_generation(1.0), g.keys.current_kek, 8,
                          1.0, rng=seeded_rng(10))


class SAKTests(SynchronousTestCase):
    def test_multicast_destination(self):
        """The SAK names the key server as source and the multicast group as destination."""
        g = group()
        sak = messages.rekey_sak(g, g.keys.current_kek, 0.0)
        self.assertEqual((sak.src.value(), sak.src.port), (ipaddress.ip_address("192.0.2.1"), 848))
        self.assertEqual(sak.dst.value(), ipaddress.ip_address("239.192.0.1"))

    def test_unicast_destination(self):
        """With unicast rekeys only, one datagram goes to every member: the SAK's destination is the unspecified
        address of the source's IP version, port 0."""
        g = group(multicast_address=None, unicast=True)
        sak = messages.rekey_sak(g, g.keys.current_kek, 0.0)
        self.assertEqual((sak.dst.id_type, sak.dst.value(), sak.dst.port),
                         (IDType.IPV4_ADDR, ipaddress.ip_address("0.0.0.0"), 0))

    def test_ack_requested(self):
        """With acknowledgements on, the SAK carries KEK_ACK_REQUESTED = 1 (RFC 8263), once."""
        g = group(ack=True)
        sak = messages.rekey_sak(g, g.keys.current_kek, 0.0)
        values = [a.as_int() for a in sak.attributes if a.type == KEKAttr.KEK_ACK_REQUESTED]
        self.assertEqual(values, [1])
        self.assertEqual([a.type for a in messages.rekey_sak(group(), g.keys.current_kek, 0.0).attributes
                          if a.type == KEKAttr.KEK_ACK_REQUESTED], [])

    def test_ack_requested_in_a_kek_rekey(self):
        """The SAK of a KEK rekey asks for acknowledgements too."""
        g = group(ack=True)
        payloads = opened(messages.kek_rekey(g, g.keys.current_kek, g.keys.make_kek(1.0), 1, 1.0,
                                             rng=seeded_rng(11)), g.keys.current_kek)
        sak = payloads[2].kek
        self.assertIn(KEKAttr.KEK_ACK_REQUESTED, attribute_map(sak.attributes))


class KEKRekeyTests(SynchronousTestCase):
    def test_layout(self):
        """SEQ, D(old KEK, Protocol-ID 0, 16-octet SPI), SA(SAK of the new KEK alone), KD(the new KEK's key and
        the signature key), SIG, under the old KEK."""
        g = group()
        under, new = g.keys.current_kek, g.keys.make_kek(1000.0)
        payloads = opened(messages.kek_rekey(g, under, new, 3, 1000.0, rng=seeded_rng(12)), under)
        self.assertEqual(kinds(payloads), [PayloadType.SEQ, PayloadType.D, PayloadType.SA, PayloadType.KD,
                                           PayloadType.SIG])
        seq, delete, sa, kd, _ = payloads
        self.assertEqual(seq.sequence_number, 3)
        self.assertEqual((delete.protocol_id, delete.spi_size, delete.spis), (0, 16, (under.spi,)))
        self.assertEqual([p.payload_type for p in sa.payloads], [PayloadType.SAK])
        self.assertEqual(sa.kek.spi, new.spi)
        self.assertEqual(attribute_map(sa.kek.attributes)[KEKAttr.KEK_KEY_LIFETIME].as_int(), 3000)
        (packet,) = kd.key_packets
        self.assertEqual((packet.kd_type, packet.spi), (KeyPacketType.KEK, new.spi))
        keys = attribute_map(packet.attributes)
        self.assertEqual(keys[KEKKeyAttr.KEK_ALGORITHM_KEY].as_bytes(), new.key)
        self.assertEqual(keys[KEKKeyAttr.SIG_ALGORITHM_KEY].as_bytes(), new.policy.public_key_der)

    def test_new_kek_does_not_open_it(self):
        """The KEK rekey is readable under the old KEK only."""
        g = group()
        under, new = g.keys.current_kek, g.keys.make_kek(1.0)
        data = messages.kek_rekey(g, under, new, 1, 1.0, rng=seeded_rng(13))
        error = self.assertRaises(push.PushError, push.open_push, data, new.spi, new.key, 128)
        self.assertEqual(error.counter, push.UNKNOWN_KEK)


class EvictionMessageTests(SynchronousTestCase):
    def test_layout_and_members(self):
        """An eviction PUSH: SEQ, D(old KEK), SA(SAK of the new KEK), KD(the KEK packet without its key, the LKH
        update), SIG, under the old KEK.  A member that stays reaches the new KEK through its LKH path; the evicted
        one opens the message and is refused."""
        g = group()
        under, new = g.keys.current_kek, g.keys.make_kek(1.0)
        tree = LKHTree(4, 16, seeded_rng(20))
        tree.set_root(under.key)
        stays, leaves = tree.join(), tree.join()
        paths = {leaf: tree.path(leaf) for leaf in (stays, leaves)}
        updates, _ = tree.evict(leaves, new.key)
        data = messages.eviction(g, under, new, 2, push.eviction_kd(new, updates), 1.0, rng=seeded_rng(14))
        payloads = opened(data, under)
        self.assertEqual(kinds(payloads), [PayloadType.SEQ, PayloadType.D, PayloadType.SA, PayloadType.KD,
                                           PayloadType.SIG])
        self.assertEqual(payloads[1].spis, (under.spi,))
        self.assertEqual(payloads[2].kek.spi, new.spi)
        (kek_packet,) = payloads[3].packets_of(KeyPacketType.KEK)
        self.assertNotIn(KEKKeyAttr.KEK_ALGORITHM_KEY, attribute_map(kek_packet.attributes))
        member = registration(g).kek
        result = push.verify_push(data, member, 0, group=GID, server=SERVER, lkh_path=paths[stays])
        self.assertEqual((result.kek.spi, result.kek.key), (new.spi, new.key))
        error = self.assertRaises(push.PushError, push.verify_push, data, member, 0, group=GID, server=SERVER,
                                  lkh_path=paths[leaves])
        self.assertEqual(error.counter, push.REFUSED)
