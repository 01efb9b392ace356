"""The member's side of GROUPKEY-PUSH: the pure machine (gdoiserver.member.rekey), the multicast membership
requests (gdoiserver.member.multicast), the service on a Clock against our key server (unicast and multicast
rekeys, acknowledgements, losing track of the group), and real sockets in a network namespace."""

import ipaddress
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys

import attrs
from twisted.trial import unittest

from gdoiserver import keylog
from gdoiserver.codec.gdoi import KD, GroupSA, KeyPacketType
from gdoiserver.doi.gdoi import ack, push
from gdoiserver.doi.gdoi.download import kd_payload, kek_payload, sa_payload
from gdoiserver.doi.gdoi.registration import MemberPolicy, read_keys, read_policy
from gdoiserver.doi.ipsec.sa_sink import read_records
from gdoiserver.exchanges.effects import Count
from gdoiserver.group.keys import Group, GroupKeys, KEKKeys
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
from gdoiserver.member import multicast, rekey
from tests import pki
from tests.test_gdoi_registration import Files, Wire, ks_plugin, start_key_server, start_member
from tests.test_tap import REPO

NET, IP = ipaddress.ip_network, ipaddress.ip_address
GID = GroupId(number=1234)
SERVER = ("192.0.2.1", 848)
MEMBER = ("192.0.2.10", 848)
SELECTOR = TrafficSelector(NET("0.0.0.0/0"), NET("239.1.1.1/32"), 17, 0, 5004)
CBC = TEKPolicy("cbc", TEKTransform.AES_CBC, SELECTOR, 256, "hmac-sha256", lifetime=600)
GCM = TEKPolicy("gcm", TEKTransform.AES_GCM, SELECTOR, 128, None, lifetime=600)
REKEY = RekeyTransport(IP("192.0.2.1"), multicast_address=IP("239.192.0.1"))


def seeded_rng(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def asking_for_acks(registration):
    """The registration with a KEK whose SAK asked for acknowledgements (RFC 8263)."""
    return attrs.evolve(registration, kek=attrs.evolve(registration.kek, ack_requested=True))


class KeyServer:
    """One group's keys on a key server (GAP: activation 5 s, deactivation 30 s), what a member holds after
    GROUPKEY-PULL, and the PUSHes it sends."""

    def __init__(self, kind: str = "p256", teks=(CBC,), gap=GAPPolicy(5, 30), seed: int = 1, rekey_transport=REKEY,
                 now: float = 0.0):
        kek_policy = KEKPolicy(pki.key(kind), 128, "sha256", lifetime=3000)
        policy = GroupPolicy("g", teks, number=GID.number, kek=kek_policy, rekey=rekey_transport, gap=gap)
        self.group = Group(policy, GroupKeys(policy, seeded_rng(seed)))
        self.kek = self.group.keys.kek(now)
        self.generation = self.group.keys.current(now)
        self.rng = seeded_rng(seed + 100)
        self.member = MEMBER

    def pull(self, now: float = 0.0, sender_ids=()):
        """The member's registration (SEQ: the KEK's last one)."""
        sa = sa_payload(self.group, self.generation, self.kek, self.member, now)
        kd = kd_payload(self.generation, self.kek, tuple(sender_ids), 16)
        return read_keys(read_policy(sa, MemberPolicy()), kd, self.kek.seq, group=GID, server=SERVER, now=now,
                         asked_sender_ids=len(sender_ids), pfs=False)

    def new_kek(self, now: float) -> KEKKeys:
        return KEKKeys(self.kek.policy, bytes(self.rng(16)), bytes(self.rng(16)), now, now + 3000.0, self.kek.seq)

    def rekey(self, now: float, *, new_kek: KEKKeys | None = None, signer=None, delete: bool = True,
              teks: bool = True) -> bytes:
        """A PUSH under the current KEK at the next SEQ: a new TEK generation (the old one deleted) and, with
        ``new_kek``, a KEK rekey (the old KEK deleted); ``teks=False`` sends the KEK alone."""
        old = self.generation
        deletes = []
        if teks:
            self.generation = self.group.keys.new_generation(now)
            if delete:
                deletes.append(push.delete_teks([t.spi for t in old.teks]))
            sa = sa_payload(self.group, self.generation, new_kek, self.member, now)
            kd = kd_payload(self.generation, new_kek, (), 16)
        else:
            sa = GroupSA(payloads=(kek_payload(new_kek, self.group.policy.rekey, self.member, now),))
            kd = KD(tuple(p for p in kd_payload(old, new_kek, (), 16).key_packets if p.kd_type == KeyPacketType.KEK))
        if new_kek is not None:
            deletes.append(push.delete_kek(self.kek.spi))
        seq = self.kek.seq + 1
        data = push.build_push(self.kek, seq, sa, kd, tuple(deletes), signer, rng=self.rng)
        self.kek.seq = seq
        if new_kek is not None:
            new_kek.seq = seq  # SEQ carries on across KEKs (RFC 3547 section 4)
            self.kek = new_kek
        return data


class LKHKeyServer(KeyServer):
    """A key server that can evict: an LKH tree of depth 3 whose root key is the KEK's (RFC 6407 section 5.6.3)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tree = LKHTree(3, 16, seeded_rng(77))
        self.tree.set_root(self.kek.key)

    def join(self, now: float = 0.0):
        """A member's registration with its leaf's LKH path in the KD."""
        leaf = self.tree.join()
        sa = sa_payload(self.group, self.generation, self.kek, self.member, now)
        kd = kd_payload(self.generation, self.kek, (), 16, lkh_path=self.tree.path(leaf))
        reg = read_keys(read_policy(sa, MemberPolicy()), kd, self.kek.seq, group=GID, server=SERVER, now=now,
                        asked_sender_ids=0, pfs=False)
        return leaf, reg

    def evict(self, leaf: int, now: float) -> bytes:
        """The eviction PUSH under the current KEK: SAK of a new KEK, KD with its signature key and the LKH
        updates that bring its key to every member but ``leaf``."""
        new = self.new_kek(now)
        updates, _ = self.tree.evict(leaf, new.key)
        sa = GroupSA(payloads=(kek_payload(new, self.group.policy.rekey, self.member, now),))
        seq = self.kek.seq + 1
        data = push.build_push(self.kek, seq, sa, push.eviction_kd(new, updates), (push.delete_kek(self.kek.spi),),
                               rng=self.rng)
        new.seq = seq
        self.kek = new
        return data


def of(effects, kind) -> list:
    return [e for e in effects if isinstance(e, kind)]


def counted(effects) -> list[str]:
    return [e.name for e in effects if isinstance(e, Count)]


class MachineTests(unittest.SynchronousTestCase):
    """GroupRekey: datagrams and the time in, decisions out."""

    def setUp(self):
        self.ks = KeyServer()
        self.reg = self.ks.pull()
        self.machine = rekey.GroupRekey(self.reg)

    def test_accepts_a_tek_rekey(self):
        """An authentic PUSH is counted push_accepted; its TEK is installed at once (keys as the key server made
        them), serves outbound traffic after the activation delay (5 s), and the TEK it deletes leaves after the
        deactivation delay (30 s): the old and the new TEK overlap.  The SEQ becomes the PUSH's."""
        old = self.reg.teks[0].spi
        effects = self.machine.on_push(self.ks.rekey(100.0), SERVER, 100.0)
        self.assertEqual(counted(effects), ["push_accepted"])
        [install] = of(effects, rekey.Install)
        [tek] = install.registration.teks
        made = self.ks.generation.teks[0]
        self.assertEqual((tek.spi, tek.encryption_key, tek.integrity_key),
                         (made.spi, made.encryption_key, made.integrity_key))
        self.assertEqual(install.new_spis, frozenset({made.spi}))
        self.assertEqual(install.registration.kek, self.reg.kek)
        self.assertEqual(install.registration.seq, 1)
        self.assertEqual(of(effects, rekey.Activate), [rekey.Activate((made.spi,), 105.0)])
        self.assertEqual(of(effects, rekey.Retire), [rekey.Retire((old,), 130.0)])
        [accepted] = of(effects, rekey.Accepted)
        self.assertEqual((accepted.seq, accepted.kek_spi, accepted.new_kek), (1, self.reg.kek.spi, None))
        self.assertEqual(self.machine.seq, 1)
        self.assertEqual(of(effects, rekey.SendAck), [])

    def test_rekeys_in_a_row(self):
        """Three rekeys in a row are each accepted, each retiring the TEK the one before brought."""
        before = self.reg.teks[0].spi
        for n in range(1, 4):
            effects = self.machine.on_push(self.ks.rekey(100.0 * n), SERVER, 100.0 * n)
            self.assertEqual(of(effects, rekey.Retire)[0].spis, (before,))
            before = of(effects, rekey.Install)[0].registration.teks[0].spi
            self.assertEqual(self.machine.seq, n)

    def test_replay_rejected_and_counted(self):
        """An authentic PUSH whose SEQ is not above the last one accepted is a replay: counted push_replay,
        nothing installed, the SEQ stays.  A copy of an accepted PUSH (a retransmission, or the other delivery's
        copy), the last one or an older one, is only a duplicate: expected, and not counted as a replay."""
        first = self.ks.rekey(10.0)
        second = self.ks.rekey(20.0)
        self.machine.on_push(first, SERVER, 10.0)
        self.machine.on_push(second, SERVER, 20.0)
        self.ks.kek.seq = 0
        again = self.ks.rekey(21.0)  # SEQ 1 once more, signed by the key server, not a copy
        effects = self.machine.on_push(again, SERVER, 21.0)
        self.assertEqual(counted(effects), ["push_replay"])
        self.assertEqual(of(effects, rekey.Install), [])
        self.assertEqual(self.machine.seq, 2)
        for data in (second, first):
            effects = self.machine.on_push(data, SERVER, 22.0)
            self.assertEqual(counted(effects), ["push_duplicate"])
            self.assertEqual(of(effects, rekey.Install), [])

    def test_copies_of_a_kek_rekey(self):
        """Copies of a KEK rekey, heard after the next PUSH under the new KEK (an eviction's retransmissions
        overlap the TEK rekey that follows it), are duplicates and acknowledged again, not PUSHes under an unknown
        KEK."""
        acks = []
        machine = rekey.GroupRekey(asking_for_acks(self.reg), ack=lambda spi, seq: acks.append((spi, seq)) or b"A")
        old = self.ks.kek.spi
        switch = self.ks.rekey(50.0, new_kek=self.ks.new_kek(50.0))
        machine.on_push(switch, SERVER, 50.0)
        machine.on_push(self.ks.rekey(51.0), SERVER, 51.0)
        self.assertIs(rekey.route([machine], switch), machine)
        effects = machine.on_push(switch, SERVER, 55.0)
        self.assertEqual(counted(effects), ["push_duplicate", "ack_sent"])
        self.assertEqual((acks[-1], machine.unknown_in_row), ((old, 1), 0))

    def test_signed_with_another_key(self):
        """A PUSH signed with a key other than the key server's is push_bad_signature and changes nothing; the
        authentic PUSH with the same SEQ is accepted afterwards."""
        forged = self.ks.rekey(10.0, signer=push.Signer(pki.key("p256", 3), 3))
        self.ks.kek.seq -= 1
        effects = self.machine.on_push(forged, SERVER, 10.0)
        self.assertEqual(counted(effects), ["push_bad_signature"])
        self.assertEqual([type(e) for e in effects], [Count, rekey.Rejected])
        self.assertEqual(self.machine.seq, 0)
        self.assertEqual(counted(self.machine.on_push(self.ks.rekey(11.0), SERVER, 11.0)), ["push_accepted"])

    def test_tampered_body(self):
        """A PUSH with any one bit of its encrypted body flipped is refused (push_malformed when the payloads no
        longer decode, push_bad_signature when they do) and installs nothing."""
        data = self.ks.rekey(10.0)
        for offset in (28, 28 + 2, 28 + 16 + 5, len(data) // 2, len(data) - 17, len(data) - 1):
            effects = self.machine.on_push(flip(data, offset), SERVER, 10.0)
            self.assertIn(counted(effects), [["push_malformed"], ["push_bad_signature"]], offset)
            self.assertEqual(of(effects, rekey.Install), [])
        self.assertEqual(self.machine.seq, 0)
        self.assertEqual(counted(self.machine.on_push(data, SERVER, 10.0)), ["push_accepted"])

    def test_kek_rekey_switches_the_kek_and_keeps_the_seq(self):
        """A PUSH bringing a new KEK (with new TEKs) switches the member to it; the next PUSH under the new KEK
        with the next SEQ is accepted, one under the new KEK that reuses the SEQ is a replay, and one under the old
        KEK no longer opens (push_unknown_kek)."""
        new = self.ks.new_kek(50.0)
        old_kek = self.ks.kek
        effects = self.machine.on_push(self.ks.rekey(50.0, new_kek=new), SERVER, 50.0)
        [switch] = of(effects, rekey.SwitchKEK)
        self.assertEqual((switch.kek.spi, switch.kek.key), (new.spi, new.key))
        self.assertEqual(switch.expires_at, 3050.0)  # the lifetime the SAK gives, from the PUSH on
        self.assertEqual((self.machine.kek.spi, self.machine.seq), (new.spi, 1))
        self.assertEqual(of(effects, rekey.Install)[0].registration.kek.spi, new.spi)
        effects = self.machine.on_push(self.ks.rekey(60.0), SERVER, 60.0)
        self.assertEqual(counted(effects), ["push_accepted"])
        self.assertEqual(self.machine.seq, 2)
        new.seq = 1  # the key server reuses SEQ 2 under the new KEK: a replay
        self.assertEqual(counted(self.machine.on_push(self.ks.rekey(70.0), SERVER, 70.0)), ["push_replay"])
        old_kek.seq = 5
        self.ks.kek = old_kek
        self.assertEqual(counted(self.machine.on_push(self.ks.rekey(80.0), SERVER, 80.0)), ["push_unknown_kek"])

    def test_kek_alone(self):
        """A KEK rekey that brings no TEK (SA with the SAK alone, KD with the KEK key packet alone, RFC 6407
        section 4) switches the KEK and installs nothing."""
        new = self.ks.new_kek(50.0)
        effects = self.machine.on_push(self.ks.rekey(50.0, new_kek=new, teks=False), SERVER, 50.0)
        self.assertEqual(counted(effects), ["push_accepted"])
        self.assertEqual(of(effects, rekey.Install), [])
        self.assertEqual(self.machine.kek.spi, new.spi)
        self.assertEqual(counted(self.machine.on_push(self.ks.rekey(60.0), SERVER, 60.0)), ["push_accepted"])

    def test_sender_ids_stay(self):
        """Counter-mode TEKs a PUSH brings carry the sender IDs of the member's registration (a PUSH has no SID
        key packet; RFC 6054)."""
        ks = KeyServer(teks=(GCM,))
        machine = rekey.GroupRekey(ks.pull(sender_ids=(7, 9)))
        [install] = of(machine.on_push(ks.rekey(10.0), SERVER, 10.0), rekey.Install)
        self.assertEqual(install.registration.teks[0].sender_ids, (7, 9))
        self.assertEqual((install.registration.sender_ids, install.registration.sender_id_bits), ((7, 9), 16))

    def test_unknown_kek_loses_track(self):
        """PUSHes under a KEK the member does not hold: the third in a row asks to register again, and the run
        starts over; an accepted PUSH in between resets it."""
        other = KeyServer(seed=9)
        self.assertEqual(of(self.machine.on_push(other.rekey(40.0), SERVER, 40.0), rekey.Reregister), [])
        self.machine.on_push(self.ks.rekey(41.0), SERVER, 41.0)
        for now in (42.0, 43.0):
            effects = self.machine.on_push(other.rekey(now), SERVER, now)
            self.assertEqual(counted(effects), ["push_unknown_kek"])
            self.assertEqual(of(effects, rekey.Reregister), [])
        [again] = of(self.machine.on_push(other.rekey(44.0), SERVER, 44.0), rekey.Reregister)
        self.assertIn("3 GROUPKEY-PUSH messages in a row", again.reason)
        self.assertEqual(of(self.machine.on_push(other.rekey(45.0), SERVER, 45.0), rekey.Reregister), [])

    def test_unknown_kek_holddown(self):
        """Within the hold-down after a registration, unknown KEKs do not make the member register again."""
        machine = rekey.GroupRekey(self.reg, unknown_kek_limit=1, holddown=30.0)
        self.assertEqual(machine.unknown_kek(29.0), [])
        self.assertEqual(len(of(machine.unknown_kek(30.0), rekey.Reregister)), 1)

    def test_kek_expired(self):
        """The KEK's end (its lifetime from the registration) without a KEK rekey asks to register again."""
        self.assertEqual(self.machine.kek_expires_at, 3000.0)
        self.assertEqual(self.machine.expired(2999.0), [])
        [again] = of(self.machine.expired(3000.0), rekey.Reregister)
        self.assertIn("expired", again.reason)

    def test_acknowledges_when_asked(self):
        """With KEK_ACK_REQUESTED the member answers each accepted PUSH with the ACK for the PUSH's KEK SPI and SEQ
        to the PUSH's source, and again for a copy of it (to the KEK's SRC when it came by multicast); without, it
        sends none."""
        acks = []
        machine = rekey.GroupRekey(asking_for_acks(self.reg), ack=lambda spi, seq: acks.append((spi, seq)) or
                                   b"ACK%d" % seq)
        data = self.ks.rekey(10.0)
        effects = machine.on_push(data, ("192.0.2.1", 40000), 10.0)
        self.assertEqual(of(effects, rekey.SendAck), [rekey.SendAck(b"ACK1", ("192.0.2.1", 40000))])
        self.assertEqual(counted(effects), ["push_accepted", "ack_sent"])
        effects = machine.on_push(data, ("192.0.2.7", 40001), 11.0, multicast=True)
        self.assertEqual(of(effects, rekey.SendAck), [rekey.SendAck(b"ACK1", SERVER)])  # the SAK's SRC
        self.assertEqual(acks, [(self.reg.kek.spi, 1)] * 2)
        effects = machine.on_push(self.ks.rekey(12.0), ("192.0.2.7", 40001), 12.0, multicast=True)
        self.assertEqual(of(effects, rekey.SendAck), [rekey.SendAck(b"ACK2", SERVER)])
        self.assertEqual(of(self.machine.on_push(data, SERVER, 10.0), rekey.SendAck), [])
        self.assertEqual(counted(rekey.GroupRekey(asking_for_acks(self.reg)).on_push(data, SERVER, 10.0)),
                         ["push_accepted", "ack_unavailable"])

    def test_registered_again(self):
        """A new registration under the same KEK keeps a later SEQ the member accepted; under another KEK the
        registration's SEQ counts."""
        self.machine.on_push(self.ks.rekey(10.0), SERVER, 10.0)
        self.machine.on_push(self.ks.rekey(20.0), SERVER, 20.0)
        self.machine.registered(attrs.evolve(self.reg, seq=1, registered_at=21.0))
        self.assertEqual(self.machine.seq, 2)
        other = KeyServer(seed=4).pull(30.0)
        self.machine.registered(other)
        self.assertEqual((self.machine.kek.spi, self.machine.seq, self.machine.kek_expires_at),
                         (other.kek.spi, 0, 3000.0))
        self.assertRaises(ValueError, self.machine.registered, attrs.evolve(other, kek=None))

    def test_eviction(self):
        """An eviction PUSH (LKH): the remaining members switch to the new KEK, whose key they unwrap through their
        LKH paths; the evicted member opens the PUSH but learns nothing (push_refused, its KEK unchanged), and the
        next rekey, under the new KEK, reaches the others and not it (push_unknown_kek).  A member follows a second
        eviction with the path the first one updated."""
        ks = LKHKeyServer()
        members = {}
        for name in ("a", "b", "c"):
            leaf, reg = ks.join()
            self.assertEqual((reg.lkh_path[0].node, len(reg.lkh_path)), (leaf, 3))
            members[name] = (leaf, rekey.GroupRekey(reg))
        data = ks.evict(members["b"][0], 10.0)
        for name in ("a", "c"):
            effects = members[name][1].on_push(data, SERVER, 10.0)
            self.assertEqual(counted(effects), ["push_accepted"], name)
            [switch] = of(effects, rekey.SwitchKEK)
            self.assertEqual((switch.kek.spi, switch.kek.key), (ks.kek.spi, ks.kek.key))
        evicted = members["b"][1]
        old_kek = evicted.kek
        self.assertEqual(counted(evicted.on_push(data, SERVER, 10.0)), ["push_refused"])
        self.assertEqual((evicted.kek, evicted.seq), (old_kek, 0))
        after = ks.rekey(20.0)
        for name in ("a", "c"):
            self.assertEqual(counted(members[name][1].on_push(after, SERVER, 20.0)), ["push_accepted"], name)
        self.assertEqual(counted(evicted.on_push(after, SERVER, 20.0)), ["push_unknown_kek"])
        machine = members["a"][1]
        self.assertNotEqual(machine.lkh_path, members["c"][1].lkh_path)
        effects = machine.on_push(ks.evict(members["c"][0], 30.0), SERVER, 30.0)
        self.assertEqual(of(effects, rekey.SwitchKEK)[0].kek.key, ks.kek.key)
        self.assertEqual(machine.lkh_path, ks.tree.path(members["a"][0]))

    def test_route_and_stray(self):
        """route finds the group by the cookies (the KEK SPI); a datagram for no group is push_unknown_kek when it
        is a GROUPKEY-PUSH and push_malformed otherwise."""
        other = rekey.GroupRekey(KeyServer(seed=5).pull())
        data = self.ks.rekey(1.0)
        self.assertIs(rekey.route([other, self.machine], data), self.machine)
        self.assertIsNone(rekey.route([other], data))
        self.assertEqual(counted(rekey.stray(data)), ["push_unknown_kek"])
        self.assertEqual(counted(rekey.stray(b"\0" * 10)), ["push_malformed"])
        self.assertEqual(counted(rekey.stray(data[:18] + bytes([5]) + data[19:])), ["push_malformed"])


# --- the service on a Clock, against our key server ----------------------------------------------------------------

GROUP = GroupId(number=1002)
MEMBER_ADDRESS = ("127.0.0.1", 848)
KS_ADDRESS = ("127.0.0.2", 848)
MULTICAST = ("239.192.0.1", 848)


def gcm_group(signing_key: str, *, kek_lifetime: int = 86400) -> str:
    """The key server's group 1002: one AES-GCM TEK of 600 s, GAP 5 s / 30 s, a KEK, multicast rekeys."""
    return ('[[groups]]\nname = "gcm"\nnumber = 1002\n[[groups.members]]\npattern = "*.example.org"\n'
            '[[groups.teks]]\nname = "gcm-0"\ntransform = "aes-gcm"\ndestination = "239.1.1.2"\nlifetime = 600\n'
            "[groups.gap]\nactivation_delay = 5\ndeactivation_delay = 30\n"
            f'[groups.kek]\nsignature_key = "{signing_key}"\nlifetime = {kek_lifetime}\n'
            f'[groups.rekey]\nsource = "127.0.0.2"\nmulticast_address = "{MULTICAST[0]}"\n')


class FakeSocket:
    """The socket of a multicast port on the Wire: it keeps the options set on it."""

    def __init__(self):
        self.options = []

    def setsockopt(self, level, option, value):
        self.options.append((level, option, value))


class MulticastWire(Wire):
    """A Wire that can also bind multicast ports (bound like UDP ports at the group's address)."""

    def __init__(self, start: float = 0.0):
        super().__init__(start)
        self.multicast_ports = []

    def listenMulticast(self, port, protocol, interface="", maxPacketSize=8192, listenMultiple=False):
        bound = self.listenUDP(port, protocol, interface, maxPacketSize)
        bound.socket, bound.listen_multiple = FakeSocket(), listenMultiple
        self.multicast_ports.append(bound)
        return bound


class ServiceTests(unittest.TestCase):
    """GroupMember registered by our key server on a MulticastWire; the test builds PUSHes from the key server's
    keys (the rekey scheduler is not part of this) and puts them on the wire."""

    def setUp(self):
        self.files = Files(self)
        self.wire = MulticastWire()

    def start(self, member_extra: str = "", kek_lifetime: int = 86400, rekey_extra: str = ""):
        group = gcm_group(self.files.signing_key, kek_lifetime=kek_lifetime) + rekey_extra
        text = self.files.ks_config(group, port=848)
        self.ks = start_key_server(self, text, self.wire, seeded_rng(1))
        config = self.files.member_config([KS_ADDRESS], ["gcm"], port=848) + member_extra
        self.member = start_member(self, config, self.wire, seeded_rng(2), automatic=True)
        self.wire.run()
        self.assertEqual(self.member.counters["member_registered"], 1)
        self.state = self.member.groups[GROUP]
        self.rng = seeded_rng(3)

    @property
    def keys(self) -> GroupKeys:
        return self.ks_group().keys

    def push(self, *, new_kek: KEKKeys | None = None, kek: KEKKeys | None = None, seq: int | None = None) -> bytes:
        """The next TEK rekey (and KEK rekey with ``new_kek``) of the key server's group, under ``kek`` (default:
        the group's)."""
        now = self.wire.seconds()
        keys = self.keys
        group = self.ks_group()
        kek = kek or keys.kek(now)
        old = keys.generations[-1]
        generation = keys.new_generation(now)
        sa = sa_payload(group, generation, new_kek, MEMBER_ADDRESS, now)
        kd = kd_payload(generation, new_kek, (), group.policy.sender_id_bits)
        deletes = [push.delete_teks([t.spi for t in old.teks])]
        if new_kek is not None:
            deletes.append(push.delete_kek(kek.spi))
        seq = kek.seq + 1 if seq is None else seq
        data = push.build_push(kek, seq, sa, kd, tuple(deletes), rng=self.rng)
        kek.seq = max(kek.seq, seq)
        return data

    def ks_group(self) -> Group:
        return ks_plugin(self.ks).key_server.groups.lookup(GROUP)

    def send(self, data: bytes, destination=MEMBER_ADDRESS, source=KS_ADDRESS) -> None:
        self.wire.queue.append((source, destination, data))
        self.wire.run()

    def records(self) -> list[dict]:
        return read_records(self.member.config.sink.path)

    def test_unicast_rekey_rolls_over_without_a_gap(self):
        """A PUSH by unicast: the new TEK is installed at once beside the old one, activated 5 s later, and the old
        TEK leaves 30 s after the PUSH, not before; the member waits for the next rekey before it registers again,
        and keeps its sender ID on the new TEK."""
        self.start()
        [old] = self.state.teks
        self.wire.advance(100)
        self.send(self.push())
        self.assertEqual(self.member.counters["push_accepted"], 1)
        [new] = self.keys.generations[-1].teks
        self.assertEqual(set(self.state.teks), {old, new.spi})
        self.assertEqual(self.state.teks[new.spi][0].encryption_key, new.encryption_key)
        self.assertEqual(self.state.teks[new.spi][0].sender_ids, self.state.rekey.registration.sender_ids)
        self.assertTrue(self.state.teks[new.spi][0].sender_ids)
        self.assertTrue(100 + 0.925 * 600 <= self.state.timer.getTime() <= 100 + 0.95 * 600)
        self.wire.wait(29.9)
        self.assertEqual(set(self.state.teks), {old, new.spi})
        self.wire.wait(0.2)
        self.assertEqual(set(self.state.teks), {new.spi})
        events = [(r["event"], r["time"], r.get("new_spis") or r.get("spis") or r.get("spi")) for r in self.records()]
        self.assertEqual(events[1:], [("installed", 100.0, [new.spi.hex()]), ("activated", 105.0, [new.spi.hex()]),
                                      ("removed", 130.0, old.hex())])
        self.assertEqual(self.records()[-1]["reason"], "retired by rekey")
        self.assertEqual((self.member.counters["member_tek_retired"], self.member.counters["reregister_lost"]),
                         (1, 0))

    def test_multicast_rekey(self):
        """The member binds the KEK's multicast group and port (several sockets may share it) and joins it on the
        address it registered from; a PUSH there is accepted, and the unicast copy of it is a duplicate.
        Stopping the member closes the socket."""
        self.start()
        [port] = self.wire.multicast_ports
        self.assertEqual(port.key, MULTICAST)
        self.assertTrue(port.listen_multiple)
        group, local = socket.inet_aton(MULTICAST[0]), socket.inet_aton("127.0.0.1")
        self.assertEqual(port.socket.options, [(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + local)])
        data = self.push()
        self.send(data, MULTICAST, ("127.0.0.2", 40001))
        self.send(data)
        counters = self.member.counters
        self.assertEqual((counters["push_accepted"], counters["push_replay"], counters["push_duplicate"]), (1, 0, 1))
        self.member.stopService()
        self.assertNotIn(MULTICAST, self.wire.bound)

    def test_rekey_section(self):
        """rekey.interface names the interface to join on (by index); rekey.multicast = false joins nothing."""
        self.start('[rekey]\ninterface = "lo"\n')
        [port] = self.wire.multicast_ports
        group = socket.inet_aton(MULTICAST[0])
        self.assertEqual(port.socket.options, [(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                                group + bytes(4) + struct.pack("@i", socket.if_nametoindex("lo")))])

    def test_multicast_off(self):
        """With rekey.multicast = false the member binds no multicast socket and still takes unicast rekeys."""
        self.start("[rekey]\nmulticast = false\n")
        self.assertEqual(self.wire.multicast_ports, [])
        self.send(self.push())
        self.assertEqual(self.member.counters["push_accepted"], 1)

    def test_kek_rekey(self):
        """A KEK rekey switches the member to the new KEK (its end timer follows) and the next PUSH under the new
        KEK is accepted; the old KEK's SPI no longer opens anything."""
        self.start()
        old = self.keys.kek(0.0)
        new = KEKKeys(old.policy, bytes(range(1, 17)), b"\x42" * 16, 50.0, 50.0 + 3000, old.seq)
        self.wire.advance(50)
        self.send(self.push(new_kek=new))
        self.assertEqual(self.state.rekey.kek.spi, new.spi)
        self.assertEqual(self.state.kek_timer.getTime(), 3050.0)
        new.seq = old.seq
        self.send(self.push(kek=new))
        self.assertEqual((self.member.counters["push_accepted"], self.state.rekey.seq), (2, 2))
        self.send(self.push(kek=old))
        self.assertEqual(self.member.counters["push_unknown_kek"], 1)

    def test_keylog_has_each_kek(self):
        """With [keylog] the member writes the KEK it registered with and each KEK a rekey brings (their lines
        let pcapdump --keylog open the rekeys)."""
        path = self.files.path("member.keylog")
        self.start(f'[keylog]\npath = "{path}"\n')
        old = self.keys.kek(0.0)
        new = KEKKeys(old.policy, bytes(range(1, 17)), b"\x42" * 16, 0.0, 3000.0, old.seq)
        self.send(self.push(new_kek=new))
        with open(path, encoding="ascii") as f:
            lines = [line for line in f.read().splitlines() if line.startswith(keylog.KEK_TAG)]
        self.assertEqual(lines, [keylog.kek_line(k.spi, k.key, 128).rstrip("\n") for k in (old, new)])

    def test_unknown_kek_registers_again(self):
        """Three PUSHes in a row from our key server under a KEK we do not hold (after the hold-down) make the
        member register again at once; PUSHes under unknown KEKs from elsewhere count, but not towards that."""
        self.start()
        stranger = KeyServer(seed=9)
        self.wire.advance(40)
        for n in range(3):
            self.send(stranger.rekey(40.0), source=("127.0.0.3", 848))
        self.assertEqual(self.member.counters["push_unknown_kek"], 3)
        self.assertEqual(self.member.counters["reregister_lost"], 0)
        for n in range(3):
            self.send(stranger.rekey(40.0))
        self.assertEqual(self.member.counters["reregister_lost"], 1)
        self.assertEqual(self.member.counters["member_registered"], 2)
        self.assertEqual(self.member.counters["push_unknown_kek"], 6)

    def test_kek_expiry_registers_again(self):
        """When the KEK ends with no KEK rekey the member registers again and gets the key server's new KEK."""
        self.start(kek_lifetime=900)
        first = self.state.rekey.kek.spi
        self.assertEqual(self.state.kek_timer.getTime(), 900.0)
        self.wire.wait(901)
        self.assertNotEqual(self.state.rekey.kek.spi, first)
        self.assertTrue(any("expired and no KEK rekey came" in str(e.get("reason", "")) for e in self.member.events))
        self.assertTrue(1800.0 <= self.state.kek_timer.getTime() <= 1801.0)  # the new KEK's, from the registration

    def test_stop_leaves_nothing_pending(self):
        """Stopping the member after a rekey cancels the activation, removal and KEK timers and closes the
        multicast socket."""
        self.start()
        self.send(self.push())
        self.member.stopService()
        self.ks.stopService()
        self.assertEqual(self.wire.getDelayedCalls(), [])
        self.assertEqual(self.wire.bound, {})

    def acks(self) -> list:
        return [(src, dst, data) for src, dst, data in self.wire.sent if len(data) > 18 and data[18] == 35]

    def test_acknowledges_when_asked(self):
        """When the KEK asks for acknowledgements (the key server's rekey.ack puts KEK_ACK_REQUESTED in the SAK)
        the member answers an accepted PUSH, and each copy of it, with a GROUPKEY-PUSH-ACK from its ISAKMP socket to
        the key server's ISAKMP socket (the source of a unicast PUSH; the KEK's SRC for a multicast one, which
        comes from a socket that only sends): KEK SPI, SEQ, the group, and a HASH the key server can check with the
        ack key of the Phase 1 SA the member registered under."""
        self.start(rekey_extra="ack = true\n")
        self.assertTrue(self.state.rekey.kek.ack_requested)
        kek = self.keys.kek(0.0)
        data = self.push()
        self.send(data, MULTICAST, ("127.0.0.2", 40001))
        self.send(data)
        [(src, dst, first), (src2, dst2, second)] = self.acks()
        self.assertEqual((src, dst, src2, dst2), (MEMBER_ADDRESS, KS_ADDRESS, MEMBER_ADDRESS, KS_ADDRESS))
        self.assertEqual(first, second)
        got = ack.read_ack(first)
        self.assertEqual((got.kek_spi, got.seq, got.group_id), (kek.spi, 1, GROUP.identification()))
        [entry] = self.ks.engine.sas.values()
        self.assertTrue(ack.ack_holds(got, ack.ack_key_for(entry.sa)))
        self.assertEqual(self.member.counters["ack_sent"], 2)

    def test_no_ack_unless_asked(self):
        """Without KEK_ACK_REQUESTED the member sends nothing back."""
        self.start()
        self.send(self.push())
        self.assertEqual((self.acks(), self.member.counters["ack_sent"]), ([], 0))


class MembershipTests(unittest.TestCase):
    """multicast.membership: the setsockopt that joins a group on an interface."""

    def test_ipv4(self):
        """IPv4: struct ip_mreq with the interface's address (INADDR_ANY for the kernel's choice), or struct
        ip_mreqn with the index of a named interface."""
        group = bytes([239, 192, 0, 1])
        self.assertEqual(multicast.membership("239.192.0.1", None),
                         (socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + bytes(4)))
        self.assertEqual(multicast.membership("239.192.0.1", "127.0.0.1")[2], group + bytes([127, 0, 0, 1]))
        index = socket.if_nametoindex("lo")
        self.assertEqual(multicast.membership("239.192.0.1", "lo")[2], group + bytes(4) + struct.pack("@i", index))

    def test_ipv6(self):
        """IPv6: struct ipv6_mreq, the group and an interface index: 0 for the kernel's choice, a named
        interface's, or the one of the interface that holds an address (from /proc/net/if_inet6)."""
        group = IP("ff3e::8000:1").packed
        self.assertEqual(multicast.membership("ff3e::8000:1", None),
                         (socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", 0)))
        index = socket.if_nametoindex("lo")
        self.assertEqual(multicast.membership("ff3e::8000:1", "lo")[2], group + struct.pack("@I", index))
        table = self.mktemp()
        with open(table, "w") as f:
            f.write("00000000000000000000000000000001 01 80 10 80       lo\n"
                    "fd000000000000000000000000000002 04 40 00 82     eth0\n")
        self.assertEqual(multicast._ipv6_index(IP("fd00::2"), table), 4)
        self.assertEqual(multicast._ipv6_index(IP("::1"), table), 1)
        self.assertRaises(ValueError, multicast._ipv6_index, IP("fd00::9"), table)
        self.assertEqual(multicast.membership("ff3e::8000:1", "127.0.0.1")[2], group + struct.pack("@I", 0))

    def test_refused(self):
        """A unicast group address, an interface that does not exist, and an IPv6 address for an IPv4 group are
        ValueErrors."""
        self.assertRaises(ValueError, multicast.membership, "192.0.2.1", None)
        self.assertRaises(ValueError, multicast.membership, "239.1.1.1", "no-such-if0")
        self.assertRaises(ValueError, multicast.membership, "239.1.1.1", "::1")


# --- real sockets ---------------------------------------------------------------------------------------------------


class SocketTests(unittest.TestCase):
    """Members on real sockets in a network namespace of their own (``unshare -n``): IPv4 on 127.0.0.1 with
    multicast on the loopback interface, IPv6 on ::1 with multicast on a veth interface (Linux does not route IPv6
    multicast over lo)."""

    def test_unicast_and_multicast(self):
        """An IPv4 and an IPv6 member each accept one rekey by unicast to their ISAKMP socket and the next one on
        the KEK's multicast group (joined on the address registered from, and on an interface named in
        rekey.interface), and hold the newest TEK."""
        missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
        if missing or os.geteuid() != 0:
            raise unittest.SkipTest(f"missing tool: {', '.join(missing) or 'root'} (a network namespace with "
                                    "multicast on loopback needs unshare -n, ip and root)")
        proc = subprocess.run(["unshare", "-n", sys.executable, "-c", _SOCKET_SCRIPT, REPO], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = json.loads(proc.stdout)
        for name in ("v4", "v6"):
            member = out[name]
            why = f"{name}: {member['counters']}"
            self.assertEqual(member["bound"], member["expected_bound"], why)
            self.assertEqual((member["push_accepted"], member["sources"]), (2, ["unicast", "multicast"]), why)
            self.assertEqual(member["newest_tek"], member["key_server_tek"], why)
            self.assertEqual(member["internal_error"], 0, why)


_SOCKET_SCRIPT = r"""
import json, os, socket, subprocess, sys, tempfile, tomllib
sys.path.insert(0, sys.argv[1])

def sh(*args):
    subprocess.run(args, check=True, capture_output=True)

sh("ip", "link", "set", "lo", "up", "multicast", "on")
sh("ip", "link", "add", "gm0", "type", "veth", "peer", "name", "gm1")
sh("ip", "link", "set", "gm1", "up")
sh("ip", "link", "set", "gm0", "up", "multicast", "on")
sh("ip", "-6", "addr", "add", "fd00:6::1/64", "dev", "gm0", "nodad")

import ipaddress
from twisted.internet import reactor
from gdoiserver.group.policy import RekeyTransport
from gdoiserver.member.config import parse_member_config
from gdoiserver.member.service import GroupMember
from tests.test_member_rekey import GID, KeyServer

tmp = tempfile.mkdtemp()
psk = os.path.join(tmp, "psk")
with open(os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
    f.write("group-members-psk-42\n")
now = reactor.seconds()
cases = {
    "v4": ("127.0.0.1", "127.0.0.2", "239.192.0.1", None),
    "v6": ("::1", "::1", "ff3e::8000:1", "gm0"),
}
out, runs = {}, []
for name, (address, server, group, interface) in cases.items():
    text = (f'[member]\nlisten = [{{ address = "{address}", port = 848 }}]\nnat_t_port = 0\n'
            f'[auth]\npsk_file = "{psk}"\n[[key_servers]]\naddress = "{server}"\nport = 8480\n'
            f'[[groups]]\nnumber = {GID.number}\n[sink]\npath = "{os.path.join(tmp, name + ".jsonl")}"\n')
    if interface:
        text += f'[rekey]\ninterface = "{interface}"\n'
    member = GroupMember(parse_member_config(tomllib.loads(text)), reactor, automatic=True)
    member.startService()
    transport = RekeyTransport(ipaddress.ip_address(server), multicast_address=ipaddress.ip_address(group))
    ks = KeyServer(rekey_transport=transport, now=now, seed=len(runs) + 1)
    state = member.groups[GID]
    state.local = address  # what the Phase 1 SA of a registration gives
    member._accept(state, ks.pull(now), member.config.key_servers[0])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sender = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    else:
        sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex(interface))
    out[name] = {"bound": sorted(k[:2] for k in member._multicast), "expected_bound": [[group, 848]],
                 "sources": []}
    runs.append((name, member, ks, sender, address, group))

def send(kind):
    for name, member, ks, sender, address, group in runs:
        before = member.counters["push_accepted"]
        sender.sendto(ks.rekey(reactor.seconds()), (address, 848) if kind == "unicast" else (group, 848))
        out[name]["pending"] = (kind, before)

def poll(deadline):
    done = True
    for name, member, ks, sender, address, group in runs:
        kind, before = out[name].get("pending", (None, 0))
        if kind is not None and member.counters["push_accepted"] > before:
            out[name]["sources"].append(kind)
            out[name].pop("pending")
        done = done and "pending" not in out[name]
    if done and all(len(out[n]["sources"]) == 1 for n in out):
        send("multicast")
    elif done or reactor.seconds() > deadline:
        reactor.stop()
        return
    reactor.callLater(0.05, poll, deadline)

reactor.callLater(0.1, send, "unicast")
reactor.callLater(0.15, poll, reactor.seconds() + 20)
reactor.run()
for name, member, ks, sender, address, group in runs:
    state = member.groups[GID]
    newest = max(state.teks.values(), key=lambda entry: entry[1].getTime())[0]
    out[name].update(push_accepted=member.counters["push_accepted"], newest_tek=newest.spi.hex(),
                     key_server_tek=ks.generation.teks[0].spi.hex(), internal_error=member.counters["internal_error"],
                     counters={k: v for k, v in member.counters.items() if k.startswith(("push", "multicast"))})
    out[name].pop("pending", None)
print(json.dumps(out))
"""
