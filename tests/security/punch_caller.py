"""A hostile member's punch offers: `python punch_caller.py FILES_DIR HUB_ADDR TARGET_EP_ID COUNT OFFER_JSON`.

Runs as the endpoint whose mesh files are in FILES_DIR (its certificate and key, a real member's), connects to the
hub at HUB_ADDR (HOST:PORT) and sends the `punch` call with OFFER_JSON to TARGET_EP_ID over an end-to-end stream,
COUNT times in a row, exactly as `ztm.agent.peercall` does, but with whatever candidates the test chose. Prints
one JSON line per call: the target's answer (`{"result": ...}` or `{"error": ...}`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2eclient import layer_of, open_e2e
from ztm import h2
from ztm.agent.tls import MeshFiles


async def main(files_dir: str, hub: str, target: str, count: int, offer: str) -> None:
    files = MeshFiles(Path(files_dir))
    host, port = hub.rsplit(":", 1)
    conn = await h2.connect(host, int(port), files.ep_context())
    layer = layer_of(files, "mallory")
    try:
        for _ in range(count):
            stream = await open_e2e(conn, layer, target, "calls", "punch")
            await stream.write(offer.encode(), end_stream=True)
            print((await stream.read_all(1 << 20)).decode(), flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
