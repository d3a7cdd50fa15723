"""The exec sensor: every exec in every sandbox, tied to the right sandbox and step."""

from __future__ import annotations

from corral.monitor import Monitor
from corral.policy.loader import load_policy
from corral.sandbox.sandbox import Sandbox


async def test_exec_recorded_with_argv_exe_cwd_parents_and_step(
    monitor: Monitor, wait_event
) -> None:
    async with Sandbox("rl-strict", store=False) as a, Sandbox("rl-strict", store=False) as b:
        monitor.watch(a)
        monitor.watch(b)
        await a.exec("mkdir -p sub && cd sub && sleep 0.3", step=7)
        await b.exec("sleep 0.25 && true", step=3)
        ev = await wait_event(a, lambda e: e.rule == "process.exec" and e.argv[:1] == ["sleep"])
        assert ev.argv == ["sleep", "0.3"]
        assert ev.exe and ev.exe.endswith("/sleep")
        assert ev.step == 7
        assert ev.evidence["cwd"] == "/workspace/sub"
        assert ev.evidence["parents"], "the parent chain (the session's bash) is recorded"
        assert ev.evidence["parents"][-1]["comm"] == "bash"
        assert ev.sandbox_id == a.id
        evb = await wait_event(b, lambda e: e.rule == "process.exec" and e.argv[:1] == ["sleep"])
        assert evb.step == 3 and evb.sandbox_id == b.id
        assert not any(e.rule == "process.exec" and e.argv == ["sleep", "0.3"] for e in b.events)


async def test_every_sandbox_is_watched_without_asking(wait_event) -> None:
    """No entry point can forget the monitor: `Sandbox.start()` attaches it."""
    async with Sandbox("rl-strict", store=False) as sb:
        await sb.exec("sleep 0.05")
        ev = await wait_event(sb, lambda e: e.rule == "process.exec" and e.argv[:1] == ["sleep"])
        assert ev.evidence["via"] == "seccomp"
        assert sb.id in Monitor.shared().watched()
    assert sb.id not in Monitor.shared().watched()


async def test_monitor_disabled_by_policy_reports_nothing() -> None:
    pol = load_policy("rl-strict")
    pol = pol.model_copy(update={"monitor": pol.monitor.model_copy(update={"enabled": False})})
    async with Sandbox(pol, store=False) as sb:
        await sb.exec("sleep 0.2")
        assert not [e for e in sb.events if e.source == "process"]
        assert sb.id not in Monitor.shared().watched()


async def test_stop_ends_the_watch_and_records_usage(monitor: Monitor, wait_event) -> None:
    sb = Sandbox("rl-strict", store=False)
    await sb.start()
    monitor.watch(sb)
    await sb.exec("sleep 0.2")
    await sb.close()
    ev = await wait_event(sb, lambda e: e.rule == "resource.usage")
    assert ev.evidence["execs"] >= 1
    assert sb.id not in monitor.watched()
