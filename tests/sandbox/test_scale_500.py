"""Issue 11's scale acceptance through the Python API: 500 sandboxes open at once on this 2-core
machine, the supervisor already holding 1,100 fds, every command's exit code and output right."""

from __future__ import annotations

import asyncio

import pytest

from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy
from tests.sandbox.test_busy_supervisor import busy_supervisor  # noqa: F401 - a fixture

N = 500


@pytest.mark.slow
@pytest.mark.unprivileged
async def test_500_sandboxes_at_once_with_1100_fds_held(busy_supervisor) -> None:  # noqa: F811
    pol = sandbox_policy()
    pol.limits.memory = 256 * 1024 * 1024
    boxes = [Sandbox(pol, store=False) for _ in range(N)]
    gate = asyncio.Semaphore(16)

    async def start(b: Sandbox) -> None:
        async with gate:
            await b.start()

    try:
        await asyncio.gather(*(start(b) for b in boxes))
        results = await asyncio.gather(
            *(b.exec(f"echo {i}; (exit {i % 7})") for i, b in enumerate(boxes))
        )
        wrong = [(i, r.exit_code, r.stdout, r.stderr[:120]) for i, r in enumerate(results)
                 if (r.exit_code, r.stdout) != (i % 7, f"{i}\n")]  # fmt: skip
        assert not wrong, wrong[:5]
        assert not any("Bad file descriptor" in r.stderr for r in results)
    finally:
        await asyncio.gather(*(b.close() for b in boxes), return_exceptions=True)
