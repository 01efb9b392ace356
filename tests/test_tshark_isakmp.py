"""tshark (Wireshark's ISAKMP dissector) as an independent decoder of every corpus message (tests/corpus.py).

The whole corpus goes into one capture: UDP 500 over IPv4 for most messages, UDP 4500 with the non-ESP marker for
the NAT-T ones, IPv6 (::1) for the IPv6 ones.  tshark must find nothing malformed and no expert item of warning or
worse, and its decode must agree, field by field, with what our codec decodes from the same octets.
"""

import functools
import ipaddress
import os
import tempfile

from twisted.trial import unittest

from gdoiserver.codec import NON_ESP_MARKER, decode_attributes, decode_message
from gdoiserver.codec.constants import (
    DOI,
    EncapsulationMode,
    ESPTransformID,
    ExchangeType,
    IDType,
    IPsecAttr,
    LifeType,
    NotifyType,
    PayloadType,
    ProtocolID,
)
from gdoiserver.tools.pcap import Datagram, write_pcap
from tests import tshark
from tests.corpus import all_messages

#: Expert items of warning or worse that tshark 4.0.17 raises on corpus messages that are correct per the RFC,
#: by example name (``tshark.problems`` lines without the frame number).  None found so far.
KNOWN_TSHARK_DEFECTS: dict[str, str] = {}

_OPAQUE_FIELDS = {  # payload type -> the tshark field holding its whole body, and our attribute for it
    PayloadType.KE: ("isakmp.key_exchange.data", "key_exchange_data"),
    PayloadType.NONCE: ("isakmp.nonce", "nonce_data"),
    PayloadType.HASH: ("isakmp.hash", "hash_data"),
    PayloadType.SIG: ("isakmp.sig", "signature_data"),
    PayloadType.VID: ("isakmp.vid_bytes", "vendor_id"),
    PayloadType.NAT_D: ("isakmp.ike.nat_hash", "hash_of_address_and_port"),
}
_ATTRIBUTE_KEYS = {"format", "type", "length", "value"}


@functools.cache
def _dissection():
    """Write the corpus to one capture; return (examples, our decodes, tshark's packets, tshark's problems)."""
    tshark.require_tshark()
    examples = all_messages()
    datagrams = []
    for i, e in enumerate(examples):
        src, dst = e.addresses()
        datagrams.append(Datagram(src, dst, e.port, e.port, e.wire(), float(i)))
    # What our codec reads from the very octets tshark reads (after the marker on port 4500).
    ours = [decode_message(e.wire()[len(NON_ESP_MARKER) if e.port == 4500 else 0:], e.doi) for e in examples]
    with tempfile.TemporaryDirectory() as tmp:
        pcap = os.path.join(tmp, "corpus.pcap")
        write_pcap(pcap, datagrams)
        packets = [p["_source"]["layers"] for p in tshark.packets(pcap, "-x")]
        problems = tshark.problems(pcap)
    return examples, ours, packets, problems


def _list(value) -> list:
    """tshark's JSON gives one value bare and repeated ones as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _int(node, key):
    value = node.get(key)
    return None if value is None else int(value, 0)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _raw(node, key) -> bytes | None:
    """The octets tshark attributes to field ``key`` (from ``-x``'s ``<key>_raw``: [hex, offset, length, ...])."""
    raw = node.get(key + "_raw")
    return None if raw is None else bytes.fromhex(raw[0])


def _children(node) -> list[tuple[int, dict]]:
    """(payload type, subtree) of each payload directly under ``node``, in wire order."""
    return list(zip(map(int, _list(node.get("isakmp.typepayload"))), _list(node.get("isakmp.typepayload_tree"))))


class _Comparison:
    """Mismatches between our decode and tshark's, with where each was found."""

    def __init__(self):
        self.mismatches: list[str] = []
        self.checked = 0

    def check(self, where: str, ours, theirs):
        self.checked += 1
        if ours != theirs:
            self.mismatches.append(f"{where}: ours {ours!r}, tshark {theirs!r}")


def _attributes(cmp, where, ours, node, family):
    """Data attributes (RFC 2408 section 3.3): type, form and value octets, and tshark's reading of the value."""
    theirs = _list(node.get(f"isakmp.{family}.attr"))
    cmp.check(f"{where} attribute count", len(ours), len(theirs))
    for j, (a, t) in enumerate(zip(ours, theirs)):
        p = f"isakmp.{family}.attr."
        w = f"{where} attribute {j}"
        tv = isinstance(a.value, int)
        cmp.check(f"{w} type", a.type, int(t[p + "type"]))
        cmp.check(f"{w} TV form", tv, t[p + "format"] == "1")
        cmp.check(f"{w} value", a.value.to_bytes(2, "big") if tv else a.value, _hex(t[p + "value"]))
        typed = [k for k in t if k.startswith(p) and k[len(p):] not in _ATTRIBUTE_KEYS and not k.endswith("_raw")]
        numbers = [int(t[k]) for k in typed if t[k].isdigit()]
        if numbers:
            cmp.check(f"{w} read as a number", a.value if tv else int.from_bytes(a.value, "big"), numbers[0])


def _sa(cmp, where, sa, node):
    """SA payload (RFC 2408 section 3.4) with its proposals and transforms (sections 3.5 and 3.6)."""
    cmp.check(f"{where} DOI", sa.doi, _int(node, "isakmp.sa.doi"))
    cmp.check(f"{where} situation", sa.situation, int.from_bytes(_hex(node["isakmp.sa.situation"]), "big"))
    proposals = _children(node)
    cmp.check(f"{where} proposal payloads", [PayloadType.P] * len(sa.proposals), [t for t, _ in proposals])
    for i, (p, (_, pn)) in enumerate(zip(sa.proposals, proposals)):
        w = f"{where} proposal {i}"
        cmp.check(f"{w} number", p.proposal_number, _int(pn, "isakmp.prop.number"))
        cmp.check(f"{w} protocol", p.protocol_id, _int(pn, "isakmp.prop.protoid"))
        cmp.check(f"{w} SPI size", len(p.spi), _int(pn, "isakmp.spisize"))
        cmp.check(f"{w} SPI", p.spi, _hex(pn.get("isakmp.spi", "")))
        cmp.check(f"{w} # of transforms", len(p.transforms), _int(pn, "isakmp.prop.transforms"))
        transforms = _children(pn)
        cmp.check(f"{w} transform payloads", [PayloadType.T] * len(p.transforms), [t for t, _ in transforms])
        family = "ike" if p.protocol_id == ProtocolID.ISAKMP else "ipsec"
        for k, (t, (_, tn)) in enumerate(zip(p.transforms, transforms)):
            cmp.check(f"{w} transform {k} number", t.transform_number, _int(tn, "isakmp.trans.number"))
            cmp.check(f"{w} transform {k} id", t.transform_id, _int(tn, "isakmp.trans.id"))
            _attributes(cmp, f"{w} transform {k}", t.attributes, tn, family)


def _identification(cmp, where, ident, node):
    """Identification payload in the IPsec DOI's layout (RFC 2407 section 4.6.2), read by ID type."""
    cmp.check(f"{where} ID type", ident.id_type, _int(node, "isakmp.id.type"))
    cmp.check(f"{where} protocol", ident.protocol_id, _int(node, "isakmp.id.protoid"))
    cmp.check(f"{where} port", ident.port, _int(node, "isakmp.id.port"))
    cmp.check(f"{where} data", ident.data, _raw(node, "isakmp.id.data"))
    data = node.get("isakmp.id.data", {})
    d = "isakmp.id.data."
    t = ident.id_type
    if t in (IDType.IPV4_ADDR_SUBNET, IDType.IPV6_ADDR_SUBNET):
        # Address then mask, each half of the data.  (Identification.value() cannot read an IPv6 mask yet.)
        v, half = ("ipv4", 4) if t == IDType.IPV4_ADDR_SUBNET else ("ipv6", 16)
        ours = tuple(str(ipaddress.ip_address(ident.data[i : i + half])) for i in (0, half))
        cmp.check(f"{where} subnet", ours, (data.get(f"{d}{v}_addr"), data.get(f"{d}{v}_subnet")))
        return
    value = ident.value()
    if t in (IDType.IPV4_ADDR, IDType.IPV6_ADDR):
        v = "ipv4" if t == IDType.IPV4_ADDR else "ipv6"
        theirs = data.get(f"{d}{v}_addr")
        cmp.check(f"{where} address", value, theirs and ipaddress.ip_address(theirs))
    elif t in (IDType.IPV4_ADDR_RANGE, IDType.IPV6_ADDR_RANGE):
        v = "ipv4" if t == IDType.IPV4_ADDR_RANGE else "ipv6"
        theirs = (data.get(f"{d}{v}_range_start"), data.get(f"{d}{v}_range_end"))
        cmp.check(f"{where} range", tuple(map(str, value)), theirs)
    elif t == IDType.FQDN:
        cmp.check(f"{where} FQDN", value, data.get(d + "fqdn"))
    elif t == IDType.USER_FQDN:
        cmp.check(f"{where} user FQDN", value, data.get(d + "user_fqdn"))
    elif t == IDType.KEY_ID:
        cmp.check(f"{where} key ID", value, _hex(data.get(d + "key_id", "")))
    elif t == IDType.DER_ASN1_DN:
        cmp.check(f"{where} distinguished name", value, _raw(data, d + "der_asn1_dn"))
    else:
        cmp.check(f"{where} ID type handled by this test", None, t)


def _notification(cmp, where, n, node):
    """Notification payload (RFC 2408 section 3.14; DPD sequence numbers, RFC 3706 section 5)."""
    cmp.check(f"{where} DOI", n.doi, _int(node, "isakmp.notify.doi"))
    cmp.check(f"{where} protocol", n.protocol_id, _int(node, "isakmp.notify.protoid"))
    cmp.check(f"{where} SPI size", len(n.spi), _int(node, "isakmp.spisize"))
    cmp.check(f"{where} SPI", n.spi, _hex(node.get("isakmp.spi", "")))
    cmp.check(f"{where} notify type", n.notify_type, _int(node, "isakmp.notify.msgtype"))
    cmp.check(f"{where} data", n.data, _hex(node.get("isakmp.notify.data", "")))
    if n.notify_type == NotifyType.RESPONDER_LIFETIME:  # SA attributes (RFC 2407 section 4.6.3.1)
        family = "ike" if n.protocol_id == ProtocolID.ISAKMP else "ipsec"
        _attributes(cmp, f"{where} lifetime", decode_attributes(n.data), node.get("isakmp.notify.data_tree", {}),
                    f"notify.data.resp_lifetime.{family}")
    for suffix in ("are_you_there", "are_you_there_ack"):
        seq = node.get("isakmp.notify.data.dpd." + suffix)
        if seq is not None:
            cmp.check(f"{where} DPD sequence", int.from_bytes(n.data, "big"), int(seq))


def _delete(cmp, where, d, node):
    """Delete payload (RFC 2408 section 3.15)."""
    cmp.check(f"{where} DOI", d.doi, _int(node, "isakmp.delete.doi"))
    cmp.check(f"{where} protocol", d.protocol_id, _int(node, "isakmp.delete.protoid"))
    cmp.check(f"{where} SPI size", d.spi_size, _int(node, "isakmp.spisize"))
    cmp.check(f"{where} # of SPIs", len(d.spis), _int(node, "isakmp.spinum"))
    cmp.check(f"{where} SPIs", list(d.spis), [_hex(s) for s in _list(node.get("isakmp.delete.spi"))])


def _certificate(cmp, where, c, node):
    """CERT payload (RFC 2408 section 3.9): tshark parses the X.509 DER on its own."""
    from cryptography import x509

    cmp.check(f"{where} encoding", c.encoding, _int(node, "isakmp.cert.encoding"))
    cmp.check(f"{where} data", c.data, _raw(node, "isakmp.cert.data"))
    signed = node.get("isakmp.cert.data", {}).get("x509af.signedCertificate_element", {})
    serial = signed.get("x509af.serialNumber")
    cmp.check(f"{where} serial number", x509.load_der_x509_certificate(c.data).serial_number,
              serial and int.from_bytes(_hex(serial), "big"))


def _certificate_request(cmp, where, cr, node):
    """CR payload (RFC 2408 section 3.10): an X.509 type's authority is a DER Distinguished Name."""
    cmp.check(f"{where} type", cr.encoding, _int(node, "isakmp.certreq.type"))
    authority = _raw(node, "isakmp.ike.certreq.authority.sig")
    if authority is None:
        authority = _raw(node, "isakmp.ike.certreq.authority") or b""
    cmp.check(f"{where} authority", cr.authority, authority)


def _nat_oa(cmp, where, oa, node):
    """NAT-OA payload (RFC 3947 section 5.2)."""
    cmp.check(f"{where} ID type", oa.id_type, _int(node, "isakmp.id.type"))
    v = "ipv4" if oa.id_type == IDType.IPV4_ADDR else "ipv6"
    theirs = node.get(f"isakmp.ike.nat_original_address_{v}")
    cmp.check(f"{where} address", ipaddress.ip_address(oa.address), theirs and ipaddress.ip_address(theirs))


def _opaque(cmp, where, payload, node):
    """Payloads whose body is one octet string: KE, Nonce, HASH, SIG, Vendor ID, NAT-D."""
    field, attribute = _OPAQUE_FIELDS[payload.payload_type]
    theirs = node.get(field)
    cmp.check(f"{where} data", getattr(payload, attribute), theirs and _hex(theirs))


_BY_TYPE = {
    PayloadType.SA: _sa,
    PayloadType.ID: _identification,
    PayloadType.N: _notification,
    PayloadType.D: _delete,
    PayloadType.CERT: _certificate,
    PayloadType.CR: _certificate_request,
    PayloadType.NAT_OA: _nat_oa,
    **{t: _opaque for t in _OPAQUE_FIELDS},
}


class TsharkIsakmpTests(unittest.SynchronousTestCase):
    """Our codec and Wireshark's dissector read every corpus message the same way."""

    def setUp(self):
        self.examples, self.ours, self.packets, self.problems = _dissection()

    def compare(self, *payload_types):
        """Compare every top-level payload of the given types in every frame with tshark's subtree for it; fail on
        any mismatch, or when the corpus holds no payload of those types."""
        cmp = _Comparison()
        for e, m, layers in zip(self.examples, self.ours, self.packets):
            for i, (p, (ptype, node)) in enumerate(zip(m.payloads, _children(layers["isakmp"]))):
                if p.payload_type in payload_types:
                    cmp.check(f"{e.name} payload {i} type", p.payload_type, ptype)
                    _BY_TYPE[p.payload_type](cmp, f"{e.name} payload {i}", p, node)
        self.assertNotEqual(0, cmp.checked, f"no payload of types {payload_types} in the corpus")
        self.assertEqual([], cmp.mismatches)

    def test_one_frame_per_message(self):
        """tshark finds one ISAKMP message per corpus entry, delimited exactly where our encoder put it."""
        self.assertEqual(len(self.examples), len(self.packets))
        for e, layers in zip(self.examples, self.packets):
            self.assertIn("isakmp", layers, e.name)
            self.assertEqual(e.message.encode(), bytes.fromhex(layers["isakmp_raw"][0]), e.name)

    def test_no_malformed_or_warning(self):
        """tshark marks no frame malformed and raises no expert item of warning or worse, beyond the known defects
        (each of which names a message that is correct per the RFC)."""
        index = {e.name: i + 1 for i, e in enumerate(self.examples)}
        expected = sorted(f"{index[name]}\t{line}" for name, line in KNOWN_TSHARK_DEFECTS.items())
        self.assertEqual(expected, sorted(self.problems))

    def test_transports(self):
        """NAT-T messages ride UDP 4500 behind the non-ESP marker (RFC 3948 section 2.2) and IPv6 ones ride ::1;
        the rest ride UDP 500 over IPv4, and tshark sees each where we sent it."""
        seen = set()
        for e, layers in zip(self.examples, self.packets):
            udp = layers["udp"]
            self.assertEqual((str(e.port), str(e.port)), (udp["udp.srcport"], udp["udp.dstport"]), e.name)
            marker = layers.get("udpencap", {}).get("udpencap.non_esp_marker_raw")
            self.assertEqual(NON_ESP_MARKER.hex() if e.port == 4500 else None, marker and marker[0], e.name)
            ip = layers["ipv6"]["ipv6.src"] if e.ipv6 else layers["ip"]["ip.src"]
            self.assertEqual(e.addresses()[0], ip, e.name)
            seen.add((e.port, e.ipv6))
        self.assertEqual({(500, False), (4500, False), (500, True)}, seen)

    def test_header(self):
        """The ISAKMP header (RFC 2408 section 3.1): cookies, next payload, version, exchange type, flags,
        message ID and length."""
        cmp = _Comparison()
        for e, m, layers in zip(self.examples, self.ours, self.packets):
            h = layers["isakmp"]
            cmp.check(f"{e.name} initiator cookie", m.initiator_cookie, _hex(h["isakmp.ispi"]))
            cmp.check(f"{e.name} responder cookie", m.responder_cookie, _hex(h["isakmp.rspi"]))
            cmp.check(f"{e.name} next payload", m.first_payload_type(), _int(h, "isakmp.nextpayload"))
            cmp.check(f"{e.name} version", (m.major_version, m.minor_version),
                      (_int(h["isakmp.version_tree"], "isakmp.mjver"), _int(h["isakmp.version_tree"], "isakmp.mnver")))
            cmp.check(f"{e.name} exchange type", m.exchange_type, _int(h, "isakmp.exchangetype"))
            cmp.check(f"{e.name} flags", m.flags, _int(h, "isakmp.flags"))
            cmp.check(f"{e.name} E flag", m.encrypted, h["isakmp.flags_tree"]["isakmp.flag_e"] == "1")
            cmp.check(f"{e.name} message ID", m.message_id, _int(h, "isakmp.messageid"))
            cmp.check(f"{e.name} length", len(m.encode()), _int(h, "isakmp.length"))
        self.assertEqual([], cmp.mismatches)

    def test_payload_chain(self):
        """The payload types in order, and each generic payload header's Next Payload and Payload Length
        (RFC 2408 section 3.2)."""
        cmp = _Comparison()
        for e, m, layers in zip(self.examples, self.ours, self.packets):
            theirs = _children(layers["isakmp"])
            cmp.check(f"{e.name} payload types", [p.payload_type for p in m.payloads], [t for t, _ in theirs])
            ctx = m.context(e.doi)
            for i, (p, (_, node)) in enumerate(zip(m.payloads, theirs)):
                following = m.payloads[i + 1].payload_type if i + 1 < len(m.payloads) else PayloadType.NONE
                cmp.check(f"{e.name} payload {i} next payload", following, _int(node, "isakmp.nextpayload"))
                cmp.check(f"{e.name} payload {i} length", len(p.encode_body(ctx)) + 4,
                          _int(node, "isakmp.payloadlength"))
        self.assertEqual([], cmp.mismatches)

    def test_encrypted_body(self):
        """An E-flagged message (RFC 2408 section 3.1): tshark sees the same opaque body that we keep."""
        cmp = _Comparison()
        for e, m, layers in zip(self.examples, self.ours, self.packets):
            if m.encrypted:
                cmp.check(f"{e.name} encrypted data", m.ciphertext, _raw(layers["isakmp"], "isakmp.enc.data"))
        self.assertNotEqual(0, cmp.checked, "no encrypted message in the corpus")
        self.assertEqual([], cmp.mismatches)

    def test_security_association(self):
        """SA payloads: DOI, situation, proposal and transform numbers, protocols, SPIs, transform IDs, and every
        attribute's type, form and value, also as tshark reads it (RFC 2409 appendix A, RFC 2407 section 4.5)."""
        self.compare(PayloadType.SA)

    def test_identification(self):
        """ID payloads of every IPsec DOI type in the corpus: type, protocol, port, data octets and tshark's reading
        of the address, subnet, range, name or key."""
        self.compare(PayloadType.ID)

    def test_notification_and_delete(self):
        """Notification and Delete payloads: DOI, protocol, SPIs, notify type and data (DPD sequence numbers)."""
        self.compare(PayloadType.N, PayloadType.D)

    def test_opaque_payloads(self):
        """KE, Nonce, HASH, SIG, Vendor ID and NAT-D payloads carry the same octets for tshark as for us."""
        self.compare(*_OPAQUE_FIELDS)

    def test_certificates(self):
        """CERT and CR payloads: encoding, certificate octets (and the serial number tshark parses from them), and
        the certificate authority's Distinguished Name."""
        self.compare(PayloadType.CERT, PayloadType.CR)

    def test_nat_original_address(self):
        """NAT-OA payloads (RFC 3947 section 5.2): ID type and original address."""
        self.compare(PayloadType.NAT_OA)


class CorpusTests(unittest.SynchronousTestCase):
    """The corpus covers the generic ISAKMP and IPsec DOI messages, and our codec round-trips each; no tshark."""

    def test_coverage(self):
        """The corpus holds every message kind the tshark cross-check is meant to cover, and no GDOI."""
        messages = [e.message for e in all_messages()]
        payloads = [p for m in messages for p in m.payloads]

        def of(ptype):
            return [p for p in payloads if p.payload_type == ptype]

        proposals = [pr for sa in of(PayloadType.SA) for pr in sa.proposals]
        ipsec_attributes = [a for pr in proposals if pr.protocol_id != ProtocolID.ISAKMP
                            for t in pr.transforms for a in t.attributes]
        self.assertEqual({DOI.IPSEC}, {e.doi for e in all_messages()} | {sa.doi for sa in of(PayloadType.SA)})
        self.assertLessEqual({ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE, ExchangeType.INFORMATIONAL,
                              ExchangeType.QUICK_MODE}, {m.exchange_type for m in messages})
        self.assertTrue(any(m.encrypted for m in messages))
        self.assertLessEqual({PayloadType.SA, PayloadType.KE, PayloadType.ID, PayloadType.CERT, PayloadType.CR,
                              PayloadType.HASH, PayloadType.SIG, PayloadType.NONCE, PayloadType.N, PayloadType.D,
                              PayloadType.VID, PayloadType.NAT_D, PayloadType.NAT_OA},
                             {p.payload_type for p in payloads})
        self.assertLessEqual({ESPTransformID.AES_CBC, ESPTransformID.AES_GCM_16, ESPTransformID.AES_CTR},
                             {t.transform_id for pr in proposals if pr.protocol_id == ProtocolID.IPSEC_ESP
                              for t in pr.transforms})
        self.assertIn(ProtocolID.IPSEC_AH, {pr.protocol_id for pr in proposals})
        self.assertEqual(set(EncapsulationMode), {a.value for a in ipsec_attributes
                                                  if a.type == IPsecAttr.ENCAPSULATION_MODE})
        self.assertEqual(set(LifeType), {a.value for a in ipsec_attributes if a.type == IPsecAttr.SA_LIFE_TYPE})
        self.assertIn(IPsecAttr.KEY_LENGTH, {a.type for a in ipsec_attributes})
        self.assertLessEqual(set(IDType) - {IDType.DER_ASN1_GN, IDType.LIST, IDType.OID},
                             {p.id_type for p in of(PayloadType.ID)})
        self.assertLessEqual({NotifyType.INITIAL_CONTACT, NotifyType.R_U_THERE, NotifyType.R_U_THERE_ACK},
                             {p.notify_type for p in of(PayloadType.N)})
        self.assertLessEqual({ProtocolID.ISAKMP, ProtocolID.IPSEC_ESP}, {p.protocol_id for p in of(PayloadType.D)})
        self.assertLessEqual({256, 64}, {len(p.key_exchange_data) for p in of(PayloadType.KE)})

    def test_decode_of_encode(self):
        """decode(encode(message)) gives back the message object."""
        for e in all_messages():
            self.assertEqual(e.message, decode_message(e.message.encode(), e.doi), e.name)

    def test_encode_of_decode(self):
        """encode(decode(octets)) gives back the octets."""
        for e in all_messages():
            wire = e.message.encode()
            self.assertEqual(wire, decode_message(wire, e.doi).encode(), e.name)

    def test_names_are_unique(self):
        """Every corpus entry has its own name, so a report names one message."""
        names = [e.name for e in all_messages()]
        self.assertEqual(len(names), len(set(names)))
