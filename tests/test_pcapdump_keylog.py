"""pcapdump --keylog and gdoiserver.tools.decrypt: IKEv1 traffic decrypted with a keylog of Phase 1 keys.

The real traffic is the checked-in strongSwan capture (Main Mode PSK then Quick Mode with PFS, Aggressive Mode PSK
then Quick Mode) with the keys charon logged; synthetic exchanges cover 3DES, interleaved Phase 2 M-IDs and the
ways a message can fail to decrypt.
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
from gdoiserver.codec.payloads import KE, Notification
from gdoiserver.tools import pcapdump
from gdoiserver.tools.decrypt import Decryption, Decryptor, KeylogError, parse_keylog, read_keylog
from gdoiserver.tools.pcap import read_udp, write_pcap
from tests import tshark

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
