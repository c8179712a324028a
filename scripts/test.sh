#!/usr/bin/env bash
# The whole test suite: set up, then lint (ruff), type-check (mypy --strict), and run pytest (unit, integration,
# and the network-namespace lab when run as root). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check src tests bench examples
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
# Two workers, one test file each at a time (`--dist loadfile`: a module's shared lab, hub or browser stays in one
# process, and files that share state run in order): most of the suite waits on real processes, sockets and timers,
# so two workers on two cores take about half the time of one (bench/RESULTS.md, "The suite's time").
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=40 -n 2 --dist loadfile "$@"
