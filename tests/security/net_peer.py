"""A hostile mesh member's `ip` stream (run inside its lab namespace by tests/security/test_net_tun.py).

    python net_peer.py MESH_DIR HUB_HOST:PORT TARGET_EP_ID < frames.json
    python net_peer.py MESH_DIR HUB_HOST:PORT TARGET_EP_ID STREAMS

Opens an end-to-end `ip` stream to the target's net app through the hub, as the endpoint whose files are in MESH_DIR
(`e2eclient.open_e2e`: the target sees this member's own, proven identity), writes each frame of the JSON list (hex
strings: whole frames, length included, so broken lengths can be sent too) with a short pause between, and prints
"sent N" or the error that stopped it. With STREAMS: opens that many `ip` streams at once, holds them a second, and
prints "opened N".
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2eclient import layer_of, open_e2e
from ztm import h2
from ztm.agent.tls import MeshFiles


async def main(mesh_dir: str, hub: str, target: str, frames: list[str], streams: int = 0) -> str:
    files = MeshFiles(Path(mesh_dir))
    host, port = hub.rsplit(":", 1)
    conn = await h2.connect(host, int(port), files.ep_context(), timeout=10)
    try:
        if streams:
            layer = layer_of(files)
            for _ in range(streams):
                await open_e2e(conn, layer, target, "net", "ip")
            await asyncio.sleep(1.0)
            return f"opened {streams}"
        stream = await open_e2e(conn, layer_of(files), target, "net", "ip")
        for i, frame in enumerate(frames):
            try:
                await stream.write(bytes.fromhex(frame))
            except h2.H2Error as exc:
                return f"sent {i}: {exc}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        return f"sent {len(frames)}"
    finally:
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) > 4:
        print(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], [], int(sys.argv[4]))), flush=True)
    else:
        print(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.load(sys.stdin))), flush=True)
