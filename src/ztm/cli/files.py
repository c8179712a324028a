"""`ztm publish|download|unpublish|erase file ...`, `ztm get file`, `ztm describe file` and `ztm acl file` (also
spelled `ztm files ...`, see `ztm.cli.verbs`): the files app through its local routes
(`/api/meshes/MESH/apps/files/...`).

Content moves between this command and the agent as raw bytes: streamed up as the body of `POST .../content`,
streamed down from `GET .../content` (and checked against the file's SHA-256 on the way). Downloads run in the
agent; this command starts one, shows its progress (a bar on a terminal), then copies the result to OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

from ztm import filespec
from ztm.cli import output
from ztm.cli.args import output_type, path_type
from ztm.cli.client import ENV_TOKEN, one_line
from ztm.cli.context import Context, UnexpectedAnswer, expect_obj
from ztm.cli.progress import Bar
from ztm.errors import BadInput, Timeout, Unauthorized, Unavailable, ZtmError, from_json
from ztm.version import __version__

POLL = 0.2
BLOCK = 1 << 20
TRANSFER_TIMEOUT = 120.0
"""Seconds a single read or write of a content transfer may stall before the command gives up."""
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)(?:i?b)?(?:/s)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


# ---- argument types ----


def mesh_path_type(text: str) -> str:
    try:
        return filespec.check_path(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


mesh_path_type.__name__ = "mesh path"


def prefix_type(text: str) -> str:
    try:
        return filespec.check_prefix(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


prefix_type.__name__ = "prefix"


def users_type(text: str) -> list[str]:
    try:
        return filespec.parse_user_list(text)
    except BadInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


users_type.__name__ = "user list"


def rate_type(text: str) -> int:
    """Bytes per second: `1048576`, `512K`, `2M`, `1G` (binary units), at least 1 KiB/s."""
    match = _RATE.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected bytes per second such as 512K or 2M, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if not 1024 <= value <= 1 << 40:
        raise argparse.ArgumentTypeError(f"must be from 1K to 1T bytes per second, got {text!r}")
    return value


rate_type.__name__ = "rate"


# ---- options ----


def _path_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", type=mesh_path_type, help="mesh file, e.g. /shared/alice/notes.txt")


def _acl_args(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--readonly",
        metavar="USER,..",
        type=users_type,
        action="extend",
        default=[],
        help=f"{verb} these users read access (to a private /users/ file), repeatable or comma-separated",
    )
    p.add_argument(
        "--block",
        metavar="USER,..",
        type=users_type,
        action="extend",
        default=[],
        help="users who may not read the file at all, repeatable or comma-separated",
    )


def configure_path(p: argparse.ArgumentParser) -> None:
    _path_arg(p)


def configure_publish(p: argparse.ArgumentParser) -> None:
    _path_arg(p)
    p.add_argument("-i", "--input", metavar="LOCAL", type=path_type, required=True, help="local file to publish")
    _acl_args(p, "give")


def configure_download(p: argparse.ArgumentParser) -> None:
    _path_arg(p)
    p.add_argument(
        "-o", "--out", dest="out", metavar="OUT", required=True, help="where to write the file ('-': stdout)"
    )
    p.add_argument(
        "--output",
        metavar="table|json",
        type=output_type,
        default=argparse.SUPPRESS,
        help="print a summary for people (default) or the transfer's JSON (-o names the file here)",
    )
    p.add_argument("--rate", metavar="BYTES/S", type=rate_type, help="limit the transfer rate, e.g. 2M (per second)")


def configure_acl(p: argparse.ArgumentParser) -> None:
    """`ztm acl file PATH ...`."""
    from ztm.cli.args import Kind

    p.add_argument("kind", metavar="file", type=Kind({"file": ("files",)}), help="the word file")
    configure_acl_path(p)


def configure_acl_path(p: argparse.ArgumentParser) -> None:
    """`PATH [--readonly USER,..] [--block USER,..] [--clear]`: `ztm acl file ...` and `ztm files acl ...`."""
    _path_arg(p)
    _acl_args(p, "give")
    p.add_argument("--clear", action="store_true", help="remove every readonly and block entry")


def configure_get_file(p: argparse.ArgumentParser) -> None:
    del p


# ---- raw content transfers ----


def _connection(ctx: Context) -> tuple[http.client.HTTPConnection, dict[str, str]]:
    conn, auth = ctx.client().connection(max(ctx.timeout, TRANSFER_TIMEOUT))
    return conn, {**auth, "User-Agent": f"ztm-cli/{__version__}"}


def _failure(ctx: Context, exc: BaseException) -> ZtmError:
    address = ctx.client().address
    if isinstance(exc, ConnectionRefusedError):
        return Unavailable(f"cannot reach the agent at {address} (connection refused): is it running?")
    if isinstance(exc, TimeoutError):
        return Timeout(f"the agent at {address} stalled for {max(ctx.timeout, TRANSFER_TIMEOUT):g}s")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return Unavailable(f"the transfer with the agent at {address} broke off ({reason})")


def _answer(ctx: Context, resp: http.client.HTTPResponse) -> Any:
    raw = resp.read()
    try:
        value = json.loads(raw) if raw.strip() else None
    except ValueError:
        raise UnexpectedAnswer(f"the agent answered HTTP {resp.status} with something that is not JSON") from None
    if resp.status == 401:
        raise Unauthorized(
            f"the agent refused the API token: it makes a new one at every start; set {ENV_TOKEN} to the current "
            "content of its DATA/agent.token, or run ztm as the OS user who started it"
        )
    if not 200 <= resp.status < 300:
        err = from_json(resp.status, value)
        err.message = one_line(err.message)
        raise err
    return value


def upload(ctx: Context, path: str, local: Path, query: list[tuple[str, str]]) -> dict[str, Any]:
    try:
        handle = open(local, "rb")  # noqa: SIM115 - closed below, after the streamed request
        info = os.fstat(handle.fileno())
    except OSError as exc:
        raise BadInput(f"cannot read {local}: {exc.strerror or exc}") from None
    with handle:
        if not local.is_file():
            raise BadInput(f"{local} is not a regular file")
        url = ctx.mesh_path("apps", "files", "content") + "?" + urlencode([("path", path), *query])
        conn, headers = _connection(ctx)
        bar = Bar(f"publish {path}", info.st_size)
        try:
            conn.putrequest("POST", url, skip_accept_encoding=True)
            for key, value in {
                **headers,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(info.st_size),
                "Accept": "application/json",
            }.items():
                conn.putheader(key, value)
            conn.endheaders()
            sent = 0
            try:
                while block := handle.read(BLOCK):
                    conn.send(block)
                    sent += len(block)
                    bar.update(sent)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent answered early (a refusal): read it below
            resp = conn.getresponse()
            return expect_obj(_answer(ctx, resp), "publish")
        except ZtmError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(ctx, exc) from None
        finally:
            bar.close()
            conn.close()


def fetch_content(ctx: Context, path: str, out: BinaryIO) -> str:
    """Copy the agent's complete copy of `path` to `out`; returns its SHA-256."""
    url = ctx.mesh_path("apps", "files", "content") + "?" + urlencode({"path": path})
    conn, headers = _connection(ctx)
    digest = hashlib.sha256()
    try:
        conn.request("GET", url, headers={**headers, "Accept": "application/octet-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            _answer(ctx, resp)
            raise UnexpectedAnswer(f"the agent answered HTTP {resp.status} to a content request")
        while block := resp.read(BLOCK):
            digest.update(block)
            out.write(block)
    except ZtmError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise _failure(ctx, exc) from None
    finally:
        conn.close()
    return digest.hexdigest()


# ---- commands ----


def _acl_query(ctx: Context) -> list[tuple[str, str]]:
    readonly = list(dict.fromkeys(ctx.args.readonly))
    block = list(dict.fromkeys(ctx.args.block))
    both = set(readonly) & set(block)
    if both:
        raise BadInput(f"user(s) {', '.join(sorted(both))} both --readonly and --block: pick one")
    return [("readonly", u) for u in readonly] + [("block", u) for u in block]


def cmd_publish(ctx: Context) -> int:
    path: str = ctx.args.path
    local: Path = ctx.args.input
    try:
        mtime = local.stat().st_mtime
    except OSError as exc:
        raise BadInput(f"cannot read {local}: {exc.strerror or exc}") from None
    view = upload(ctx, path, local, [("time", repr(mtime)), *_acl_query(ctx)])
    if ctx.json:
        ctx.print_json(view)
    else:
        ctx.print(f"published {output.clean(path)} ({output.human_bytes(view.get('size'))}, sha256 "
                  f"{output.cell(view.get('hash'))})")  # fmt: skip
    return 0


def _download_path(ctx: Context, path: str) -> str:
    return ctx.mesh_path("apps", "files", "downloads")


def wait_download(ctx: Context, path: str, rate: int | None, label: str) -> dict[str, Any]:
    """Start (or join) the agent's download of `path` and follow it to its end, with a progress bar."""
    body: dict[str, Any] = {"path": path}
    if rate is not None:
        body["rate"] = rate
    job = expect_obj(ctx.client().post(_download_path(ctx, path), body), "download")
    bar = Bar(label, int(job.get("size") or 0))
    try:
        while job.get("state") == "running":
            size = int(job.get("size") or 0)
            done = min(size, int(job.get("chunks_done") or 0) * filespec.CHUNK_SIZE)
            bar.update(done, size)
            time.sleep(POLL)
            jobs = ctx.get_list(_download_path(ctx, path), query={"path": path})
            if not jobs:
                raise UnexpectedAnswer(f"the agent lost track of the download of {output.clean(path)}")
            job = jobs[-1]
    except KeyboardInterrupt:
        bar.close()
        _stop_download(ctx, path)
        raise
    finally:
        bar.close()
    if job.get("state") != "done":
        raise ZtmError(f"download of {output.clean(path)} failed: {one_line(str(job.get('error')))}")
    return job


def _stop_download(ctx: Context, path: str) -> None:
    """Ctrl-C: the agent stops fetching too (else it would go on in the background); verified chunks stay, so the
    same command resumes. Best effort: the interrupt is what the user sees either way."""
    try:
        ctx.client().request("DELETE", _download_path(ctx, path), query={"path": path}, timeout=2.0)
    except ZtmError:
        return
    ctx.warn(f"stopped the download of {output.clean(path)}; the chunks already verified stay here: "
             "run the same command to resume")  # fmt: skip


def _summary(job: dict[str, Any]) -> str:
    by_source = job.get("by_source") if isinstance(job.get("by_source"), dict) else {}
    parts = [f"{output.clean(str(k))}: {v}" for k, v in sorted((by_source or {}).items())]
    fetched = f"{job.get('fetched', 0)} fetched" + (f" ({', '.join(parts)})" if parts else "")
    direct = job.get("direct") if isinstance(job.get("direct"), dict) else {}
    if direct:
        fetched += f", {sum(int(n) for n in direct.values() if isinstance(n, int))} of them over direct channels"
    size = output.human_bytes(job.get("size"))
    return f"{size}, {job.get('chunks', 0)} chunks: {fetched}, {job.get('reused', 0)} already here"


def cmd_download(ctx: Context) -> int:
    path: str = ctx.args.path
    out: str = ctx.args.out
    job = wait_download(ctx, path, ctx.args.rate, f"download {path}")
    expected = str(job.get("hash"))
    if out == "-":
        got = fetch_content(ctx, path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        if got != expected:
            raise ZtmError(f"the content of {output.clean(path)} did not match its SHA-256 on the way out")
        ctx.warn(f"downloaded {output.clean(path)} ({_summary(job)})")
        return 0
    target = Path(out).expanduser()
    if target.is_dir():
        target = target / path.rsplit("/", 1)[-1]
    tmp = target.with_name(f".{target.name}.ztm-part")
    try:
        with open(tmp, "wb") as f:
            got = fetch_content(ctx, path, f)
        if got != expected:
            raise ZtmError(f"the content of {output.clean(path)} did not match its SHA-256 on the way out")
        tmp.replace(target)
    except OSError as exc:
        raise BadInput(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if ctx.json:
        ctx.print_json({**job, "output": str(target)})
    else:
        ctx.print(f"downloaded {output.clean(path)} to {output.clean(str(target))} ({_summary(job)})")
    return 0


def cmd_unpublish(ctx: Context) -> int:
    path: str = ctx.args.path
    ctx.client().delete(ctx.mesh_path("apps", "files", "file") + "?" + urlencode({"path": path}))
    ctx.note(f"unpublished {output.clean(path)}: it is gone from the mesh")
    return 0


def cmd_erase(ctx: Context) -> int:
    path: str = ctx.args.path
    ctx.client().delete(ctx.mesh_path("apps", "files", "content") + "?" + urlencode({"path": path}))
    ctx.note(f"erased this endpoint's copy of {output.clean(path)}; it no longer serves it")
    return 0


def cmd_acl(ctx: Context) -> int:
    path: str = ctx.args.path
    if ctx.args.clear and (ctx.args.readonly or ctx.args.block):
        raise BadInput("--clear removes every entry: give it alone, or give --readonly / --block")
    if ctx.args.clear or ctx.args.readonly or ctx.args.block:
        query = _acl_query(ctx)
        body = {"path": path, "readonly": [u for k, u in query if k == "readonly"],
                "block": [u for k, u in query if k == "block"]}  # fmt: skip
        view = expect_obj(ctx.client().post(ctx.mesh_path("apps", "files", "acl"), body), "acl")
    else:
        view = describe_obj(ctx, path)
    if ctx.json:
        ctx.print_json(view)
        return 0
    acl = view.get("acl") if isinstance(view.get("acl"), dict) else {}
    ctx.print(output.key_values([
        ("path", output.clean(path)),
        ("readonly", output.cell((acl or {}).get("readonly"))),
        ("block", output.cell((acl or {}).get("block"))),
    ]))  # fmt: skip
    return 0


def get_files(ctx: Context, prefix: str | None) -> None:
    shown = filespec.check_prefix(prefix) if prefix else "/"
    files = ctx.get_list(ctx.mesh_path("apps", "files"), query={"prefix": shown})
    if ctx.json:
        ctx.print_json(files)
        return
    rows = [
        [
            output.cell(f.get("path")),
            output.human_bytes(f.get("size")),
            output.ago(f.get("time")),
            output.cell(f.get("publisher")),
            output.cell(f.get("sources")),
            output.cell(f.get("local")),
        ]
        for f in files
    ]
    if rows:
        ctx.print(output.table(("PATH", "SIZE", "MODIFIED", "PUBLISHER", "SOURCES", "LOCAL"), rows))
    else:
        ctx.print(f"no files under {output.clean(shown)} that you may read")


def describe_obj(ctx: Context, path: str) -> dict[str, Any]:
    return ctx.get_obj(ctx.mesh_path("apps", "files", "file"), query={"path": filespec.check_path(path)})


def describe_file(ctx: Context, path: str | None) -> None:
    if not path:
        raise BadInput("name the file: ztm describe file PATH")
    view = describe_obj(ctx, path)
    if ctx.json:
        ctx.print_json(view)
        return
    sources = view.get("sources") if isinstance(view.get("sources"), list) else []
    names = [
        f"{output.cell(s.get('name'))} ({'online' if s.get('online') else 'offline'})"
        for s in sources or []
        if isinstance(s, dict)
    ]
    acl = view.get("acl") if isinstance(view.get("acl"), dict) else {}
    size = view.get("size")
    ctx.print(output.key_values([
        ("path", output.cell(view.get("path"))),
        ("size", f"{output.human_bytes(size)} ({output.cell(size)} bytes)"),
        ("time", output.time_with_ago(view.get("time"))),
        ("hash", output.cell(view.get("hash"))),
        ("chunks", output.cell(view.get("chunks"))),
        ("publisher", output.cell(view.get("publisher"))),
        ("published", output.time_with_ago(view.get("published"))),
        ("readonly", output.cell((acl or {}).get("readonly"))),
        ("block", output.cell((acl or {}).get("block"))),
        ("sources", ", ".join(names) or output.MISSING),
        ("local", output.cell(view.get("local"))),
    ]))  # fmt: skip
