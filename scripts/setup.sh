#!/usr/bin/env bash
# Set up a development environment: Debian packages the tests use (when root and missing), a .venv with ztm and
# its pinned test tools. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in ip:iproute2 nft:nftables conntrack:conntrack curl:curl chromium:chromium zsh:zsh tcpdump:tcpdump tshark:tshark; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# PostgreSQL server binaries for the store tests (tests/pgserver.py): Debian keeps them off PATH
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if ((${#need[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]} (needs root to apt-get install); the tests that need them will be skipped" >&2
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
