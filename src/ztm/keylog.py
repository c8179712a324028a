"""`SSLKEYLOGFILE`: log TLS session secrets for debugging, the convention curl, browsers and Wireshark follow.

When the environment variable names a file, every TLS context the hub and the agent build for their HTTP/2
connections appends its sessions' secrets there (NSS key log format, `ssl.SSLContext.keylog_filename`), so a packet
capture of those connections can be decrypted (`tshark -o tls.keylog_file:FILE`). It is for debugging and for the
"the hub sees no plaintext" proof only: whoever reads the file reads every captured session of that process.

`check()` runs at startup and turns an unusable value into a one-line error (the file is created 0600 if missing);
`apply()` is called on each context as it is built.
"""

from __future__ import annotations

import os
import ssl

from ztm.errors import BadInput

ENV = "SSLKEYLOGFILE"


def path() -> str | None:
    """The key log file named by `SSLKEYLOGFILE`, or None when it is unset or empty."""
    value = os.environ.get(ENV, "")
    return value if value.strip() else None


def check() -> str | None:
    """The key log file, opened once for appending (created 0600) to prove it is usable; None when unset.

    BadInput names the variable, the file and the reason when it cannot be written.
    """
    target = path()
    if target is None:
        return None
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BadInput(
            f"{ENV}={target}: cannot write TLS secrets there ({exc.strerror or exc}); "
            f"point it at a writable file or unset it"
        ) from None
    os.close(fd)
    return target


def warning(target: str) -> str:
    """The startup warning of a process that logs its TLS secrets to `target`."""
    return (
        f"{ENV} is set: TLS session secrets are written to {target}; whoever reads it can decrypt this process's "
        f"captured traffic: unset it when you are done debugging"
    )


def apply(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make `ctx` log its secrets to the file `SSLKEYLOGFILE` names, if any; returns `ctx`."""
    target = path()
    if target is not None:
        ctx.keylog_filename = target
    return ctx
