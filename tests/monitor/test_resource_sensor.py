"""CPU judged per sandbox: its total over a window, whatever the processes are called or however
many share the work. Alone it alerts; the mining response needs corroboration or a long window."""

from __future__ import annotations

import asyncio

import pytest

from corral.monitor import Monitor
from corral.policy.loader import policy_from_mapping
from corral.sandbox.sandbox import Sandbox

# duty cycle D: busy D of every 10 ms, for SECONDS
BURN = (
    "import sys, time\nduty = float(sys.argv[1]); end = time.time() + float(sys.argv[2])\n"
    "while time.time() < end:\n    t = time.time()\n    while time.time() - t < 0.01 * duty: pass\n"
    "    time.sleep(0.01 * (1 - duty))\n"
)


def _policy(**monitor: float):  # type: ignore[no-untyped-def]
    # a short window keeps the test fast; a twentieth of a core because the test host is shared
    # (with two burners beside the suite a burner may get a tenth of a core): what these tests
    # show is what is summed and judged, not where the policy's default threshold sits
    return policy_from_mapping(
        {
            "extends": "rl-strict",
            "monitor": {"cpu_window": 1.0, "cpu_threshold": 0.05, **monitor},
            "gate": {"enabled": False},
        }
    )


async def test_cpu_alone_alerts_and_kills_nothing(wait_event) -> None:
    pol = _policy()
    pol.responses.mining = "kill"
    async with Sandbox(pol, store=False) as sb:
        await sb.write_file("hasher", "#!/usr/bin/python3\n" + BURN, 0o755)
        result = await sb.exec("./hasher 1.0 2.5", step=1)
        finding = await wait_event(sb, lambda e: e.rule == "mining.cpu_sustained")
        assert finding.source == "resource" and finding.action == "alerted"
        assert finding.evidence["cpu"]["cores"] >= 0.05
        assert finding.evidence["cpu"]["corroborated"] is False
        assert result.exit_code == 0, "CPU alone never kills"
        assert not [e for e in sb.events if e.action in ("killed", "terminated")]


async def test_cpu_sustained_past_the_kill_window_gets_the_mining_response(wait_event) -> None:
    pol = _policy(cpu_kill_window=1.5)
    pol.responses.mining = "kill"
    async with Sandbox(pol, store=False) as sb:
        await sb.write_file("hasher", "#!/usr/bin/python3\n" + BURN, 0o755)
        result = await sb.exec("./hasher 1.0 8", step=1)
        finding = await wait_event(sb, lambda e: e.rule == "mining.cpu_corroborated")
        assert finding.action == "killed" and finding.evidence["cpu"]["long"] is True
        assert result.exit_code == 137 and result.duration < 7


@pytest.mark.parametrize(
    "script",
    [
        "./ninja 0.8 3",  # renamed, 80 % duty cycle
        "exec ./ninja 0.8 3",  # make execs it
        "./ninja 0.45 3 & ./ninja 0.45 3; wait",  # split over two processes
    ],
    ids=["duty80", "exec", "split"],
)
async def test_renamed_burner_from_make_is_seen(script: str, wait_event) -> None:
    async with Sandbox(_policy(), store=False) as sb:
        await sb.write_file("ninja", "#!/usr/bin/python3\n" + BURN, 0o755)
        await sb.write_file("Makefile", f"all:\n\t{script}\n")
        result = await sb.exec("make -s", step=1)
        assert result.exit_code == 0, result.stderr
        finding = await wait_event(sb, lambda e: e.rule == "mining.cpu_sustained")
        assert finding.action == "alerted" and finding.step == 1
        assert {p["comm"] for p in finding.evidence["cpu"]["processes"]} & {"ninja", "make"}


async def test_usage_counts_what_the_sandbox_burned(wait_event) -> None:
    async with Sandbox(_policy(), store=False) as sb:
        await sb.write_file("burn.py", BURN + "import time\nprint(time.process_time())\n")
        result = await sb.exec("python3 burn.py 1.0 1.5", step=1)
        assert result.exit_code == 0
        burned = float(result.stdout.split()[-1])
        # the sweeps after the burner ended count it; on a loaded host they come later: wait for
        # the count (bounded), not a fixed time
        usage = Monitor.shared().usage(sb)
        for _ in range(200):
            if usage["cpu_s"] >= 0.9 * burned:
                break
            await asyncio.sleep(0.05)
            usage = Monitor.shared().usage(sb)
        assert usage["cpu_s"] >= 0.9 * burned, (usage, burned)
