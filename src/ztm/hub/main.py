"""`ztm run hub`: open the hub's state, create the CA and root permit on first start, serve until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from ztm import aio, datadir, h2, keylog, logs, pki
from ztm.addr import Address
from ztm.config import HubConfig
from ztm.errors import BadInput, Unavailable, ZtmError
from ztm.hub import cakey, limits, meshnet
from ztm.hub.admin import serve_admin
from ztm.hub.authority import Authority
from ztm.hub.cluster import Cluster
from ztm.hub.routes import HubRoutes
from ztm.hub.state import HubState
from ztm.hub.store import HubStore
from ztm.hub.store_pg import PgStore
from ztm.hub.store_sqlite import SqliteStore
from ztm.hub.storeurl import parse_store_url, read_password_file
from ztm.permit import make_permit
from ztm.version import __version__

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
    store = await _open_store(cfg)
    cluster: Cluster | None = None
    try:
        seal_key, key_file = await _seal_key(cfg, store)
        authority = await Authority.load(
            store, cfg.data, names, seal_key=seal_key, key_file=key_file, mesh_range=cfg.mesh_range
        )
        mesh_range, mesh_range6 = await meshnet.settle_range(store, authority.mesh_id, cfg.mesh_range)
        state = await HubState.load(
            store,
            authority,
            max_agents=cfg.max_agents,
            cert_ttl=cfg.cert_ttl,
            heartbeat=cfg.heartbeat,
            max_endpoints_per_user=cfg.max_endpoints_per_user,
            mesh_range=mesh_range,
            mesh_range6=mesh_range6,
        )
        routes = HubRoutes(state, ring, await store.files())
        cluster = Cluster(state, store, zone=cfg.zone, admin=str(cfg.admin) if cfg.admin else "")
        cluster.apply_hooks.append(routes.files.on_notify)
        await cluster.start()
        await state.audit.record(
            None, "hub-start", authority.hub_id, {"version": __version__, "names": [str(n) for n in names]}
        )
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
        _write_permit(cfg, authority, state.bootstraps())
        log.info(
            "hub %s of mesh %s listening on %s (agents dial %s; store %s)",
            authority.hub_id,
            authority.mesh_id,
            cfg.listen,
            ", ".join(map(str, names)),
            parse_store_url(cfg.store).redacted() if cfg.store else "SQLite in the data directory",
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
        routes.peers.close()
        if admin is not None:
            admin.close()
        for session in list(state.sessions.values()):
            session.close_connection()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
        await state.sweep()
        try:
            await state.audit.record(None, "hub-stop", authority.hub_id)
        except ZtmError as exc:  # the store is away: the stop goes on (its start row shows the run)
            log.warning("could not write the hub-stop audit row: %s", exc.message)
        return 0
    finally:
        if cluster is not None:
            await cluster.stop()
        await store.close()


async def _open_store(cfg: HubConfig) -> HubStore:
    """The hub's store: SQLite in the data directory, or the PostgreSQL database of `--store`. The data directory
    is locked either way: two hubs never share one (nor its hub id)."""
    if cfg.store is None:
        sqlite = SqliteStore(cfg.data / DB_NAME)
        try:
            sqlite.lock()
        except BaseException:
            await sqlite.close()
            raise
        return sqlite
    url = parse_store_url(cfg.store)
    datadir.lock(cfg.data, "hub")
    password = read_password_file(cfg.store_password_file) if cfg.store_password_file is not None else None
    return await PgStore.open(url, password)


async def _seal_key(cfg: HubConfig, store: HubStore) -> tuple[bytes | None, Path | None]:
    """The key that seals the mesh's private keys in a shared store: read from `--ca-key-file` (default
    DATA/ca.key), made there by the hub that creates the mesh. None for SQLite (the keys are in its 0600 file)."""
    if not store.shared:
        return None, None
    path = cfg.ca_key_file or cfg.data / "ca.key"
    meta = await store.get_meta()
    if "ca_cert" in meta:
        if not path.exists():
            raise BadInput(
                f"the store already holds mesh {meta.get('mesh_id')}: this hub needs its CA key file, which is not at "
                f"{path}; copy the first hub's key file here (mode 0600) or give --ca-key-file FILE"
            )
        return cakey.read_key_file(path), path
    if path.exists():
        return cakey.read_key_file(path), path
    key = cakey.create_key_file(path)
    log.warning("made the CA key file %s (0600): copy it to every other hub of this mesh; keep it secret", path)
    return key, path


def _default_names(cfg: HubConfig) -> tuple[Address, ...]:
    if cfg.listen.host in ("0.0.0.0", "::"):
        raise BadInput(
            "--names is required when listening on all interfaces: give the address agents dial, "
            "e.g. --names 1.2.3.4:8888"
        )
    return (cfg.listen,)


def _write_permit(cfg: HubConfig, authority: Authority, bootstraps: list[str]) -> None:
    if cfg.permit is None:
        return
    if cfg.permit.exists():
        log.info("kept the existing permit %s unchanged", cfg.permit)
        return
    permit = make_permit(authority.ca_cert, authority.root_cert, bootstraps, private_key=authority.root_key)
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
