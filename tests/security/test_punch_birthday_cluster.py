"""The punch attestation across the hubs of a cluster: the caller's hub attests the caller, the exit's hub the exit.

Two hubs on one PostgreSQL (`dc1`, `dc2`, tests/lab/test_lab_cluster.py's picture); mallory (home's endpoint
certificate, behind home's eim router) on dc1, the workplace's agent on dc2. Mallory's `punch` calls go entrance ->
dc1 -> dc2 -> workplace: dc1 sends its view of mallory's address to dc2 in the forwarded `CONNECT` (`ztm-seen`, a
header dc2 takes only from a hub certificate), dc2 puts it in the workplace's `stream` event, and dc2's 200 with the
workplace's address comes back through dc1 to mallory.

* Mallory claims the victim's (`pub1`'s) address: the attested one (its router's, as dc1 saw it) differs, so the
  workplace sends the victim no SYN and counts `punch_birthday_refused_unattested`; mallory learns the workplace's
  address as dc2 saw it.
* Mallory asks with its true address: the workplace agrees to the birthday attempt (it could not without dc1's
  attestation crossing to dc2), and its burst goes to mallory's router only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from integration.test_cluster_agent import connected
from integration.test_hub_list import MESH
from lab.netlab import Lab
from support import Agent, Cluster, Hub, Proc, base_env, start_agent, start_cluster, wait_until

from .test_punch_birthday import CALLER, COUNTING_LISTENER, VICTIM_PORT, count_syns

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB_SITES = {"home": "eim", "workplace": "eim", "pub1": "public"}


@dataclass
class World:
    lab: Lab
    cluster: Cluster
    home: Agent
    work: Agent
    work_id: str
    victim: Proc

    def hub(self, zone: str) -> Hub:
        return next(h for h in self.cluster.hubs if h.zone == zone)

    def offer(self, candidates: list[dict[str, Any]], birthday: int) -> dict[str, Any]:
        """Mallory's offer to the workplace through dc1 (its hub) and dc2 (the workplace's); the answer."""
        files = self.home.data / "meshes" / MESH
        msg = {"v": 1, "id": "c1a55e5c1a55e5c1a55e5c1a55e5" + f"{len(candidates) + birthday:04x}"}
        msg |= {"candidates": candidates, "birthday": birthday}
        argv = [sys.executable, str(CALLER), str(files), self.hub("dc1").address, self.work_id, "1", json.dumps(msg)]
        proc = self.lab.exec("home", argv, env=base_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout.splitlines()[0])
        assert isinstance(answer, dict)
        return answer

    def counter(self, name: str) -> float:
        status, text = self.work.api("GET", "/api/metrics")
        assert status == 200, text
        for line in str(text).splitlines():
            if line.startswith(f'ztm_agent_direct_{name}_total{{mesh="{MESH}"}} '):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def syns(self, host: str) -> int:
        out = self.lab.exec(host, ["nft", "list", "chain", "inet", "syncount", "pre"], check=True).stdout
        return int(out.split("counter packets ")[1].split()[0])


@pytest.fixture(scope="module")
def world(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("birthday-cluster")
    db = lab.start_db()
    store = db.url(db.create_db())
    order = ["dc2", "dc1"]  # dc2 first: the workplace joins there and never has a session at dc1
    cluster = start_cluster(
        tmp, store, {"PGPASSWORD": db.password}, hubs=[(dc, dc) for dc in order],
        netns=[lab.ns(dc) for dc in order], listen=["0.0.0.0:8888"] * 2, names=[f"{lab.addr(dc)}:8888" for dc in order],
    )  # fmt: skip
    home = start_agent(tmp, "home", netns=lab.ns("home"), port=7777, extra=["--zone", "dc1"])
    work = start_agent(tmp, "workplace", netns=lab.ns("workplace"), port=7777, extra=["--zone", "dc2"])
    by_zone = {h.zone: h for h in cluster.hubs}
    home.join(MESH, "home", by_zone["dc1"].permit)
    work.join(MESH, "workplace", by_zone["dc2"].permit)
    for agent, zone in ((home, "dc1"), (work, "dc2")):
        wait_until(lambda a=agent, z=zone: by_zone[z].address in (connected(a) or {}).get("addresses", []), 30,
                   f"{agent.name} on {zone}'s hub")  # fmt: skip
    wait_until(lambda: "workplace" in home.online_names(), 20, "the workplace online, seen from home")
    work_rtr = lab.addr("work-rtr")
    count_syns(lab, "pub1", work_rtr)
    count_syns(lab, "home-rtr", work_rtr)
    victim = lab.popen("pub1", [sys.executable, "-c", COUNTING_LISTENER, lab.addr("pub1"), str(VICTIM_PORT)],
                       env=base_env(), name="victim")  # fmt: skip
    victim.wait_for_output("ready", timeout=10)
    work_id = str(work.cli_json("get", "ep", "workplace")["id"])
    yield World(lab, cluster, home, work, work_id, victim)


def test_across_hubs_a_claimed_address_gets_no_syn(world: World) -> None:
    victim = world.lab.addr("pub1")
    refused = world.counter("punch_birthday_refused_unattested")
    timeouts = world.counter("punch_answer_timeouts")
    answer = world.offer([{"kind": "reflexive", "ip": victim, "port": VICTIM_PORT}], 512)
    assert "result" in answer and "birthday" not in answer["result"], answer
    assert answer["_hub_seen"] == world.lab.addr("work-rtr"), answer  # dc2's view of the workplace, through dc1
    wait_until(lambda: world.counter("punch_answer_timeouts") > timeouts, 10, "the punch window to end")
    assert world.counter("punch_birthday_refused_unattested") == refused + 1
    assert world.syns("pub1") == 0 and world.victim.output().count("conn ") == 0


def test_across_hubs_the_callers_attestation_arrives(world: World) -> None:
    mallory = world.lab.addr("home-rtr")
    attempts = world.counter("punch_birthday_attempts")
    syns = world.syns("home-rtr")
    answer = world.offer([{"kind": "reflexive", "ip": mallory, "port": 40000}], 64)
    assert answer.get("result", {}).get("birthday") == 64, answer  # dc1's word on mallory reached the workplace
    wait_until(lambda: world.counter("punch_birthday_sockets") >= 128, 10, "the workplace's burst")
    assert world.counter("punch_birthday_attempts") == attempts + 1
    assert world.syns("home-rtr") - syns >= 128  # the burst went to mallory's own router
    assert world.syns("pub1") == 0
