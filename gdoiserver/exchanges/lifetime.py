"""Phase 1 SA lifetime: expiry and re-authentication, sans-IO.

An ISAKMP SA lives for its negotiated lifetime in seconds (RFC 2409 appendix A, Life Duration).  IKEv1 cannot
rekey an ISAKMP SA in place: a fresh Phase 1 with the same peer replaces it (re-authentication).  The
:class:`Lifetime` machine asks for that at ``margin`` of the lifetime, less a random jitter so that many SAs made
together do not all renew together, and ends the SA at its expiry with a DELETE of the ISAKMP SA (RFC 2408
section 3.15) sent to the peer.

Besides the effects of :mod:`gdoiserver.exchanges.effects`, it emits two of its own, which the adapter acts on:

- :class:`Reauthenticate` ``(sa)``: start a new Phase 1 (as initiator) with the peer of ``sa``; the old SA serves
  on until it expires, so that exchanges in progress under it can finish.
- :class:`Expire` ``(sa)``: remove ``sa`` and everything that hangs on it (its DPD machine, its timers).
"""

import attrs

from gdoiserver.exchanges import informational
from gdoiserver.exchanges.effects import CancelTimer, Count, StartTimer
from gdoiserver.exchanges.phase1 import INITIATOR, ISAKMPSA

REAUTH_TIMER = "reauthenticate"
EXPIRE_TIMER = "expire"


@attrs.frozen
class Reauthenticate:
    """Effect: negotiate a new ISAKMP SA with the peer of ``sa`` before ``sa`` expires."""

    sa: ISAKMPSA


@attrs.frozen
class Expire:
    """Effect: ``sa`` is over; forget it (its DELETE, if any, is a Send just before)."""

    sa: ISAKMPSA


def reauthentication_time(sa: ISAKMPSA, margin: float, jitter: float, rng) -> float:
    """When to re-authenticate: established_at + lifetime * (margin - jitter * u), u uniform in [0, 1) from
    ``rng``."""
    u = int.from_bytes(rng(4), "big") / (1 << 32)
    return sa.established_at + sa.proposal.lifetime * (margin - jitter * u)


@attrs.define
class Lifetime:
    """The timers of one ISAKMP SA: re-authentication (``"reauthenticate"``) and expiry (``"expire"``).

    ``reauthenticate`` defaults to the initiator's side only: the initiator made the SA and knows how to reach
    its peer; a responder (a key server) waits for its peers to come back.  States: ``new``, ``running``,
    ``reauthenticating`` (asked once), ``expired`` and ``stopped``.
    """

    sa: ISAKMPSA
    margin: float = 0.9
    jitter: float = 0.05
    reauthenticate: bool = attrs.field(
        default=attrs.Factory(lambda self: self.sa.role == INITIATOR, takes_self=True)
    )
    state: str = attrs.field(default="new", init=False)
    reauthenticate_at: float | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self):
        if not (0 < self.margin <= 1 and 0 <= self.jitter < self.margin):
            raise ValueError("need 0 < margin <= 1 and 0 <= jitter < margin")

    @property
    def done(self) -> bool:
        return self.state in ("expired", "stopped")

    def start(self, now: float, rng) -> list:
        """Schedule expiry at ``sa.expires_at`` and, if asked, re-authentication before it."""
        self.state = "running"
        effects = [StartTimer(EXPIRE_TIMER, max(0.0, self.sa.expires_at - now))]
        if self.reauthenticate:
            self.reauthenticate_at = reauthentication_time(self.sa, self.margin, self.jitter, rng)
            effects.insert(0, StartTimer(REAUTH_TIMER, max(0.0, self.reauthenticate_at - now)))
        return effects

    def timer(self, key: str, now: float, rng) -> list:
        if self.done:
            return []
        if key == REAUTH_TIMER and self.state == "running":
            self.state = "reauthenticating"
            return [Count("phase1_reauthenticate"), Reauthenticate(self.sa)]
        if key == EXPIRE_TIMER:
            return self._end(rng, "phase1_expired")
        return []

    def delete(self, now: float, rng) -> list:
        """End the SA before its time (replaced by a new one, or shut down): the same DELETE as at expiry."""
        if self.done:
            return []
        return [CancelTimer(REAUTH_TIMER), CancelTimer(EXPIRE_TIMER)] + self._end(rng, "phase1_deleted")

    def stop(self) -> list:
        """The SA went away without us (the peer deleted it, DPD found the peer dead): forget the timers."""
        self.state = "stopped"
        return [CancelTimer(REAUTH_TIMER), CancelTimer(EXPIRE_TIMER)]

    def _end(self, rng, counter: str) -> list:
        self.state = "expired"
        delete = informational.send(self.sa, [informational.delete_isakmp(self.sa)], rng)
        return [delete, Count(counter), Expire(self.sa)]
