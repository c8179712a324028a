"""A hostile member's punch offers, against a real agent behind NAT (the lab): no port scanning, no SYN flood.

Mallory is a member with a valid endpoint certificate (the home agent's), sending `punch` calls to the workplace's
agent over real end-to-end streams (tests/security/punch_caller.py), with candidates chosen to make the workplace
connect where it should not: its own loopback (its agent API, local services), its router's LAN side (a LAN it
shares with nobody from outside), a privileged port of a host on the Internet, a "mapping" at an address that is not
mallory's (the hub attests mallory's real one, its router's: PROTOCOL.md section 13), an invented second mapping.
The workplace dials none of them (listeners there count every connection: none arrives), counts each refusal by
reason, and answers a flood of offers only up to its rate limit. (tests/security/test_punch_birthday.py: the same
for the birthday method's bursts.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.netlab import Lab
from support import Agent, Proc, base_env, wait_until
from ztm.agent.direct import PUNCH_LIMIT

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
CALLER = Path(__file__).with_name("punch_caller.py")
NONCE = "feedfacefeedfacefeedfacefeedface"
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
    listeners: list[Proc]

    def offer(self, candidates: list[dict[str, Any]], count: int = 1) -> list[dict[str, Any]]:
        """Send mallory's (home's) offer `count` times; the workplace's answers."""
        files = self.home.data / "meshes" / MESH
        msg = json.dumps({"v": 1, "id": NONCE, "candidates": candidates})
        argv = [sys.executable, str(CALLER), str(files), self.hub_addr, self.work_id, str(count), msg]
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


@pytest.fixture(scope="module")
def world(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("punch-attacks")
    dc = lab.addr("datacenter")
    _hub, agents = lab.start_mesh(tmp, MESH, {"home": "mallory", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]
    listeners = []
    for host, address, port in (
        ("workplace", "127.0.0.1", 5555),  # the workplace's own loopback
        ("work-rtr", lab.addr("work-rtr", side="lan"), 5556),  # the workplace's LAN
        ("datacenter", dc, 22),  # a privileged port on the Internet
        ("datacenter", dc, 5557),  # a mapping at an address that is not mallory's
    ):
        proc = lab.popen(host, [sys.executable, "-c", COUNTING_LISTENER, address, str(port)], env=base_env(),
                         name=f"count-{host}-{port}")  # fmt: skip
        proc.wait_for_output("ready", timeout=10)
        listeners.append(proc)
    work_id = str(work.cli_json("get", "ep", "workplace")["id"])
    yield World(lab, home, work, f"{dc}:8888", work_id, listeners)


def test_implausible_candidates_are_never_dialled(world: World) -> None:
    dc, rtr_lan = world.lab.addr("datacenter"), world.lab.addr("work-rtr", side="lan")
    refusals = ("scope", "lan", "port", "reflexive", "attested")
    before = {r: world.counter(f"punch_candidates_refused_{r}") for r in refusals}
    answers = world.offer(
        [
            {"kind": "reflexive", "ip": "127.0.0.1", "port": 5555},
            {"kind": "lan", "ip": rtr_lan, "port": 5556},
            {"kind": "reflexive", "ip": dc, "port": 22},
            {"kind": "reflexive", "ip": dc, "port": 5557},
        ]
    )
    assert "result" in answers[0], answers  # answered (with the workplace's own candidates) ...
    wait_until(lambda: world.counter("punch_answer_timeouts") >= 1, 10, "the workplace's punch window to end")
    after = {r: world.counter(f"punch_candidates_refused_{r}") for r in before}
    assert {r: after[r] - before[r] for r in before} == {"scope": 1, "lan": 1, "port": 1, "reflexive": 0, "attested": 1}
    # ... and none was tried: dc:5557 is not at mallory's address as the hub saw it (the original code dialled it)
    dialled = {proc.name: proc.output().count("conn ") for proc in world.listeners}
    assert dialled == {
        "count-workplace-5555": 0,
        "count-work-rtr-5556": 0,
        "count-datacenter-22": 0,
        "count-datacenter-5557": 0,
    }, dialled


def test_an_invented_second_mapping_is_dropped(world: World) -> None:
    mallory = world.lab.addr("home-rtr")  # its address as the hub sees it
    before = world.counter("punch_candidates_refused_reflexive")
    world.offer(
        [{"kind": "reflexive", "ip": mallory, "port": 40000}, {"kind": "reflexive", "ip": mallory, "port": 40001}]
    )
    assert world.counter("punch_candidates_refused_reflexive") == before + 1


def test_a_flood_of_offers_is_answered_only_up_to_the_limit(world: World) -> None:
    answers = world.offer([], count=12)
    refused = [a for a in answers if "error" in a]
    assert len(answers) == 12 and len(refused) >= 12 - PUNCH_LIMIT.per_peer, answers
    assert all("too many punches" in a["error"] for a in refused), refused
    assert world.counter("punch_refused_rate") >= len(refused)


def test_malformed_offers_get_one_line_and_change_nothing(world: World) -> None:
    files = world.home.data / "meshes" / MESH
    argv = [sys.executable, str(CALLER), str(files), world.hub_addr, world.work_id, "1", '{"v": 1, "id": "x"}']
    out = world.lab.exec("home", argv, env=base_env(), timeout=60)
    answer = json.loads(out.stdout)
    assert "error" in answer and "id is 16 to 64 lowercase hex digits" in answer["error"], answer
    assert world.counter("punch_refused_bad") >= 1
