"""`HubPolicy`: the mesh's access policy as the hub keeps it (issue 16): versions in the store, the current one
loaded (`ztm.policy.Policy`), told to every agent, and enforced where the hub can.

* Set / rollback (root or an admin the CURRENT policy names): the text is parsed (a `PolicyError` is a 400 naming
  the line and column), its `tests` run against the mesh's endpoints and their tags (any failure refuses the whole
  policy, nothing is stored), a non-root caller may not change `admins`; then the version is stored with its audit
  row in one transaction and sent to every session here (`policy` event) and to the other hubs (`policy`
  notification: they reload the newest version from the store and send it to theirs).
* The `policy` event goes to a session right after its `hello`, before anything else (`push_to`), so an agent never
  serves a stream before it has the policy of the mesh. The event line is encoded once per version.
* Labels: a `tag:X` label may only be given by a user the current policy's `tagOwners` allows (`check_tags`).
* First line: a relayed stream whose caller no rule of the policy allows anything of the app's kind at the target
  is refused at the hub (`first_line`); the exit still decides in full.

No policy set (version 0) means today's behaviour: the apps' own lists decide, any member may tag.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from ztm.errors import BadInput, Forbidden, NotFound
from ztm.hub import limits
from ztm.hub.authority import ROOT_USER
from ztm.hub.store import PolicyVersion
from ztm.policy import AppTarget, Place, Policy, Subject, parse_app_target, parse_subject, tags_of_labels

if TYPE_CHECKING:
    from ztm.hub.state import HubState, Peer, Session
    from ztm.hub.store import EndpointRecord

log = logging.getLogger("ztm.hub")

APP_KINDS = {"tunnel": "tunnel", "terminal": "terminal", "proxy": "proxy", "files": "files", "net": "ip"}
"""App name -> the policy kind the hub's first line checks (any other app: "app"; network mode's `net` streams, packets
and ports, are kind "ip")."""
UNGATED_APPS = frozenset({"calls"})
"""Reserved app names the first line leaves to the callee (`ztm.agent.peercall`: root's remote calls, which the
callee authorises itself)."""
NO_POLICY = PolicyVersion(version=0, text="", set_by="", set_at=0.0)


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class HubPolicy:
    def __init__(self, state: HubState) -> None:
        self.state = state
        self.current: Policy | None = None
        """The newest version, loaded; None when no policy is set."""
        self.record: PolicyVersion = NO_POLICY
        self.line = _encode({"type": "policy", "version": 0, "text": ""})
        """The current `policy` event, encoded once for every session."""
        self._parsing = asyncio.Semaphore(1)
        self._drafts = asyncio.Semaphore(1)
        """Members' drafts (`check`, dry runs) parse one at a time apart from sets: a member who sends drafts in a loop
        cannot make an admin's set wait behind them."""

    @property
    def version(self) -> int:
        return self.record.version

    # loading
    async def load(self) -> bool:
        """Take the newest version from the store if it is newer than the one held; True when it changed (the
        sessions here were sent it)."""
        newest = await self.state.store.policy(None)
        if newest is None or newest.version <= self.version:
            return False
        try:
            loaded = await self._load(newest.text, newest.version)
        except BadInput as exc:  # stored by a hub whose parser accepted it: keep enforcing the one held
            log.error("policy version %d in the store does not load here: %s", newest.version, exc.message)
            return False
        self._install(newest, loaded)
        return True

    def _install(self, record: PolicyVersion, loaded: Policy) -> None:
        if record.version <= self.version:
            return  # a newer version (set at another hub) arrived first
        self.record, self.current = record, loaded
        self.line = _encode({"type": "policy", "version": record.version, "text": record.text})
        for session in self.state.sessions.values():
            self.push_to(session)
        log.info("policy version %d (set by %s) is in force", record.version, record.set_by or "?")

    def push_to(self, session: Session) -> None:
        """Queue the current `policy` event for `session` (replacing one still waiting)."""
        session.push_line("policy", self.line, "policy")

    # the routes
    async def get_version(self, version: int | None) -> dict[str, Any]:
        if version is None or version == self.version:
            return _record_view(self.record)
        record = await self.state.store.policy(version)
        if record is None:
            raise NotFound(f"no policy version {version}; see GET /api/policy/history (ztm policy history)")
        return _record_view(record)

    async def history(self) -> list[dict[str, Any]]:
        records = await self.state.store.policy_versions()
        return [
            {
                "version": r.version,
                "set_by": r.set_by,
                "set_at": r.set_at,
                "note": r.note,
                "lines": r.text.count("\n") + (1 if r.text and not r.text.endswith("\n") else 0),
                "sha256": hashlib.sha256(r.text.encode()).hexdigest(),
            }
            for r in reversed(records)
        ]

    async def require_admin(self, peer: Peer, what: str) -> None:
        """Root, or a user the current policy names in `admins`; otherwise 403 and a `denied` audit row."""
        admins = self.current.admins if self.current is not None else frozenset()
        if peer.user == ROOT_USER or peer.user in admins:
            return
        refusal = f'only root or a policy admin (the policy\'s "admins") may {what}; you are {peer.user!r}'
        await self.state.audit.denied(peer, what, "policy", refusal)
        raise Forbidden(refusal)

    async def set(self, peer: Peer, text: str, *, dry_run: bool, note: str, rollback_of: int = 0) -> dict[str, Any]:
        """Check `text` as the next version (parse, tests, admins) and store and send it unless `dry_run`."""
        action = "policy-rollback" if rollback_of else "policy-set"
        if not dry_run:
            await self.require_admin(peer, "roll the policy back" if rollback_of else "set the policy")
        predicted = self.version + 1  # the version it will get unless another hub stores one first
        policy = await self._load(text, 0 if dry_run else predicted, draft=dry_run)
        tests = policy.tests
        failures = policy.run_tests(self.tags_of)
        if failures:
            shown = "; ".join(f.message for f in failures[:5])
            more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
            raise BadInput(f"policy refused, {len(failures)} of {tests} tests failed: {shown}{more}")
        old_admins = self.current.admins if self.current is not None else frozenset()
        if peer.user != ROOT_USER and policy.admins != old_admins:
            refusal = f'only root may change the policy\'s "admins"; you are {peer.user!r}'
            if not dry_run:
                await self.state.audit.denied(peer, action, "policy", refusal)
            raise Forbidden(refusal)
        line = len(_encode({"type": "policy", "version": 2**31 - 1, "text": text}))
        if line > limits.EVENT_LINE_BYTES:
            raise BadInput(
                f"this policy's event to the agents would be {line} bytes (the text with JSON escapes: quotes, "
                f"backslashes, control characters); agents read at most {limits.EVENT_LINE_BYTES}: shorten it"
            )
        if dry_run:
            return {"version": 0, "tests": tests}
        detail: dict[str, Any] = {"note": note, "sha256": hashlib.sha256(text.encode()).hexdigest(), "tests": tests}
        if rollback_of:
            detail["rollback_to"] = rollback_of
        audit = self.state.audit.entry(peer, action, "policy", detail)
        version = await self.state.store.add_policy(text, peer.user, note, audit)
        self.state.counters["audit_rows"] += 1
        self.state.counters["policy_versions"] += 1
        record = await self.state.store.policy(version) or PolicyVersion(version, text, peer.user, audit.at, note)
        self._install(record, policy if version == predicted else await self._load(text, version))
        await self.state.publish("policy", {"version": version})
        log.info("user %s set policy version %d (%d tests passed)%s", peer.user, version, tests,
                 f": {note}" if note else "")  # fmt: skip
        return {"version": version, "tests": tests}

    async def rollback(self, peer: Peer, version: int) -> dict[str, Any]:
        await self.require_admin(peer, "roll the policy back")
        old = await self.state.store.policy(version)
        if old is None:
            raise NotFound(f"no policy version {version}; see GET /api/policy/history (ztm policy history)")
        return await self.set(peer, old.text, dry_run=False, note=f"rollback to {version}", rollback_of=version)

    async def check(self, source: str, to: str, target: str, text: str | None) -> dict[str, Any]:
        """What the policy (or the draft `text`) decides for `source` (USER or USER@EP) reaching `target` at `to`
        (an endpoint name, or tag:NAME for any endpoint with that tag)."""
        what = parse_app_target(target)
        who = parse_subject(source)
        if who.ep:
            ep = self._named(who.ep)
            if ep is not None:
                who = Subject(who.user, who.ep, tags_of_labels(ep.labels))
        if to.startswith("tag:"):
            where = Place("", frozenset({to}))
        else:
            ep = self._named(to)
            if ep is None:
                raise NotFound(f"no endpoint named {to!r} in this mesh; give an endpoint name or tag:NAME")
            where = Place(ep.name, tags_of_labels(ep.labels))
        policy = await self._load(text, 0, draft=True) if text is not None else self.current
        if policy is None:
            return {
                "allowed": True, "line": 0, "rule": "", "why": "no policy is set: the apps' own lists decide",
                "version": 0,
            }  # fmt: skip
        decision = policy.decide(who, where, what)
        return {
            "allowed": decision.allowed, "line": decision.line, "rule": decision.rule, "why": decision.why(),
            "version": policy.version,
        }  # fmt: skip

    async def _load(self, text: str, version: int, *, draft: bool = False) -> Policy:
        """Parse in a thread, one text at a time (drafts apart): a long policy takes up to hundreds of ms to compile,
        which must not stall the relay on the event loop."""
        async with self._drafts if draft else self._parsing:
            return await asyncio.to_thread(Policy.load, text, version)

    # enforcement at the hub
    def check_tags(self, user: str, labels: list[str]) -> None:
        """403 if `user` may not give one of `labels` that is a tag (no policy: anyone may)."""
        policy = self.current
        if policy is None:
            return
        for tag in sorted(tags_of_labels(labels)):
            if not policy.may_tag(user, tag):
                raise Forbidden(
                    f"policy version {self.version}: tagOwners of {tag!r} does not name user {user!r} (nor a group "
                    f"of theirs), so they may not give that tag; ask root or a tag owner"
                )

    def first_line(self, caller: EndpointRecord, target: EndpointRecord, app: str) -> None:
        """403 "policy: ..." if no rule allows `caller` anything of `app`'s kind at `target`."""
        policy = self.current
        if policy is None or app in UNGATED_APPS:
            return
        kind = APP_KINDS.get(app, "app")
        who = Subject(caller.user, caller.name, tags_of_labels(caller.labels))
        where = Place(target.name, tags_of_labels(target.labels))
        decision = policy.decide_kind(who, where, kind)
        if not decision.allowed:
            self.state.counters["streams_denied_by_policy"] += 1
            raise Forbidden(f"policy: {decision.why()} ({caller.user}@{caller.name} -> {target.name}:{kind})")

    def check_write(self, caller: EndpointRecord, path: str, what: str) -> None:
        """403 "policy: ..." if the policy does not allow `caller` to `what` (publish, unpublish, change the acl of)
        `path` in the mesh file space: `files-write/PATH` at the caller's own endpoint, where the file is served
        from (no policy: the file space's own rules decide alone)."""
        policy = self.current
        if policy is None:
            return
        tags = tags_of_labels(caller.labels)
        decision = policy.decide(Subject(caller.user, caller.name, tags), Place(caller.name, tags),
                                 AppTarget("files-write", path))  # fmt: skip
        if not decision.allowed:
            self.state.counters["file_writes_denied_by_policy"] += 1
            who = f"{caller.user}@{caller.name}"
            raise Forbidden(f"policy: {decision.why()} (files-write{path} by {who}, to {what} it)")

    def tags_of(self, name: str) -> frozenset[str]:
        ep = self._named(name)
        return tags_of_labels(ep.labels) if ep is not None else frozenset()

    def _named(self, name: str) -> EndpointRecord | None:
        named = [e for e in self.state.endpoints.values() if e.name == name]
        return named[0] if named else None


def _record_view(r: PolicyVersion) -> dict[str, Any]:
    return {"version": r.version, "text": r.text, "set_by": r.set_by, "set_at": r.set_at}
