#!/usr/bin/env bash
# The README's main job on one machine, over loopback only: a hub, two agents that join mesh "demo" as ep1 and ep2
# with the hub's root permit, then `ztm get mesh`, `ztm get ep` from both sides and `ztm ping ep ep2` from ep1.
# Then a tunnel: ep2 opens the exit `outbound tcp/demo-echo` to a small echo server the script starts, ep1 opens the
# entrance `inbound tcp/demo-echo`; 1 MiB of random bytes goes through it and must come back byte-exact; then
# `ztm tunnel get tunnel` and `ztm stats ep`.
# Everything runs in a temporary directory (also used as HOME, so your ~/.ztm is not touched) and is stopped and
# removed on exit. Exits non-zero, printing the hub, agent and echo server logs, if any step fails.
#
# Environment: ZTM_DEMO_HUB_PORT (18888), ZTM_DEMO_AGENT1_PORT (17771), ZTM_DEMO_AGENT2_PORT (17772),
# ZTM_DEMO_ECHO_PORT and ZTM_DEMO_TUNNEL_PORT (the echo server and the tunnel entrance; default: free ports),
# ZTM_DEMO_MESH (demo), ZTM_DEMO_TIMEOUT (seconds per wait, 30), ZTM_DEMO_KEEP=1 keeps the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

HUB_PORT=${ZTM_DEMO_HUB_PORT:-18888}
A1_PORT=${ZTM_DEMO_AGENT1_PORT:-17771}
A2_PORT=${ZTM_DEMO_AGENT2_PORT:-17772}
MESH=${ZTM_DEMO_MESH:-demo}
WAIT=${ZTM_DEMO_TIMEOUT:-30}
HUB=127.0.0.1:$HUB_PORT
A1=127.0.0.1:$A1_PORT
A2=127.0.0.1:$A2_PORT

# Nothing of the caller's environment may point ztm elsewhere (a proxy, another agent, another state dir).
unset http_proxy https_proxy all_proxy no_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY NO_PROXY
unset ZTM_AGENT ZTM_MESH ZTM_TOKEN ZTM_DATA

if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
PY=$ROOT/.venv/bin/python
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} # the working tree, even without an editable install
export PYTHONUNBUFFERED=1
if ! "$PY" -c 'import ztm.cli' 2>/dev/null; then
  echo "== installing ztm into .venv"
  .venv/bin/pip install -q -e .
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ztm-demo.XXXXXX")
export HOME=$WORK/home # both agents link their local sockets under $HOME/.ztm/agents/; the CLI finds them there
mkdir -p "$HOME"

pids=()
names=()

cleanup() {
  local rc=$? i pid deadline
  trap - EXIT INT TERM
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  deadline=$((SECONDS + 10))
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "demo: ${names[$i]} (pid $pid) ignored SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
  done
  if ((rc != 0)); then
    echo >&2
    echo "demo: FAILED (exit $rc); logs follow" >&2
    for name in "${names[@]}"; do
      echo "----- $name.log (last 100 lines) -----" >&2
      tail -n 100 "$WORK/$name.log" >&2 2>/dev/null
    done
  fi
  if [[ ${ZTM_DEMO_KEEP:-} == 1 ]]; then
    echo "demo: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "demo: $*" >&2
  exit 1
}

ztm() {
  echo "\$ ztm $*"
  "$PY" -m ztm "$@"
}

start() { # NAME ARGS...: run `ztm ARGS...` in the background, output to $WORK/NAME.log
  local name=$1
  shift
  start_cmd "$name" "$PY" -m ztm "$@"
}

start_cmd() { # NAME COMMAND...: run COMMAND in the background, output to $WORK/NAME.log; stopped by cleanup
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

all_alive() {
  local i
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || fail "${names[$i]} exited early"
  done
}

wait_for() { # DESCRIPTION COMMAND...: poll COMMAND until it succeeds, at most $WAIT seconds
  local what=$1 deadline=$((SECONDS + WAIT))
  shift
  until "$@"; do
    all_alive
    ((SECONDS < deadline)) || fail "timed out after ${WAIT}s waiting for $what"
    sleep 0.1
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

agent_ready() { # PORT DATA_DIR: GET /api/version with the agent's token answers 200
  "$PY" - "$1" "$2/agent.token" <<'EOF' 2>/dev/null
import http.client, sys
token = open(sys.argv[2]).read().strip()
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
conn.request("GET", "/api/version", headers={"Authorization": f"Bearer {token}"})
sys.exit(0 if conn.getresponse().status == 200 else 1)
EOF
}

sees_online() { # AGENT NAME...: the agent lists every NAME online
  "$PY" -m ztm --agent "$1" get ep -o json 2>/dev/null | "$PY" -c '
import json, sys
online = {e.get("name") for e in json.load(sys.stdin) if e.get("online")}
sys.exit(0 if set(sys.argv[1:]) <= online else 1)' "${@:2}"
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# An echo server: every byte back, and the connection closed once the client ended its side.
ECHO_SERVER='
import socket, sys, threading
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
'

tunnel_roundtrip() { # PORT: 1 MiB of random bytes through the entrance on PORT, back byte-exact
  "$PY" - "$1" <<'EOF'
import os, socket, sys, threading
data = os.urandom(1 << 20)
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as sock:
    sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    while chunk := sock.recv(65536):
        got += chunk
    sender.join()
if got != data:
    sys.exit(f"demo: the tunnel returned {len(got)} bytes that differ from the {len(data)} sent")
print(f"sent {len(data)} random bytes through the tunnel; all came back byte-exact")
EOF
}

ECHO_PORT=${ZTM_DEMO_ECHO_PORT:-$(free_port)}
TUNNEL_PORT=${ZTM_DEMO_TUNNEL_PORT:-$(free_port)}
[[ $ECHO_PORT != "$TUNNEL_PORT" ]] || TUNNEL_PORT=$(free_port)

for port in "$HUB_PORT" "$A1_PORT" "$A2_PORT" "$ECHO_PORT" "$TUNNEL_PORT"; do
  ! port_open "$port" || fail "127.0.0.1:$port is already in use; pick other ports with ZTM_DEMO_*_PORT"
done

echo "== demo in $WORK (HOME=$HOME)"
echo "== starting the hub on $HUB"
start hub run hub --listen "$HUB" --names "$HUB" --permit "$WORK/root.json" --data "$WORK/hub"
wait_for "the hub to listen on $HUB" port_open "$HUB_PORT"
wait_for "the hub to write $WORK/root.json" test -s "$WORK/root.json"

echo "== starting agents on $A1 and $A2"
start agent1 run agent --listen "$A1" --data "$WORK/a1"
start agent2 run agent --listen "$A2" --data "$WORK/a2"
wait_for "agent 1 to answer on $A1" agent_ready "$A1_PORT" "$WORK/a1"
wait_for "agent 2 to answer on $A2" agent_ready "$A2_PORT" "$WORK/a2"

echo "== joining mesh $MESH"
ztm --agent "$A1" join "$MESH" --as ep1 --permit "$WORK/root.json"
ztm --agent "$A2" join "$MESH" --as ep2 --permit "$WORK/root.json"
wait_for "ep1 to see ep1 and ep2 online" sees_online "$A1" ep1 ep2
wait_for "ep2 to see ep1 and ep2 online" sees_online "$A2" ep1 ep2

echo "== the mesh, from ep1"
ztm --agent "$A1" get mesh
echo "== the mesh, from ep2"
ztm --agent "$A2" get mesh
echo "== endpoints, from ep1"
ztm --agent "$A1" get ep
echo "== endpoints, from ep2"
ztm --agent "$A2" get ep
echo "== ping ep2 from ep1 (through the hub)"
ztm --agent "$A1" ping ep ep2

echo "== tunnel: an echo server next to ep2 on 127.0.0.1:$ECHO_PORT, reached from ep1 on 127.0.0.1:$TUNNEL_PORT"
start_cmd echo "$PY" -c "$ECHO_SERVER" "$ECHO_PORT"
wait_for "the echo server to listen on 127.0.0.1:$ECHO_PORT" port_open "$ECHO_PORT"
ztm --agent "$A2" tunnel open outbound tcp/demo-echo --targets "127.0.0.1:$ECHO_PORT"
ztm --agent "$A1" tunnel open inbound tcp/demo-echo --listen "127.0.0.1:$TUNNEL_PORT"
echo "# 1 MiB of random bytes into 127.0.0.1:$TUNNEL_PORT: ep1 -> hub -> ep2 -> echo server, and back"
tunnel_roundtrip "$TUNNEL_PORT"
ztm --agent "$A1" tunnel get tunnel
ztm --agent "$A1" tunnel get inbound
ztm --agent "$A1" stats ep

echo "== demo OK"
