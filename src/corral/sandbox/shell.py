"""The persistent shell session inside a sandbox.

One bash per sandbox, fed commands on stdin. Each command is framed so that `cd`, variables, functions
and background jobs survive between commands (the ROCK / SWE-ReX session model), while exit codes come
back on a private control pipe that the agent's commands never hold, so output cannot forge them.

Protocol, one command: `__corral_read; __corral_exec </dev/null N>&-; __corral_done ID $?` followed by the command text and a NUL. bash reads a pipe one byte at a time, so
the command text is consumed by `read -d ''` and never parsed as the session's own input. The command
runs inside a function so that a timeout can abandon the rest of it (SIGUSR1 makes the trap `return`)
without ending the session; assignments stay global as at top level (but `declare` makes locals).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

OutputCallback = Callable[[str, bytes], None]
MAX_CAPTURE = 8 * 1024 * 1024
MAX_FORGED_EVENTS = 20  # per shell: the first are evidence, the rest a flood
MAX_CTL_LINE = 4096  # a report is "KEY CODE\n": anything longer is not ours
INTERRUPTED_EXIT = 124


# Undone before every command: an agent that shadows what the framing uses (`builtin() { :; }`,
# `enable -n printf`) would otherwise stall its own shell until the command's timeout.
_UNSHADOW = ("\\unset -f builtin command printf read eval enable 2>/dev/null;"
             " \\enable builtin command printf read eval 2>/dev/null; ")  # fmt: skip


def bootstrap(ctl_fd: int, moved_from: int | None = None) -> bytes:
    """The framing functions, read-only: the agent cannot redefine or unset them.

    LIMITATION: an agent that controls its own shell can still, with effort (shadowing `unset`
    and `enable` as well, or disabling builtins and putting look-alikes on PATH), make the report of
    its *own* next command wrong. Every report carries a fresh random key, so a report it forges
    without seeing the key is recorded as tampering, and nothing that grades an episode ever runs
    in this shell (`Sandbox.harness_exec`).
    """
    move = f"exec {ctl_fd}>&{moved_from} {moved_from}>&-\n" if moved_from not in (
        None, ctl_fd) else ""  # fmt: skip
    return (
        move.encode()
        + (
            f"__corral_read() {{ {_UNSHADOW}builtin read -r -d '' __corral_cmd; }}\n"
            '__corral_exec() { builtin eval "$__corral_cmd"; }\n'
            f'__corral_done() {{ {_UNSHADOW}builtin printf \'%s %d\\n\' "$1" "$2" >&{ctl_fd}; }}\n'
            "builtin readonly -f __corral_read __corral_exec __corral_done\n"
            "unset HISTFILE\n"
            f"builtin trap 'builtin return {INTERRUPTED_EXIT} 2>/dev/null' USR1\n"
            f"builtin printf 'ready 0\\n' >&{ctl_fd}\n"
        ).encode()
    )


def new_key(prefix: str = "") -> str:
    """A command's report key: its number is not enough to forge its report."""
    return f"{prefix}{secrets.token_hex(8)}"


def frame(key: str | int, command: str, ctl_fd: int) -> bytes:
    if "\0" in command:
        raise ValueError("command contains a NUL byte")
    head = f"__corral_read; __corral_exec </dev/null {ctl_fd}>&-; __corral_done {key} $?\n"
    return head.encode() + command.encode() + b"\0"


@dataclass
class Capture:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    on_output: OutputCallback | None = None

    def add(self, stream: str, data: bytes) -> None:
        buf = self.stdout if stream == "stdout" else self.stderr
        room = MAX_CAPTURE - len(buf)
        if room < len(data):
            self.truncated = True
        buf += data[: max(room, 0)]
        if self.on_output is not None:
            self.on_output(stream, data)


class ShellChannel:
    """Non-blocking reads of the shell's stdout, stderr and control pipe on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stdin: int, stdout: int, stderr: int,
                 ctl: int) -> None:  # fmt: skip
        self.loop = loop
        self.stdin, self.stdout, self.stderr, self.ctl = stdin, stdout, stderr, ctl
        for fd in (stdout, stderr, ctl):
            os.set_blocking(fd, False)
        self.capture: Capture | None = None
        self._ctl_buf = b""
        self._waiters: dict[str, asyncio.Future[int]] = {}
        self.on_forged: Callable[[str], None] | None = None  # a report nobody was waiting for
        self.forged_count = 0
        self.eof = False
        self.eof_event = asyncio.Event()
        loop.add_reader(stdout, self._on_stream, stdout, "stdout")
        loop.add_reader(stderr, self._on_stream, stderr, "stderr")
        loop.add_reader(ctl, self._on_ctl)

    def _read(self, fd: int) -> bytes | None:
        if fd < 0:  # closed: its number may belong to another file now, never read it
            return b""
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _on_stream(self, fd: int, name: str) -> None:
        data = self._read(fd)
        if data is None:
            return
        if not data:
            self.loop.remove_reader(fd)
            return
        if self.capture is not None:
            self.capture.add(name, data)

    def drain(self) -> None:
        """Take whatever the command wrote before it reported done: it is already in the pipes.
        A no-op once closed (a command whose sandbox was ended while it ran drains afterwards)."""
        for fd, name in ((self.stdout, "stdout"), (self.stderr, "stderr")):
            while True:
                data = self._read(fd)
                if not data:
                    break
                if self.capture is not None:
                    self.capture.add(name, data)

    def _on_ctl(self) -> None:
        data = self._read(self.ctl)
        if data is None:
            return
        if not data:
            self.loop.remove_reader(self.ctl)
            self.eof = True
            self.eof_event.set()
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(EOFError("shell ended"))
            return
        self._ctl_buf += data
        if len(self._ctl_buf) > MAX_CTL_LINE and b"\n" not in self._ctl_buf[-MAX_CTL_LINE:]:
            # a flood without newlines (someone else writing the pipe): keep nothing of it
            self._forged(self._ctl_buf[:80] + b"...")
            self._ctl_buf = b""
            return
        while b"\n" in self._ctl_buf:
            line, self._ctl_buf = self._ctl_buf.split(b"\n", 1)
            key, _, rc = line.decode(errors="replace").partition(" ")
            fut = self._waiters.pop(key, None)
            if fut is not None and not fut.done():
                try:
                    fut.set_result(int(rc or 0))
                except ValueError:
                    self._forged(line)
                    fut.set_exception(EOFError("the shell's report was not a number"))
            elif key not in ("ready", "exit"):
                self._forged(line)

    def _forged(self, line: bytes) -> None:
        self.forged_count += 1
        if self.on_forged is not None and self.forged_count <= MAX_FORGED_EVENTS:
            suffix = "" if self.forged_count < MAX_FORGED_EVENTS else " (further ones not recorded)"
            self.on_forged(line[:200].decode(errors="replace") + suffix)

    def expect(self, key: str) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = self.loop.create_future()
        if self.eof:
            fut.set_exception(EOFError("shell ended"))
        else:
            self._waiters[key] = fut
        return fut

    def send(self, data: bytes) -> None:
        if self.closed:
            raise BrokenPipeError("the shell's channel is closed")
        view = memoryview(data)
        while view:
            n = os.write(self.stdin, view)
            view = view[n:]

    @property
    def closed(self) -> bool:
        return self.ctl < 0

    def close(self) -> None:
        """Idempotent. The fd numbers are forgotten before they are closed: a second close, a
        late `drain()` or `send()` (a command whose sandbox was ended under it) must never touch
        a number that another sandbox's pipe or socket has taken since (reading a reused blocking
        fd hung the event loop; closing it broke another sandbox)."""
        fds = [fd for fd in (self.stdin, self.stdout, self.stderr, self.ctl) if fd >= 0]
        self.stdin = self.stdout = self.stderr = self.ctl = -1
        for fd in fds:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(fd)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.eof = True  # what is expected from here on fails at once (`expect`)
        self.eof_event.set()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(EOFError("shell closed"))
        self._waiters.clear()
