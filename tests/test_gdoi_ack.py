"""GROUPKEY-PUSH acknowledgements (RFC 8263, our reading; gdoiserver.doi.gdoi.ack): golden bytes, round trips,
refusals, and tshark's reading of the message."""

import hashlib
import hmac
import re

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.codec.constants import DOI, ExchangeType, Flags, IDType, NotifyType, OakleyHash
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.gdoi import SEQ, group_id
from gdoiserver.codec.message import Message, decode_message
from gdoiserver.codec.payloads import Hash, Identification, Nonce
from gdoiserver.crypto.errors import UnsupportedHash
from gdoiserver.doi.gdoi.ack import (
    ACK,
    ACK_LABEL,
    CTX,
    Ack,
    ack_holds,
    ack_key_for,
    build_ack,
    prf_for,
    read_ack,
)
from gdoiserver.tools.pcap import Datagram, write_pcap
from tests import tshark
from tests.fake_machines import SKEYID_A, make_sa

SETTINGS = settings(max_examples=200, deadline=None)
SPI = bytes.fromhex("a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8")
ACK_KEY = bytes(range(32))  # a SHA-256 prf output
GROUP = group_id(1234)
HASHES = {OakleyHash.MD5: hashlib.md5, OakleyHash.SHA: hashlib.sha1, OakleyHash.SHA2_256: hashlib.sha256,
          OakleyHash.SHA2_384: hashlib.sha384, OakleyHash.SHA2_512: hashlib.sha512}


def h(text: str) -> bytes:
    """Octets from commented hex: everything after '#' on a line is a comment, whitespace is ignored."""
    return bytes.fromhex(re.sub(r"#.*", "", text).replace(" ", "").replace("\n", ""))


#: HASH = HMAC-SHA-256(ACK_KEY, SEQ body | ID body), computed with the standard library, not with gdoiserver.
GOLDEN_HASH = hmac.new(ACK_KEY, h("00000005") + h("0b 00 0000 000004d2"), hashlib.sha256).digest()

GOLDEN = h(f"""
    a1a2a3a4a5a6a7a8                  # initiator cookie: the KEK SPI's first 8 octets
    b1b2b3b4b5b6b7b8                  # responder cookie: its last 8
    08                                # next payload: HASH (8)
    10                                # version 1.0
    23                                # exchange type 35: GROUPKEY-PUSH ACK
    00                                # flags: none (sent in the clear)
    00000000                          # Message ID 0
    00000054                          # length 84 = 28 + 36 + 8 + 12
    12 00 0024                        # HASH: next payload SEQ (18), reserved, length 36
    {GOLDEN_HASH.hex()}               # HASH data: 32 octets
    05 00 0008                        # SEQ: next payload ID (5), reserved, length 8
    00000005                          # sequence number 5 (the PUSH acknowledged)
    00 00 000c                        # ID: last payload, reserved, length 12
    0b 00 0000                        # ID_KEY_ID (11), protocol 0, port 0
    000004d2                          # group number 1234
""")


class AckKeyTests(SynchronousTestCase):
    def test_ack_key_for(self):
        """ack_key = HMAC-SHA-256(SKEYID_a, "GROUPKEY-PUSH ACK" | CKY-I | CKY-R) of the Phase 1 SA (the fake SA
        negotiated SHA2-256), checked with the standard library's hmac."""
        sa = make_sa(b"\x11" * 8, b"\x22" * 8, ("192.0.2.1", 848), ("127.0.0.1", 848))
        expected = hmac.new(SKEYID_A, b"GROUPKEY-PUSH ACK" + b"\x11" * 8 + b"\x22" * 8, hashlib.sha256).digest()
        self.assertEqual(ack_key_for(sa), expected)
        self.assertEqual(ACK_LABEL, b"GROUPKEY-PUSH ACK")

    def test_ack_key_differs_per_sa(self):
        """Two Phase 1 SAs with other cookies give other ack keys; the key is as long as the prf output."""
        one = make_sa(b"\x11" * 8, b"\x22" * 8, ("192.0.2.1", 848), ("127.0.0.1", 848))
        two = make_sa(b"\x11" * 8, b"\x23" * 8, ("192.0.2.1", 848), ("127.0.0.1", 848))
        self.assertNotEqual(ack_key_for(one), ack_key_for(two))
        self.assertEqual(len(ack_key_for(one)), 32)

    def test_ack_key_follows_the_phase1_hash(self):
        """With SHA-1 negotiated in Phase 1 the ack key is HMAC-SHA-1 (20 octets)."""
        sa = make_sa(b"\x11" * 8, b"\x22" * 8, ("192.0.2.1", 848), ("127.0.0.1", 848))
        sa = attrs.evolve(sa, proposal=attrs.evolve(sa.proposal, hash=OakleyHash.SHA))
        expected = hmac.new(SKEYID_A, ACK_LABEL + b"\x11" * 8 + b"\x22" * 8, hashlib.sha1).digest()
        self.assertEqual(ack_key_for(sa), expected)

    def test_prf_for(self):
        """The prf of an ack key is the Oakley hash given, else the one whose output is as long as the key; a key
        of another size names none."""
        self.assertEqual(prf_for(bytes(20)).number, OakleyHash.SHA)
        self.assertEqual(prf_for(bytes(48)).number, OakleyHash.SHA2_384)
        self.assertEqual(prf_for(bytes(20), OakleyHash.SHA2_512).number, OakleyHash.SHA2_512)
        self.assertRaises(UnsupportedHash, prf_for, bytes(33))


class GoldenTests(SynchronousTestCase):
    def test_build(self):
        """build_ack gives the golden octets: HDR (cookies = KEK SPI, exchange 35, no flags, M-ID 0), HASH, SEQ,
        ID, HASH = prf(ack_key, SEQ body | ID body)."""
        self.assertEqual(build_ack(SPI, 5, GROUP, ACK_KEY), GOLDEN)
        self.assertEqual(build_ack(SPI, 5, GROUP, ACK_KEY, OakleyHash.SHA2_256), GOLDEN)

    def test_read(self):
        """read_ack gives back the KEK SPI, SEQ, group and HASH, from the octets or from the decoded message, and
        the HASH holds under the key."""
        ack = read_ack(GOLDEN)
        self.assertEqual(ack, Ack(SPI, 5, GROUP, GOLDEN_HASH))
        kek_spi, seq, group, digest = ack  # a tuple too
        self.assertEqual((kek_spi, seq, group, digest), (SPI, 5, GROUP, GOLDEN_HASH))
        self.assertEqual(read_ack(decode_message(GOLDEN, DOI.GDOI)), ack)
        self.assertTrue(ack_holds(ack, ACK_KEY))
        self.assertTrue(ack_holds(ack, ACK_KEY, OakleyHash.SHA2_256))

    def test_hash_does_not_hold(self):
        """The HASH does not hold under another key, another prf, for another SEQ or group, or with a key of no
        prf size (False, not an error)."""
        ack = read_ack(GOLDEN)
        self.assertFalse(ack_holds(ack, bytes(32)))
        self.assertFalse(ack_holds(ack, ACK_KEY, OakleyHash.SHA2_512))
        self.assertFalse(ack_holds(ack._replace(seq=6), ACK_KEY))
        self.assertFalse(ack_holds(ack._replace(group_id=group_id(1235)), ACK_KEY))
        self.assertFalse(ack_holds(ack, ACK_KEY[:31]))

    def test_build_refuses(self):
        """A KEK SPI of other than 16 octets, or whose initiator cookie half is zero, is refused."""
        self.assertRaises(ValueError, build_ack, SPI[:8], 5, GROUP, ACK_KEY)
        self.assertRaises(ValueError, build_ack, bytes(8) + SPI[8:], 5, GROUP, ACK_KEY)


def _message(*payloads, exchange=ACK, flags=0, mid=0):
    return Message(SPI[:8], SPI[8:], exchange, flags, mid, payloads)


class RefusalTests(SynchronousTestCase):
    """read_ack raises DecodeError, with the Notify type that fits, for anything that is not an ACK."""

    def refused(self, data, notify):
        e = self.assertRaises(DecodeError, read_ack, data)
        self.assertEqual(e.notify, notify, e.reason)
        return e

    def test_other_exchange(self):
        """The same payloads under exchange 33 are no ACK: INVALID-EXCHANGE-TYPE."""
        data = _message(Hash(GOLDEN_HASH), SEQ(5), GROUP, exchange=ExchangeType.GROUPKEY_PUSH).encode(CTX)
        self.refused(data, NotifyType.INVALID_EXCHANGE_TYPE)

    def test_message_id(self):
        """An ACK has Message ID 0: INVALID-MESSAGE-ID otherwise."""
        self.refused(_message(Hash(GOLDEN_HASH), SEQ(5), GROUP, mid=7).encode(CTX), NotifyType.INVALID_MESSAGE_ID)

    def test_flags(self):
        """An ACK is sent in the clear and carries no flag: Encryption, Commit or Authentication Only gives
        INVALID-FLAGS."""
        for flag in (Flags.ENCRYPTION, Flags.COMMIT, Flags.AUTHENTICATION_ONLY):
            data = GOLDEN[:19] + bytes([flag]) + GOLDEN[20:]
            self.refused(data, NotifyType.INVALID_FLAGS)

    def test_payloads(self):
        """Payloads out of order, missing, repeated or foreign are refused (PAYLOAD-MALFORMED or
        INVALID-PAYLOAD-TYPE)."""
        cases = [
            ((SEQ(5), Hash(GOLDEN_HASH), GROUP), NotifyType.PAYLOAD_MALFORMED),
            ((Hash(GOLDEN_HASH), GROUP, SEQ(5)), NotifyType.PAYLOAD_MALFORMED),
            ((Hash(GOLDEN_HASH), SEQ(5)), NotifyType.PAYLOAD_MALFORMED),
            ((Hash(GOLDEN_HASH), SEQ(5), GROUP, GROUP), NotifyType.PAYLOAD_MALFORMED),
            ((Hash(GOLDEN_HASH), SEQ(5), GROUP, Nonce(b"n" * 16)), NotifyType.INVALID_PAYLOAD_TYPE),
        ]
        for payloads, notify in cases:
            self.refused(_message(*payloads).encode(CTX), notify)

    def test_read_under_another_doi(self):
        """A message decoded under the IPsec DOI (where SEQ is an unknown payload) is refused, not misread."""
        self.refused(decode_message(GOLDEN, DOI.IPSEC), NotifyType.PAYLOAD_MALFORMED)

    def test_truncated_and_bad_seq(self):
        """A truncated datagram, and a SEQ body of 5 octets, are refused by the codec (DecodeError)."""
        self.assertRaises(DecodeError, read_ack, GOLDEN[:-1])
        self.assertRaises(DecodeError, read_ack, GOLDEN[:27])
        longer_seq = GOLDEN[:64] + h("05 00 0009 0000000005") + GOLDEN[72:]
        longer_seq = longer_seq[:24] + len(longer_seq).to_bytes(4, "big") + longer_seq[28:]
        self.refused(longer_seq, NotifyType.PAYLOAD_MALFORMED)

    @SETTINGS
    @given(st.binary(max_size=200))
    def test_arbitrary_octets(self, data):
        """Any octets at all give an Ack or a DecodeError, never another exception."""
        try:
            read_ack(data)
        except DecodeError:
            pass

    @SETTINGS
    @given(st.integers(0, len(GOLDEN) - 1), st.integers(1, 255))
    def test_changed_octet(self, offset, delta):
        """Any octet changed after the cookies gives a DecodeError or an Ack whose HASH does not hold (the
        cookies, the KEK SPI, are not covered by the HASH: the key server matches them to the SEQ it sent)."""
        data = bytearray(GOLDEN)
        data[offset] = (data[offset] + delta) % 256
        try:
            ack = read_ack(bytes(data))
        except DecodeError:
            return
        if offset < 16:
            self.assertTrue(ack_holds(ack, ACK_KEY))
            self.assertNotEqual(ack.kek_spi, SPI)
        else:
            self.assertFalse(ack_holds(ack, ACK_KEY))


groups = st.one_of(
    st.integers(0, 2**32 - 1).map(group_id),
    st.binary(min_size=1, max_size=40).map(lambda d: Identification(IDType.OID, 0, 0, d)),
    st.text("abcdefghijklmnopqrstuvwxyz.", min_size=1, max_size=30).map(
        lambda s: Identification(IDType.FQDN, 0, 0, s.encode())),
)


class PropertyTests(SynchronousTestCase):
    @SETTINGS
    @given(spi=st.binary(min_size=16, max_size=16).filter(lambda b: any(b[:8])), seq=st.integers(0, 2**32 - 1),
           group=groups, prf_hash=st.sampled_from(sorted(HASHES)), key_seed=st.binary(min_size=1, max_size=16))
    def test_round_trip(self, spi, seq, group, prf_hash, key_seed):
        """build_ack then read_ack gives back every field, and the HASH is the standard library's HMAC of the
        SEQ and ID bodies under the ack key; it holds under that key and prf only."""
        digest_size = HASHES[prf_hash]().digest_size
        ack_key = (key_seed * digest_size)[:digest_size]
        data = build_ack(spi, seq, group, ack_key, prf_hash)
        ack = read_ack(data)
        id_body = bytes([group.id_type, 0, 0, 0]) + group.data
        expected = hmac.new(ack_key, seq.to_bytes(4, "big") + id_body, HASHES[prf_hash]).digest()
        self.assertEqual(ack, Ack(spi, seq, group, expected))
        self.assertEqual(decode_message(data, DOI.GDOI).encode(CTX), data)
        self.assertTrue(ack_holds(ack, ack_key))
        self.assertTrue(ack_holds(ack, ack_key, prf_hash))
        self.assertFalse(ack_holds(ack, bytes([ack_key[0] ^ 1]) + ack_key[1:], prf_hash))


class TsharkAckTests(SynchronousTestCase):
    def test_tshark_reads_the_ack(self):
        """tshark 4.0.17 dissects the ACK field by field as we encode it: cookies, Next Payload HASH, exchange
        35 (which it names "Unknown"), no flags, M-ID 0, Length, the HASH data, the SEQ and the ID_KEY_ID group;
        nothing is malformed or flagged."""
        tshark.require_tshark()
        path = self.mktemp()
        write_pcap(path, [Datagram("192.0.2.10", "192.0.2.1", 848, 848, GOLDEN, 0.0)])
        self.assertEqual(tshark.problems(path), [])
        (packet,) = tshark.packets(path)
        isakmp = packet["_source"]["layers"]["isakmp"]
        header = {k: isakmp[k] for k in ("isakmp.ispi", "isakmp.rspi", "isakmp.nextpayload", "isakmp.exchangetype",
                                         "isakmp.flags", "isakmp.messageid", "isakmp.length")}
        self.assertEqual(header, {"isakmp.ispi": "a1:a2:a3:a4:a5:a6:a7:a8", "isakmp.rspi": "b1:b2:b3:b4:b5:b6:b7:b8",
                                  "isakmp.nextpayload": "8", "isakmp.exchangetype": "35", "isakmp.flags": "0x00",
                                  "isakmp.messageid": "0x00000000", "isakmp.length": "84"})
        self.assertEqual(isakmp["isakmp.typepayload"], ["8", "18", "5"])
        hash_, seq, ident = isakmp["isakmp.typepayload_tree"]
        self.assertEqual((hash_["isakmp.nextpayload"], hash_["isakmp.payloadlength"]), ("18", "36"))
        self.assertEqual(bytes.fromhex(hash_["isakmp.hash"].replace(":", "")), GOLDEN_HASH)
        self.assertEqual((seq["isakmp.nextpayload"], seq["isakmp.payloadlength"], seq["isakmp.seq.seq"]),
                         ("5", "8", "5"))
        self.assertEqual((ident["isakmp.nextpayload"], ident["isakmp.payloadlength"], ident["isakmp.id.type"],
                          ident["isakmp.id.protoid"], ident["isakmp.id.port"]), ("0", "12", "11", "0", "0"))
        self.assertEqual(ident["isakmp.id.data"]["isakmp.id.data.key_id"], "00:00:04:d2")
