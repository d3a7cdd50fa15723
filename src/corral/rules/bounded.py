"""The gate's work per command, bounded in time and memory whatever the command.

Small commands (the nearly all of them) are analysed in-process: their cost is bounded by their size.
A larger one (up to the analyser's 100,000 characters, or with many pipes, whose analysis grows with
the square of the stages) goes to one worker process per supervisor that runs under an address-space
limit and a deadline: on a timeout it is killed and restarted, on MemoryError it answers so. Beyond
the analyser's input size, with a NUL byte (bash cannot run one), or when the worker fails, the
command is *unanalysable*: the gate denies it with the finding `gate.unanalysable`, so it is recorded
as blocked like any other denial. Nothing here can make the supervisor itself run out of memory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import resource
import struct
import subprocess
import sys
import threading
from typing import IO, Any

from corral.rules.finding import Finding

MAX_INPUT = 100_000  # characters: the analyser reads no more (corral.analysis.shell.MAX_INPUT)
INLINE_CHARS = 16_384  # in-process below this size ...
INLINE_PIPES = 300  # ... and this many `|` (pipeline analysis grows with stages squared)
WORKER_SECONDS = 5.0  # time one command may take in the worker
WORKER_MEMORY = 1024 * 1024 * 1024  # address space of the worker (bytes)
QUEUE_SECONDS = 30.0  # longest wait for the worker before the command counts as unanalysable


UNANALYSABLE = "gate.unanalysable"


def unanalysable(why: str) -> Finding:
    # critical: denied under every policy's thresholds, so `corral check` and the gate agree
    return Finding(rule=UNANALYSABLE, category="policy", severity="critical",
                   message=f"command cannot be analysed within the gate's bounds: {why}; "
                   "split it, or write it to a file and run the file", response="block",
                   evidence={"why": why})  # fmt: skip


def precheck(command: str) -> Finding | None:
    """Unanalysable before any work: a NUL byte or more than the analyser reads."""
    if "\x00" in command:
        return unanalysable("it holds a NUL byte, which bash cannot run")
    if len(command) > MAX_INPUT:
        return unanalysable(f"{len(command)} characters, over the gate's {MAX_INPUT}")
    return None


def inline(command: str) -> bool:
    """Cheap enough to analyse in the supervisor itself."""
    return len(command) <= INLINE_CHARS and command.count("|") <= INLINE_PIPES


# ---------------------------------------------------------------- the worker (parent side)
class Worker:
    """One analysis process, restarted after a timeout or a crash; one command at a time."""

    def __init__(self, seconds: float = WORKER_SECONDS, memory: int = WORKER_MEMORY) -> None:
        self.seconds = seconds
        self.memory = memory
        self._proc: subprocess.Popen[bytes] | None = None
        self._warm = False  # the worker answered once: its rules are loaded
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._warm = False
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "corral.rules.bounded", str(self.memory)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True,
            )  # fmt: skip
        return self._proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    f and f.close()  # type: ignore[func-returns-value]

    def check(self, command: str) -> list[Finding]:
        """Findings for `command`, or one `gate.unanalysable` finding saying why there are none."""
        if not self._lock.acquire(timeout=QUEUE_SECONDS):
            return [unanalysable(f"the gate's analysis worker stayed busy {QUEUE_SECONDS:g}s")]
        try:
            return self._check(command)
        finally:
            self._lock.release()

    def _check(self, command: str) -> list[Finding]:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, command.encode("utf-8", "surrogateescape"))
            # the first answer waits for the worker to load the rules as well
            reply = _recv(proc.stdout, self.seconds + (0.0 if self._warm else 20.0))
        except (OSError, EOFError, TimeoutError) as err:
            self.stop()
            why = "timed out" if isinstance(err, TimeoutError) else "the worker failed"
            return [unanalysable(f"analysis {why} (bound {self.seconds:g}s, "
                                 f"{self.memory // 2**20} MiB)")]  # fmt: skip
        self._warm = True
        answer = json.loads(reply)
        if "error" in answer:
            return [unanalysable(answer["error"])]
        return [Finding.model_validate(f) for f in answer["findings"]]


def _send(f: IO[bytes], data: bytes) -> None:
    f.write(struct.pack("!I", len(data)) + data)
    f.flush()


def _recv(f: IO[bytes], timeout: float | None) -> bytes:
    if timeout is not None:
        import select

        if not select.select([f], [], [], timeout)[0]:
            raise TimeoutError
    head = f.read(4)
    if len(head) < 4:
        raise EOFError
    (n,) = struct.unpack("!I", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


_worker: Worker | None = None
_worker_lock = threading.Lock()


def worker() -> Worker:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = Worker()
            atexit.register(_worker.stop)
        return _worker


def bounded_findings(command: str, engine: Any) -> list[Finding]:
    """The engine's findings within the bounds (blocking: a CLI's entry point, e.g. `corral check`)."""
    pre = precheck(command)
    if pre is not None:
        return [pre]
    if inline(command):
        return engine.check_command(command)
    if not _is_default(engine):
        return [unanalysable(f"{len(command)} characters with custom rule packs: only the shipped "
                             "packs are analysed out of process")]  # fmt: skip
    return worker().check(command)


async def bounded_findings_async(command: str, engine: Any) -> list[Finding]:
    """Same, without holding the event loop while the worker analyses."""
    pre = precheck(command)
    if pre is not None:
        return [pre]
    if inline(command):
        return engine.check_command(command)
    return await asyncio.to_thread(bounded_findings, command, engine)


def _is_default(engine: Any) -> bool:
    from corral.rules.engine import RuleEngine

    return engine is RuleEngine.default()


# ---------------------------------------------------------------- the worker (child side)
def _serve(memory: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    from corral.rules.engine import RuleEngine

    engine = RuleEngine.default()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            data = _recv(stdin, None)
        except EOFError:
            return
        command = data.decode("utf-8", "surrogateescape")
        try:
            out: dict[str, Any] = {"findings": [f.model_dump(mode="json")
                                                for f in engine.check_command(command)]}  # fmt: skip
        except MemoryError:
            out = {"error": f"analysis needed more than {memory // 2**20} MiB"}
        except RecursionError:
            out = {"error": "analysis nested too deep"}
        _send(stdout, json.dumps(out).encode())


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else WORKER_MEMORY)
