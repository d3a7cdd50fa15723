"""Ending a sandbox's processes: kill its init, wait for exits on pidfds, reap bubblewrap.

Order matters. bwrap runs as two processes: the outer one (our child, `Popen`) and the sandbox's
init, the outer one's child and pid 1 of the sandbox's pid namespace. Killing both at once (as a
cgroup-wide SIGKILL does) lets the outer one die first; the init is then re-parented to the host's
PID 1 and, where that PID 1 does not reap (a container's), stays a zombie for good: one per closed
sandbox. So the init is killed alone first. Its death takes the whole pid namespace with it (the
kernel kills and waits for every process in it before the init counts as exited), the outer bwrap
reaps it and exits with it, and we reap the outer bwrap: no process is left to anyone else.

Exits are waited for on pidfds (a pidfd polls readable when its process has exited), not with
sleep polls: the wait ends the moment the kernel is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from typing import Any


def adopt_child(pid: int, args: Any) -> subprocess.Popen[bytes]:
    """A `Popen` for a child this process did not start through `subprocess`: bwrap, born in its
    cgroup v2 by `corral-setid` with clone3(CLONE_PARENT) (our child, its parent setid gone).
    poll/wait/kill/returncode behave as for any `Popen` (they wait on the pid); it has no pipes."""
    proc: subprocess.Popen[bytes] = subprocess.Popen.__new__(subprocess.Popen)
    proc.args = args
    proc.pid = pid
    proc.returncode = None
    proc.stdin = proc.stdout = proc.stderr = None
    proc.text_mode = False
    proc.encoding = proc.errors = None
    proc._waitpid_lock = threading.Lock()  # type: ignore[attr-defined]
    proc._child_created = True  # type: ignore[attr-defined]
    proc._sigint_wait_secs = 0.25  # type: ignore[attr-defined]
    proc._closed_child_pipe_fds = True  # type: ignore[attr-defined]
    proc._communication_started = False  # type: ignore[attr-defined]
    proc._input = None  # type: ignore[attr-defined]
    return proc


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`, or None when the process is gone or pidfds are not supported here."""
    if pid <= 0 or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after its last ')'
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def wait_pidfds(fds: list[int], timeout: float) -> bool:
    """Block until every pidfd in `fds` polls readable (its process exited); False on timeout."""
    end = time.monotonic() + timeout
    left = set(fds)
    poller = select.poll()
    for fd in left:
        poller.register(fd, select.POLLIN)
    while left:
        ms = max(0, int((end - time.monotonic()) * 1000))
        ready = poller.poll(ms)
        if not ready:
            return False
        for fd, _ in ready:
            poller.unregister(fd)
            left.discard(fd)
    return True


async def wait_pidfd(fd: int, timeout: float) -> bool:
    """Await one pidfd's readability (its process exited) on the running loop; False on timeout."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


async def _exited(pid: int, timeout: float) -> bool:
    """Wait for `pid` to exit: on its pidfd, or (no pidfd support) by polling, as a fallback."""
    fd = pidfd_open(pid)
    if fd is not None:
        ident = _identity(fd)
        try:
            return await wait_pidfd(fd, timeout)
        finally:
            # other code on this loop may close an fd number it no longer owns: never close one
            # that is not our pidfd any more
            if _identity(fd) == ident:
                os.close(fd)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.001)
    return False


def kill_init(proc: subprocess.Popen[bytes] | None, init_pid: int | None) -> bool:
    """SIGKILL the sandbox's init (the outer bwrap's child); its pid namespace dies with it, then
    the outer bwrap reaps it and exits. False when the init was not reachable so (its pid unknown,
    gone, or no longer the outer bwrap's child). The caller may do other work while the kernel
    tears the namespaces down, then `await finish(...)`: no fd is held in between."""
    if proc is None or proc.poll() is not None or not init_pid or _ppid(init_pid) != proc.pid:
        return False
    fd = pidfd_open(init_pid)
    if fd is None:
        try:
            os.kill(init_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        # the pidfd pins the process: checked again, the pid still names the outer bwrap's child
        if _ppid(init_pid) != proc.pid:
            return False
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    finally:
        os.close(fd)


async def finish(proc: subprocess.Popen[bytes] | None, killed: bool,
                 timeout: float = 5.0) -> None:  # fmt: skip
    """Wait for the outer bwrap to exit (it does once it has reaped the killed init: so no wait on
    the init itself) and reap it; kill it when it outlives that wait (or the init was not killed)."""
    if proc is None:
        return
    if proc.poll() is None and not await _exited(proc.pid, timeout if killed else 0.5):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        if proc.poll() is None:
            await asyncio.to_thread(proc.wait, timeout)


async def stop_bwrap(proc: subprocess.Popen[bytes] | None, init_pid: int | None,
                     timeout: float = 5.0) -> None:  # fmt: skip
    """`kill_init` then `finish`: every process of the sandbox dead and bwrap reaped."""
    await finish(proc, kill_init(proc, init_pid), timeout)
