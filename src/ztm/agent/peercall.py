"""Calls to another endpoint over an end-to-end stream: `ztm ep NAME log`, `ztm ep NAME APP ...` (remote app
configuration), `info`.

The caller opens a stream for the reserved app name `calls` with the method as its service, writes the parameters
as one JSON value and ends its side; the callee answers one JSON object, `{"result": ...}` or an error
(`ZtmError.to_json()`), and ends. Both directions are sealed (`ztm.agent.e2e`), so the hub sees neither the log
lines nor the configuration, and the callee decides with the caller its certificate proves: a hub cannot pose as
root to reconfigure an endpoint or read its log. The hub's own `call` events (which carry the hub's word for who
calls) are answered only for `ping`, which carries nothing and permits nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from ztm import h2
from ztm.agent.apps import Caller, open_app_stream
from ztm.agent.e2estream import E2EStream
from ztm.errors import BadInput, Timeout, Unavailable, ZtmError, from_json

if TYPE_CHECKING:
    from ztm.agent.mesh import MeshSession

CALLS_APP = "calls"
"""The app name of call streams (no app may take it)."""
MAX_BODY = 1 << 20
"""Bytes of parameters or answer at most."""


async def call(session: MeshSession, ep_id: str, method: str, params: Any, timeout: float) -> Any:
    """Call `method` on endpoint `ep_id`; its result, or the callee's error raised as a ZtmError."""
    result, _seen = await call_seen(session, ep_id, method, params, timeout)
    return result


async def call_seen(
    session: MeshSession, ep_id: str, method: str, params: Any, timeout: float
) -> tuple[Any, str | None]:
    """`call`, and the callee's address as its hub attested it (`punch` calls; None for other methods)."""
    try:
        return await asyncio.wait_for(_call(session, ep_id, method, params), timeout)
    except TimeoutError:
        raise Timeout(f"endpoint {ep_id} did not answer {method!r} within {timeout:g}s") from None


async def _call(session: MeshSession, ep_id: str, method: str, params: Any) -> tuple[Any, str | None]:
    try:
        stream = await open_app_stream(session, ep_id, CALLS_APP, method)
    except h2.H2Error as exc:  # the hub connection went away under the opening
        raise Unavailable(f"the call to {ep_id} failed: {exc}") from None
    try:
        await stream.write(json.dumps(params).encode(), end_stream=True)
        raw = await stream.read_all(MAX_BODY)
    except h2.H2Error as exc:
        stream.reset()
        raise Unavailable(f"the call to {ep_id} failed: {exc}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "result" in answer:
        return answer["result"], stream.hub_seen
    if isinstance(answer, dict) and "error" in answer:
        raise from_json(400, answer)
    raise Unavailable(f"endpoint {ep_id} answered {method!r} with something unexpected")


async def serve(session: MeshSession, stream: E2EStream, caller: Caller, method: str) -> None:
    """Answer one call stream: read the parameters, run the method for `caller`, write the answer."""
    stream.accept()
    try:
        try:
            raw = await stream.read_all(MAX_BODY)
            params = json.loads(raw) if raw else None
        except ValueError:
            raise BadInput("the call's parameters are not JSON") from None
        result: dict[str, Any] = {"result": await session.dispatch(method, params, caller)}
    except ZtmError as exc:
        result = exc.to_json()
    except h2.H2Error:
        stream.reset()
        return
    try:
        await stream.write(json.dumps(result).encode(), end_stream=True)
    except h2.H2Error:
        stream.reset()
