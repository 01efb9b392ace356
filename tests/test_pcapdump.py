"""The pcapdump tool: one JSON line per ISAKMP message of a capture, and its exit status."""

import contextlib
import io
import ipaddress
import json
import os
import subprocess
import sys
from typing import ClassVar

import attrs
from twisted.trial import unittest

import gdoiserver
from gdoiserver.codec import (
    REGISTRY,
    SA,
    Attribute,
    Flags,
    Hash,
    Identification,
    Message,
    Nonce,
    Proposal,
    Transform,
    UnknownPayload,
    VendorID,
)
from gdoiserver.codec.constants import IDType
from gdoiserver.codec.gdoi import GAP, GroupSA
from gdoiserver.tools import jsonview, pcapdump
from gdoiserver.tools.pcap import Datagram, write_pcap
from tests import tshark

ICOOKIE = bytes.fromhex("0102030405060708")
RCOOKIE = bytes.fromhex("1112131415161718")

#: Main Mode message 1: one IKE proposal (AES-CBC-256, SHA2-256, PSK, MODP-2048, 28800 s) and the NAT-T vendor ID.
MM1 = Message(ICOOKIE, bytes(8), 2, 0, 0, (
    SA(1, 1, (Proposal(1, 1, b"", (Transform(1, 1, (
        Attribute(1, 7), Attribute(14, 256), Attribute(2, 4), Attribute(3, 1), Attribute(4, 14), Attribute(11, 1),
        Attribute(12, b"\x00\x00\x70\x80"),
    )),)),)),
    VendorID(bytes.fromhex("4a131c81070358455c5728f20e95452f")),
))
#: Main Mode message 5 after the float to UDP 4500: encrypted, first payload ID (5).
MM5 = Message(ICOOKIE, RCOOKIE, 2, Flags.ENCRYPTION, 0, ciphertext=bytes(range(48)), next_payload=5)
#: A GROUPKEY-PULL message on UDP 848, in clear for the test's sake: HASH, Nonce and the group ID (key ID 1234).
PULL = Message(ICOOKIE, RCOOKIE, 32, 0, 0x01020304,
               (Hash(bytes(32)), Nonce(bytes(range(16))), Identification.key_id(1234)))

#: A message whose Vendor ID payload claims more octets than the message holds.
MALFORMED = bytes.fromhex(
    "0102030405060708"  # initiator cookie
    "0000000000000000"  # responder cookie
    "0d"  # next payload: Vendor ID (13)
    "10"  # version 1.0
    "02"  # exchange type: Identity Protection (Main Mode)
    "00"  # flags
    "00000000"  # message ID
    "00000028"  # length: 40 octets, the whole datagram
    "00"  # VID: next payload none
    "00"  # RESERVED
    "0028"  # payload length 40: overruns the 12 octets left
    "0102030405060708"  # vendor ID data
)

T0 = 1700000000.0


def datagram(payload, sport=500, dport=500, time=T0, src="192.0.2.1", dst="192.0.2.2"):
    return Datagram(src, dst, sport, dport, payload, time)


class PcapdumpTests(unittest.TestCase):
    def capture(self, datagrams) -> str:
        path = self.mktemp()
        write_pcap(path, datagrams)
        return path

    def run_main(self, *argv):
        """Run main(); return its status, the JSON lines it printed, and its standard error."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = pcapdump.main(list(argv))
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        return status, lines, err.getvalue()

    def test_good_messages(self):
        """Clear, encrypted and NAT-T messages decode and re-encode: exit 0, one line each with the frame, the
        addresses, the header, the payload chain and the payload fields."""
        path = self.capture([
            datagram(MM1.encode(), time=T0 + 0.5),
            datagram(b"\0\0\0\0" + MM5.encode(), 4500, 4500, T0 + 1),
            datagram(b"\xff", 4500, 4500, T0 + 2),  # NAT-keepalive: no line
            datagram(b"not ISAKMP", 53, 53, T0 + 3),  # DNS port: no line
        ])
        status, lines, err = self.run_main(path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(len(lines), 2)
        mm1, mm5 = lines
        self.assertEqual(
            {k: mm1[k] for k in ("frame", "time", "src", "sport", "dst", "dport", "doi", "length", "exchange",
                                 "exchange_type", "flags", "message_id", "initiator_cookie", "responder_cookie",
                                 "chain")},
            {"frame": 1, "time": T0 + 0.5, "src": "192.0.2.1", "sport": 500, "dst": "192.0.2.2", "dport": 500,
             "doi": 1, "length": len(MM1.encode()), "exchange": "IDENTITY_PROTECTION", "exchange_type": 2,
             "flags": [], "message_id": 0, "initiator_cookie": ICOOKIE.hex(), "responder_cookie": "0" * 16,
             "chain": ["SA", "VID"]},
        )
        self.assertNotIn("error", mm1)
        sa, vid = mm1["payloads"]
        transform = sa["proposals"][0]["transforms"][0]
        self.assertEqual((sa["payload"], sa["doi"], sa["situation"]), ("SA", 1, 1))
        self.assertEqual(transform["attributes"][0], {"type": 1, "value": 7, "form": "TV"})
        self.assertEqual(transform["attributes"][-1], {"type": 12, "value": "00007080", "form": "TLV"})
        self.assertEqual(vid, {"payload": "VID", "vendor_id": "4a131c81070358455c5728f20e95452f"})
        self.assertEqual((mm5["frame"], mm5["sport"], mm5["non_esp_marker"]), (2, 4500, True))
        self.assertEqual((mm5["flags"], mm5["chain"]), (["ENCRYPTION"], ["ID"]))
        self.assertEqual(mm5["encrypted"], {"next_payload": "ID", "length": 48})
        self.assertNotIn("payloads", mm5)

    def test_gdoi_port_and_doi_option(self):
        """On UDP 848 messages are read under DOI 2, so exchange 32 is GROUPKEY-PULL; --doi 1 makes it Quick Mode."""
        path = self.capture([datagram(PULL.encode(), 848, 848)])
        status, [line], _ = self.run_main(path)
        self.assertEqual(status, 0)
        self.assertEqual((line["doi"], line["exchange"], line["exchange_type"]), (2, "GROUPKEY_PULL", 32))
        self.assertEqual((line["message_id"], line["chain"]), (0x01020304, ["HASH", "NONCE", "ID"]))
        self.assertEqual(line["payloads"][2]["data"], (1234).to_bytes(4, "big").hex())
        status, [line], _ = self.run_main(path, "--doi", "1")
        self.assertEqual((status, line["doi"], line["exchange"]), (0, 1, "QUICK_MODE"))

    def test_gdoi_payloads_show(self):
        """The GDOI codec's payloads show without code of their own in the view: a GDOI SA with a GAP inside it."""
        sa = GroupSA(payloads=(GAP((Attribute(1, 30),)),))  # GAP: ACTIVATION_TIME_DELAY 30 s (RFC 6407 5.7)
        pull2 = Message(ICOOKIE, RCOOKIE, 32, 0, 9, (Hash(bytes(32)), Nonce(bytes(range(16))), sa))
        status, [line], _ = self.run_main(self.capture([datagram(pull2.encode(), 848, 848)]))
        self.assertEqual((status, line["chain"]), (0, ["HASH", "NONCE", "SA"]))
        self.assertEqual(line["payloads"][2], {"payload": "SA", "doi": 2, "situation": 0, "payloads": [
            {"payload": "GAP", "attributes": [{"type": 1, "value": 30, "form": "TV"}]}]})

    def test_malformed_message(self):
        """A message that does not decode gives a line with the Notify name, reason and offset, and exit 1; the
        other messages are still printed."""
        path = self.capture([datagram(MALFORMED), datagram(MM1.encode())])
        status, lines, _ = self.run_main(path)
        self.assertEqual(status, 1)
        self.assertEqual(len(lines), 2)
        error = lines[0]["error"]
        self.assertEqual((error["notify"], error["offset"]), ("PAYLOAD_MALFORMED", 30))  # the VID length field
        self.assertIn("40", error["reason"])
        self.assertEqual((lines[0]["frame"], lines[0]["length"]), (1, 40))
        self.assertNotIn("error", lines[1])

    def test_message_that_does_not_reencode(self):
        """A message that decodes but encodes back to other octets is an error too (exit 1), with the offset of
        the first octet that differs."""
        self.patch_registry()
        message = bytes.fromhex(
            "0102030405060708" "0000000000000000"  # cookies
            "c8" "10" "05" "00" "00000000" "00000024"  # next payload 200 (private use), 1.0, Informational, length 36
            "00" "00" "0008" "abcdabcd"  # payload 200: last, RESERVED, length 8, four octets that _Lossy drops
        )
        status, [line], _ = self.run_main(self.capture([datagram(message)]), "--doi", str(_PRIVATE_DOI))
        self.assertEqual(status, 1)
        self.assertEqual(line["payloads"], [{"payload": 200}])
        self.assertEqual(line["error"]["offset"], 27)  # the header's length: 32 where the capture says 36
        self.assertIn("different octets", line["error"]["reason"])

    def patch_registry(self):
        REGISTRY.register(_PRIVATE_DOI, _Lossy)
        self.addCleanup(REGISTRY._classes.pop, (_PRIVATE_DOI, _Lossy.payload_type))

    def test_not_a_capture(self):
        """A file that is not a capture, or none at all, exits 2 with one message on stderr and nothing on stdout."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("root:x:0:0:root:/root:/bin/bash\n")
        for target, words in ((path, "not a pcap or pcapng capture"), (path + ".missing", "No such file")):
            status, lines, err = self.run_main(target)
            self.assertEqual((status, lines), (2, []))
            self.assertIn(words, err)
            self.assertEqual(len(err.splitlines()), 1)

    def test_truncated_capture(self):
        """A capture cut short exits 2 after printing the messages read before the cut."""
        path = self.capture([datagram(MM1.encode()), datagram(MM1.encode())])
        with open(path, "r+b") as f:
            f.truncate(f.seek(0, 2) - 5)
        status, lines, err = self.run_main(path)
        self.assertEqual((status, len(lines)), (2, 1))
        self.assertIn("cut short", err)

    def test_usage_errors(self):
        """A missing FILE or a non-numeric --doi is a usage error: status 2, not an exception."""
        self.assertEqual(self.run_main()[0], 2)
        self.assertEqual(self.run_main("f.pcap", "--doi", "x")[0], 2)

    def test_command_line(self):
        """As a command: exit 2 on a non-capture with a message and no traceback, exit 0 on good messages."""
        bad = self.mktemp()
        with open(bad, "wb") as f:
            f.write(b"\x00" * 64)
        good = self.capture([datagram(MM1.encode())])
        root = os.path.dirname(os.path.dirname(os.path.abspath(gdoiserver.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        for path, want in ((bad, 2), (good, 0)):
            proc = subprocess.run([sys.executable, "-m", "gdoiserver.tools.pcapdump", path], capture_output=True,
                                  env=env, timeout=60, check=False)
            self.assertEqual(proc.returncode, want, proc.stderr)
            self.assertNotIn(b"Traceback", proc.stderr)
        self.assertEqual(json.loads(proc.stdout)["chain"], ["SA", "VID"])

    def test_decryptor_hook(self):
        """dump() calls a decryptor on every message in order; what it returns for an encrypted message is shown
        as the decrypted payload chain."""
        clear = Message(ICOOKIE, RCOOKIE, 5, 0, 7, (Hash(bytes(20)), VendorID(b"hello")))
        body = clear.body() + b"\0\0\0\3"  # with padding, as a decrypted body has (RFC 2409 appendix B)
        # a "cipher" that is the identity: the body goes on the wire as it is
        sealed = Message(ICOOKIE, RCOOKIE, 5, Flags.ENCRYPTION, 7, ciphertext=body, next_payload=8)
        path = self.capture([datagram(MM1.encode()), datagram(sealed.encode())])
        seen = []

        def identity_decryptor(d, message, doi):
            seen.append((d.frame, message.exchange_type, doi))
            return message.with_plaintext(message.ciphertext, doi) if message.encrypted else None

        out = io.StringIO()
        status = pcapdump.dump(path, out, decryptor=identity_decryptor)
        first, second = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(status, 0)
        self.assertEqual(seen, [(1, 2, 1), (2, 5, 1)])
        self.assertNotIn("decrypted", first)
        self.assertEqual((second["decrypted"], second["chain"], second["padding"]), (True, ["HASH", "VID"], "00000003"))
        self.assertEqual(second["payloads"][1], {"payload": "VID", "vendor_id": b"hello".hex()})
        self.assertEqual(second["encrypted"]["length"], len(body))

    def test_agrees_with_tshark(self):
        """tshark reads the same initiator cookie, exchange type, message ID and first payload in each frame."""
        tshark.require_tshark()
        path = self.capture([
            datagram(MM1.encode()),
            datagram(b"\0\0\0\0" + MM5.encode(), 4500, 4500),
            datagram(PULL.encode(), 848, 848),
        ])
        status, lines, _ = self.run_main(path)
        self.assertEqual(status, 0)
        ours = [(line["frame"], line["initiator_cookie"], line["exchange_type"], line["message_id"],
                 line["chain"][0]) for line in lines]
        theirs = []
        for row in tshark.packets(path):
            isakmp = row["_source"]["layers"]["isakmp"]
            theirs.append((int(row["_source"]["layers"]["frame"]["frame.number"]),
                           isakmp["isakmp.ispi"].replace(":", ""), int(isakmp["isakmp.exchangetype"]),
                           int(isakmp["isakmp.messageid"], 16), int(isakmp["isakmp.nextpayload"])))
        self.assertEqual([o[:4] for o in ours], [t[:4] for t in theirs])
        self.assertEqual([o[4] for o in ours], ["SA", "ID", "HASH"])
        self.assertEqual([t[4] for t in theirs], [1, 5, 8])


class JsonViewTests(unittest.TestCase):
    def test_exchange_names_depend_on_the_doi(self):
        """Exchanges 32 and 33 are Quick Mode and New Group Mode under DOI 1, GROUPKEY-PULL and -PUSH under DOI 2;
        numbers without a name stay numbers."""
        self.assertEqual([jsonview.exchange_name(x, 1) for x in (2, 4, 5, 32, 33, 240)],
                         ["IDENTITY_PROTECTION", "AGGRESSIVE", "INFORMATIONAL", "QUICK_MODE", "NEW_GROUP_MODE", 240])
        self.assertEqual([jsonview.exchange_name(x, 2) for x in (32, 33, 5)],
                         ["GROUPKEY_PULL", "GROUPKEY_PUSH", "INFORMATIONAL"])

    def test_flags_and_payload_type_names(self):
        """Flags are listed by name, unknown bits as a number; payload types by name, else by number."""
        self.assertEqual(jsonview.flag_names(0), [])
        self.assertEqual(jsonview.flag_names(0x05), ["ENCRYPTION", "AUTHENTICATION_ONLY"])
        self.assertEqual(jsonview.flag_names(0x82), ["COMMIT", 0x80])
        self.assertEqual([jsonview.payload_type_name(t) for t in (1, 15, 20, 199)], ["SA", "SAK", "NAT_D", 199])

    def test_any_attrs_payload_is_walked(self):
        """A payload class the view has never heard of (as the GDOI payloads are) shows all its fields: octets as
        hex, nested attrs objects and tuples recursively, attributes with their form, IntEnums as numbers, and
        other values (addresses) as strings."""
        view = jsonview.payload_view(_Outer(7, b"\x01\xff", (_Inner(b"k", Attribute(4, 14)), _Inner(b"", None)),
                                            IDType.KEY_ID, ipaddress.ip_address("192.0.2.9")))
        self.assertEqual(json.loads(json.dumps(view)), view)
        self.assertEqual(view, {
            "payload": "KD",
            "number": 7,
            "blob": "01ff",
            "items": [{"key": "6b", "attribute": {"type": 4, "value": 14, "form": "TV"}},
                      {"key": "", "attribute": None}],
            "kind": 11,
            "address": "192.0.2.9",
        })

    def test_unknown_payload(self):
        """A payload of a type the registry does not know shows its number and its body in hex."""
        self.assertEqual(jsonview.payload_view(UnknownPayload(201, b"\x00\x01")), {"payload": 201, "body": "0001"})


@attrs.frozen
class _Inner:
    key: bytes
    attribute: Attribute | None


@attrs.frozen
class _Outer:
    payload_type: ClassVar[int] = 17
    number: int
    blob: bytes
    items: tuple
    kind: int
    address: object


_PRIVATE_DOI = 65535  # no DOI of the codec's; a test-only payload class lives under it


@attrs.frozen
class _Lossy:
    """A payload that forgets its body, so the message cannot re-encode to the octets it came from."""

    payload_type: ClassVar[int] = 200  # private use (RFC 2408 section 3.1)

    @classmethod
    def decode_body(cls, body, ctx):
        return cls()

    def encode_body(self, ctx):
        return b""
