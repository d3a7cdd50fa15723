"""What a start costs the supervisor, counted rather than timed (timings are `make bench`'s).

Every syscall the seccomp listener holds is a round trip through the supervisor's event loop. A
start should hold one: the launcher's exec of the shell. bash left alone looks its user up when
`SHELL` is unset (getpwuid: two connect()s to nscd's socket, two more round trips at every start).
"""

from __future__ import annotations

import pytest

from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy


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
