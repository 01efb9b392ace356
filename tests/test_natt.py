"""NAT-keepalives (RFC 3948 section 4)."""

import attrs
from twisted.trial import unittest

from gdoiserver.exchanges.effects import CancelTimer, Count, SendKeepalive, StartTimer
from gdoiserver.exchanges.natt import DEFAULT_INTERVAL, TIMER, Keepalive, needs_keepalive


@attrs.frozen
class _SA:
    nat_t: bool
    local_behind_nat: bool
    peer: tuple = ("192.0.2.7", 4500)
    local: tuple = ("10.0.0.1", 4500)


class KeepaliveTests(unittest.TestCase):
    def test_needs_keepalive_only_behind_a_nat(self):
        """Only an SA that floated to NAT-T with our own address behind a NAT sends keepalives."""
        self.assertTrue(needs_keepalive(_SA(True, True)))
        self.assertFalse(needs_keepalive(_SA(True, False)))
        self.assertFalse(needs_keepalive(_SA(False, True)))

    def test_sends_every_interval(self):
        """Each firing sends one keepalive to the SA's peer from its NAT-T address and re-arms the timer."""
        k = Keepalive(_SA(True, True))
        self.assertEqual(k.start(0.0, None), [StartTimer(TIMER, DEFAULT_INTERVAL)])
        for now in (20.0, 40.0):
            self.assertEqual(k.timer(TIMER, now, None), [
                SendKeepalive(("192.0.2.7", 4500), ("10.0.0.1", 4500)), Count("nat_keepalive_sent"),
                StartTimer(TIMER, DEFAULT_INTERVAL)])

    def test_stop(self):
        """After stop() the timer is cancelled and a late firing sends nothing."""
        k = Keepalive(_SA(True, True), interval=5.0)
        k.start(0.0, None)
        self.assertEqual(k.stop(), [CancelTimer(TIMER)])
        self.assertEqual(k.timer(TIMER, 5.0, None), [])

    def test_other_timer_ignored(self):
        """A timer key that is not the keepalive's does nothing."""
        self.assertEqual(Keepalive(_SA(True, True)).timer("dpd", 1.0, None), [])
