"""`ztm run agent`: open the agent's state, reconnect every joined mesh, serve the local API until signalled.

The API serves on TCP (`--listen`, for the GUI and for clients that present the token) and on the local UNIX socket
`DATA/agent.sock` (0600 in the 0700 data directory; the caller is known from `SO_PEERCRED`), linked from
`~/.ztm/agents/HOST_PORT.sock` so the CLI of the OS user who started the agent finds it from the agent's address
alone. The API token (`DATA/agent.token`, 0600) is made anew at every start: a token someone saw is dead after a
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from ztm import aio, datadir, keylog, localsock, logs, pki, validate
from ztm.agent import punchmsg
from ztm.agent.api import AgentApi
from ztm.agent.direct import DirectServer
from ztm.agent.hubpick import check_zone
from ztm.agent.punch import FD_SPARE, raise_fd_limit
from ztm.agent.service import Agent
from ztm.apps.net.options import EXPOSE_PORTS_WARNING, TUN_NEEDS_CAP, has_net_admin
from ztm.config import AgentConfig, agents_registry_dir, socket_link_name, token_file_name
from ztm.errors import BadInput, Unavailable, ZtmError
from ztm.permit import Permit

log = logging.getLogger("ztm.agent")


def run_agent(cfg: AgentConfig) -> int:
    """Run an agent in the foreground; returns the exit code. Startup errors raise `ZtmError`."""
    if (cfg.join is None) != (cfg.join_as is None) or (cfg.join is None) != (cfg.permit is None):
        raise BadInput("--join, --join-as and --permit go together")
    if cfg.join_as is not None:
        validate.endpoint_name(cfg.join_as, "--join-as")
    if cfg.zone is not None:
        check_zone(cfg.zone)
    if cfg.direct_announce is not None and cfg.direct is None:
        raise BadInput("--direct-announce needs --direct (the address to listen on), e.g. --direct 0.0.0.0:7771")
    aio.install_uvloop()
    aio.tune_malloc()
    limit = aio.raise_open_files()
    if limit < 4096:
        log.warning("the open-files limit is %d: tunnels and proxies will refuse connections past about %d; "
                    "raise it (ulimit -n, or LimitNOFILE= in the unit)", limit, limit // 2 - 64)  # fmt: skip
    return asyncio.run(_main(cfg))


def new_token(data: Path) -> str:
    """A fresh API token in `DATA/agent.token` (0600), replacing the one of the previous run."""
    token = secrets.token_urlsafe(32)
    pki.write_private(data / "agent.token", token + "\n")
    return token


def publish_socket(cfg: AgentConfig, sock_path: Path) -> Path | None:
    """Link the local socket where this OS user's CLI looks for it; a failure only costs the convenience."""
    registry = agents_registry_dir()
    try:
        registry.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = registry / socket_link_name(cfg.listen)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        tmp.symlink_to(sock_path.absolute())
        tmp.replace(path)
        # a copy of the token left there by an older version is dead now: remove it
        (registry / token_file_name(cfg.listen)).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not link the local socket in %s: %s", registry, exc)
        return None
    return path


async def _main(cfg: AgentConfig) -> int:
    made_private = datadir.prepare(cfg.data)
    ring = logs.setup(cfg.data / "agent.log")
    if made_private is not None:
        log.warning("%s", made_private)
    secrets_file = keylog.check()
    if secrets_file is not None:
        log.warning("%s", keylog.warning(secrets_file))
    agent = Agent(cfg.data, ring.tail)
    agent.zone = _zone(agent, cfg.zone)
    agent.p2p = cfg.p2p
    agent.p2p_keepalive = cfg.p2p_keepalive
    k = raise_fd_limit(cfg.p2p_birthday)
    if k < cfg.p2p_birthday:
        log.warning("--p2p-birthday %d needs %d file descriptors and the limit (RLIMIT_NOFILE) allows fewer: %d "
                    "sockets a side instead", cfg.p2p_birthday, 2 * cfg.p2p_birthday + FD_SPARE, k)  # fmt: skip
    every = cfg.p2p_birthday_every
    agent.birthday = punchmsg.Birthday(k, every=every, total=4, window=2 * every)
    agent.credit_warn = cfg.credit_warn
    agent.net = cfg.net
    if cfg.net.tun and not has_net_admin():
        log.warning("%s", TUN_NEEDS_CAP)
        agent.net = replace(cfg.net, tun=False)
    if cfg.net.expose_ports:
        log.warning("%s", EXPOSE_PORTS_WARNING)
    published: Path | None = None
    sock_path = cfg.data / localsock.SOCKET_NAME
    try:
        token = new_token(cfg.data)
        api = AgentApi(agent, cfg.listen, token, ring.tail)
        runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, cfg.listen.host, cfg.listen.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ZtmError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
        try:
            await web.SockSite(runner, localsock.bind(sock_path)).start()
        except OSError as exc:
            await runner.cleanup()
            raise ZtmError(f"cannot listen on the local socket {sock_path}: {exc.strerror or exc}") from None
        published = publish_socket(cfg, sock_path)
        direct = DirectServer(lambda: agent.meshes.values())
        if cfg.direct is not None:
            try:
                await direct.start(cfg.direct)
            except OSError as exc:
                await runner.cleanup()
                raise ZtmError(f"cannot listen for direct connections on {cfg.direct}: {exc.strerror or exc}") from None
            agent.direct_address = cfg.direct_announce or cfg.direct
            log.info("direct connections from peers on %s", cfg.direct)
        agent.start()
        aio.spawn(_sample_rates(api), name="rate-sampler")
        log.info("agent API on http://%s (token in %s) and on %s", cfg.listen, cfg.data / "agent.token", sock_path)
        _announce_signin(api, cfg.data)
        if cfg.join is not None and cfg.join not in agent.meshes:
            aio.spawn(_unattended_join(agent, cfg), name="unattended-join")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("agent stopping")
        direct.close()
        await runner.cleanup()
        return 0
    finally:
        await agent.close_quietly()
        with contextlib.suppress(OSError):
            if published is not None and published.readlink() == sock_path.absolute():
                published.unlink()
        with contextlib.suppress(OSError):
            sock_path.unlink()


def _zone(agent: Agent, given: str | None) -> str:
    """The agent's zone: `--zone` (saved for the next runs, so `ztm start agent` without it keeps it), else the saved
    one ("" none; `--zone ''` clears it)."""
    if given is not None:
        agent.store.set_meta("zone", given)
        if given:
            log.info("zone %s: hubs of this zone first", given)
        return given
    saved = agent.store.get_meta("zone") or ""
    try:
        return check_zone(saved)
    except BadInput:
        log.warning("ignoring the saved zone %r: not a zone name", saved[:40])
        return ""


SIGNIN_FILE = "gui-signin.txt"


def _announce_signin(api: AgentApi, data: Path) -> None:
    """The GUI's one-time sign-in link: on stdout only when it is a terminal (under systemd or in the background
    stdout is a journal or a file others may read), else in `DATA/gui-signin.txt` (0600), which stdout names."""
    message = api.gui.startup_message()
    if sys.stdout.isatty():
        print(message, flush=True)
        return
    path = data / SIGNIN_FILE
    try:
        pki.write_private(path, message + "\n")
    except OSError as exc:
        log.warning("could not write the GUI sign-in link to %s: %s; run 'ztm gui' for one", path, exc)
        return
    print(f"GUI sign-in link in {path} (readable by you only); 'ztm gui' makes another", flush=True)


async def _unattended_join(agent: Agent, cfg: AgentConfig) -> None:
    """`--join`: keep trying while the hub is unreachable; stop at an error that retrying cannot fix."""
    assert cfg.join is not None and cfg.join_as is not None and cfg.permit is not None
    backoff = aio.Backoff(0.2, 10.0)
    while True:
        try:
            permit = Permit.parse(cfg.permit.read_text())
            await agent.join(cfg.join, cfg.join_as, permit.to_json_obj(), [])
            return
        except OSError as exc:
            log.error("unattended join: cannot read permit %s: %s", cfg.permit, exc.strerror or exc)
            return
        except Unavailable as exc:
            log.warning("unattended join of %s: %s; retrying", cfg.join, exc.message)
        except ZtmError as exc:
            log.error("unattended join of %s failed: %s (fix it, then `ztm join` or restart)", cfg.join, exc.message)
            return
        await asyncio.sleep(backoff.next())


async def _sample_rates(api: AgentApi) -> None:
    """Sample byte counters every second so `ztm stats` rates cover a full window from the first call."""
    while True:
        await asyncio.sleep(1.0)
        for name in list(api.agent.meshes):
            with contextlib.suppress(ZtmError):
                api.agent.stats(name, api.meter.sample)
