"""Issue 2 and 15 figures: what starting, using and closing a sandbox costs, next to bare runs.

Measured in one run, side by side, so the ratios hold on whatever this host is doing:
- bare `true` and bare `bwrap ... true` (the floor), back to back and with idle gaps, each bare
  bwrap run taken just before the corral run it is compared with (interleaved);
- corral in-process: `start()` back to back and after a 200 ms idle gap (the first cgroup v1 move
  after a quiet spell used to wait for an RCU grace period, which back-to-back runs never see),
  the whole round create -> first command's result -> close after idle, `close()` alone, a warm
  step, and the warm pool's hand-out to the first command's result;
- memory per idle sandbox (PSS of its processes);
- 1,000 sandboxes opened and closed by a supervisor that is its descendants' reaper: every process
  left for it to reap is a zombie a container's PID 1 would have kept;
- peers where they run here (`docker run`, gVisor `runsc`); marked skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from rich.progress import Progress

from benchmarks.stats import summarize, timed
from corral import Sandbox
from corral.policy.loader import load_policy
from corral.sandbox.bwrap import SYSTEM_DIRS
from corral.sandbox.probe import probe
from corral.sandbox.warm import WarmPool
from corral.store.sqlite import EventStore

RUNS = int(os.environ.get("CORRAL_BENCH_RUNS", "200"))
GAP_RUNS = int(os.environ.get("CORRAL_BENCH_GAP_RUNS", "100"))
GAP_S = 0.2
ZOMBIE_ROUNDS = int(os.environ.get("CORRAL_BENCH_ZOMBIE_ROUNDS", "1000"))
IDLE_SANDBOXES = 20
ROOT = Path(__file__).resolve().parents[1]


def _bare_bwrap_argv() -> list[str]:
    argv = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-net", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]  # fmt: skip
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", "/bin/true"]


def _answers(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _docker_available() -> bool:
    return shutil.which("docker") is not None and _answers(["docker", "info"])


def _policy() -> Any:
    pol = load_policy("rl-strict").model_copy(deep=True)
    if not probe().cgroup_writable:
        pol.limits.enforcement = "best_effort"
    return pol


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int | None) -> list[int]:
    import psutil

    if not pid:
        return []
    try:
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


async def _corral(progress: Progress, store: EventStore, bare: list[str]) -> dict[str, Any]:
    """corral's starts, rounds and closes, each paired with a bare bwrap run just before it under
    the same conditions (back to back, or after the same idle gap): this shared VM's speed drifts
    by a third within minutes, and a floor measured minutes apart moved the ratios with it."""
    pol = _policy()
    cold, close, warm, builtin, bare_b2b, bare_idle = [], [], [], [], [], []

    def run_bare() -> float:
        return timed(lambda: subprocess.run(bare, check=True))

    task = progress.add_task("corral start/close back to back (bare bwrap between)", total=RUNS)
    for _ in range(RUNS):
        bare_b2b.append(run_bare())
        sb = Sandbox(pol, store=store)
        t0 = time.perf_counter()
        await sb.start()
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await sb.close()
        close.append(time.perf_counter() - t0)
        progress.advance(task)
    cold_gap, close_gap, rounds = [], [], []
    task = progress.add_task("corral round after 200 ms idle (bare bwrap after idle between)",
                             total=GAP_RUNS)  # fmt: skip
    for _ in range(GAP_RUNS):
        await asyncio.sleep(GAP_S)
        bare_idle.append(run_bare())
        await asyncio.sleep(GAP_S)
        t0 = time.perf_counter()
        sb = Sandbox(pol, store=store)
        t1 = time.perf_counter()
        await sb.start()
        t2 = time.perf_counter()
        await sb.exec("true")
        t3 = time.perf_counter()
        await sb.close()
        t4 = time.perf_counter()
        cold_gap.append(t2 - t1)
        close_gap.append(t4 - t3)
        rounds.append(t4 - t0)
        progress.advance(task)
    task = progress.add_task("corral warm command", total=RUNS)
    async with Sandbox(pol, store=store) as sb:
        for _ in range(10):
            await sb.exec("true")
        for _ in range(RUNS):
            t0 = time.perf_counter()
            await sb.exec("true")
            warm.append(time.perf_counter() - t0)
            progress.advance(task)
        for _ in range(RUNS):
            t0 = time.perf_counter()
            await sb.exec(":")
            builtin.append(time.perf_counter() - t0)
    return {
        "bare_bwrap_true": summarize(bare_b2b),
        "bare_bwrap_true_after_idle": summarize(bare_idle),
        "cold_start": summarize(cold),
        "close": summarize(close),
        "cold_start_after_idle": summarize(cold_gap),
        "close_after_idle": summarize(close_gap),
        "round_after_idle": summarize(rounds),
        "warm_command_true": summarize(warm),
        "warm_command_builtin": summarize(builtin),
    }


async def _pool(progress: Progress, store: EventStore) -> dict[str, Any]:
    """Hand-out to first command's result, from a pool that keeps up (full again before the
    next hand-out; its refill, not timed, waits for the first command rather than compete)."""
    pol = _policy()

    def factory(key: Hashable, episode_id: str) -> Sandbox:
        return Sandbox(pol, episode_id=episode_id, store=store)

    pool = WarmPool(factory, 2)
    samples = []
    task = progress.add_task("warm pool hand-out", total=GAP_RUNS)
    try:
        for i in range(GAP_RUNS):
            if not await pool.wait_ready(timeout=60):
                return {"error": f"pool not filled: {pool.last_error}"}
            t0 = time.perf_counter()
            sb = await pool.take(episode_id=f"ep-bench-{i}")
            assert sb is not None
            await sb.exec("true")
            samples.append(time.perf_counter() - t0)
            await sb.close()
            progress.advance(task)
    finally:
        await pool.close()
    return summarize(samples)


async def _memory(store: EventStore) -> dict[str, Any]:
    pol = _policy()
    boxes = [Sandbox(pol, store=store) for _ in range(IDLE_SANDBOXES)]
    try:
        for sb in boxes:
            await sb.start()
        await asyncio.sleep(0.5)
        pids = [p for sb in boxes for p in _tree(sb._proc.pid if sb._proc else None)]
        total = sum(_pss_kib(p) for p in pids)
    finally:
        for sb in boxes:
            await sb.close()
    return {"sandboxes": IDLE_SANDBOXES, "processes_each": len(pids) / IDLE_SANDBOXES,
            "pss_mib_each": round(total / 1024 / IDLE_SANDBOXES, 3)}  # fmt: skip


ZOMBIES = textwrap.dedent(
    """
    import asyncio, ctypes, os, sys, time
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    from corral import Sandbox
    from benchmarks.bench_sandbox import _policy

    def left():
        me, n = os.getpid(), 0
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = open(f"/proc/{p}/stat", "rb").read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == me:
                n += 1
        return n

    async def main(rounds):
        pol = _policy()
        t0 = time.perf_counter()
        for _ in range(rounds):
            sb = Sandbox(pol, store=False)
            await sb.start()
            await sb.exec("true")
            await sb.close()
        took = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        print(left(), round(took, 3))

    asyncio.run(main(int(sys.argv[1])))
    """
)


def _zombies(progress: Progress) -> dict[str, Any]:
    task = progress.add_task(f"{ZOMBIE_ROUNDS} sandboxes opened and closed", total=1)
    out = subprocess.run([sys.executable, "-c", ZOMBIES, str(ZOMBIE_ROUNDS)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)  # fmt: skip
    progress.advance(task)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-2000:] or f"exit {out.returncode}"}
    left, took = out.stdout.split()
    return {"sandboxes": ZOMBIE_ROUNDS, "left_unreaped": int(left), "seconds": float(took)}


def _bare(progress: Progress, name: str, argv: list[str], runs: int, gap: float = 0.0) -> Any:
    task = progress.add_task(name, total=runs)
    samples = []
    for _ in range(runs):
        if gap:
            time.sleep(gap)
        samples.append(timed(lambda: subprocess.run(argv, check=True)))
        progress.advance(task)
    return summarize(samples)


def _peers(progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = min(RUNS, 50)
    if _docker_available():
        out["docker_run_rm"] = _bare(progress, "docker run --rm", ["docker", "run", "--rm",
                                     "--network=none", "debian:stable-slim", "true"], runs)  # fmt: skip
    else:
        out["docker_run_rm"] = {"skipped": "no Docker daemon answers on this host"}
    runsc = shutil.which("runsc")
    argv = [runsc or "runsc", "--rootless", "--network=none", "do", "true"]
    if runsc and _answers(argv):
        out["runsc_do"] = _bare(progress, "runsc do true", argv, runs)
    else:
        out["runsc_do"] = {"skipped": "gVisor runsc is not installed" if not runsc
                           else "runsc does not run here"}  # fmt: skip
    return out


def _target(value: float, limit: float, text: str) -> dict[str, Any]:
    return {"value": round(value, 2), "target": text, "met": value <= limit}


def run(progress: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": RUNS, "idle_gap_runs": GAP_RUNS, "idle_gap_s": GAP_S,
                           "cgroups": probe().cgroup_writable,
                           "cgroup_version": probe().cgroup_version}  # fmt: skip
    argv = _bare_bwrap_argv()
    out["bare_subprocess_true"] = _bare(progress, "bare subprocess true", ["/bin/true"], RUNS)
    home = tempfile.mkdtemp(prefix="corral-bench-")
    store = EventStore(os.path.join(home, "events.db"))
    try:
        out.update(asyncio.run(_corral(progress, store, argv)))
        out["pool_hand_out_to_first_result"] = asyncio.run(_pool(progress, store))
        out["memory_per_idle_sandbox"] = asyncio.run(_memory(store))
    finally:
        store.close()
        shutil.rmtree(home, ignore_errors=True)
    out["open_close_zombies"] = _zombies(progress)
    out["peers"] = _peers(progress)
    bwrap_med = out["bare_bwrap_true"]["median_ms"]
    bwrap_idle = out["bare_bwrap_true_after_idle"]["median_ms"]
    warm_over = out["warm_command_true"]["median_ms"] - out["bare_subprocess_true"]["median_ms"]
    pool = out["pool_hand_out_to_first_result"]
    zombies = out["open_close_zombies"]
    out["targets"] = {
        "cold_start_over_bare_bwrap": _target(
            out["cold_start"]["median_ms"] / bwrap_med, 3, "<= 3x"
        ),  # fmt: skip
        "round_after_idle_over_bare_bwrap_after_idle": _target(
            out["round_after_idle"]["median_ms"] / bwrap_idle, 3, "<= 3x"
        ),  # fmt: skip
        "close_ms": _target(out["close"]["median_ms"], 3, "<= 3 ms (with cgroups)"),
        "close_after_idle_ms": _target(
            out["close_after_idle"]["median_ms"], 3, "<= 3 ms (with cgroups)"
        ),  # fmt: skip
        "pool_hand_out_to_first_result_ms": _target(
            pool.get("median_ms", float("inf")), 2, "<= 2 ms"
        ),  # fmt: skip
        "zombies_after_open_close": _target(
            zombies.get("left_unreaped", float("inf")), 0, f"0 after {ZOMBIE_ROUNDS}"
        ),  # fmt: skip
        "warm_command_over_bare_subprocess_ms": _target(warm_over, 2, "<= 2 ms"),
        "memory_per_idle_sandbox_mib": _target(
            out["memory_per_idle_sandbox"]["pss_mib_each"], 0.6, "<= 0.6 MiB (issue 15's figure)"
        ),  # fmt: skip
    }
    return out
