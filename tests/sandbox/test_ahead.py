"""A cold start takes its cgroup and its workspace made ahead (sandbox/ahead.py): each is handed
to one sandbox only, holds what an inline one would (the policy's limits, the protected paths'
placeholders, bound read-only), follows the policy that asked for it, and none outlives its
supervisor's reserve."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from corral import Sandbox
from corral.sandbox import ahead
from corral.sandbox.probe import probe
from tests.sandbox.helpers import sandbox_policy

pytestmark = pytest.mark.unprivileged
CGROUPS = probe().cgroup_writable


@pytest.fixture(autouse=True)
def fresh_reserve() -> None:
    """No request of an earlier test's close still waiting (it would replace this test's)."""
    assert ahead.reserve.wait_idle(10)
    ahead.reserve.clear()
    was = ahead.reserve.enabled
    ahead.reserve.enabled = True
    yield
    ahead.reserve.enabled = was
    assert ahead.reserve.wait_idle(10)
    ahead.reserve.clear()


def wait_reserved(cgroups: int, workspaces: int) -> None:
    """The worker runs behind close(): wait (bounded) until it has made what it was asked."""
    for _ in range(500):
        held = ahead.reserve.held()
        if held["cgroups"] >= cgroups and held["workspaces"] >= workspaces:
            return
        time.sleep(0.01)
    raise AssertionError(f"nothing made ahead: {ahead.reserve.held()}")


def reserved_paths() -> list[Path]:
    out = [p for p, *_ in ahead.reserve._workspaces.values()]
    for cg, _ in ahead.reserve._cgroups.values():
        out += list(cg.dirs.values())
    return out


async def test_the_next_start_takes_what_was_made_ahead() -> None:
    pol = sandbox_policy()
    async with Sandbox(pol) as first:
        await first.exec("true")
    wait_reserved(int(CGROUPS), 1)
    made = reserved_paths()
    reserved_ws = [p for p, *_ in ahead.reserve._workspaces.values()]
    async with Sandbox(pol) as sb:
        assert sb.workspace is not None and sb.id in sb.workspace.name  # renamed to its sandbox
        assert sb.workspace.name.endswith(reserved_ws[0].name.rsplit("-", 1)[-1])
        assert not reserved_ws[0].exists()
        # the placeholders came with it, bound read-only as an inline start binds them
        r = await sb.exec("test -d tests && test -f conftest.py && touch tests/x 2>&1; echo $?")
        assert r.stdout.strip().splitlines()[-1] != "0", r.stdout
        if CGROUPS:
            assert sb.cgroup is not None
            assert any(d in made for d in sb.cgroup.dirs.values())  # the reserved one
            assert sb.limits.mechanisms["memory"] and sb.limits.mechanisms["pids"]
            mem = sb.cgroup.dirs.get("memory")
            if mem is not None:
                got = int((mem / "memory.limit_in_bytes").read_text())
                assert got == pol.limits.memory
            pids = sb.cgroup.dirs.get("pids")
            if pids is not None:
                assert int((pids / "pids.max").read_text()) == pol.limits.pids
            assert os.getpid() not in sb.host_pids() and sb.host_pids()


async def test_a_workspace_made_ahead_is_the_agents_and_counted_as_one_made_inline() -> None:
    """Its disk baseline was measured when it was made and its hand-over is the start's own (no
    walk: it holds nothing but the protected placeholders): the agent writes where it may, not
    where it may not, and filling it is the same resource event."""
    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    pol.limits.inodes = 300
    async with Sandbox(pol):
        pass
    wait_reserved(0, 1)
    reserved_ws = [p for p, *_ in ahead.reserve._workspaces.values()]
    async with Sandbox(pol) as sb:
        assert sb.workspace is not None
        assert sb.workspace.name.endswith(reserved_ws[0].name.rsplit("-", 1)[-1])  # taken
        r = await sb.exec("mkdir -p src && echo hi > src/a && cat src/a && "
                          "(touch tests/x conftest.py 2>/dev/null; echo rc=$?)")  # fmt: skip
        assert r.stdout.split() == ["hi", "rc=1"], (r.stdout, r.stderr)
        assert not [e for e in sb.events if e.source == "resource"]
        await sb.exec("head -c 3000000 /dev/zero > big")
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert hits and hits[0].step == 2 and hits[0].evidence["where"] == "workspace_disk"
        await sb.exec("rm big; mkdir d && cd d && touch $(seq 1 320)")
        hits = [e for e in sb.events if e.rule == "resource.inode_limit"]
        assert hits and hits[0].step == 3


async def test_one_reserve_goes_to_one_sandbox() -> None:
    pol = sandbox_policy()
    async with Sandbox(pol):
        pass
    wait_reserved(int(CGROUPS), 1)
    a, b = Sandbox(pol), Sandbox(pol)
    try:
        await asyncio.gather(a.start(), b.start())
        assert a.workspace != b.workspace
        if CGROUPS:
            assert a.cgroup is not None and b.cgroup is not None
            assert set(a.cgroup.dirs.values()).isdisjoint(b.cgroup.dirs.values())
            assert set(a.host_pids()).isdisjoint(b.host_pids())
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_another_policy_does_not_take_it() -> None:
    async with Sandbox(sandbox_policy()):
        pass
    wait_reserved(int(CGROUPS), 1)
    made = set(reserved_paths())
    other = sandbox_policy(memory=256 * 1024 * 1024, pids=64)
    other.filesystem.protected = ["only_this"]
    async with Sandbox(other) as sb:
        assert sb.workspace not in made and sb.workspace is not None
        assert (sb.workspace / "only_this").is_dir() and not (sb.workspace / "tests").exists()
        if CGROUPS:
            assert sb.cgroup is not None and made.isdisjoint(sb.cgroup.dirs.values())
            mem = sb.cgroup.dirs.get("memory")
            if mem is not None:
                assert int((mem / "memory.limit_in_bytes").read_text()) == 256 * 1024 * 1024


async def test_cleared_at_exit_and_forgotten_by_a_forked_child() -> None:
    async with Sandbox(sandbox_policy()):
        pass
    wait_reserved(int(CGROUPS), 1)
    assert ahead.reserve.wait_idle(10)
    made = reserved_paths()
    assert made and all(p.exists() for p in made)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's to hand out
        os.close(r)
        held = ahead.reserve.held()
        os.write(w, f"{held['cgroups']} {held['workspaces']}".encode())
        os._exit(0)
    os.close(w)
    said = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert said == "0 0"
    assert all(p.exists() for p in made)  # the child's exit took none of the parent's
    ahead.reserve.clear()
    assert not any(p.exists() for p in made)


async def test_a_later_request_replaces_a_waiting_one() -> None:
    """Only the latest close's request is served (no backlog of work after a burst)."""
    async with Sandbox(sandbox_policy(memory=256 * 1024 * 1024)):
        pass
    async with Sandbox(sandbox_policy()):
        pass
    assert ahead.reserve.wait_idle(10)
    wait_reserved(int(CGROUPS), 1)
    assert ahead.reserve.held() == {"cgroups": int(CGROUPS), "workspaces": 1}
    if CGROUPS:
        ((cg, _),) = ahead.reserve._cgroups.values()
        mem = cg.dirs.get("memory")
        if mem is not None:  # the second policy's limits, not the first's
            assert (
                int((mem / "memory.limit_in_bytes").read_text()) == sandbox_policy().limits.memory
            )


async def test_disabled_makes_nothing() -> None:
    ahead.reserve.enabled = False
    async with Sandbox(sandbox_policy()):
        pass
    await asyncio.sleep(0.05)
    assert ahead.reserve.held() == {"cgroups": 0, "workspaces": 0}
