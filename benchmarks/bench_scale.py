"""Many sandboxes in one supervisor (issue 11): the time to start 100 at once, memory per idle
sandbox (in the supervisor and in total, PSS over the sandbox's processes), and how many idle
sandboxes fit on this machine, tried up to 1,000 (target: 1,000).

Starting stops early, and says why, when a start fails or the machine's available memory falls
below a reserve: the figure is what fitted, not a crash.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psutil

from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.sandbox.errors import SandboxError
from corral.sandbox.sandbox import Sandbox

AT_ONCE = 100
UP_TO = 1000
BATCH = 100
RESERVE = 2 * 1024**3  # bytes of available memory left alone


def _policy() -> Policy:
    pol = load_policy("rl-strict").model_copy(deep=True)
    pol.limits.enforcement = "best_effort"
    pol.limits.wall_time = None
    return pol


def _pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            continue
    return total


async def _scale(progress: Any) -> dict[str, Any]:
    pol = _policy()
    me = psutil.Process()
    rss0 = me.memory_info().rss
    boxes: list[Sandbox] = []
    out: dict[str, Any] = {}
    task = progress.add_task("idle sandboxes", total=UP_TO)
    why = "reached the ceiling tried"
    try:
        first = [Sandbox(pol, store=False) for _ in range(AT_ONCE)]
        t0 = time.perf_counter()
        await asyncio.gather(*(b.start() for b in first))
        out["start_100_at_once_s"] = round(time.perf_counter() - t0, 3)
        boxes += first
        progress.update(task, completed=len(boxes))
        while len(boxes) < UP_TO:
            if psutil.virtual_memory().available < RESERVE:
                why = "available memory reached the reserve"
                break
            batch = [Sandbox(pol, store=False) for _ in range(min(BATCH, UP_TO - len(boxes)))]
            results = await asyncio.gather(*(b.start() for b in batch), return_exceptions=True)
            ok = [b for b, r in zip(batch, results, strict=True) if not isinstance(r, Exception)]
            boxes += ok
            progress.update(task, completed=len(boxes))
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                why = f"a start failed: {str(errors[0]).splitlines()[0][:160]}"
                await asyncio.gather(*(b.close() for b in batch if b not in ok))
                break
        n = len(boxes)
        sample = boxes[:: max(1, n // 50)]
        per_box = _pss([p for b in sample for p in b.host_pids()]) / max(1, len(sample))
        out.update({
            "idle_sandboxes_fitted": n, "stopped_because": why,
            "supervisor_rss_mib_per_sandbox": round((me.memory_info().rss - rss0) / n / 2**20, 3),
            "sandbox_pss_mib_each": round(per_box / 2**20, 3),
            "total_mib_per_sandbox": round(((me.memory_info().rss - rss0) / n + per_box) / 2**20, 3),
            "supervisor_fds": len(os.listdir("/proc/self/fd")),
        })  # fmt: skip
        alive = await asyncio.gather(*(b.exec("true") for b in boxes[:: max(1, n // 20)]))
        out["sampled_still_answer"] = all(r.exit_code == 0 for r in alive)
    except SandboxError as err:
        out["error"] = str(err).splitlines()[0]
    finally:
        await asyncio.gather(*(b.close() for b in boxes), return_exceptions=True)
    out["targets"] = {
        "idle_sandboxes": {"value": out.get("idle_sandboxes_fitted"), "target": ">= 1000",
                           "met": (out.get("idle_sandboxes_fitted") or 0) >= 1000},
    }  # fmt: skip
    return out


def run(progress: Any) -> dict[str, Any]:
    return asyncio.run(_scale(progress))
