"""A supervisor that already holds many fds (a normal trainer) still gets right answers."""

from __future__ import annotations

import asyncio
import os
import resource

import pytest

from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy


@pytest.fixture
def busy_supervisor():  # type: ignore[no-untyped-def]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if want < 1400:
        pytest.skip(f"hard open-files limit {hard} too low to hold 1,100 extra fds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        yield held
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.unprivileged
async def test_commands_right_when_the_supervisor_holds_1100_fds(busy_supervisor) -> None:
    pol = sandbox_policy()
    pol.limits.open_files = 256
    boxes = [Sandbox(pol, store=False) for _ in range(6)]
    await asyncio.gather(*(b.start() for b in boxes))
    try:
        for round_ in range(3):
            results = await asyncio.gather(
                *(b.exec(f"echo {i}-{round_}; (exit {i})") for i, b in enumerate(boxes))
            )
            for i, r in enumerate(results):
                assert (r.exit_code, r.stdout) == (i, f"{i}-{round_}\n"), r.stderr
        r = await boxes[0].exec("ls /proc/$$/fd | wc -l")
        assert int(r.stdout) < 16  # none of the supervisor's fds reached the sandbox
    finally:
        await asyncio.gather(*(b.close() for b in boxes))
