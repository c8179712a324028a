"""An `ssl.SSLObject` whose `read`, `write` and `pending` are the C methods themselves, for every TLS connection of
ztm's own (hub connections on both sides, hub-to-hub links, direct channels).

uvloop's TLS transport calls `read`, `write` and `pending` of the context's `SSLObject` for every message (it keeps
the bound methods it found after `wrap_bio`). `ssl.SSLObject`'s are Python wrappers that only call the same method of
the C object `_sslobj` with the same arguments: a Python frame per call, three per 1-byte message on a direct channel
or a hub connection. `DirectSSLObject` binds the C methods on the instance instead, so uvloop calls OpenSSL's
without the wrapper; the TLS (handshake, certificate checks, the CRL, every record's authentication) is the same
C object's either way. Set on a context with `fast_tls(ctx)`.
"""

from __future__ import annotations

import ssl
from typing import Any


class DirectSSLObject(ssl.SSLObject):
    """`ssl.SSLObject` with `read`/`write`/`pending` bound to the C object's methods (see the module docstring)."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        obj: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        c = obj._sslobj  # type: ignore[attr-defined]
        vars(obj).update(read=c.read, write=c.write, pending=c.pending)
        return obj


def fast_tls(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """`ctx`, its `wrap_bio` now making `DirectSSLObject`s."""
    ctx.sslobject_class = DirectSSLObject
    return ctx
