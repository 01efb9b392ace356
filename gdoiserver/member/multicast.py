"""Joining the multicast group a KEK's rekeys go to (RFC 6407 section 4), IPv4 and IPv6, on a chosen interface.

Twisted joins IPv6 groups with an address where the kernel wants an interface index, so the member makes the
membership request itself (Linux ``ip_mreq``/``ip_mreqn`` and ``ipv6_mreq``) and sets it on the socket Twisted
bound to the group's address.  An interface is a name ("eth0"), an address of ours, or None: the kernel's choice.
"""

import ipaddress
import socket
import struct

from gdoiserver.net.interfaces import ipv6_interface_index

#: The interface index of an IPv6 address of ours.
_ipv6_index = ipv6_interface_index


def _as_address(interface: str):
    try:
        return ipaddress.ip_address(interface)
    except ValueError:
        return None


def membership(group: str, interface: str | None) -> tuple[int, int, bytes]:
    """The ``setsockopt(level, option, value)`` that joins ``group`` on ``interface``.

    ValueError for an address that is not multicast, an interface that does not exist, or an interface address
    of the other IP version than an IPv4 group needs.
    """
    g = ipaddress.ip_address(group)
    if not g.is_multicast:
        raise ValueError(f"{group} is not a multicast address")
    address = None if interface is None else _as_address(interface)
    if interface is not None and address is None:
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            raise ValueError(f"there is no interface {interface!r}") from None
    else:
        index = 0
    if g.version == 4:
        if address is not None and address.version != 4:
            raise ValueError(f"an IPv4 group cannot be joined on the IPv6 address {address}")
        if index:  # struct ip_mreqn: group, local address, interface index
            return socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, g.packed + bytes(4) + struct.pack("@i", index)
        local = address.packed if address is not None else bytes(4)  # struct ip_mreq
        return socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, g.packed + local
    if address is not None:
        index = _ipv6_index(address) if address.version == 6 else 0
    return socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, g.packed + struct.pack("@I", index)
