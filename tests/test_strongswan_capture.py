"""Real strongSwan IKEv1 exchanges, captured on loopback, decode and re-encode to the very same octets.

Each live case runs a strongSwan initiator against a strongSwan responder in a private network namespace
(:mod:`tests.interop.strongswan`) and reads the capture.  Every ISAKMP message must come back from
``decode_message(data).encode()`` octet for octet (RFC 2408 sections 3.1 and 3.2).  Encrypted messages are
decrypted with the key charon logged and must re-encrypt to the captured octets (RFC 2409 appendix B), which
round-trips the payloads inside them too (ID, HASH, CERT, SIG, the Quick Mode SA).  The payload chain of every
message is compared with the one RFC 2409 and RFC 3947 give for the exchange, so no case passes on a thin capture.

``tests/data/captures/strongswan-mm-am.pcap`` and its ``.keys`` were recorded by this module
(``python -m tests.test_strongswan_capture record``) and are checked the same way without strongSwan.
"""

import datetime
import ipaddress
import shutil
import struct
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from gdoiserver.codec import KE, SA, Certificate, Identification, VendorID, decode_message
from gdoiserver.codec.attributes import attribute_map
from gdoiserver.codec.constants import (
    NAT_T_VENDOR_ID,
    CertEncoding,
    EncapsulationMode,
    ExchangeType,
    IDType,
    IPsecAttr,
    OakleyAttr,
    OakleyAuth,
    OakleyEncryption,
    OakleyGroup,
    OakleyHash,
    PayloadType,
    ProtocolID,
)
from gdoiserver.tools import pcap
from gdoiserver.tools.decrypt import Decryptor, read_keylog
from tests.interop import strongswan as sw

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
CHECKED_IN = CAPTURES / "strongswan-mm-am.pcap"
CHECKED_IN_KEYS = CAPTURES / "strongswan-mm-am.keys"
#: The connections (tests/interop/configs/initiator.psk.swanctl.conf) recorded in the checked-in capture.
CHECKED_IN_CONNECTIONS = ("mm-psk-ecp256", "am-psk")

MM, AM, QM = ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE, ExchangeType.QUICK_MODE
I, R = "I", "R"

# The payload chains, as "<sender> <exchange> <payloads>"; a run of Vendor IDs is written "VID+".
#: RFC 2409 section 5.5 with PFS (KE), ID_ci and ID_cr; QM3 is HASH(3) alone.
QUICK_MODE_PFS = [(I, QM, "HASH SA NONCE KE ID ID"), (R, QM, "HASH SA NONCE KE ID ID"), (I, QM, "HASH")]
QUICK_MODE = [(I, QM, "HASH SA NONCE ID ID"), (R, QM, "HASH SA NONCE ID ID"), (I, QM, "HASH")]
#: RFC 2409 section 5.4 (pre-shared key), with RFC 3947's vendor ID (section 3.1) and NAT-D payloads (section 3.2).
MAIN_MODE_PSK = [
    (I, MM, "SA VID+"),
    (R, MM, "SA VID+"),
    (I, MM, "KE NONCE NAT_D NAT_D"),
    (R, MM, "KE NONCE NAT_D NAT_D"),
    (I, MM, "ID HASH"),  # encrypted from here on, on UDP 4500
    (R, MM, "ID HASH"),
]
#: RFC 2409 section 5.1 (signatures): each side asks for a certificate (CR) and sends its own (CERT); the
#: initiator adds INITIAL-CONTACT (RFC 2407 section 4.6.3.3).
MAIN_MODE_RSA = [
    (I, MM, "SA VID+"),
    (R, MM, "SA VID+"),
    (I, MM, "KE NONCE NAT_D NAT_D"),
    (R, MM, "KE NONCE CR NAT_D NAT_D"),
    (I, MM, "ID CERT SIG CR N"),
    (R, MM, "ID CERT SIG"),
]
#: RFC 2409 section 5.4 (Aggressive Mode, pre-shared key); RFC 3947 section 3.2 puts NAT-D in AM2 and AM3.
AGGRESSIVE_MODE_PSK = [
    (I, AM, "SA KE NONCE ID VID+"),
    (R, AM, "SA KE NONCE ID VID+ NAT_D NAT_D HASH"),
    (I, AM, "HASH NAT_D NAT_D"),
]


# ------------------------------------------------------------------------------------------------ reading captures


def _read_udp(path):
    if hasattr(pcap, "read_udp"):
        return list(pcap.read_udp(path))
    return list(_fallback_read_udp(path))


def _isakmp_messages(datagrams):
    if hasattr(pcap, "isakmp_messages"):
        return list(pcap.isakmp_messages(datagrams))
    return list(_fallback_isakmp_messages(datagrams))


def _fallback_read_udp(path):
    """UDP datagrams of a classic pcap (LINKTYPE_ETHERNET, _RAW or _LINUX_SLL); a stand-in for pcap.read_udp."""
    data = Path(path).read_bytes()
    order, nano = {b"\xd4\xc3\xb2\xa1": ("<", 0), b"\xa1\xb2\xc3\xd4": (">", 0),
                   b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}[data[:4]]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    link = {1: 14, 101: 0, 113: 16}[linktype]  # link-layer header length; its EtherType is the last two octets
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(order + "IIII", data, pos)
        ip, pos = data[pos + 16 + link : pos + 16 + caplen], pos + 16 + caplen
        if link and data[pos - caplen + link - 2 : pos - caplen + link] not in (b"\x08\x00", b"\x86\xdd"):
            continue
        if ip[0] >> 4 == 4:
            hlen, proto, src, dst = (ip[0] & 15) * 4, ip[9], ip[12:16], ip[16:20]
        else:
            hlen, proto, src, dst = 40, ip[6], ip[8:24], ip[24:40]
        if proto != 17:
            continue
        sport, dport, ulen = struct.unpack_from("!HHH", ip, hlen)
        yield pcap.Datagram(str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport,
                            ip[hlen + 8 : hlen + ulen], sec + frac / (1e9 if nano else 1e6))


def _fallback_isakmp_messages(datagrams):
    """(datagram, ISAKMP octets): all of UDP 500, and on 4500 what follows the non-ESP marker (RFC 3948 2.2)."""
    for d in datagrams:
        if 4500 in (d.sport, d.dport):
            if d.payload[:4] == b"\0\0\0\0" and len(d.payload) > 4:
                yield d, d.payload[4:]
        elif 500 in (d.sport, d.dport):
            yield d, d.payload


#: The keys file's reader under its old name, which tests.test_grammar uses.
_read_keys = read_keylog


def _write_keys(path, keys: dict) -> None:
    lines = ["# <initiator cookie>,<encryption key Ka> per IKE SA; tshark -o uat:ikev1_decryption_table:<line>"]
    lines += [f"{cookie.hex()},{key.hex()}" for cookie, key in keys.items()]
    Path(path).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ round trips


def _chain(message) -> str:
    """The payload types in order, by their RFC names; a run of Vendor IDs is "VID+"."""
    out = []
    for p in message.payloads:
        name = PayloadType(p.payload_type).name.replace("VID", "VID+")
        if name != "VID+" or not out or out[-1] != "VID+":
            out.append(name)
    return " ".join(out)


def _first(message, cls):
    return next(p for p in message.payloads if isinstance(p, cls))


def _transform(message):
    return {k: a.as_int() for k, a in attribute_map(_first(message, SA).proposals[0].transforms[0].attributes).items()}


class CaptureMixin:
    """Assertions over a capture of strongSwan IKEv1 exchanges."""

    def round_trip(self, path, keys):
        """Decode, check and (where encrypted) decrypt every ISAKMP message of ``path``; return the messages, each
        as (datagram, Message with its payloads), retransmissions left out."""
        datagrams = _read_udp(path)
        found = _isakmp_messages(datagrams)
        self.assertTrue(found, f"no ISAKMP message among {len(datagrams)} datagrams in {path}")
        decryptor, seen, out = Decryptor(keys), set(), []
        for d, data in found:
            m = decode_message(data)
            self.assertEqual(m.encode(), data, f"{d}: decode then encode differs")
            decryption = decryptor.decrypt(m)
            if data in seen:  # a retransmission: the same octets again, decrypted under the IV they had first
                self.assertTrue(decryption is None or decryption.retransmission, f"{d}: not seen as resent")
                continue
            seen.add(data)
            if decryption is not None:
                self.assertIsNone(decryption.error, f"{d}: {decryption.error}")
                again, _ = decryption.chain.encrypt(decryption.message)
                self.assertEqual(again, data, f"{d}: decrypt, decode, encode, encrypt differs")
                m = decryption.message
            out.append((d, m))
        return out

    def assertExchanges(self, messages, expected):
        """The senders, exchange types and payload chains are ``expected``; messages in clear use UDP 500 and
        encrypted ones UDP 4500, as strongSwan floats once NAT-D is exchanged (RFC 3947 section 4)."""
        got = [(I if d.src == sw.ADDRESS[sw.INITIATOR] else R, m.exchange_type, _chain(m)) for d, m in messages]
        self.assertEqual(got, expected)
        for d, m in messages:
            port = 4500 if m.encrypted else 500
            self.assertIn(port, (d.sport, d.dport), f"{d}: {_chain(m)} not on UDP {port}")

    def assertPhase1Proposal(self, message, encryption, key_length, group, auth):
        """The Phase 1 SA carries the transform the connection configures (RFC 2409 appendix A attributes)."""
        t = _transform(message)
        self.assertEqual(t[OakleyAttr.ENCRYPTION_ALGORITHM], encryption)
        self.assertEqual(t[OakleyAttr.KEY_LENGTH], key_length)
        self.assertEqual(t[OakleyAttr.HASH_ALGORITHM], OakleyHash.SHA2_256)
        self.assertEqual(t[OakleyAttr.GROUP_DESCRIPTION], group)
        self.assertEqual(t[OakleyAttr.AUTHENTICATION_METHOD], auth)
        vids = [p.vendor_id for p in message.payloads if isinstance(p, VendorID)]
        self.assertIn(NAT_T_VENDOR_ID, vids)

    def assertQuickMode(self, messages):
        """Quick Mode proposes ESP in UDP-Encapsulated-Tunnel mode (RFC 3947 section 5.1) between ID_IPV4_ADDR
        127.0.0.1 on both sides (RFC 2409 section 5.5)."""
        qm1 = next(m for _, m in messages if m.exchange_type == QM)
        proposal = _first(qm1, SA).proposals[0]
        self.assertEqual(proposal.protocol_id, ProtocolID.IPSEC_ESP)
        self.assertEqual(len(proposal.spi), 4)
        self.assertEqual(_transform(qm1)[IPsecAttr.ENCAPSULATION_MODE], EncapsulationMode.UDP_ENCAPSULATED_TUNNEL)
        ids = [p for p in qm1.payloads if isinstance(p, Identification)]
        loopback = (IDType.IPV4_ADDR, ipaddress.ip_address("127.0.0.1"))
        self.assertEqual([(i.id_type, i.value()) for i in ids], [loopback, loopback])


# ------------------------------------------------------------------------------------------------ live cases


def _throwaway_pki():
    """A CA and an RSA certificate per side whose SAN is the side's FQDN ID, as files for sw.prepare, plus the
    DER of each side's certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gdoiserver interop test CA")])

    def certificate(subject, key, is_ca, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    ca_pem = certificate(ca_name, ca_key, True).public_bytes(serialization.Encoding.PEM)
    files, ders = {}, {}
    for side, fqdn in ((sw.RESPONDER, "responder.test"), (sw.INITIATOR, "initiator.test")):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]), key, False, fqdn)
        files[f"{side}/x509ca/ca.pem"] = ca_pem
        files[f"{side}/x509/{side}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{side}/private/{side}.key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        ders[side] = cert.public_bytes(serialization.Encoding.DER)
    return files, ders


def _live(testcase, connections, profiles=("psk",), files=None):
    """Run ``connections`` between two strongSwan daemons; fail unless both sides have them up; return the Run."""
    sw.require()
    workdir = tempfile.mkdtemp(prefix="gdoi-ss-")  # short: charon's vici socket path must fit sun_path
    testcase.addCleanup(shutil.rmtree, workdir, True)
    sw.prepare(workdir, profiles=profiles, files=files)
    run = sw.run(workdir, initiate=connections)
    run.check_established()
    return run


class StrongSwanCaptureTests(CaptureMixin, unittest.TestCase):
    """strongSwan initiator against strongSwan responder, each exchange captured and round-tripped."""

    def live_messages(self, run):
        keys = run.encryption_keys(sw.INITIATOR)
        self.assertEqual(keys, run.encryption_keys(sw.RESPONDER), "the two sides logged different keys")
        return self.round_trip(run.pcap, keys)

    def test_main_mode_psk_aes256_sha256_modp2048(self):
        """Main Mode with a PSK, AES-256/SHA-256/MODP-2048, then Quick Mode with PFS: every message (the encrypted
        ones decrypted) re-encodes to the captured octets, with the payload chains RFC 2409 gives."""
        messages = self.live_messages(_live(self, ["mm-psk-modp2048"]))
        self.assertExchanges(messages, MAIN_MODE_PSK + QUICK_MODE_PFS)
        self.assertPhase1Proposal(messages[0][1], OakleyEncryption.AES_CBC, 256, OakleyGroup.MODP_2048,
                                  OakleyAuth.PRE_SHARED_KEY)
        self.assertEqual(len(_first(messages[2][1], KE).key_exchange_data), 256)  # RFC 3526 section 3
        self.assertQuickMode(messages)

    def test_main_mode_psk_aes128_sha256_ecp256(self):
        """Main Mode with a PSK, AES-128/SHA-256/ECP-256, then Quick Mode with PFS: every message re-encodes to
        the captured octets; the KE data is the 64-octet x | y of RFC 5903 section 7."""
        messages = self.live_messages(_live(self, ["mm-psk-ecp256"]))
        self.assertExchanges(messages, MAIN_MODE_PSK + QUICK_MODE_PFS)
        self.assertPhase1Proposal(messages[0][1], OakleyEncryption.AES_CBC, 128, OakleyGroup.ECP_256,
                                  OakleyAuth.PRE_SHARED_KEY)
        self.assertEqual([len(_first(m, KE).key_exchange_data) for _, m in messages[2:4]], [64, 64])
        self.assertQuickMode(messages)

    def test_aggressive_mode_psk(self):
        """Aggressive Mode with a PSK and FQDN IDs, then Quick Mode: every message re-encodes to the captured
        octets; AM1 carries SA KE NONCE ID and the vendor IDs (RFC 2409 section 5.4)."""
        messages = self.live_messages(_live(self, ["am-psk"]))
        self.assertExchanges(messages, AGGRESSIVE_MODE_PSK + QUICK_MODE_PFS)
        self.assertPhase1Proposal(messages[0][1], OakleyEncryption.AES_CBC, 256, OakleyGroup.MODP_2048,
                                  OakleyAuth.PRE_SHARED_KEY)
        ids = [_first(m, Identification) for _, m in messages[:2]]
        self.assertEqual([(i.id_type, i.value()) for i in ids], [(IDType.FQDN, "init.am.test"),
                                                                 (IDType.FQDN, "resp.am.test")])
        self.assertQuickMode(messages)

    def test_main_mode_rsa_certificates(self):
        """Main Mode with RSA signatures and X.509 certificates from a throwaway CA: every message re-encodes to
        the captured octets, and MM5/MM6 carry the FQDN IDs and each side's certificate octet for octet."""
        files, ders = _throwaway_pki()
        messages = self.live_messages(_live(self, ["mm-rsa"], ("psk", "rsa"), files))
        self.assertExchanges(messages, MAIN_MODE_RSA + QUICK_MODE)
        self.assertPhase1Proposal(messages[0][1], OakleyEncryption.AES_CBC, 256, OakleyGroup.MODP_2048,
                                  OakleyAuth.RSA_SIGNATURES)
        for (_, m), side, fqdn in ((messages[4], sw.INITIATOR, "initiator.test"),
                                   (messages[5], sw.RESPONDER, "responder.test")):
            self.assertEqual(_first(m, Identification).value(), fqdn)
            cert = _first(m, Certificate)
            self.assertEqual((cert.encoding, cert.data), (CertEncoding.X509_SIGNATURE, ders[side]))
        self.assertQuickMode(messages)

    def test_recording_has_the_checked_in_shape(self):
        """Recording the checked-in capture again (Main Mode PSK ECP-256, then Aggressive Mode) gives a capture
        that passes the same checks as the checked-in one."""
        sw.require()
        workdir = tempfile.mkdtemp(prefix="gdoi-ss-")
        self.addCleanup(shutil.rmtree, workdir, True)
        pcap_path, keys_path = record(workdir, Path(workdir))
        CheckedInCaptureTests.check(self, pcap_path, read_keylog(keys_path))


# ------------------------------------------------------------------------------------------------ checked-in capture


class CheckedInCaptureTests(CaptureMixin, unittest.TestCase):
    """The capture in tests/data/captures/, which needs no strongSwan."""

    @staticmethod
    def check(testcase, pcap_path, keys):
        messages = testcase.round_trip(pcap_path, keys)
        testcase.assertExchanges(messages, MAIN_MODE_PSK + QUICK_MODE_PFS + AGGRESSIVE_MODE_PSK + QUICK_MODE_PFS)
        testcase.assertEqual(len({m.initiator_cookie for _, m in messages}), 2)
        testcase.assertPhase1Proposal(messages[0][1], OakleyEncryption.AES_CBC, 128, OakleyGroup.ECP_256,
                                      OakleyAuth.PRE_SHARED_KEY)
        testcase.assertPhase1Proposal(messages[9][1], OakleyEncryption.AES_CBC, 256, OakleyGroup.MODP_2048,
                                      OakleyAuth.PRE_SHARED_KEY)
        testcase.assertQuickMode(messages[9:])
        return messages

    def test_checked_in_capture_round_trips(self):
        """Every ISAKMP message of the checked-in strongSwan capture (Main Mode, Aggressive Mode, two Quick Modes)
        decodes, decrypts with the recorded keys, and re-encodes and re-encrypts to the captured octets."""
        self.check(self, CHECKED_IN, read_keylog(CHECKED_IN_KEYS))

    def test_checked_in_capture_is_complete(self):
        """The checked-in capture holds the 15 messages of both exchanges, each once, and the end marker."""
        datagrams = _read_udp(CHECKED_IN)
        found = _isakmp_messages(datagrams)
        self.assertEqual(len(found), 15)
        self.assertEqual(len({data for _, data in found}), 15)
        self.assertEqual(datagrams[-1].payload, sw.SENTINEL)

    def test_retransmission_is_left_out(self):
        """A datagram resent with the same octets (as strongSwan resends QM1 when the responder dropped it while
        Phase 1 was incomplete) is checked but not decrypted twice, so the IV chain stays right."""
        datagrams = _read_udp(CHECKED_IN)
        qm1 = next(i for i, (d, data) in enumerate(_isakmp_messages(datagrams)) if data[18] == QM and i > 9)
        ikes = [d for d in datagrams if d.payload != sw.SENTINEL]
        path = self.mktemp()
        pcap.write_pcap(path, ikes[: qm1 + 1] + [ikes[qm1]] + ikes[qm1 + 1 :])
        self.assertEqual(len(_isakmp_messages(_read_udp(path))), 16)
        keys = read_keylog(CHECKED_IN_KEYS)
        self.assertEqual(self.round_trip(path, keys), self.round_trip(CHECKED_IN, keys))

    def test_wrong_key_fails(self):
        """A wrong key makes the round trip fail: the check does decrypt what it compares."""
        keys = {cookie: bytes(len(key)) for cookie, key in read_keylog(CHECKED_IN_KEYS).items()}
        failure = self.assertRaises(self.failureException, self.round_trip, CHECKED_IN, keys)
        self.assertIn("does not decrypt", str(failure))


def record(workdir, destination: Path = CAPTURES):
    """Capture the checked-in exchanges into ``destination``; return the pcap and keys paths."""
    sw.prepare(workdir)
    run = sw.run(workdir, initiate=CHECKED_IN_CONNECTIONS)
    run.check_established()
    pcap_path, keys_path = destination / CHECKED_IN.name, destination / CHECKED_IN_KEYS.name
    shutil.copyfile(run.pcap, pcap_path)
    _write_keys(keys_path, run.encryption_keys(sw.INITIATOR))
    return pcap_path, keys_path


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    with tempfile.TemporaryDirectory(prefix="gdoi-ss-") as tmp:
        print(*record(tmp))
