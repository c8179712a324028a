"""`ztm run hub`: open the hub's state, create the CA and root permit on first start, serve until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from ztm import aio, datadir, h2, keylog, logs, pki
from ztm.addr import Address
from ztm.config import HubConfig
from ztm.errors import BadInput, Unavailable, ZtmError
from ztm.hub import limits
from ztm.hub.admin import serve_admin
from ztm.hub.authority import Authority
from ztm.hub.routes import HubRoutes
from ztm.hub.state import HubState
from ztm.hub.store_sqlite import SqliteStore
from ztm.permit import make_permit

log = logging.getLogger("ztm.hub")

DB_NAME = "ztm-hub.db"


def run_hub(cfg: HubConfig) -> int:
    """Run a hub in the foreground; returns the process exit code. Startup errors raise `ZtmError`."""
    aio.install_uvloop()
    aio.tune_malloc()
    return asyncio.run(_main(cfg))


async def _main(cfg: HubConfig) -> int:
    names = cfg.names or _default_names(cfg)
    _raise_file_limit(cfg.max_agents)
    made_private = datadir.prepare(cfg.data)
    ring = logs.setup(cfg.data / "hub.log")
    if made_private is not None:
        log.warning("%s", made_private)
    secrets_file = keylog.check()
    if secrets_file is not None:
        log.warning("%s", keylog.warning(secrets_file))
    store = SqliteStore(cfg.data / DB_NAME)
    try:
        store.lock()
        authority = await Authority.load(store, cfg.data, names)
        state = await HubState.load(
            store,
            authority,
            max_agents=cfg.max_agents,
            cert_ttl=cfg.cert_ttl,
            heartbeat=cfg.heartbeat,
            max_endpoints_per_user=cfg.max_endpoints_per_user,
        )
        routes = HubRoutes(state, ring, await store.files())
        try:
            server = await h2.serve(
                routes.handle,
                cfg.listen.host,
                cfg.listen.port,
                authority.server_context,
                on_connect=routes.on_connect,
                on_handshake_failure=routes.on_handshake_failure,
                settings=h2.H2Settings(max_concurrent_streams=limits.MAX_CONCURRENT_STREAMS),
            )
        except OSError as exc:
            raise ZtmError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from None
        # Every listener is up before the permit is written: the permit is what tells an operator (and the
        # tests) that the hub is ready.
        admin = None
        if cfg.admin is not None:
            try:
                admin = await serve_admin(state, cfg.admin.host, cfg.admin.port)
            except OSError as exc:
                server.close()
                raise ZtmError(f"cannot listen on admin address {cfg.admin}: {exc.strerror or exc}") from None
        _write_permit(cfg, authority)
        log.info(
            "hub %s of mesh %s listening on %s (agents dial %s)",
            authority.hub_id,
            authority.mesh_id,
            cfg.listen,
            ", ".join(map(str, names)),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sweeper = aio.spawn(_sweep(state, authority), name="hub-sweeper")
        await stop.wait()
        log.info("hub stopping")
        sweeper.cancel()
        server.close()
        if admin is not None:
            admin.close()
        for session in list(state.sessions.values()):
            session.close_connection()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
        await state.sweep()
        return 0
    finally:
        await store.close()


def _default_names(cfg: HubConfig) -> tuple[Address, ...]:
    if cfg.listen.host in ("0.0.0.0", "::"):
        raise BadInput(
            "--names is required when listening on all interfaces: give the address agents dial, "
            "e.g. --names 1.2.3.4:8888"
        )
    return (cfg.listen,)


def _write_permit(cfg: HubConfig, authority: Authority) -> None:
    if cfg.permit is None:
        return
    if cfg.permit.exists():
        log.info("kept the existing permit %s unchanged", cfg.permit)
        return
    permit = make_permit(authority.ca_cert, authority.root_cert, authority.names, private_key=authority.root_key)
    pki.write_private(cfg.permit, permit.to_json())
    msg = f"wrote root permit {cfg.permit} (mode 0600): it holds the root user's private key; keep it secret"
    log.info(msg)


async def _sweep(state: HubState, authority: Authority) -> None:
    """Every half heartbeat: expire dead sessions; every day: refresh the CRL before it goes stale."""
    ticks = 0
    interval = max(0.2, state.heartbeat / 2)
    while True:
        await asyncio.sleep(interval)
        await state.sweep()
        ticks += 1
        if ticks * interval >= 86400:
            try:
                await state.refresh_crl()
            except Unavailable as exc:  # the store is away: try again at the next tick
                log.warning("could not refresh the CRL: %s", exc.message)
            else:
                ticks = 0


def _raise_file_limit(max_agents: int) -> None:
    """Each agent holds one socket: raise the soft open-files limit to the hard one, and say if it is still short."""
    soft = aio.raise_open_files(max(1 << 20, max_agents + 1024))
    if soft < max_agents + 64:
        log.warning(
            "the open-files limit (%d) is below --max-agents %d: raise it (ulimit -n, or LimitNOFILE= in the unit) "
            "or the hub will refuse connections past about %d agents",
            soft,
            max_agents,
            max(0, soft - 64),
        )
