"""Where a cold start's time goes, part by part (`python -m benchmarks.startup_parts [ROUNDS]`).

Not part of `make bench`: it times corral's own steps by wrapping them (private names that may
move), to explain the `cold_start_after_idle` figure in docs/startup.md. Each round waits 200 ms
first, so every start is a cold one after a quiet spell. Also times the CLI's phases in one process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

GAP_S = float(os.environ.get("CORRAL_PARTS_GAP", "0.2"))  # 0: back to back
marks: dict[str, list[float]] = {}


def _rec(label: str, seconds: float) -> None:
    marks.setdefault(label, []).append(seconds)


def _wrap(owner: Any, name: str, label: str) -> None:
    """Time every call of owner.name (sync or async; a staticmethod stays one)."""
    raw = owner.__dict__.get(name) if isinstance(owner, type) else None
    static = isinstance(raw, staticmethod)
    fn = getattr(owner, name)
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*a, **k)
            finally:
                _rec(label, time.perf_counter() - t0)

        new: Callable[..., Any] = timed_async
    else:

        @functools.wraps(fn)
        def timed_sync(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                _rec(label, time.perf_counter() - t0)

        new = timed_sync
    setattr(owner, name, staticmethod(new) if static else new)


def sandbox_parts(rounds: int) -> dict[str, float]:
    import corral.egress.gateway as gateway
    import corral.egress.launch as launch
    import corral.sandbox.sandbox as sbmod
    from corral.policy.loader import load_policy
    from corral.sandbox import limits
    from corral.store.sqlite import EventStore

    for owner, name, label in [
        (sbmod.Sandbox, "_setup_limits", "cgroup: create, write limits"),
        (sbmod.Sandbox, "_read_child_pid", "bwrap: exec, namespaces, clone (until --info-fd)"),
        (limits.Cgroup, "join", "cgroup: join (skipped where born inside)"),
        (sbmod.Sandbox, "_confine", "confine: join + rlimits"),
        (launch, "read_line", "launcher: mounts, seccomp, listeners (after release)"),
        (gateway.procinfo, "find_by_ns_pid", "egress: find the launcher's host pid"),
        (gateway.Egress, "started", "egress: whole handshake"),
        (sbmod.Sandbox, "start", "start() total"),
        (sbmod.Sandbox, "exec", "first command (true)"),
        (sbmod.Sandbox, "close", "close() total"),
    ]:
        if hasattr(owner, name):
            _wrap(owner, name, label)
    for name, label in [("_take_identity", "identity: host uid, workspace handed over (root)"),
                        ("_make_protected_placeholders", "protected placeholders")]:  # fmt: skip
        if hasattr(sbmod.Sandbox, name):
            _wrap(sbmod.Sandbox, name, label)
    real_popen = subprocess.Popen

    class Popen(real_popen):  # type: ignore[valid-type,misc]
        def __init__(self, *a: Any, **k: Any) -> None:
            t0 = time.perf_counter()
            super().__init__(*a, **k)
            _rec("Popen: fork + exec of the bwrap command line", time.perf_counter() - t0)

    sbmod.subprocess.Popen = Popen  # type: ignore[misc]
    boot_at: list[float] = []
    real_boot, real_shell_pid = sbmod.bootstrap, sbmod.Sandbox.shell_pid

    def bootstrap(*a: Any, **k: Any) -> bytes:
        boot_at.append(time.perf_counter())
        return real_boot(*a, **k)

    def shell_pid(self: Any) -> int | None:
        if boot_at:
            _rec("shell: bootstrap sent -> ready", time.perf_counter() - boot_at.pop())
        return real_shell_pid(self)

    sbmod.bootstrap = bootstrap  # type: ignore[assignment]
    sbmod.Sandbox.shell_pid = shell_pid  # type: ignore[method-assign]

    async def run() -> None:
        home = tempfile.mkdtemp(prefix="corral-parts-")
        store = EventStore(os.path.join(home, "events.db"))
        pol = load_policy("rl-strict")
        try:
            for _ in range(rounds):
                await asyncio.sleep(GAP_S)
                sb = sbmod.Sandbox(pol, store=store)
                await sb.start()
                await sb.exec("true")
                await sb.close()
        finally:
            store.close()
            sbmod.subprocess.Popen = real_popen  # type: ignore[misc]

    asyncio.run(run())
    return {k: round(statistics.median(v) * 1000, 3) for k, v in sorted(marks.items())}


def sandbox_timeline(rounds: int) -> dict[str, float]:
    """Milliseconds since `Sandbox()` at which each point of a round is reached (medians)."""
    import corral.egress.launch as launch
    import corral.monitor.attach as attach_mod
    import corral.sandbox.sandbox as sbmod
    from corral.policy.loader import load_policy
    from corral.store.sqlite import EventStore

    at: dict[str, float] = {}
    points: dict[str, list[float]] = {}

    def mark(name: str) -> None:
        at[name] = time.perf_counter()

    real_popen = subprocess.Popen

    class Popen(real_popen):  # type: ignore[valid-type,misc]
        def __init__(self, *a: Any, **k: Any) -> None:
            mark("Popen called")
            super().__init__(*a, **k)
            mark("Popen returned")

    real_read_line, real_child_pid = launch.read_line, sbmod.Sandbox._read_child_pid
    real_shell_pid, real_attach = sbmod.Sandbox.shell_pid, attach_mod.attach
    real_limits = sbmod.Sandbox._setup_limits

    async def read_line(*a: Any, **k: Any) -> str:
        line = await real_read_line(*a, **k)
        mark("the launcher's report (bwrap's mounts done)")
        return line

    async def child_pid(info_r: int) -> int:
        pid = await real_child_pid(info_r)
        mark("--info-fd (namespaces made, init cloned)")
        return pid

    def shell_pid(self: Any) -> int | None:
        mark("the shell ready")
        return real_shell_pid(self)

    def attach(ctx: Any) -> Any:
        out = real_attach(ctx)
        mark("the monitor attached")
        return out

    def setup_limits(self: Any, caps: Any) -> Any:
        mark("start()'s prologue done (workspace, host id)")
        out = real_limits(self, caps)
        mark("the cgroup ready")
        return out

    sbmod.subprocess.Popen = Popen  # type: ignore[misc]
    launch.read_line = read_line  # type: ignore[assignment]
    sbmod.Sandbox._read_child_pid = staticmethod(child_pid)  # type: ignore[method-assign,assignment]
    sbmod.Sandbox.shell_pid = shell_pid  # type: ignore[method-assign]
    attach_mod.attach = attach  # type: ignore[assignment]
    sbmod.Sandbox._setup_limits = setup_limits  # type: ignore[method-assign]

    async def run() -> None:
        home = tempfile.mkdtemp(prefix="corral-timeline-")
        store = EventStore(os.path.join(home, "events.db"))
        pol = load_policy("rl-strict")
        try:
            for _ in range(rounds):
                await asyncio.sleep(GAP_S)
                at.clear()
                t0 = time.perf_counter()
                sb = sbmod.Sandbox(pol, store=store)
                await sb.start()
                mark("start() returned")
                await sb.exec("true")
                mark("the first command's result (true)")
                await sb.close()
                mark("close() returned")
                for name, t in at.items():
                    points.setdefault(name, []).append((t - t0) * 1000)
        finally:
            store.close()
            sbmod.subprocess.Popen = real_popen  # type: ignore[misc]
            launch.read_line = real_read_line  # type: ignore[assignment]
            sbmod.Sandbox._read_child_pid = staticmethod(real_child_pid)  # type: ignore[method-assign]
            sbmod.Sandbox.shell_pid = real_shell_pid  # type: ignore[method-assign]
            attach_mod.attach = real_attach  # type: ignore[assignment]
            sbmod.Sandbox._setup_limits = real_limits  # type: ignore[method-assign]

    asyncio.run(run())
    med = {k: round(statistics.median(v), 2) for k, v in points.items()}
    return dict(sorted(med.items(), key=lambda kv: kv[1]))


CLI_PHASES = """
import time, sys
t0 = time.perf_counter()
out = {}
def lap(name, _t=[t0]):
    now = time.perf_counter(); out[name] = round((now - _t[0]) * 1000, 3); _t[0] = now
import typer; lap("import typer")
import corral.cli.run; lap("import corral.cli.run (pydantic, models, sandbox, egress)")
from corral.policy.loader import load_policy
pol = load_policy("rl-strict"); lap("load the policy")
import asyncio
from corral.sandbox.sandbox import Sandbox
async def main():
    sb = Sandbox(pol); lap("Sandbox(): gate, egress, store")
    await sb.start(); lap("start()")
    await sb.exec("true"); lap("first command (waits for the rule engine if not built)")
    await sb.close(); lap("close()")
asyncio.run(main())
print(__import__("json").dumps(out))
"""


def cli_phases(rounds: int) -> dict[str, float]:
    runs: list[dict[str, float]] = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", CLI_PHASES], capture_output=True, text=True,
                             check=True)  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        time.sleep(GAP_S)
    start = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        start.append(time.perf_counter() - t0)
    res = {"interpreter start and exit (python -c pass)": round(statistics.median(start) * 1000,
                                                                3)}  # fmt: skip
    res.update({k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]})
    return res


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    result = {"rounds": rounds, "idle_gap_s": GAP_S, "load_average": os.getloadavg(),
              "sandbox_timeline_ms": sandbox_timeline(rounds),
              "sandbox_median_ms": sandbox_parts(rounds),
              "cli_median_ms": cli_phases(max(5, rounds // 3))}  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
