"""An example third-party ztm app: short messages between endpoints.

`ztm chat send EP TEXT...` opens a stream to the chat app on endpoint EP (through the hub) and sends one message;
EP's chat app stores it in its inbox (its configuration in the agent database) with the sender's identity as the hub
asserts it from the sender's certificate, and answers with the size of its inbox. `ztm chat inbox` shows the
messages, `ztm chat block EP` refuses messages from an endpoint, `ztm chat peers` lists the endpoints running chat,
and `ztm chat save PATH` writes the inbox to a mesh file (through the files app).

The app uses only `ztm.agent.apps`: `MeshApp` hooks and its `AppContext`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from ztm.agent.apps import Caller, MeshApp
from ztm.errors import BadInput, ZtmError

SERVICE = "inbox"
MAX_MESSAGE = 1000
MAX_INBOX = 100
TIMEOUT = 10.0

USAGE = """usage: ztm chat COMMAND
  send EP TEXT...   send a message to endpoint EP
  inbox             the messages received here
  clear             empty the inbox
  peers             endpoints running chat
  block EP          refuse messages from endpoint EP
  unblock EP        accept them again
  save PATH         write the inbox to the mesh file PATH (needs the files app)"""


class ChatApp(MeshApp):
    name = "chat"

    # lifecycle: announce the inbox so peers can find us
    async def start(self) -> None:
        await super().start()
        await self._announce()

    async def on_online(self) -> None:
        await self._announce()

    async def _announce(self) -> None:
        with contextlib.suppress(ZtmError):  # not connected yet: on_online announces it
            await self.ctx.publish([SERVICE])

    # state
    def inbox(self) -> list[dict[str, Any]]:
        value = self.ctx.config_items().get("inbox", [])
        return [m for m in value if isinstance(m, dict)] if isinstance(value, list) else []

    def blocked(self) -> list[str]:
        value = self.ctx.config_items().get("blocked", [])
        return [str(v) for v in value] if isinstance(value, list) else []

    # the receiving side
    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        if service != SERVICE:
            await self.ctx.refuse(stream_id, f"chat has no service {service!r}")
            return
        if caller.name in self.blocked() or caller.ep_id in self.blocked():
            await self.ctx.refuse(stream_id, f"{self.ctx.session.record.ep_name} does not accept your messages")
            return
        stream = await self.ctx.accept(stream_id)
        try:
            body = await asyncio.wait_for(stream.read_all(4 * MAX_MESSAGE + 64), TIMEOUT)
            text = _message(json.loads(body).get("text"))
        except Exception as exc:  # a bad message gets an answer saying why, never a crash
            await stream.write(json.dumps({"error": f"bad message: {exc}"}).encode(), end_stream=True)
            return
        inbox = self.inbox()
        inbox.append({"from": caller.name, "user": caller.user, "ep": caller.ep_id, "text": text, "time": time.time()})
        inbox = inbox[-MAX_INBOX:]
        self.ctx.config_set("inbox", inbox)
        self.counters["chat:received"] += 1
        await stream.write(json.dumps({"ok": True, "inbox": len(inbox)}).encode(), end_stream=True)

    # the sending side
    async def send(self, ep: str, text: str) -> dict[str, Any]:
        text = _message(text)
        stream = await self.ctx.open_stream(ep, SERVICE)
        await stream.write(json.dumps({"text": text}).encode(), end_stream=True)
        answer = json.loads(await asyncio.wait_for(stream.read_all(4096), TIMEOUT))
        if not isinstance(answer, dict) or "error" in answer or not answer.get("ok"):
            raise BadInput(f"{ep} refused the message: {answer.get('error') if isinstance(answer, dict) else answer}")
        self.counters["chat:sent"] += 1
        return answer

    # `ztm chat ...`
    async def cli(self, argv: list[str]) -> str:
        if not argv or argv[0] in ("help", "-h", "--help"):
            return USAGE
        command, args = argv[0], argv[1:]
        if command == "send" and len(args) >= 2:
            answer = await self.send(args[0], " ".join(args[1:]))
            held = answer.get("inbox")
            return f"delivered to {args[0]} (its inbox holds {held} message{'' if held == 1 else 's'})"
        if command == "inbox" and not args:
            lines = [
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.get('time', 0)))}  "
                f"{m.get('from')} ({m.get('user')}): {m.get('text')}"
                for m in self.inbox()
            ]
            return "\n".join(lines) or "no messages"
        if command == "clear" and not args:
            self.ctx.config_delete("inbox")
            return "inbox emptied"
        if command == "peers" and not args:
            found = await self.ctx.find(SERVICE)
            mine = self.ctx.ep_id
            names = sorted(f"{f['name']}{'' if f.get('online') else ' (offline)'}" for f in found if f["ep"] != mine)
            return "\n".join(names) or "no other endpoint runs chat"
        if command in ("block", "unblock") and len(args) == 1:
            blocked = [b for b in self.blocked() if b != args[0]] + ([args[0]] if command == "block" else [])
            self.ctx.config_set("blocked", sorted(blocked))
            return f"{command}ed {args[0]}"
        if command == "save" and len(args) == 1:
            text = "\n".join(f"{m.get('from')}: {m.get('text')}" for m in self.inbox()) + "\n"
            await self.ctx.write_file(args[0], text.encode())
            return f"saved {len(self.inbox())} messages to {args[0]}"
        raise BadInput(f"chat: unknown or incomplete command {' '.join(argv)[:80]!r}; see 'ztm chat help'")


def _message(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput("a message is non-empty text")
    if len(value) > MAX_MESSAGE or not value.isprintable():
        raise BadInput(f"a message is at most {MAX_MESSAGE} printable characters")
    return value.strip()
