"""`ztm run agent`: open the agent's state, reconnect every joined mesh, serve the local API until signalled.

The API token is made once (`DATA/agent.token`, 0600) and copied to `~/.ztm/agents/HOST_PORT.token` so the CLI of
the OS user who started the agent finds it from the agent's address alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from pathlib import Path

from aiohttp import web

from ztm import aio, logs, pki, validate
from ztm.agent.api import AgentApi
from ztm.agent.direct import DirectServer
from ztm.agent.service import Agent
from ztm.config import AgentConfig, agents_registry_dir, token_file_name
from ztm.errors import BadInput, Unavailable, ZtmError
from ztm.permit import Permit

log = logging.getLogger("ztm.agent")


def run_agent(cfg: AgentConfig) -> int:
    """Run an agent in the foreground; returns the exit code. Startup errors raise `ZtmError`."""
    if (cfg.join is None) != (cfg.join_as is None) or (cfg.join is None) != (cfg.permit is None):
        raise BadInput("--join, --join-as and --permit go together")
    if cfg.join_as is not None:
        validate.endpoint_name(cfg.join_as, "--join-as")
    if cfg.direct_announce is not None and cfg.direct is None:
        raise BadInput("--direct-announce needs --direct (the address to listen on), e.g. --direct 0.0.0.0:7771")
    aio.install_uvloop()
    aio.tune_malloc()
    limit = aio.raise_open_files()
    if limit < 4096:
        log.warning("the open-files limit is %d: tunnels and proxies will refuse connections past about %d; "
                    "raise it (ulimit -n, or LimitNOFILE= in the unit)", limit, limit // 2 - 64)  # fmt: skip
    return asyncio.run(_main(cfg))


def load_token(data: Path) -> str:
    path = data / "agent.token"
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
    token = secrets.token_urlsafe(32)
    pki.write_private(path, token + "\n")
    return token


def publish_token(cfg: AgentConfig, token: str) -> Path | None:
    """Copy the token where this OS user's CLI looks for it; a failure only costs the convenience."""
    registry = agents_registry_dir()
    try:
        registry.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = registry / token_file_name(cfg.listen)
        pki.write_private(path, token + "\n")
    except OSError as exc:
        log.warning("could not publish the API token in %s: %s", registry, exc)
        return None
    return path


async def _main(cfg: AgentConfig) -> int:
    cfg.data.mkdir(mode=0o700, parents=True, exist_ok=True)
    ring = logs.setup(cfg.data / "agent.log")
    agent = Agent(cfg.data, ring.tail)
    published: Path | None = None
    try:
        token = load_token(cfg.data)
        api = AgentApi(agent, cfg.listen, token, ring.tail)
        runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, cfg.listen.host, cfg.listen.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ZtmError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
        published = publish_token(cfg, token)
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
        log.info("agent API on http://%s (token in %s)", cfg.listen, cfg.data / "agent.token")
        print(api.gui.startup_message(), flush=True)
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
        if published is not None:
            with contextlib.suppress(OSError):
                if published.read_text().strip() == load_token(cfg.data):
                    published.unlink()


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
