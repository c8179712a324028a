"""Commands whose first word is a kind of object: `ztm publish file PATH ...`, `ztm download app NAME ...`.

Each verb (`publish`, `download`, `unpublish`, `erase`) has a table of `KindCommand`s; `configure(verb)` turns the
table into one subparser per kind (with its own options), and `dispatch` runs the chosen kind's handler. Adding a
kind to a verb is adding one `KindCommand` to its list in `VERBS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ztm.cli import apps as a
from ztm.cli import files as f
from ztm.cli.args import ZtmArgumentParser
from ztm.cli.context import Context


@dataclass(frozen=True)
class KindCommand:
    kind: str
    synopsis: str
    """What follows `ztm VERB`: `file PATH -i LOCAL`."""
    summary: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[Context], int]
    examples: tuple[str, ...] = ()


VERBS: dict[str, list[KindCommand]] = {
    "publish": [
        KindCommand(
            "file",
            "file PATH -i LOCAL [--readonly USER,..] [--block USER,..]",
            "publish a local file as mesh file PATH",
            f.configure_publish,
            f.cmd_publish,
            (
                "ztm publish file /shared/alice/report.pdf -i report.pdf",
                "ztm publish file /users/alice/notes.txt -i notes.txt --readonly bob",
                "ztm publish file /shared/alice/video.mp4 -i video.mp4 --block eve",
            ),
        ),
        KindCommand(
            "app",
            "app NAME",
            "package an installed directory app and offer it to the mesh",
            a.configure_publish_app,
            a.cmd_publish_app,
            ("ztm publish app chat",),
        ),
    ],
    "download": [
        KindCommand(
            "file",
            "file PATH -o OUT|- [--rate BYTES/S]",
            "download mesh file PATH from every endpoint that holds it",
            f.configure_download,
            f.cmd_download,
            ("ztm download file /shared/alice/report.pdf -o report.pdf", "ztm download file /shared/bob/x.iso -o -"),
        ),
        KindCommand(
            "app",
            "app NAME [--from EP] [--sha256 HEX]",
            "install an app another endpoint published (hash-verified)",
            a.configure_download_app,
            a.cmd_download_app,
            ("ztm download app chat", "ztm download app chat --from office"),
        ),
    ],
    "unpublish": [
        KindCommand(
            "file",
            "file PATH",
            "remove mesh file PATH from the mesh (its owner or root)",
            f.configure_path,
            f.cmd_unpublish,
            ("ztm unpublish file /shared/alice/old.txt",),
        )
    ],
    "erase": [
        KindCommand(
            "file",
            "file PATH",
            "delete this endpoint's copy of mesh file PATH (it stops serving it)",
            f.configure_path,
            f.cmd_erase,
            ("ztm erase file /shared/alice/big.iso",),
        )
    ],
}


def synopsis(verb: str) -> str:
    return f"{verb} " + "|".join(k.kind for k in VERBS[verb]) + " ..."


def configure(verb: str) -> Callable[[argparse.ArgumentParser], None]:
    def build(p: argparse.ArgumentParser) -> None:
        kinds = VERBS[verb]
        sub = p.add_subparsers(
            dest="kind",
            metavar="|".join(k.kind for k in kinds),
            required=True,
            prog=p.prog,
            parser_class=ZtmArgumentParser,
        )
        for kind in kinds:
            child = sub.add_parser(
                kind.kind,
                help=kind.summary,
                usage=f"ztm {verb} {kind.synopsis} [global options]",
                description=kind.summary[0].upper() + kind.summary[1:] + ".",
                epilog="examples:\n" + "\n".join(f"  {e}" for e in kind.examples) if kind.examples else None,
            )
            kind.configure(child)
            child.set_defaults(kind_handler=kind.handler)

    return build


def dispatch(ctx: Context) -> int:
    handler: Callable[[Context], int] = ctx.args.kind_handler
    return handler(ctx)
