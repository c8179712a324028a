"""`ztm run|start|stop hub|agent`: build `HubConfig` / `AgentConfig` from the flags and run or manage the process.

The hub and agent modules are imported only here, inside the commands, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from ztm import keylog
from ztm.addr import Address
from ztm.apps.net.options import NetOptions
from ztm.cli.args import UsageError
from ztm.cli.context import Context
from ztm.config import DEFAULT_AGENT_LISTEN, DEFAULT_HUB_LISTEN, AgentConfig, HubConfig
from ztm.errors import BadInput, ZtmError

WILDCARDS = ("0.0.0.0", "::")


def _absolute(path: Path) -> Path:
    return path.expanduser().absolute()


def _data(args: argparse.Namespace, *, service: bool) -> Path:
    if args.data is not None:
        return _absolute(args.data)
    from ztm import service as svc
    from ztm.config import default_data_dir

    return _absolute(svc.service_default_data() if service else default_data_dir())


def hub_config(args: argparse.Namespace, *, service: bool = False) -> HubConfig:
    listen: Address = args.listen or DEFAULT_HUB_LISTEN
    names: tuple[Address, ...] = tuple(dict.fromkeys(args.names or ()))
    if not names:
        if listen.host in WILDCARDS:
            raise BadInput(
                "--names is required when listening on all interfaces: give the address agents dial, "
                "e.g. --names 1.2.3.4:8888"
            )
        names = (listen,)
    cfg = HubConfig(
        listen=listen,
        names=names,
        permit=_absolute(args.permit) if args.permit else None,
        data=_data(args, service=service),
        admin=args.admin,
        store=args.store,
        store_password_file=_absolute(args.store_password_file) if args.store_password_file else None,
        ca_key_file=_absolute(args.ca_key_file) if args.ca_key_file else None,
        zone=args.zone or "",
        mesh_range=args.mesh_range,
    )
    if args.store_password_file is not None and args.store is None:
        raise UsageError("--store-password-file goes with --store postgresql://...")
    if args.ca_key_file is not None and args.store is None:
        raise UsageError("--ca-key-file goes with --store postgresql://... (a SQLite hub keeps its keys in its file)")
    if args.max_agents is not None:
        cfg = replace(cfg, max_agents=args.max_agents)
    if args.max_endpoints_per_user is not None:
        cfg = replace(cfg, max_endpoints_per_user=args.max_endpoints_per_user)
    if args.cert_ttl is not None:
        cfg = replace(cfg, cert_ttl=args.cert_ttl)
    if args.heartbeat is not None:
        cfg = replace(cfg, heartbeat=args.heartbeat)
    return cfg


def agent_config(args: argparse.Namespace, *, service: bool = False) -> AgentConfig:
    join = (args.join, args.join_as, args.permit)
    if any(v is not None for v in join) and not all(v is not None for v in join):
        raise UsageError(
            f"ztm {args.command} agent: --join, --join-as and --permit go together "
            "(--join MESH --join-as NAME --permit FILE); run 'ztm help run agent' for usage"
        )
    given: dict[str, Any] = {"credit_warn": args.credit_warn} if args.credit_warn is not None else {}
    if args.p2p_birthday is not None:
        given["p2p_birthday"] = args.p2p_birthday
    if args.p2p_birthday_every is not None:
        given["p2p_birthday_every"] = args.p2p_birthday_every
    return AgentConfig(
        **given,
        listen=args.listen or DEFAULT_AGENT_LISTEN,
        data=_data(args, service=service),
        join=args.join,
        join_as=args.join_as,
        direct=args.direct,
        direct_announce=args.direct_announce,
        p2p=not args.no_p2p,
        p2p_keepalive=args.p2p_keepalive if args.p2p_keepalive is not None else 5.0,
        zone=args.zone,
        permit=_absolute(args.permit) if args.permit else None,
        net=NetOptions(
            tun=args.tun,
            tun_name=args.tun_name or NetOptions.tun_name,
            accept_routes=args.accept_routes,
            dns_suffix=args.dns_suffix or NetOptions.dns_suffix,
            expose_ports=args.expose_ports,
        ),
    )


def cmd_run(ctx: Context) -> int:
    # Before the imports: aiohttp builds an SSL context when imported, and `ssl.create_default_context` opens the file
    # SSLKEYLOGFILE names, so an unusable value would surface there as a traceback rather than as this one line.
    keylog.check()
    if ctx.args.target == "hub":
        hub_cfg = hub_config(ctx.args)
        try:
            from ztm.hub.main import run_hub
        except ImportError as exc:
            raise ZtmError(f"cannot run the hub: {exc} (is ztm installed completely?)") from None
        return int(run_hub(hub_cfg))
    agent_cfg = agent_config(ctx.args)
    try:
        from ztm.agent.main import run_agent  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise ZtmError(f"cannot run the agent: {exc} (is ztm installed completely?)") from None
    return int(run_agent(agent_cfg))


def cmd_hub(ctx: Context) -> int:
    """`ztm hub migrate --from DATA_DIR --to URL`: a single hub's mesh into PostgreSQL (`ztm.hub.migrate`)."""
    import asyncio

    from ztm.hub import cakey, migrate
    from ztm.hub.store_pg import PgStore
    from ztm.hub.storeurl import parse_store_url, read_password_file

    args = ctx.args
    source: Path = _absolute(args.source)
    url = parse_store_url(args.target)
    password = read_password_file(args.store_password_file) if args.store_password_file else None
    key_path: Path = _absolute(args.ca_key_file) if args.ca_key_file else source / "ca.key"

    async def move(key: bytes) -> dict[str, object]:
        target = await PgStore.open(url, password)
        try:
            snapshot = await migrate.migrate(source, target, key)
            return {**migrate.snapshot_counts(snapshot), "store": url.redacted(), "ca_key_file": str(key_path)}
        finally:
            await target.close()

    made = not key_path.exists()
    key = cakey.create_key_file(key_path) if made else cakey.read_key_file(key_path)
    try:
        moved = asyncio.run(move(key))
    except BaseException:
        if made:  # nothing was moved: leave no key file behind that seals nothing
            key_path.unlink(missing_ok=True)
        raise
    ctx.print(
        f"moved mesh {moved['mesh']} into {moved['store']}: {moved['users']} users ({moved['evicted']} evicted), "
        f"{moved['endpoints']} endpoints, {moved['certificates']} certificates, {moved['files']} files.\n"
        f"The keys are sealed with {moved['ca_key_file']}: copy it (mode 0600) to every other hub. Start this hub "
        f"again with --store {moved['store']} (and --ca-key-file if the file is elsewhere than DATA/ca.key)."
    )
    return 0


def cmd_start(ctx: Context) -> int:
    from ztm import service as svc

    if ctx.args.target == "app":
        from ztm.cli.apps import cmd_start_app

        return cmd_start_app(ctx)
    if ctx.args.target == "agent":
        from ztm.gui import cli as gui_cli

        agent_cfg = agent_config(ctx.args, service=True)
        if svc.start(svc.agent_service(agent_cfg), ctx.print):
            gui_cli.announce(agent_cfg.listen, ctx.timeout, ctx.print)
        return 0
    cfg = hub_config(ctx.args, service=True)
    permit_existed = cfg.permit is not None and cfg.permit.exists()
    started = svc.start(svc.hub_service(cfg), ctx.print)
    if cfg.permit is not None and started:
        if permit_existed:
            ctx.print(f"kept the existing permit {cfg.permit} unchanged")
        else:
            ctx.print(
                f"wrote {cfg.permit} (mode 0600): it holds the root user's private key. Keep it secret; "
                "share ztm invite permits instead."
            )
        ctx.print(f"agents join with: ztm join MESH --as NAME --permit {cfg.permit}")
    return 0


def cmd_stop(ctx: Context) -> int:
    from ztm import service as svc

    if ctx.args.target == "app":
        from ztm.cli.apps import cmd_stop_app

        return cmd_stop_app(ctx)
    if ctx.args.name is not None:
        raise UsageError(
            f"ztm stop {ctx.args.target}: unexpected argument {ctx.args.name!r}; run 'ztm help stop' for usage"
        )
    data = _absolute(ctx.args.data) if ctx.args.data else _absolute(svc.service_default_data())
    svc.stop(ctx.args.target, data, ctx.print)
    return 0
