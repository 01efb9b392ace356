"""pcapdump --keylog and gdoiserver.tools.decrypt: IKEv1 traffic decrypted with a keylog of Phase 1 keys, and
GDOI GROUPKEY-PUSH messages opened with its KEK lines.

The real traffic is the checked-in strongSwan capture (Main Mode PSK then Quick Mode with PFS, Aggressive Mode PSK
then Quick Mode) with the keys charon logged; synthetic exchanges cover 3DES, interleaved Phase 2 M-IDs and the
ways a message can fail to decrypt; PUSH messages built by push.build_push cover the KEK lines, and tshark's
reading of them (tshark-push-iv in docs/wire-format.md).
"""

import contextlib
import io
import json
from pathlib import Path

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.codec import (
    SA,
    Attribute,
    Flags,
    Hash,
    Identification,
    Message,
    Nonce,
    Proposal,
    Transform,
    decode_message,
)
from gdoiserver.codec.cipher import IVChain, cipher_for
from gdoiserver.codec.constants import (
    DOI,
    ExchangeType,
    NotifyType,
    OakleyAttr,
    OakleyAuth,
    OakleyEncryption,
    OakleyGroup,
    OakleyHash,
    PayloadType,
    ProtocolID,
)
from gdoiserver.codec.cipher import phase1_iv
from gdoiserver.codec.gdoi import group_id
from gdoiserver.codec.payloads import KE, Notification
from gdoiserver.doi.gdoi import push
from gdoiserver.doi.gdoi.ack import build_ack
from gdoiserver.group.keys import KEKKeys
from gdoiserver.keylog import KeyLog
from gdoiserver.tools import pcapdump
from gdoiserver.tools.decrypt import (
    Decryption,
    Decryptor,
    KEKKey,
    KeylogError,
    kek_decryptors,
    parse_keylog,
    parse_keys,
    read_keylog,
)
from gdoiserver.tools.pcap import Datagram, read_udp, write_pcap
from tests import tshark
from tests.test_gdoi_push import GID, KeyServer

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
CAPTURE = str(CAPTURES / "strongswan-mm-am.pcap")
KEYS = str(CAPTURES / "strongswan-mm-am.keys")
MM_COOKIE, AM_COOKIE = "b31118ffcc7e1d0b", "ff0f7aae859e85d7"

#: The decrypted payload chain of each encrypted frame of the capture (RFC 2409 sections 5.4 and 5.5, RFC 3947
#: section 3.2): MM5 and MM6, QM1-QM3 with PFS, AM3, QM1-QM3 with PFS.
QM_PFS = ["HASH", "SA", "NONCE", "KE", "ID", "ID"]
DECRYPTED = {
    5: ["ID", "HASH"], 6: ["ID", "HASH"], 7: QM_PFS, 8: QM_PFS, 9: ["HASH"],
    12: ["HASH", "NAT_D", "NAT_D"], 13: QM_PFS, 14: QM_PFS, 15: ["HASH"],
}

MM, QM, INFO = ExchangeType.MAIN_MODE, ExchangeType.QUICK_MODE, ExchangeType.INFORMATIONAL
IC, RC = bytes.fromhex("a1a2a3a4a5a6a7a8"), bytes.fromhex("b1b2b3b4b5b6b7b8")
GXI, GXR = bytes(range(256)), bytes(range(255, -1, -1))  # g^xi, g^xr as sent: any octets serve the IV
KEY_3DES = bytes(range(1, 25))
QM_MID, INFO_MID = 0x11223344, 0x55667788


def oakley(encryption, key_length=None, hash_=OakleyHash.SHA):
    """A Phase 1 transform's attributes (RFC 2409 appendix A)."""
    attributes = [Attribute(OakleyAttr.ENCRYPTION_ALGORITHM, encryption)]
    if key_length is not None:
        attributes.append(Attribute(OakleyAttr.KEY_LENGTH, key_length))
    return tuple(attributes + [Attribute(OakleyAttr.HASH_ALGORITHM, hash_),
                               Attribute(OakleyAttr.AUTHENTICATION_METHOD, OakleyAuth.PRE_SHARED_KEY),
                               Attribute(OakleyAttr.GROUP_DESCRIPTION, OakleyGroup.MODP_2048)])


def main_mode_in_clear(chosen):
    """MM1-MM4 (RFC 2409 section 5.4): the initiator offers AES-128 then ``chosen``; the responder picks
    ``chosen``; then the KE payloads g^xi and g^xr."""
    def sa(*transforms):  # situation SIT_IDENTITY_ONLY (1); transform ID KEY_IKE (1) (RFC 2407 4.2, 4.4.1)
        return SA(DOI.IPSEC, 1, (Proposal(1, ProtocolID.ISAKMP, b"", transforms),))

    return [
        Message(IC, bytes(8), MM, 0, 0, (sa(Transform(1, 1, oakley(OakleyEncryption.AES_CBC, 128)),
                                            Transform(2, 1, chosen)),)),
        Message(IC, RC, MM, 0, 0, (sa(Transform(2, 1, chosen)),)),
        Message(IC, RC, MM, 0, 0, (KE(GXI), Nonce(b"i" * 16))),
        Message(IC, RC, MM, 0, 0, (KE(GXR), Nonce(b"r" * 16))),
    ]


def seal(chain, message):
    """``message`` encrypted under ``chain`` as it is decoded from the wire, and the chain after it."""
    data, after = chain.encrypt(message)
    return decode_message(data), after


def synthetic_exchange():
    """Main Mode with 3DES-CBC and SHA-1, then Quick Mode messages and an Informational exchange interleaved:
    each Phase 2 M-ID has its own chain from hash(last Phase 1 block | M-ID) (RFC 2409 appendix B).  Returns the
    messages in clear, and (encrypted message, the message it encrypts) pairs in sending order."""
    clear = main_mode_in_clear(oakley(OakleyEncryption.TRIPLEDES_CBC))
    p1 = IVChain.phase1(cipher_for(OakleyEncryption.TRIPLEDES_CBC), KEY_3DES, OakleyHash.SHA, GXI, GXR)
    plain = [
        Message(IC, RC, MM, 0, 0, (Identification.of("192.0.2.1"), Hash(bytes(20)))),
        Message(IC, RC, MM, 0, 0, (Identification.of("192.0.2.2"), Hash(bytes(range(20))))),
        Message(IC, RC, QM, 0, QM_MID, (Hash(b"\x01" * 20), Nonce(b"n" * 16))),
        Message(IC, RC, INFO, 0, INFO_MID, (Hash(b"\x02" * 20), Notification(
            DOI.IPSEC, ProtocolID.ISAKMP, NotifyType.R_U_THERE, IC + RC, (7).to_bytes(4, "big")))),  # RFC 3706
        Message(IC, RC, QM, 0, QM_MID, (Hash(b"\x03" * 20), Nonce(b"m" * 16))),
    ]
    mm5, p1 = seal(p1, plain[0])
    mm6, p1 = seal(p1, plain[1])
    qm, info = p1.for_message_id(QM_MID), p1.for_message_id(INFO_MID)
    qm1, qm = seal(qm, plain[2])
    inf, info = seal(info, plain[3])
    qm2, qm = seal(qm, plain[4])
    return clear, list(zip([mm5, mm6, qm1, inf, qm2], plain))


def run_main(*argv):
    """Run pcapdump's main(); return its status, the JSON lines it printed, and its standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = pcapdump.main(list(argv))
    return status, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


class PcapdumpKeylogTests(unittest.TestCase):
    """pcapdump --keylog on the checked-in strongSwan capture."""

    def keylog(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_capture_decrypts(self):
        """Every encrypted message of the capture decrypts with its payload chain and fields, "decrypted": true,
        and re-encrypts to the captured octets: exit 0, nothing on stderr."""
        status, lines, err = run_main("--keylog", KEYS, CAPTURE)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(lines), 15)
        for line in lines:
            self.assertNotIn("error", line)
            self.assertNotIn("decrypt_error", line)
            self.assertEqual(line.get("decrypted", False), "ENCRYPTION" in line["flags"], line["frame"])
        self.assertEqual({line["frame"]: line["chain"] for line in lines if "decrypted" in line}, DECRYPTED)
        by_frame = {line["frame"]: line for line in lines}
        mm5, mm6, qm1, am3 = by_frame[5], by_frame[6], by_frame[7], by_frame[12]
        # MM5/MM6: ID_IPV4_ADDR (1) of each side, and HASH_I/HASH_R of SHA-256's 32 octets
        self.assertEqual([(p["id_type"], p["data"]) for p in (mm5["payloads"][0], mm6["payloads"][0])],
                         [(1, "7f000001"), (1, "7f000002")])
        self.assertEqual(len(bytes.fromhex(mm5["payloads"][1]["hash_data"])), 32)
        self.assertEqual(mm5["encrypted"], {"next_payload": "ID", "length": 64})
        self.assertEqual(mm5["padding"], "00" * 16)  # charon pads a full block of 0x00 (cipher.py notes)
        # QM1: an ESP proposal (protocol 3) in UDP-Encapsulated-Tunnel mode (attribute 4 = 3, RFC 3947 5.1)
        proposal = qm1["payloads"][1]["proposals"][0]
        self.assertEqual(proposal["protocol_id"], 3)
        self.assertIn({"type": 4, "value": 3, "form": "TV"}, proposal["transforms"][0]["attributes"])
        self.assertEqual([p["data"] for p in qm1["payloads"][4:]], ["7f000001", "7f000001"])
        self.assertEqual(am3["initiator_cookie"], AM_COOKIE)

    def test_wrong_key(self):
        """With a wrong key every encrypted message carries a decrypt_error and no payloads; the messages in clear
        are shown as before; exit 1."""
        zeros = {cookie: bytes(len(key)) for cookie, key in read_keylog(KEYS).items()}
        path = self.keylog("".join(f"{c.hex()},{k.hex()}\n" for c, k in zeros.items()))
        status, lines, err = run_main("--keylog", path, CAPTURE)
        self.assertEqual((status, err), (1, ""))
        failed = {line["frame"] for line in lines if "decrypt_error" in line}
        self.assertEqual(failed, set(DECRYPTED))
        for line in lines:
            self.assertNotIn("decrypted", line)
            self.assertNotIn("error", line)
            if line["frame"] in failed:
                self.assertIn("does not decrypt under AES-CBC-", line["decrypt_error"])
                self.assertNotIn("payloads", line)
            else:
                self.assertIn("payloads", line)

    def test_key_for_one_sa_only(self):
        """A keylog holding the Main Mode SA's key alone decrypts that SA's messages; the Aggressive Mode SA's
        messages each report the missing key; exit 1."""
        key = read_keylog(KEYS)[bytes.fromhex(MM_COOKIE)]
        status, lines, _ = run_main("--keylog", self.keylog(f"{MM_COOKIE},{key.hex()}\n"), CAPTURE)
        self.assertEqual(status, 1)
        decrypted = {line["frame"] for line in lines if line.get("decrypted")}
        errors = {line["frame"]: line["decrypt_error"] for line in lines if "decrypt_error" in line}
        self.assertEqual(decrypted, {5, 6, 7, 8, 9})
        self.assertEqual(errors, dict.fromkeys((12, 13, 14, 15),
                                               f"no key for initiator cookie {AM_COOKIE} in the keylog"))

    def test_bad_keylog_lines(self):
        """A keylog line of bad form exits 2 before the capture is read, with one message on stderr naming the
        file, the line and what is wrong."""
        good = f"{MM_COOKIE},{'00' * 16}"
        cases = [
            (MM_COOKIE, "no comma"),
            (f"{MM_COOKIE[:-2]},{'00' * 16}", "16 hex digits"),
            (f"{MM_COOKIE[:-1]}x,{'00' * 16}", "hex digits"),
            (f"{MM_COOKIE},{'00' * 16}0", "hex digits"),
            (f"{MM_COOKIE},", "hex digits"),
            (f"{MM_COOKIE},{'00' * 5}", "5-octet encryption key"),
            (f"{MM_COOKIE},{'11' * 16}", "appears again with another key"),
            (f"{MM_COOKIE} {'00' * 16}", "no comma"),
            ("caf\u00e9,00", "not ASCII"),
        ]
        for bad, words in cases:
            path = self.keylog(f"# charon's keys\n{good}\n\n{bad}\n")
            status, lines, err = run_main("--keylog", path, CAPTURE)
            self.assertEqual((status, lines), (2, []), bad)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith(f"pcapdump: {path}:4: "), err)
            self.assertIn(words, err)

    def test_unreadable_keylog(self):
        """A keylog that does not exist, or is a directory, exits 2 with one message naming it."""
        for path, words in ((self.mktemp(), "No such file"), (str(CAPTURES), "Is a directory")):
            status, lines, err = run_main("--keylog", path, CAPTURE)
            self.assertEqual((status, lines), (2, []))
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith(f"pcapdump: {path}: {words}"), err)

    def test_retransmission(self):
        """A datagram resent after its exchange moved on (MM5 after MM6, QM1 after QM2) decrypts under the chain it
        had the first time and is marked "retransmission"; it does not advance the chain, so every later message
        decrypts too: exit 0."""
        datagrams = list(read_udp(CAPTURE))
        mm5, qm1 = datagrams[4], datagrams[12]  # frames 5 and 13
        resent = datagrams[:6] + [mm5] + datagrams[6:14] + [qm1] + datagrams[14:]
        path = self.mktemp()
        write_pcap(path, resent)
        status, lines, _ = run_main("--keylog", KEYS, path)
        self.assertEqual(status, 0)
        self.assertEqual(len(lines), 17)
        again = [line for line in lines if line.get("retransmission")]
        self.assertEqual([line["frame"] for line in again], [7, 16])
        originals = {line["frame"]: line for line in lines}
        for line, first in zip(again, (originals[5], originals[14])):
            self.assertTrue(line["decrypted"])
            self.assertEqual((line["chain"], line["payloads"]), (first["chain"], first["payloads"]))
            self.assertNotIn("retransmission", first)
        encrypted = [line for line in lines if "ENCRYPTION" in line["flags"]]
        self.assertTrue(all(line.get("decrypted") for line in encrypted))

    def test_reencryption_is_checked(self):
        """A decrypted message that does not re-encrypt to the captured octets is an error (exit 1): here the
        padding of each decrypted body is dropped, so MM5 and MM6, whose padding is a whole block of 0x00, re-encrypt
        one block shorter; the others are padded back to the same octets."""
        decryptor = Decryptor(read_keylog(KEYS))

        def lossy(d, message, doi):
            result = decryptor(d, message, doi)
            if result is None or result.error:
                return result
            return attrs.evolve(result, message=attrs.evolve(result.message, padding=b""))

        out = io.StringIO()
        self.assertEqual(pcapdump.dump(CAPTURE, out, decryptor=lossy), 1)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        errors = {line["frame"]: line["error"]["reason"] for line in lines if "error" in line}
        self.assertEqual(set(errors), {5, 6})
        self.assertIn("re-encrypts to different octets (76 for 92)", errors[5])

    def test_agrees_with_tshark(self):
        """tshark, given the same keys in its ikev1_decryption_table, decrypts the same frames and reads the same
        payload types at the top of each frame's chain."""
        tshark.require_tshark()
        options = []
        for cookie, key in read_keylog(KEYS).items():
            options += ["-o", f"uat:ikev1_decryption_table:{cookie.hex()},{key.hex()}"]
        theirs, decrypted = {}, set()
        for row in tshark.packets(CAPTURE, *options):
            layers = row["_source"]["layers"]
            if "isakmp" not in layers:
                continue
            frame, isakmp = int(layers["frame"]["frame.number"]), layers["isakmp"]
            node = isakmp.get("isakmp.enc.data", isakmp)
            if node is not isakmp:
                self.assertIsInstance(node, dict, f"tshark did not decrypt frame {frame}")
                decrypted.add(frame)
            types = node.get("isakmp.typepayload", [])
            theirs[frame] = [int(t) for t in (types if isinstance(types, list) else [types])]
        status, lines, _ = run_main("--keylog", KEYS, CAPTURE)
        self.assertEqual(status, 0)
        ours = {line["frame"]: [int(PayloadType[name]) for name in line["chain"]] for line in lines}
        self.assertEqual(decrypted, set(DECRYPTED))
        self.assertEqual(theirs, ours)


class KeylogTests(unittest.TestCase):
    def test_forms_accepted(self):
        """Comments, blank lines, surrounding white space, CRLF line ends and upper-case hex are all read; keys of
        AES-128, 3DES/AES-192 and AES-256 sizes are accepted, and a line given twice alike is no conflict."""
        keys = parse_keylog([
            "# initiator cookie,Ka\r\n", "\n", "   \n",
            "  0102030405060708,000102030405060708090A0B0C0D0E0F \r\n",
            "1112131415161718," + "11" * 24 + "\n",
            "2122232425262728," + "22" * 32,
            "2122232425262728," + "22" * 32,
        ])
        self.assertEqual(keys, {
            bytes.fromhex("0102030405060708"): bytes(range(16)),
            bytes.fromhex("1112131415161718"): b"\x11" * 24,
            bytes.fromhex("2122232425262728"): b"\x22" * 32,
        })

    def test_error_names_source_and_line(self):
        """KeylogError carries the source, the 1-based line number and the reason, and says all three."""
        e = self.assertRaises(KeylogError, parse_keylog, ["# c", "0102030405060708"], "k.log")
        self.assertEqual((e.source, e.line, str(e)), ("k.log", 2, f"k.log:2: {e.reason}"))

    def test_checked_in_keys(self):
        """The checked-in capture's keys file holds one AES-128 and one AES-256 key."""
        keys = read_keylog(KEYS)
        self.assertEqual({c.hex(): len(k) for c, k in keys.items()}, {MM_COOKIE: 16, AM_COOKIE: 32})


class DecryptorTests(unittest.TestCase):
    """The Decryptor on synthetic exchanges: chains, retransmissions, and every way of not decrypting."""

    def primed(self, keys=None, chosen=None):
        decryptor = Decryptor({IC: KEY_3DES} if keys is None else keys)
        for m in main_mode_in_clear(chosen or oakley(OakleyEncryption.TRIPLEDES_CBC)):
            self.assertIsNone(decryptor.decrypt(m))
        return decryptor

    def test_interleaved_exchanges(self):
        """3DES-CBC Main Mode, then a Quick Mode and an Informational exchange interleaved: each message decrypts
        to what was sent, under the transform the responder chose rather than the initiator's first offer, and
        each M-ID follows its own chain from the last Phase 1 block (RFC 2409 appendix B)."""
        clear, sealed = synthetic_exchange()
        decryptor = Decryptor({IC: KEY_3DES})
        for m in clear:
            self.assertIsNone(decryptor.decrypt(m))
        for message, plain in sealed:
            result = decryptor.decrypt(message)
            self.assertIsNone(result.error)
            self.assertEqual(result.message.payloads, plain.payloads)
            self.assertEqual(result.chain.encrypt(result.message)[0], message.encode())
            self.assertFalse(result.retransmission)

    def test_retransmission_does_not_advance(self):
        """MM5 resent after MM6 and Quick Mode began decrypts again under its first chain and is marked; the
        messages after it still decrypt, so no chain moved."""
        clear, sealed = synthetic_exchange()
        (mm5, plain5), (mm6, _), (qm1, _), (inf, _), (qm2, _) = sealed
        decryptor = Decryptor({IC: KEY_3DES})
        for m in clear:
            decryptor.decrypt(m)
        results = [decryptor.decrypt(m) for m in (mm5, mm6, qm1, mm5, inf, qm1, qm2)]
        self.assertEqual([r.error for r in results], [None] * 7)
        self.assertEqual([r.retransmission for r in results], [False, False, False, True, False, True, False])
        self.assertEqual(results[3].message, results[0].message)
        self.assertEqual(results[3].message.payloads, plain5.payloads)

    def test_clear_retransmission_learns_once(self):
        """MM3 resent in clear (the same KE again) does not count as g^xr: the Phase 1 IV stays right."""
        clear, sealed = synthetic_exchange()
        decryptor = Decryptor({IC: KEY_3DES})
        for m in clear[:3] + [clear[2]] + clear[3:]:
            decryptor.decrypt(m)
        self.assertIsNone(decryptor.decrypt(sealed[0][0]).error)

    def test_reasons(self):
        """Each way of not decrypting is reported as a reason, never raised: no key, no Phase 1 seen, an
        unsupported cipher, a key of the wrong size, a body of broken blocks, a wrong key."""
        clear, sealed = synthetic_exchange()
        mm5 = sealed[0][0]
        cases = [
            (Decryptor({}), "no key for initiator cookie a1a2a3a4a5a6a7a8 in the keylog"),
            (Decryptor({IC: KEY_3DES}), "Phase 1 of initiator cookie a1a2a3a4a5a6a7a8 not seen in clear (nothing)"),
            (self.primed(chosen=oakley(OakleyEncryption.DES_CBC)), "DES-CBC (Oakley encryption algorithm 1)"),
            (self.primed(chosen=oakley(OakleyEncryption.AES_CBC, 256)), "AES-CBC-256 needs a 32-octet key, not 24"),
            (self.primed(chosen=oakley(OakleyEncryption.TRIPLEDES_CBC, hash_=99)), "Oakley hash algorithm 99"),
            (self.primed({IC: bytes(24)}), "does not decrypt under 3DES-CBC"),
        ]
        for decryptor, reason in cases:
            result = decryptor.decrypt(mm5)
            self.assertIsNone(result.message)
            self.assertIn(reason, result.error)
        broken = attrs.evolve(mm5, ciphertext=mm5.ciphertext[:-1])
        self.assertIn("not a whole number of 8-octet blocks", self.primed().decrypt(broken).error)
        only_offer = Decryptor({IC: KEY_3DES})
        only_offer.decrypt(clear[0])
        self.assertIn("(no responder's SA and 0 KE)", only_offer.decrypt(mm5).error)

    def test_failure_leaves_the_chain(self):
        """A message that does not decrypt (a corrupted copy of MM6, after MM5) leaves the Phase 1 chain where MM5
        left it: the real MM6 and the rest decrypt after it."""
        clear, sealed = synthetic_exchange()
        (mm5, _), (mm6, _) = sealed[:2]
        corrupt = attrs.evolve(mm6, ciphertext=bytes(len(mm6.ciphertext)))
        decryptor = self.primed()
        self.assertIsNone(decryptor.decrypt(mm5).error)
        self.assertIn("does not decrypt", decryptor.decrypt(corrupt).error)
        self.assertEqual([decryptor.decrypt(m).error for m, _ in sealed[1:]], [None] * (len(sealed) - 1))

    def test_groupkey_push_needs_a_kek(self):
        """A GROUPKEY-PUSH (exchange 33 under GDOI) is under the KEK, not a Phase 1 SA: without a KEK decryptor
        for its KEK SPI it reports "no KEK key"; one given for that SPI is called.  Under the IPsec DOI, exchange 33
        is New Group Mode and goes by the keylog."""
        push = Message(IC, RC, ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION, 0, ciphertext=bytes(32),
                       next_payload=PayloadType.SEQ)
        decryptor = self.primed()
        self.assertEqual(decryptor.decrypt(push, DOI.GDOI),
                         Decryption(error="no KEK key for KEK SPI a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8 (GROUPKEY-PUSH)"))
        self.assertIn("does not decrypt", decryptor.decrypt(push, DOI.IPSEC).error)
        calls = []

        def kek(message, doi):
            calls.append((message, doi))
            return Decryption(error="the KEK decryptor was asked")

        decryptor = Decryptor({}, keks={IC + RC: kek})
        self.assertEqual(decryptor.decrypt(push, DOI.GDOI).error, "the KEK decryptor was asked")
        self.assertEqual(calls, [(push, DOI.GDOI)])
        other = attrs.evolve(push, responder_cookie=bytes(8))
        self.assertIn("no KEK key for KEK SPI", decryptor.decrypt(other, DOI.GDOI).error)

    @settings(max_examples=300, deadline=None)
    @given(cookie=st.sampled_from([IC, bytes(range(1, 9))]), exchange=st.sampled_from([2, 4, 5, 32, 33, 240]),
           message_id=st.integers(0, 2**32 - 1), next_payload=st.integers(0, 255),
           ciphertext=st.binary(min_size=1, max_size=96), doi=st.sampled_from([DOI.IPSEC, DOI.GDOI]))
    def test_never_raises(self, cookie, exchange, message_id, next_payload, ciphertext, doi):
        """Any encrypted message (any cookie, exchange, M-ID, first payload and body) gets a Decryption with
        either a decrypted message or a reason; nothing is raised."""
        decryptor = self.primed()
        message = Message(cookie, RC, exchange, Flags.ENCRYPTION, message_id, ciphertext=ciphertext,
                          next_payload=next_payload)
        result = decryptor.decrypt(message, doi)
        self.assertIsInstance(result, Decryption)
        self.assertNotEqual(result.message is None, result.error is None)


#: The key server and member addresses of the synthetic GROUPKEY-PUSH captures.
KS, GM, GROUP_ADDRESS = "192.0.2.1", "192.0.2.10", "239.192.0.1"


class PushCapture:
    """A capture of GDOI rekeys: a TEK rekey, a KEK rekey (new KEK, old KEK deleted) under the first KEK, a TEK
    rekey under the new KEK, each sent to the group address on UDP 848, and a member's ACK of the first; and a
    keylog of both KEKs written by KeyLog.write_kek."""

    def __init__(self, test: unittest.TestCase):
        self.ks = KeyServer("p256")
        self.old = self.ks.kek
        self.first = self.ks.rekey(10.0)
        self.first_teks = self.ks.generation.teks
        self.new = KEKKeys(self.old.policy, bytes(range(1, 17)), b"\x42" * 16, 20.0, 3020.0, 0)
        self.kek_rekey = self.ks.rekey(20.0, new_kek=self.new, deletes=(push.delete_kek(self.old.spi),))
        self.new.seq = self.ks.kek.seq
        self.ks.kek = self.new
        self.under_new = self.ks.rekey(30.0)
        self.ack = build_ack(self.old.spi, 1, group_id(GID.number), bytes(range(32)))
        self.pcap = test.mktemp()
        write_pcap(self.pcap, [
            Datagram(KS, GROUP_ADDRESS, 848, 848, self.first, 10.0),
            Datagram(GM, KS, 848, 848, self.ack, 10.5),
            Datagram(KS, GROUP_ADDRESS, 848, 848, self.kek_rekey, 20.0),
            Datagram(KS, GROUP_ADDRESS, 848, 848, self.under_new, 30.0),
        ])
        self.keylog = test.mktemp()
        log = KeyLog(self.keylog)
        for kek in (self.old, self.new):
            log.write_kek(kek.spi, kek.key, kek.policy.key_bits)


class PushKeylogTests(unittest.TestCase):
    """pcapdump --keylog opens GROUPKEY-PUSH messages with the keylog's KEK lines (push.open_push)."""

    def test_push_messages_decrypt(self):
        """With both KEK lines every PUSH decrypts under its own KEK and re-encrypts to the captured octets (exit
        0): SEQ 1, 2, 3; the payload chains of a TEK rekey and of a KEK rekey with its Delete; the first PUSH's
        new TEK SPI and keys as the key server made them; the ACK in the clear with HASH, SEQ and ID."""
        capture = PushCapture(self)
        status, lines, err = run_main("--keylog", capture.keylog, capture.pcap)
        self.assertEqual((status, err), (0, ""))
        first, ack, kek_rekey, under_new = lines
        for line in (first, kek_rekey, under_new):
            self.assertTrue(line["decrypted"], line)
            self.assertEqual((line["exchange"], line["doi"]), ("GROUPKEY_PUSH", 2))
            self.assertNotIn("error", line)
        self.assertEqual(first["chain"], ["SEQ", "SA", "KD", "SIG"])
        self.assertEqual(kek_rekey["chain"], ["SEQ", "D", "SA", "KD", "SIG"])
        self.assertEqual(under_new["chain"], ["SEQ", "SA", "KD", "SIG"])
        self.assertEqual([line["payloads"][0]["sequence_number"] for line in (first, kek_rekey, under_new)],
                         [1, 2, 3])
        self.assertEqual(first["initiator_cookie"] + first["responder_cookie"], capture.old.spi.hex())
        self.assertEqual(under_new["initiator_cookie"] + under_new["responder_cookie"], capture.new.spi.hex())
        self.assertEqual(kek_rekey["payloads"][1]["spis"], [capture.old.spi.hex()])
        (tek,) = capture.first_teks
        (sat,) = first["payloads"][1]["payloads"]
        self.assertEqual(sat["tek"]["spi"], tek.spi.hex())
        (packet,) = first["payloads"][2]["key_packets"]
        self.assertEqual([a["value"] for a in packet["attributes"]],
                         [tek.encryption_key.hex(), tek.integrity_key.hex()])
        self.assertEqual(ack["exchange"], "GROUPKEY_PUSH_ACK")
        self.assertEqual(ack["chain"], ["HASH", "SEQ", "ID"])
        self.assertNotIn("decrypted", ack)

    def test_copies_marked(self):
        """The same PUSH again (a retransmission, or the unicast copy of a multicast PUSH) decrypts alike and is
        marked "retransmission"; the first copy is not."""
        capture = PushCapture(self)
        path = self.mktemp()
        write_pcap(path, [Datagram(KS, GROUP_ADDRESS, 848, 848, capture.first, 10.0),
                          Datagram(KS, GM, 848, 848, capture.first, 10.1),
                          Datagram(KS, GROUP_ADDRESS, 848, 848, capture.kek_rekey, 20.0)])
        status, lines, _ = run_main("--keylog", capture.keylog, path)
        self.assertEqual(status, 0)
        self.assertEqual([line.get("retransmission", False) for line in lines], [False, True, False])
        self.assertEqual(lines[1]["payloads"], lines[0]["payloads"])

    def test_missing_kek(self):
        """With only the first KEK's line, the PUSH under the new KEK reports the missing KEK; the others still
        decrypt; exit 1.  Without --keylog nothing is decrypted and every line is the header alone (exit 0)."""
        capture = PushCapture(self)
        path = self.mktemp()
        KeyLog(path).write_kek(capture.old.spi, capture.old.key, 128)
        status, lines, _ = run_main("--keylog", path, capture.pcap)
        self.assertEqual(status, 1)
        self.assertEqual([line.get("decrypted", False) for line in lines], [True, False, True, False])
        self.assertEqual(lines[3]["decrypt_error"],
                         f"no KEK key for KEK SPI {capture.new.spi.hex()} (GROUPKEY-PUSH)")
        status, lines, _ = run_main(capture.pcap)
        self.assertEqual(status, 0)
        self.assertEqual([line.get("payloads") is None for line in lines], [True, False, True, True])

    def test_wrong_key(self):
        """A KEK line with the right SPI and a wrong key gives decrypt_error naming the cipher, not a crash or a
        garbled message; exit 1."""
        capture = PushCapture(self)
        path = self.mktemp()
        KeyLog(path).write_kek(capture.old.spi, bytes(16), 128)
        status, lines, _ = run_main("--keylog", path, capture.pcap)
        self.assertEqual(status, 1)
        self.assertIn("does not decrypt under the KEK (AES-CBC-128)", lines[0]["decrypt_error"])
        self.assertNotIn("payloads", lines[0])

    def test_cut_short(self):
        """A PUSH whose body is not whole cipher blocks (one octet cut off, the Length fixed) is reported with the
        reason, never raised."""
        capture = PushCapture(self)
        keys = parse_keys([f"KEK {capture.old.spi.hex()} {capture.old.key.hex()} 128"])
        decryptor = Decryptor(keys.phase1, kek_decryptors(keys.keks))
        cut = decode_message(capture.first[:-1][:24] + (len(capture.first) - 1).to_bytes(4, "big")
                             + capture.first[28:-1], DOI.GDOI)
        result = decryptor.decrypt(cut, DOI.GDOI)
        self.assertIn("not a whole number of 16-octet blocks", result.error)

    def test_reencryption_is_checked(self):
        """A decrypted PUSH that does not re-encrypt to its octets is an error: here the padding is dropped, so
        the body is no longer whole blocks."""
        capture = PushCapture(self)
        keys = parse_keys(Path(capture.keylog).read_text().splitlines())
        decryptor = Decryptor(keys.phase1, kek_decryptors(keys.keks))

        def lossy(d, message, doi):
            result = decryptor(d, message, doi)
            if result is None or result.error:
                return result
            return attrs.evolve(result, message=attrs.evolve(result.message, padding=b""))

        out = io.StringIO()
        self.assertEqual(pcapdump.dump(capture.pcap, out, decryptor=lossy), 1)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([("error" in line) for line in lines], [True, False, True, True])
        self.assertIn("does not re-encrypt", lines[0]["error"]["reason"])

    def test_mixed_keylog(self):
        """A keylog with the strongSwan SA lines and a KEK line still decrypts the whole strongSwan capture."""
        capture = PushCapture(self)
        path = self.mktemp()
        Path(path).write_text(Path(KEYS).read_text() + Path(capture.keylog).read_text())
        status, lines, _ = run_main("--keylog", path, CAPTURE)
        self.assertEqual(status, 0)
        self.assertEqual({line["frame"] for line in lines if line.get("decrypted")}, set(DECRYPTED))

    def test_bad_kek_lines(self):
        """A bad KEK line exits 2 before the capture is read, naming the file, the line and what is wrong."""
        spi, key = "00112233445566778899aabbccddeeff", "11" * 16
        cases = [
            (f"KEK {spi} {key}", "not 3 words"),
            (f"KEK {spi} {key} 128 extra", "not 5 words"),
            (f"KEK {spi[:-2]} {key} 128", "not 15"),
            (f"KEK {spi} {key}x 128", "hex digits"),
            (f"KEK {spi} {key} 64", "key bits '64'"),
            (f"KEK {spi} {key} bits", "key bits 'bits'"),
            (f"KEK {spi} {key} 256", "16-octet KEK key is not 256 bits"),
            (f"KEK {spi} {'22' * 16} 128", "appears again with another key"),
        ]
        for bad, words in cases:
            path = self.mktemp()
            Path(path).write_text(f"# keys\nKEK {spi} {key} 128\n\n{bad}\n")
            status, lines, err = run_main("--keylog", path, CAPTURE)
            self.assertEqual((status, lines), (2, []), bad)
            self.assertTrue(err.startswith(f"pcapdump: {path}:4: "), err)
            self.assertIn(words, err)

    @settings(max_examples=300, deadline=None)
    @given(ciphertext=st.binary(min_size=1, max_size=96), key_bits=st.sampled_from([128, 192, 256]),
           next_payload=st.integers(0, 255), message_id=st.integers(0, 1))
    def test_never_raises(self, ciphertext, key_bits, next_payload, message_id):
        """Any encrypted exchange-33 message under a KEK of the keylog (any body, first payload, key size, M-ID)
        gets a Decryption with either a decrypted message or a reason; nothing is raised."""
        kek = KEKKey(IC + RC, bytes(range(key_bits // 8)), key_bits)
        decryptor = Decryptor({}, kek_decryptors({kek.spi: kek}))
        message = Message(IC, RC, ExchangeType.GROUPKEY_PUSH, Flags.ENCRYPTION, message_id, ciphertext=ciphertext,
                          next_payload=next_payload)
        result = decryptor.decrypt(message, DOI.GDOI)
        self.assertIsInstance(result, Decryption)
        self.assertNotEqual(result.message is None, result.error is None)

    def test_parse_keys(self):
        """parse_keys reads SA and KEK lines apart; parse_keylog keeps its old result, the SA keys alone; the same
        KEK line twice is no conflict."""
        lines = ["0102030405060708," + "00" * 16, "KEK " + "ab" * 16 + " " + "cd" * 24 + " 192",
                 "  KEK " + "ab" * 16 + " " + "cd" * 24 + " 192  "]
        keys = parse_keys(lines)
        self.assertEqual(keys.phase1, {bytes.fromhex("0102030405060708"): bytes(16)})
        self.assertEqual(keys.keks, {b"\xab" * 16: KEKKey(b"\xab" * 16, b"\xcd" * 24, 192)})
        self.assertEqual(parse_keylog(lines), keys.phase1)
        self.assertNotIn("cd" * 24, repr(keys.keks))


class TsharkPushTests(unittest.TestCase):
    """What tshark 4.0.17 makes of our GROUPKEY-PUSH (docs/wire-format.md, tshark-push-iv)."""

    def test_header_only(self):
        """tshark dissects the PUSH header as we build it (cookies = the KEK SPI, Next Payload SEQ, exchange 33, the
        Encryption flag, M-ID 0, Length) and shows the body as encrypted data of Length - 28 octets, without
        decrypting it even with the KEK's cookie and key in its ikev1_decryption_table (no Phase 1 was seen under
        those cookies); nothing is malformed."""
        capture = PushCapture(self)
        old = capture.old
        table = ["-o", f"uat:ikev1_decryption_table:{old.spi[:8].hex()},{old.key.hex()}"]
        self.assertEqual(tshark.problems(capture.pcap, *table), [])
        first = tshark.packets(capture.pcap, *table)[0]["_source"]["layers"]["isakmp"]
        colons = lambda b: ":".join(f"{x:02x}" for x in b)  # noqa: E731
        header = {k: first[k] for k in ("isakmp.ispi", "isakmp.rspi", "isakmp.nextpayload", "isakmp.exchangetype",
                                        "isakmp.flags", "isakmp.messageid", "isakmp.length")}
        self.assertEqual(header, {"isakmp.ispi": colons(old.spi[:8]), "isakmp.rspi": colons(old.spi[8:]),
                                  "isakmp.nextpayload": "18", "isakmp.exchangetype": "33", "isakmp.flags": "0x01",
                                  "isakmp.messageid": "0x00000000", "isakmp.length": str(len(capture.first))})
        self.assertEqual(first["isakmp.enc.data"], "")  # a leaf: no decrypted subtree
        self.assertNotIn("isakmp.typepayload", first)
        text = tshark._run(capture.pcap, "-V", *table)
        self.assertIn(f"Encrypted Data ({len(capture.first) - 28} bytes)", text)

    def test_push_iv(self):
        """tshark-push-iv: when tshark has seen a Phase 1 under the KEK's cookies (a Main Mode in clear, AES-128 and
        SHA2-256, forged for the test) it decrypts the PUSH body from the Phase 1 IV hash(g^xi | g^xr), as RFC 2409
        appendix B chains an ISAKMP SA.  Our PUSH carries its own IV as the first block, so the first block it
        decrypts is garbage: the "SEQ" header it reads is exactly the first four octets of that garbage (computed
        here), and the packet is malformed.  No ikev1_decryption_table entry can fix this."""
        capture = PushCapture(self)
        old = capture.old
        ic, rc = old.spi[:8], old.spi[8:]
        chosen = oakley(OakleyEncryption.AES_CBC, 128, OakleyHash.SHA2_256)
        phase1 = [attrs.evolve(m, initiator_cookie=ic, responder_cookie=rc if any(m.responder_cookie) else bytes(8))
                  for m in main_mode_in_clear(chosen)]
        datagrams = [Datagram(*((GM, KS) if i % 2 == 0 else (KS, GM)), 500, 500, m.encode(), float(i))
                     for i, m in enumerate(phase1)]
        datagrams.append(Datagram(GM, KS, 500, 500, capture.first, 4.0))  # as an initiator's Phase 1 message
        path = self.mktemp()
        write_pcap(path, datagrams)
        table = ["-o", f"uat:ikev1_decryption_table:{ic.hex()},{old.key.hex()}"]
        rows = tshark.packets(path, *table)
        layers = rows[4]["_source"]["layers"]
        isakmp = layers["isakmp"]
        tshark_iv = phase1_iv(OakleyHash.SHA2_256, GXI, GXR, 16)
        garbage = push.kek_cipher(128).decrypt(old.key, tshark_iv, capture.first[28:44])
        seq_header = isakmp["isakmp.enc.data"]["isakmp.typepayload_tree"]
        self.assertEqual(int(seq_header["isakmp.nextpayload"]), garbage[0])
        self.assertEqual(int(seq_header["isakmp.payloadlength"]), int.from_bytes(garbage[2:4], "big"))
        self.assertIn("_ws.malformed", layers)
        header, plaintext = push.open_push(capture.first, old.spi, old.key, 128)
        self.assertNotEqual(garbage[:4], plaintext[:4])  # our own reading of the same octets is a SEQ payload
        self.assertEqual(plaintext[:4], bytes([PayloadType.SA, 0, 0, 8]))
