"""Acceptance: runaway workloads are stopped by their limit, leave a resource event, and the host
stays usable."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from corral import Sandbox
from corral.sandbox.probe import probe
from tests.sandbox.helpers import sandbox_policy

needs_cgroups = pytest.mark.skipif(
    not probe().cgroup_writable, reason="cgroup limits need a writable cgroup hierarchy (root)"
)


async def _next_sandbox_works() -> None:
    t0 = time.monotonic()
    async with Sandbox(sandbox_policy()) as sb:
        r = await sb.exec("echo fine")
        assert r.stdout == "fine\n"
    assert time.monotonic() - t0 < 10


@needs_cgroups
async def test_fork_bomb_hits_pids_limit() -> None:
    async with Sandbox(sandbox_policy(pids=64)) as sb:
        r = await sb.exec("bomb() { bomb | bomb & }; bomb; sleep 2", timeout=4)
        ev = [e for e in sb.events if e.rule == "resource.pids_limit"]
        assert ev and ev[0].source == "resource" and ev[0].step == 1
        r = await sb.exec("echo survived")
        assert r.stdout == "survived\n"
        pids = sb.host_pids()
        assert len(pids) < 10, "fork bomb leftovers still running"
    await _next_sandbox_works()


@needs_cgroups
async def test_memory_hog_hits_memory_limit() -> None:
    async with Sandbox(sandbox_policy(memory=64 * 1024**2)) as sb:
        r = await sb.exec("python3 -c 'b = bytearray(512 * 1024 * 1024); print(len(b))'")
        assert r.exit_code != 0 and "536870912" not in r.stdout
        ev = [e for e in sb.events if e.rule == "resource.memory_limit"]
        assert ev and ev[0].source == "resource" and ev[0].action == "killed"
        # the peak is read when the hit is found (the check after each command reads only hits)
        assert ev[0].evidence["memory_peak"] >= 32 * 1024**2, ev[0].evidence
    await _next_sandbox_works()


@pytest.mark.unprivileged
async def test_busy_loop_stopped_by_time_limit() -> None:
    async with Sandbox(sandbox_policy(command_timeout=1.0)) as sb:
        t0 = time.monotonic()
        r = await sb.exec("while :; do :; done")
        assert r.timed_out and r.exit_code == 124
        assert time.monotonic() - t0 < 5
        ev = [e for e in sb.events if e.rule == "resource.command_timeout"]
        assert ev and ev[0].source == "resource"
        r = await sb.exec("echo next")
        assert r.stdout == "next\n"
    await _next_sandbox_works()


@pytest.mark.unprivileged
async def test_cpu_time_rlimit() -> None:
    async with Sandbox(sandbox_policy(cpu_time=1)) as sb:
        r = await sb.exec("python3 -c 'while True: pass'", timeout=20)
        assert not r.timed_out and r.exit_code in (128 + 24, 137, 152)
        assert any(e.rule == "resource.cpu_time" for e in sb.events)


@needs_cgroups
async def test_cpu_quota_in_force() -> None:
    async with Sandbox(sandbox_policy(cpus=0.25)) as sb:
        assert sb.limits.mechanisms["cpus"].startswith("cgroup")
        before = sb.cgroup.counters().cpu_usage_ns
        await sb.exec("timeout 1 sh -c 'while :; do :; done'", timeout=5)
        used = (sb.cgroup.counters().cpu_usage_ns - before) / 1e9
        assert used < 0.5, f"used {used:.2f}s of CPU in 1s under a 0.25-core quota"


SUPERVISOR = textwrap.dedent(
    """
    import asyncio, sys
    from corral import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    async def main():
        sb = Sandbox(sandbox_policy())
        await sb.start()
        await sb.exec("sleep 300 & sleep 301 & (sleep 302 &) ; true")
        print(" ".join(map(str, sb.host_pids() or [sb._init_pid])), flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
    """
)


@pytest.mark.unprivileged
def _running(pid: int) -> bool:
    """Alive and not a zombie; a process that vanishes while we look is not running."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_supervisor_leaves_no_sandbox_process() -> None:
    sup = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        line = sup.stdout.readline()
        pids = [int(x) for x in line.split()]
        assert pids, "supervisor did not report its sandbox"
        inside = set()
        for p in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                inside |= {p, *(c.pid for c in psutil.Process(p).children(recursive=True))}
        assert len(inside) >= 4
    finally:
        sup.kill()
        sup.wait()
    deadline = time.monotonic() + 5
    alive = inside
    while time.monotonic() < deadline:
        alive = {p for p in inside if _running(p)}
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, f"sandbox processes outlived their supervisor: {alive}"


LOW_HARD_LIMIT = textwrap.dedent(
    """
    import asyncio, resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))
    from corral import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    async def main():
        async with Sandbox(sandbox_policy(open_files=1024)) as sb:
            print((await sb.exec("ulimit -Hn")).stdout.strip(), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.unprivileged
def test_supervisor_with_a_lower_hard_limit_still_starts_sandboxes() -> None:
    """`ulimit -n 400` before corral: the kernel will not grant the sandbox 1024, so it gets the
    stricter 400 rather than failing to start."""
    r = subprocess.run([sys.executable, "-c", LOW_HARD_LIMIT], capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))  # fmt: skip
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.strip() == "400"
