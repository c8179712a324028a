"""`TerminalApp`: remote shells (on a PTY) and remote commands (on pipes) on this endpoint, for its owner and the
users it lists; and, on the opener's side, the stream that carries such a session to another endpoint.

Target: sessions are off until this endpoint's owner turns them on here, per mesh (`ztm terminal enable`, local API
only: no relayed call can), because whoever holds the mesh's CA (its hub operator) can mint the owner's identity.
When on, a stream for service `shell` or `exec` is accepted only if the caller's user, as the hub asserts it from
the caller's certificate, is this endpoint's owner (the user of its own certificate) or listed with `--add-user`,
and the mesh's policy allows it `terminal` here (`ztm.agent.gate`; both must allow); anyone else is refused with a
reason before anything runs. A live session a new policy no longer allows is told why and ended at once (its
processes killed as when the opener hangs up). Each session is logged here (who, from which endpoint, what,
how it ended) and kept in a short in-memory history. Processes run as the agent's OS user, in the agent's HOME.
Configuration (`enabled`, `shell`, `users`) lives in the agent database and survives restarts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import pwd
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from ztm import h2, validate
from ztm.agent.apps import AppContext, Caller, MeshApp
from ztm.agent.e2estream import E2EStream
from ztm.apps.terminal import session
from ztm.apps.terminal.protocol import MODES, Decoder, Error, Open, ProtocolError, encode
from ztm.errors import BadInput, Forbidden, NotFound, ZtmError
from ztm.policy import AppTarget
from ztm.timefmt import iso

log = logging.getLogger("ztm.terminal")

POLICY_TARGET = AppTarget("terminal", "")
"""What the mesh's policy is asked for a session here (shell and exec alike)."""
REVOKED_LINGER = 0.5
"""Seconds a session the policy no longer allows has to deliver its reason before its stream is reset."""
HISTORY = 50
"""Sessions kept in the in-memory history (`GET .../apps/terminal`)."""
MAX_USERS = 200
UNSET: Any = object()


def login_shell() -> str:
    """The agent's OS user's login shell if it is executable here, else /bin/sh."""
    with contextlib.suppress(KeyError):
        shell = pwd.getpwuid(os.getuid()).pw_shell
        if shell and Path(shell).is_absolute() and os.access(shell, os.X_OK):
            return shell
    return "/bin/sh"


def parse_shell(value: object) -> list[str]:
    """A shell command line (`/bin/bash --login`): its words, the first an executable on this machine."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput("shell must be a command such as /bin/bash or 'zsh -l'")
    if len(value) > 1024 or any(not c.isprintable() for c in value):
        raise BadInput("shell must be one printable line of at most 1024 characters")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise BadInput(f"shell {value!r}: {exc}") from None
    if not words:
        raise BadInput("shell must be a command such as /bin/bash or 'zsh -l'")
    found = shutil.which(words[0])
    if found is None:
        raise BadInput(f"shell {words[0]!r} is not an executable on this endpoint: give its full path")
    return [str(Path(found).absolute()), *words[1:]]


class TerminalApp(MeshApp):
    name = "terminal"
    description = "remote shells and commands on endpoints (owner and listed users only)"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.enabled = False
        """Sessions into this endpoint are allowed at all (`ztm terminal enable`); off by default."""
        self.shell: str | None = None
        """The configured shell command line; None = the login shell."""
        self.users: list[str] = []
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    # lifecycle
    async def start(self) -> None:
        items = self.ctx.config_items()
        shell, users = items.get("shell"), items.get("users")
        self.enabled = items.get("enabled") is True
        if isinstance(shell, str):
            self.shell = shell
        if isinstance(users, list):
            self.users = sorted({u for u in users if isinstance(u, str)})
        await super().start()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # let each session kill its processes
            await asyncio.wait(tasks, timeout=session.GRACE * 2 + 1)
        await super().stop()

    # configuration
    def shell_argv(self) -> list[str]:
        if self.shell is not None:
            with contextlib.suppress(BadInput):
                return parse_shell(self.shell)
            log.warning("mesh %s: terminal shell %r is not usable here; using /bin/sh", self.ctx.mesh, self.shell)
            return ["/bin/sh"]
        return [login_shell()]

    def configure(
        self, shell: Any = UNSET, add_users: Any = None, del_users: Any = None, enabled: Any = UNSET
    ) -> dict[str, Any]:
        """Turn sessions on or off, change the shell (None: back to the login shell) and the user list; nothing
        changes if any part is bad."""
        if enabled is not UNSET and not isinstance(enabled, bool):
            raise BadInput("enabled must be true or false ('ztm terminal enable' or 'ztm terminal disable')")
        new_shell = self.shell
        if shell is not UNSET:
            new_shell = None if shell is None or shell == "" else " ".join(shlex.quote(w) for w in parse_shell(shell))
        adding = [validate.user_name(u) for u in validate.list_of(add_users or [], str, "add_users")]
        removing = [validate.user_name(u) for u in validate.list_of(del_users or [], str, "del_users")]
        users = set(self.users)
        missing = [u for u in removing if u not in users and u not in adding]
        if missing:
            raise NotFound(f"user {missing[0]!r} is not in this endpoint's terminal users; see 'ztm terminal config'")
        users = (users | set(adding)) - set(removing)
        if len(users) > MAX_USERS:
            raise BadInput(f"at most {MAX_USERS} terminal users")
        if new_shell != self.shell:
            if new_shell is None:
                self.ctx.config_delete("shell")
            else:
                self.ctx.config_set("shell", new_shell)
            self.shell = new_shell
        if sorted(users) != self.users:
            self.ctx.config_set("users", sorted(users))
            self.users = sorted(users)
        if enabled is not UNSET and enabled != self.enabled:
            if enabled:
                self.ctx.config_set("enabled", True)
            else:
                self.ctx.config_delete("enabled")
            self.enabled = enabled
        changes = [f"sessions {'on' if self.enabled else 'off'}"] if enabled is not UNSET else []
        changes += [f"shell {self.shell or 'login shell'}"] if shell is not UNSET else []
        changes += [f"user {u} added" for u in adding] + [f"user {u} removed" for u in removing]
        if changes:
            log.info("mesh %s: terminal configured: %s", self.ctx.mesh, ", ".join(changes))
        return self.describe()

    def describe(self) -> dict[str, Any]:
        c = self.counters
        return {
            "enabled": self.enabled,
            "shell": self.shell,
            "effective_shell": shlex.join(self.shell_argv()),
            "owner": self.ctx.user,
            "users": list(self.users),
            "sessions": c["terminal:sessions"],
            "active": c["terminal:active"],
            "refused": c["terminal:refused"],
            "history": list(reversed(self.history)),
        }

    def allowed(self, user: str) -> bool:
        return bool(user) and (user == self.ctx.user or user in self.users)

    # opener side
    async def open_session(self, ep: str, opened: Open) -> E2EStream:
        """A stream to the terminal app on endpoint `ep` with the session opened; ZtmError if it is refused."""
        record = self.ctx.session.record
        if ep in (record.ep_id, record.ep_name):
            raise BadInput(f"{ep} is this endpoint: a terminal session goes to another one; use a local shell here")
        stream = await self.ctx.open_stream(ep, opened.mode)
        try:
            await stream.write(encode(opened))
        except h2.H2Error as exc:
            stream.reset()
            raise ZtmError(f"the session to {ep} broke while opening: {exc}") from None
        return stream

    def _refusal(self, user: str) -> tuple[str, str] | None:
        """Why `user` may not open a session here (what the log says, what the caller is told), or None."""
        ep = self.ctx.session.record.ep_name
        if not self.enabled:
            return (
                "the terminal is off here",
                f"the terminal is off on endpoint {ep!r}: its owner turns it on there with 'ztm terminal enable'",
            )
        if not self.allowed(user):
            return (
                "not the owner nor a listed user",
                f"user {user!r} may not open a terminal on endpoint {ep!r}: only its owner ({self.ctx.user}) and the "
                "users it lists with 'ztm terminal config --add-user'",
            )
        return None

    # target side
    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        if service not in MODES:
            await self.ctx.refuse(stream_id, f"terminal offers {' and '.join(MODES)}, not {service[:60]!r}")
            return
        refusal = self._refusal(caller.user)
        if refusal is not None:
            reason, message = refusal
            self.counters["terminal:refused"] += 1
            log.warning(
                "mesh %s: terminal %s refused for user %s from endpoint %s (%s): %s",
                self.ctx.mesh,
                service,
                caller.user,
                caller.name,
                caller.ep_id,
                reason,
            )
            await self.ctx.refuse(stream_id, message)
            return
        try:
            self.ctx.session.gate.check(caller, POLICY_TARGET)
        except Forbidden as exc:
            self.counters["terminal:refused"] += 1
            await self.ctx.refuse(stream_id, exc.message)
            return
        stream = await self.ctx.accept(stream_id)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        untrack = self.ctx.session.gate.track(caller, POLICY_TARGET, lambda reason: _revoke(stream, reason))
        try:
            await self._serve(stream, caller, service)
        finally:
            untrack()
            if task is not None:
                self._tasks.discard(task)
            stream.reset()

    async def _serve(self, stream: E2EStream, caller: Caller, service: str) -> None:
        decoder = Decoder()
        try:
            opened, pending = await asyncio.wait_for(session.read_open(stream, decoder), session.OPEN_WAIT)
            if opened.mode != service:
                raise ProtocolError(f"the stream is for {service}, the open frame asks for {opened.mode}")
        except (ProtocolError, TimeoutError, h2.H2Error) as exc:
            reason = exc.message if isinstance(exc, ZtmError) else "no open frame in time"
            log.info("mesh %s: terminal stream from %s dropped: %s", self.ctx.mesh, caller.name, reason)
            with contextlib.suppress(h2.H2Error):
                await stream.write(encode(Error("protocol", reason)), end_stream=True)
            return
        plan = self._plan(opened, caller)
        number = next(self._numbers)
        record: dict[str, Any] = {
            "id": number,
            "user": caller.user,
            "ep": caller.ep_id,
            "name": caller.name,
            "mode": opened.mode,
            "command": list(plan.argv),
            "started": iso(time.time()),
            "ended": None,
            "result": None,
        }
        what = f"{opened.mode} {session.describe_command(plan.argv)}"
        who = f"user {caller.user} from endpoint {caller.name} ({caller.ep_id})"
        try:
            child = await session.start(stream, plan, opened)
        except OSError as exc:
            reason = f"cannot start {plan.argv[0]}: {exc.strerror or exc}"
            log.warning("mesh %s: terminal session %d for %s failed: %s", self.ctx.mesh, number, who, reason)
            with contextlib.suppress(h2.H2Error):
                await stream.write(encode(Error("unavailable", reason)), end_stream=True)
            return
        began = time.monotonic()
        log.info("mesh %s: terminal session %d opened by %s: %s", self.ctx.mesh, number, who, what)
        self.history.append(record)
        c = self.counters
        c["terminal:sessions"] += 1
        c["terminal:active"] += 1
        outcome = "hung up: the agent stopped"
        try:
            outcome = await session.Runner(stream, child, decoder).run(pending)
        finally:
            c["terminal:active"] -= 1
            record["ended"] = iso(time.time())
            record["result"] = outcome
            log.info(
                "mesh %s: terminal session %d (user %s from endpoint %s) ended after %.1f s: %s",
                self.ctx.mesh,
                number,
                caller.user,
                caller.name,
                time.monotonic() - began,
                outcome,
            )

    def _plan(self, opened: Open, caller: Caller) -> session.Plan:
        shell = self.shell_argv()
        if opened.mode == "shell":
            argv = shell
        else:
            words = opened.command
            argv = [*shell, "-c", words[0] if len(words) == 1 else shlex.join(words)]
        home = os.environ.get("HOME") or "/"
        try:
            account = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            account = str(os.getuid())
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LANGUAGE", "TZ") or k.startswith("LC_")}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            {
                "HOME": home,
                "USER": account,
                "LOGNAME": account,
                "SHELL": shell[0],
                "ZTM_TERMINAL_USER": caller.user,
                "ZTM_TERMINAL_FROM": caller.name,
            }
        )
        if opened.mode == "shell":
            env["TERM"] = opened.term
        return session.Plan(tuple(argv), env, home if Path(home).is_dir() else "/")


def _revoke(stream: E2EStream, reason: str) -> None:
    """End a session the policy no longer allows: the opener is told why (an `Error` frame and the stream's end),
    then the stream is reset, which ends the session here (its processes get SIGHUP, then SIGKILL)."""
    data = encode(Error("forbidden", reason))
    try:
        if stream.write_nowait(data) == len(data):
            stream.end_nowait()
            asyncio.get_running_loop().call_later(REVOKED_LINGER, stream.reset)
            return
    except h2.H2Error:
        pass
    stream.reset()
