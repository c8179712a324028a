"""A hostile member's punch offers: `python punch_caller.py FILES_DIR HUB_ADDR TARGET_EP_ID COUNT OFFER_JSON [HEADERS]`.

Runs as the endpoint whose mesh files are in FILES_DIR (its certificate and key, a real member's), connects to the
hub at HUB_ADDR (HOST:PORT) and sends the `punch` call with OFFER_JSON to TARGET_EP_ID over an end-to-end stream,
COUNT times in a row, exactly as `ztm.agent.peercall` does, but with whatever candidates the test chose (and the
extra CONNECT headers of HEADERS, a JSON list of [name, value]). Prints one JSON line per call: the target's answer
(`{"result": ...}` or `{"error": ...}`), with `_hub_seen`: the target's address as the hub attested it.
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


async def main(files_dir: str, hub: str, target: str, count: int, offer: str, extra: str = "[]") -> None:
    files = MeshFiles(Path(files_dir))
    host, port = hub.rsplit(":", 1)
    conn = await h2.connect(host, int(port), files.ep_context())
    layer = layer_of(files, "mallory")
    try:
        for _ in range(count):
            headers = [(str(name), str(value)) for name, value in json.loads(extra)]
            stream = await open_e2e(conn, layer, target, "calls", "punch", headers)
            await stream.write(offer.encode(), end_stream=True)
            answer = json.loads(await stream.read_all(1 << 20))
            print(json.dumps({**answer, "_hub_seen": stream.hub_seen}), flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    a = sys.argv
    asyncio.run(main(a[1], a[2], a[3], int(a[4]), a[5], a[6] if len(a) > 6 else "[]"))
