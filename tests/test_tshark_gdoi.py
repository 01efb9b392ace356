"""tshark 4.0 (Wireshark's ISAKMP dissector) reads the GDOI messages we build as we do.

Where tshark misreads a correct RFC 6407 layout, the test asserts exactly the defect that docs/wire-format.md
records under the same name ("tshark defect: ...").
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from gdoiserver.codec import Attribute, Context, Delete, Hash, Message, Nonce, Signature, encode_chain
from gdoiserver.codec.constants import DOI, ExchangeType, IPsecAttr
from gdoiserver.codec.gdoi import (
    GAP,
    KD,
    POP,
    SAK,
    SAT,
    SEQ,
    AddressPreservation,
    GAPAttr,
    GroupSA,
    IEC61850TEK,
    IPsecTEK,
    KeyPacket,
    KeyPacketType,
    SADirection,
    Selector,
    TEKProtocol,
    group_id,
)
from tests.tshark import field_values, packets, problems, require_tshark, write_messages

PULL = Context(doi=DOI.GDOI, exchange_type=ExchangeType.GROUPKEY_PULL)
PUSH = Context(doi=DOI.GDOI, exchange_type=ExchangeType.GROUPKEY_PUSH)
KEK_SPI = bytes(range(0x20, 0x30))
IP, NET = ipaddress.ip_address, ipaddress.ip_network

SAK_OBJ = SAK(17, Selector.of(IP("192.0.2.1"), 848), Selector.of(IP("239.192.0.1"), 848), KEK_SPI,
              (Attribute(1, 1), Attribute(2, 3), Attribute(3, 128), Attribute(4, b"\0\1\x51\x80"), Attribute(5, 3),
               Attribute(6, 1), Attribute(7, 2048)))
ESP = SAT(TEKProtocol.IPSEC_ESP, IPsecTEK(
    17, Selector.of(NET("192.0.2.0/24"), 0), Selector.of(IP("239.192.0.2"), 5004), 12, b"\xe5\x91\x00\x01",
    (Attribute(1, 1), Attribute(2, 3600), Attribute(4, 1), Attribute(5, 5), Attribute(6, 256),
     Attribute(IPsecAttr.ADDRESS_PRESERVATION, AddressPreservation.SOURCE_AND_DESTINATION),
     Attribute(IPsecAttr.SA_DIRECTION, SADirection.SENDER_ONLY))))
ESP_V6 = SAT(TEKProtocol.IPSEC_ESP, IPsecTEK(
    0, Selector.of(IP("2001:db8::1")), Selector.of(IP("ff3e::8000:1")), 20, b"\xe5\x91\x00\x02",
    (Attribute(4, 1), Attribute(6, 128))))
AH = SAT(TEKProtocol.IPSEC_AH, IPsecTEK(
    0, Selector.of(IP("192.0.2.7")), Selector.of(IP("239.192.0.3")), 5, b"\xa4\x00\x00\x01", (Attribute(5, 5),)))
IEC = SAT(TEKProtocol.IEC61850, IEC61850TEK(bytes.fromhex("06052883e70f06"), b"\x01\x0c\xcd\x01", b"\0\0\0\7", 2, 1,
                                             3600, (Attribute(1, 0), Attribute(2, 100))))
TEK_KEYS = (KeyPacket(KeyPacketType.TEK, ESP.tek.spi, (Attribute(1, b"\x11" * 32), Attribute(2, b"\x12" * 32))),
            KeyPacket(KeyPacketType.TEK, AH.tek.spi, (Attribute(2, b"\x13" * 32),)))
KEK_KEY = KeyPacket(KeyPacketType.KEK, KEK_SPI, (Attribute(1, b"\x21" * 32), Attribute(2, bytes.fromhex("3003020101"))))
LKH_KEY = KeyPacket(KeyPacketType.LKH, b"", (Attribute(1, b"\x31" * 24),))
SID_KEY = KeyPacket(KeyPacketType.SID, b"", (Attribute(1, 16), Attribute(2, b"\0\0\0\1"), Attribute(2, b"\0\0\0\2")))


def message(xchg, payloads, mid=0):
    return Message(KEK_SPI[:8], KEK_SPI[8:], xchg, 0, mid, tuple(payloads))


def pull_messages():
    """GROUPKEY-PULL 1 to 4 in their unencrypted form (RFC 6407 section 3.2)."""
    return [
        message(32, (Hash(b"\x01" * 32), Nonce(b"\x02" * 16), group_id(1234)), 9),
        message(32, (Hash(b"\x03" * 32), Nonce(b"\x04" * 16), GroupSA(payloads=(SAK_OBJ, ESP, AH, ESP_V6))), 9),
        message(32, (Hash(b"\x05" * 32), GAP((Attribute(GAPAttr.SENDER_ID_REQUEST, 2),))), 9),
        message(32, (Hash(b"\x06" * 32), SEQ(0), KD(TEK_KEYS + (KEK_KEY, SID_KEY))), 9),
    ]


def push_message():
    """GROUPKEY-PUSH: HDR, SEQ, SA(SAK, SAT, SAT), KD, SIG (RFC 6407 section 4)."""
    return message(33, (SEQ(42), GroupSA(payloads=(SAK_OBJ, ESP, AH)), KD(TEK_KEYS + (KEK_KEY, LKH_KEY)),
                        Signature(b"\x5a" * 256)))


def hexes(octets_list):
    """Octets as tshark's JSON shows them (colon-separated lowercase hex)."""
    return [o.hex(":") for o in octets_list]


class TsharkGDOITests(SynchronousTestCase):
    """Each kind of GDOI message we build dissects in tshark with no malformed or warning items and the same values."""

    def setUp(self):
        require_tshark()

    def capture(self, messages, ctx):
        path = self.mktemp() + ".pcap"
        write_messages(path, [m.encode(ctx) for m in messages], sport=848, dport=848)
        return path

    def test_pull_messages(self):
        """PULL 1-4: group ID, SA(SAK, SATs for ESP, AH and IPv6), GAP and KD(TEK, KEK, SID) read as we wrote them."""
        msgs = pull_messages()
        pcap = self.capture(msgs, PULL)
        self.assertEqual(problems(pcap), [])
        p1, p2, p3, p4 = packets(pcap)
        self.assertEqual(field_values(p1, "isakmp.exchangetype"), ["32"])
        self.assertEqual(field_values(p1, "isakmp.id.data.key_id"), ["00:00:04:d2"])
        self.assertEqual(field_values(p2, "isakmp.sa.doi"), ["2"])
        self.assertEqual(field_values(p2, "isakmp.sak.spi"), hexes([KEK_SPI]))
        teks = [ESP.tek, AH.tek, ESP_V6.tek]
        self.assertEqual(field_values(p2, "isakmp.sat.spi"), hexes(t.spi for t in teks))
        self.assertEqual(field_values(p2, "isakmp.sat.protocol_id"), ["1", "2", "1"])
        self.assertEqual(field_values(p2, "isakmp.sat.transform_id"), [str(t.transform_id) for t in teks])
        self.assertEqual(field_values(p2, "isakmp.sat.src_id_data"), hexes(t.src.data for t in teks))
        self.assertEqual(field_values(p2, "isakmp.sat.dst_id_port"), [str(t.dst.port) for t in teks])
        self.assertEqual(field_values(p2, "isakmp.id.data.ipv6_addr"), ["2001:db8::1", "ff3e::8000:1"])
        self.assertEqual(field_values(p3, "isakmp.datapayload"), ["80:03:00:02"])  # GAP: shown as raw octets
        kd = msgs[3].payloads[2]
        self.assertEqual(field_values(p4, "isakmp.seq.seq"), ["0"])
        self.assertEqual(field_values(p4, "isakmp.kd.num_pkt"), [str(len(kd.key_packets))])
        self.assertEqual(field_values(p4, "isakmp.kd.payload.type"), [str(k.kd_type) for k in kd.key_packets])
        self.assertEqual(field_values(p4, "isakmp.kd.payload.spi"), hexes(k.spi for k in kd.key_packets if k.spi))

    def test_push_message(self):
        """PUSH: SEQ, the 2-octet SA Attribute Next Payload, SAK, SATs (with RFC 6407's Address Preservation and SA
        Direction), KD and their attribute types read as ours.

        tshark defect "tshark-attribute-labels": it names the SAK's KEK attributes as IPsec SA attributes and every
        key packet attribute as a TEK attribute; the attribute types and values it reads are ours.
        """
        m = push_message()
        pcap = self.capture([m], PUSH)
        self.assertEqual(problems(pcap), [])
        (p,) = packets(pcap)
        seq, sa, kd, _ = m.payloads
        self.assertEqual(field_values(p, "isakmp.exchangetype"), ["33"])
        cookies = field_values(p, "isakmp.ispi") + field_values(p, "isakmp.rspi")
        self.assertEqual(cookies, hexes([KEK_SPI[:8], KEK_SPI[8:]]))
        self.assertEqual(field_values(p, "isakmp.seq.seq"), [str(seq.sequence_number)])
        self.assertEqual(field_values(p, "isakmp.sa.next_attribute_payload"), ["00:0f"])
        self.assertEqual(field_values(p, "isakmp.sak.protoid"), ["17"])
        self.assertEqual(field_values(p, "isakmp.sak.src_id_data"), hexes([SAK_OBJ.src.data]))
        self.assertEqual(field_values(p, "isakmp.sak.spi"), hexes([KEK_SPI]))
        self.assertEqual(field_values(p, "isakmp.sat.spi"), hexes([ESP.tek.spi, AH.tek.spi]))
        attr_types = [a.type for a in SAK_OBJ.attributes + ESP.tek.attributes + AH.tek.attributes]
        self.assertEqual(field_values(p, "isakmp.ipsec.attr.type"), [str(t) for t in attr_types])
        # RFC 6407's IPsec SA attributes: tshark names and reads them from the IANA registry, as we number them.
        self.assertEqual(field_values(p, "isakmp.ipsec.attr.addr_preservation"), ["4"])
        self.assertEqual(field_values(p, "isakmp.ipsec.attr.sa_direction"), ["1"])
        self.assertEqual(field_values(p, "isakmp.kd.payload.type"), [str(k.kd_type) for k in kd.key_packets])
        key_attr_types = [a.type for k in kd.key_packets for a in k.attributes]
        self.assertEqual(field_values(p, "isakmp.key_download.attr.type"), [str(t) for t in key_attr_types])
        self.assertEqual(field_values(p, "isakmp.kd.payload.length"), [str(len(k.encode())) for k in kd.key_packets])

    def test_push_with_delete(self):
        """PUSH HDR, SEQ, D, SA, KD, SIG: tshark reads the Delete as DOI 2 (GDOI), the TEK's Protocol-ID and its SPI."""
        m = message(33, (SEQ(8), Delete(DOI.GDOI, TEKProtocol.IPSEC_ESP, (ESP.tek.spi,)),
                         GroupSA(payloads=(SAK_OBJ, ESP)), KD(TEK_KEYS[:1]), Signature(b"\x5a" * 64)))
        pcap = self.capture([m], PUSH)
        self.assertEqual(problems(pcap), [])
        (p,) = packets(pcap)
        self.assertEqual(field_values(p, "isakmp.delete.doi"), ["2"])
        self.assertEqual(field_values(p, "isakmp.delete.protoid"), ["1"])
        self.assertEqual(field_values(p, "isakmp.delete.spi"), hexes([ESP.tek.spi]))
        self.assertEqual(field_values(p, "isakmp.sat.spi"), hexes([ESP.tek.spi]))

    def test_iec61850_tek_first(self):
        """An IEC 61850 SAT as the SA's first attribute payload is shown whole as the TEK payload, without error."""
        m = message(33, (SEQ(1), GroupSA(payloads=(IEC,)), KD(()), Signature(b"\x5a" * 64)))
        pcap = self.capture([m], PUSH)
        self.assertEqual(problems(pcap), [])
        (p,) = packets(pcap)
        self.assertEqual(field_values(p, "isakmp.sat.protocol_id"), ["3"])
        self.assertEqual(field_values(p, "isakmp.sat.payload"), hexes([IEC.encode_body(PUSH)[1:]]))

    def test_defect_gap_inside_sa(self):
        """tshark defect "tshark-sa-gap-stops": a GAP inside the SA ends tshark's walk of the SA attribute payloads.

        With SA(SAK, GAP, SAT, SAT) tshark shows the SAK and no SAT, and with SA(GAP, SAT) neither; it flags
        nothing, and the payloads after the SA still dissect.
        """
        gap = GAP((Attribute(GAPAttr.ACTIVATION_TIME_DELAY, 30), Attribute(GAPAttr.DEACTIVATION_TIME_DELAY, 60)))
        msgs = [message(33, (SEQ(2), GroupSA(payloads=(SAK_OBJ, gap, ESP, AH)), KD(TEK_KEYS), Signature(b"s" * 64))),
                message(33, (SEQ(3), GroupSA(payloads=(gap, ESP)), KD(TEK_KEYS), Signature(b"s" * 64)))]
        pcap = self.capture(msgs, PUSH)
        self.assertEqual(problems(pcap), [])
        p1, p2 = packets(pcap)
        self.assertEqual(field_values(p1, "isakmp.sak.spi"), hexes([KEK_SPI]))
        self.assertEqual(field_values(p1, "isakmp.sat.spi"), [])
        self.assertEqual(field_values(p2, "isakmp.sa.next_attribute_payload"), ["00:16"])
        self.assertEqual(field_values(p2, "isakmp.sak.spi") + field_values(p2, "isakmp.sat.spi"), [])
        for p in (p1, p2):
            self.assertEqual(field_values(p, "isakmp.kd.payload.spi"), hexes(k.spi for k in TEK_KEYS))

    def test_defect_opaque_tek_after_another(self):
        """tshark defect "tshark-opaque-sat-overrun": a SAT other than ESP or AH that follows a SAK or SAT is shown
        as running from its Protocol-ID to (its own start + the length of all the SA's attribute payloads), past the
        SA's end; tshark flags the packet malformed only when the datagram ends first."""
        private = SAT(200, b"private-tek")
        msgs = [message(33, (SEQ(4), GroupSA(payloads=(SAK_OBJ, IEC)), KD(()), Signature(b"s" * 256))),
                message(33, (SEQ(5), GroupSA(payloads=(SAK_OBJ, IEC)))),
                message(33, (SEQ(6), GroupSA(payloads=(ESP, private))))]
        wire = [m.encode(PUSH) for m in msgs]
        pcap = self.capture(msgs, PUSH)
        found = problems(pcap)
        self.assertEqual([line.split("\t")[0] for line in found], ["2", "3"])
        for line in found:
            self.assertIn("Malformed Packet", line)
        # Where the datagram is long enough, the octets tshark shows as the TEK payload are exactly the overrun.
        first_attr = 28 + 8 + 4 + 12  # HDR, SEQ, the SA's generic header and fixed fields
        sa_attrs_len = len(encode_chain(msgs[0].payloads[1].payloads, PUSH))
        sat_start = first_attr + len(encode_chain((SAK_OBJ,), PUSH))
        shown = field_values(packets(pcap)[0], "isakmp.sat.payload")
        self.assertEqual(shown, hexes([wire[0][sat_start + 5 : sat_start + sa_attrs_len]]))
        self.assertGreater(sat_start + sa_attrs_len, first_attr + sa_attrs_len)

    def test_rfc3547_tek_layout(self):
        """tshark reads only RFC 6407's SAT layout ("tshark-sat-rfc6407-only"): an RFC 3547 SAT (1-octet ID Data
        Len) is flagged malformed, while the same TEK in RFC 6407's layout is clean."""
        m = message(33, (SEQ(7), GroupSA(payloads=(SAK_OBJ, ESP)), KD(()), Signature(b"s" * 64)))
        old = Context(doi=DOI.GDOI, exchange_type=33, gdoi_format="rfc3547")
        pcap = self.capture([m], old)
        found = problems(pcap)
        self.assertEqual(len(found), 1)
        self.assertIn("Malformed Packet", found[0])
        self.assertEqual(problems(self.capture([m], PUSH)), [])

    def test_pop_payload(self):
        """RFC 3547's POP payload and a top-level GAP are shown as raw octets without error."""
        m = message(32, (Hash(b"\x07" * 32), POP(b"\x50" * 16), GAP((Attribute(GAPAttr.SENDER_ID_REQUEST, 1),))), 3)
        pcap = self.capture([m], PULL)
        self.assertEqual(problems(pcap), [])
        (p,) = packets(pcap)
        self.assertEqual(field_values(p, "isakmp.datapayload"), hexes([b"\x50" * 16, bytes.fromhex("80030001")]))
