"""When a group member registers again (sans-IO: times in, seconds out; ``u`` is a uniform draw in [0, 1)).

A member re-registers before its TEKs expire if no rekey brought new ones (RFC 6407 section 1: the key server
normally pushes them).  Members spread their requests over a window so that a group does not come back all at
once (``jitter``).  When a re-registration brings the same TEKs back, the key server has no newer generation yet:
asking again before those TEKs expire would only bring them again, so the next attempt waits for their end.
"""

#: Never register again sooner than this many seconds.
MIN_DELAY = 1.0
#: At most this many seconds of jitter after an expiry, so that a group without rekeys is not left keyless long.
MAX_EXPIRY_JITTER = 10.0
#: Lifetimes on the wire are whole seconds (RFC 2407 section 4.5), so a TEK may outlive the one it announces by this.
LIFETIME_ROUNDING = 1.0


def uniform(rng) -> float:
    """A draw in [0, 1) from ``rng(n)``."""
    return int.from_bytes(rng(4), "big") / (1 << 32)


def tek_lifetime(registration) -> int:
    """The lifetime of the registration's shortest-lived TEK: when the group's keys run out."""
    return min(t.lifetime for t in registration.teks)


def reregister_delay(registration, now: float, u: float, *, margin: float, jitter: float, renewed: bool,
                     rekeys: bool = False) -> float:
    """Seconds from ``now`` until the next registration after ``registration``.

    ``renewed``: it brought TEKs the member did not hold, so re-register at ``margin`` of their lifetime, less
    up to ``jitter`` of it; with ``rekeys`` (the group has a KEK), at ``1 - (1 - margin) / 2`` of it less up to
    half the jitter, after the key server's rekey was due.  Otherwise just after they expire, when the key server
    makes new ones.
    """
    lifetime = tek_lifetime(registration)
    if renewed and rekeys:
        at = registration.registered_at + lifetime * max(1.0 - (1.0 - margin) / 2 - jitter * u / 2, 0.0)
    elif renewed:
        at = registration.registered_at + lifetime * max(margin - jitter * u, 0.0)
    else:
        # The key server sends lifetimes in whole seconds, rounded down: its TEKs end up to a second later.
        at = registration.registered_at + lifetime + LIFETIME_ROUNDING + u * min(jitter * lifetime, MAX_EXPIRY_JITTER)
    return max(at - now, MIN_DELAY)


def retry_delay(base: float, u: float, jitter: float) -> float:
    """Seconds until the next attempt after every key server failed: ``base`` plus up to ``jitter`` of it."""
    return base * (1.0 + jitter * u)
