"""The sessions one endpoint holds, with the spec's bounds: at most 8 per peer endpoint and 4096 in all.

`SessionStore` is sans-IO bookkeeping for the agent: a responder looks sessions up by id when a RESUME arrives
(`get`), an initiator looks for a usable session to a peer before making a handshake (`for_peer`). Adding beyond a
bound drops (and closes: the secret is forgotten) the oldest session of that peer, or the oldest of all.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from ztm.e2e.session import Session

MAX_PER_PEER = 8
MAX_SESSIONS = 4096


class SessionStore:
    """Sessions by id (oldest first), bounded per peer endpoint and in all."""

    def __init__(self, *, per_peer: int = MAX_PER_PEER, total: int = MAX_SESSIONS) -> None:
        self._per_peer = per_peer
        self._total = total
        self._by_id: OrderedDict[bytes, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, session: Session) -> None:
        """Keep `session`, dropping the oldest of its peer's (or of all) beyond the bounds."""
        self._by_id[session.id] = session
        same_peer = [s for s in self._by_id.values() if s.peer.ep_id == session.peer.ep_id]
        for old in same_peer[: max(0, len(same_peer) - self._per_peer)]:
            self.drop(old.id)
        while len(self._by_id) > self._total:
            self.drop(next(iter(self._by_id)))

    def get(self, session_id: bytes) -> Session | None:
        """The session with this id, if kept (usable or not: the caller checks `usable` for a new stream)."""
        return self._by_id.get(session_id)

    def resume(self, session_id: bytes, stream_no: int, now_mono: float, now: datetime) -> Session | None:
        """Responder, on a RESUME: the session, with `stream_no` admitted; None (answer UNKNOWN, the initiator then
        makes a full handshake) if it is not kept or can take no new stream; `E2EError("replay")` for a stream
        number already used."""
        s = self._by_id.get(session_id)
        if s is None or s.initiator or not s.usable(now_mono, now):
            return None
        s.admit(stream_no)
        return s

    def for_peer(self, ep_id: str, now_mono: float, now: datetime) -> Session | None:
        """The newest session with endpoint `ep_id` that this side initiated and that can take a new stream."""
        for s in reversed(self._by_id.values()):
            if s.initiator and s.peer.ep_id == ep_id and s.usable(now_mono, now):
                return s
        return None

    def drop(self, session_id: bytes) -> None:
        """Forget a session and close it (its secret is dropped; streams already open go on)."""
        s = self._by_id.pop(session_id, None)
        if s is not None:
            s.close()

    def drop_peer(self, ep_id: str) -> None:
        """Forget every session with endpoint `ep_id` (its certificate was revoked, it left the mesh)."""
        for sid in [sid for sid, s in self._by_id.items() if s.peer.ep_id == ep_id]:
            self.drop(sid)

    def drop_revoked(self, serials: frozenset[int]) -> None:
        """Forget every session whose peer's certificate serial is in `serials` (a new CRL)."""
        for sid in [sid for sid, s in self._by_id.items() if s.peer.serial in serials]:
            self.drop(sid)

    def expire(self, now_mono: float, now: datetime) -> None:
        """Forget the sessions that can take no new stream any more."""
        for sid in [sid for sid, s in self._by_id.items() if not s.usable(now_mono, now)]:
            self.drop(sid)
