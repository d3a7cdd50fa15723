"""Attach every sandbox to the supervisor's monitor: the one call `Sandbox.start()` makes.

Whatever starts a sandbox (`corral run`, `Sandbox`, `corral serve`, `SandboxEnv`, `SandboxPool`),
`start()` hands its episode context here and `close()` takes it back, so no entry point can forget
the monitor. The policy's `monitor:` section governs it (`enabled: false` leaves only the gate and
the gateway); `observe_only` still records everything and enforces nothing.
"""

from __future__ import annotations

from typing import Any


def attach(ctx: Any) -> Any:
    """Watch the episode with the shared monitor; returns the monitor, or None when disabled."""
    if not ctx.policy.monitor.enabled:
        return None
    from corral.monitor.monitor import Monitor

    monitor = Monitor.shared()
    monitor.watch(ctx)
    return monitor


def detach(ctx: Any, record_steps: bool = True) -> None:
    """Stop watching (writes the episode's resource summary first) and put every step that no
    caller recorded in the store (not for a harness sandbox: its commands are not the agent's
    steps); safe to call twice."""
    monitor = getattr(ctx, "watch", None)
    if monitor is not None:
        ctx.watch = None
        monitor.unwatch(ctx, summarise=True)
    if record_steps:
        record_missing_steps(ctx)


def record_missing_steps(ctx: Any) -> int:
    """Every episode has its steps in the store, whatever started it: `SandboxEnv` and the ROCK
    routes write theirs as they go (with observation and reward); for the rest (`corral run`, a
    plain `Sandbox`, `/run_code`) each step is written here at close from the episode's own
    events: its command, exit status, times and the penalty charged to it (origin step)."""
    store = getattr(getattr(ctx, "sink", None), "store", None)
    if store is None:
        return 0
    from corral.store.steps import StepRecord

    steps: dict[int, dict[str, Any]] = {}
    for e in ctx.events:
        if e.step is None:
            continue
        s = steps.setdefault(e.step, {"penalty": 0.0, "rules": []})
        if e.rule == "sandbox.command_started":
            s["action"] = e.argv[-1] if e.argv else e.message
            s["started"] = e.ts
        elif e.rule == "sandbox.command_ended":
            s["ended"] = e.ts
            s["exit_code"] = e.evidence.get("exit_code")
        elif e.source == "policy" and e.action == "blocked" and "started" not in s:
            s["action"] = e.argv[-1] if e.argv else e.message  # refused by the gate: a step too
            s.setdefault("started", e.ts)
            s["ended"] = e.ts
            s["exit_code"] = 126
            s["blocked"] = True
        if e.action == "terminated":
            s["terminated"] = True
        if e.rule == "respond.penalty":
            s["penalty"] += float(e.evidence.get("penalty", 0.0))
        elif e.rule not in ("sandbox.command_started", "sandbox.command_ended"):
            s["rules"].append(e.rule)
    try:
        recorded = {r.step: r for r in store.steps(ctx.episode_id)}
    except Exception:  # noqa: BLE001 - a store that cannot answer: write nothing twice
        return 0
    have = set(recorded)
    _recharge(ctx, store, recorded)
    written = 0
    for step, s in sorted(steps.items()):
        if step in have or "action" not in s:
            continue
        started = s.get("started")
        rec = StepRecord(episode_id=ctx.episode_id, sandbox_id=ctx.id, step=step,
                         action=str(s["action"])[:65536], exit_code=s.get("exit_code"),
                         penalty=s["penalty"], terminated=s.get("terminated", False),
                         info={"event_rules": s["rules"][:256], "recorded_by": "sandbox",
                               "blocked": s.get("blocked", False)})  # fmt: skip
        if started is not None:
            rec.started = started
            rec.ended = s.get("ended") or started
        try:
            store.add_step(rec, hold=True)  # (in the transaction of `sandbox.stopped`)
            written += 1
        except Exception:  # noqa: BLE001 - the events are already recorded; report, go on
            continue
    return written


def _recharge(ctx: Any, store: Any, recorded: dict[int, Any]) -> None:
    """Steps their caller recorded (`SandboxEnv`, the ROCK routes) were charged by the reward
    shaper over the events seen while each ran; a finding that landed later (a background job's
    act, a sensor's sweep after the command returned) belongs to its origin step. The records
    are charged again, by the same shaper, each act once on its origin step."""
    from corral.rl.reward import RewardShaper

    # each act once (its worst finding), on its origin step: never a sum over findings, which
    # would charge one act twice when two sensors saw it (the exec and the gateway)
    by_origin = RewardShaper(ctx.policy).penalty_by_step(ctx.events)
    stale = {step: round(by_origin.get(step, 0.0), 6) for step, r in recorded.items()
             if r.kind == "action"
             and abs(by_origin.get(step, 0.0) - r.penalty) > 1e-9}  # fmt: skip
    if stale:
        try:
            store.recharge_steps(ctx.episode_id, stale)
        except Exception:  # noqa: BLE001 - the events hold the truth; the records stay as written
            return


def status() -> dict[str, Any]:
    """What is really running in this process, for `corral doctor` and `/healthz`."""
    from corral.monitor.monitor import Monitor

    m = Monitor._shared
    if m is None:
        return {"running": False}
    return {"running": m.mode != "stopped", "watched": len(m.watched()), "mode": m.mode,
            "gpu": m.gpu_status, "errors": m.errors[-3:]}  # fmt: skip
