"""An SA sink that installs IPsec SAs in the Linux kernel's SAD over netlink (XFRM), with pyroute2.

pyroute2 brings the netlink socket, the message framing and the error handling; it has no XFRM messages of its
own, so the kernel's structures (``include/uapi/linux/xfrm.h``) are declared here as pyroute2 messages.  Each
established :class:`~gdoiserver.doi.ipsec.sa.IPsecSA` becomes two SAD entries (XFRM_MSG_NEWSA): inbound (to us,
our SPI) and outbound (to the peer, its SPI), with the cipher (``XFRMA_ALG_CRYPT``, or ``XFRMA_ALG_AEAD`` for
AES-GCM), the truncated HMAC (``XFRMA_ALG_AUTH_TRUNC``), ESP-in-UDP encapsulation (``XFRMA_ENCAP``, RFC 3948) when
the SA is UDP-encapsulated, and the negotiated lifetimes as hard limits (seconds, and kilobytes as bytes).  Removal
is XFRM_MSG_DELSA.  Security policies (the SPD) are left to the administrator: the SAs alone carry no traffic.

:func:`xfrm_unavailable` names what is missing where this cannot work: pyroute2, the netlink XFRM socket, or the
kernel's ESP/AH types (a kernel without them answers EPROTONOSUPPORT).
"""

import errno
import ipaddress
import socket
import struct

from gdoiserver.codec.constants import ProtocolID
from gdoiserver.doi.ipsec.sa import IPsecSA
from gdoiserver.doi.ipsec.sa_sink import SinkError

try:
    from pyroute2.netlink import NETLINK_XFRM, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, nlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nlsocket import NetlinkSocket
except ImportError:  # pragma: no cover (depends on the environment)
    nlmsg = None

XFRM_MSG_NEWSA, XFRM_MSG_DELSA = 0x10, 0x11
XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL = 0, 1
UDP_ENCAP_ESPINUDP = 2  # RFC 3948 (include/uapi/linux/udp.h)
_PROTO = {ProtocolID.IPSEC_ESP: socket.IPPROTO_ESP, ProtocolID.IPSEC_AH: socket.IPPROTO_AH}
_NO_LIMIT = 0xFFFFFFFFFFFFFFFF  # XFRM_INF
_ALGO_NAME = 64

# struct xfrm_selector, struct xfrm_id, struct xfrm_lifetime_cfg/cur, struct xfrm_stats: as pyroute2 fields.
_SELECTOR = (("sel_daddr", "16s"), ("sel_saddr", "16s"), ("sel_dport", ">H"), ("sel_dport_mask", ">H"),
             ("sel_sport", ">H"), ("sel_sport_mask", ">H"), ("sel_family", "H"), ("sel_prefixlen_d", "B"),
             ("sel_prefixlen_s", "B"), ("sel_proto", "B"), ("sel_pad", "3x"), ("sel_ifindex", "i"),
             ("sel_user", "I"))
_LIFETIME = tuple((f"lft_{n}", "Q") for n in ("soft_byte_limit", "hard_byte_limit", "soft_packet_limit",
                                             "hard_packet_limit", "soft_add_expires_seconds",
                                             "hard_add_expires_seconds", "soft_use_expires_seconds",
                                             "hard_use_expires_seconds"))
_CURRENT = tuple((f"cur_{n}", "Q") for n in ("bytes", "packets", "add_time", "use_time"))

if nlmsg is not None:

    class xfrm_usersa_info(nlmsg):
        """struct xfrm_usersa_info (224 octets on 64-bit Linux), then attributes."""

        fields = (*_SELECTOR, ("daddr", "16s"), ("spi", ">I"), ("proto", "B"), ("id_pad", "3x"),
                  ("saddr", "16s"), *_LIFETIME, *_CURRENT, ("stats_replay_window", "I"), ("stats_replay", "I"),
                  ("stats_integrity_failed", "I"), ("seq", "I"), ("reqid", "I"), ("family", "H"), ("mode", "B"),
                  ("replay_window", "B"), ("flags", "B"), ("tail_pad", "7x"))
        nla_map = ((0, "XFRMA_UNSPEC", "none"), (1, "XFRMA_ALG_AUTH", "cdata"), (2, "XFRMA_ALG_CRYPT", "cdata"),
                   (4, "XFRMA_ENCAP", "cdata"), (18, "XFRMA_ALG_AEAD", "cdata"),
                   (20, "XFRMA_ALG_AUTH_TRUNC", "cdata"))

    class xfrm_usersa_id(nlmsg):
        """struct xfrm_usersa_id (24 octets)."""

        fields = (("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("pad", "1x"))
        nla_map = ((0, "XFRMA_UNSPEC", "none"), (13, "XFRMA_SRCADDR", "cdata"))


def _address(text: str) -> tuple[bytes, int]:
    a = ipaddress.ip_address(text)
    return a.packed.ljust(16, b"\0"), socket.AF_INET if a.version == 4 else socket.AF_INET6


def _name(text: str) -> bytes:
    return text.encode("ascii").ljust(_ALGO_NAME, b"\0")


def sa_attributes(sa: IPsecSA, inbound: bool) -> list:
    """The netlink attributes of one direction of ``sa``: algorithms with their keys, and the encapsulation."""
    suite = sa.suite
    keys = sa.keys_in if inbound else sa.keys_out
    attrs = []
    if suite.cipher is not None and suite.cipher.aead:  # struct xfrm_algo_aead: name, key bits, ICV bits, key
        attrs.append(("XFRMA_ALG_AEAD", _name(suite.cipher.xfrm) + struct.pack(
            "=II", len(keys.encryption) * 8, suite.cipher.icv * 8) + keys.encryption))
    elif suite.cipher is not None:  # struct xfrm_algo: name, key bits, key
        attrs.append(("XFRMA_ALG_CRYPT", _name(suite.cipher.xfrm) + struct.pack(
            "=I", len(keys.encryption) * 8) + keys.encryption))
    if suite.integrity is not None:  # struct xfrm_algo_auth: name, key bits, truncation bits, key
        attrs.append(("XFRMA_ALG_AUTH_TRUNC", _name(suite.integrity.xfrm) + struct.pack(
            "=II", len(keys.integrity) * 8, suite.integrity.icv * 8) + keys.integrity))
    if sa.udp_encapsulated:  # struct xfrm_encap_tmpl: type, source port, destination port, original address
        src, dst = (sa.peer, sa.local) if inbound else (sa.local, sa.peer)
        attrs.append(("XFRMA_ENCAP", struct.pack("=H", UDP_ENCAP_ESPINUDP) + struct.pack(">HH", src[1], dst[1])
                      + bytes(2) + bytes(16)))  # 2 octets of padding align encap_oa (24 octets in all)
    return attrs


def sa_message(sa: IPsecSA, inbound: bool) -> "xfrm_usersa_info":
    """The XFRM_MSG_NEWSA body for one direction of ``sa``."""
    src, dst = (sa.peer, sa.local) if inbound else (sa.local, sa.peer)
    saddr, family = _address(src[0])
    daddr, _ = _address(dst[0])
    msg = xfrm_usersa_info()
    msg["daddr"], msg["saddr"], msg["family"], msg["sel_family"] = daddr, saddr, family, family
    msg["sel_daddr"] = msg["sel_saddr"] = bytes(16)  # any: the SPD picks the traffic
    msg["spi"] = int.from_bytes(sa.spi_in if inbound else sa.spi_out, "big")
    msg["proto"] = _PROTO[sa.protocol]
    msg["mode"] = XFRM_MODE_TUNNEL if sa.mode == "tunnel" else XFRM_MODE_TRANSPORT
    msg["replay_window"] = 32
    for name in ("soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit"):
        msg[f"lft_{name}"] = _NO_LIMIT
    if sa.lifetime.kilobytes:
        msg["lft_hard_byte_limit"] = sa.lifetime.kilobytes * 1024
    msg["lft_hard_add_expires_seconds"] = sa.lifetime.seconds
    msg["attrs"] = sa_attributes(sa, inbound)
    return msg


def xfrm_unavailable() -> str | None:
    """Why SAs cannot be installed here (pyroute2 or the netlink XFRM socket missing), or None."""
    if nlmsg is None:
        return "pyroute2 is not installed (pip install pyroute2)"
    try:
        s = NetlinkSocket(family=NETLINK_XFRM)
    except OSError as e:
        return f"no netlink XFRM socket: {e.strerror or e}"
    s.close()
    return None


class XfrmSink:
    """Installs each SA's two directions in the kernel and deletes them when the SA goes (module notes)."""

    def __init__(self):
        reason = xfrm_unavailable()
        if reason is not None:
            raise SinkError(f"cannot install SAs in the kernel: {reason}")
        self._socket = None

    def _request(self, msg, msg_type: int, flags: int) -> None:
        if self._socket is None:
            self._socket = NetlinkSocket(family=NETLINK_XFRM, ext_ack=True)
            self._socket.bind()
        try:
            tuple(self._socket.nlm_request(msg, msg_type, NLM_F_REQUEST | NLM_F_ACK | flags))
        except NetlinkError as e:
            raise SinkError(f"the kernel refused the SA: {errno.errorcode.get(e.code, e.code)}"
                            f" ({e})") from None

    def installed(self, sa: IPsecSA, now: float) -> None:
        for inbound in (True, False):
            self._request(sa_message(sa, inbound), XFRM_MSG_NEWSA, NLM_F_CREATE | NLM_F_EXCL)

    def removed(self, sa: IPsecSA, reason: str, now: float) -> None:
        for inbound in (True, False):
            dst = sa.local if inbound else sa.peer
            daddr, family = _address(dst[0])
            msg = xfrm_usersa_id()
            msg["daddr"], msg["family"], msg["proto"] = daddr, family, _PROTO[sa.protocol]
            msg["spi"] = int.from_bytes(sa.spi_in if inbound else sa.spi_out, "big")
            self._request(msg, XFRM_MSG_DELSA, 0)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
