"""GDOI registration end to end: our group member (gdoiserver.member) and our key server (GDOIService serving the
GDOI plugin for ``[[groups]]``), each through its Twisted adapters (ISAKMPProtocol, the IKE engine, the Phase 2
dispatcher) and real UDP sockets on loopback, in this process and with the trial reactor.

Phase 1 with PSK (Main and Aggressive Mode) and with certificates, GROUPKEY-PULL for each TEK transform and for
IPv4 and IPv6 group policy, fallback to the next key server, the refusals of RFC 6407 section 3.2 with the key
server's state unchanged afterwards, a hundred members at once, and the daemon and the console command as real
processes.  Hypothesis's malformed and reordered PULL messages run over :class:`Wire`, an in-memory loopback on a
Clock, so that every run is the same.
"""

import datetime
import ipaddress
import json
import os
import struct
import subprocess
import sys
import time
import tomllib

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from gdoiserver.codec.constants import DOI, ExchangeType
from gdoiserver.codec.gdoi import KD, SEQ
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payload import context_for, encode_chain
from gdoiserver.codec.payloads import KE, Hash, Nonce
from gdoiserver.config import parse_config, policy_from_config
from gdoiserver.doi.gdoi.hashes import hash_1
from gdoiserver.doi.gdoi.registration import selector_network
from gdoiserver.doi.ipsec.sa_sink import read_records
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.group.policy import GroupId
from gdoiserver.member.config import parse_member_config
from gdoiserver.member.service import GroupMember, RegistrationFailed
from gdoiserver.service import GDOIService, KeyServerDOI
from tests import pki
from tests.machine_pair import seeded_rng
from tests.test_tap import PROCESS_SECONDS, REPO, TWISTD, Output

PULL = ExchangeType.GROUPKEY_PULL
CTX = context_for(DOI.GDOI, PULL)
IP, NET = ipaddress.ip_address, ipaddress.ip_network
#: Generous bounds on one in-process registration (they take milliseconds).
TIMEOUT = 20
FAST_IKE = "[ike]\nretransmit_initial = 0.2\nretransmit_tries = 2\nexchange_timeout = 5.0\n"

# --- the groups the key servers of these tests serve ---------------------------------------------------------------

#: One group per TEK transform: AES-CBC with HMAC-SHA2 (RFC 3602, RFC 4868), AES-GCM (RFC 4106), AES-CTR (RFC 3686)
#: with sender IDs (RFC 6054) for any-to-any traffic between sites, and an IPv6 multicast group named by OID.
TEKS = {
    "cbc": ('transform = "aes-cbc"\nintegrity = "hmac-sha256"\nkey_bits = 256\ndestination = "239.1.1.1"\n'
            "destination_port = 5004\nprotocol = 17"),
    "gcm": 'transform = "aes-gcm"\ndestination = "239.1.1.2"',
    "ctr": 'transform = "aes-ctr"\nintegrity = "hmac-sha512"\ndestination = "any"',
    "v6": 'transform = "aes-gcm"\nicv_bits = 96\nsource = "2001:db8::/32"\ndestination = "ff3e::1234"',
}
NUMBERS = {"cbc": 1001, "gcm": 1002, "ctr": 1003}
V6_OID = "1.3.6.1.4.1.99999.6"
MEMBERS = ('pattern = "*.example.org"',)


def group_id(name: str) -> GroupId:
    return GroupId(oid=V6_OID) if name == "v6" else GroupId(number=NUMBERS[name])


def group_toml(name: str, signing_key: str, *, members=MEMBERS, teks=None, extra: str = "") -> str:
    """A ``[[groups]]`` table: the TEK of ``name``, a KEK signed with ``signing_key``, multicast rekeys."""
    ident = f'oid = "{V6_OID}"' if name == "v6" else f"number = {NUMBERS[name]}"
    source, group = ("2001:db8::1", "ff3e::8000:1") if name == "v6" else ("192.0.2.1", "239.192.0.1")
    out = [f'[[groups]]\nname = "{name}"\n{ident}\n{extra}']
    out += [f"[[groups.members]]\n{m}" for m in members]
    for i, tek in enumerate(teks or [TEKS[name]]):
        out.append(f'[[groups.teks]]\nname = "{name}-{i}"\n{tek}')
    out.append(f'[groups.kek]\nsignature_key = "{signing_key}"\n[groups.rekey]\nsource = "{source}"\n'
               f'multicast_address = "{group}"')
    return "\n".join(out) + "\n"


def write_private(path: str, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@attrs.define
class PKI:
    """A CA (root, intermediate) and the key server's and a member's end-entity files, valid around ``now``."""

    root: str
    ks_cert: str
    ks_key: str
    gm_cert: str
    gm_key: str
    kind: str


class Files:
    """The files of one test: PSKs, the KEK signature key, certificates, configurations and sinks."""

    def __init__(self, case: unittest.TestCase):
        self.dir = os.path.abspath(case.mktemp())
        os.makedirs(self.dir)
        self.psk = write_private(self.path("members.psk"), b"group-members-psk-42\n")
        self.signing_key = pki.write_key(self.path("kek-signing.key"), pki.key("p256", 5))
        self._count = 0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, text: str) -> str:
        with open(self.path(name), "w", encoding="utf-8") as f:
            f.write(text)
        return self.path(name)

    def pki(self, kind: str = "p256", now: datetime.datetime | None = None) -> PKI:
        """Certificates valid around ``now`` (default: the real time, for the real reactor)."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        window = {"not_before": now - pki.DAY, "not_after": now + 30 * pki.DAY}
        root = pki.issue("Members Root " + kind, pki.key(kind, 0), ca=True, **window)
        inter = pki.issue("Members Intermediate " + kind, pki.key(kind, 1), root, ca=True, **window)
        ks = pki.issue("ks", pki.key(kind, 2), inter, sans=("ks.example.org",), **window)
        gm = pki.issue("gm1", pki.key(kind, 3), inter, sans=("gm1.members.example.org",), **window)
        return PKI(
            root=pki.write_certificates(self.path(f"root-{kind}.pem"), root.certificate),
            ks_cert=pki.write_certificates(self.path(f"ks-{kind}.pem"), ks.certificate, inter.certificate),
            ks_key=pki.write_key(self.path(f"ks-{kind}.key"), ks.key),
            gm_cert=pki.write_certificates(self.path(f"gm-{kind}.pem"), gm.certificate, inter.certificate),
            gm_key=pki.write_key(self.path(f"gm-{kind}.key"), gm.key),
            kind=kind,
        )

    def ks_config(self, groups: str, *, address="127.0.0.2", peer="127.0.0.1", certificates: PKI | None = None,
                  extra: str = "", port: int = 0) -> str:
        """The key server's TOML: one listener (and NAT-T on a free port), one proposal, the members' PSK by
        address, or certificates."""
        auth = "psk" if certificates is None else ("rsa" if certificates.kind == "rsa2048" else "ecdsa")
        lines = ["[server]", "nat_t_port = 0", f'listen = [{{ address = "{address}", port = {port} }}]',
                 "[ike]", f'proposals = [{{ encryption = "aes128", hash = "sha256", group = 19, auth = "{auth}" }}]',
                 "halfopen_per_peer = 256", "halfopen_total = 1024", "[store]", f'path = "{self.path("state.db")}"',
                 "[[peers]]", f'address = "{peer}"']
        if certificates is None:
            lines.append(f'psk_file = "{self.psk}"')
        else:
            c = certificates
            lines += [f'auth = "{auth}"', f'certificate = "{c.ks_cert}"', f'private_key = "{c.ks_key}"',
                      f'ca = ["{c.root}"]', "[identity]", 'id = "ks.example.org"']
        return "\n".join(lines) + "\n" + extra + "\n" + groups

    def member_config(self, servers, groups, *, address="127.0.0.1", identity="gm1.example.org", psk=None,
                      certificates: PKI | None = None, mode="main", extra: str = "", nat_t: bool = True,
                      port: int = 0) -> str:
        """A member's TOML for ``servers`` ((address, port) in fallback order) and ``groups`` (names)."""
        self._count += 1
        sink = self.path(f"member-{self._count}.jsonl")
        lines = ["[member]", f'listen = [{{ address = "{address}", port = {port} }}]', "nat_t_port = 0",
                 f'mode = "{mode}"', "[identity]", f'id = "{identity}"', "[auth]"]
        if certificates is None:
            lines.append(f'psk_file = "{psk or self.psk}"')
        else:
            c = certificates
            lines += [f'certificate = "{c.gm_cert}"', f'private_key = "{c.gm_key}"', f'ca = ["{c.root}"]']
        lines += ["[sink]", f'path = "{sink}"']
        if not nat_t:
            lines += ["[ike]", "nat_t = false"]
        for host, p in servers:
            lines += ["[[key_servers]]", f'address = "{host}"', f"port = {p}"]
        for name in groups:
            lines += ["[[groups]]", f'name = "{name}"',
                      f'oid = "{V6_OID}"' if name == "v6" else f"number = {NUMBERS.get(name, 4242)}"]
        return "\n".join(lines) + "\n" + extra


def start_key_server(case, text: str, clock=reactor, rng=os.urandom) -> GDOIService:
    """Our daemon's service from ``text``, started; stopped (SAs dropped, timers cancelled) after the test."""
    config = parse_config(tomllib.loads(text))
    service = GDOIService(config, clock, factory=Phase1Factory(policy_from_config(config)), rng=rng)
    service.events = []
    service.log = Logger(observer=service.events.append)
    service.startService()
    case.addCleanup(service.stopService)
    return service


def start_member(case, text: str, clock=reactor, rng=os.urandom, automatic=False) -> GroupMember:
    member = GroupMember(parse_member_config(tomllib.loads(text)), clock, rng=rng, automatic=automatic)
    member.events = []
    member.log = Logger(observer=member.events.append)
    member.startService()
    case.addCleanup(member.stopService)
    return member


def ks_port(service: GDOIService) -> int:
    return next(p.local_address[1] for p in service.protocols if not p.is_nat_t)


def ks_plugin(service: GDOIService) -> KeyServerDOI:
    return next(p for p in service.plugins if isinstance(p, KeyServerDOI))


def ks_state(service: GDOIService) -> dict:
    """Everything a registration may change on the key server: per group, the generations made and live (with
    the sender IDs left in each), the KEKs made, and the members registered."""
    plugin = ks_plugin(service)
    out = {}
    for group in plugin.key_server.groups.groups:
        keys = group.keys
        live = tuple((g.number, None if g.sender_ids is None else g.sender_ids.remaining) for g in keys.generations)
        out[group.policy.name] = (keys.generations_made, keys.keks_made, live,
                                  sorted(plugin.registered.get(group.policy.name, {})))
    return out


def log_lines(service) -> list[str]:
    return [formatEvent(e) for e in service.events]


def with_timeout(d: defer.Deferred, seconds: float = TIMEOUT, clock=reactor) -> defer.Deferred:
    return d.addTimeout(seconds, clock)


# --- an in-memory loopback on a Clock ------------------------------------------------------------------------------


class WireTransport:
    """The transport of one bound port on a :class:`Wire`."""

    def __init__(self, wire: "Wire", host: str, port: int):
        self.wire, self.host, self.port = wire, host, port

    def getHost(self):
        return (IPv6Address if ":" in self.host else IPv4Address)("UDP", self.host, self.port)

    def write(self, data: bytes, addr) -> None:
        self.wire.queue.append(((self.host, self.port), tuple(addr[:2]), bytes(data)))


class _WirePort:
    def __init__(self, wire: "Wire", key, protocol):
        self.wire, self.key, self.protocol = wire, key, protocol

    def stopListening(self):
        self.wire.bound.pop(self.key, None)
        self.protocol.doStop()


class Wire(Clock):
    """A Clock whose ``listenUDP`` binds in-memory ports: what one writes is queued, and :meth:`deliver` hands it
    to the protocol bound at its destination.  ``sent`` keeps every datagram delivered, in order, as
    ``(source, destination, octets)``."""

    def __init__(self, start: float = 0.0):
        super().__init__()
        self.advance(start)
        self.bound: dict = {}
        self.queue: list = []
        self.sent: list = []
        self._free = 40000

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == 0:
            self._free += 1
            port = self._free
        key = (interface, port)
        if key in self.bound:
            raise OSError(f"{interface}:{port} is bound")
        self.bound[key] = protocol
        protocol.makeConnection(WireTransport(self, interface, port))
        return _WirePort(self, key, protocol)

    def deliver(self, index: int = 0) -> None:
        source, destination, data = self.queue.pop(index)
        self.sent.append((source, destination, data))
        protocol = self.bound.get(destination)
        if protocol is not None:
            protocol.datagramReceived(data, source)

    def run(self, until=lambda: False, limit: int = 10000) -> None:
        """Deliver in order, and run the calls that are due, until ``until()`` or nothing is left to do."""
        for _ in range(limit):
            if until():
                return
            self.advance(0)
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("the wire never went quiet")

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass: each call when it is due, and what it sends delivered before the next one."""
        end = self.seconds() + seconds
        for _ in range(100000):
            self.run()
            due = [c.getTime() for c in self.getDelayedCalls() if c.getTime() <= end]
            if not due:
                self.advance(end - self.seconds())
                self.run()
                return
            self.advance(max(min(due) - self.seconds(), 0))
        raise AssertionError("calls kept coming due")


def outcome(d: defer.Deferred) -> list:
    """A Deferred's result as a one-item list, once it fired (an empty list before)."""
    out = []
    d.addBoth(out.append)
    return out


# --- the tests -----------------------------------------------------------------------------------------------------


class RegistrationTests(unittest.TestCase):
    """Our member registers with our key server over UDP on 127.0.0.1 (member) and 127.0.0.2 (key server)."""

    timeout = 60

    def setUp(self):
        self.files = Files(self)

    def key_server(self, names=("cbc", "gcm", "ctr", "v6"), **kw) -> GDOIService:
        groups = "".join(group_toml(n, self.files.signing_key) for n in names)
        return start_key_server(self, self.files.ks_config(groups, **kw))

    def member(self, ks: GDOIService, names, address="127.0.0.2", **kw) -> GroupMember:
        return start_member(self, self.files.member_config([(address, ks_port(ks))], names, **kw))

    def check_keys(self, ks: GDOIService, name: str, registration) -> None:
        """The member holds exactly the key server's current TEKs and KEK for the group, and its sender IDs came
        from the group's allocator."""
        group = ks_plugin(ks).key_server.groups.lookup(group_id(name))
        generation = group.keys.generations[-1]
        self.assertEqual(len(registration.teks), len(generation.teks))
        for info, keys in zip(registration.teks, generation.teks):
            p = keys.policy
            self.assertEqual((info.spi, info.encryption_key, info.integrity_key),
                             (keys.spi, keys.encryption_key, keys.integrity_key))
            self.assertEqual((info.transform_id, info.key_bits, info.integrity_algorithm),
                             (p.transform_id, p.key_bits, p.auth_algorithm))
            self.assertEqual((selector_network(info.source), selector_network(info.destination)),
                             (p.selector.source, p.selector.destination))
            self.assertEqual(bool(info.sender_ids), p.counter_mode)
            for sid in info.sender_ids:
                self.assertEqual(generation.sender_ids.owner(sid), "gm1.example.org")
        kek = group.keys.kek(time.time())
        self.assertEqual((registration.kek.spi, registration.kek.key, registration.seq), (kek.spi, kek.key, 0))
        self.assertEqual(registration.kek.signature_public_key, kek.policy.public_key_der)

    @defer.inlineCallbacks
    def test_psk_main_mode_each_transform(self):
        """With a PSK in Main Mode the member registers in one group per TEK transform (AES-CBC with HMAC-SHA-256,
        AES-GCM, AES-CTR with HMAC-SHA-512 and sender IDs) under one ISAKMP SA; it holds the key server's own TEK
        and KEK keys, the counter modes come with its own sender IDs, the key server logs each member and group
        without keys, and the JSON lines sink has every registration without keys."""
        ks = self.key_server()
        member = self.member(ks, ["cbc", "gcm", "ctr"])
        regs = {}
        for name in ("cbc", "gcm", "ctr"):
            regs[name] = yield with_timeout(member.register(group_id(name)))
            self.check_keys(ks, name, regs[name])
        self.assertEqual((len(regs["gcm"].sender_ids), len(regs["ctr"].sender_ids)), (1, 1))
        self.assertEqual(regs["cbc"].sender_ids, ())
        self.assertEqual((member.counters["phase1_established"], ks.counters["gdoi_registered"]), (1, 3))
        registered = [line for line in log_lines(ks) if "registered in group" in line]
        self.assertEqual(len(registered), 3)
        self.assertIn("member gm1.example.org at 127.0.0.1:", registered[0])
        secrets = [t.encryption_key.hex() for r in regs.values() for t in r.teks] + [regs["cbc"].kek.key.hex()]
        records = read_records(member.config.sink.path)
        self.assertEqual([r["group"] for r in records], [{"number": 1001}, {"number": 1002}, {"number": 1003}])
        self.assertEqual(records[1]["teks"][0]["transform"], "AES-GCM-16")
        dumped = json.dumps(records) + "\n".join(log_lines(ks) + log_lines(member))
        for secret in secrets:
            self.assertNotIn(secret, dumped)
        self.assertEqual(os.stat(member.config.sink.path).st_mode & 0o777, 0o600)

    @defer.inlineCallbacks
    def test_aggressive_mode_with_pfs(self):
        """Aggressive Mode with the PSK, then GROUPKEY-PULL with KE (PFS): registered, and marked PFS on both
        sides."""
        # In Aggressive Mode the key server finds the PSK by the member's ID (RFC 2409 section 5.4).
        ks = self.key_server(["gcm"], extra=f'[[peers]]\nid = "gm1.example.org"\npsk_file = "{self.files.psk}"\n')
        # Aggressive Mode offers one DH group (RFC 2409 section 5.4): the key server's.
        extra = ('[ike]\nproposals = [{ encryption = "aes128", hash = "sha256", group = 19, auth = "psk" }]\n'
                 "[registration]\npfs = true\n")
        member = self.member(ks, ["gcm"], mode="aggressive", extra=extra)
        reg = yield with_timeout(member.register(group_id("gcm")))
        self.check_keys(ks, "gcm", reg)
        self.assertTrue(reg.pfs)
        [registered] = ks_plugin(ks).registered["gcm"].values()
        self.assertTrue(registered.pfs)

    @defer.inlineCallbacks
    def check_certificates(self, kind: str):
        c = self.files.pki(kind)
        members = ('certificate_dns = "gm1.members.example.org"',)
        groups = group_toml("gcm", self.files.signing_key, members=members)
        ks = start_key_server(self, self.files.ks_config(groups, certificates=c))
        text = self.files.member_config([("127.0.0.2", ks_port(ks))], ["gcm"], certificates=c,
                                        identity="gm1.members.example.org")
        member = start_member(self, text)
        reg = yield with_timeout(member.register(group_id("gcm")))
        self.check_keys_of(ks, reg, "gm1.members.example.org")
        [sa] = [e.sa for e in member.engine.sas.values()]
        self.assertIsNotNone(sa.peer_certificate)
        # CERT and POP both ways in messages 3 and 4 (RFC 6407 section 3.2), checked by each side.
        self.assertIsNotNone(ks_plugin(ks).registered["gcm"]["gm1.members.example.org"].certificate)

    def check_keys_of(self, ks, reg, owner):
        group = ks_plugin(ks).key_server.groups.lookup(group_id("gcm"))
        generation = group.keys.generations[-1]
        self.assertEqual([t.encryption_key for t in reg.teks], [t.encryption_key for t in generation.teks])
        self.assertEqual(generation.sender_ids.owner(reg.sender_ids[0]), owner)

    def test_ecdsa_certificates(self):
        """Phase 1 with ECDSA P-256 certificates, and a group that admits members by a certificate DNS name
        (service_identity): the member registers, sending CERT and POP_I, and checks the key server's POP_R."""
        return self.check_certificates("p256")

    def test_rsa_certificates(self):
        """The same with RSA certificates."""
        return self.check_certificates("rsa2048")

    @defer.inlineCallbacks
    def test_ipv6(self):
        """Over ::1 (IPv6 ISAKMP) the member registers in the IPv6 multicast group named by OID (RFC 8052), and
        in an IPv4 one: the selectors are what the key server's policy says."""
        groups = group_toml("v6", self.files.signing_key) + group_toml("cbc", self.files.signing_key)
        ks = start_key_server(self, self.files.ks_config(groups, address="::1", peer="::1"))
        member = start_member(self, self.files.member_config([("::1", ks_port(ks))], ["v6", "cbc"], address="::1"))
        v6 = yield with_timeout(member.register(group_id("v6")))
        v4 = yield with_timeout(member.register(group_id("cbc")))
        [tek] = v6.teks
        self.assertEqual((selector_network(tek.source), selector_network(tek.destination)),
                         (NET("2001:db8::/32"), NET("ff3e::1234/128")))
        self.assertEqual((v6.kek.destination.value(), v6.group), (IP("ff3e::8000:1"), GroupId(oid=V6_OID)))
        self.assertEqual(selector_network(v4.teks[0].destination), NET("239.1.1.1/32"))
        self.assertEqual(v6.server[0], "::1")

    @defer.inlineCallbacks
    def test_fallback_to_the_next_key_server(self):
        """Key servers are tried in the configured order: the first does not serve the group and refuses it (an
        authenticated INVALID-ID-INFORMATION), so the member registers with the second."""
        first = self.key_server(["cbc"])
        second = self.key_server(["gcm"], address="127.0.0.3")
        text = self.files.member_config([("127.0.0.2", ks_port(first)), ("127.0.0.3", ks_port(second))], ["gcm"])
        member = start_member(self, text)
        reg = yield with_timeout(member.register(group_id("gcm")))
        self.assertEqual(reg.server, ("127.0.0.3", ks_port(second)))
        self.assertEqual((first.counters["gdoi_refused"], second.counters["gdoi_registered"]), (1, 1))
        [attempt] = [formatEvent(e) for e in member.events if "did not register us" in formatEvent(e)]
        self.assertIn("INVALID_ID_INFORMATION", attempt)

    @defer.inlineCallbacks
    def test_many_members_at_once(self):
        """A hundred members start registering at the same moment: every one registers, the key server makes its
        TEK keys and KEK once, and no sender ID is given twice (RFC 6054)."""
        ks = self.key_server(["gcm"])
        port = ks_port(ks)
        members = [start_member(self, self.files.member_config([("127.0.0.2", port)], ["gcm"], nat_t=False,
                                                                identity=f"gm{i}.example.org"))
                   for i in range(100)]
        regs = yield with_timeout(defer.gatherResults([m.register(group_id("gcm")) for m in members]), 50)
        group = ks_plugin(ks).key_server.groups.lookup(group_id("gcm"))
        self.assertEqual((group.keys.generations_made, group.keys.keks_made), (1, 1))
        self.assertEqual(len({r.teks[0].encryption_key for r in regs}), 1)
        sids = [s for r in regs for s in r.sender_ids]
        self.assertEqual(len(sids), 100)
        self.assertEqual(len(set(sids)), 100)
        self.assertEqual(len(ks_plugin(ks).registered["gcm"]), 100)


class RefusalTests(unittest.TestCase):
    """Each refusal leaves the key server as it was: no generation, KEK or sender ID made or given, no member
    recorded."""

    timeout = 30

    def setUp(self):
        self.files = Files(self)
        groups = group_toml("gcm", self.files.signing_key, members=('pattern = "gm*.example.org"',))
        self.ks = start_key_server(self, self.files.ks_config(groups))

    @defer.inlineCallbacks
    def registered_first(self):
        """One member registers, so that the state to keep has a generation, a KEK and sender IDs in use."""
        member = start_member(self, self.files.member_config([("127.0.0.2", ks_port(self.ks))], ["gcm"]))
        yield with_timeout(member.register(group_id("gcm")))
        return ks_state(self.ks)

    @defer.inlineCallbacks
    def refused(self, text: str, gid: GroupId):
        member = start_member(self, text + FAST_IKE)
        error = yield self.assertFailure(with_timeout(member.register(gid)), RegistrationFailed)
        return error

    @defer.inlineCallbacks
    def test_unauthorized_member(self):
        """A member that authenticates (right PSK) but that no member rule names is refused with an authenticated
        AUTHENTICATION-FAILED; the key server logs its identity and the group."""
        before = yield self.registered_first()
        text = self.files.member_config([("127.0.0.2", ks_port(self.ks))], ["gcm"], identity="intruder.example.net")
        error = yield self.refused(text, group_id("gcm"))
        self.assertIn("AUTHENTICATION_FAILED", error.attempts[0])
        self.assertEqual(ks_state(self.ks), before)
        [line] = [x for x in log_lines(self.ks) if "refused" in x]
        self.assertIn("intruder.example.net", line)
        self.assertIn("'gcm' (group 1002)", line)
        self.assertIn("not authorized", line)

    @defer.inlineCallbacks
    def test_wrong_psk(self):
        """A member with the wrong PSK never gets past Phase 1: the key server cannot read its Main Mode message
        5 and answers nothing more, the member gives up."""
        before = yield self.registered_first()
        wrong = write_private(self.files.path("wrong.psk"), b"not-the-members-psk\n")
        text = self.files.member_config([("127.0.0.2", ks_port(self.ks))], ["gcm"], psk=wrong)
        error = yield self.refused(text, group_id("gcm"))
        self.assertIn("Phase 1", error.attempts[0])
        self.assertEqual(ks_state(self.ks), before)
        self.assertEqual(self.ks.counters["phase1_established"], 1)

    @defer.inlineCallbacks
    def test_unknown_group(self):
        """A request for a group the key server does not serve is refused with INVALID-ID-INFORMATION."""
        before = yield self.registered_first()
        text = self.files.member_config([("127.0.0.2", ks_port(self.ks))], ["nosuch"])
        error = yield self.refused(text, GroupId(number=4242))
        self.assertIn("INVALID_ID_INFORMATION", error.attempts[0])
        self.assertEqual(ks_state(self.ks), before)
        [line] = [x for x in log_lines(self.ks) if "refused" in x]
        self.assertIn("unknown group 4242", line)


# --- malformed and out-of-order PULL messages through the adapters -------------------------------------------------


def junk_strategy():
    kinds = st.sampled_from(["random", "short", "replay", "replay_other_mid", "forged_order", "unknown_group",
                             "clear", "unknown_sa"])
    return st.tuples(kinds, st.binary(min_size=0, max_size=64), st.integers(1, 2**32 - 1))


def junk(sa, kind: str, noise: bytes, mid: int, seen: list[bytes]) -> bytes:
    """A datagram for the key server under the member's ISAKMP SA ``sa`` (or beside it): garbage, a replay, or a
    message that is encrypted and hashed as a first message (HASH(1)) but carries what only a later message may,
    or asks for a group nobody serves."""
    header = Message(sa.initiator_cookie, sa.responder_cookie, PULL, 1, mid)
    if kind == "random":
        return header.header_bytes(len(noise) + 16) + noise + bytes(16)
    if kind == "short":
        return header.header_bytes(len(noise))[: 28 + len(noise) // 2] + noise[: len(noise) // 2]
    if kind == "unknown_sa":
        return Message(noise[:8].ljust(8, b"\1"), bytes(8), PULL, 1, mid).header_bytes(32) + bytes(32)
    if kind in ("replay", "replay_other_mid") and seen:
        d = seen[mid % len(seen)]
        return d if kind == "replay" else d[:20] + struct.pack("!I", mid) + d[24:]
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


class RobustnessTests(unittest.TestCase):
    """Over :class:`Wire`: the key server's adapters get junk, replays and messages out of order among concurrent
    registrations."""

    def setUp(self):
        self.files = Files(self)
        groups = group_toml("gcm", self.files.signing_key, teks=[TEKS["gcm"], TEKS["cbc"]])
        self.ks_text = self.files.ks_config(groups, port=848, peer="127.0.0.0/24")
        self.member_texts = [self.files.member_config([("127.0.0.2", 848)], ["gcm"], identity=f"gm{i}.example.org",
                                                      address=f"127.0.0.{10 + i}", port=848) for i in range(4)]

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(count=st.integers(1, 3), junks=st.lists(junk_strategy(), max_size=10), seed=st.integers(0, 2**16),
           schedule=st.lists(st.integers(0, 255), min_size=1, max_size=64))
    def test_junk_never_corrupts_state(self, count, junks, seed, schedule):
        """Malformed, replayed, out-of-order and refused PULL datagrams under one member's ISAKMP SA, delivered in
        any order among the messages of other members' concurrent registrations (Phase 1 and PULL), never raise in
        the adapters, make no key material and give out no sender ID; every registration succeeds, with sender IDs
        of its own.  ``schedule`` picks the next datagram to deliver among those in flight, and which to deliver
        twice."""
        wire = Wire()
        ks = start_key_server(self, self.ks_text, wire, seeded_rng(seed))
        members = [start_member(self, text, wire, seeded_rng(seed + 1 + i))
                   for i, text in enumerate(self.member_texts[: count + 1])]
        try:
            # Member 0 registers first; its SA then carries the junk, built with its keys.
            first = outcome(members[0].register(group_id("gcm")))
            wire.run(until=lambda: first)
            [sa] = [e.sa for e in members[0].engine.sas.values()]
            seen = [d for _, _, d in wire.sent if decode_message(d).exchange_type == PULL]
            results = [outcome(m.register(group_id("gcm"))) for m in members[1:]]
            wire.queue += [(sa.local, ("127.0.0.2", 848), junk(sa, *j, seen)) for j in junks]
            for step in range(2000):
                if all(results) and not wire.queue:
                    break
                if not wire.queue:
                    wire.advance(1.0)  # a retransmission brings what was lost
                    continue
                pick = schedule[step % len(schedule)]
                datagram = wire.queue[pick % len(wire.queue)]
                wire.deliver(pick % len(wire.queue))
                if pick >= 240 and step < 500:
                    wire.queue.append(datagram)  # delivered twice: a replay of any message, ours or junk
            regs = first + [r[0] for r in results]
            for r in regs:
                self.assertFalse(isinstance(r, Failure), r)
            group = ks_plugin(ks).key_server.groups.lookup(group_id("gcm"))
            self.assertEqual((group.keys.generations_made, group.keys.keks_made), (1, 1))
            sids = [s for r in regs for s in r.sender_ids]
            self.assertEqual(len(set(sids)), count + 1)
            self.assertEqual(group.keys.generations[-1].sender_ids.remaining, 65535 - (count + 1))
            self.assertEqual(len(ks_plugin(ks).registered["gcm"]), count + 1)
            self.assertEqual(ks.counters["gdoi_registered"], count + 1)
            self.assertEqual((ks.counters["internal_error"], ks.counters["hook_error"]), (0, 0))
            self.assertEqual(sum(m.counters["internal_error"] for m in members), 0)
        finally:
            for service in (*members, ks):
                service.stopService()


# --- the daemon and the console command as processes ---------------------------------------------------------------


class ProcessTests(unittest.TestCase):
    def test_twistd_key_server_and_console_member(self):
        """`twistd -n gdoi` serves a group; `python -m gdoiserver.tools.gdoi_member --once` enrolls in it from
        another process, prints the registration as JSON without keys, and exits 0; the daemon logs the member
        and the group."""
        files = Files(self)
        ks_config = files.write("ks.toml", files.ks_config(group_toml("gcm", files.signing_key)))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([*TWISTD, "gdoi", "--config", ks_config], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            out = Output(proc, time.monotonic() + PROCESS_SECONDS)
            port = int(out.wait_for(r"ISAKMP listening on 127\.0\.0\.2:(\d+)/udp\n").group(1))
            member_config = files.write("member.toml", files.member_config([("127.0.0.2", port)], ["gcm"]))
            member = subprocess.run([sys.executable, "-m", "gdoiserver.tools.gdoi_member", "--config", member_config,
                                     "--once", "--timeout", str(PROCESS_SECONDS)], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=PROCESS_SECONDS + 5)
            self.assertEqual(member.returncode, 0, member.stdout + member.stderr)
            [line] = member.stdout.splitlines()
            view = json.loads(line)
            self.assertEqual((view["registered"], view["group"], view["name"]), (True, {"number": 1002}, "gcm"))
            self.assertEqual(view["server"], {"address": "127.0.0.2", "port": port})
            [tek] = view["teks"]
            self.assertEqual((tek["transform"], tek["destination"]["address"], len(tek["sender_ids"])),
                             ("AES-GCM-16", "239.1.1.2", 1))
            self.assertNotIn("keys", tek)
            self.assertNotIn("key", view["kek"])
            out.wait_for(r"GDOI: member gm1\.example\.org at 127\.0\.0\.1:\d+ registered in group gcm \(group 1002\)")
            [record] = read_records(tomllib.loads(open(member_config).read())["sink"]["path"])
            self.assertEqual(record["teks"][0]["spi"], tek["spi"])
            self.assertNotIn("Traceback", out.text + member.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=PROCESS_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
