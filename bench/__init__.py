"""Benchmarks of ztm: scripts, not tests (see bench/README.md)."""
