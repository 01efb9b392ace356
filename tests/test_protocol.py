"""ISAKMPProtocol: every datagram is decoded, counted and logged or dispatched, and nothing raises out of it."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from gdoiserver.net.protocol import LOGGED_PREFIX, ISAKMPProtocol, exchange_name, format_address

PEER = ("192.0.2.1", 500)

# Main Mode message 1 from an initiator: an SA offering one IKE transform (RFC 2409 section 5).
MAIN_MODE_1 = bytes.fromhex(
    # ISAKMP header (RFC 2408 section 3.1)
    "0102030405060708"  # Initiator Cookie
    "0000000000000000"  # Responder Cookie: zero in the first message
    "01"  # Next Payload: SA
    "10"  # Major Version 1, Minor Version 0
    "02"  # Exchange Type: Identity Protection (Main Mode)
    "00"  # Flags: none
    "00000000"  # Message ID: zero in phase 1
    "00000054"  # Length: 84 octets
    # SA payload (RFC 2408 section 3.4, RFC 2407 section 4.6.1)
    "00"  # Next Payload: none
    "00"  # RESERVED
    "0038"  # Payload Length: 56
    "00000001"  # DOI: IPsec
    "00000001"  # Situation: SIT_IDENTITY_ONLY
    # Proposal payload (RFC 2408 section 3.5)
    "00"  # Next Payload: none (last proposal)
    "00"  # RESERVED
    "002c"  # Payload Length: 44
    "01"  # Proposal #1
    "01"  # Protocol-Id: PROTO_ISAKMP
    "00"  # SPI Size: 0
    "01"  # # of Transforms: 1
    # Transform payload (RFC 2408 section 3.6)
    "00"  # Next Payload: none (last transform)
    "00"  # RESERVED
    "0024"  # Payload Length: 36
    "01"  # Transform #1
    "01"  # Transform-Id: KEY_IKE
    "0000"  # RESERVED2
    # SA attributes, all TV form (RFC 2409 appendix A)
    "80010007"  # Encryption Algorithm: AES-CBC
    "800e0100"  # Key Length: 256
    "80020004"  # Hash Algorithm: SHA2-256
    "80030001"  # Authentication Method: pre-shared key
    "8004000e"  # Group Description: 14
    "800b0001"  # Life Type: seconds
    "800c7080"  # Life Duration: 28800
)

# An encrypted GROUPKEY-PULL message (RFC 6407 section 3): the body stays ciphertext until an SA decrypts it.
GROUPKEY_PULL_ENCRYPTED = bytes.fromhex(
    "0102030405060708"  # Initiator Cookie
    "a1a2a3a4a5a6a7a8"  # Responder Cookie
    "08"  # Next Payload: HASH (inside the ciphertext)
    "10"  # Version 1.0
    "20"  # Exchange Type: 32, GROUPKEY-PULL under GDOI
    "01"  # Flags: Encryption
    "11223344"  # Message ID
    "0000002c"  # Length: 44
) + bytes(16)  # one AES block of ciphertext

# An IKEv2 IKE_SA_INIT header (RFC 7296 section 3.1): a version this server does not speak.
IKEV2_SA_INIT = bytes.fromhex(
    "0102030405060708"  # IKE SA Initiator's SPI
    "0000000000000000"  # IKE SA Responder's SPI
    "21"  # Next Payload: SA (IKEv2 numbering)
    "20"  # Major Version 2, Minor Version 0
    "22"  # Exchange Type: IKE_SA_INIT
    "08"  # Flags: Initiator
    "00000000"  # Message ID
    "0000001c"  # Length: 28
)

NON_ESP_MARKER = b"\0\0\0\0"  # RFC 3948 section 2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
# ESP in UDP (RFC 3948 section 2.1): a non-zero SPI, a sequence number, then ciphertext.
ESP = bytes.fromhex("c0ffee01" "00000001") + bytes(32)


class PortTransport(FakeDatagramTransport):
    """A fake UDP transport bound to a given local address."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        super().__init__()
        self.address = (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)

    def getHost(self):
        return self.address


def make_protocol(port: int = 500, **kwargs):
    """A protocol on a fake transport at ``port``, its log events and the messages its dispatcher got."""
    events, dispatched = [], []
    kwargs.setdefault("dispatcher", lambda message, addr, local_port: dispatched.append((message, addr, local_port)))
    protocol = ISAKMPProtocol(**kwargs)
    protocol.log = Logger(observer=events.append)
    protocol.makeConnection(PortTransport(port))
    return protocol, events, dispatched


def counts(protocol) -> dict:
    return {k: v for k, v in protocol.counters.items() if v}


class DatagramTests(unittest.TestCase):
    def test_listening_logged(self):
        """Starting on a transport sets the local port and logs the bound address."""
        protocol, events, _ = make_protocol(848)
        self.assertEqual(protocol.local_port, 848)
        self.assertEqual(formatEvent(events[-1]), "ISAKMP listening on 127.0.0.1:848/udp")

    def test_good_message_dispatched(self):
        """A well-formed message goes to the dispatcher with the source address and the local port."""
        protocol, _, dispatched = make_protocol(500)
        protocol.datagramReceived(MAIN_MODE_1, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "decoded": 1})
        [(message, addr, port)] = dispatched
        self.assertEqual((message.exchange_type, message.initiator_cookie), (2, bytes.fromhex("0102030405060708")))
        self.assertEqual(message.payloads[0].proposals[0].transforms[0].attributes[4].value, 14)
        self.assertEqual((addr, port), (PEER, 500))

    def test_default_dispatcher_counts_unhandled(self):
        """Without a dispatcher, a decoded message is counted as unhandled by exchange type and logged."""
        protocol, events, _ = make_protocol(848, dispatcher=None)
        protocol.datagramReceived(MAIN_MODE_1, PEER)
        protocol.datagramReceived(GROUPKEY_PULL_ENCRYPTED, PEER)
        self.assertEqual(counts(protocol), {"received": 2, "decoded": 2, "unhandled.2": 1, "unhandled.32": 1})
        self.assertEqual(
            formatEvent(events[-1]),
            "exchange type 32 (QUICK_MODE/GROUPKEY_PULL) from 192.0.2.1:500 on port 848 is not handled yet",
        )

    def test_truncated(self):
        """A message cut short disagrees with its header's length: counted by that Notify type, not dispatched."""
        protocol, events, dispatched = make_protocol()
        protocol.datagramReceived(MAIN_MODE_1[:60], PEER)
        self.assertEqual(counts(protocol), {"received": 1, "malformed.UNEQUAL_PAYLOAD_LENGTHS": 1})
        self.assertEqual(dispatched, [])
        event = events[-1]
        self.assertEqual(
            (event["source"], event["length"], event["notify"]), ("192.0.2.1:500", 60, "UNEQUAL_PAYLOAD_LENGTHS")
        )

    def test_malformed_payload(self):
        """A payload length that overruns the message is counted as PAYLOAD_MALFORMED."""
        bad = bytearray(MAIN_MODE_1)
        bad[30:32] = struct.pack("!H", 200)  # SA Payload Length beyond the end
        protocol, _, dispatched = make_protocol()
        protocol.datagramReceived(bytes(bad), PEER)
        self.assertEqual(protocol.counters["malformed.PAYLOAD_MALFORMED"], 1)
        self.assertEqual(dispatched, [])

    def test_drop_lines_are_rate_limited(self):
        """A flood of malformed datagrams is counted in full, but logged at most a burst of 50 lines and then 10 a
        second; the next line allowed says how many were left out."""
        from twisted.internet.task import Clock

        clock = Clock()

        class Engine:
            def attach(self, listener):
                pass

        engine = Engine()
        engine.clock = clock
        protocol, events, _ = make_protocol(engine=engine)
        drops = lambda: [e for e in events if "malformed" in e.get("log_format", "")]  # noqa: E731
        for _ in range(1000):
            protocol.datagramReceived(b"\x01\x02\x03", PEER)
        self.assertEqual(protocol.counters["malformed.PAYLOAD_MALFORMED"], 1000)
        self.assertEqual(len(drops()), 50)
        clock.advance(1.0)
        for _ in range(100):
            protocol.datagramReceived(b"\x01\x02\x03", PEER)
        self.assertEqual(len(drops()), 60)
        self.assertIn("(950 similar lines left out)", formatEvent(drops()[50]))

    def test_short_datagram(self):
        """A datagram shorter than the ISAKMP header is malformed."""
        protocol, _, _ = make_protocol()
        protocol.datagramReceived(b"\x01\x02\x03", PEER)
        self.assertEqual(counts(protocol), {"received": 1, "malformed.PAYLOAD_MALFORMED": 1})

    def test_ikev2(self):
        """An IKEv2 message is counted as INVALID_MAJOR_VERSION."""
        protocol, _, _ = make_protocol()
        protocol.datagramReceived(IKEV2_SA_INIT, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "malformed.INVALID_MAJOR_VERSION": 1})

    def test_log_shows_header_prefix_only(self):
        """The log of a malformed datagram carries source, length, Notify and reason, and only a header prefix."""
        datagram = MAIN_MODE_1[:28] + b"\xde\xad\xbe\xef" * 10  # payload octets that must not be logged
        protocol, events, _ = make_protocol()
        protocol.datagramReceived(datagram, ("2001:db8::1", 4500))
        text = formatEvent(events[-1])
        self.assertIn("[2001:db8::1]:4500", text)
        self.assertIn("68 octets", text)
        self.assertIn("UNEQUAL_PAYLOAD_LENGTHS", text)
        self.assertIn(MAIN_MODE_1[:LOGGED_PREFIX].hex(), text)
        self.assertNotIn(MAIN_MODE_1[:LOGGED_PREFIX + 1].hex(), text)
        self.assertNotIn("deadbeef", text)

    def test_non_esp_marker_stripped_on_nat_t_port(self):
        """On port 4500 the non-ESP marker is removed and the message behind it decoded."""
        protocol, _, dispatched = make_protocol(4500)
        protocol.datagramReceived(NON_ESP_MARKER + MAIN_MODE_1, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "decoded": 1})
        self.assertEqual(dispatched[0][0].encode(), MAIN_MODE_1)
        self.assertEqual(dispatched[0][2], 4500)

    def test_marker_not_stripped_elsewhere(self):
        """On port 500 four zero octets are no marker but the start of the header, which is then misaligned."""
        protocol, _, _ = make_protocol(500)
        protocol.datagramReceived(NON_ESP_MARKER + MAIN_MODE_1, PEER)
        # The octet read as the version is the Responder Cookie's zero: major version 0.
        self.assertEqual(counts(protocol), {"received": 1, "malformed.INVALID_MAJOR_VERSION": 1})

    def test_malformed_after_marker(self):
        """A marker followed by garbage is counted as malformed, not as ESP."""
        protocol, _, _ = make_protocol(4500)
        protocol.datagramReceived(NON_ESP_MARKER + b"garbage", PEER)
        self.assertEqual(counts(protocol), {"received": 1, "malformed.PAYLOAD_MALFORMED": 1})

    def test_nat_keepalive(self):
        """A NAT-keepalive octet on port 4500 is counted and dropped quietly."""
        protocol, _, dispatched = make_protocol(4500)
        protocol.datagramReceived(NAT_KEEPALIVE, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "nat_keepalive": 1})
        self.assertEqual(dispatched, [])

    def test_keepalive_octet_on_port_500(self):
        """0xFF on port 500 is no keepalive but a malformed datagram."""
        protocol, _, _ = make_protocol(500)
        protocol.datagramReceived(NAT_KEEPALIVE, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "malformed.PAYLOAD_MALFORMED": 1})

    def test_esp_on_nat_t_port(self):
        """UDP-encapsulated ESP on port 4500 is counted as esp and dropped."""
        protocol, _, dispatched = make_protocol(4500)
        protocol.datagramReceived(ESP, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "esp": 1})
        self.assertEqual(dispatched, [])

    def test_oversize(self):
        """A datagram over the configured limit is counted as oversize and not decoded."""
        protocol, events, dispatched = make_protocol(max_datagram_size=len(MAIN_MODE_1) - 1)
        protocol.datagramReceived(MAIN_MODE_1, PEER)
        self.assertEqual(counts(protocol), {"received": 1, "oversize": 1})
        self.assertEqual(dispatched, [])
        self.assertIn("longer than limits.max_datagram_size (83 octets)", formatEvent(events[-1]))

    def test_at_limit_accepted(self):
        """A datagram exactly at the limit is decoded."""
        protocol, _, _ = make_protocol(max_datagram_size=len(MAIN_MODE_1))
        protocol.datagramReceived(MAIN_MODE_1, PEER)
        self.assertEqual(protocol.counters["decoded"], 1)

    def test_dispatcher_bug_contained(self):
        """An exception from the dispatcher is counted as internal_error, logged with its traceback, and the
        protocol keeps serving."""
        calls = []

        def dispatcher(message, addr, port):
            calls.append(message)
            if len(calls) == 1:
                raise ZeroDivisionError("bug")

        protocol, events, _ = make_protocol(dispatcher=dispatcher)
        protocol.datagramReceived(MAIN_MODE_1, PEER)
        protocol.datagramReceived(MAIN_MODE_1, PEER)
        self.assertEqual(counts(protocol), {"received": 2, "decoded": 2, "internal_error": 1})
        self.assertEqual(len(calls), 2)
        [failure_event] = [e for e in events if "log_failure" in e]
        self.assertTrue(failure_event["log_failure"].check(ZeroDivisionError))

    def test_shared_counters(self):
        """Protocols given one counter object add to it together."""
        first, _, _ = make_protocol(500)
        second, _, _ = make_protocol(848, counters=first.counters)
        first.datagramReceived(MAIN_MODE_1, PEER)
        second.datagramReceived(IKEV2_SA_INIT, PEER)
        self.assertEqual(first.counters["received"], 2)

    def test_names(self):
        """Exchange numbers are named by every DOI's name; addresses print as host:port or [v6]:port."""
        self.assertEqual(exchange_name(2), "IDENTITY_PROTECTION/MAIN_MODE")
        self.assertEqual(exchange_name(33), "NEW_GROUP_MODE/GROUPKEY_PUSH")
        self.assertEqual(exchange_name(200), "200")
        self.assertEqual(format_address("::1", 848), "[::1]:848")
        self.assertEqual(format_address("127.0.0.1", 500), "127.0.0.1:500")


def _accounted(protocol) -> int:
    """How many datagrams ended in exactly one outcome counter."""
    c = protocol.counters
    outcomes = ["decoded", "nat_keepalive", "esp", "oversize"]
    return sum(c[k] for k in outcomes) + sum(v for k, v in c.items() if k.startswith("malformed."))


# Random octets, and random octets behind a plausible version 1.0 header, so that the payload decoders are reached.
_plausible = st.builds(
    lambda cookie, nxt, xchg, flags, body, fix_length: (
        struct.pack("!8s8sBBBBII", cookie, bytes(8), nxt, 0x10, xchg, flags, 0, 28 + len(body) if fix_length else 0)
        + body
    ),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 255),
    st.sampled_from([1, 2, 4, 5, 32, 33, 0, 255]),
    st.integers(0, 7),
    st.binary(max_size=300),
    st.booleans(),
)
_datagrams = st.one_of(st.binary(max_size=400), _plausible, _plausible.map(lambda d: NON_ESP_MARKER + d))


class PropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(datagram=_datagrams, port=st.sampled_from([500, 848, 4500]))
    def test_random_datagrams_never_raise(self, datagram, port):
        """Whatever arrives, datagramReceived returns normally, the codec raises nothing but DecodeError (no
        internal_error), and each datagram ends in exactly one outcome counter."""
        protocol, _, _ = make_protocol(port, dispatcher=None)
        protocol.datagramReceived(datagram, PEER)
        self.assertEqual(protocol.counters["internal_error"], 0)
        self.assertEqual(protocol.counters["received"], 1)
        self.assertEqual(_accounted(protocol), 1)
