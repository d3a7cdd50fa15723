"""What grades an episode never runs in the agent's shell; the framing cannot be faked
(issue: Hold, item 4)."""

from __future__ import annotations

import pytest

from corral.rl.env import SandboxEnv
from tests.sandbox.helpers import new_dir, sandbox_policy
from tests.security.helpers import open_box

FAKES = [
    "bash() { return 0; }; export -f bash",
    "mkdir -p /tmp/bin && printf '#!/bin/sh\\nexit 0\\n' > /tmp/bin/bash && chmod +x /tmp/bin/bash"
    " && export PATH=/tmp/bin:$PATH",
    "alias bash=true; shopt -s expand_aliases",
    "builtin() { :; }; printf() { :; }; enable -n printf",
    "trap 'exit 0' DEBUG",
]


@pytest.mark.unprivileged
@pytest.mark.parametrize("fake", FAKES)
def test_graded_step_ignores_whatever_the_agent_redefined(fake: str) -> None:
    task = {"check": "bash tests/check.sh", "files": {"tests/check.sh": "exit 1\n"},
            "max_steps": 4}  # fmt: skip
    with SandboxEnv(task, policy=sandbox_policy()) as env:
        env.reset()
        env.step(fake)
        _, reward, terminated, _, info = env.step("submit")
        assert terminated
        assert reward <= 0.0, (fake, info)
        assert info.get("solved") is False


@pytest.mark.unprivileged
async def test_framing_functions_cannot_be_redefined_and_reports_stay_true() -> None:
    async with open_box() as sb:
        r = await sb.exec("__corral_done() { :; } 2>/dev/null; unset -f __corral_done; false")
        assert r.exit_code == 1
        r = await sb.exec(
            "builtin() { :; }; command() { :; }; enable -n printf; exit_with() { return $1; }; exit_with 7"
        )
        assert r.exit_code == 7
        r = await sb.exec("echo after")
        assert r.exit_code == 0 and r.stdout == "after\n"


@pytest.mark.unprivileged
async def test_a_report_forged_on_the_control_channel_is_refused_or_recorded() -> None:
    async with open_box() as sb:
        # the framing's saved control fd is listed in /proc/$$/fd: try to write a report on it
        # (a root supervisor's pipes belong to another id, so the open fails; an ordinary user's
        # does not, and then the report, lacking the command's key, must be recorded)
        r = await sb.exec(
            "for f in /proc/$$/fd/*; do case ${f##*/} in 0|1|2) continue;; esac;"
            " { echo '1-0000000000000000 0' > \"$f\"; } 2>/dev/null && echo WROTE; done; exit 3"
        )
        assert r.exit_code == 3
        r2 = await sb.exec("true")
        assert r2.exit_code == 0
        forged = [e for e in sb.events if e.rule == "sandbox.report_forged"]
        if "WROTE" in r.stdout:
            assert forged and forged[0].category == "reward_tampering"
        else:
            assert not forged


@pytest.mark.unprivileged
async def test_harness_command_is_not_reachable_by_agent_processes(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    async with open_box(workspace=ws) as sb:
        await sb.exec("(while true; do sleep 0.01; done) & echo $! > bg.pid")
        r = await sb.harness_exec("ps -e -o comm= | sort | uniq -c; cat bg.pid; echo rc=$?")
        assert r.exit_code == 0
        assert "sleep" not in r.stdout  # a pid namespace of its own: no agent process in sight
        r = await sb.exec("kill -0 $(cat bg.pid) && echo alive")
        assert r.stdout.strip() == "alive"  # and the agent was let go on afterwards
        harness_events = [e for e in sb.events if e.sandbox_id.endswith("-harness")]
        assert not harness_events  # the harness's record is not charged to the agent
