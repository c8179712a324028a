"""A hostile member and the birthday punch (docs/nat-traversal.md): hundreds of SYNs go only to the caller's own
address as its hub saw it, never to an address the caller merely claims, and a loop of requests gets one burst.

Mallory is a member with a valid endpoint certificate (the home agent's, behind an eim router), sending `punch` calls
asking for a birthday attempt (`"birthday": K`) to the workplace's agent over real end-to-end streams
(tests/security/punch_caller.py). The victim is a host on the Internet (`pub1`): an nft counter there counts every
TCP SYN that arrives from the workplace's router, and a listener on the claimed port counts connections.

* Mallory claims the victim's address as its reflexive candidate: the hub attests mallory's real address (its
  router's), which differs, so the workplace sends the victim nothing at all (no birthday burst, and not even the
  ordinary punch's SYNs), and counts `punch_birthday_refused_unattested`.
* Mallory adds its own `ztm-seen` header naming the victim to its CONNECT (a forged attestation): the hub attests
  what it sees, whatever the agent says, so again nothing goes to the victim.
* Mallory asks for birthday punches in a loop, with its true address: the workplace makes one burst (one attempt per
  peer pair per 5 minutes); the rest are refused (`punch_birthday_refused_rate`), and the SYNs that reach mallory's
  router are those of one attempt.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.netlab import Lab
from support import Agent, Proc, base_env, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB_SITES = {"home": "eim", "workplace": "eim", "pub1": "public"}
MESH = "my-mesh"
CALLER = Path(__file__).with_name("punch_caller.py")
K = 512
"""What mallory asks for (the workplace's default `--p2p-birthday` is 512 too)."""
VICTIM_PORT = 5558
COUNTING_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, a = s.accept()
    print("conn", a, flush=True)
    c.close()
"""


@dataclass
class World:
    lab: Lab
    home: Agent
    work: Agent
    hub_addr: str
    work_id: str
    victim: Proc
    nonce: Iterator[int]

    def offer(
        self, candidates: list[dict[str, Any]], count: int = 1, birthday: int = K, headers: Any = ()
    ) -> list[dict[str, Any]]:
        """Mallory's (home's) birthday offer, `count` times (with extra CONNECT `headers`); the workplace's answers,
        each with `_hub_seen` (the workplace's address as the hub attested it)."""
        files = self.home.data / "meshes" / MESH
        msg: dict[str, Any] = {"v": 1, "id": f"{next(self.nonce):032x}", "candidates": candidates}
        if birthday:
            msg["birthday"] = birthday
        argv = [sys.executable, str(CALLER), str(files), self.hub_addr, self.work_id, str(count), json.dumps(msg),
                json.dumps([list(h) for h in headers])]  # fmt: skip
        proc = self.lab.exec("home", argv, env=base_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def counter(self, name: str) -> float:
        status, text = self.work.api("GET", "/api/metrics")
        assert status == 200, text
        for line in str(text).splitlines():
            if line.startswith(f'ztm_agent_direct_{name}_total{{mesh="{MESH}"}} '):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def syns(self, host: str) -> int:
        """TCP SYNs (without ACK) that reached `host` from the workplace's router since the lab began."""
        out = self.lab.exec(host, ["nft", "list", "chain", "inet", "syncount", "pre"], check=True).stdout
        found = re.search(r"counter packets (\d+)", out)
        assert found, out
        return int(found.group(1))


def count_syns(lab: Lab, host: str, source: str) -> None:
    """An nft counter in `host` of the TCP SYNs arriving from `source` (before any other rule sees them)."""
    rules = f"""table inet syncount {{
    chain pre {{
        type filter hook prerouting priority -300; policy accept;
        ip saddr {source} tcp flags & (syn | ack) == syn counter
    }}
}}
"""
    lab.exec(host, ["nft", "-f", "-"], input=rules, check=True)


@pytest.fixture(scope="module")
def world(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("birthday-attacks")
    dc = lab.addr("datacenter")
    _hub, agents = lab.start_mesh(tmp, MESH, {"home": "mallory", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]
    work_rtr = lab.addr("work-rtr")
    count_syns(lab, "pub1", work_rtr)
    count_syns(lab, "home-rtr", work_rtr)
    victim = lab.popen("pub1", [sys.executable, "-c", COUNTING_LISTENER, lab.addr("pub1"), str(VICTIM_PORT)],
                       env=base_env(), name="victim")  # fmt: skip
    victim.wait_for_output("ready", timeout=10)
    work_id = str(work.cli_json("get", "ep", "workplace")["id"])
    yield World(lab, home, work, f"{dc}:8888", work_id, victim, iter(range(0xB1D0, 1 << 30)))


def test_a_claimed_address_gets_no_syn(world: World) -> None:
    """Mallory (behind home's router) says its mapping is the victim's address: nothing goes there."""
    victim = world.lab.addr("pub1")
    refused = world.counter("punch_birthday_refused_unattested")
    timeouts = world.counter("punch_answer_timeouts")
    claim = [{"kind": "reflexive", "ip": victim, "port": VICTIM_PORT}]
    ordinary = world.offer(claim, birthday=0)  # not even the ordinary punch's few SYNs go there
    answers = world.offer(claim)
    assert "result" in ordinary[0] and "result" in answers[0], (ordinary, answers)  # answered, but no birthday ...
    assert "birthday" not in answers[0]["result"], answers
    wait_until(lambda: world.counter("punch_answer_timeouts") >= timeouts + 2, 10, "the punch windows to end")
    assert world.counter("punch_birthday_refused_unattested") == refused + 1
    assert world.counter("punch_candidates_refused_attested") >= 1
    # ... and the victim saw nothing: no SYN from the workplace's router, no connection on the claimed port
    assert world.syns("pub1") == 0
    assert world.victim.output().count("conn ") == 0


def test_an_agent_cannot_attest_itself(world: World) -> None:
    """Mallory sends `ztm-seen: VICTIM` itself: the hub names what it sees (mallory's router), so the victim's
    address is still not mallory's, and the hub's 200 names the workplace's real address."""
    victim = world.lab.addr("pub1")
    refused = world.counter("punch_birthday_refused_unattested")
    timeouts = world.counter("punch_answer_timeouts")
    syns = world.syns("pub1")
    answers = world.offer([{"kind": "reflexive", "ip": victim, "port": VICTIM_PORT}], headers=[("ztm-seen", victim)])
    assert "result" in answers[0] and "birthday" not in answers[0]["result"], answers
    assert answers[0]["_hub_seen"] == world.lab.addr("work-rtr"), answers
    assert world.counter("punch_birthday_refused_unattested") == refused + 1
    wait_until(lambda: world.counter("punch_answer_timeouts") > timeouts, 10, "the punch window to end")
    assert world.syns("pub1") == syns
    assert world.victim.output().count("conn ") == 0


def test_a_loop_of_requests_gets_one_burst(world: World) -> None:
    """Mallory asks with its true address, over and over: one birthday attempt, the rest refused."""
    mallory = world.lab.addr("home-rtr")
    attempts = world.counter("punch_birthday_attempts")
    refused = world.counter("punch_birthday_refused_rate")
    syns = world.syns("home-rtr")
    timeouts = world.counter("punch_answer_timeouts")
    answers = world.offer([{"kind": "reflexive", "ip": mallory, "port": 40000}], count=6)
    answered = [a["result"] for a in answers if "result" in a]  # the rest: the punch rate limit (6 per 10 s)
    assert len(answered) >= 2, answers
    assert sum(1 for a in answered if a.get("birthday")) == 1, answers
    assert answered[0].get("birthday") == K, answers
    n = len(answered)
    wait_until(lambda: world.counter("punch_answer_timeouts") >= timeouts + n, 20, "the punch windows to end")
    assert world.counter("punch_birthday_attempts") == attempts + 1
    assert world.counter("punch_birthday_refused_rate") == refused + n - 1
    # one attempt's SYNs (2 K sockets, each SYN sent at most 3 times within the window), not six attempts' (12 K)
    sent = world.syns("home-rtr") - syns
    assert 2 * K <= sent <= 3 * 2 * K + 50, sent
    # later: still refused (one attempt per peer pair per 5 minutes)
    again = world.offer([{"kind": "reflexive", "ip": mallory, "port": 40001}])
    assert "birthday" not in again[0].get("result", {}), again
    assert world.counter("punch_birthday_attempts") == attempts + 1
