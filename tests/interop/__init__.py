"""Harnesses that run real IKEv1 peers (strongSwan) next to ours, each case in a network namespace of its own."""
