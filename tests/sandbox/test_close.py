"""Closing a sandbox ends every one of its processes and leaves none to anyone else to reap; a
sandbox is born in its cgroup and the supervisor's thread is never left in one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from corral import Sandbox
from corral.sandbox import reap
from corral.sandbox.limits import Cgroup, _cgroups_of, cgroup_name
from corral.sandbox.probe import probe
from tests.sandbox.helpers import sandbox_policy

ROOT = Path(__file__).resolve().parents[2]
cgroup_v1 = pytest.mark.skipif(
    not (probe().cgroup_writable and probe().cgroup_version == 1),
    reason="needs a writable cgroup v1 hierarchy (root)",
)

# A supervisor that is its descendants' reaper (PR_SET_CHILD_SUBREAPER): an orphaned bwrap lands
# with it instead of the host's PID 1, so anything left behind is counted, not lost.
SUBREAPER = textwrap.dedent(
    """
    import asyncio, ctypes, os
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    from corral import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    def children():
        me, out = os.getpid(), []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = open(f"/proc/{p}/stat", "rb").read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[1]) == me:
                out.append(f"{p}:{fields[0].decode()}")
        return out

    async def main():
        pol = sandbox_policy()
        for i in range(ROUNDS):
            sb = Sandbox(pol)
            await sb.start()
            for command in COMMANDS:
                await sb.exec(command)
            await sb.close()
        print(" ".join(children()) or "none", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    "commands",
    [
        ["sleep 100 & true"],
        # the shell ends by itself: bwrap's outer process used to exit without reaping its init
        ["exit"],
        ["exit 3"],
        ["kill -9 $$"],
        ["sleep 100 & disown; exit"],
        ["(sleep 100 &) ; true", "exit"],  # an orphan adopted by pid 1, then the shell ends
    ],
)
def test_closed_sandboxes_leave_no_child_to_reap(commands: list[str]) -> None:
    script = SUBREAPER.replace("ROUNDS", "4").replace("COMMANDS", repr(commands))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none", f"left behind (pid:state): {out.stdout}"


async def test_the_sandbox_pid_1_reaps_orphans_and_holds_nothing() -> None:
    """pid 1 is corral-init (or the launcher): orphans are reaped inside, and it holds none of
    the shell's pipes (so the shell's end is seen the moment it happens)."""
    async with Sandbox(sandbox_policy()) as sb:
        r = await sb.exec("for i in 1 2 3 4 5; do (sh -c 'exit 0' &) ; done; sleep 0.3; "
                          "ps -o stat= -e | grep -c Z")  # fmt: skip
        assert r.stdout.split() == ["0"], r.stdout
        assert sb._init_pid is not None
        assert os.listdir(f"/proc/{sb._init_pid}/fd") == []  # (seen from the host)
        # not dumpable: the agent (same id, no capability) cannot look into it or attach to it
        r = await sb.exec("cat /proc/1/environ >/dev/null 2>&1; echo $?; readlink /proc/1/exe "
                          ">/dev/null 2>&1; echo $?")  # fmt: skip
        assert r.stdout.split() == ["1", "1"], r.stdout


async def test_close_ends_background_jobs() -> None:
    sb = Sandbox(sandbox_policy())
    await sb.start()
    r = await sb.exec("sleep 300 >/dev/null 2>&1 & echo $!")
    assert r.exit_code == 0
    init, outer = sb._init_pid, sb._proc.pid if sb._proc else None
    inside = {p.pid for p in psutil.Process(init).children(recursive=True)}
    assert len(inside) >= 2  # the shell and its sleep
    await sb.close()
    for pid in [init, outer, *inside]:
        assert pid is not None
        assert not psutil.pid_exists(pid), f"{pid} outlived close()"


async def test_stop_bwrap_without_the_init_pid_still_reaps() -> None:
    """The fallback path (the init unreachable): the outer bwrap is killed and reaped."""
    sb = Sandbox(sandbox_policy())
    await sb.start()
    proc = sb._proc
    assert proc is not None
    await reap.stop_bwrap(proc, None)
    assert proc.returncode is not None
    await sb.close()


@cgroup_v1
async def test_born_in_its_cgroup_and_the_supervisor_thread_goes_back() -> None:
    before = _cgroups_of("/proc/thread-self")
    async with Sandbox(sandbox_policy()) as sb:
        assert sb.cgroup is not None and sb._proc is not None and sb._init_pid
        assert _cgroups_of("/proc/thread-self") == before
        for pid in (sb._proc.pid, sb._init_pid):
            where = _cgroups_of(f"/proc/{pid}")
            for ctl in sb.cgroup.dirs:
                assert where[ctl] == sb.cgroup._relative(ctl), (pid, ctl)
        assert sb.limits.mechanisms["pids"] == "cgroup-v1"
        r = await sb.exec("cat /proc/self/cgroup")
        assert r.exit_code == 0


@cgroup_v1
def test_kill_all_empties_a_cgroup_and_spares_the_supervisor() -> None:
    cg = Cgroup(cgroup_name("sb-killall-test"), probe())
    cg.create()
    try:
        procs = [subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"]) for _ in range(3)]
        cg.join(*(p.pid for p in procs))
        with cg.spawning():  # this thread is inside too, as while a sandbox is spawned
            assert os.getpid() in cg.pids()
            cg.kill_all()
            assert cg.pids() == [os.getpid()]
        for p in procs:
            assert p.wait(timeout=10) == -9
        assert cg.pids() == []
    finally:
        cg.destroy()
    assert not any(d.exists() for d in cg.dirs.values())


def _take_numbers(numbers: set[int]) -> dict[int, tuple[int, int]]:
    """Open pipes until every free one of `numbers` is ours (the lowest free number is the next
    fd; one may be in use again already, e.g. by the pidfd that close waits on): {fd: (dev, inode)}
    of every fd opened, to tell later whether each is still the same open file."""
    taken: dict[int, tuple[int, int]] = {}
    while not taken or max(taken) < max(numbers):
        for fd in os.pipe():
            st = os.fstat(fd)
            taken[fd] = (st.st_dev, st.st_ino)
    assert numbers & taken.keys(), f"none of the fds {sorted(numbers)} was freed"
    return taken


def _still_ours(taken: dict[int, tuple[int, int]]) -> list[int]:
    lost = []
    for fd, ident in taken.items():
        try:
            st = os.fstat(fd)
        except OSError:
            lost.append(fd)
            continue
        if (st.st_dev, st.st_ino) != ident:
            lost.append(fd)
    return lost


def _close_all(taken: dict[int, tuple[int, int]]) -> None:
    for fd in taken:
        with contextlib.suppress(OSError):
            os.close(fd)


async def _close_held(sb: Sandbox) -> asyncio.Task[None]:
    """Start `sb.close()` with the outer bwrap stopped (SIGSTOP): close lets the shell's fds go,
    then waits for bwrap to exit, which it cannot until SIGCONT. Returns the close's task there."""
    chan, proc = sb._chan, sb._proc
    assert chan is not None and proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    closing = asyncio.create_task(sb.close())
    for _ in range(500):
        await asyncio.sleep(0.001)
        if chan.closed:
            break
    assert chan.closed and not closing.done()
    return closing


async def test_close_after_a_cancelled_close_closes_no_fd_twice() -> None:
    """A close cancelled part-way (a client that went away, a `wait_for` around it) is finished by
    a later close, which must not close the shell's fd numbers a second time."""
    sb = Sandbox(sandbox_policy())
    await sb.start()
    chan, proc = sb._chan, sb._proc
    assert chan is not None and proc is not None
    numbers = {chan.stdin, chan.stdout, chan.stderr, chan.ctl}
    closing = await _close_held(sb)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    taken = _take_numbers(numbers)
    try:
        os.kill(proc.pid, signal.SIGCONT)
        await sb.close()
        assert not _still_ours(taken), "the second close closed fds the sandbox no longer owned"
        assert sb._proc is None and sb.closed_reason
        assert proc.returncode is not None  # bwrap reaped all the same
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        _close_all(taken)


async def test_two_closes_at_once_are_one_close() -> None:
    """A second close while the first runs (a server's stop beside an episode's end) waits for
    it: one teardown, one `sandbox.stopped` record, and both callers return once it is done."""
    sb = Sandbox(sandbox_policy())
    await sb.start()
    proc = sb._proc
    assert proc is not None
    await asyncio.gather(sb.close(), sb.close())
    stopped = [e for e in sb.events if e.rule == "sandbox.stopped"]
    assert len(stopped) == 1, [e.message for e in stopped]
    assert sb._proc is None and sb.workspace is None and proc.returncode is not None
    await sb.close()  # and a later one does nothing more
    assert len([e for e in sb.events if e.rule == "sandbox.stopped"]) == 1
