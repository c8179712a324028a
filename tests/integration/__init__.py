"""Integration tests: real hub and agent processes on loopback (see tests/support.py)."""
