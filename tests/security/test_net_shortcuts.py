"""The net app's latency shortcuts under attack by a mesh member (issue 17's ping target): real hub and agents with
`--tun` in the lab's namespaces, the attacker's frames written one end-to-end record each.

A chunk of exactly one record holding exactly one frame takes the receive path's shortcuts (`E2EStream.stream_data`
hands the record's payload straight to the sink, `Deframer.feed` returns a view of it) and, once a frame was written
to the TUN, the victim reads its TUN in the same callback. These must take nothing the general path refuses: a
frame whose length is impossible still closes the stream (`bad-frame`), a spoofed source or a foreign destination in
such a frame is still dropped and counted, the well-formed frame (the control) is delivered once, and the packets the
victim reads back right after (its kernel's echo reply) go to the member that sent the request, as replies, never
elsewhere.
"""

from __future__ import annotations

import pytest

from security.test_net_tun import World, attack, ep, frame, icmp_echo, net_view, world  # noqa: F401 (the fixture)
from support import wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TIMEOUT = 30.0


def test_one_frame_records_take_no_shortcut_past_the_filter(world: World) -> None:  # noqa: F811
    victim, mallory, bystander = ep(world.victim), ep(world.mallory), ep(world.bystander)
    me, target = mallory["mesh_ip"], victim["mesh_ip"]

    def dropped() -> dict[str, int]:
        return dict(net_view(world.victim)["dropped"])

    before, view = dropped(), net_view(world.victim)
    delivered, sent = view["packets_in"], view["packets_out"]
    too_short = (29).to_bytes(4, "big") + bytes(29)  # one frame of MIN_FRAME - 1 bytes, alone in its record
    answer = attack(
        world,
        [
            frame(icmp_echo(me, target)),  # the control: the victim's kernel answers it
            frame(icmp_echo(bystander["mesh_ip"], target)),  # another endpoint's source, alone in its record
            frame(icmp_echo(me, world.lab.addr("db"))),  # a LAN host behind the victim (no approved router)
            too_short.hex(),  # a length no frame can have: the stream is closed
        ],
    )
    assert answer.startswith("sent"), answer
    counts = {"spoofed-source": 1, "not-for-us": 1, "bad-frame": 1}
    wait_until(lambda: all(dropped().get(k, 0) - before.get(k, 0) >= n for k, n in counts.items()), TIMEOUT,
               f"the victim to count the attacks ({counts})")  # fmt: skip
    after = dropped()
    assert {k: after.get(k, 0) - before.get(k, 0) for k in counts} == counts, after
    view = net_view(world.victim)
    assert view["packets_in"] == delivered + 1, view  # the control only
    # the echo reply the victim read back at once went to mallory (its sender), nowhere else
    wait_until(lambda: net_view(world.victim)["packets_out"] >= sent + 1, TIMEOUT, "the victim's echo reply")
    peers = {p["name"] for p in net_view(world.victim)["peers"]}
    assert peers <= {"mallory"}, peers
    world.victim.proc.assert_alive()
    assert net_view(world.victim)["tun_up"]
