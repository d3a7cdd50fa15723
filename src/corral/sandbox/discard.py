"""A closed sandbox's own workspace, removed behind `close()` rather than inside it.

Why: removing even a small workspace is a walk (an open, a getdents, an unlink per entry) that
`close()` would wait for, a third of its time for an empty one, and an agent that left a large
tree would make every close as slow as its tree. `close()` renames the workspace (one syscall: it
is gone from its path at once, and no new sandbox can be handed that path) and one worker thread
removes it, then lets go of the sandbox's host id: the id is never handed to another sandbox while
files it owns are still on disk.

The new name keeps the `<pid>-` prefix, so a supervisor that dies before the worker is done
leaves a tree that the next supervisor's sweep of dead supervisors' workspaces removes. At exit
the worker gets a few seconds to finish; what it did not reach is left to that sweep.

LIMITATION: between `close()` and the worker's pass, the tree still takes its disk space.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from corral.sandbox import treewalk

SUFFIX = ".closed"
EXIT_WAIT_S = 5.0

_jobs: queue.SimpleQueue[tuple[str, Callable[[], None] | None] | None] = queue.SimpleQueue()
_worker: threading.Thread | None = None
_guard = threading.Lock()
_pending = 0
_idle = threading.Condition(_guard)


def _run() -> None:
    global _pending
    while True:
        job = _jobs.get()
        if job is None:
            return
        path, then = job
        try:
            with contextlib.suppress(OSError):
                treewalk.rmtree(path)
        finally:
            if then is not None:
                with contextlib.suppress(Exception):
                    then()
            with _idle:
                _pending -= 1
                _idle.notify_all()


def discard(path: Path, then: Callable[[], None] | None = None) -> bool:
    """Take `path` away now and remove it behind the caller; `then` runs once it is gone.
    False when it could not be renamed (the caller removes it itself)."""
    global _worker, _pending
    gone = path.with_name(path.name + SUFFIX)
    try:
        os.rename(path, gone)
    except OSError:
        return False
    with _idle:
        _pending += 1
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_run, name="corral-discard", daemon=True)
            _worker.start()
            atexit.register(wait, EXIT_WAIT_S)
    _jobs.put((str(gone), then))
    return True


def wait(timeout: float | None = None) -> bool:
    """Until every discarded tree is removed (True), or the timeout passed (False)."""
    with _idle:
        return _idle.wait_for(lambda: _pending == 0, timeout)
