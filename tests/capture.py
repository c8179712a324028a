"""Record a hub's loopback traffic with `tcpdump` and decode it with `tshark`: an HTTP/2-over-TLS decoder that owes
nothing to ztm's own code, for proofs of what the hub can and cannot read.

* `unavailable_reason()` says why a capture cannot run here (not root, `tcpdump` or `tshark` missing), for a skip.
* `Capture(port, directory)` starts `tcpdump -i lo -U --immediate-mode -w FILE 'tcp port PORT'` as a
  `support.Proc` and returns once the capture is live: it makes TCP connections of its own to the port and polls the
  file until one of them is in it. `sync()` does the same later (every packet sent before it is on
  disk); `mark()` syncs and returns the packet count, so frames can be told apart by the action that made them;
  `stop()` syncs and ends tcpdump (SIGTERM, which flushes).
* `decode(pcap, keylog, port)` runs `tshark -r FILE -o tls.keylog_file:KEYS -d tcp.port==PORT,tls -T json` and
  returns `Decoded`: every HTTP/2 frame with its TCP connection, direction, stream id, type, DATA payload and header
  values; `Decoded.streams()` is the DATA of each (connection, direction, stream id) joined in order, so a marker
  split across frames is still found; `Decoded.where(marker)` lists every place a byte string occurs.

The session keys come from the process under test (`SSLKEYLOGFILE`, see `ztm.keylog`); a record whose keys are
missing stays encrypted (counted in `Decoded.undecrypted`), so tests check that the decode is complete and not empty
(a control marker that must be found). Network rule: tcpdump listens on `lo` only, filtered to the one port under
test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import Proc, wait_until

_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"))
TCPDUMP = shutil.which("tcpdump", path=_PATH)
TSHARK = shutil.which("tshark", path=_PATH)

_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_LINK_HEADER = {1: 14, 113: 16, 276: 20}
"""Bytes before the IP header per pcap link type: Ethernet (what `lo` gives), Linux cooked v1 and v2."""


def unavailable_reason() -> str | None:
    """Why a capture cannot run on this machine (for a skip), or None."""
    if os.geteuid() != 0:
        return "capturing loopback traffic needs root (tcpdump -i lo)"
    if TCPDUMP is None:
        return "capturing loopback traffic needs tcpdump (Debian package tcpdump; scripts/setup.sh installs it)"
    if TSHARK is None:
        return "decoding the capture needs tshark (Debian package tshark; scripts/setup.sh installs it)"
    return None


# ------------------------------------------------------------------------------------------------------- capture


def pcap_packets(path: Path) -> Iterator[bytes]:
    """The IP packet (link header removed) of every complete record so far in the pcap file `path` (a file tcpdump
    is still writing may end in a partial record, which is left out)."""
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        return
    order = _PCAP_MAGIC[data[:4]]
    link = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    skip = _LINK_HEADER.get(link)
    if skip is None:
        raise AssertionError(f"{path}: pcap link type {link} is not one this reader knows")
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[pos + 8 : pos + 12])[0]
        packet = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        if len(packet) < caplen:
            return
        yield packet[skip:]


def pcap_tcp_ports(path: Path) -> Iterator[tuple[int, int]]:
    """(source port, destination port) of every TCP packet recorded so far in the pcap file `path`."""
    for ip in pcap_packets(path):
        if ip and ip[0] >> 4 == 4 and len(ip) >= 20 and ip[9] == socket.IPPROTO_TCP:
            tcp = ip[(ip[0] & 0x0F) * 4 :]
        elif ip and ip[0] >> 4 == 6 and len(ip) >= 40 and ip[6] == socket.IPPROTO_TCP:
            tcp = ip[40:]
        else:
            continue
        if len(tcp) >= 4:
            src, dst = struct.unpack("!HH", tcp[:4])
            yield src, dst


class Capture:
    """`tcpdump` recording TCP port `port` on `lo` into `directory/capture.pcap`; live once constructed."""

    def __init__(self, port: int, directory: Path, *, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise AssertionError(reason)
        assert TCPDUMP is not None
        self.port = port
        self.host = host
        self.timeout = timeout
        directory.mkdir(parents=True, exist_ok=True)
        self.pcap = directory / "capture.pcap"
        # -U: write each packet as it comes; --immediate-mode: no buffering in libpcap; -Z root: keep writing to a
        # directory only root may enter (tcpdump otherwise drops to its own user before it opens the file).
        argv = [TCPDUMP, "-i", "lo", "-U", "--immediate-mode", "-n", "-Z", "root", "-w", str(self.pcap),
                f"tcp port {port}"]  # fmt: skip
        self.proc = Proc(argv, name="tcpdump", log_dir=directory)
        try:
            self.sync()
        except BaseException:
            self.proc.stop()
            raise

    def sync(self) -> None:
        """Return once every packet sent to or from the port before this call is in the file: TCP connections of
        our own are made to the port (which must accept) and closed, until the file shows one of them (the kernel
        hands packets on `lo` to tcpdump in order; before tcpdump is attached, probes go unseen, so it repeats)."""
        probes: set[int] = set()

        def seen() -> bool:
            self.proc.assert_alive()
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                probes.add(int(sock.getsockname()[1]))
            return self.pcap.exists() and any(src in probes for src, _dst in pcap_tcp_ports(self.pcap))

        wait_until(seen, self.timeout, f"tcpdump to record a probe connection to port {self.port} in {self.pcap}",
                   interval=0.1)  # fmt: skip

    def mark(self) -> int:
        """Sync, then return how many packets the file holds: the capture's packet (tshark frame) numbers after
        this are what happened after the call, so a test can tell which frames one action produced."""
        self.sync()
        return sum(1 for _ in pcap_packets(self.pcap))

    def stop(self) -> Path:
        """Sync, end tcpdump (SIGTERM makes it flush and exit 0), and return the pcap file."""
        if self.proc.alive:
            self.sync()
        status = self.proc.stop()
        if status != 0:
            raise AssertionError(f"tcpdump exited with status {status}:\n{self.proc.tail()}")
        return self.pcap

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()


# -------------------------------------------------------------------------------------------------------- decode


@dataclass
class Frame:
    """One HTTP/2 frame as tshark decoded it."""

    number: int
    """The pcap frame (packet) it was found in."""
    conn: int
    """tshark's TCP stream index: one TCP connection."""
    src: str
    """`ADDRESS:PORT` of the sender."""
    dst: str
    stream_id: int
    type: int
    """HTTP/2 frame type: 0 DATA, 1 HEADERS, 4 SETTINGS, ..."""
    data: bytes = b""
    """The payload of a DATA frame."""
    headers: list[str] = field(default_factory=list)
    """`name: value` of every header field of a HEADERS or CONTINUATION frame, HPACK-decoded."""


@dataclass
class Decoded:
    frames: list[Frame]
    encrypted_records: int
    """TLS records sent encrypted (TLS 1.3: every record after the ServerHello)."""
    undecrypted: list[int]
    """Packets holding an encrypted record tshark could not decrypt (no key for its session): must be empty."""

    def streams(self) -> dict[tuple[int, str, str, int], bytes]:
        """The DATA of each (connection, sender, receiver, stream id), joined in capture order."""
        joined: dict[tuple[int, str, str, int], bytearray] = {}
        for f in self.frames:
            if f.data:
                joined.setdefault((f.conn, f.src, f.dst, f.stream_id), bytearray()).extend(f.data)
        return {key: bytes(value) for key, value in joined.items()}

    def where(self, marker: bytes) -> list[str]:
        """Every place `marker` occurs: DATA frames, header values, and each stream's joined DATA."""
        text = marker.decode("latin-1")
        found: list[str] = []
        for f in self.frames:
            if marker in f.data:
                found.append(f"DATA frame in packet {f.number}, stream {f.stream_id}, {f.src} -> {f.dst}")
            for h in f.headers:
                if text in h:
                    found.append(f"header {h!r} in packet {f.number}, stream {f.stream_id}, {f.src} -> {f.dst}")
        for (conn, src, dst, sid), data in self.streams().items():
            if marker in data:
                found.append(f"joined DATA of stream {sid} on TCP connection {conn}, {src} -> {dst}")
        return found

    def count(self, frame_type: int) -> int:
        return sum(1 for f in self.frames if f.type == frame_type)

    def data_bytes(self, after: int, until: int) -> dict[tuple[str, str], int]:
        """DATA payload bytes per (sender, receiver) in packets `after` < number <= `until` (see `Capture.mark`)."""
        sizes: dict[tuple[str, str], int] = {}
        for f in self.frames:
            if after < f.number <= until and f.data:
                sizes[f.src, f.dst] = sizes.get((f.src, f.dst), 0) + len(f.data)
        return sizes


def decode(pcap: Path, keylog: Path, port: int, *, timeout: float = 120.0) -> Decoded:
    """Decrypt and decode the capture with tshark, the keys from `keylog`, port `port` read as TLS (then HTTP/2 by
    ALPN)."""
    assert TSHARK is not None, unavailable_reason()
    argv = [TSHARK, "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}", "-d", f"tcp.port=={port},tls",
            "-T", "json", "-J", "frame ip ipv6 tcp tls http2"]  # fmt: skip
    cp = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    if cp.returncode != 0:
        raise AssertionError(f"tshark failed with status {cp.returncode}: {' '.join(argv)}\n{cp.stderr}")
    packets = json.loads(cp.stdout or "[]", object_pairs_hook=_merge_duplicates)
    frames: list[Frame] = []
    encrypted = 0
    undecrypted: list[int] = []
    for packet in packets:
        layers = packet["_source"]["layers"]
        number = int(layers["frame"]["frame.number"])
        ip = layers.get("ip") or layers.get("ipv6") or {}
        tcp = layers.get("tcp") or {}
        src_ip = str(ip.get("ip.src") or ip.get("ipv6.src"))
        dst_ip = str(ip.get("ip.dst") or ip.get("ipv6.dst"))
        src = f"{src_ip}:{tcp.get('tcp.srcport')}"
        dst = f"{dst_ip}:{tcp.get('tcp.dstport')}"
        conn = int(tcp.get("tcp.stream", -1))
        for record in _walk(layers.get("tls"), "tls.record"):
            # an encrypted record shows its outer type (`opaque_type`); decrypted, it shows its inner content type too
            if "tls.record.opaque_type" in record:
                encrypted += 1
                if "tls.record.content_type" not in record:
                    undecrypted.append(number)
        for h2 in _walk(layers.get("http2"), "http2.stream"):
            frames.append(_frame(h2, number, conn, src, dst))
    return Decoded(frames, encrypted, undecrypted)


def _merge_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """tshark's JSON repeats a key for repeated items (two TLS records or HTTP/2 frames in one packet); keep them all,
    as a list, where `dict` would keep the last."""
    merged: dict[str, Any] = {}
    for key, value in pairs:
        if key not in merged:
            merged[key] = value
        elif isinstance(merged[key], _Repeated):
            merged[key].append(value)
        else:
            merged[key] = _Repeated([merged[key], value])
    return merged


class _Repeated(list[Any]):
    """The values of a repeated key (told apart from a JSON array tshark wrote itself)."""


def _walk(layer: Any, key: str) -> Iterator[dict[str, Any]]:
    """Every object under `key` in `layer`, which may itself be a list (a repeated layer); `key` may hold one
    object or a list of them."""
    if isinstance(layer, list):
        for item in layer:
            yield from _walk(item, key)
    elif isinstance(layer, dict) and key in layer:
        value = layer[key]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                yield item


def _frame(h2: dict[str, Any], number: int, conn: int, src: str, dst: str) -> Frame:
    frame = Frame(number, conn, src, dst, int(h2.get("http2.streamid", -1)), int(h2.get("http2.type", -1)))
    raw = h2.get("http2.data.data")
    if isinstance(raw, str) and raw:
        frame.data = bytes.fromhex(raw.replace(":", ""))
    for header in _walk(h2, "http2.header"):
        name, value = header.get("http2.header.name", ""), header.get("http2.header.value", "")
        frame.headers.append(f"{name}: {value}")
    return frame
