"""When a group's keys must change: the rekey schedule as a pure function of the key state and the time.

RFC 6407 section 4: the key server sends a GROUPKEY-PUSH with new TEKs before the current ones expire, and a new
KEK before the KEK expires.  :func:`plan` looks at a group's keys at ``now`` and says what is due and when to look
again.  Every due time comes from the keys themselves (expiry minus a lead time), never from when the scheduler
last ran, so:

- a clock jump forward over several lifetimes gives one rekey (the new keys are made at the new ``now`` and are
  due a lifetime later), never a burst;
- a clock jump backward makes nothing due early or twice: the newest keys still expire when they did.

Lead times (RFC 6407 section 5.7: members switch TEKs ``activation_delay`` after a PUSH and stop receiving on the
old ones ``deactivation_delay`` after it, so the old TEKs must outlive both):

- TEKs: ``rekey.lead_time``, or max(60 s, a tenth of the shortest TEK lifetime, the two GAP delays plus 30 s);
- KEK: ``rekey.kek_lead_time``, or max(300 s, a tenth of the KEK lifetime);

each at most half the lifetime it leads, so that a new key is never due the moment it is made.
"""

import enum

import attrs

from gdoiserver.group.keys import GroupKeys
from gdoiserver.group.policy import GroupPolicy

#: Floors of the automatic lead times, and the margin kept above the GAP delays, in seconds.
MIN_LEAD_TIME = 60.0
MIN_KEK_LEAD_TIME = 300.0
GAP_MARGIN = 30.0


class Action(enum.Enum):
    """What a group needs done."""

    #: Make the next TEK generation and push it (RFC 6407 section 4).
    TEK_REKEY = "tek-rekey"
    #: Make a new KEK and push it under the old one.
    KEK_REKEY = "kek-rekey"
    #: The newest generation was made but never pushed (a restart cut a rekey short): push it now.
    PUSH_GENERATION = "push-generation"
    #: A KEK was made but never pushed under its predecessor: push it now.
    PUSH_KEK = "push-kek"
    #: Older generations expired: forget them (``Plan.retire``).
    RETIRE = "retire"


@attrs.frozen
class Plan:
    """What is due at ``now`` (``actions``, in the order to do them), the generations to retire, and the next
    time anything falls due (None: nothing ever will, until the keys change)."""

    actions: tuple[Action, ...]
    retire: tuple[int, ...]
    next_wake: float | None

    @property
    def idle(self) -> bool:
        return not self.actions


def tek_lifetime(policy: GroupPolicy) -> float:
    """The lifetime a generation lives: its shortest TEK's."""
    return float(min(t.lifetime for t in policy.teks))


def lead_time(policy: GroupPolicy) -> float:
    """Seconds before the newest generation expires when the next one is pushed."""
    lifetime = tek_lifetime(policy)
    rekey = policy.rekey
    if rekey is not None and rekey.lead_time is not None:
        lead = float(rekey.lead_time)
    else:
        gap = policy.gap
        delays = gap.activation_delay + gap.deactivation_delay if gap is not None else 0
        lead = max(MIN_LEAD_TIME, lifetime / 10, delays + GAP_MARGIN)
    return min(lead, lifetime / 2)


def kek_lead_time(policy: GroupPolicy) -> float:
    """Seconds before the KEK expires when the next one is pushed."""
    lifetime = float(policy.kek.lifetime)
    rekey = policy.rekey
    if rekey is not None and rekey.kek_lead_time is not None:
        lead = float(rekey.kek_lead_time)
    else:
        lead = max(MIN_KEK_LEAD_TIME, lifetime / 10)
    return min(lead, lifetime / 2)


def plan(keys: GroupKeys, now: float, *, kek_pushed: bool = True) -> Plan:
    """What ``keys`` (a group's key state) needs at ``now``.

    ``kek_pushed`` is False while the KEK in use was made and stored but its PUSH never went out (after a
    restart).  A group without a KEK is never rekeyed (it has no way to push); it only retires expired
    generations, and registrations make the next one when they need it.
    """
    policy = keys.policy
    generations = keys.generations
    newest = generations[-1] if generations else None
    kek = keys.current_kek
    actions: list[Action] = []
    wakes: list[float] = []

    rekeyed = policy.kek is not None
    if rekeyed:
        if kek is not None and not kek_pushed:
            actions.append(Action.PUSH_KEK)
        if kek is None or now >= kek.expires_at - kek_lead_time(policy):
            actions.append(Action.KEK_REKEY)
        else:
            wakes.append(kek.expires_at - kek_lead_time(policy))
        if newest is None or now >= newest.expires_at - lead_time(policy):
            actions.append(Action.TEK_REKEY)
        else:
            wakes.append(newest.expires_at - lead_time(policy))
            if newest.pushed_at is None:
                actions.append(Action.PUSH_GENERATION)

    # The newest generation of a rekeyed group stays until a newer one replaces it; every other one goes when
    # it expires.
    keep_newest = rekeyed and newest is not None
    retire = []
    for g in generations:
        if keep_newest and g is newest:
            continue
        if now >= g.expires_at:
            retire.append(g.number)
        else:
            wakes.append(g.expires_at)
    if retire:
        actions.append(Action.RETIRE)
    return Plan(tuple(actions), tuple(retire), min(wakes) if wakes else None)
