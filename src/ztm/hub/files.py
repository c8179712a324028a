"""`FileIndex`: the hub's index of the mesh file space (metadata only; file data never passes through here except as
relayed app streams between endpoints).

It owns one entry per path (size, time, SHA-256 of the file and of each 1 MiB chunk, publisher, ACL), kept in the
hub database, and, in memory, which endpoints hold each file in full (its sources, announced by the agents after
every hello), and which endpoints hold some of its chunks while they download it (partial holders, with a bitmap of
their chunks). Every decision uses the caller's identity from its verified certificate (`Peer`): writes (publish,
unpublish, ACL) only by the path's owner or root; reads (list, describe, announcing oneself as a source) only by
users the namespace and the ACL let read (see `ztm.filespec`). An entry a caller may not read is reported as absent.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from ztm import filespec, validate
from ztm.errors import BadInput, Forbidden, NotFound
from ztm.filespec import Acl, ChunkSet, FileEntry
from ztm.hub import limits
from ztm.hub.state import HubState, Peer
from ztm.hub.store import HubStore

log = logging.getLogger("ztm.hub")

MAX_ANNOUNCE = 10_000
MAX_LIST = 10_000
MAX_PARTIAL = 256
"""Partial copies one endpoint may announce (per announcement, and kept per endpoint): each bitmap is up to 11 KB."""
MAX_NOTIFY_SOURCES = 6000
"""Bytes of paths and hashes in one `sources` notification to the other hubs (the store's limit is 8000)."""
MAX_PARTIAL_VIEWS = 32
"""Partial holders listed in one answer about a file (a random choice among the online ones, to spread the load)."""


class FileIndex:
    def __init__(self, state: HubState, store: HubStore, texts: list[str]) -> None:
        """`texts`: the store's entries (`HubStore.files()`)."""
        self.state = state
        self.store = store
        self.entries: dict[str, FileEntry] = {}
        for text in texts:
            try:
                entry = FileEntry.from_json(json.loads(text))
            except (ValueError, BadInput) as exc:
                log.error("file index: skipping an unreadable entry: %s", exc)
                continue
            self.entries[entry.path] = entry
        self.usage: dict[str, tuple[int, int]] = {}
        """User -> (file entries, chunk hashes) it published: held to `limits.MAX_FILES_PER_USER` and
        `limits.MAX_FILE_CHUNKS_PER_USER` (counted for the publisher, also in another user's namespace)."""
        for entry in self.entries.values():
            self._count(entry, 1)
        self.sources: dict[str, dict[str, str]] = {}
        """Path -> {endpoint id: the file hash it holds in full}."""
        self.partial: dict[str, dict[str, tuple[str, ChunkSet]]] = {}
        """Path -> {endpoint id: (file hash, the chunks it holds)}: endpoints still downloading it (partial copies)."""

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
        return {**entry.to_json(), "sources": self._source_views(entry), "partial": self._partial_views(entry)}

    def _partial_views(self, entry: FileEntry) -> list[dict[str, Any]]:
        held = self.partial.get(entry.path, {})
        full = set(self._current_sources(entry))
        online = [
            (ep_id, have)
            for ep_id, (file_hash, have) in held.items()
            if file_hash == entry.hash and self.state.is_online(ep_id) and ep_id in self.state.endpoints
            and ep_id not in full
        ]  # fmt: skip
        if len(online) > MAX_PARTIAL_VIEWS:
            online = random.sample(online, MAX_PARTIAL_VIEWS)
        views = []
        for ep_id, have in online:
            ep = self.state.endpoints[ep_id]
            views.append({"ep": ep.id, "name": ep.name, "user": ep.user, "online": True, "have": have.encode(),
                          "held": have.held()})  # fmt: skip
        return sorted(views, key=lambda v: v["name"])

    def _current_sources(self, entry: FileEntry) -> list[str]:
        held = self.sources.get(entry.path, {})
        return [ep for ep, file_hash in held.items() if file_hash == entry.hash and ep in self.state.endpoints]

    def _source_views(self, entry: FileEntry) -> list[dict[str, Any]]:
        views = []
        for ep_id in self._current_sources(entry):
            ep = self.state.endpoints[ep_id]
            views.append({"ep": ep.id, "name": ep.name, "user": ep.user, "online": self.state.is_online(ep.id)})
        return sorted(views, key=lambda v: (not v["online"], v["name"]))

    # quotas
    def _count(self, entry: FileEntry, sign: int) -> None:
        files, chunks = self.usage.get(entry.publisher, (0, 0))
        files, chunks = files + sign, chunks + sign * len(entry.chunks)
        if files > 0:
            self.usage[entry.publisher] = (files, chunks)
        else:
            self.usage.pop(entry.publisher, None)

    def _check_quota(self, user: str, new: FileEntry, old: FileEntry | None) -> None:
        """Refuse (403) a publish that would take `user` past its quota; replacing its own entry frees that one."""
        files, chunks = self.usage.get(user, (0, 0))
        if old is not None and old.publisher == user:
            files, chunks = files - 1, chunks - len(old.chunks)
        if files + 1 > limits.MAX_FILES_PER_USER:
            raise Forbidden(
                f"user {user!r} has published {files} files, its quota of {limits.MAX_FILES_PER_USER}; unpublish some "
                "(ztm unpublish file PATH) before publishing more"
            )
        if chunks + len(new.chunks) > limits.MAX_FILE_CHUNKS_PER_USER:
            raise Forbidden(
                f"publishing {new.path} would take user {user!r} past its quota of {limits.MAX_FILE_CHUNKS_PER_USER} "
                f"chunks (1 MiB each) in the file index ({chunks} in use); unpublish some (ztm unpublish file PATH) "
                "first"
            )

    # writing
    async def publish(self, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
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
        old = self.entries.get(entry.path)
        self._check_quota(peer.user, entry, old)
        await self.state.audit.record(peer, "file-publish", entry.path, {"size": entry.size, "hash": entry.hash})
        await self.store.save_file(entry.path, json.dumps(entry.to_json()))
        await self.state.publish("file", {"path": entry.path})
        if old is not None:
            self._count(old, -1)
        self._count(entry, 1)
        self.entries[entry.path] = entry
        held = self.sources.setdefault(entry.path, {})
        for other, file_hash in list(held.items()):
            if file_hash != entry.hash:
                del held[other]  # old content: no longer a source of this path
        held[ep.id] = entry.hash
        partial = self.partial.get(entry.path, {})
        for other, (file_hash, _have) in list(partial.items()):
            if file_hash != entry.hash or other == ep.id:
                del partial[other]
        self.state.counters["files_published"] += 1
        log.info("user %s published %s (%d bytes) from %s", peer.user, entry.path, entry.size, ep.name)
        return self.get(peer, entry.path)

    async def unpublish(self, peer: Peer, path: str) -> None:
        self.state.require_ep(peer)
        entry = self._readable(peer, path)
        if not filespec.may_write(peer.user, path):
            raise Forbidden(f"only {filespec.writers(path)} may unpublish {path}")
        await self.store.delete_file(path)
        await self.state.publish("file", {"path": path})
        del self.entries[entry.path]
        self._count(entry, -1)
        self.sources.pop(path, None)
        self.partial.pop(path, None)
        log.info("user %s unpublished %s", peer.user, path)

    async def set_acl(self, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
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
        await self.store.save_file(path, json.dumps(updated.to_json()))
        await self.state.publish("file", {"path": path})
        self.entries[path] = updated
        self._drop_unreadable(path, acl)
        log.info("user %s set the acl of %s: %s", peer.user, path, acl.to_json())
        return self.get(peer, path)

    def _drop_unreadable(self, path: str, acl: Acl) -> None:
        held = self.sources.get(path, {})
        for ep_id in list(held):  # a holder who may no longer read it is no source either
            holder = self.state.endpoints.get(ep_id)
            if holder is None or not filespec.may_read(holder.user, path, acl):
                del held[ep_id]
        partial = self.partial.get(path, {})
        for ep_id in list(partial):
            holder = self.state.endpoints.get(ep_id)
            if holder is None or not filespec.may_read(holder.user, path, acl):
                del partial[ep_id]

    # another hub of the cluster changed the index or an endpoint of its announced what it holds
    async def on_notify(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "file":
            await self.reload(str(payload["path"]))
        elif kind == "sources":
            self.apply_sources(payload)
        elif kind == "resync":
            for path in set(self.entries) | {json.loads(t)["path"] for t in await self.store.files()}:
                await self.reload(path)

    async def reload(self, path: str) -> None:
        text = await self.store.file(path)
        old = self.entries.pop(path, None)
        if old is not None:
            self._count(old, -1)
        if text is None:
            self.sources.pop(path, None)
            self.partial.pop(path, None)
            return
        try:
            entry = FileEntry.from_json(json.loads(text))
        except (ValueError, BadInput) as exc:
            log.error("file index: skipping an unreadable entry: %s", exc)
            return
        self.entries[path] = entry
        self._count(entry, 1)
        held = self.sources.setdefault(path, {})
        for other, file_hash in list(held.items()):
            if file_hash != entry.hash:
                del held[other]
        if old is None or old.hash != entry.hash:
            held[entry.ep] = entry.hash  # the publisher holds what it published
        self._drop_unreadable(path, entry.acl)

    def apply_sources(self, payload: dict[str, Any]) -> None:
        """Another hub's endpoint announced full copies it holds (`announce`'s `hold`, checked there)."""
        ep_id = str(payload["ep"])
        if payload.get("replace"):
            for held in self.sources.values():
                held.pop(ep_id, None)
        for path in payload.get("drop", []):
            self.sources.get(str(path), {}).pop(ep_id, None)
        for path, file_hash in payload.get("hold", []):
            entry = self.entries.get(str(path))
            if entry is not None and entry.hash == file_hash:
                self.sources.setdefault(entry.path, {})[ep_id] = entry.hash

    # sources
    async def announce(self, peer: Peer, body: dict[str, Any]) -> dict[str, Any]:
        """`{"hold": [{"path", "hash"}], "partial": [{"path", "hash", "have"}], "drop": [path], "replace": bool}`:
        the caller holds these files in full (`hold`), some chunks of these (`partial`, `have` a `ChunkSet`), no
        longer holds these (`drop`); `replace` forgets everything it announced before. Accepted only for current
        content the caller may read; the answer lists the rest as stale (`stale`, and `partial_stale` when the
        request had `partial`)."""
        ep = self.state.require_ep(peer)
        hold = body.get("hold", [])
        drop = validate.list_of(body.get("drop"), str, "drop")
        partial = body.get("partial", [])
        if not isinstance(hold, list) or not all(isinstance(h, dict) for h in hold):
            raise BadInput('hold must be a list of {"path": PATH, "hash": SHA256} objects')
        if not isinstance(partial, list) or not all(isinstance(h, dict) for h in partial):
            raise BadInput('partial must be a list of {"path": PATH, "hash": SHA256, "have": BASE64_BITMAP} objects')
        if len(hold) + len(drop) > MAX_ANNOUNCE:
            raise BadInput(f"at most {MAX_ANNOUNCE} files per announcement")
        if len(partial) > MAX_PARTIAL:
            raise BadInput(f"at most {MAX_PARTIAL} partial copies per announcement")
        replace = validate.field(body, "replace", bool, required=False) or False
        wanted = {filespec.check_path(h.get("path")): filespec.check_hash(h.get("hash")) for h in hold}
        for path in drop:
            filespec.check_path(path)
        pieces: dict[str, tuple[str, ChunkSet | None]] = {}
        for item in partial:
            path, file_hash = filespec.check_path(item.get("path")), filespec.check_hash(item.get("hash"))
            have = item.get("have")
            entry = self.entries.get(path)
            if entry is not None and entry.hash == file_hash:
                pieces[path] = (file_hash, ChunkSet.decode(have, len(entry.chunks), f"have of {path[:80]}"))
            elif not isinstance(have, str) or len(have) > filespec.MAX_HAVE_CHARS:
                raise BadInput(
                    f"have of {path[:80]} must be a base64 bitmap of at most {filespec.MAX_HAVE_CHARS} characters"
                )
            else:
                pieces[path] = (file_hash, None)  # not the current content: stale, whatever its bitmap
        fresh = [
            p
            for p, (_h, have) in pieces.items()
            if have is not None and (replace or ep.id not in self.partial.get(p, {}))
        ]
        mine = 0 if replace else sum(1 for copies in self.partial.values() if ep.id in copies)
        if mine + len(fresh) > MAX_PARTIAL:
            raise BadInput(f"at most {MAX_PARTIAL} partial copies per endpoint: finish, cancel or erase some first")
        if replace:
            for held in self.sources.values():
                held.pop(ep.id, None)
            for copies in self.partial.values():
                copies.pop(ep.id, None)
        for path in drop:
            self.sources.get(path, {}).pop(ep.id, None)
            self.partial.get(path, {}).pop(ep.id, None)
        accepted, stale = [], []
        for path, file_hash in wanted.items():
            entry = self.entries.get(path)
            if entry is None or entry.hash != file_hash or not filespec.may_read(peer.user, path, entry.acl):
                stale.append(path)
                self.sources.get(path, {}).pop(ep.id, None)
                continue
            self.sources.setdefault(path, {})[ep.id] = file_hash
            self.partial.get(path, {}).pop(ep.id, None)
            accepted.append(path)
        partial_accepted, partial_stale = [], []
        for path, (file_hash, have) in pieces.items():
            entry = self.entries.get(path)
            copies = self.partial.get(path, {})
            if have is None or entry is None or not filespec.may_read(peer.user, path, entry.acl):
                partial_stale.append(path)
                copies.pop(ep.id, None)
                continue
            self.partial.setdefault(path, {})[ep.id] = (file_hash, have)
            partial_accepted.append(path)
        for table in (self.sources, self.partial):
            for path in [p for p, held in table.items() if not held]:
                del table[path]
        await self._share_sources(ep.id, [(p, wanted[p]) for p in accepted], drop, replace)
        answer: dict[str, Any] = {"accepted": accepted, "stale": stale}
        if "partial" in body:
            answer.update(partial_accepted=partial_accepted, partial_stale=partial_stale)
        return answer

    async def _share_sources(self, ep_id: str, hold: list[tuple[str, str]], drop: list[str], replace: bool) -> None:
        """Tell the other hubs what the endpoint holds in full (partial copies stay with its own hub), in
        notifications that fit the store's size limit."""
        if not self.store.shared or not (hold or drop or replace):
            return
        batch: dict[str, Any] = {"ep": ep_id, "replace": replace, "hold": [], "drop": []}
        size = 100
        for key, items in (("drop", [(p, "") for p in drop]), ("hold", hold)):
            for path, file_hash in items:
                item: Any = path if key == "drop" else [path, file_hash]
                grows = len(path) + len(file_hash) + 8
                if size + grows > MAX_NOTIFY_SOURCES:
                    await self.state.publish("sources", batch)
                    batch, size = {"ep": ep_id, "replace": False, "hold": [], "drop": []}, 100
                batch[key].append(item)
                size += grows
        await self.state.publish("sources", batch)
