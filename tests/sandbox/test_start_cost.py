"""What a start costs the supervisor, counted rather than timed (timings are `make bench`'s).

Every syscall the seccomp listener holds is a round trip through the supervisor's event loop. A
start should hold one: the launcher's exec of the shell. bash left alone looks its user up when
`SHELL` is unset (getpwuid: two connect()s to nscd's socket, two more round trips at every start).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.sandbox.errors import SandboxRefused
from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import new_dir, sandbox_policy


@pytest.mark.unprivileged
async def test_a_start_holds_one_syscall_the_shells_exec() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        notifier = sb.egress.notifier if sb.egress is not None else None
        assert notifier is not None, "rl-strict serves its listener through the gateway"
        assert notifier.handled == 1, f"{notifier.handled} syscalls held during the start"
        r = await sb.exec('echo "$SHELL"; ps -o comm= -p $$')
        assert r.stdout.split() == ["/bin/bash", "bash"], r.stderr


@pytest.mark.unprivileged
async def test_the_agent_can_still_set_its_own_shell() -> None:
    async with Sandbox(sandbox_policy(), extra_env={"SHELL": "/bin/sh"}) as sb:
        r = await sb.exec('echo "$SHELL"')
        assert r.stdout.strip() == "/bin/sh"


def _watched_policy():  # noqa: ANN202 - a Policy
    pol = sandbox_policy()
    pol.monitor.enabled = True
    return pol


@pytest.mark.unprivileged
async def test_the_monitor_attaches_while_the_shell_loads_and_never_records_the_shells_exec(
) -> None:  # fmt: skip
    from corral.monitor.monitor import Monitor

    async with Sandbox(_watched_policy(), store=False) as sb:
        assert sb.egress is not None and sb.egress.notifier is not None
        # attached from the notifier's callback, right after it let the shell's exec go
        assert sb.egress.notifier.execs_let_go == 1
        assert sb.id in Monitor.shared()._watched
        r = await sb.exec("/bin/true")
        assert r.exit_code == 0
        await asyncio.sleep(0.3)  # the monitor's thread records execs behind the command
        execs = [e.exe for e in sb.events if e.rule == "process.exec"]
        assert execs == ["/bin/true"], execs  # the agent's exec, not the launcher's bash
    assert sb.id not in Monitor.shared()._watched


@pytest.mark.unprivileged
async def test_a_start_that_fails_after_the_monitor_attached_leaves_nothing_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bash sources BASH_ENV before it reads the bootstrap: here that ends the shell after its
    exec was let go (the monitor attached) and before it reported ready."""
    from corral.monitor.monitor import Monitor

    watched: list[str] = []
    real_watch = Monitor.watch

    def watch(self: Monitor, sb: object) -> None:
        watched.append(sb.id)  # type: ignore[attr-defined]
        real_watch(self, sb)  # type: ignore[arg-type]

    monkeypatch.setattr(Monitor, "watch", watch)
    ws = new_dir(tmp_path / "ws")
    (ws / "die.sh").write_text("exit 3\n")
    sb = Sandbox(_watched_policy(), store=False, workspace=ws,
                 extra_env={"BASH_ENV": "/workspace/die.sh"})  # fmt: skip
    with pytest.raises(SandboxRefused):
        await sb.start()
    assert watched == [sb.id], "the monitor attached before the shell failed"
    assert sb.id not in Monitor.shared()._watched
    await sb.close()


@pytest.mark.unprivileged
async def test_a_start_cancelled_while_the_shell_loads_leaves_nothing_running_or_watched(
    tmp_path: Path,
) -> None:
    """A caller's timeout (`wait_for(sb.start(), ...)`) cancels the start while the shell loads
    (here it sleeps in BASH_ENV): the sandbox is torn down and the monitor lets go (red team:
    both were left behind, and `async with` never closes a sandbox whose start failed)."""
    from corral.monitor.monitor import Monitor

    ws = new_dir(tmp_path / "ws")
    (ws / "slow.sh").write_text("sleep 30\n")
    sb = Sandbox(_watched_policy(), store=False, workspace=ws,
                 extra_env={"BASH_ENV": "/workspace/slow.sh"})  # fmt: skip
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sb.start(), 2)
    assert sb._proc is None and sb._init_pid is None
    assert sb.id not in Monitor.shared()._watched
    await sb.close()
