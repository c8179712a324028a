"""When a failed punch is followed at once by a birthday attempt (`MeshDirect._birthday_now`): only after an ordinary
punch timed out, and only while the agent's birthday budget allows one now (issue 15, time to direct)."""

from __future__ import annotations

from pathlib import Path

from test_direct import Ca, endpoint

from ztm import pki
from ztm.agent import punchmsg


def test_a_birthday_attempt_follows_at_once_only_within_the_budget(tmp_path: Path) -> None:
    now = [1000.0]
    session = endpoint(tmp_path, "entrance", Ca(pki.new_mesh_id()))
    direct = session.direct
    direct.birthday = punchmsg.Birthday(512, every=300.0, total=4, window=600.0, clock=lambda: now[0])
    peer = "peer-ep"
    assert not direct._birthday_now(peer)  # no ordinary punch to it timed out
    direct._birthday_next.add(peer)  # ... now one did
    assert direct._birthday_now(peer)
    pair = f"{session.record.mesh_id}/{peer}"
    assert direct.birthday.take(pair)  # the attempt started
    direct.birthday.done()
    assert not direct._birthday_now(peer)  # one per pair per `every`: the next waits for the backoff
    now[0] += 301.0
    assert direct._birthday_now(peer)
    direct.birthday = punchmsg.Birthday(0)  # --p2p-birthday 0: never
    assert not direct._birthday_now(peer)
