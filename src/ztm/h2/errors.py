"""Exceptions raised by `ztm.h2`.

`H2Error` is the base: its `str()` is a one-line message a caller can show as is (for example
"connection refused by hub.example:8888"). `StreamReset` means one stream was aborted with RST_STREAM,
`ConnectionClosed` that the whole connection is gone (every pending read, write and response on it raises this).
"""

from __future__ import annotations

_ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


def error_name(code: int) -> str:
    """The RFC 9113 name of an HTTP/2 error code (`CANCEL`), or its number in hex if unknown."""
    return _ERROR_NAMES.get(code, f"0x{code:x}")


class H2Error(Exception):
    """Base of every error raised by `ztm.h2`; `str()` is a clear one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StreamReset(H2Error):
    """The stream was reset (RST_STREAM), normally by the peer; `error_code` is the HTTP/2 error code."""

    def __init__(self, error_code: int, message: str | None = None, *, stream_id: int = 0, local: bool = False):
        if message is None:
            who = "locally" if local else "by the peer"
            message = f"stream {stream_id} was reset {who} ({error_name(error_code)})"
        super().__init__(message)
        self.error_code = error_code
        self.stream_id = stream_id
        self.local = local


class ConnectionClosed(H2Error):
    """The HTTP/2 connection is gone (closed by either side, lost, or never established)."""


class NoAnswer(H2Error):
    """A request or PING got no answer in time; the connection itself may still be alive (see `bytes_received`)."""


_TLS_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "we do not trust its certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires a client certificate and got none",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "our certificate was revoked",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "our certificate expired",
    "WRONG_VERSION_NUMBER": "is it a TLS server?",
    "RECORD_LAYER_FAILURE": "is it a TLS server?",
    "PACKET_LENGTH_TOO_LONG": "is it a TLS server?",
    "UNKNOWN_PROTOCOL": "is it a TLS server?",
    "TLSV1_ALERT_PROTOCOL_VERSION": "it does not speak TLS 1.3",
    "UNSUPPORTED_PROTOCOL": "it does not speak TLS 1.3",
    "NO_PROTOCOLS_AVAILABLE": "it does not speak TLS 1.3",
}


def tls_error_message(label: str, exc: BaseException) -> str:
    """A one-line description of a failed TLS handshake with `label`, with the ssl reason and a hint."""
    reason = getattr(exc, "reason", None)
    text = str(getattr(exc, "strerror", None) or exc or type(exc).__name__)
    if text.startswith("[SSL"):  # "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ..."
        text = text.split("] ", 1)[-1]
    if " (_ssl.c:" in text:
        text = text[: text.index(" (_ssl.c:")]
    if reason and str(reason) not in text:
        text = f"{text} ({reason})"
    hint = _TLS_HINTS.get(str(reason)) if reason else None
    message = f"TLS handshake with {label} failed: {text}"
    return f"{message}; {hint}" if hint else message
