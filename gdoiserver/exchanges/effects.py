"""What an exchange machine asks its adapter to do.  The adapter (gdoiserver.net) carries them out in order.

A machine never does I/O and never reads a clock: it returns a list of these values from each input.
"""

from typing import Any

import attrs

Address = tuple[str, int]


@attrs.frozen
class Send:
    """Send ``data`` (one ISAKMP message) to ``peer`` from ``local``.

    ``nat_t`` means the message goes over the NAT-T port (4500) with the non-ESP marker in front (RFC 3948
    section 2.2); the adapter adds the marker.
    """

    data: bytes
    peer: Address
    local: Address | None = None
    nat_t: bool = False


@attrs.frozen
class SendKeepalive:
    """Send a NAT-keepalive, the single octet 0xFF, to ``peer`` from the NAT-T port, with no marker
    (RFC 3948 section 2.3)."""

    peer: Address
    local: Address | None = None


@attrs.frozen
class StartTimer:
    """Call the machine's ``timer(key, now, rng)`` after ``delay`` seconds; a timer of the same key is replaced."""

    key: str
    delay: float


@attrs.frozen
class CancelTimer:
    """Forget the timer ``key`` if it is pending."""

    key: str


@attrs.frozen
class Established:
    """The exchange is done: ``sa`` is the result (an ISAKMP SA for Phase 1, a pair of IPsec SAs, a group...)."""

    sa: Any


@attrs.frozen
class Failed:
    """The exchange is over without success.  ``notify`` is the Notify type sent (or that would be), or None.

    ``reason`` is for the log: it names what went wrong and never holds key material.
    """

    notify: int | None
    reason: str


@attrs.frozen
class Count:
    """Add one to the counter ``name`` (the adapter maps names to metrics); ``reason``, when given, says why, for
    a debug log line (it does not take part in equality)."""

    name: str
    reason: str = attrs.field(default="", eq=False)


Effect = Send | SendKeepalive | StartTimer | CancelTimer | Established | Failed | Count
