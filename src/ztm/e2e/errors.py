"""The end-to-end layer's one exception, `E2EError`, and the reasons it can carry.

Every refusal of the layer (bad frame, bad certificate, bad signature, tampered record, replayed stream, ...) is an
`E2EError` whose `reason` is one of `REASONS` (stable, for counters and tests) and whose `message` is one line for
users, saying what is wrong and, where it helps, what to do.
"""

from __future__ import annotations

REASONS: tuple[str, ...] = (
    "malformed",
    "version",
    "certificate",
    "wrong_mesh",
    "wrong_peer",
    "expired",
    "revoked",
    "signature",
    "integrity",
    "replay",
    "unknown_session",
    # raised by the agent layer, not by this package: the stream was cut without END, no answer came in time,
    # the peer refused (an ERROR frame or a REFUSE record)
    "truncated",
    "timeout",
    "refused",
)


class E2EError(Exception):
    """A refusal of the end-to-end layer: `reason` (one of `REASONS`) and a one-line `message` for users."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown E2EError reason {reason!r}")
        super().__init__(reason, message)  # both in args: it pickles
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"E2EError({self.reason!r}, {self.message!r})"
