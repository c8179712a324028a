"""Network mode under attack by a mesh member (issue 17): real hub and agents with `--tun` in the lab's namespaces.

A member (`mallory`, a real endpoint of the mesh with its own certificate) opens an `ip` stream to the victim's net
app through the hub (`net_peer.py`: the end-to-end opening is real, so the victim knows who sends) and writes frames
a real agent would never write. The victim must deliver only what mallory may send (from mallory's own mesh address,
to the victim's address) and drop, count and survive everything else:

* a source address that is not mallory's: another endpoint's mesh address, the victim's own, an address outside the
  mesh (`spoofed-source`);
* a destination that is not the victim's: an address of the victim's LAN it does not route for the mesh
  (`not-for-us`): mallory may not use an endpoint as a router nobody approved;
* malformed packets (a truncated IP header: `malformed`; a vnet header with an unknown GSO type: `malformed`) and a
  frame length no packet can have (`bad-frame`: the stream is closed);

while a well-formed packet from mallory's own address is delivered (the control: the attacks reach the filter). Nor
may mallory make the victim hold more than four `ip` streams of its own at once (each holds a frame buffer).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import support
from lab.netlab import Lab
from support import Agent, Hub, start_agent, start_hub, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "m"
PEER = Path(__file__).with_name("net_peer.py")
TIMEOUT = 30.0


@dataclass
class World:
    lab: Lab
    hub: Hub
    victim: Agent
    mallory: Agent
    bystander: Agent


def net_view(agent: Agent) -> dict[str, Any]:
    status, apps = agent.api("GET", f"/api/meshes/{MESH}/apps")
    assert status == 200, apps
    return next(a for a in apps if a["name"] == "net")


@pytest.fixture(scope="module")
def world(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("net-attacks")
    procs: list[support.Proc] = []
    try:
        dc = lab.addr("datacenter")
        hub = start_hub(tmp, netns=lab.ns("datacenter"), listen="0.0.0.0:8888", names=f"{dc}:8888")
        procs.append(hub.proc)
        agents = {}
        for name, host, port, extra in (
            ("victim", "dc2", 7777, ["--tun"]),
            ("mallory", "datacenter", 7778, []),
            ("bystander", "workplace", 7777, []),
        ):
            agents[name] = start_agent(tmp, name, netns=lab.ns(host), port=port, extra=extra)
            procs.append(agents[name].proc)
            agents[name].join(MESH, name, hub.permit)
        wait_until(lambda: net_view(agents["victim"])["tun_up"], TIMEOUT, "the victim's TUN up")
        yield World(lab, hub, agents["victim"], agents["mallory"], agents["bystander"])
    finally:
        support.stop_all(procs)


def ep(agent: Agent) -> dict[str, Any]:
    me = agent.cli_json("get", "mesh", MESH)
    return next(e for e in agent.endpoints() if e["id"] == me["ep_id"])


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp_echo(src: str, dst: str) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"attack")
    struct.pack_into("!H", icmp, 2, checksum(bytes(icmp)))
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, socket.inet_aton(src), socket.inet_aton(dst)
        )
    )
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    return bytes(header) + bytes(icmp)


def frame(packet: bytes, gso_type: int = 0) -> str:
    vnet = struct.pack("<BBHHHH", 0, gso_type, 0, 0, 0, 0)
    body = vnet + packet
    return (struct.pack("!I", len(body)) + body).hex()


def attack(world: World, frames: list[str], streams: int = 0) -> str:
    mesh_dir = world.mallory.data / "meshes" / MESH
    victim_id = world.victim.cli_json("get", "mesh", MESH)["ep_id"]
    argv = [sys.executable, str(PEER), str(mesh_dir), f"{world.lab.addr('datacenter')}:8888", victim_id]
    argv += [str(streams)] if streams else []
    done = world.lab.exec("datacenter", argv, input=json.dumps(frames), env=support.base_env(), timeout=60)
    return done.stdout.strip()


def test_a_member_cannot_spoof_sources_use_an_unapproved_router_or_break_the_receiver(world: World) -> None:
    victim, mallory, bystander = ep(world.victim), ep(world.mallory), ep(world.bystander)
    me, target = mallory["mesh_ip"], victim["mesh_ip"]
    assert me and target and bystander["mesh_ip"], (mallory, victim, bystander)
    lan = world.lab.addr("db")  # on the victim's network; the victim routes nothing for the mesh

    def dropped() -> dict[str, int]:
        return dict(net_view(world.victim)["dropped"])

    before, delivered = dropped(), net_view(world.victim)["packets_in"]
    answer = attack(
        world,
        [
            frame(icmp_echo(me, target)),  # the control: from mallory's own address
            frame(icmp_echo(bystander["mesh_ip"], target)),  # another endpoint's address
            frame(icmp_echo(target, target)),  # the victim's own
            frame(icmp_echo("8.8.8.8", target)),  # outside the mesh
            frame(icmp_echo(me, lan)),  # a LAN host behind the victim, which is no approved router
            frame(icmp_echo(me, target)[:22]),  # cut short: shorter than its header says
            frame(icmp_echo(me, target), gso_type=0x7F),  # an unknown GSO type
            "00000003abcdef",  # a length no frame can have: the stream is closed
        ],
    )
    assert answer.startswith("sent"), answer
    counts = {
        "spoofed-source": 3,
        "not-for-us": 1,
        "malformed": 2,
        "bad-frame": 1,
    }
    wait_until(lambda: all(dropped().get(k, 0) - before.get(k, 0) >= n for k, n in counts.items()), TIMEOUT,
               f"the victim to count the attacks ({counts})")  # fmt: skip
    after = dropped()
    assert {k: after.get(k, 0) - before.get(k, 0) for k in counts} == counts, after
    assert net_view(world.victim)["packets_in"] == delivered + 1  # the control only
    world.victim.proc.assert_alive()
    assert net_view(world.victim)["tun_up"]


def test_a_member_cannot_make_the_receiver_hold_many_streams(world: World) -> None:
    before = net_view(world.victim)["dropped"].get("too-many-streams", 0)
    assert attack(world, [], streams=10) == "opened 10"
    closed = net_view(world.victim)["dropped"].get("too-many-streams", 0) - before
    assert closed == 10 - 4, closed  # four at most (a real agent keeps one, two while it moves): the newest
    world.victim.proc.assert_alive()
