"""Capture files: write UDP datagrams to a pcap (LINKTYPE_RAW), and read UDP datagrams back from pcap or pcapng.

Reading follows the capture formats of draft-ietf-opsawg-pcap (classic pcap) and draft-ietf-opsawg-pcapng (pcapng)
and the link-layer header types of tcpdump.org's LINKTYPE list.  It reads UDP over IPv4 and IPv6 and does not
reassemble fragments.
"""

import ipaddress
import struct
import warnings

import attrs

from gdoiserver.codec.message import NON_ESP_MARKER

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
#: DLT_RAW's numbers on some BSDs, found in pcap files in place of LINKTYPE_RAW.
_RAW_IP = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}
#: Link-layer header length and the offset of its EtherType (tcpdump.org LINKTYPE_ETHERNET, _LINUX_SLL, _LINUX_SLL2).
_LINK_HEADERS = {LINKTYPE_ETHERNET: (14, 12), LINKTYPE_LINUX_SLL: (16, 14), LINKTYPE_LINUX_SLL2: (20, 0)}

#: RFC 3947 section 4: IKE and UDP-encapsulated ESP (RFC 3948) share this port once NAT-T is in use.
NAT_T_PORT = 4500


@attrs.frozen
class Datagram:
    """One UDP datagram: addresses as strings, ports, the UDP payload, and its capture time in seconds.

    ``frame`` is the frame's number in the capture it was read from (1-based, as tshark counts; 0 otherwise).  It
    takes no part in comparisons.
    """

    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    time: float = 0.0
    frame: int = attrs.field(default=0, eq=False)


class CaptureError(ValueError):
    """A file that is not a readable pcap or pcapng capture: unknown magic, truncated, or inconsistent lengths."""


class CaptureWarning(UserWarning):
    """Something in a capture that was skipped or is incomplete (a fragment, a short frame, an unknown link type)."""


# ---------------------------------------------------------------------------------------------------- writing


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_udp_packet(d: Datagram) -> bytes:
    """An IPv4 or IPv6 packet carrying ``d`` as UDP, with correct header and UDP checksums."""
    src, dst = ipaddress.ip_address(d.src), ipaddress.ip_address(d.dst)
    ulen = 8 + len(d.payload)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, ulen)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", ulen, 17)
    udp = struct.pack("!HHHH", d.sport, d.dport, ulen, 0) + d.payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if src.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, src.packed, dst.packed)
        hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        return hdr + udp
    return struct.pack("!IHBB16s16s", 6 << 28, ulen, 17, 64, src.packed, dst.packed) + udp


def write_pcap(path, datagrams) -> None:
    """Write ``datagrams`` to ``path`` as a classic pcap file with raw IP framing (LINKTYPE_RAW)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for d in datagrams:
            pkt = ip_udp_packet(d)
            sec = int(d.time)
            usec = int(round((d.time - sec) * 1e6))
            f.write(struct.pack("<IIII", sec, usec, len(pkt), len(pkt)))
            f.write(pkt)


# ---------------------------------------------------------------------------------------------------- reading

_PCAP_MAGIC = {  # first four octets -> (byte order, fraction units per second)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"  # the Section Header Block type reads the same in both byte orders
_PCAPNG_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_OPT_END, _IF_TSRESOL, _IF_TSOFFSET = 0, 9, 14
#: Larger records or blocks are taken for garbage rather than read into memory.
_MAX_RECORD = 16 * 1024 * 1024

_VLAN_TPIDS = {0x8100, 0x88A8, 0x9100}  # IEEE 802.1Q, 802.1ad, and the older QinQ TPID
_ETHERTYPE_IP = {0x0800, 0x86DD}
_IPV6_SKIPPED = {0, 43, 60}  # Hop-by-Hop Options, Routing, Destination Options (RFC 8200 section 4)
_IPV6_FRAGMENT = 44
_UDP = 17


@attrs.frozen
class _Frame:
    number: int
    time: float
    linktype: int
    data: bytes


class _Input:
    """Exact reads from a binary file, with the offset kept for error messages."""

    def __init__(self, f):
        self.f = f
        self.offset = 0

    def read(self, n: int, what: str, eof_ok: bool = False) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self.f.read(n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        if got != n and not (eof_ok and got == 0):
            raise CaptureError(f"capture cut short in the {what} at offset {self.offset} ({got} of {n} octets)")
        self.offset += got
        return data


def _unpack(fmt: str, data: bytes, offset: int = 0) -> tuple:
    """``struct.unpack_from`` that raises CaptureError when the data is too short."""
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise CaptureError(f"block too short for its fields ({len(data)} octets)") from None


def _pcap_frames(inp: _Input, magic: bytes):
    order, units = _PCAP_MAGIC[magic]
    major, minor, _zone, _sigfigs, _snaplen, linktype = _unpack(order + "HHiIII", inp.read(20, "file header"))
    if major != 2:
        raise CaptureError(f"pcap version {major}.{minor} is not supported (only 2.x)")
    linktype &= 0xFFFF  # the upper bits may carry the FCS length (draft-ietf-opsawg-pcap section 4)
    number = 0
    while True:
        header = inp.read(16, "record header", eof_ok=True)
        if not header:
            return
        sec, frac, caplen, _origlen = struct.unpack(order + "IIII", header)
        number += 1
        if caplen > _MAX_RECORD:
            raise CaptureError(f"record {number} claims {caplen} octets at offset {inp.offset - 16}")
        data = inp.read(caplen, f"data of record {number}")
        yield _Frame(number, sec + frac / units, linktype, data)


@attrs.define
class _Interface:
    linktype: int
    snaplen: int
    units: int = 1_000_000  # if_tsresol's default: microseconds
    offset: int = 0  # if_tsoffset, seconds


def _options(body: bytes, pos: int, order: str):
    """The (code, value) options of a pcapng block body from ``pos`` (draft-ietf-opsawg-pcapng section 3.5)."""
    while len(body) - pos >= 4:
        code, length = _unpack(order + "HH", body, pos)
        if code == _OPT_END:
            return
        value = body[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise CaptureError(f"option {code} of {length} octets overruns its block")
        yield code, value
        pos += 4 + (length + 3) // 4 * 4


def _interface(body: bytes, order: str) -> _Interface:
    linktype, _, snaplen = _unpack(order + "HHI", body)
    iface = _Interface(linktype, snaplen)
    for code, value in _options(body, 8, order):
        if code == _IF_TSRESOL and len(value) == 1:
            v = value[0]
            iface.units = 2 ** (v & 0x7F) if v & 0x80 else 10**v
        elif code == _IF_TSOFFSET and len(value) == 8:
            (iface.offset,) = struct.unpack(order + "q", value)
    return iface


def _packet_block(btype: int, body: bytes, order: str, interfaces: list, start: int):
    """(interface, time, packet data) of an Enhanced, Simple or (obsolete) Packet Block."""
    if btype == _SPB:  # interface 0 and no timestamp (draft-ietf-opsawg-pcapng section 4.4)
        (origlen,) = _unpack(order + "I", body)
        iface_id, ts, pos = 0, None, 4
    else:  # EPB: Interface ID (4); PB: Interface ID (2), Drops Count (2); then the same four fields
        fields = _unpack(order + ("IIIII" if btype == _EPB else "HHIIII"), body)
        iface_id, (hi, lo, caplen, _origlen), pos = fields[0], fields[-4:], 20
        ts = (hi << 32) | lo
    if iface_id >= len(interfaces):
        raise CaptureError(f"packet block at offset {start} names undefined interface {iface_id}")
    iface = interfaces[iface_id]
    if btype == _SPB:
        caplen = min(origlen, iface.snaplen or origlen, len(body) - pos)
    if pos + caplen > len(body):
        raise CaptureError(f"packet block at offset {start}: {caplen} captured octets overrun the block")
    time = 0.0 if ts is None else ts / iface.units + iface.offset
    return iface, time, body[pos : pos + caplen]


def _pcapng_frames(inp: _Input, first: bytes):
    order = None
    interfaces: list[_Interface] = []
    number = 0
    head = first + inp.read(4, "block header")
    while True:
        block_type = head[:4]
        start = inp.offset - 8
        if block_type == _PCAPNG_SHB:
            bom = inp.read(4, "section header")
            order = _PCAPNG_BOM.get(bom)
            if order is None:
                raise CaptureError(f"bad byte-order magic {bom.hex()} in the section header at offset {start}")
            interfaces = []
            prefix = bom
        elif order is None:
            raise CaptureError("pcapng file does not begin with a section header block")
        else:
            prefix = b""
        (btype,) = struct.unpack(order + "I", block_type)
        (total,) = struct.unpack(order + "I", head[4:])
        if total < 12 + len(prefix) or total % 4 or total > _MAX_RECORD:
            raise CaptureError(f"block of type {btype:#x} at offset {start} has a bad length {total}")
        rest = inp.read(total - 8 - len(prefix), f"block of type {btype:#x} at offset {start}")
        body = prefix + rest[:-4]
        if rest[-4:] != head[4:]:
            raise CaptureError(f"block of type {btype:#x} at offset {start}: trailing length differs")
        if block_type == _PCAPNG_SHB:
            major, minor = _unpack(order + "HH", body, 4)
            if major != 1:
                raise CaptureError(f"pcapng version {major}.{minor} is not supported (only 1.x)")
        elif btype == _IDB:
            interfaces.append(_interface(body, order))
        elif btype in (_EPB, _PB, _SPB):
            number += 1
            iface, time, data = _packet_block(btype, body, order, interfaces, start)
            yield _Frame(number, time, iface.linktype, data)
        head = inp.read(8, "block header", eof_ok=True)
        if not head:
            return


def _frames(f):
    inp = _Input(f)
    magic = inp.read(4, "file header", eof_ok=True)
    if not magic:
        raise CaptureError("empty file: not a pcap or pcapng capture")
    if magic in _PCAP_MAGIC:
        return _pcap_frames(inp, magic)
    if magic == _PCAPNG_SHB:
        return _pcapng_frames(inp, magic)
    raise CaptureError(f"not a pcap or pcapng capture (magic {magic.hex()})")


class _Skip(Exception):
    """A frame that yields no datagram; ``args[0]`` says why, or is empty when there is nothing worth saying."""


def _ip_packet(frame: _Frame) -> bytes:
    """The IP packet inside a frame, after the link-layer header and any VLAN tags."""
    data = frame.data
    if frame.linktype in _RAW_IP:
        return data
    pos, type_at = _LINK_HEADERS[frame.linktype]
    if len(data) < pos:
        raise _Skip(f"frame of {len(data)} octets is shorter than its link-layer header")
    (ethertype,) = struct.unpack_from("!H", data, type_at)
    while ethertype in _VLAN_TPIDS:
        if len(data) < pos + 4:
            raise _Skip("truncated VLAN tag")
        (ethertype,) = struct.unpack_from("!H", data, pos + 2)
        pos += 4
    if ethertype not in _ETHERTYPE_IP:
        raise _Skip()
    return data[pos:]


def _ipv4(p: bytes):
    """(src, dst, transport octets, is first fragment) of an IPv4 packet (RFC 791)."""
    if len(p) < 20:
        raise _Skip("truncated IPv4 header")
    ihl = (p[0] & 0x0F) * 4
    (total, frag) = struct.unpack_from("!H2xH", p, 2)
    if ihl < 20 or len(p) < ihl or total < ihl:
        raise _Skip(f"bad IPv4 header length {ihl} or total length {total}")
    if p[9] != _UDP:
        raise _Skip()
    if frag & 0x1FFF:
        raise _Skip(f"IPv4 fragment at offset {(frag & 0x1FFF) * 8} skipped (fragments are not reassembled)")
    return p[12:16], p[16:20], p[ihl:total], bool(frag & 0x2000)


def _ipv6(p: bytes):
    """(src, dst, transport octets, is first fragment) of an IPv6 packet (RFC 8200)."""
    if len(p) < 40:
        raise _Skip("truncated IPv6 header")
    (plen,) = struct.unpack_from("!H", p, 4)
    nh, pos, end, fragmented = p[6], 40, 40 + plen, False
    while nh in _IPV6_SKIPPED or nh == _IPV6_FRAGMENT:
        if min(end, len(p)) - pos < 8:
            raise _Skip(f"truncated IPv6 extension header {nh}")
        if nh == _IPV6_FRAGMENT:  # RFC 8200 section 4.5
            (offset_m,) = struct.unpack_from("!H", p, pos + 2)
            if offset_m >> 3:
                raise _Skip(f"IPv6 fragment at offset {(offset_m >> 3) * 8} skipped (fragments are not reassembled)")
            fragmented = bool(offset_m & 1)
            nh, pos = p[pos], pos + 8
        else:
            nh, pos = p[pos], pos + (p[pos + 1] + 1) * 8
    if nh != _UDP:
        raise _Skip()
    return p[8:24], p[24:40], p[pos:end], fragmented


def _datagram(frame: _Frame, note) -> Datagram:
    ip = _ip_packet(frame)
    version = ip[0] >> 4 if ip else 0
    if version == 4:
        src, dst, l4, first_fragment = _ipv4(ip)
    elif version == 6:
        src, dst, l4, first_fragment = _ipv6(ip)
    else:
        raise _Skip(f"IP version {version}")
    if len(l4) < 8:
        raise _Skip("truncated UDP header")
    sport, dport, ulen = struct.unpack_from("!HHH", l4)
    if ulen < 8:
        raise _Skip(f"UDP length {ulen}")
    payload = bytes(l4[8:ulen])
    if first_fragment:
        note(f"frame {frame.number}: first fragment of a UDP datagram: {len(payload)} of {ulen - 8} octets")
    elif len(payload) < ulen - 8:
        note(f"frame {frame.number}: UDP datagram cut short in the capture: {len(payload)} of {ulen - 8} octets")
    addr = ipaddress.ip_address
    return Datagram(str(addr(src)), str(addr(dst)), sport, dport, payload, frame.time, frame.number)


def _warn(message: str) -> None:
    warnings.warn(message, CaptureWarning, stacklevel=2)


def read_udp(source, notes=None):
    """Yield every UDP datagram of a pcap or pcapng capture, as :class:`Datagram`, in capture order.

    ``source`` is a path or a binary file object.  Frames that carry no UDP are passed over.  Frames skipped for a
    reason worth knowing (a fragment other than the first, a malformed header, an unsupported link type) and
    datagrams yielded incomplete (a first fragment, a short snapshot length) are reported by calling ``notes`` with
    a message, or as a :class:`CaptureWarning` when ``notes`` is None.  A file that cannot be read as a capture
    raises :class:`CaptureError`.  pcapng Simple Packet Blocks carry no timestamp: their time is 0.0.
    """
    if not hasattr(source, "read"):
        with open(source, "rb") as f:
            yield from read_udp(f, notes)
        return
    note = notes or _warn
    unsupported = set()
    for frame in _frames(source):
        if frame.linktype not in _RAW_IP and frame.linktype not in _LINK_HEADERS:
            if frame.linktype not in unsupported:
                unsupported.add(frame.linktype)
                note(f"frame {frame.number}: link type {frame.linktype} is not supported; its frames are skipped")
            continue
        try:
            yield _datagram(frame, note)
        except _Skip as e:
            if e.args:
                note(f"frame {frame.number}: {e.args[0]}")


def isakmp_messages(datagrams, ports=(500, 848, NAT_T_PORT)):
    """Yield (datagram, ISAKMP message octets) for each datagram to or from one of ``ports``.

    On the NAT-T port only datagrams that begin with the non-ESP marker carry ISAKMP; the marker is removed
    (RFC 3948 section 2.2).  NAT-keepalives (section 2.3) and ESP packets (a non-zero SPI, section 2.1) are skipped.
    """
    for d in datagrams:
        port = d.dport if d.dport in ports else d.sport if d.sport in ports else None
        if port is None:
            continue
        data = d.payload
        if port == NAT_T_PORT:
            if data[:4] != NON_ESP_MARKER:  # ESP or a NAT-keepalive (one octet 0xFF)
                continue
            data = data[4:]
        yield d, data
