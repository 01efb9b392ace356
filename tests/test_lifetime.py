"""Phase 1 SA expiry and re-authentication (gdoiserver.exchanges.lifetime) on a fake clock."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from gdoiserver.codec import decode_message
from gdoiserver.codec.constants import ProtocolID
from gdoiserver.exchanges import informational as info
from gdoiserver.exchanges.effects import CancelTimer, Count, Send, StartTimer
from gdoiserver.exchanges.informational import DeleteReceived
from gdoiserver.exchanges.lifetime import Expire, Lifetime, Reauthenticate, reauthentication_time
from tests.test_informational import Random, sa_pair

ESTABLISHED, LIFETIME = 100.0, 3600
HALF = (1 << 31).to_bytes(4, "big")  # u = 0.5


class Driver:
    """Runs a Lifetime's timers on a Clock and keeps every other effect in order."""

    def __init__(self, machine: Lifetime, clock: Clock, rng):
        self.machine, self.clock, self.rng = machine, clock, rng
        self.effects: list = []
        self.calls: dict = {}

    def run(self, effects):
        for e in effects:
            if isinstance(e, StartTimer):
                self.cancel(e.key)
                self.calls[e.key] = self.clock.callLater(e.delay, self.fire, e.key)
            elif isinstance(e, CancelTimer):
                self.cancel(e.key)
            else:
                self.effects.append(e)

    def cancel(self, key):
        call = self.calls.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def fire(self, key):
        del self.calls[key]
        self.run(self.machine.timer(key, self.clock.seconds(), self.rng))


def started(role_index=0, now=ESTABLISHED, rng_script=(HALF,), **kw):
    clock = Clock()
    clock.advance(now)
    sa = sa_pair(established_at=ESTABLISHED, lifetime=LIFETIME)[role_index]
    driver = Driver(Lifetime(sa, **kw), clock, Random("lifetime", rng_script))
    driver.run(driver.machine.start(clock.seconds(), driver.rng))
    return clock, driver


class ScheduleTests(unittest.TestCase):
    """When the timers are set."""

    def test_initiator_schedule(self):
        """The initiator's SA: re-authentication at established + lifetime * (0.9 - 0.05 * u), here u = 0.5 from
        the rng, and expiry at established + lifetime, both as delays from now."""
        sa = sa_pair(established_at=ESTABLISHED, lifetime=LIFETIME)[0]
        machine = Lifetime(sa)
        effects = machine.start(ESTABLISHED + 10, Random(script=[HALF]))
        reauth = ESTABLISHED + LIFETIME * (0.9 - 0.05 * 0.5)
        self.assertEqual(effects, [StartTimer("reauthenticate", reauth - ESTABLISHED - 10),
                                   StartTimer("expire", LIFETIME - 10.0)])
        self.assertEqual(machine.reauthenticate_at, reauth)
        self.assertEqual(machine.state, "running")

    def test_responder_only_expires(self):
        """By default a responder (a key server) does not re-authenticate; told to, it does."""
        sa = sa_pair(established_at=ESTABLISHED, lifetime=LIFETIME)[1]
        self.assertEqual(Lifetime(sa).start(ESTABLISHED, Random()), [StartTimer("expire", float(LIFETIME))])
        effects = Lifetime(sa, reauthenticate=True, jitter=0.0).start(ESTABLISHED, Random())
        self.assertEqual(effects[0], StartTimer("reauthenticate", LIFETIME * 0.9))

    def test_already_due(self):
        """Started after its re-authentication or expiry time (a slow start), the timers fire at once."""
        clock, driver = started(now=ESTABLISHED + LIFETIME + 5)
        self.assertEqual(set(driver.calls), {"reauthenticate", "expire"})
        clock.advance(0)
        self.assertIsInstance(driver.effects[-1], Expire)

    @settings(max_examples=200, deadline=None)
    @given(u=st.binary(min_size=4, max_size=4), margin=st.floats(0.5, 1.0), jitter=st.floats(0.0, 0.2))
    def test_jitter_bounds(self, u, margin, jitter):
        """Whatever the rng gives, re-authentication falls in [margin - jitter, margin] of the lifetime after
        establishment, never after expiry."""
        sa = sa_pair(established_at=ESTABLISHED, lifetime=LIFETIME)[0]
        t = reauthentication_time(sa, margin, jitter, Random(script=[u]))
        self.assertGreaterEqual(t, ESTABLISHED + LIFETIME * (margin - jitter) - 1e-9)
        self.assertLessEqual(t, ESTABLISHED + LIFETIME * margin + 1e-9)
        self.assertLessEqual(t, sa.expires_at)

    def test_jitter_spreads(self):
        """Different random octets give different times: SAs made together do not renew together."""
        sa = sa_pair(established_at=ESTABLISHED, lifetime=LIFETIME)[0]
        times = {reauthentication_time(sa, 0.9, 0.05, Random(str(i))) for i in range(20)}
        self.assertEqual(len(times), 20)

    def test_bad_parameters(self):
        """A margin outside (0, 1], or a jitter not below the margin, is refused."""
        sa = sa_pair()[0]
        for kw in (dict(margin=0.0), dict(margin=1.5), dict(jitter=-0.1), dict(margin=0.5, jitter=0.5)):
            self.assertRaises(ValueError, Lifetime, sa, **kw)


class RunTests(unittest.TestCase):
    """What happens when the timers fire."""

    def test_reauthenticate_then_expire(self):
        """Before re-authentication time nothing happens; then Reauthenticate(sa) once; at expiry a DELETE of the
        ISAKMP SA is sent to the peer, then Expire(sa); the peer reads the DELETE as DeleteReceived(ISAKMP,
        cookies)."""
        clock, driver = started()
        sa, peer_view = sa_pair(established_at=ESTABLISHED, lifetime=LIFETIME)
        reauth = ESTABLISHED + LIFETIME * (0.9 - 0.05 * 0.5)
        clock.advance(reauth - ESTABLISHED - 0.5)
        self.assertEqual(driver.effects, [])
        clock.advance(0.5)
        self.assertEqual(driver.effects, [Count("phase1_reauthenticate"), Reauthenticate(sa)])
        self.assertEqual(driver.machine.state, "reauthenticating")
        self.assertEqual(driver.machine.timer("reauthenticate", clock.seconds(), driver.rng), [])
        clock.advance(sa.expires_at - clock.seconds() - 0.5)
        self.assertEqual(len(driver.effects), 2)
        clock.advance(0.5)
        send, count, expire = driver.effects[2:]
        self.assertIsInstance(send, Send)
        self.assertEqual((send.peer, send.local), (sa.peer, sa.local))
        self.assertEqual((count, expire), (Count("phase1_expired"), Expire(sa)))
        result = info.process(peer_view, decode_message(send.data))
        self.assertEqual(result.items, (DeleteReceived(ProtocolID.ISAKMP, (sa.spi,)),))
        self.assertTrue(driver.machine.done)
        self.assertEqual(driver.machine.timer("expire", clock.seconds(), driver.rng), [])

    def test_delete_early(self):
        """delete() ends the SA now: both timers cancelled, the DELETE sent, Expire(sa); nothing fires later and
        a second delete() does nothing."""
        clock, driver = started()
        driver.run(driver.machine.delete(clock.seconds(), driver.rng))
        self.assertEqual(driver.calls, {})
        send, count, expire = driver.effects
        self.assertIsInstance(send, Send)
        self.assertEqual((count, expire), (Count("phase1_deleted"), Expire(driver.machine.sa)))
        clock.advance(2 * LIFETIME)
        self.assertEqual(len(driver.effects), 3)
        self.assertEqual(driver.machine.delete(clock.seconds(), driver.rng), [])

    def test_stop(self):
        """stop() (the SA went away otherwise) cancels both timers and sends nothing."""
        clock, driver = started()
        self.assertEqual(driver.machine.stop(), [CancelTimer("reauthenticate"), CancelTimer("expire")])
        self.assertTrue(driver.machine.done)
        self.assertEqual(driver.machine.timer("expire", clock.seconds(), driver.rng), [])

    def test_unknown_timer(self):
        """A timer key the machine did not set does nothing."""
        clock, driver = started()
        self.assertEqual(driver.machine.timer("dpd", clock.seconds(), driver.rng), [])
