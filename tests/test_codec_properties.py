"""Properties of the generic codec: generated payloads and messages round-trip; any bytes give a message or a
DecodeError and nothing else.

The example budgets are moderate (the common brief); a long fuzzing run belongs elsewhere.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.codec import (
    HEADER_SIZE,
    NATOA,
    REGISTRY,
    SA,
    Attribute,
    Certificate,
    CertificateRequest,
    Context,
    DecodeError,
    Delete,
    EncodeError,
    Identification,
    Message,
    Notification,
    Proposal,
    Transform,
    decode_chain,
    decode_message,
    encode_chain,
)
from gdoiserver.codec.constants import DOI
from gdoiserver.codec.message import HEADER
from tests import strategies as s

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_refuse(data: bytes, doi: int):
    """decode_message's answer, or None when it refuses with DecodeError (any other exception fails the test)."""
    try:
        return decode_message(data, doi=doi)
    except DecodeError:
        return None


def _payload_offsets(data: bytes) -> list[int]:
    """Where each payload's generic header starts, following the chain of a well-formed clear message."""
    offsets, pos = [], HEADER_SIZE
    nxt = data[16]
    while nxt and pos + 4 <= len(data):
        offsets.append(pos)
        nxt, length = data[pos], int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += length
    return offsets


class RoundTripTests(unittest.TestCase):
    @PROPERTY
    @given(s.payloads())
    def test_each_payload(self, payload):
        """Any generated payload decodes from its encoding to an equal object, and re-encodes to the same octets."""
        data = encode_chain((payload,))
        decoded, end = decode_chain(payload.payload_type, data, Context())
        self.assertEqual(decoded, (payload,))
        self.assertEqual(end, len(data))
        self.assertEqual(encode_chain(decoded), data)

    @PROPERTY
    @given(s.payload_chains())
    def test_payload_chains(self, chain):
        """A chain of generated payloads round-trips: decode(encode(c)) == c and encode(decode(b)) == b."""
        data = encode_chain(chain)
        first = chain[0].payload_type if chain else 0
        decoded, _ = decode_chain(first, data, Context())
        self.assertEqual(decoded, chain)
        self.assertEqual(encode_chain(decoded), data)

    @PROPERTY
    @given(s.messages())
    def test_messages(self, message):
        """A generated message round-trips: decode(encode(m)) == m and encode(decode(b)) == b."""
        data = message.encode()
        decoded = decode_message(data)
        self.assertEqual(decoded, message)
        self.assertEqual(decoded.encode(), data)

    @settings(max_examples=1, deadline=None)
    @given(st.data())
    def test_strategies_cover_every_payload(self, data):
        """The strategies draw every generic payload type the IPsec DOI registers (so none goes untested)."""
        drawn = {data.draw(strategy).payload_type for strategy in s.PAYLOADS.values()}
        self.assertEqual(REGISTRY.known_types(DOI.IPSEC) - drawn, set())


class RobustnessTests(unittest.TestCase):
    @PROPERTY
    @given(st.binary(max_size=200), st.sampled_from([DOI.IPSEC, DOI.GDOI]))
    def test_random_bytes(self, data, doi):
        """Random octets give a message or a DecodeError, nothing else."""
        _decode_or_refuse(data, doi)

    @PROPERTY
    @given(s.initiator_cookies, s.cookies, s.u8, s.u8, st.sampled_from([0, 2, 4, 6]), s.u32,
           st.binary(max_size=300), st.sampled_from([DOI.IPSEC, DOI.GDOI]))
    def test_random_body_behind_a_valid_header(self, ci, cr, nxt, exchange, flags, mid, body, doi):
        """A well-formed header with random payload octets behind it gives a message or a DecodeError; what
        decodes re-encodes to the same octets."""
        data = HEADER.pack(ci, cr, nxt, 0x10, exchange, flags, mid, HEADER_SIZE + len(body)) + body
        m = _decode_or_refuse(data, doi)
        if m is not None:
            self.assertEqual(m.encode(), data)

    @PROPERTY
    @given(s.u8, st.binary(max_size=300), st.sampled_from([DOI.IPSEC, DOI.GDOI]), s.u8)
    def test_random_payload_chain(self, first, data, doi, exchange):
        """decode_chain on random octets returns payloads or raises DecodeError, whatever the first type."""
        try:
            payloads, end = decode_chain(first, data, Context(doi=doi, exchange_type=exchange))
        except DecodeError:
            return
        self.assertEqual(end, len(data))
        self.assertEqual(encode_chain(payloads, Context(doi=doi, exchange_type=exchange)), data)

    @PROPERTY
    @given(s.clear_messages(), st.data())
    def test_mutated_messages(self, message, data):
        """Bit flips, truncation, insertion and edited length fields in a valid message give a message or a
        DecodeError, nothing else; what still decodes re-encodes to the same octets."""
        wire = bytearray(message.encode())
        offsets = _payload_offsets(bytes(wire))
        for _ in range(data.draw(st.integers(1, 4), label="mutations")):
            kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "length", "header-length"]), label="kind")
            if kind == "flip" and wire:
                i = data.draw(st.integers(0, len(wire) - 1), label="flip at")
                wire[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            elif kind == "truncate":
                del wire[data.draw(st.integers(0, len(wire)), label="truncate at"):]
            elif kind == "insert":
                i = data.draw(st.integers(0, len(wire)), label="insert at")
                wire[i:i] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
            elif kind == "length" and offsets:
                at = data.draw(st.sampled_from(offsets), label="payload at") + 2
                if at + 2 <= len(wire):
                    wire[at : at + 2] = data.draw(s.u16, label="payload length").to_bytes(2, "big")
            elif kind == "header-length" and len(wire) >= HEADER_SIZE:
                wire[24:28] = data.draw(st.one_of(st.just(len(wire)), s.u32), label="length").to_bytes(4, "big")
        doi = data.draw(st.sampled_from([DOI.IPSEC, DOI.GDOI]), label="doi")
        m = _decode_or_refuse(bytes(wire), doi)
        if m is not None:
            self.assertEqual(m.encode(), bytes(wire))


class EncodeErrorTests(unittest.TestCase):
    def test_out_of_range_fields(self):
        """A payload whose field does not fit its wire width raises EncodeError, the codec's one encoding error."""
        unencodable = [
            Proposal(1, 1, b"x" * 256, ()),  # SPI Size is one octet
            Proposal(256, 1, b"", ()),
            Transform(300, 1, ()),
            Transform(1, 1, (Attribute(1, 0x10000),)),  # a TV value is two octets
            SA(2**32, 0, ()),
            Identification(1, 0, 0x10000, b"abcd"),
            Notification(1, 1, 0x10000),
            Notification(2**32, 1, 1),
            Delete(1, 3, (b"a", b"bb")),  # SPIs of two sizes
            Delete(1, 3, (b"spi!",) * 0x10000),  # # of SPIs is two octets
            NATOA(256, bytes(4)),
            Certificate(256, b"x"),
            CertificateRequest(-1),
        ]
        for payload in unencodable:
            self.assertRaises(EncodeError, encode_chain, (payload,))
            self.assertRaises(EncodeError, Message(b"\x01" * 8, bytes(8), 2, payloads=(payload,)).encode)
