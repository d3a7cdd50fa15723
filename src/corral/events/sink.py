"""Where a sandbox's events go: the store, an optional JSON-lines file, and live listeners.

A write that fails (a full disk, an I/O error) loses nothing: the store and the JSON-lines file each
keep what they could not write and write it first, in order, once they can. While either is failing,
a command about to start is refused (`RecordingFailed` from its `sandbox.command_started` event): a
command whose events cannot be recorded does not run. Other events (the monitor's, the gateway's,
the sandbox's own stop) are held, never raised, so no thread dies and `close()` always completes.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from corral.events.model import Event

if TYPE_CHECKING:
    from corral.store.sqlite import EventStore

Listener = Callable[[Event], None]
FAIL_CLOSED_AT = "sandbox.command_started"


class RecordingFailed(RuntimeError):
    """Events cannot be recorded now (held in memory): the command was not run."""


class JsonlFile:
    """One JSON-lines file, opened once per process and shared by every sink that writes it.

    Why shared: a line the disk refused is held here, not in the sink of the sandbox that made it,
    so a sandbox that closes while the disk is full loses nothing; the next write to the same file
    from any sandbox writes the held lines first, in order. The last release closes the file once
    nothing is held; what is still held at exit gets a last try, then goes to stderr."""

    _open: dict[str, JsonlFile] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                       0o644)  # fmt: skip
        self._unwritten = bytearray()  # JSON lines the file did not take yet
        self._lock = threading.Lock()
        self.users = 0

    @classmethod
    def acquire(cls, path: str | Path) -> JsonlFile:
        key = os.path.realpath(path)
        with cls._guard:
            f = cls._open.get(key)
            if f is None or f._fd is None:
                f = cls._open[key] = cls(Path(path))
                if len(cls._open) == 1:
                    atexit.register(cls._last_try)
            f.users += 1
            return f

    def release(self) -> None:
        """One user fewer; the last closes the file, unless lines are held (kept for the next)."""
        with JsonlFile._guard:
            self.users = max(0, self.users - 1)
            if self.users or self.append(b""):
                return
            with self._lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
            JsonlFile._open.pop(os.path.realpath(self.path), None)

    @property
    def held(self) -> int:
        return len(self._unwritten)

    @classmethod
    def _last_try(cls) -> None:
        for f in list(cls._open.values()):
            if f._fd is not None and f.append(b""):
                print(f"corral: the events file {f.path} did not take these lines:",
                      file=sys.stderr)  # fmt: skip
                sys.stderr.write(f._unwritten.decode(errors="replace"))

    def append(self, data: bytes, keep: bool = True) -> str | None:
        """Write what is held, then `data`; keep whatever the file did not take (of `data` only
        with `keep`, or when part of its line is already written)."""
        with self._lock:
            if self._fd is None:
                return f"the events file {self.path} is closed"
            held = len(self._unwritten)
            self._unwritten += data
            cut = False
            try:
                while self._unwritten:
                    # whole lines only: a write the disk cut short is taken back (truncated off),
                    # so a full disk never leaves half a line for the next writer to run into
                    end = self._unwritten.rfind(b"\n") + 1 or len(self._unwritten)
                    size = os.fstat(self._fd).st_size
                    try:
                        n = os.write(self._fd, self._unwritten[:end])
                    except OSError:
                        n = 0
                        raise
                    finally:
                        if 0 < n < end:
                            os.ftruncate(self._fd, size)
                            n = 0
                            cut = True  # begun, so kept (as a half-written line was)
                    if n == 0:
                        raise OSError(28, os.strerror(28))
                    del self._unwritten[:n]
                    held = max(0, held - n)
            except OSError as err:
                if not keep and not cut and len(self._unwritten) == held + len(data):
                    del self._unwritten[held:]
                return (f"the events file {self.path} cannot be written ({err.strerror}); "
                        f"{len(self._unwritten)} bytes held in memory until it can")  # fmt: skip
            return None


class EventSink:
    """Fans one event out; a failing listener is reported, never allowed to lose the record."""

    def __init__(self, store: EventStore | None = None, jsonl: str | Path | None = None) -> None:
        self.store = store
        self.jsonl_path = Path(jsonl) if jsonl else None
        self._file: JsonlFile | None = JsonlFile.acquire(jsonl) if jsonl else None
        self.listeners: list[Listener] = []
        self.failure: str | None = None

    def emit(self, event: Event) -> Event:
        fail_closed = event.rule == FAIL_CLOSED_AT
        failures = []
        stored = True
        if self.store is not None:
            from corral.store.sqlite import StoreWriteError

            try:  # a command refused for this failure must not be recorded as started later
                self.store.add(event, keep=not fail_closed)
            except StoreWriteError as err:
                failures.append(str(err))
                stored = False
        if self.jsonl_path is not None and (stored or not fail_closed):
            err_text = self._write((event.to_json() + "\n").encode())
            if err_text:
                failures.append(err_text)
        self.failure = "; ".join(failures) or None
        if self.failure and fail_closed:
            if stored and self.store is not None:  # the store has it, the file will: close it
                self.emit(event.model_copy(update={
                    "rule": "sandbox.command_ended", "message": "not run: events cannot be recorded",
                    "evidence": {"exit_code": None, "not_run": True}}))  # fmt: skip
            raise RecordingFailed(f"command not run: {self.failure}")
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception as err:  # noqa: BLE001 - a listener bug must not drop events
                if self.jsonl_path is not None:
                    self._write((json.dumps({"listener_error": str(err)}) + "\n").encode())
        return event

    def _write(self, data: bytes) -> str | None:
        if self._file is not None:
            return self._file.append(data)
        late = JsonlFile.acquire(self.jsonl_path)  # an event after close() (a late sensor's)
        try:
            return late.append(data)
        finally:
            late.release()

    def close(self) -> None:
        """Done with the file: lines it still holds stay with the process's shared `JsonlFile`
        (written before the next line anyone writes to it, or tried once more at exit)."""
        if self._file is not None:
            self._file.release()
            self._file = None
