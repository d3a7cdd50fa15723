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


def detach(ctx: Any) -> None:
    """Stop watching (writes the episode's resource summary first); safe to call twice."""
    monitor = getattr(ctx, "watch", None)
    if monitor is not None:
        ctx.watch = None
        monitor.unwatch(ctx, summarise=True)


def status() -> dict[str, Any]:
    """What is really running in this process, for `corral doctor` and `/healthz`."""
    from corral.monitor.monitor import Monitor

    m = Monitor._shared
    if m is None:
        return {"running": False}
    return {"running": m.mode != "stopped", "watched": len(m.watched()), "mode": m.mode,
            "gpu": m.gpu_status, "errors": m.errors[-3:]}  # fmt: skip
