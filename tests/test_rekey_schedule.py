"""The rekey schedule (gdoiserver.rekey.schedule): lead times, what falls due when, and clock jumps."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from gdoiserver.group.keys import GroupKeys
from gdoiserver.group.policy import (
    GAPPolicy,
    GroupPolicy,
    KEKPolicy,
    RekeyTransport,
    TEKPolicy,
    TEKTransform,
    TrafficSelector,
)
from gdoiserver.rekey.schedule import Action, kek_lead_time, lead_time, plan
from tests import pki
from tests.machine_pair import seeded_rng

SELECTOR = TrafficSelector(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("239.1.1.1/32"))
DAY = 86400.0


def tek(lifetime: int, name: str = "cbc") -> TEKPolicy:
    return TEKPolicy(name, TEKTransform.AES_CBC, SELECTOR, 128, "hmac-sha256", lifetime=lifetime)


def policy(tek_lifetimes=(3600,), kek_lifetime=86400, gap=None, lead=None, kek_lead=None, kek=True):
    rekey = RekeyTransport(ipaddress.ip_address("192.0.2.1"), unicast=True, lead_time=lead, kek_lead_time=kek_lead)
    teks = tuple(tek(life, f"t{i}") for i, life in enumerate(tek_lifetimes))
    if not kek:
        return GroupPolicy("g", teks, number=1, gap=gap)
    return GroupPolicy("g", teks, number=1, kek=KEKPolicy(pki.key("p256"), lifetime=kek_lifetime), rekey=rekey,
                       gap=gap)


def fresh(p: GroupPolicy, now: float = 0.0) -> GroupKeys:
    """Keys as the rekey service starts them: a first KEK and a first generation (pushed: nobody to push to)."""
    keys = GroupKeys(p, seeded_rng(1))
    if p.kek is not None:
        keys.install_kek(keys.make_kek(now))
    keys.new_generation(now).pushed_at = now
    return keys


def perform(keys: GroupKeys, p, now: float) -> list:
    """Do what the plan says, as the rekey service does; returns the actions taken."""
    if Action.TEK_REKEY in p.actions:
        keys.new_generation(now).pushed_at = now
    if Action.KEK_REKEY in p.actions:
        keys.install_kek(keys.make_kek(now))
    if Action.PUSH_GENERATION in p.actions:
        keys.newest.pushed_at = now
    for number in p.retire:
        keys.drop(number)
    return list(p.actions)


class LeadTimeTests(unittest.TestCase):
    def test_automatic_tek_lead(self):
        """The TEK lead is max(60 s, a tenth of the shortest TEK lifetime, the GAP delays + 30 s), at most half
        the lifetime."""
        self.assertEqual(lead_time(policy((3600,))), 360.0)
        self.assertEqual(lead_time(policy((3600, 900))), 90.0)  # the shortest TEK rules
        self.assertEqual(lead_time(policy((300,))), 60.0)
        self.assertEqual(lead_time(policy((3600,), gap=GAPPolicy(400, 500))), 930.0)
        self.assertEqual(lead_time(policy((600,), gap=GAPPolicy(400, 500))), 300.0)  # capped at half
        self.assertEqual(lead_time(policy((60,))), 30.0)

    def test_configured_tek_lead(self):
        """A configured lead time is used as it is, but never beyond half the lifetime."""
        self.assertEqual(lead_time(policy((3600,), lead=45)), 45.0)
        self.assertEqual(lead_time(policy((3600,), lead=5000)), 1800.0)

    def test_kek_lead(self):
        """The KEK lead is max(300 s, a tenth of its lifetime) or the configured one, at most half its lifetime."""
        self.assertEqual(kek_lead_time(policy(kek_lifetime=86400)), 8640.0)
        self.assertEqual(kek_lead_time(policy(kek_lifetime=1200)), 300.0)
        self.assertEqual(kek_lead_time(policy(kek_lifetime=400)), 200.0)
        self.assertEqual(kek_lead_time(policy(kek_lead=77)), 77.0)


class PlanTests(unittest.TestCase):
    def test_fresh_keys_idle(self):
        """Fresh keys need nothing; the next wake is the earlier of the TEK and KEK due times."""
        p = policy((3600,), kek_lifetime=5000)
        result = plan(fresh(p), 0.0)
        self.assertTrue(result.idle)
        self.assertEqual(result.next_wake, 3600 - 360)
        result = plan(fresh(policy((3600,), kek_lifetime=3000)), 0.0)
        self.assertEqual(result.next_wake, 3000 - 300)

    def test_tek_rekey_due(self):
        """At expiry minus the lead time the next generation is due, not a second earlier."""
        keys = fresh(policy((3600,)))
        self.assertTrue(plan(keys, 3239.9).idle)
        self.assertEqual(plan(keys, 3240.0).actions, (Action.TEK_REKEY,))

    def test_kek_rekey_due(self):
        """The KEK is due on its own lifetime, whatever the TEKs do."""
        keys = fresh(policy((3600,), kek_lifetime=3000))
        self.assertEqual(plan(keys, 2700.0).actions, (Action.KEK_REKEY,))

    def test_both_due(self):
        """When both are due together the plan names both (the service sends them in one PUSH)."""
        keys = fresh(policy((3600,), kek_lifetime=3600, lead=360, kek_lead=360))
        self.assertEqual(set(plan(keys, 3300.0).actions), {Action.TEK_REKEY, Action.KEK_REKEY})

    def test_no_keys(self):
        """A rekeyed group without keys needs a KEK and a generation at once."""
        keys = GroupKeys(policy(), seeded_rng(1))
        self.assertEqual(set(plan(keys, 5.0).actions), {Action.TEK_REKEY, Action.KEK_REKEY})

    def test_old_generation_retired_at_expiry(self):
        """After a rekey the previous generation lives on until it expires, then it is retired; the newest is
        never retired in a rekeyed group."""
        keys = fresh(policy((3600,)))
        perform(keys, plan(keys, 3240.0), 3240.0)
        result = plan(keys, 3300.0)
        self.assertTrue(result.idle)
        self.assertEqual(result.next_wake, 3600.0)  # the old generation's expiry
        result = plan(keys, 3600.0)
        self.assertEqual((result.actions, result.retire), ((Action.RETIRE,), (1,)))

    def test_unpushed_generation(self):
        """A newest generation made but never pushed (a registration made it, or a restart cut a rekey short) is
        pushed; a KEK not yet pushed under its predecessor too."""
        keys = fresh(policy())
        keys.new_generation(10.0)
        self.assertEqual(plan(keys, 20.0).actions, (Action.PUSH_GENERATION,))
        self.assertEqual(plan(fresh(policy()), 20.0, kek_pushed=False).actions, (Action.PUSH_KEK,))

    def test_group_without_kek(self):
        """A group without a KEK is never rekeyed: it only retires generations, the newest included."""
        keys = fresh(policy((600,), kek=False))
        self.assertTrue(plan(keys, 599.0).idle)
        self.assertEqual(plan(keys, 599.0).next_wake, 600.0)
        self.assertEqual(plan(keys, 600.0).actions, (Action.RETIRE,))
        keys.drop(1)
        self.assertEqual(plan(keys, 601.0).next_wake, None)


class ClockTests(unittest.TestCase):
    def run_days(self, keys, days: float, start: float = 0.0):
        """Wake whenever the plan says, for ``days``; returns the (time, actions) of every wake that did
        something."""
        now, log = start, []
        for _ in range(100000):
            result = plan(keys, now)
            if not result.idle:
                log.append((now, perform(keys, result, now)))
                continue
            if result.next_wake is None or result.next_wake > start + days * DAY:
                return log
            self.assertGreater(result.next_wake, now)
            now = result.next_wake
        self.fail("the schedule never settled")

    def test_days_of_rekeys(self):
        """Over a week, TEKs (lifetime 1 h) are rekeyed every 54 min and the KEK (1 day) every 21.6 h; at every
        rekey the old generation is still live (the generations overlap by the lead time)."""
        keys = fresh(policy((3600,), kek_lifetime=86400))
        log = self.run_days(keys, 7)
        tek_times = [t for t, actions in log if Action.TEK_REKEY in actions]
        kek_times = [t for t, actions in log if Action.KEK_REKEY in actions]
        self.assertEqual(len(tek_times), int(7 * DAY // 3240))
        self.assertEqual([b - a for a, b in zip(tek_times, tek_times[1:])], [3240.0] * (len(tek_times) - 1))
        self.assertEqual(len(kek_times), int(7 * DAY // (86400 - 8640)))
        retired = [t for t, actions in log if Action.RETIRE in actions]
        self.assertEqual([r - t for t, r in zip(tek_times, retired)], [360.0] * len(retired))

    def test_jump_forward(self):
        """A clock jump over several lifetimes gives one TEK rekey and one KEK rekey, not a burst; the next ones
        fall due a full lifetime (less the lead) after the jump."""
        keys = fresh(policy((3600,), kek_lifetime=86400))
        later = 5 * DAY + 123.0
        result = plan(keys, later)
        self.assertEqual(set(result.actions), {Action.TEK_REKEY, Action.KEK_REKEY})
        perform(keys, result, later)
        result = plan(keys, later)
        self.assertEqual((result.actions, result.retire), ((Action.RETIRE,), (1,)))
        perform(keys, result, later)
        result = plan(keys, later)
        self.assertTrue(result.idle)
        self.assertEqual(result.next_wake, later + 3240.0)
        self.assertEqual(keys.generations_made, 2)
        self.assertEqual(keys.keks_made, 2)

    def test_jump_backward(self):
        """After a jump backward nothing is due early or twice: the due times stay those of the keys' expiry."""
        keys = fresh(policy((3600,)))
        perform(keys, plan(keys, 3240.0), 3240.0)  # generation 2, due at 3240 + 3240
        for back in (3000.0, 0.0, -DAY):
            result = plan(keys, back)
            self.assertNotIn(Action.TEK_REKEY, result.actions)
            self.assertEqual(min(result.next_wake, 6480.0), result.next_wake)
        self.assertNotIn(Action.TEK_REKEY, plan(keys, 6479.0).actions)
        self.assertIn(Action.TEK_REKEY, plan(keys, 6480.0).actions)
        self.assertEqual(keys.generations_made, 2)

    @settings(max_examples=150, deadline=None)
    @given(lifetime=st.integers(60, 20000), kek_lifetime=st.integers(600, 200000),
           jumps=st.lists(st.floats(-3 * DAY, 3 * DAY, allow_nan=False), max_size=12))
    def test_random_jumps(self, lifetime, kek_lifetime, jumps):
        """Whatever the jumps: one wake settles in at most a TEK rekey, a KEK rekey and a retirement; after it a
        live generation and a live KEK exist; and a rekey never falls due before its keys' due time."""
        p = policy((lifetime,), kek_lifetime=kek_lifetime)
        keys = fresh(p)
        now = 0.0
        for jump in jumps:
            now += jump
            newest_before = keys.newest
            due = newest_before.expires_at - lead_time(p)
            result = plan(keys, now)
            self.assertEqual(Action.TEK_REKEY in result.actions, now >= due)
            steps = 0
            while not result.idle:
                perform(keys, result, now)
                steps += 1
                self.assertLessEqual(steps, 2)
                result = plan(keys, now)
            self.assertTrue(keys.newest.live(now) or keys.newest is newest_before)
            self.assertTrue(keys.current_kek.live(now) or keys.current_kek.created_at > now)
            self.assertGreater(result.next_wake, now)
