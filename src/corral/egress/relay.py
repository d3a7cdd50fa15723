"""Moving bytes for an established connection: splice() through a pipe, on the event loop.

The kernel copies the payload; Python only counts it and reacts to readiness, so one loop thread
carries every sandbox's connections without a thread per connection or a GIL hand-off per packet.
While an inspector wants them (the first kilobytes of each direction), chunks are read normally and
shown to it before they are forwarded, so the chunk that completes a piece of evidence is never
delivered; after that the pumps switch to splice().
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from typing import Literal, Protocol

Verdict = Literal["forward", "hold", "cut"]

F_SETPIPE_SZ = 1031
CHUNK = 1 << 20
_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
_BURST = 4


class Inspector(Protocol):
    """Sees each direction's chunks before they are forwarded (`up`: client to upstream)."""

    def inspect(self, up: bool, data: bytes) -> Verdict:
        """forward the chunk (and anything held), hold it unsent, or cut the connection."""

    def wants(self, up: bool) -> bool:
        """Whether later chunks of this direction are still to be shown."""

    def closed(self, up: bool) -> Verdict:
        """The direction ended: whether what is held may go (forward) or not (cut)."""


class _Pump:
    """One direction: src socket -> pipe -> dst socket, driven by readiness callbacks."""

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket, up: bool) -> None:
        self.relay, self.src, self.dst, self.up = relay, src, dst, up
        self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pw, F_SETPIPE_SZ, CHUNK)
        self.in_pipe = 0
        self.head = b""  # bytes to send before the pipe (inspected chunks)
        self.held = b""  # bytes the inspector holds back for now
        self.inspecting = relay.inspector is not None and relay.inspector.wants(up)
        self.done = False
        self.reading = self.writing = False

    # readiness registration
    def _want_read(self, on: bool) -> None:
        if on and not self.reading:
            self.relay.loop.add_reader(self.src.fileno(), self.on_readable)
        elif not on and self.reading:
            self.relay.loop.remove_reader(self.src.fileno())
        self.reading = on

    def _want_write(self, on: bool) -> None:
        if on and not self.writing:
            self.relay.loop.add_writer(self.dst.fileno(), self.on_writable)
        elif not on and self.writing:
            self.relay.loop.remove_writer(self.dst.fileno())
        self.writing = on

    def start(self, first: bytes) -> None:
        if first:
            self._take(first)
            if self.relay.cut_reason:
                return
        if self.head:
            self.flush()
        else:
            self._want_read(True)

    def _take(self, data: bytes) -> bool:
        """Show a chunk to the inspector; False when the connection was cut or the chunk held."""
        if not self.inspecting:
            self.head += data
            return True
        inspector = self.relay.inspector
        assert inspector is not None
        verdict = inspector.inspect(self.up, data)
        if verdict == "cut" or self.relay.cut_reason:
            self.relay.cut(self.relay.cut_reason or "inspected")
            return False
        self.held += data
        if verdict == "hold":
            return False
        self.head += self.held
        self.held = b""
        self.inspecting = inspector.wants(self.up)
        return True

    def on_readable(self) -> None:
        try:
            if self.inspecting:
                data = self.src.recv(65536)
                if not data:
                    if self.held:
                        assert self.relay.inspector is not None
                        if self.relay.inspector.closed(self.up) == "cut":
                            self.relay.cut(self.relay.cut_reason or "inspected")
                            return
                        self.head += self.held
                        self.held = b""
                    self._eof()
                    return
                if self._take(data):
                    self.flush()  # reading goes on unless the other side pushes back
                return
            for _ in range(_BURST):  # a few chunks per wake-up, then let other connections run
                n = os.splice(self.src.fileno(), self.pw, CHUNK, flags=_FLAGS)
                if n == 0:
                    self._eof()
                    return
                self.in_pipe += n
                if not self.flush() or self.relay.cut_reason:
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.relay.cut("reset")
            return

    def on_writable(self) -> None:
        self.flush()

    def flush(self) -> bool:
        """Send what is buffered; True when all of it went (reading may go on)."""
        try:
            while self.head:
                sent = self.dst.send(self.head)
                if not self.relay.count(self.up, sent):
                    return False
                self.head = self.head[sent:]
            while self.in_pipe:
                m = os.splice(self.pr, self.dst.fileno(), self.in_pipe, flags=_FLAGS)
                self.in_pipe -= m
                if not self.relay.count(self.up, m):
                    return False
        except (BlockingIOError, InterruptedError):
            self._want_read(False)  # back-pressure: read again once the other side drains
            self._want_write(True)
            return False
        except OSError:
            self.relay.cut("reset")
            return False
        self._want_write(False)
        if self.src_eof:
            self._finish()
            return False
        self._want_read(True)
        return True

    src_eof = False

    def _eof(self) -> None:
        self.src_eof = True
        self._want_read(False)
        if not self.head and not self.in_pipe:
            self._finish()
        else:
            self.flush()

    def _finish(self) -> None:
        if self.done:
            return
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.close()
        self.relay.pump_done()

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._want_read(False)
        with contextlib.suppress(ValueError, OSError):
            self._want_write(False)
        if not self.done:
            self.done = True
            os.close(self.pr)
            os.close(self.pw)


class Relay:
    """One client<->upstream pair; an `inspector` sees the first chunks, `on_done(relay)` the end."""

    def __init__(self, client: socket.socket, upstream: socket.socket, *,
                 first: bytes = b"", inspector: Inspector | None = None,
                 on_done: Callable[[Relay], None] | None = None,
                 on_bytes: Callable[[int], bool] | None = None) -> None:  # fmt: skip
        self.loop = asyncio.get_running_loop()
        self.client, self.upstream = client, upstream
        self.first = first
        self.inspector = inspector
        self.on_done = on_done
        self.on_bytes = on_bytes  # returns False when a byte cap is hit
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = time.monotonic()
        self.ended: float | None = None
        self.cut_reason: str | None = None
        self._pumps: list[_Pump] = []
        self._left = 2

    def start(self) -> None:
        for s in (self.client, self.upstream):
            s.setblocking(False)
        self._pumps = [_Pump(self, self.client, self.upstream, True),
                       _Pump(self, self.upstream, self.client, False)]  # fmt: skip
        self._pumps[1].start(b"")
        self._pumps[0].start(self.first)

    def cut(self, reason: str) -> None:
        """Stop both directions now; safe from any thread."""
        try:
            in_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            in_loop = False
        if not in_loop:
            self.loop.call_soon_threadsafe(self.cut, reason)
            return
        if self.ended is not None:
            return
        if self.cut_reason is None:
            self.cut_reason = reason
        for p in self._pumps:
            p.close()
        self._left = 0
        self._end()

    def count(self, up: bool, n: int) -> bool:
        if up:
            self.bytes_up += n
        else:
            self.bytes_down += n
        if self.on_bytes is not None and not self.on_bytes(n):
            self.cut("max_bytes")
            return False
        return self.cut_reason is None

    def pump_done(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._end()

    def _end(self) -> None:
        if self.ended is not None:
            return
        self.ended = time.monotonic()
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.close()
        if self.on_done is not None:
            self.on_done(self)

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started
