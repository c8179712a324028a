"""Which `endpoint` events one session gets (PROTOCOL.md section 5, "Interest").

An agent that keeps the whole endpoint list (network mode, DNS, a mesh policy) needs every `endpoint` event; the
others need only those about themselves and about the peers they deal with. Sending every event to every session
costs the hub O(n^2) events per wave of joins; sending each session only what it watches costs O(watch) per change.

`Interest` is the sans-IO rule: `everything` (agents that asked for it, and agents of earlier releases, which do not
say) or a bounded, least-recently-used set of watched endpoint ids that the hub fills when the session's endpoint
looks a peer up (`GET /api/endpoints/{id}`) or opens or receives a stream or a call. Watching one more id past
`WATCH_MAX` forgets the least recently used one; the hub tells the agent (an `unwatch` event) so that it drops its
copy, which no longer gets updates.
"""

from __future__ import annotations

import collections

HEADER = "ztm-events"
"""The request header on `GET /api/events` saying which `endpoint` events the agent wants: `all` or `watched`.
Without it (agents of earlier releases) the session gets all of them."""
ALL = "all"
WATCHED = "watched"
WATCH_MAX = 256
"""Endpoint ids one session may watch at once (besides its own endpoint): far above the peers one agent deals with
at a time, small enough that a member looking up 100,000 ids holds at most this many entries at the hub."""


class Interest:
    """The `endpoint` events one session wants: all of them, or those about the ids it watches."""

    __slots__ = ("_watched", "everything")

    def __init__(self, *, everything: bool = True) -> None:
        self.everything = everything
        self._watched: collections.OrderedDict[str, None] = collections.OrderedDict()

    @classmethod
    def from_header(cls, value: str | None) -> Interest:
        """The interest an event stream asks for (`HEADER`): only `watched` narrows it; anything else, including no
        header (an agent of an earlier release) or a value a later release may add, means all."""
        return cls(everything=(value or "").strip().lower() != WATCHED)

    def wants(self, ep_id: str) -> bool:
        """Whether an `endpoint` event about `ep_id` goes to this session (its own endpoint is checked apart)."""
        return self.everything or ep_id in self._watched

    def watch(self, ep_id: str) -> str | None:
        """The session deals with `ep_id`: keep it (as the most recently used). Returns the id forgotten to make
        room, if any (the caller tells the agent). A session that wants everything keeps no set."""
        if self.everything:
            return None
        if ep_id in self._watched:
            self._watched.move_to_end(ep_id)
            return None
        self._watched[ep_id] = None
        if len(self._watched) > WATCH_MAX:
            forgotten, _ = self._watched.popitem(last=False)
            return forgotten
        return None

    def want_everything(self) -> None:
        """Switch to every `endpoint` event (the agent asked, on its live session); the watched set is not needed."""
        self.everything = True
        self._watched.clear()

    def __len__(self) -> int:
        return len(self._watched)
