"""GROUPKEY-PUSH as pure functions (gdoiserver.doi.gdoi.push): build on the key server, verify on the member."""

import ipaddress
import random

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.codec.attributes import Attribute
from gdoiserver.codec.constants import DOI
from gdoiserver.codec.gdoi import KD, GroupSA, KEKAttr, KEKKeyAttr, KeyPacket, KeyPacketType, LKHKeyAttr
from gdoiserver.codec.payloads import Delete
from gdoiserver.doi.gdoi import push
from gdoiserver.doi.gdoi import lkh_wire
from gdoiserver.doi.gdoi.download import kd_payload, kek_payload, sa_payload
from gdoiserver.doi.gdoi.registration import MemberPolicy, read_keys, read_policy
from gdoiserver.group.keys import Group, GroupKeys, KEKKeys
from gdoiserver.group.lkh import LKHTree
from gdoiserver.group.policy import (
    GroupId,
    GroupPolicy,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
)
from tests import pki
from tests.tshark import field_values, packets, problems, require_tshark, write_messages

NET = ipaddress.ip_network
SELECTOR = TrafficSelector(NET("0.0.0.0/0"), NET("239.1.1.1/32"), 17, 0, 5004)
CBC = TEKPolicy("cbc", TEKTransform.AES_CBC, SELECTOR, 256, "hmac-sha256", lifetime=600)
REKEY = RekeyTransport(ipaddress.ip_address("192.0.2.1"), multicast_address=ipaddress.ip_address("239.192.0.1"))
MEMBER = ("192.0.2.10", 848)
GID = GroupId(number=1234)
SERVER = ("192.0.2.1", 848)


def seeded_rng(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


class KeyServer:
    """One group's key state on the key server, and what a member holds after GROUPKEY-PULL."""

    def __init__(self, kind: str, signature_hash: str = "sha256", seed: int = 1):
        kek_policy = KEKPolicy(pki.key(kind), 128, signature_hash, lifetime=3000)
        policy = GroupPolicy("g", (CBC,), number=GID.number, kek=kek_policy, rekey=REKEY)
        self.group = Group(policy, GroupKeys(policy, seeded_rng(seed)))
        self.kek = self.group.keys.kek(0.0)
        self.generation = self.group.keys.current(0.0)
        self.rng = seeded_rng(seed + 100)

    def pull(self, lkh_path=None):
        """The member's registration after GROUPKEY-PULL (SEQ 0, SA and KD as download.py builds them)."""
        sa = sa_payload(self.group, self.generation, self.kek, MEMBER, 0.0)
        kd = kd_payload(self.generation, self.kek, (), 16, lkh_path)
        return read_keys(read_policy(sa, MemberPolicy()), kd, self.kek.seq, group=GID, server=SERVER, now=0.0,
                         asked_sender_ids=0, pfs=False)

    def rekey(self, now: float, *, new_kek: KEKKeys | None = None, deletes=(), signer=None, seq=None):
        """A PUSH under the current KEK with a new TEK generation (and ``new_kek``, if given)."""
        self.generation = self.group.keys.new_generation(now)
        sa = sa_payload(self.group, self.generation, new_kek, MEMBER, now)
        kd = kd_payload(self.generation, new_kek, (), 16)
        seq = self.kek.seq + 1 if seq is None else seq
        data = push.build_push(self.kek, seq, sa, kd, deletes, signer, rng=self.rng)
        self.kek.seq = max(self.kek.seq, seq)
        return data


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


class CountingSigner:
    """A Signer that counts its signatures and keeps what it signed."""

    def __init__(self, inner: push.Signer):
        self.inner = inner
        self.size = inner.size
        self.signed = []

    def sign(self, data: bytes) -> bytes:
        self.signed.append(data)
        return self.inner.sign(data)


class PushRoundTripTests(SynchronousTestCase):
    """build_push then verify_push gives the member the key server's new keys."""

    def check_round_trip(self, kind: str, signature_hash: str = "sha256"):
        ks = KeyServer(kind, signature_hash)
        reg = ks.pull()
        data = ks.rekey(10.0)
        result = push.verify_push(data, reg.kek, reg.seq, group=GID, server=SERVER, now=10.0)
        self.assertEqual(result.seq, 1)
        self.assertIsNone(result.kek)
        self.assertIs(result.kek_after(reg.kek), reg.kek)
        (tek,) = ks.generation.teks
        (got,) = result.teks
        self.assertEqual((got.spi, got.encryption_key, got.integrity_key),
                         (tek.spi, tek.encryption_key, tek.integrity_key))
        self.assertNotEqual(got.spi, reg.teks[0].spi)

    def test_rsa(self):
        """An RSA-2048 signed PUSH (SHA-256) round-trips: SEQ 1, the new TEK's SPI and keys, the KEK kept."""
        self.check_round_trip("rsa2048")

    def test_ecdsa_p256(self):
        """An ECDSA P-256 signed PUSH (SHA-256) round-trips."""
        self.check_round_trip("p256")

    def test_ecdsa_p384_sha384(self):
        """An ECDSA P-384 signed PUSH over SHA-384 round-trips."""
        self.check_round_trip("p384", "sha384")

    def test_header(self):
        """The header: cookies = KEK SPI, exchange 33, Message ID 0, Encryption flag, first payload SEQ, and a
        Length counting the IV and whole AES blocks."""
        ks = KeyServer("p256")
        data = ks.rekey(1.0)
        self.assertEqual(data[:16], ks.kek.spi)
        self.assertEqual(data[16:20], bytes([18, 0x10, 33, 1]))  # SEQ, version 1.0, GROUPKEY-PUSH, E
        self.assertEqual(data[20:24], bytes(4))
        self.assertEqual(int.from_bytes(data[24:28], "big"), len(data))
        self.assertEqual((len(data) - 28) % 16, 0)

    def test_signed_once(self):
        """build_push signs exactly once per message, and two members read the same datagram."""
        ks = KeyServer("p256")
        reg = ks.pull()
        signer = CountingSigner(push.Signer.for_kek(ks.kek))
        data = ks.rekey(1.0, signer=signer)
        self.assertEqual(len(signer.signed), 1)
        for _ in range(2):
            self.assertEqual(push.verify_push(data, reg.kek, 0, group=GID, server=SERVER).seq, 1)

    def test_fresh_iv(self):
        """Two PUSHes of the same body under one KEK differ from their first ciphertext block on (a fresh IV)."""
        ks = KeyServer("p256")
        sa = sa_payload(ks.group, ks.generation, None, MEMBER, 0.0)
        kd = kd_payload(ks.generation, None, (), 16)
        a = push.build_push(ks.kek, 1, sa, kd, rng=ks.rng)
        b = push.build_push(ks.kek, 1, sa, kd, rng=ks.rng)
        self.assertNotEqual(a[28:44], b[28:44])

    def test_seq_must_rise_on_the_key_server(self):
        """build_push refuses a SEQ not above the KEK's last one, or one beyond 32 bits."""
        ks = KeyServer("p256")
        ks.kek.seq = 5
        sa = sa_payload(ks.group, ks.generation, None, MEMBER, 0.0)
        kd = kd_payload(ks.generation, None, (), 16)
        self.assertRaises(ValueError, push.build_push, ks.kek, 5, sa, kd)
        self.assertRaises(ValueError, push.build_push, ks.kek, 1 << 32, sa, kd)


class PushRejectionTests(SynchronousTestCase):
    """verify_push refuses what it must, each failure with its own counter."""

    def setUp(self):
        self.ks = KeyServer("p256")
        self.reg = self.ks.pull()

    def refused(self, data: bytes, last_seq: int = 0, kek=None) -> push.PushError:
        return self.assertRaises(push.PushError, push.verify_push, data, kek or self.reg.kek, last_seq, group=GID,
                                 server=SERVER)

    def test_tampered_first_block(self):
        """A bit flipped in the IV garbles the SEQ payload's header: push_malformed."""
        data = self.ks.rekey(1.0)
        self.assertEqual(self.refused(flip(data, 28 + 2)).counter, push.MALFORMED)  # SEQ Payload Length

    def test_tampered_last_block(self):
        """A bit flipped in the last ciphertext block garbles signature octets: push_bad_signature."""
        data = self.ks.rekey(1.0)
        self.assertEqual(self.refused(flip(data, len(data) - 1)).counter, push.BAD_SIGNATURE)

    def test_tampered_seq(self):
        """A SEQ changed in clear and encrypted again under the KEK no longer matches the SIG."""
        data = self.ks.rekey(1.0)
        header, plaintext = push.open_push(data, self.reg.kek.spi, self.reg.kek.key, 128)
        forged = plaintext[:4] + (99).to_bytes(4, "big") + plaintext[8:]
        cipher = push.kek_cipher(128)
        iv = bytes(16)
        again = header.header_bytes(16 + len(forged)) + iv + cipher.encrypt(self.reg.kek.key, iv, forged)
        self.assertEqual(self.refused(again).counter, push.BAD_SIGNATURE)

    def test_wrong_signing_key(self):
        """A PUSH signed with another key (of the same kind) is push_bad_signature."""
        data = self.ks.rekey(1.0, signer=push.Signer(pki.key("p256", 3), 3))
        error = self.refused(data)
        self.assertEqual(error.counter, push.BAD_SIGNATURE)
        self.assertIn("SIG", error.reason)

    def test_other_kek(self):
        """A PUSH under a KEK SPI the member does not hold is push_unknown_kek."""
        data = self.ks.rekey(1.0)
        other = attrs.evolve(self.reg.kek, spi=bytes(range(16)))
        self.assertEqual(self.refused(data, kek=other).counter, push.UNKNOWN_KEK)

    def test_in_clear(self):
        """A PUSH without the Encryption flag is push_malformed (RFC 6407 section 4: HDR*)."""
        data = self.ks.rekey(1.0)
        header, plaintext = push.open_push(data, self.reg.kek.spi, self.reg.kek.key, 128)
        clear = attrs.evolve(header, flags=0, ciphertext=plaintext).encode()
        self.assertEqual(self.refused(clear).counter, push.MALFORMED)

    def test_replay(self):
        """An accepted PUSH sent again is push_replay; so is an older one; the next one is accepted."""
        first = self.ks.rekey(1.0)
        second = self.ks.rekey(2.0)
        self.assertEqual(push.verify_push(first, self.reg.kek, 0, group=GID, server=SERVER).seq, 1)
        self.assertEqual(self.refused(first, last_seq=1).counter, push.REPLAY)
        self.assertEqual(push.verify_push(second, self.reg.kek, 1, group=GID, server=SERVER).seq, 2)
        self.assertEqual(self.refused(second, last_seq=2).counter, push.REPLAY)
        self.assertEqual(self.refused(first, last_seq=2).counter, push.REPLAY)

    def test_bad_keys_refused(self):
        """A correctly signed PUSH whose KD gives a TEK key of the wrong length is push_refused."""
        ks = self.ks
        gen = ks.group.keys.new_generation(1.0)
        sa = sa_payload(ks.group, gen, None, MEMBER, 1.0)
        kd = kd_payload(gen, None, (), 16)
        packet = kd.key_packets[0]
        short = attrs.evolve(packet, attributes=(Attribute(1, b"\1" * 5),) + packet.attributes[1:])
        data = push.build_push(ks.kek, 1, sa, KD((short,)), rng=ks.rng)
        self.assertEqual(self.refused(data).counter, push.REFUSED)


class PushStateTests(SynchronousTestCase):
    """What a PUSH changes: a new KEK, retired TEKs and KEKs."""

    def test_kek_rekey(self):
        """A PUSH with a new SAK and KEK key packet switches the member to the new KEK; the next PUSH comes under
        it with the next SEQ, and the old KEK no longer opens it."""
        ks = KeyServer("rsa2048")
        reg = ks.pull()
        policy = ks.group.policy.kek
        new = KEKKeys(policy, bytes(range(1, 17)), b"\x42" * 16, 5.0, 3005.0, 0)
        data = ks.rekey(5.0, new_kek=new, deletes=(push.delete_kek(ks.kek.spi),))
        result = push.verify_push(data, reg.kek, reg.seq, group=GID, server=SERVER, now=5.0)
        self.assertEqual(result.kek.spi, new.spi)
        self.assertEqual(result.kek.key, new.key)
        self.assertEqual(result.deleted_keks, (ks.kek.spi,))
        kek_state = result.kek_after(reg.kek)
        self.assertIs(kek_state, result.kek)
        new.seq = ks.kek.seq  # the counter carries on under the new KEK (RFC 3547 section 4)
        ks.kek = new
        after = ks.rekey(6.0)
        self.assertEqual(push.verify_push(after, kek_state, result.seq, group=GID, server=SERVER).seq, 2)
        error = self.assertRaises(push.PushError, push.verify_push, after, reg.kek, result.seq)
        self.assertEqual(error.counter, push.UNKNOWN_KEK)

    def test_delete_retires_teks(self):
        """A PUSH with a Delete of the old TEK SPIs lists them as retired, beside the new TEK."""
        ks = KeyServer("p256")
        reg = ks.pull()
        old = tuple(t.spi for t in reg.teks)
        data = ks.rekey(3.0, deletes=(push.delete_teks(old),))
        result = push.verify_push(data, reg.kek, 0, group=GID, server=SERVER)
        self.assertEqual(result.deleted_teks, old)
        self.assertEqual(result.deleted_keks, ())
        self.assertNotIn(result.teks[0].spi, old)

    def test_delete_of_unknown_protocol(self):
        """A Delete of an SPI size and Protocol-ID that is neither a TEK's nor a KEK's is push_refused."""
        ks = KeyServer("p256")
        reg = ks.pull()
        odd = Delete(DOI.GDOI, 7, (b"\1\2\3\4",), 4)
        data = ks.rekey(3.0, deletes=(odd,))
        error = self.assertRaises(push.PushError, push.verify_push, data, reg.kek, 0)
        self.assertEqual(error.counter, push.REFUSED)


class PushWireTests(SynchronousTestCase):
    """The exact octets signed, and tshark's reading of a decrypted PUSH."""

    def test_golden_signed_data(self):
        """The signed data of a small PUSH, octet by octet: "rekey", the header (E set, Length with the SIG,
        unpadded), SEQ, SA, KD with Next Payload SIG; the signature over its SHA-256 verifies."""
        spi = bytes.fromhex("0102030405060708" "1112131415161718")
        kek = KEKKeys(KEKPolicy(pki.key("p256")), spi, bytes(16), 0.0, 100.0, 6)
        kd = KD((KeyPacket(KeyPacketType.TEK, bytes.fromhex("e5910001"), (Attribute(1, b"\xaa" * 16),)),))
        signer = CountingSigner(push.Signer.for_kek(kek))
        push.build_push(kek, 7, GroupSA(), kd, signer=signer, rng=lambda n: bytes(n))
        expected = bytes.fromhex(
            "72656b6579"  # "rekey"
            "0102030405060708" "1112131415161718"  # cookies = KEK SPI
            "12"  # Next Payload: SEQ (18)
            "10"  # version 1.0
            "21"  # exchange 33, GROUPKEY-PUSH
            "01"  # flags: Encryption
            "00000000"  # Message ID 0
            "0000009d"  # Length 157 = 28 + SEQ 8 + SA 16 + KD 37 + SIG 68 (4 + P-256 r|s 64), no IV, no padding
            "01" "00" "0008"  # SEQ: Next Payload SA, RESERVED, Payload Length 8
            "00000007"  # Sequence Number 7
            "11" "00" "0010"  # SA: Next Payload KD (17), RESERVED, Payload Length 16
            "00000002"  # DOI 2 (GDOI)
            "00000000"  # Situation 0
            "0000" "0000"  # SA Attribute Next Payload none, RESERVED
            "09" "00" "0025"  # KD: Next Payload SIG (9), RESERVED, Payload Length 37
            "0001" "0000"  # Number of Key Packets 1, RESERVED
            "01" "00" "001d" "04"  # KD Type TEK, RESERVED, KD Length 29, SPI Size 4
            "e5910001"  # SPI
            "0001" "0010"  # TEK_ALGORITHM_KEY (TLV), Length 16
            + "aa" * 16  # the key
        )
        (data,) = signer.signed
        self.assertEqual(data, expected)
        self.assertTrue(push.signature_holds(kek.policy.public_key_der, 3, expected, signer.inner.sign(expected)))

    def test_tshark_reads_the_decrypted_push(self):
        """tshark decodes a decrypted PUSH on UDP 848 (written in clear) with no malformed or warning items: SEQ,
        the SAT SPI, the KD's key packets, a Delete and the SIG as we sent them."""
        require_tshark()
        ks = KeyServer("rsa2048")
        reg = ks.pull()
        old = reg.teks[0].spi
        data = ks.rekey(1.0, deletes=(push.delete_teks((old,)),))
        header, plaintext = push.open_push(data, reg.kek.spi, reg.kek.key, 128)
        clear = attrs.evolve(header, flags=0, ciphertext=None).with_plaintext(plaintext, DOI.GDOI)
        self.assertEqual(clear.padding, bytes(len(clear.padding)))
        path = self.mktemp() + ".pcap"
        write_messages(path, [attrs.evolve(clear, padding=b"").encode(push.CTX)], sport=848, dport=848)
        self.assertEqual(problems(path), [])
        (pkt,) = packets(path)
        self.assertEqual(field_values(pkt, "isakmp.exchangetype"), ["33"])
        self.assertEqual(field_values(pkt, "isakmp.seq.seq"), ["1"])
        self.assertEqual(field_values(pkt, "isakmp.sat.spi"), [ks.generation.teks[0].spi.hex(":")])
        self.assertEqual(field_values(pkt, "isakmp.kd.payload.type"), ["1"])
        self.assertEqual(field_values(pkt, "isakmp.delete.spi"), [old.hex(":")])
        self.assertEqual(field_values(pkt, "isakmp.delete.doi"), ["2"])
        self.assertEqual(field_values(pkt, "isakmp.sig"), [clear.payloads[-1].signature_data.hex(":")])


class EvictionTests(SynchronousTestCase):
    """An eviction PUSH (RFC 6407 section 5.6.3, LKH): the new KEK reaches every member but the evicted one."""

    def setUp(self):
        self.ks = KeyServer("p256")
        self.tree = LKHTree(3, 16, seeded_rng(7))
        self.tree.set_root(self.ks.kek.key)
        self.regs = {}
        for _ in range(6):
            leaf = self.tree.join()
            self.regs[leaf] = self.ks.pull(self.tree.path(leaf))

    def new_kek(self, now: float, spi_seed: int = 1) -> KEKKeys:
        return KEKKeys(self.ks.group.policy.kek, bytes(range(spi_seed, spi_seed + 16)), bytes(seeded_rng(now)(16)),
                       now, now + 3000, self.ks.kek.seq)

    def evict(self, leaf: int, now: float = 5.0, kd=None):
        """The eviction PUSH under the current KEK: SEQ, D(old KEK), SA(SAK of the new KEK), KD, SIG."""
        new = self.new_kek(now, int(now))
        updates, _ = self.tree.evict(leaf, new.key)
        sa = GroupSA(payloads=(kek_payload(new, REKEY, MEMBER, now),))
        kd = push.eviction_kd(new, updates) if kd is None else kd(new, updates)
        seq = self.ks.kek.seq + 1
        data = push.build_push(self.ks.kek, seq, sa, kd, (push.delete_kek(self.ks.kek.spi),), rng=self.ks.rng)
        self.ks.kek.seq = new.seq = seq  # the counter carries on under the new KEK (RFC 3547 section 4)
        return new, data

    def verify(self, data, reg, kek=None, seq=None, lkh_path=None):
        return push.verify_push(data, kek or reg.kek, reg.seq if seq is None else seq, group=GID, server=SERVER,
                                lkh_path=reg.lkh_path if lkh_path is None else lkh_path)

    def test_registration_carries_the_path(self):
        """GROUPKEY-PULL's KD gives each member its leaf and the keys of its path below the root."""
        for leaf, reg in self.regs.items():
            self.assertEqual(reg.lkh_leaf, leaf)
            self.assertEqual(reg.lkh_path, self.tree.path(leaf))

    def test_remaining_members_follow(self):
        """Each other member reads the new KEK (its key from the LKH root, its SPI and signature key from the SAK
        and KEK packet), its new LKH path, and the old KEK's Delete; the evicted member's PUSH is refused."""
        new, data = self.evict(10)
        for leaf, reg in self.regs.items():
            if leaf == 10:
                error = self.assertRaises(push.PushError, self.verify, data, reg)
                self.assertEqual(error.counter, push.REFUSED)
                self.assertIn("LKH", error.reason)
                continue
            result = self.verify(data, reg)
            self.assertEqual((result.kek.spi, result.kek.key), (new.spi, new.key))
            self.assertEqual(result.kek.signature_public_key, reg.kek.signature_public_key)
            self.assertEqual(result.lkh_path, self.tree.path(leaf))
            self.assertEqual(result.lkh_path_after(reg.lkh_path), self.tree.path(leaf))
            self.assertEqual(result.deleted_keks, (self.ks.kek.spi,))
            self.assertEqual(result.teks, ())

    def test_next_rekey_reaches_only_the_rest(self):
        """The TEK rekey after the eviction goes under the new KEK: the others accept it; the evicted member cannot
        even decrypt it (push_unknown_kek under the KEK it holds, garbage under its key)."""
        new, data = self.evict(9)
        following = {leaf: self.verify(data, reg) for leaf, reg in self.regs.items() if leaf != 9}
        self.ks.kek = new
        tek_rekey = self.ks.rekey(6.0)
        for leaf, result in following.items():
            kek = result.kek_after(self.regs[leaf].kek)
            self.assertEqual(push.verify_push(tek_rekey, kek, result.seq).seq, result.seq + 1)
        evicted = self.regs[9]
        error = self.assertRaises(push.PushError, self.verify, tek_rekey, evicted, seq=1)
        self.assertEqual(error.counter, push.UNKNOWN_KEK)
        error = self.assertRaises(push.PushError, push.verify_push, tek_rekey, attrs.evolve(evicted.kek, spi=new.spi),
                                  1)
        self.assertIn(error.counter, (push.MALFORMED, push.BAD_SIGNATURE))

    def test_two_evictions(self):
        """Members keep the path each eviction gives them and follow the next one; both evicted members fail."""
        first, data = self.evict(8, now=5.0)
        paths = {leaf: self.verify(data, reg).lkh_path for leaf, reg in self.regs.items() if leaf != 8}
        keks = {leaf: first for leaf in paths}
        self.ks.kek = first
        second, data = self.evict(12, now=7.0)
        for leaf, path in paths.items():
            reg = self.regs[leaf]
            if leaf == 12:
                self.assertRaises(push.PushError, self.verify, data, reg, kek=self.verify_kek(keks[leaf]), seq=1,
                                  lkh_path=path)
                continue
            result = self.verify(data, reg, kek=self.verify_kek(keks[leaf]), seq=1, lkh_path=path)
            self.assertEqual(result.kek.key, second.key)
            self.assertEqual(result.lkh_path, self.tree.path(leaf))

    def verify_kek(self, kek: KEKKeys):
        """The member-side KEKInfo of a KEK the key server made (as a member holds it after a KEK rekey)."""
        reg = next(iter(self.regs.values()))
        return attrs.evolve(reg.kek, spi=kek.spi, key=kek.key)

    def test_member_without_lkh_keys(self):
        """A member registered without LKH keys cannot follow an eviction: push_refused."""
        _, data = self.evict(11)
        error = self.assertRaises(push.PushError, self.verify, data, self.regs[8], lkh_path=())
        self.assertEqual(error.counter, push.REFUSED)

    def test_kek_key_beside_an_lkh_update(self):
        """A KEK packet that carries its key and an LKH update of the root at once is push_refused."""
        def both(new, updates):
            kd = push.eviction_kd(new, updates)
            kek = KeyPacket(KeyPacketType.KEK, new.spi, (Attribute(KEKKeyAttr.KEK_ALGORITHM_KEY, new.key),
                                                         *kd.key_packets[0].attributes))
            return KD((kek, kd.key_packets[1]))

        _, data = self.evict(11, kd=both)
        self.assertEqual(self.assertRaises(push.PushError, self.verify, data, self.regs[8]).counter, push.REFUSED)

    def test_kek_without_key_or_update(self):
        """A KEK packet without KEK_ALGORITHM_KEY and no LKH update to bring it is push_refused."""
        _, data = self.evict(11, kd=lambda new, updates: KD(push.eviction_kd(new, updates).key_packets[:1]))
        self.assertEqual(self.assertRaises(push.PushError, self.verify, data, self.regs[8]).counter, push.REFUSED)

    def test_download_array_in_a_push(self):
        """An LKH download array (keys in clear under the KEK) has no place in a PUSH: push_refused."""
        def download(new, updates):
            kd = push.eviction_kd(new, updates)
            return KD((kd.key_packets[0], lkh_wire.download_packet(new.spi, self.tree.path(8))))

        _, data = self.evict(11, kd=download)
        self.assertEqual(self.assertRaises(push.PushError, self.verify, data, self.regs[8]).counter, push.REFUSED)

    def test_lkh_packet_of_another_spi(self):
        """An LKH update under an SPI that is not the new KEK's is push_refused."""
        def elsewhere(new, updates):
            kd = push.eviction_kd(new, updates)
            return KD((kd.key_packets[0], attrs.evolve(kd.key_packets[1], spi=bytes(16))))

        _, data = self.evict(11, kd=elsewhere)
        self.assertEqual(self.assertRaises(push.PushError, self.verify, data, self.regs[8]).counter, push.REFUSED)

    def test_tshark_reads_the_decrypted_eviction(self):
        """tshark decodes a decrypted eviction PUSH with no malformed or warning items: the KD's KEK and LKH key
        packets under the new KEK's SPI, and the Delete of the old KEK."""
        require_tshark()
        new, data = self.evict(10)
        header, plaintext = push.open_push(data, self.ks.kek.spi, self.ks.kek.key, 128)
        clear = attrs.evolve(header, flags=0, ciphertext=None).with_plaintext(plaintext, DOI.GDOI)
        path = self.mktemp() + ".pcap"
        write_messages(path, [attrs.evolve(clear, padding=b"").encode(push.CTX)], sport=848, dport=848)
        self.assertEqual(problems(path), [])
        (pkt,) = packets(path)
        self.assertEqual(field_values(pkt, "isakmp.kd.payload.type"), ["2", "3"])
        self.assertEqual(field_values(pkt, "isakmp.delete.spi"), [self.ks.kek.spi.hex(":")])

    def test_eviction_kd(self):
        """eviction_kd: a KEK packet with SIG_ALGORITHM_KEY alone, then an LKH packet whose only attribute is the
        update array, both under the new KEK's SPI; with no update it refuses (nobody would get the KEK)."""
        new = self.new_kek(5.0)
        updates, _ = self.tree.evict(8, new.key)
        kek, lkh = push.eviction_kd(new, updates).key_packets
        self.assertEqual((kek.kd_type, kek.spi, [a.type for a in kek.attributes]),
                         (KeyPacketType.KEK, new.spi, [KEKKeyAttr.SIG_ALGORITHM_KEY]))
        self.assertEqual((lkh.kd_type, lkh.spi, [a.type for a in lkh.attributes]),
                         (KeyPacketType.LKH, new.spi, [LKHKeyAttr.LKH_UPDATE_ARRAY]))
        self.assertEqual(lkh_wire.decode_update_array(lkh.attributes[0].value), updates)
        self.assertRaises(ValueError, push.eviction_kd, new, ())

    def test_kek_rekey_without_teks(self):
        """A KEK rekey whose SA has the SAK alone (no SAT) is accepted; the LKH path is kept."""
        new = self.new_kek(4.0)
        sa = GroupSA(payloads=(kek_payload(new, REKEY, MEMBER, 4.0),))
        kd = KD((KeyPacket(KeyPacketType.KEK, new.spi, (Attribute(KEKKeyAttr.KEK_ALGORITHM_KEY, new.key),
                                                       Attribute(KEKKeyAttr.SIG_ALGORITHM_KEY,
                                                                 new.policy.public_key_der))),))
        data = push.build_push(self.ks.kek, 1, sa, kd, (push.delete_kek(self.ks.kek.spi),), rng=self.ks.rng)
        reg = self.regs[8]
        result = self.verify(data, reg)
        self.assertEqual((result.kek.key, result.teks, result.lkh_path), (new.key, (), None))
        self.assertEqual(result.lkh_path_after(reg.lkh_path), reg.lkh_path)


class AckRequestedTests(SynchronousTestCase):
    def test_sak_asks_and_member_reads_it(self):
        """With rekey.ack the SAK carries KEK_ACK_REQUESTED = 1 (RFC 8263) and the member's KEKInfo says so;
        without, neither."""
        ks = KeyServer("p256")
        for ack in (False, True):
            rekey = attrs.evolve(REKEY, ack=ack)
            sak = kek_payload(ks.kek, rekey, MEMBER, 0.0)
            values = [a.value for a in sak.attributes if a.type == KEKAttr.KEK_ACK_REQUESTED]
            self.assertEqual(values, [1] if ack else [])
            offered = read_policy(GroupSA(payloads=(sak, *sa_payload(ks.group, ks.generation, None, MEMBER,
                                                                     0.0).payloads)), MemberPolicy())
            kd = kd_payload(ks.generation, ks.kek, (), 16)
            reg = read_keys(offered, kd, 0, group=GID, server=SERVER, now=0.0, asked_sender_ids=0, pfs=False)
            self.assertEqual(reg.kek.ack_requested, ack)
