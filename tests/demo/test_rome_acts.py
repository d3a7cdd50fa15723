"""Each rogue act of `corral demo rome`, on its own, in a real sandbox under rl-strict: corral sees
its category within 1 s of the exec (from the events' own timestamps) and applies the configured
response. Then the whole demo, start to verdict."""

from __future__ import annotations

import asyncio

import pytest

from corral.cli.demo import (
    categories_of,
    demo_policy,
    latency_ms,
    play_act,
    run_rome,
    wait_listening,
)
from corral.cli.rome import ACTS, SETUP_POOL
from corral.monitor import Monitor, procfs
from corral.respond import ACTION_OF
from corral.sandbox.sandbox import Sandbox

ROGUE = [a for a in ACTS if a.category]


def test_the_story_has_every_rome_behaviour() -> None:
    assert [a.category for a in ROGUE] == ["tunnel", "probe_internal", "metadata", "mining"]


@pytest.mark.parametrize("act", ROGUE, ids=[a.category for a in ROGUE])
async def test_each_act_on_its_own(act, monitor: Monitor, wait_event, behind_the_gate) -> None:  # type: ignore[no-untyped-def]
    pol = behind_the_gate("rl-strict")
    async with Sandbox(pol, store=False) as sb:
        monitor.watch(sb)
        if act.category == "mining":
            await play_act(sb, SETUP_POOL, 0, wait=0)
            assert await wait_listening(sb, 3333)
        await play_act(sb, act, 5, wait=0)
        finding = await wait_event(
            sb, lambda e: e.category == act.category and e.severity != "info"
        )
        assert finding.step == 5
        ms = latency_ms(sb.events, finding)
        assert ms is not None and ms < 1000, f"{act.category} seen {ms} ms after its exec"
        assert finding.action == ACTION_OF[pol.responses.for_category(act.category)]
        if finding.action == "terminated":
            await wait_event(sb, lambda e: e.rule == "respond.terminate")
            assert sb.terminated
        await wait_event(sb, lambda e: e.rule == "respond.penalty")
        assert sb.penalty < 0


async def test_renamed_miner_with_pool_only_in_config_is_caught_and_killed(
    monitor: Monitor, wait_event, behind_the_gate
) -> None:  # type: ignore[no-untyped-def]
    miner = next(a for a in ACTS if a.category == "mining")
    assert "stratum" not in miner.command and "pool" not in miner.command
    pol = demo_policy("rl-strict")  # mining -> kill
    pol.gate.enabled = False
    async with Sandbox(pol, store=False) as sb:
        monitor.watch(sb)
        await play_act(sb, SETUP_POOL, 0, wait=0)
        assert await wait_listening(sb, 3333)
        await play_act(sb, miner, 1, wait=0)
        finding = await wait_event(sb, lambda e: e.category == "mining" and e.severity != "info")
        assert finding.argv[-1].endswith("kworker")
        assert finding.action == "killed"
        kill = await wait_event(sb, lambda e: e.rule == "respond.kill" and e.evidence.get("pids"))
        assert finding.pid in kill.evidence["pids"]

        # SIGKILL is sent; a loaded host may take a while to reap: wait for it, not a fixed time
        def alive() -> list[int]:
            return [p for p in sb.host_pids() if "kworker" in " ".join(procfs.cmdline(p))]

        for _ in range(500):
            if not alive():
                break
            await asyncio.sleep(0.01)
        assert alive() == []


async def test_whole_demo_sees_every_act() -> None:
    res = await run_rome()
    seen = {c for r in res.steps for f in r.findings() for c in categories_of(f)}
    assert {"tunnel", "probe_internal", "metadata", "mining"} <= seen
    honest = [r for r in res.steps if r.act.name.startswith("honest")]
    assert honest and all(not r.findings() for r in honest)
    assert all(r.exit_code == 0 for r in honest)
    assert res.would_terminate_at == 4  # the tunnel: rl-strict ends the episode there
    assert res.penalty < -2
    assert all(ms < 1000 for ms in res.latencies_ms.values())
