"""`ztm cloud ...`: the cloud app (a local directory kept in sync with your private `/users/YOU/` mesh files)
through its local routes (`/api/meshes/MESH/apps/cloud/...`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ztm.cli import output
from ztm.cli.appcli import add_help, add_sub, show_help
from ztm.cli.args import ZtmArgumentParser, seconds_type
from ztm.cli.client import one_line
from ztm.cli.context import Context, UnexpectedAnswer, expect_list, expect_obj
from ztm.cli.files import POLL
from ztm.cli.progress import Bar
from ztm.errors import BadInput, ZtmError
from ztm.filespec import CHUNK_SIZE

UPLOAD_TIMEOUT = 600.0

OVERVIEW = """\
Your personal cloud drive: the private mesh files under /users/YOU/, mapped onto a local directory.

commands:
  config --local-dir DIR [--interval SECONDS]   the local directory (and how often mirrors scan, default 10 s)
  ls [PATH]                                     the drive's files (below PATH)
  upload PATH                                   publish local_dir/PATH (a file, or a directory's files)
  download PATH                                 fetch /users/YOU/PATH into local_dir/PATH
  mirror PATH --download on|off --upload on|off keep local_dir/PATH and the mesh in sync both ways or one way
  status                                        the configuration and each mirror's last scan
  help [COMMAND]                                this text, or one command's options

PATH is relative to the drive (docs/report.pdf). Mirrors upload new and changed local files and download new
and changed mesh files; when both sides changed, the newer one wins; deletions are not mirrored."""


def on_off(text: str) -> bool:
    value = text.lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


on_off.__name__ = "on|off"


EXAMPLES = (
    "ztm cloud config --local-dir ~/MeshDrive",
    "ztm cloud upload docs/report.pdf",
    "ztm cloud ls",
    "ztm cloud download docs",
    "ztm cloud mirror docs --download on --upload on",
)


def configure_cloud(p: argparse.ArgumentParser) -> None:
    prefix = "ztm cloud"
    sub = p.add_subparsers(
        dest="action",
        metavar="config|ls|upload|download|mirror|status|help",
        required=True,
        prog=prefix,
        parser_class=ZtmArgumentParser,
    )

    def add(
        name: str,
        synopsis: str,
        summary: str,
        description: str,
        examples: tuple[str, ...],
        handler: Callable[[Context], int],
    ) -> argparse.ArgumentParser:
        child = add_sub(sub, name, prefix, synopsis, summary, description, examples)
        child.set_defaults(cloud_handler=handler)
        return child

    cfg = add(
        "config",
        "config [--local-dir DIR] [--interval SECONDS]",
        "set the local directory",
        "Set the local directory of the drive (created if missing) and how often mirrors scan it and the mesh;\n"
        "without options, show the configuration as 'status' does.",
        (f"{prefix} config --local-dir ~/MeshDrive", f"{prefix} config --interval 30"),
        cmd_config,
    )
    cfg.add_argument("--local-dir", metavar="DIR", help="local directory of the drive (created if missing)")
    cfg.add_argument("--interval", metavar="SECONDS", type=seconds_type, help="mirror scan interval (1 s to 1 h)")
    ls = add(
        "ls",
        "ls [PATH]",
        "list the drive's files",
        "List the drive's files (below PATH): size, modification time, and whether the local directory has them.",
        (f"{prefix} ls", f"{prefix} ls docs -o json"),
        cmd_ls,
    )
    ls.add_argument("path", metavar="PATH", nargs="?", default="", help="a directory of the drive")
    up = add(
        "upload",
        "upload PATH",
        "publish local_dir/PATH to /users/YOU/PATH",
        "Publish local_dir/PATH as the private mesh file /users/YOU/PATH; a directory publishes every file in it.",
        (f"{prefix} upload docs/report.pdf", f"{prefix} upload docs"),
        cmd_upload,
    )
    up.add_argument("path", metavar="PATH", help="file or directory, relative to the local directory")
    down = add(
        "download",
        "download PATH",
        "fetch /users/YOU/PATH into local_dir/PATH",
        "Fetch /users/YOU/PATH (a file, or every file below a directory) into local_dir/PATH, from every endpoint\n"
        "that holds it.",
        (f"{prefix} download docs/report.pdf", f"{prefix} download docs"),
        cmd_download,
    )
    down.add_argument("path", metavar="PATH", help="file or directory of the drive")
    mirror = add(
        "mirror",
        "mirror PATH --download on|off --upload on|off",
        "keep a directory in sync",
        "Keep local_dir/PATH and /users/YOU/PATH in sync: --download on brings new and changed mesh files here,\n"
        "--upload on publishes new and changed local files; when both sides changed, the newer one wins. Both off\n"
        "stops mirroring PATH. Deletions are not mirrored.",
        (
            f"{prefix} mirror docs --download on --upload on",
            f"{prefix} mirror / --download on",
            f"{prefix} mirror docs",
        ),
        cmd_mirror,
    )
    mirror.add_argument("path", metavar="PATH", help="directory of the drive ('/' for all of it)")
    mirror.add_argument("--download", metavar="on|off", type=on_off, default=False, help="bring mesh changes here")
    mirror.add_argument("--upload", metavar="on|off", type=on_off, default=False, help="publish local changes")
    add(
        "status",
        "status",
        "the configuration and the mirrors",
        "Show the drive, its local directory, the scan interval, and each mirror with its last scan and error.",
        (f"{prefix} status", f"{prefix} status -o json"),
        cmd_status,
    )
    helper = add_help(sub, prefix, "what the cloud drive is, and the commands", "the cloud drive")
    helper.set_defaults(cloud_handler=_help)


def cmd_cloud(ctx: Context) -> int:
    handler: Callable[[Context], int] = ctx.args.cloud_handler
    return handler(ctx)


def _help(ctx: Context) -> int:
    return show_help(ctx, "cloud")


def _print_cloud(ctx: Context, view: dict[str, Any]) -> None:
    if ctx.json:
        ctx.print_json(view)
        return
    ctx.print(output.key_values([
        ("drive", output.cell(view.get("root"))),
        ("local dir", output.cell(view.get("local_dir"))),
        ("interval", f"{output.cell(view.get('interval'))} s"),
    ]))  # fmt: skip
    mirrors = view.get("mirrors") if isinstance(view.get("mirrors"), list) else []
    rows = [
        [
            output.cell(m.get("path") or "/"),
            "on" if m.get("download") else "off",
            "on" if m.get("upload") else "off",
            output.ago(m.get("last_scan")),
            output.cell(m.get("last_error")),
        ]
        for m in mirrors or []
        if isinstance(m, dict)
    ]
    if rows:
        ctx.print(output.table(("MIRROR", "DOWNLOAD", "UPLOAD", "LAST SCAN", "ERROR"), rows))


def cmd_status(ctx: Context) -> int:
    _print_cloud(ctx, ctx.get_obj(ctx.mesh_path("apps", "cloud")))
    return 0


def cmd_config(ctx: Context) -> int:
    body: dict[str, Any] = {}
    if ctx.args.local_dir:
        body["local_dir"] = str(Path(ctx.args.local_dir).expanduser().resolve())
    if ctx.args.interval is not None:
        body["interval"] = ctx.args.interval
    if not body:
        return cmd_status(ctx)
    _print_cloud(ctx, expect_obj(ctx.client().post(ctx.mesh_path("apps", "cloud", "config"), body), "cloud config"))
    return 0


def cmd_ls(ctx: Context) -> int:
    files = ctx.get_list(ctx.mesh_path("apps", "cloud", "files"), query={"path": ctx.args.path})
    if ctx.json:
        ctx.print_json(files)
        return 0
    rows = [
        [
            output.cell(f.get("name")),
            output.human_bytes(f.get("size")),
            output.ago(f.get("time")),
            "yes" if f.get("local_file") else "no",
        ]
        for f in files
    ]
    if rows:
        ctx.print(output.table(("NAME", "SIZE", "MODIFIED", "IN LOCAL DIR"), rows))
    else:
        ctx.print("no files in the drive" + (f" under {output.clean(ctx.args.path)}" if ctx.args.path else ""))
    return 0


def cmd_upload(ctx: Context) -> int:
    res = expect_obj(
        ctx.client().post(
            ctx.mesh_path("apps", "cloud", "upload"), {"path": ctx.args.path}, timeout=max(ctx.timeout, UPLOAD_TIMEOUT)
        ),
        "cloud upload",
    )
    published = expect_list(res.get("published"), "cloud upload")
    if ctx.json:
        ctx.print_json(res)
        return 0
    for view in published:
        ctx.print(f"uploaded {output.cell(view.get('path'))} ({output.human_bytes(view.get('size'))})")
    return 0


def cmd_download(ctx: Context) -> int:
    answer = ctx.client().post(ctx.mesh_path("apps", "cloud", "downloads"), {"path": ctx.args.path})
    res = expect_obj(answer, "cloud download")
    jobs = expect_list(res.get("downloads"), "cloud download")
    paths = [str(j.get("path")) for j in jobs]
    total = sum(int(j.get("size") or 0) for j in jobs)
    bar = Bar(f"download {ctx.args.path}", total)
    finished: dict[str, dict[str, Any]] = {}
    try:
        while len(finished) < len(paths):
            done_bytes = 0
            all_jobs = ctx.get_list(ctx.mesh_path("apps", "files", "downloads"))
            latest = {str(j.get("path")): j for j in all_jobs}
            for path in paths:
                job = latest.get(path)
                if job is None:
                    raise UnexpectedAnswer(f"the agent lost track of the download of {output.clean(path)}")
                size = int(job.get("size") or 0)
                done_bytes += min(size, int(job.get("chunks_done") or 0) * CHUNK_SIZE)
                if job.get("state") != "running":
                    finished[path] = job
            bar.update(done_bytes)
            if len(finished) < len(paths):
                time.sleep(POLL)
    finally:
        bar.close()
    failed = [j for j in finished.values() if j.get("state") != "done"]
    if ctx.json:
        ctx.print_json(list(finished.values()))
    else:
        for path in paths:
            job = finished[path]
            if job.get("state") == "done":
                ctx.print(f"downloaded {output.clean(path)} to {output.cell(job.get('target'))}")
    if failed:
        first = failed[0]
        raise ZtmError(
            f"{len(failed)} of {len(paths)} downloads failed; {output.clean(str(first.get('path')))}: "
            f"{one_line(str(first.get('error')))}"
        )
    return 0


def cmd_mirror(ctx: Context) -> int:
    path = ctx.args.path
    if path.strip("/") == "" and path != "/":
        raise BadInput("name a directory of the drive, or '/' for all of it")
    body = {"path": path, "download": ctx.args.download, "upload": ctx.args.upload}
    view = expect_obj(ctx.client().post(ctx.mesh_path("apps", "cloud", "mirror"), body), "cloud mirror")
    if ctx.json:
        ctx.print_json(view)
    elif not (view.get("download") or view.get("upload")):
        ctx.print(f"stopped mirroring {output.clean(path)}")
    else:
        ways = [w for w in ("download", "upload") if view.get(w)]
        ctx.print(f"mirroring {output.clean(path)} ({' and '.join(ways)})")
    return 0
