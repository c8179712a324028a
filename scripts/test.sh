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
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=40 "$@"
