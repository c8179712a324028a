"""Flow-control credit is conserved by `H2Codec`, whatever the interleaving (issue 18): a hypothesis state machine.

Two codecs, a client and a server, talk through two in-memory pipes that deliver bytes in arbitrary chunks (so DATA
frames arrive in pieces, and a stream can be reset between the pieces of a frame). Each side has a model application
that follows the contract of `ztm.h2.Stream`: every flow-controlled byte it is told about (`DataReceived`) is
acknowledged exactly once, when it consumes it (any part, at any time), or at once when the stream is dead (reset by
either side) because nobody will read it. Rules open streams, answer them, send DATA both ways, end and reset streams
(also from inside the event loop, between two pieces of one batch), deliver bytes and consume.

Invariants, on each side as a receiver:
* exactly once, at all times: the connection's in-flight count is what the application holds plus the rest of the
  DATA frame being received; per open stream likewise;
* eventually (rule `settle`: deliver everything, consume everything): nothing is in flight; the window we announced
  plus what waits below the batching threshold is the whole window (no credit lost, none doubled), for the connection
  and for every stream the peer may still send on; and the sender sees exactly the window we announced, so a stream
  whose reader consumed everything can always send again (never stalled).

Before the fix the first invariant broke as soon as a DATA frame arrived for a reset stream (it was subtracted twice
from the connection's count), and `settle` found a stream's credit swallowed.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ztm.h2 import events as ev
from ztm.h2.codec import HALF_CLOSED_LOCAL as HCL
from ztm.h2.codec import OPEN, CodecError, H2Codec
from ztm.h2.settings import H2Settings

SETTINGS = H2Settings(max_frame_size=16384, stream_window=65535, connection_window=131070)
"""Small windows and frames, so that windows run out and WINDOW_UPDATEs and multi-frame writes are the rule."""
MAX_STREAMS = 8


class Side:
    """One endpoint: its codec, the bytes it queued for the peer, and its model application."""

    def __init__(self, client: bool) -> None:
        self.codec = H2Codec(client=client, settings=SETTINGS)
        self.codec.initiate()
        self.pipe = bytearray()  # written by this side, not yet delivered to the other one
        self.held: defaultdict[int, int] = defaultdict(int)  # flow-controlled bytes received, not yet acknowledged
        self.dead: set[int] = set()  # streams reset (either side): their data is acknowledged at once
        self.reset_on_data: set[int] = set()  # reset these from inside the event loop, at their next DATA event
        self.known: list[int] = []  # streams this side has heard of (opened or received)
        self.responded: set[int] = set()  # server: response headers sent

    def take(self) -> None:
        self.pipe += self.codec.data_to_send()

    def ack(self, sid: int, n: int) -> None:
        if n:
            self.codec.acknowledge(sid, n)
            self.held[sid] -= n
            assert self.held[sid] >= 0

    def kill(self, sid: int) -> None:
        """The stream is dead for the application: what it holds is dropped (and so acknowledged)."""
        self.dead.add(sid)
        self.ack(sid, self.held[sid])

    def reset(self, sid: int) -> None:
        with contextlib.suppress(CodecError):  # already closed in the codec: the application still drops its data
            self.codec.reset_stream(sid)
        self.kill(sid)

    def handle(self, events: list[ev.Event]) -> None:
        for event in events:
            assert not isinstance(event, ev.ConnectionTerminated), f"protocol error: {event}"
            if isinstance(event, ev.RequestReceived):
                self.known.append(event.stream_id)
            elif isinstance(event, ev.DataReceived):
                sid = event.stream_id
                if sid in self.dead:
                    self.codec.acknowledge(sid, event.flow_controlled_length)
                    continue
                self.held[sid] += event.flow_controlled_length
                if sid in self.reset_on_data:
                    self.reset_on_data.discard(sid)
                    self.reset(sid)
            elif isinstance(event, ev.StreamReset):
                self.kill(event.stream_id)

    def remaining(self) -> int:
        """Flow-controlled bytes of the DATA frame being received that the codec counted but has not yet reported
        (or, for a frame nobody will read, not yet credited: that happens as its bytes pass)."""
        c = self.codec
        return c._data_left + c._data_extra


class FlowControl(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client = Side(True)
        self.server = Side(False)
        self.client.take()
        self.server.take()
        self.settle()

    def sides(self, client_side: bool) -> tuple[Side, Side]:
        return (self.client, self.server) if client_side else (self.server, self.client)

    def deliver(self, src: Side, dst: Side, n: int) -> None:
        chunk = bytes(src.pipe[:n])
        del src.pipe[:n]
        dst.handle(dst.codec.receive(chunk))
        dst.take()

    # ---- rules ------------------------------------------------------------------------------------------------

    @precondition(lambda self: len(self.client.known) < MAX_STREAMS)
    @rule()
    def open_stream(self) -> None:
        sid = self.client.codec.next_stream_id()
        self.client.codec.send_headers(sid, [(":method", "CONNECT"), (":authority", "target:1")])
        self.client.known.append(sid)
        self.client.take()

    @rule(pick=st.integers(0, MAX_STREAMS))
    def respond(self, pick: int) -> None:
        s = self.server
        todo = [sid for sid in s.known if sid not in s.responded and sid not in s.dead]
        if not todo:
            return
        sid = todo[pick % len(todo)]
        try:
            s.codec.send_headers(sid, [(":status", "200")])
        except CodecError:
            return
        s.responded.add(sid)
        s.take()

    @rule(client_side=st.booleans(), pick=st.integers(0, MAX_STREAMS), size=st.integers(1, 40000))
    def send(self, client_side: bool, pick: int, size: int) -> None:
        me, _ = self.sides(client_side)
        ids = me.known if client_side else sorted(me.responded)
        if not ids:
            return
        sid = ids[pick % len(ids)]
        codec = me.codec
        while size > 0:
            try:
                window = codec.send_window(sid)
            except CodecError:
                return
            n = min(size, window, codec.max_outbound_frame_size)
            if n <= 0:
                return
            codec.send_data(sid, b"x" * n)
            size -= n
        me.take()

    @rule(client_side=st.booleans(), pick=st.integers(0, MAX_STREAMS))
    def end(self, client_side: bool, pick: int) -> None:
        me, _ = self.sides(client_side)
        ids = me.known if client_side else sorted(me.responded)
        if not ids:
            return
        try:
            me.codec.end_stream(ids[pick % len(ids)])
        except CodecError:
            return
        me.take()

    @rule(client_side=st.booleans(), pick=st.integers(0, MAX_STREAMS), later=st.booleans())
    def reset(self, client_side: bool, pick: int, later: bool) -> None:
        me, _ = self.sides(client_side)
        if not me.known:
            return
        sid = me.known[pick % len(me.known)]
        if later:
            me.reset_on_data.add(sid)  # from inside the event loop, at its next DATA event
        else:
            me.reset(sid)
            me.take()

    @rule(client_side=st.booleans(), n=st.integers(1, 50000))
    def deliver_bytes(self, client_side: bool, n: int) -> None:
        src, dst = self.sides(client_side)
        if src.pipe:
            self.deliver(src, dst, n)

    @rule(client_side=st.booleans(), pick=st.integers(0, MAX_STREAMS), n=st.integers(1, 70000))
    def consume(self, client_side: bool, pick: int, n: int) -> None:
        me, _ = self.sides(client_side)
        held = sorted(sid for sid, k in me.held.items() if k)
        if not held:
            return
        sid = held[pick % len(held)]
        me.ack(sid, min(n, me.held[sid]))
        me.take()

    @rule()
    def settle(self) -> None:
        """Deliver everything and consume everything; then no credit is lost or doubled, and nothing is stalled."""
        for _ in range(100):
            for me in (self.client, self.server):
                for sid in list(me.held):
                    me.ack(sid, me.held[sid])
                me.take()
            if not self.client.pipe and not self.server.pipe:
                break
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                if src.pipe:
                    self.deliver(src, dst, len(src.pipe))
        else:
            raise AssertionError("the two codecs keep sending to each other")
        for me, peer in ((self.client, self.server), (self.server, self.client)):
            c = me.codec
            assert c._conn_in_flight == 0
            assert c._recv_window + c._conn_unacked == SETTINGS.connection_window, "connection credit lost or doubled"
            assert peer.codec._send_window == c._recv_window, "the sender's connection window differs from ours"
            for sid, s in c._streams.items():
                assert s.in_flight == 0, f"stream {sid}: consumed bytes never credited"
                if s.state not in (OPEN, HCL):
                    continue  # the peer ended its side: no credit is due any more
                assert s.recv_window + s.unacked == SETTINGS.stream_window, f"stream {sid}: credit lost or doubled"
                other = peer.codec._streams.get(sid)
                if other is not None:
                    assert other.send_window == s.recv_window, f"stream {sid}: the sender's window differs from ours"
                    assert other.send_window > SETTINGS.stream_window // 2, f"stream {sid} stalled"

    # ---- invariants -------------------------------------------------------------------------------------------

    @invariant()
    def every_byte_is_counted_once(self) -> None:
        for me in (self.client, self.server):
            c = me.codec
            rest = me.remaining()
            assert c._conn_in_flight == sum(me.held.values()) + rest, "connection in-flight count is off"
            for sid, s in c._streams.items():
                current = rest if c._data_stream is s else 0
                assert s.in_flight == me.held[sid] + current, f"stream {sid}: in-flight count is off"


FlowControl.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_flow_control_credit_is_conserved = FlowControl.TestCase
