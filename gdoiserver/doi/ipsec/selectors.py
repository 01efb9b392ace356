"""Traffic selectors: what IDci and IDcr name in Quick Mode (RFC 2409 section 5.5, RFC 2407 section 4.6.2).

A :class:`Selector` is an address range with an IP protocol and a port, 0 meaning any (RFC 2407 section 4.6.2:
"a value of zero ... indicates that the Protocol ID field should be ignored", likewise the port).  It reads and
writes the address ID types: ID_IPV4_ADDR, ID_IPV4_ADDR_SUBNET, ID_IPV4_ADDR_RANGE and their IPv6 forms.  Any
other ID type in Quick Mode is INVALID-ID-INFORMATION.

The text form, in configuration and logs, follows strongSwan's: ``10.0.0.0/24``, ``192.0.2.7``,
``10.0.0.1-10.0.0.9``, each with an optional ``[protocol]`` or ``[protocol/port]`` (``10.0.0.0/24[tcp/443]``).
"""

import ipaddress

import attrs

from gdoiserver.codec.constants import IDType, NotifyType
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.payloads import Identification

#: IP protocol names a selector may use (IANA protocol numbers).
PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "icmpv6": 58, "sctp": 132}
_PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items() if v}
_ADDRESS_TYPES = {IDType.IPV4_ADDR, IDType.IPV6_ADDR, IDType.IPV4_ADDR_SUBNET, IDType.IPV6_ADDR_SUBNET,
                  IDType.IPV4_ADDR_RANGE, IDType.IPV6_ADDR_RANGE}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _check(selector: "Selector", attribute, value) -> None:
    if selector.start.version != selector.end.version:
        raise ValueError("a selector's addresses are of one IP version")
    if selector.start > selector.end:
        raise ValueError(f"range {selector.start}-{selector.end} ends before it starts")
    if not 0 <= selector.protocol <= 255 or not 0 <= selector.port <= 65535:
        raise ValueError("protocol 0-255, port 0-65535")


@attrs.frozen(order=False)
class Selector:
    """Addresses ``start`` to ``end`` (inclusive), IP ``protocol`` and ``port`` (0: any)."""

    start: Address
    end: Address
    protocol: int = 0
    port: int = attrs.field(default=0, validator=_check)

    @classmethod
    def host(cls, address, protocol: int = 0, port: int = 0) -> "Selector":
        a = ipaddress.ip_address(address)
        return cls(a, a, protocol, port)

    @classmethod
    def network(cls, network, protocol: int = 0, port: int = 0) -> "Selector":
        net = ipaddress.ip_network(network, strict=False)
        return cls(net.network_address, net.broadcast_address, protocol, port)

    # --- ID payloads (RFC 2407 section 4.6.2) -------------------------------------------------------------------

    @classmethod
    def from_identification(cls, ident: Identification) -> "Selector":
        """The selector an IDci/IDcr names; DecodeError(INVALID-ID-INFORMATION) for a type that is no address."""
        if ident.id_type not in _ADDRESS_TYPES:
            raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"ID type {ident.id_type} is not a traffic selector")
        value = ident.value()
        try:
            if isinstance(value, tuple):
                return cls(value[0], value[1], ident.protocol_id, ident.port)
            if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                return cls.network(value, ident.protocol_id, ident.port)
            return cls.host(value, ident.protocol_id, ident.port)
        except ValueError as e:
            raise DecodeError(NotifyType.INVALID_ID_INFORMATION, f"bad selector: {e}") from None

    def identification(self) -> Identification:
        """The ID payload for this selector: an address, a subnet when the range is one, else a range."""
        if self.start == self.end:
            return Identification.of(self.start, protocol_id=self.protocol, port=self.port)
        networks = list(ipaddress.summarize_address_range(self.start, self.end))
        if len(networks) == 1:
            return Identification.of(networks[0], protocol_id=self.protocol, port=self.port)
        return Identification.of((self.start, self.end), protocol_id=self.protocol, port=self.port)

    # --- policy -----------------------------------------------------------------------------------------------------

    def contains(self, other: "Selector") -> bool:
        """Whether every packet ``other`` selects, this one selects too."""
        return (
            self.start.version == other.start.version
            and self.start <= other.start
            and other.end <= self.end
            and self.protocol in (0, other.protocol)
            and self.port in (0, other.port)
        )

    def is_host(self, address) -> bool:
        """Whether this selector is exactly ``address``, any protocol and port (RFC 2409 section 5.5: what
        Quick Mode means when it sends no IDs)."""
        return self.start == self.end == ipaddress.ip_address(address) and not self.protocol and not self.port

    # --- text ---------------------------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> "Selector":
        """A selector from its text form (module notes); ValueError says what is wrong."""
        if not isinstance(text, str):
            raise ValueError("a selector is a string")
        addresses, protocol, port = text.strip(), 0, 0
        if addresses.endswith("]"):
            addresses, _, suffix = addresses[:-1].partition("[")
            proto, _, port_text = suffix.partition("/")
            protocol = _protocol(proto)
            if port_text and port_text != "any":
                if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
                    raise ValueError(f"port {port_text!r}: expected 1-65535 or any")
                if protocol not in (PROTOCOLS["tcp"], PROTOCOLS["udp"], PROTOCOLS["sctp"]):
                    raise ValueError("a port needs protocol tcp, udp or sctp")
                port = int(port_text)
        if "-" in addresses:
            lo, _, hi = addresses.partition("-")
            return cls(ipaddress.ip_address(lo), ipaddress.ip_address(hi), protocol, port)
        if "/" in addresses:
            return cls.network(ipaddress.ip_network(addresses, strict=True), protocol, port)
        return cls.host(addresses, protocol, port)

    def __str__(self) -> str:
        if self.start == self.end:
            text = str(self.start)
        else:
            networks = list(ipaddress.summarize_address_range(self.start, self.end))
            text = str(networks[0]) if len(networks) == 1 else f"{self.start}-{self.end}"
        if self.protocol:
            proto = _PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
            text += f"[{proto}/{self.port}]" if self.port else f"[{proto}]"
        return text


def _protocol(text: str) -> int:
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    raise ValueError(f"protocol {text!r}: expected a number 0-255 or one of " + ", ".join(PROTOCOLS))
