"""NAT-keepalives (RFC 3948 section 4): a host behind a NAT keeps the NAT's UDP 4500 mapping open.

A :class:`Keepalive` runs for each ISAKMP SA that floated to NAT-T with our own address behind a NAT (what NAT-D
showed, RFC 3947 section 3.2).  It sends 0xFF every ``interval`` seconds; RFC 3948 section 4 suggests 20.
"""

import attrs

from gdoiserver.exchanges.effects import CancelTimer, Count, SendKeepalive, StartTimer

#: RFC 3948 section 4: "the default value is 20 seconds".
DEFAULT_INTERVAL = 20.0
TIMER = "nat_keepalive"


def needs_keepalive(sa) -> bool:
    """Whether we keep a NAT mapping open for ``sa``: it floated to NAT-T and our own address is behind a NAT."""
    return bool(sa.nat_t and sa.local_behind_nat)


@attrs.define
class Keepalive:
    """Sends a NAT-keepalive to the SA's peer every ``interval`` seconds until stopped."""

    sa: object
    interval: float = DEFAULT_INTERVAL
    done: bool = False
    state: str = "new"

    def start(self, now: float, rng) -> list:
        self.state = "running"
        return [StartTimer(TIMER, self.interval)]

    def timer(self, key: str, now: float, rng) -> list:
        if key != TIMER or self.done:
            return []
        return [SendKeepalive(self.sa.peer, self.sa.local), Count("nat_keepalive_sent"), StartTimer(TIMER, self.interval)]

    def stop(self) -> list:
        self.done, self.state = True, "stopped"
        return [CancelTimer(TIMER)]
