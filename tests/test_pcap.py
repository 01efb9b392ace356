"""Reading UDP datagrams from pcap and pcapng captures, and picking the ISAKMP messages out of them.

The captures are built here with struct, field by field, so that the reader is checked against the formats'
layouts (draft-ietf-opsawg-pcap, draft-ietf-opsawg-pcapng) rather than against our own writer.  Where tshark is
installed, Wireshark's reader is a second opinion on the same files.
"""

import io
import shutil
import struct
import subprocess
import warnings

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.tools.pcap import (
    CaptureError,
    CaptureWarning,
    Datagram,
    ip_udp_packet,
    isakmp_messages,
    read_udp,
    write_pcap,
)
from tests import tshark

T0 = 1700000000  # a capture time in seconds since the epoch

D4 = Datagram("192.0.2.1", "192.0.2.2", 500, 500, b"ipv4 payload", T0 + 0.25)
D6 = Datagram("2001:db8::1", "2001:db8::2", 848, 848, b"ipv6 payload", T0 + 0.5)


# ------------------------------------------------------------------------------------------ capture builders


def pcap(records, linktype=101, order="<", nsec=False, snaplen=65535) -> bytes:
    """A classic pcap file: ``records`` are (seconds, fraction, frame) with the fraction in usec or nsec."""
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    # magic, version 2.4, thiszone, sigfigs, snaplen, link type
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, frame in records:
        # ts_sec, ts_usec (or ts_nsec), captured length, original length, then the frame
        out.append(struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def _block(order, btype, body) -> bytes:
    """A pcapng block: type, total length, body padded to 32 bits, total length again."""
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def _option(order, code, value) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(order="<") -> bytes:
    # byte-order magic, version 1.0, section length -1 (unknown), opt_endofopt
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(order, 0, b""))


def idb(linktype, order="<", tsresol=None, tsoffset=None, snaplen=0) -> bytes:
    # link type, reserved, snaplen, then if_tsresol (9) and if_tsoffset (14) options
    body = struct.pack(order + "HHI", linktype, 0, snaplen)
    if tsresol is not None:
        body += _option(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        body += _option(order, 14, struct.pack(order + "q", tsoffset))
    if tsresol is not None or tsoffset is not None:
        body += _option(order, 0, b"")
    return _block(order, 1, body)


def epb(iface, ts, frame, order="<") -> bytes:
    # interface ID, timestamp (high, low), captured length, original length, packet data
    header = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
    return _block(order, 6, header + frame)


def spb(frame, order="<", original=None) -> bytes:
    # original packet length, packet data (as much as the interface's snaplen allows)
    return _block(order, 3, struct.pack(order + "I", len(frame) if original is None else original) + frame)


def ether(ethertype, payload, vlans=()) -> bytes:
    """Ethernet II: destination, source, then one 802.1Q-style tag per (TPID, VID), then the EtherType."""
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    frame = bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + tags + struct.pack("!H", ethertype)
    frame += payload
    return frame + b"\0" * max(0, 60 - len(frame))  # padded to the 60-octet minimum, as on the wire


def sll(protocol, payload) -> bytes:
    # packet type (0: to us), ARPHRD_ETHER, address length 6, address padded to 8, protocol
    return struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("020000000001"), protocol) + payload


def sll2(protocol, payload) -> bytes:
    # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address padded to 8
    return struct.pack("!HHIHBB8s", protocol, 0, 2, 1, 0, 6, bytes.fromhex("020000000001")) + payload


def ipv4_with_options(d: Datagram) -> bytes:
    """``d`` in IPv4 with a 4-octet Router Alert option (RFC 2113), so IHL is 6."""
    udp = ip_udp_packet(d)[20:]
    # version 4 / IHL 6, TOS, total length, ID, DF, TTL, protocol UDP, checksum (not checked), addresses, option
    return struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(udp), 1, 0x4000, 64, 17, 0, bytes([192, 0, 2, 1]),
                       bytes([192, 0, 2, 2])) + bytes.fromhex("94040000") + udp


def ipv4_fragment(d: Datagram, offset, more, part) -> bytes:
    """An IPv4 fragment of ``d``: ``part`` is the slice of its UDP header plus payload in this fragment."""
    flags = (0x2000 if more else 0) | offset // 8
    # version 4 / IHL 5, TOS, total length, ID, flags and fragment offset, TTL, UDP, checksum, addresses
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), 7, flags, 64, 17, 0, bytes([192, 0, 2, 1]),
                       bytes([192, 0, 2, 2])) + part


def ipv6_with_headers(d: Datagram, headers) -> bytes:
    """``d`` in IPv6 with extension headers in front of UDP; ``headers`` are (next-header number, octets)."""
    base = ip_udp_packet(d)
    udp = base[40:]
    chain, numbers = b"", [h for h, _ in headers] + [17]
    for i, (_, octets) in enumerate(headers):
        chain += bytes([numbers[i + 1]]) + octets[1:]  # each header's first octet names the next one
    # version 6, payload length, next header (the first extension header), hop limit, then the addresses
    return struct.pack("!IHBB", 6 << 28, len(chain) + len(udp), numbers[0], 64) + base[8:40] + chain + udp


HOP_BY_HOP = (0, bytes.fromhex("00000104" "00000000"))  # next header, length 0 (8 octets), PadN of 4
DEST_OPTS = (60, bytes.fromhex("00010104" "00000000" "01060000" "00000000"))  # length 1: 16 octets of padding
ROUTING = (43, bytes.fromhex("00000000" "00000000"))  # routing type 0, segments left 0


def fragment_header(offset, more) -> tuple:
    # next header, reserved, fragment offset (13 bits) / res / M, identification
    return (44, struct.pack("!BBHI", 0, 0, (offset // 8) << 3 | int(more), 0x1234))


def read_bytes(data, **kw) -> tuple[list, list]:
    """Read a capture held in memory; return the datagrams and the notes."""
    notes = []
    return list(read_udp(io.BytesIO(data), notes=notes.append, **kw)), notes


def fields(d: Datagram) -> tuple:
    return (d.src, d.dst, d.sport, d.dport, d.payload)


# ------------------------------------------------------------------------------------------ classic pcap


class ClassicPcapTests(unittest.TestCase):
    def test_write_pcap_reads_back(self):
        """What write_pcap writes, read_udp reads back: addresses, ports, payloads, times, 1-based frame numbers."""
        path = self.mktemp()
        write_pcap(path, [D4, D6])
        got = list(read_udp(path))
        self.assertEqual(got, [D4, D6])
        self.assertEqual([d.frame for d in got], [1, 2])

    def test_byte_orders_and_resolutions(self):
        """Little- and big-endian files, with microsecond and nanosecond magic, give the same datagrams and times."""
        frames = [ip_udp_packet(D4), ip_udp_packet(D6)]
        for order in "<>":
            for nsec, frac, want in ((False, 123456, T0 + 0.123456), (True, 123456789, T0 + 0.123456789)):
                data = pcap([(T0, frac, f) for f in frames], order=order, nsec=nsec)
                got, notes = read_bytes(data)
                self.assertEqual([fields(d) for d in got], [fields(D4), fields(D6)], (order, nsec))
                for d in got:
                    self.assertAlmostEqual(d.time, want, delta=1e-6)
                self.assertEqual(notes, [])

    def test_raw_ip_link_type_aliases(self):
        """Link types 12 and 14 (DLT_RAW on some BSDs) and 228/229 are read as raw IP like 101."""
        for linktype, d in ((12, D4), (14, D6), (228, D4), (229, D6)):
            got, _ = read_bytes(pcap([(T0, 0, ip_udp_packet(d))], linktype=linktype))
            self.assertEqual([fields(x) for x in got], [fields(d)], linktype)

    def test_ethernet_with_vlan_tags(self):
        """Ethernet frames, untagged, 802.1Q-tagged and double-tagged (802.1ad then 802.1Q), lose no payload
        octets and gain none from the frame's padding; ARP frames are passed over silently."""
        small = Datagram("192.0.2.1", "192.0.2.2", 500, 500, b"x")  # short enough to be padded to 60 octets
        records = [
            (T0, 1, ether(0x0800, ip_udp_packet(small))),
            (T0, 2, ether(0x0800, ip_udp_packet(D4), vlans=[(0x8100, 10)])),
            (T0, 3, ether(0x86DD, ip_udp_packet(D6), vlans=[(0x88A8, 100), (0x8100, 10)])),
            (T0, 4, ether(0x0806, bytes(28))),  # ARP
        ]
        got, notes = read_bytes(pcap(records, linktype=1))
        # the same with an FCS: FCS length 4 and the P bit above the link type (draft-ietf-opsawg-pcap section 4)
        with_fcs, _ = read_bytes(pcap([(s, f, frame + b"FCS!") for s, f, frame in records], linktype=0x44000001))
        self.assertEqual(with_fcs, got)
        self.assertEqual([fields(d) for d in got], [fields(small), fields(D4), fields(D6)])
        self.assertEqual([d.frame for d in got], [1, 2, 3])
        self.assertEqual(notes, [])

    def test_linux_cooked_sll_and_sll2(self):
        """Linux cooked captures, SLL (113) and SLL2 (276), give the IP packet after their headers."""
        for linktype, cook in ((113, sll), (276, sll2)):
            records = [(T0, 0, cook(0x0800, ip_udp_packet(D4))), (T0, 1, cook(0x86DD, ip_udp_packet(D6)))]
            got, notes = read_bytes(pcap(records, linktype=linktype))
            self.assertEqual([fields(d) for d in got], [fields(D4), fields(D6)], linktype)
            self.assertEqual(notes, [])

    def test_ipv4_header_options(self):
        """An IPv4 header with options (IHL 6) is skipped by its length, not by a fixed 20 octets."""
        got, _ = read_bytes(pcap([(T0, 0, ipv4_with_options(D4))]))
        self.assertEqual([fields(d) for d in got], [fields(D4)])

    def test_ipv4_fragments(self):
        """The first IPv4 fragment gives its part of the datagram and a note; later fragments are skipped with
        a note (there is no reassembly)."""
        whole = Datagram("192.0.2.1", "192.0.2.2", 500, 500, bytes(range(40)))
        udp = ip_udp_packet(whole)[20:]  # UDP header and 40 payload octets
        records = [(T0, 0, ipv4_fragment(whole, 0, True, udp[:32])), (T0, 1, ipv4_fragment(whole, 32, False, udp[32:]))]
        got, notes = read_bytes(pcap(records))
        self.assertEqual([fields(d) for d in got], [fields(whole)[:4] + (bytes(range(24)),)])
        self.assertEqual(len(notes), 2)
        self.assertIn("frame 1: first fragment", notes[0])
        self.assertIn("24 of 40", notes[0])
        self.assertIn("frame 2: IPv4 fragment at offset 32 skipped", notes[1])

    def test_ipv6_extension_headers(self):
        """Hop-by-Hop, Destination Options and Routing headers are stepped over to reach UDP."""
        packet = ipv6_with_headers(D6, [HOP_BY_HOP, DEST_OPTS, ROUTING])
        got, notes = read_bytes(pcap([(T0, 0, packet)]))
        self.assertEqual([fields(d) for d in got], [fields(D6)])
        self.assertEqual(notes, [])

    def test_ipv6_fragment_header(self):
        """Behind an IPv6 Fragment header only the first fragment is read (with a note); a later one is skipped."""
        whole = Datagram("2001:db8::1", "2001:db8::2", 848, 848, bytes(range(40)))
        udp = ip_udp_packet(whole)[40:]
        first = ipv6_with_headers(whole, [HOP_BY_HOP, fragment_header(0, True)])
        first = first[:4] + struct.pack("!H", 16 + 32) + first[6:-len(udp)] + udp[:32]
        later = ipv6_with_headers(whole, [fragment_header(32, False)])
        later = later[:4] + struct.pack("!H", 8 + 16) + later[6:-len(udp)] + udp[32:]
        got, notes = read_bytes(pcap([(T0, 0, first), (T0, 1, later)]))
        self.assertEqual([fields(d) for d in got], [fields(whole)[:4] + (bytes(range(24)),)])
        self.assertIn("frame 1: first fragment", notes[0])
        self.assertIn("frame 2: IPv6 fragment at offset 32 skipped", notes[1])

    def test_snaplen_cut_datagram(self):
        """A datagram cut by the snapshot length is given as far as captured, with a note."""
        frame = ip_udp_packet(D4)[:-4]
        got, notes = read_bytes(pcap([(T0, 0, frame)]))
        self.assertEqual([d.payload for d in got], [D4.payload[:-4]])
        self.assertEqual(notes, [f"frame 1: UDP datagram cut short in the capture: {len(D4.payload) - 4} of "
                                 f"{len(D4.payload)} octets"])

    def test_length_fields_bound_the_payload(self):
        """The UDP length ends the payload inside a longer IP packet, and the IP length ends it inside a longer
        frame (Ethernet padding), with a note when the UDP length claims more than the IP packet holds."""
        d = Datagram("192.0.2.1", "192.0.2.2", 500, 500, b"0123456789")
        packet = ip_udp_packet(d)
        trailer = packet[:2] + struct.pack("!H", len(packet) + 4) + packet[4:] + b"TRLR"  # IP length covers it
        longer = bytearray(packet)
        longer[24:26] = struct.pack("!H", 8 + 30)  # UDP length says 30 payload octets; the IP packet holds 10
        longer6 = bytearray(ip_udp_packet(attrs.evolve(d, src="2001:db8::1", dst="2001:db8::2")))
        longer6[44:46] = struct.pack("!H", 8 + 30)  # the same lie behind IPv6's payload length
        records = [(T0, 0, ether(0x0800, trailer)), (T0, 1, ether(0x0800, bytes(longer))),
                   (T0, 2, ether(0x86DD, bytes(longer6) + b"FCS!"))]  # octets after the IPv6 packet
        got, notes = read_bytes(pcap(records, linktype=1))
        self.assertEqual([x.payload for x in got], [d.payload] * 3)
        self.assertEqual(notes, [f"frame {n}: UDP datagram cut short in the capture: 10 of 30 octets" for n in (2, 3)])

    def test_malformed_and_unsupported_frames(self):
        """Frames with broken headers are skipped with a note naming the frame; an unsupported link type is noted
        once; TCP is passed over silently."""
        tcp = bytearray(ip_udp_packet(D4))
        tcp[9] = 6
        records = [(T0, 0, ip_udp_packet(D4)[:12]), (T0, 1, bytes(tcp)), (T0, 2, b"\x50" + bytes(30))]
        got, notes = read_bytes(pcap(records))
        self.assertEqual(got, [])
        self.assertEqual(notes, ["frame 1: truncated IPv4 header", "frame 3: IP version 5"])
        _, notes = read_bytes(pcap([(T0, 0, b"x"), (T0, 1, b"y")], linktype=147))
        self.assertEqual(notes, ["frame 1: link type 147 is not supported; its frames are skipped"])

    def test_notes_default_to_warnings(self):
        """Without a notes callback, what is skipped is reported as a CaptureWarning."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = list(read_udp(io.BytesIO(pcap([(T0, 0, ip_udp_packet(D4)[:10])]))))
        self.assertEqual(got, [])
        self.assertEqual([(w.category, str(w.message)) for w in caught],
                         [(CaptureWarning, "frame 1: truncated IPv4 header")])


# ------------------------------------------------------------------------------------------ pcapng


class PcapngTests(unittest.TestCase):
    def test_two_interfaces_of_different_link_types(self):
        """One section with an Ethernet interface (microseconds) and a raw IP one (nanoseconds and an offset):
        each packet is read with its own interface's link type and time resolution; other blocks are skipped."""
        for order in "<>":
            data = b"".join([
                shb(order),
                idb(1, order),  # interface 0: Ethernet, default resolution (microseconds)
                idb(101, order, tsresol=9, tsoffset=100),  # interface 1: raw IP, nanoseconds, 100 s offset
                epb(0, T0 * 10**6 + 250000, ether(0x0800, ip_udp_packet(D4)), order),
                _block(order, 4, b"\0\0\0\0"),  # a Name Resolution Block with only nrb_record_end
                _block(order, 0x40000BAD, b"custom"),  # a block type this reader does not know
                epb(1, (T0 - 100) * 10**9 + 500000000, ip_udp_packet(D6), order),
                spb(ether(0x86DD, ip_udp_packet(D6)), order),  # Simple Packet Block: interface 0, no time
            ])
            got, notes = read_bytes(data)
            self.assertEqual([fields(d) for d in got], [fields(D4), fields(D6), fields(D6)], order)
            self.assertAlmostEqual(got[0].time, T0 + 0.25, delta=1e-6)
            self.assertAlmostEqual(got[1].time, T0 + 0.5, delta=1e-6)
            self.assertEqual(got[2].time, 0.0)
            self.assertEqual([d.frame for d in got], [1, 2, 3])
            self.assertEqual(notes, [])

    def test_binary_time_resolution(self):
        """if_tsresol with the high bit set counts in negative powers of two."""
        data = shb() + idb(101, tsresol=0x80 | 10) + epb(0, T0 * 1024 + 256, ip_udp_packet(D4))
        got, _ = read_bytes(data)
        self.assertAlmostEqual(got[0].time, T0 + 0.25, delta=1e-6)

    def test_sections_reset_interfaces_and_byte_order(self):
        """A second section may change byte order; its interfaces are numbered afresh."""
        data = (shb("<") + idb(1, "<") + epb(0, 0, ether(0x0800, ip_udp_packet(D4)), "<")
                + shb(">") + idb(276, ">") + epb(0, 0, sll2(0x86DD, ip_udp_packet(D6)), ">"))
        got, _ = read_bytes(data)
        self.assertEqual([fields(d) for d in got], [fields(D4), fields(D6)])

    def test_simple_packet_block_snaplen(self):
        """A Simple Packet Block holds min(original length, snaplen) octets; its padding is not packet data."""
        frame = ip_udp_packet(D4)
        data = shb() + idb(101, snaplen=len(frame) - 2) + spb(frame[:-2], original=len(frame))
        got, notes = read_bytes(data)
        self.assertEqual([d.payload for d in got], [D4.payload[:-2]])
        self.assertEqual(len(notes), 1)

    def test_obsolete_packet_block(self):
        """The obsolete Packet Block (type 2) is read like an Enhanced Packet Block."""
        frame = ip_udp_packet(D4)
        # interface ID (16 bits), drops count, timestamp high and low, captured length, original length
        ts = T0 * 10**6
        pb = _block("<", 2, struct.pack("<HHIIII", 0, 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame)
        got, _ = read_bytes(shb() + idb(101) + pb)
        self.assertEqual([fields(d) for d in got], [fields(D4)])
        self.assertAlmostEqual(got[0].time, T0, delta=1e-6)

    def test_structural_errors(self):
        """Inconsistent pcapng structure is a CaptureError with a message saying what is wrong."""
        good = shb() + idb(101)
        cases = {
            "undefined interface 1": good + epb(1, 0, ip_udp_packet(D4)),
            "trailing length differs": good + epb(0, 0, ip_udp_packet(D4))[:-4] + b"\xff\0\0\0",
            "bad byte-order magic": shb()[:8] + b"\x01\x02\x03\x04" + shb()[12:],
            "bad length": good + struct.pack("<II", 6, 10) + b"\0\0",
            "not supported": shb()[:12] + struct.pack("<H", 2) + shb()[14:],
            "overrun the block": good + _block("<", 6, struct.pack("<IIIII", 0, 0, 0, 200, 200) + b"\0" * 8),
            "option 9 of 200 octets overruns": shb() + _block("<", 1, struct.pack("<HHIHH", 101, 0, 0, 9, 200)),
        }
        for message, data in cases.items():
            e = self.assertRaises(CaptureError, read_bytes, data)
            self.assertIn(message, str(e))


# ------------------------------------------------------------------------------------------ damaged files


class DamagedCaptureTests(unittest.TestCase):
    def test_not_a_capture(self):
        """Empty files, text, and a pcap of an unknown version are refused with CaptureError."""
        for data, message in ((b"", "empty file"), (b"root:x:0:0:root:/root:/bin/bash\n", "not a pcap or pcapng"),
                              (pcap([])[:4] + struct.pack("<H", 3) + pcap([])[6:], "pcap version 3")):
            e = self.assertRaises(CaptureError, read_bytes, data)
            self.assertIn(message, str(e))

    def _check_every_cut(self, data, boundaries):
        for cut in range(len(data)):
            if cut in boundaries:
                got, _ = read_bytes(data[:cut])
                self.assertEqual(len(got), boundaries[cut], cut)
            else:
                e = self.assertRaises(CaptureError, read_bytes, data[:cut])
                self.assertTrue(str(e), cut)

    def test_truncated_pcap(self):
        """A pcap cut anywhere but between records raises CaptureError; cut between records, it reads the
        records before the cut."""
        frames = [ip_udp_packet(D4), ip_udp_packet(D6)]
        data = pcap([(T0, 0, f) for f in frames])
        first_end = 24 + 16 + len(frames[0])
        self._check_every_cut(data, {24: 0, first_end: 1})

    def test_truncated_pcapng(self):
        """A pcapng cut anywhere but between blocks raises CaptureError."""
        head = shb() + idb(101)
        one = epb(0, 0, ip_udp_packet(D4))
        data = head + one + epb(0, 0, ip_udp_packet(D6))
        self._check_every_cut(data, {len(shb()): 0, len(head): 0, len(head) + len(one): 1})

    def test_implausible_record_length(self):
        """A record claiming more than 16 MiB is refused before any attempt to read it."""
        data = pcap([]) + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 0xFFFFFFF0)
        e = self.assertRaises(CaptureError, read_bytes, data)
        self.assertIn("claims", str(e))

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([b"", pcap([]), pcap([], order=">", nsec=True), pcap([], linktype=1),
                            pcap([], linktype=113), pcap([], linktype=276), shb(), shb(">") + idb(1, ">"),
                            shb() + idb(101) + idb(113)]),
           st.binary(max_size=300))
    def test_random_bytes_raise_only_capture_error(self, head, tail):
        """Whatever the bytes (random, or random after a valid file or section header), read_udp either yields
        datagrams or raises CaptureError: never struct.error, IndexError or anything else."""
        try:
            got, _ = read_bytes(head + tail)
        except CaptureError:
            return
        for d in got:
            self.assertIsInstance(d, Datagram)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(range(2)), st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=4),
           st.integers(0, 2**16))
    def test_mangled_files_raise_only_capture_error(self, which, changes, cut):
        """A valid pcap or pcapng file with a few octets changed and maybe cut short reads or raises CaptureError."""
        data = bytearray([
            pcap([(T0, 1, ether(0x0800, ip_udp_packet(D4), vlans=[(0x8100, 1)])),
                  (T0, 2, ether(0x86DD, ip_udp_packet(D6)))], linktype=1),
            shb() + idb(1) + idb(276, tsresol=9, tsoffset=1) + epb(1, 5, sll2(0x86DD, ip_udp_packet(D6)))
            + _block("<", 4, b"\0\0\0\0") + spb(ether(0x0800, ip_udp_packet(D4))),
        ][which])
        for where, value in changes:
            data[where % len(data)] = value
        try:
            read_bytes(bytes(data[: cut % (len(data) + 1)]))
        except CaptureError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from([1, 101, 113, 276]), st.binary(max_size=120), st.integers(0, 119), st.integers(0, 255))
    def test_mangled_frames_never_raise(self, linktype, noise, where, value):
        """A well-formed file of damaged frames (an IP/UDP frame with one octet changed, or noise) never raises:
        its frames are read or skipped."""
        frame = {1: lambda p: ether(0x0800, p), 101: lambda p: p, 113: lambda p: sll(0x86DD, p),
                 276: lambda p: sll2(0x0800, p)}[linktype](ip_udp_packet(D6 if linktype == 113 else D4))
        mangled = bytearray(frame)
        mangled[where % len(mangled)] = value
        got, _ = read_bytes(pcap([(T0, 0, bytes(mangled)), (T0, 1, noise)], linktype=linktype))
        self.assertLessEqual(len(got), 2)


# ------------------------------------------------------------------------------------------ ISAKMP selection


class IsakmpMessagesTests(unittest.TestCase):
    def test_ports_and_nat_t_framing(self):
        """UDP 500 and 848 are taken as they are; on UDP 4500 only datagrams with the non-ESP marker, which is
        removed; NAT-keepalives, ESP and other ports are skipped."""
        def dg(sport, dport, payload):
            return Datagram("192.0.2.1", "192.0.2.2", sport, dport, payload)

        isakmp = b"I" * 28
        datagrams = [
            dg(500, 500, isakmp),
            dg(848, 848, isakmp),
            dg(4500, 4500, b"\0\0\0\0" + isakmp),  # non-ESP marker (RFC 3948 section 2.2)
            dg(40000, 4500, b"\xff"),  # NAT-keepalive (RFC 3948 section 2.3)
            dg(4500, 40000, bytes.fromhex("c0ffee01 00000001") + b"E" * 20),  # ESP: SPI 0xc0ffee01, sequence 1
            dg(4500, 40000, b"\0\0\0\0" + isakmp),  # a NAT-mapped peer port on one side only
            dg(53, 53, isakmp),
            dg(4500, 4500, b"\0\0"),  # too short for the marker: not ISAKMP
        ]
        got = list(isakmp_messages(datagrams))
        self.assertEqual([(d.sport, d.dport, m) for d, m in got],
                         [(500, 500, isakmp), (848, 848, isakmp), (4500, 4500, isakmp), (4500, 40000, isakmp)])
        self.assertEqual(got[2][0], datagrams[2])  # the datagram itself is passed through unchanged

    def test_ports_parameter(self):
        """``ports`` limits the selection."""
        datagrams = [Datagram("192.0.2.1", "192.0.2.2", p, p, b"x" * 28) for p in (500, 848, 4500)]
        self.assertEqual([d.dport for d, _ in isakmp_messages(datagrams, ports=(848,))], [848])

    def test_from_a_capture(self):
        """read_udp and isakmp_messages together on a capture with IKE on 500 and NAT-T on 4500."""
        path = self.mktemp()
        nat = Datagram("2001:db8::1", "2001:db8::2", 4500, 4500, b"\0\0\0\0" + b"M" * 28, T0)
        write_pcap(path, [D4, nat, Datagram("2001:db8::1", "2001:db8::2", 4500, 4500, b"\xff", T0)])
        self.assertEqual([m for _, m in isakmp_messages(read_udp(path))], [D4.payload, b"M" * 28])


# ------------------------------------------------------------------------------------------ against tshark


def _tshark_view(path) -> list[tuple]:
    """Per UDP frame as Wireshark reads it: frame number, time, addresses, ports and the UDP payload."""
    out = []
    for row in tshark.packets(path, "-Y", "udp"):
        layers = row["_source"]["layers"]
        ip = layers.get("ip") or layers.get("ipv6")
        src = ip.get("ip.src") or ip.get("ipv6.src")
        dst = ip.get("ip.dst") or ip.get("ipv6.dst")
        udp = layers["udp"]
        payload = bytes.fromhex(udp.get("udp.payload", "").replace(":", ""))
        out.append((int(layers["frame"]["frame.number"]), round(float(layers["frame"]["frame.time_epoch"]), 6),
                    src, dst, int(udp["udp.srcport"]), int(udp["udp.dstport"]), payload))
    return out


def _our_view(path) -> list[tuple]:
    notes = []
    return [(d.frame, round(d.time, 6), d.src, d.dst, d.sport, d.dport, d.payload)
            for d in read_udp(path, notes=notes.append)]


class TsharkAgreementTests(unittest.TestCase):
    def setUp(self):
        tshark.require_tshark()

    def _tool(self, name):
        path = shutil.which(name)
        if path is None:
            raise unittest.SkipTest(f"missing tool: tshark ({name})")
        return path

    def _write(self, data) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_our_captures_read_the_same_by_tshark(self):
        """For each format built here (pcap both orders and resolutions, Ethernet with VLANs, SLL, SLL2, IPv6
        extension headers, pcapng with two interfaces), Wireshark reads the same frames, times and datagrams."""
        frames = [ip_udp_packet(D4), ipv6_with_headers(D6, [HOP_BY_HOP, ROUTING])]
        captures = [
            pcap([(T0, 250000, f) for f in frames]),
            pcap([(T0, 250000000, f) for f in frames], order=">", nsec=True),
            pcap([(T0, 1, ether(0x0800, ip_udp_packet(D4), vlans=[(0x8100, 10)])),
                  (T0, 2, ether(0x86DD, ip_udp_packet(D6), vlans=[(0x88A8, 3), (0x8100, 4)]))], linktype=1),
            pcap([(T0, 3, sll(0x0800, frames[0])), (T0, 4, sll(0x86DD, frames[1]))], linktype=113),
            pcap([(T0, 5, sll2(0x0800, frames[0])), (T0, 6, sll2(0x86DD, frames[1]))], linktype=276),
            shb(">") + idb(1, ">") + idb(101, ">", tsresol=9)
            + epb(0, T0 * 10**6 + 7, ether(0x0800, ip_udp_packet(D4)), ">")
            + epb(1, T0 * 10**9 + 8000, frames[1], ">"),
        ]
        for data in captures:
            path = self._write(data)
            ours = _our_view(path)
            self.assertEqual(len(ours), 2)
            self.assertEqual(ours, _tshark_view(path))

    def test_text2pcap_pcapng(self):
        """A pcapng written by text2pcap (Ethernet, IPv4 and UDP headers of its own, nanosecond times) reads as
        tshark reads it."""
        hexdump = self._write(b"0000 00 00 00 00 49 53 41 4b\n\n0000 61 62 63\n")
        out = self.mktemp()
        subprocess.run([self._tool("text2pcap"), "-q", "-4", "192.0.2.1,192.0.2.2", "-u", "40000,4500", hexdump, out],
                       check=True, capture_output=True, timeout=60)
        with open(out, "rb") as f:
            self.assertEqual(f.read(4), b"\x0a\x0d\x0d\x0a")  # it wrote pcapng
        ours = _our_view(out)
        self.assertEqual([d[2:] for d in ours], [("192.0.2.1", "192.0.2.2", 40000, 4500, b"\0\0\0\0ISAK"),
                                                 ("192.0.2.1", "192.0.2.2", 40000, 4500, b"abc")])
        self.assertEqual(ours, _tshark_view(out))
        self.assertEqual([m for _, m in isakmp_messages(read_udp(out))], [b"ISAK"])

    def test_editcap_conversions(self):
        """Our pcap converted by editcap to pcapng and to nanosecond pcap reads the same as the original."""
        src = self.mktemp()
        write_pcap(src, [D4, D6])
        for fmt in ("pcapng", "nsecpcap"):
            out = self.mktemp()
            subprocess.run([self._tool("editcap"), "-F", fmt, src, out], check=True, capture_output=True, timeout=60)
            self.assertEqual(_our_view(out), _our_view(src), fmt)
            self.assertEqual(_our_view(out), _tshark_view(out), fmt)
