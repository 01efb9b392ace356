"""Network interfaces by name or by address, as multicast socket options want them (Linux): shared by the key
server's multicast rekeys and the member's group memberships."""

import ipaddress
import socket

PROC_INET6 = "/proc/net/if_inet6"


def interface_index(name: str) -> int:
    """The index of the interface ``name``; ValueError if there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise ValueError(f"there is no interface {name!r}") from None


def ipv6_interface_index(address: ipaddress.IPv6Address, table: str = PROC_INET6) -> int:
    """The index of the interface that holds ``address`` (Linux /proc/net/if_inet6); ValueError if none does."""
    try:
        with open(table, encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == address.packed.hex():
                    return int(fields[1], 16)
    except OSError:
        pass
    raise ValueError(f"no interface holds {address}")
