"""IPsec policy: which peer may have IPsec SAs for which traffic, with which suites, modes and lifetimes.

Each :class:`IPsecPolicy` names its peer by the ISAKMP SA's address (an address, a network or "any") and, if
given, by its Phase 1 identity.  Its ``local`` and ``remote`` selectors bound what a Quick Mode under that peer's
SA may ask for: as responder we take the peer's IDci/IDcr as they come when they lie within them (IKEv1 has no
narrowing: RFC 2409 section 5.5), and answer INVALID-ID-INFORMATION when no policy of the peer holds them; as
initiator we offer the first local and the first remote selector.  No selectors means the ISAKMP SA's own two
addresses (host to host, what Quick Mode without IDs means).

:class:`PolicyTable` orders a peer's policies most specific first (exact address, then longer prefixes, then
"any"; a policy that names an identity before one that does not), the file's order among equals.
"""

import ipaddress
from collections.abc import Iterable

import attrs

from gdoiserver.codec.constants import IDType
from gdoiserver.doi.ipsec.proposals import TUNNEL, Lifetime, Suite
from gdoiserver.doi.ipsec.selectors import Selector


@attrs.frozen
class IPsecPolicy:
    """One ``[[ipsec.policies]]`` entry (see :mod:`gdoiserver.doi.ipsec.config`)."""

    name: str
    suites: tuple[Suite, ...]
    peer: str = "any"
    peer_id: str | None = None
    local: tuple[Selector, ...] = ()
    remote: tuple[Selector, ...] = ()
    mode: str = TUNNEL
    lifetime: Lifetime = Lifetime(3600, 0)
    #: Start Quick Mode as soon as an ISAKMP SA with this peer is established.
    initiate: bool = False
    #: Rekey the SAs we initiated before they expire, at this fraction of their lifetime (0: never).
    rekey_margin: float = 0.9

    def peer_rank(self, sa) -> int:
        """How specifically this policy names the peer of ``sa``: -1 not at all (see the module notes)."""
        rank = _address_rank(self.peer, sa.peer[0])
        if rank < 0:
            return -1
        if self.peer_id is not None:
            if _id_text(sa.peer_id) != self.peer_id.lower():
                return -1
            rank += 10_000
        return rank

    def local_selectors(self, sa) -> tuple[Selector, ...]:
        return self.local or (Selector.host(sa.local[0]),)

    def remote_selectors(self, sa) -> tuple[Selector, ...]:
        return self.remote or (Selector.host(sa.peer[0]),)

    def permits(self, sa, *, local: Selector, remote: Selector) -> bool:
        """Whether the traffic between ``local`` (ours) and ``remote`` (the peer's) lies within this policy."""
        return (any(s.contains(local) for s in self.local_selectors(sa))
                and any(s.contains(remote) for s in self.remote_selectors(sa)))


def _address_rank(pattern: str, address: str) -> int:
    """-1: ``pattern`` does not name ``address``; 0 "any"; 1 + prefix length for a network; 1000 the address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return -1
    if pattern == "any":
        return 0
    if "/" in pattern:
        net = ipaddress.ip_network(pattern)
        return 1 + net.prefixlen if net.version == ip.version and ip in net else -1
    return 1000 if ipaddress.ip_address(pattern) == ip else -1


def _id_text(ident) -> str:
    """A Phase 1 identity as configuration writes it: an address, a name in lower case, or hex octets."""
    if ident is None:
        return ""
    if ident.id_type in (IDType.FQDN, IDType.USER_FQDN, IDType.IPV4_ADDR, IDType.IPV6_ADDR):
        return str(ident.value()).lower()
    return ident.data.hex()


class PolicyTable:
    """The configured policies, looked up by the ISAKMP SA they would serve."""

    def __init__(self, policies: Iterable[IPsecPolicy]):
        self.policies = tuple(policies)

    def for_peer(self, sa) -> list[IPsecPolicy]:
        """The policies for the peer of ``sa``, most specific first."""
        ranked = [(p.peer_rank(sa), i, p) for i, p in enumerate(self.policies)]
        return [p for rank, i, p in sorted(ranked, key=lambda r: (-r[0], r[1])) if rank >= 0]

    def decide(self, sa, *, local: Selector, remote: Selector) -> IPsecPolicy | None:
        """The first policy of the peer of ``sa`` that permits ``local``/``remote``; None if there is none."""
        return next((p for p in self.for_peer(sa) if p.permits(sa, local=local, remote=remote)), None)

    def by_name(self, name: str) -> IPsecPolicy | None:
        return next((p for p in self.policies if p.name == name), None)
