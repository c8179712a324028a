"""HTTP/2 tuning knobs for `ztm.h2` connections.

The defaults follow the measurements in bench/RESULTS.md: large frames (1 MiB) and large windows (16 MiB per
stream, 64 MiB per connection) are what let Python move bulk data at TLS speed, because the cost of an HTTP/2
implementation in Python is per frame, not per byte. A slow reader still bounds what the peer may send: at most
`stream_window` bytes are buffered per stream and `connection_window` per connection.
"""

from __future__ import annotations

from dataclasses import dataclass

_MAX_WINDOW = (1 << 31) - 1


@dataclass(frozen=True)
class H2Settings:
    """What we advertise to the peer (SETTINGS frame and the initial connection WINDOW_UPDATE)."""

    max_frame_size: int = 1 << 20
    """SETTINGS_MAX_FRAME_SIZE we advertise; the peer's own value limits the frames we send."""
    stream_window: int = 16 << 20
    """Our initial receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE)."""
    connection_window: int = 64 << 20
    """Our connection receive window (raised from 65,535 with a WINDOW_UPDATE on stream 0 at start)."""
    max_concurrent_streams: int = 100000
    """SETTINGS_MAX_CONCURRENT_STREAMS: streams the peer may open towards us at once."""
    max_header_list_size: int = 65536
    """SETTINGS_MAX_HEADER_LIST_SIZE: largest header block we accept."""

    def __post_init__(self) -> None:
        if not 16384 <= self.max_frame_size <= (1 << 24) - 1:
            raise ValueError(f"max_frame_size must be within 16384..16777215, not {self.max_frame_size}")
        if not 65535 <= self.stream_window <= _MAX_WINDOW:
            raise ValueError(f"stream_window must be within 65535..{_MAX_WINDOW}, not {self.stream_window}")
        if not 65535 <= self.connection_window <= _MAX_WINDOW:
            raise ValueError(f"connection_window must be within 65535..{_MAX_WINDOW}, not {self.connection_window}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if self.max_header_list_size < 1024:
            raise ValueError("max_header_list_size must be at least 1024")
