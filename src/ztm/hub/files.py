"""`FileIndex`: the hub's index of the mesh file space (metadata only; file data never passes through here except as
relayed app streams between endpoints).

It owns one entry per path (size, time, SHA-256 of the file and of each 1 MiB chunk, publisher, ACL), kept in the
hub database, and, in memory, which endpoints hold each file in full (its sources, announced by the agents after
every hello). Every decision uses the caller's identity from its verified certificate (`Peer`): writes (publish,
unpublish, ACL) only by the path's owner or root; reads (list, describe, announcing oneself as a source) only by
users the namespace and the ACL let read (see `ztm.filespec`). An entry a caller may not read is reported as absent.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ztm import filespec, validate
from ztm.errors import BadInput, Forbidden, NotFound
from ztm.filespec import Acl, FileEntry
from ztm.hub.state import HubState, Peer
from ztm.hub.store import HubStore

log = logging.getLogger("ztm.hub")

MAX_ANNOUNCE = 10_000
MAX_LIST = 10_000


class FileIndex:
    def __init__(self, state: HubState, store: HubStore) -> None:
        self.state = state
        self.store = store
        self.entries: dict[str, FileEntry] = {}
        for text in store.files():
            try:
                entry = FileEntry.from_json(json.loads(text))
            except (ValueError, BadInput) as exc:
                log.error("file index: skipping an unreadable entry: %s", exc)
                continue
            self.entries[entry.path] = entry
        self.sources: dict[str, dict[str, str]] = {}
        """Path -> {endpoint id: the file hash it holds in full}."""

    # reading
    def _readable(self, peer: Peer, path: str) -> FileEntry:
        entry = self.entries.get(path)
        if entry is None or not filespec.may_read(peer.user, path, entry.acl):
            raise NotFound(f"no file {path} in this mesh (or you may not read it); see `ztm get file`")
        return entry

    def listing(self, peer: Peer, prefix: str) -> list[dict[str, Any]]:
        self.state.require_ep(peer)
        found = []
        for path in sorted(self.entries):
            entry = self.entries[path]
            if filespec.under(path, prefix) and filespec.may_read(peer.user, path, entry.acl):
                found.append({**entry.to_json(chunks=False), "sources": len(self._current_sources(entry))})
                if len(found) >= MAX_LIST:
                    break
        return found

    def get(self, peer: Peer, path: str) -> dict[str, Any]:
        self.state.require_ep(peer)
        entry = self._readable(peer, path)
        return {**entry.to_json(), "sources": self._source_views(entry)}

    def _current_sources(self, entry: FileEntry) -> list[str]:
        held = self.sources.get(entry.path, {})
        return [ep for ep, file_hash in held.items() if file_hash == entry.hash and ep in self.state.endpoints]

    def _source_views(self, entry: FileEntry) -> list[dict[str, Any]]:
        views = []
        for ep_id in self._current_sources(entry):
            ep = self.state.endpoints[ep_id]
            views.append({"ep": ep.id, "name": ep.name, "user": ep.user, "online": ep.id in self.state.sessions})
        return sorted(views, key=lambda v: (not v["online"], v["name"]))

    # writing
    def publish(self, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
        ep = self.state.require_ep(peer)
        parsed = FileEntry.parse(body)
        if not filespec.may_write(peer.user, parsed.path):
            raise Forbidden(f"only {filespec.writers(parsed.path)} may publish {parsed.path}")
        entry = FileEntry(
            parsed.path,
            parsed.size,
            parsed.time,
            parsed.hash,
            parsed.chunks,
            publisher=peer.user,
            ep=ep.id,
            acl=parsed.acl,
            published=time.time(),
        )
        self.store.save_file(entry.path, json.dumps(entry.to_json()))
        self.entries[entry.path] = entry
        held = self.sources.setdefault(entry.path, {})
        for other, file_hash in list(held.items()):
            if file_hash != entry.hash:
                del held[other]  # old content: no longer a source of this path
        held[ep.id] = entry.hash
        self.state.counters["files_published"] += 1
        log.info("user %s published %s (%d bytes) from %s", peer.user, entry.path, entry.size, ep.name)
        return self.get(peer, entry.path)

    def unpublish(self, peer: Peer, path: str) -> None:
        self.state.require_ep(peer)
        entry = self._readable(peer, path)
        if not filespec.may_write(peer.user, path):
            raise Forbidden(f"only {filespec.writers(path)} may unpublish {path}")
        self.store.delete_file(path)
        del self.entries[entry.path]
        self.sources.pop(path, None)
        log.info("user %s unpublished %s", peer.user, path)

    def set_acl(self, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
        self.state.require_ep(peer)
        path = filespec.check_path(body.get("path"))
        acl = Acl.parse(body.get("acl")).check_for(path)
        entry = self._readable(peer, path)
        if not filespec.may_write(peer.user, path):
            raise Forbidden(f"only {filespec.writers(path)} may change the acl of {path}")
        updated = FileEntry(
            entry.path, entry.size, entry.time, entry.hash, entry.chunks, entry.publisher, entry.ep, acl,
            entry.published,
        )  # fmt: skip
        self.store.save_file(path, json.dumps(updated.to_json()))
        self.entries[path] = updated
        held = self.sources.get(path, {})
        for ep_id in list(held):  # a holder who may no longer read it is no source either
            holder = self.state.endpoints.get(ep_id)
            if holder is None or not filespec.may_read(holder.user, path, acl):
                del held[ep_id]
        log.info("user %s set the acl of %s: %s", peer.user, path, acl.to_json())
        return self.get(peer, path)

    # sources
    def announce(self, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
        """`{"hold": [{"path", "hash"}], "drop": [path], "replace": bool}`: the caller holds (no longer holds) these
        files in full. Accepted only for current content the caller may read; the answer lists the rest as stale."""
        ep = self.state.require_ep(peer)
        hold = body.get("hold", [])
        drop = validate.list_of(body.get("drop"), str, "drop")
        if not isinstance(hold, list) or not all(isinstance(h, dict) for h in hold):
            raise BadInput('hold must be a list of {"path": PATH, "hash": SHA256} objects')
        if len(hold) + len(drop) > MAX_ANNOUNCE:
            raise BadInput(f"at most {MAX_ANNOUNCE} files per announcement")
        replace = validate.field(body, "replace", bool, required=False) or False
        wanted = {filespec.check_path(h.get("path")): filespec.check_hash(h.get("hash")) for h in hold}
        for path in drop:
            filespec.check_path(path)
        if replace:
            for held in self.sources.values():
                held.pop(ep.id, None)
        for path in drop:
            self.sources.get(path, {}).pop(ep.id, None)
        accepted, stale = [], []
        for path, file_hash in wanted.items():
            entry = self.entries.get(path)
            if entry is None or entry.hash != file_hash or not filespec.may_read(peer.user, path, entry.acl):
                stale.append(path)
                self.sources.get(path, {}).pop(ep.id, None)
                continue
            self.sources.setdefault(path, {})[ep.id] = file_hash
            accepted.append(path)
        for path in [p for p, held in self.sources.items() if not held]:
            del self.sources[path]
        return {"accepted": accepted, "stale": stale}
