"""A group sink that installs a member's TEKs in the Linux kernel's SAD over netlink (XFRM), with pyroute2.

A group SA is one SAD entry that every member shares (RFC 5374 section 2): destination the group's address, the
TEK's SPI, ESP.  Its selector is the TEK's traffic selector, its hard lifetime the TEK's remaining lifetime, and
its replay window 0, since many senders share one SPI and sequence number space.  The message structures are
those of :mod:`gdoiserver.doi.ipsec.xfrm`.

Limits the kernel sets:

- The SAD keys an SA by one destination address, so a TEK whose destination is a network (any-to-any between
  sites) is refused with :class:`SinkError`; its keys are in the registration for another data path.
- The kernel makes the IVs of AES-GCM and AES-CTR from its own counter and knows nothing of sender IDs (RFC 6054
  section 3): two members sending under one key would repeat IVs.  Counter-mode TEKs, and TEKs the key server
  marks receiver-only, are installed for input only (``XFRMA_SA_DIR``, Linux 6.10 and later).
"""

import errno
import socket
import struct

from gdoiserver.codec.constants import EncapsulationMode
from gdoiserver.codec.gdoi import SADirection
from gdoiserver.doi.gdoi.registration import GroupRegistration, TEKInfo, selector_network
from gdoiserver.doi.ipsec import xfrm as ipsec_xfrm
from gdoiserver.doi.ipsec.algorithms import CIPHERS, INTEGRITIES
from gdoiserver.doi.ipsec.sa_sink import SinkError
from gdoiserver.group.policy import GroupId

XFRM_SA_DIR_IN = 1
_ANY_PORT, _ONE_PORT = 0, 0xFFFF

if ipsec_xfrm.nlmsg is not None:

    class group_usersa_info(ipsec_xfrm.xfrm_usersa_info):
        """struct xfrm_usersa_info with XFRMA_SA_DIR (40) among its attributes."""

        nla_map = (*ipsec_xfrm.xfrm_usersa_info.nla_map, (40, "XFRMA_SA_DIR", "uint8"))


def _packed(network) -> bytes:
    return network.network_address.packed.ljust(16, b"\0")


def input_only(tek: TEKInfo) -> bool:
    """Whether the kernel may only receive with ``tek`` (see the module notes)."""
    return tek.counter_mode or tek.direction == SADirection.RECEIVER_ONLY


def tek_message(tek: TEKInfo) -> "group_usersa_info":
    """The XFRM_MSG_NEWSA body of one TEK; SinkError when the kernel cannot hold it."""
    source, destination = selector_network(tek.source), selector_network(tek.destination)
    if destination.prefixlen != destination.max_prefixlen:
        raise SinkError(f"TEK {tek.spi.hex()}: the kernel keys an SA by one destination address, not {destination}")
    cipher, integrity = CIPHERS.get(tek.transform_id), INTEGRITIES.get(tek.integrity_algorithm)
    if cipher is None or (not cipher.aead and integrity is None):
        raise SinkError(f"TEK {tek.spi.hex()}: ESP transform {tek.transform_id} with authentication algorithm "
                        f"{tek.integrity_algorithm} has no kernel name here")
    family = socket.AF_INET if destination.version == 4 else socket.AF_INET6
    msg = group_usersa_info()
    msg["daddr"], msg["family"], msg["sel_family"] = _packed(destination), family, family
    msg["saddr"] = _packed(source) if source.prefixlen == source.max_prefixlen else bytes(16)
    msg["sel_daddr"], msg["sel_prefixlen_d"] = _packed(destination), destination.prefixlen
    msg["sel_saddr"], msg["sel_prefixlen_s"] = _packed(source), source.prefixlen
    msg["sel_proto"] = tek.ip_protocol
    msg["sel_sport"], msg["sel_sport_mask"] = tek.source.port, _ONE_PORT if tek.source.port else _ANY_PORT
    msg["sel_dport"], msg["sel_dport_mask"] = tek.destination.port, _ONE_PORT if tek.destination.port else _ANY_PORT
    msg["spi"] = int.from_bytes(tek.spi, "big")
    msg["proto"] = socket.IPPROTO_ESP
    tunnel = tek.mode == EncapsulationMode.TUNNEL
    msg["mode"] = ipsec_xfrm.XFRM_MODE_TUNNEL if tunnel else ipsec_xfrm.XFRM_MODE_TRANSPORT
    msg["replay_window"] = 0
    for name in ("soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit"):
        msg[f"lft_{name}"] = ipsec_xfrm._NO_LIMIT
    msg["lft_hard_add_expires_seconds"] = tek.lifetime
    attributes = []
    if cipher.aead:  # struct xfrm_algo_aead: name, key bits, ICV bits, key (with its salt)
        attributes.append(("XFRMA_ALG_AEAD", ipsec_xfrm._name(cipher.xfrm) + struct.pack(
            "=II", len(tek.encryption_key) * 8, cipher.icv * 8) + tek.encryption_key))
    else:  # struct xfrm_algo: name, key bits, key (AES-CTR's with its nonce)
        attributes.append(("XFRMA_ALG_CRYPT", ipsec_xfrm._name(cipher.xfrm) + struct.pack(
            "=I", len(tek.encryption_key) * 8) + tek.encryption_key))
        attributes.append(("XFRMA_ALG_AUTH_TRUNC", ipsec_xfrm._name(integrity.xfrm) + struct.pack(
            "=II", len(tek.integrity_key) * 8, integrity.icv * 8) + tek.integrity_key))
    if input_only(tek):
        attributes.append(("XFRMA_SA_DIR", XFRM_SA_DIR_IN))
    msg["attrs"] = attributes
    return msg


class GroupXfrmSink:
    """Installs each new TEK of a registration in the kernel, and deletes it when it goes."""

    def __init__(self):
        reason = ipsec_xfrm.xfrm_unavailable()
        if reason is not None:
            raise SinkError(f"cannot install group SAs in the kernel: {reason}")
        self._socket = None

    def _request(self, msg, msg_type: int, flags: int, missing_ok: bool = False) -> None:
        if self._socket is None:
            self._socket = ipsec_xfrm.NetlinkSocket(family=ipsec_xfrm.NETLINK_XFRM, ext_ack=True)
            self._socket.bind()
        try:
            tuple(self._socket.nlm_request(msg, msg_type, ipsec_xfrm.NLM_F_REQUEST | ipsec_xfrm.NLM_F_ACK | flags))
        except ipsec_xfrm.NetlinkError as e:
            if missing_ok and e.code == errno.ESRCH:
                return  # the kernel ended it at its hard lifetime already
            raise SinkError(f"the kernel refused the group SA: {errno.errorcode.get(e.code, e.code)} ({e})") from None

    def installed(self, registration: GroupRegistration, new_spis: frozenset, now: float) -> None:
        errors = []
        for tek in registration.teks:
            if tek.spi in new_spis:
                try:
                    self._request(tek_message(tek), ipsec_xfrm.XFRM_MSG_NEWSA,
                                  ipsec_xfrm.NLM_F_CREATE | ipsec_xfrm.NLM_F_EXCL)
                except SinkError as e:
                    errors.append(e)
        if errors:
            raise errors[0]

    def removed(self, group: GroupId, tek: TEKInfo, reason: str, now: float) -> None:
        destination = selector_network(tek.destination)
        if destination.prefixlen != destination.max_prefixlen:
            return  # never installed
        msg = ipsec_xfrm.xfrm_usersa_id()
        msg["daddr"] = _packed(destination)
        msg["family"] = socket.AF_INET if destination.version == 4 else socket.AF_INET6
        msg["proto"] = socket.IPPROTO_ESP
        msg["spi"] = int.from_bytes(tek.spi, "big")
        self._request(msg, ipsec_xfrm.XFRM_MSG_DELSA, 0, missing_ok=True)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

