"""A hostile hub for tests: the real `ztm run hub`, patched at startup to attack the agents whose streams it relays.

Run it as `python tests/security/evil_hub.py run hub ...` (the arguments of `ztm`; `support.start_hub(...,
program=EVIL_HUB)` does that). The attack is chosen by environment variables; nothing in `src/` knows about it:

* `ZTM_EVIL_HUB=tamper`: in every relayed stream, flip one bit of the byte at offset `ZTM_EVIL_TAMPER_AFTER`
  (default 16384) of the bytes going `ZTM_EVIL_TAMPER_DIRECTION` (`to-target`, the default: from the entrance that
  asked for the stream to the endpoint that accepted it; or `to-caller`). Streams shorter than that are untouched.
* `ZTM_EVIL_HUB=forge-caller`: every `stream` event names the endpoint `ZTM_EVIL_CALLER` (a name or id, e.g. root's
  endpoint) as the caller instead of the real one, whoever asked for the stream; with `ZTM_EVIL_FORGE_CALLS=1`,
  every relayed `call` event too (`ztm log ep NAME` and the other calls an endpoint answers). With
  `ZTM_EVIL_FORGE_NAME=1`, a `stream` event keeps the real caller's endpoint id and user and claims only the other
  endpoint's name (what a policy rule naming that endpoint would match).
* `ZTM_EVIL_HUB=replay`: every `stream` event whose first flight (`first`) holds a RESUME and at least two sealed
  records (the OPEN and early DATA: the whole of a short request) is offered again to the same endpoint, byte for
  byte under a fresh stream id, once the original stream had a second to finish: a replay of the whole stream.
* `ZTM_EVIL_HUB=ignore-evict`: `ztm evict USER` still marks the user evicted, revokes its certificates and serves the
  new CRL (signed by the CA; agents are told with a `crl` event and fetch it), but the hub keeps the user's live
  connections and event streams open and lets them relay streams: no per-request refusal, no hang-up, no `evicted`
  event.

Each attack logs one line `evil hub: ...` to the hub's log when it acts, so a test's failure report shows it did.
A bad setting is a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import sys
import time
from typing import Any

from ztm import h2
from ztm.errors import ZtmError
from ztm.hub import relay
from ztm.hub import state as hubstate
from ztm.hub.store import EndpointRecord

log = logging.getLogger("ztm.hub")

MODES = ("tamper", "forge-caller", "ignore-evict", "replay")
DIRECTIONS = ("to-target", "to-caller")


class SetupError(Exception):
    """A bad `ZTM_EVIL_*` setting (the message says which and what is expected)."""


# ------------------------------------------------------------------------------------------------------ tamper


class _TamperingForward(relay._Forward):
    """The relay's forwarder for one direction, flipping the lowest bit of the byte at stream offset `at`."""

    def __init__(self, src: h2.Stream, dst: h2.Stream, state: hubstate.HubState, done: asyncio.Future[None], at: int):
        super().__init__(src, dst, state, done)
        self.left: int | None = at
        """Bytes still to pass untouched before the flip; None once flipped."""

    def stream_data(self, data: bytes) -> None:
        left = self.left
        if left is not None:
            if left < len(data):
                altered = bytearray(data)
                altered[left] ^= 0x01
                data = bytes(altered)
                self.left = None
                log.info("evil hub: flipped one bit of a relayed stream's byte after %d untouched bytes", _AT)
            else:
                self.left = left - len(data)
        super().stream_data(data)


_AT = 16384
_TO_TARGET = True


async def _tampering_splice(a: h2.Stream, b: h2.Stream, state: hubstate.HubState) -> None:
    """`relay.splice` (a: the caller's stream, b: the target's) with one direction tampered."""
    loop = asyncio.get_running_loop()
    ab: relay._Forward
    ba: relay._Forward
    if _TO_TARGET:
        ab = _TamperingForward(a, b, state, loop.create_future(), _AT)
        ba = relay._Forward(b, a, state, loop.create_future())
    else:
        ab = relay._Forward(a, b, state, loop.create_future())
        ba = _TamperingForward(b, a, state, loop.create_future(), _AT)
    try:
        a.set_sink(ab)
        b.set_sink(ba)
        await asyncio.gather(ab.done, ba.done)
    except BaseException:
        ab.fail()
        ba.fail()
        raise


def _tamper() -> None:
    global _AT, _TO_TARGET
    raw = os.environ.get("ZTM_EVIL_TAMPER_AFTER", str(_AT))
    try:
        _AT = int(raw)
    except ValueError:
        raise SetupError(f"ZTM_EVIL_TAMPER_AFTER must be a whole number of bytes (e.g. 16384), got {raw!r}") from None
    if _AT < 0:
        raise SetupError(f"ZTM_EVIL_TAMPER_AFTER must be 0 or more bytes, got {_AT}")
    direction = os.environ.get("ZTM_EVIL_TAMPER_DIRECTION", "to-target")
    if direction not in DIRECTIONS:
        raise SetupError(f"ZTM_EVIL_TAMPER_DIRECTION must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    _TO_TARGET = direction == "to-target"
    relay.splice = _tampering_splice


# ------------------------------------------------------------------------------------------------ forge-caller


def _forge_caller() -> None:
    forged_ref = os.environ.get("ZTM_EVIL_CALLER", "")
    if not forged_ref:
        raise SetupError("ZTM_EVIL_CALLER must name the endpoint to claim as every stream's caller (name or id)")
    offer = relay.Relay._offer
    if os.environ.get("ZTM_EVIL_FORGE_NAME", "0") not in ("0", "1"):
        raise SetupError(f"ZTM_EVIL_FORGE_NAME must be 0 or 1, got {os.environ['ZTM_EVIL_FORGE_NAME']!r}")
    name_only = os.environ.get("ZTM_EVIL_FORGE_NAME") == "1"

    async def forged_offer(
        self: relay.Relay, session: hubstate.Session, stream: h2.Stream, caller: EndpointRecord,
        target: EndpointRecord, app: str, service: str, seen: str | None = None,
    ) -> Any:  # fmt: skip
        try:
            forged = self.state.find_endpoint(forged_ref)
        except ZtmError:
            forged = caller  # not enrolled yet: nothing to claim
        if forged.id != caller.id:
            log.info("evil hub: telling %s that %s's stream comes from %s", target.name, caller.name, forged.name)
            if name_only:
                forged = dataclasses.replace(caller, name=forged.name)
        return await offer(self, session, stream, forged, target, app, service, seen)

    relay.Relay._offer = forged_offer  # type: ignore[method-assign]
    if os.environ.get("ZTM_EVIL_FORGE_CALLS", "0") not in ("0", "1"):
        raise SetupError(f"ZTM_EVIL_FORGE_CALLS must be 0 or 1, got {os.environ['ZTM_EVIL_FORGE_CALLS']!r}")
    if os.environ.get("ZTM_EVIL_FORGE_CALLS") != "1":
        return
    call = hubstate.HubState.call

    async def forged_call(
        self: hubstate.HubState, peer: hubstate.Peer, ref: str, method: str, params: Any, timeout: float
    ) -> Any:
        try:
            forged = self.find_endpoint(forged_ref)
        except ZtmError:
            return await call(self, peer, ref, method, params, timeout)
        if forged.id != peer.ep_id:
            log.info("evil hub: telling %s that %s's call %r comes from %s", ref, peer.user, method, forged.name)
            peer = dataclasses.replace(peer, user=forged.user, ep_id=forged.id)
        return await call(self, peer, ref, method, params, timeout)

    hubstate.HubState.call = forged_call  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------ ignore-evict


def _ignore_evict() -> None:
    refusal = hubstate.HubState.refusal
    evict = hubstate.HubState.evict

    def lenient_refusal(self: hubstate.HubState, peer: hubstate.Peer) -> str | None:
        user = self.users.get(peer.user)
        if user is not None and user.evicted_at is not None:  # revoked and evicted: let it be, unless expired
            return "this certificate expired" if time.time() >= peer.not_after else None
        return refusal(self, peer)

    async def evict_but_keep(self: hubstate.HubState, peer: hubstate.Peer, user: str) -> dict[str, Any]:
        kept = {ep_id: s for ep_id, s in self.sessions.items() if s.user == user}
        for ep_id in kept:  # hidden from evict(): no `evicted` event, no closing; the user is online as before
            del self.sessions[ep_id]
        self.conns.close_where = lambda *_a, **_k: 0  # type: ignore[method-assign]
        try:
            result = await evict(self, peer, user)
        finally:
            del self.conns.close_where
            self.sessions.update(kept)
        log.info(
            "evil hub: %s is evicted and revoked in the CRL, but its %d event streams and all its connections stay",
            user,
            len(kept),
        )
        return result

    hubstate.HubState.refusal = lenient_refusal  # type: ignore[method-assign]
    hubstate.HubState.evict = evict_but_keep  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------------ replay


def _records_after_resume(first: bytes) -> int:
    """How many RECORD frames follow a leading RESUME frame in `first` (0 if it does not start with one)."""
    pos, records = 0, -1
    while pos + 4 <= len(first):
        kind, length = first[pos], int.from_bytes(first[pos + 1 : pos + 4], "big")
        if pos + 4 + length > len(first):
            break
        if records < 0:
            if kind != 4:  # RESUME
                return 0
            records = 0
        elif kind == 6:  # RECORD
            records += 1
        pos += 4 + length
    return max(records, 0)


def _replay() -> None:
    offer = hubstate.Session.offer

    def replaying_offer(self: hubstate.Session, event: dict[str, Any]) -> bool:
        queued = offer(self, event)
        first = event.get("first")
        if queued and event.get("type") == "stream" and isinstance(first, str):
            records = _records_after_resume(base64.b64decode(first))
            if records >= 2:
                again = {**event, "id": os.urandom(16).hex()}

                def replay() -> None:
                    log.info("evil hub: replayed a stream's first flight (RESUME and %d records)", records)
                    offer(self, again)

                asyncio.get_running_loop().call_later(1.0, replay)
        return queued

    hubstate.Session.offer = replaying_offer  # type: ignore[method-assign]


def install(mode: str) -> None:
    """Patch the hub's modules for `mode` (one of `MODES`); SetupError on a bad setting."""
    if mode == "tamper":
        _tamper()
    elif mode == "forge-caller":
        _forge_caller()
    elif mode == "ignore-evict":
        _ignore_evict()
    elif mode == "replay":
        _replay()
    else:
        raise SetupError(f"ZTM_EVIL_HUB must be one of {', '.join(MODES)}, got {mode!r}")


def main() -> int:
    try:
        install(os.environ.get("ZTM_EVIL_HUB", ""))
    except SetupError as exc:
        print(f"evil_hub: {exc}", file=sys.stderr)
        return 2
    from ztm.cli.main import main as ztm_main

    return ztm_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
