"""A stop whose request goes away (the client disconnected) does not cancel the sandbox's close:
the close is shared by every caller, and a cancelled one would leave the sandbox half torn down."""

from __future__ import annotations

import asyncio
import contextlib

from corral.policy.loader import load_policy
from corral.server.manager import SandboxManager


async def test_a_cancelled_stop_leaves_the_close_to_finish() -> None:
    pol = load_policy("rl-strict").model_copy(deep=True)
    pol.gate.enabled = False
    pol.limits.enforcement = "best_effort"
    m = SandboxManager(pol)
    entry = await m.start()
    sb = entry.sandbox
    first = asyncio.create_task(m.stop(sb.id))
    for _ in range(100):  # until the stop waits on the shared close
        await asyncio.sleep(0)
        if entry.closing is not None:
            break
    assert entry.closing is not None and not first.done()
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert not entry.closing.cancelled()
    again = await m.stop(sb.id)  # another caller (or the server's shutdown) waits for it
    assert again is entry
    assert sb.closed_reason and sb._proc is None and sb.workspace is None
