"""What one member may make the hub hold: caps on pending streams and calls, call params, the event queue's bytes,
per-user quotas of the mesh file index, and the size of a policy text.

A member with a valid certificate must not be able to knock another endpoint off the hub nor exhaust the hub's
memory or disk. Each limit is set far above what a real agent needs (tests/reliability/test_load.py stays well
under them) and is documented in PROTOCOL.md and RELIABILITY.md.
"""

from __future__ import annotations

from ztm.errors import Unavailable
from ztm.policy import MAX_POLICY_BYTES

MAX_CONCURRENT_STREAMS = 16384
"""HTTP/2 streams one connection may have open towards the hub at once (SETTINGS_MAX_CONCURRENT_STREAMS): the
event stream, requests and one stream per relayed app connection (a tunnelled TCP connection, a UDP flow). Above
the 10,000 idle tunnelled connections one entrance is meant to hold (bench/tunnel.py; about 11 KB each at the hub)."""

MAX_PENDING_STREAMS_PER_CALLER = 256
"""App streams one endpoint may have waiting for their targets to accept (at most 5 s each)."""
MAX_PENDING_STREAMS_PER_TARGET = 1024
"""App streams, from all callers, that may wait for one target to accept."""
MAX_PENDING_CALLS_PER_CALLER = 64
"""Relayed calls one endpoint may have waiting for answers."""
MAX_PENDING_CALLS_PER_TARGET = 256
"""Relayed calls, from all callers, that may wait for one target's answers."""
MAX_APPS_PER_ENDPOINT = 64
"""Apps one endpoint may announce services for (`POST /api/services`, up to 256 services each)."""
MAX_CALL_PARAMS = 64 * 1024
"""Bytes of a relayed call's `params`, encoded as compact JSON."""

EVENT_QUEUE_BYTES = 4 << 20
"""Bytes of events the hub queues for one endpoint's event stream; an endpoint that lets more pile up does not read
its events, and its session is ended."""
PEER_EVENT_BYTES = 1 << 20
"""Of those, the bytes that other endpoints' `call` and `stream` events may take: past it the caller is refused
(503) and the target's session is kept."""

MAX_FILES_PER_USER = 10_000
"""File entries one user may have published in the mesh file index."""
MAX_FILE_CHUNKS_PER_USER = 1 << 18
"""Chunk hashes (one per MiB of content: 256 GiB) in all the file entries one user published."""

POLICY_TEXT_BYTES = MAX_POLICY_BYTES
"""Bytes (UTF-8) of a policy text the hub takes (`POST /api/policy`, a draft in `/api/policy/check`): 1 MiB."""
EVENT_LINE_BYTES = 1 << 20
"""The longest event line an agent reads (`ztm.agent.link.MAX_EVENT_LINE`; a longer one ends its session): a policy
whose `policy` event would be longer is refused, or every agent would be cut off in a loop."""
POLICY_BODY_BYTES = 6 * POLICY_TEXT_BYTES + 64 * 1024
"""Bytes of the JSON body carrying one: JSON escapes make a text up to six times longer (`\\u00XX`). A body past
this is refused before it is read whole."""


class PendingCounts:
    """Requests (streams or calls) waiting for a target endpoint, counted per caller and per target, with caps.

    `reserve` refuses with `Unavailable` (503) when the caller, or all callers together, already have as many
    waiting for that target as allowed: the flooding caller backs off and the target is left alone."""

    def __init__(self, what: str, per_caller: int, per_target: int) -> None:
        self.what = what
        self.per_caller = per_caller
        self.per_target = per_target
        self.callers: dict[str, int] = {}
        self.targets: dict[str, int] = {}

    def reserve(self, caller: str, target: str, target_name: str) -> None:
        if self.callers.get(caller, 0) >= self.per_caller:
            raise Unavailable(
                f"this endpoint already has {self.per_caller} {self.what} waiting for answers (the most the hub "
                "holds per endpoint); wait for some to finish, then try again"
            )
        if self.targets.get(target, 0) >= self.per_target:
            raise Unavailable(
                f"endpoint {target_name!r} already has {self.per_target} {self.what} waiting for it (the most the "
                "hub holds per endpoint); try again later"
            )
        self.callers[caller] = self.callers.get(caller, 0) + 1
        self.targets[target] = self.targets.get(target, 0) + 1

    def release(self, caller: str, target: str) -> None:
        for counts, key in ((self.callers, caller), (self.targets, target)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
