"""Capture files: write UDP datagrams to a pcap (LINKTYPE_RAW), for tests and tshark.

Reading pcap and pcapng lives here too (see :func:`read_udp`).
"""

import ipaddress
import struct

import attrs

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276


@attrs.frozen
class Datagram:
    """One UDP datagram: addresses as strings, ports, the UDP payload, and its capture time in seconds."""

    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes
    time: float = 0.0


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
