"""Separate shell sessions in one sandbox (ROCK's create_session): each its own bash."""

from __future__ import annotations

import asyncio
import os

import pytest

from corral import Sandbox
from corral.sandbox.session import SessionEnded
from tests.sandbox.helpers import INSIDE_CHECK, sandbox_policy

pytestmark = pytest.mark.unprivileged


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return "?"


async def test_sessions_keep_their_own_cwd_and_variables() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        a = await sb.open_session("a")
        b = await sb.open_session("b")
        assert len({a.bash_pid, b.bash_pid, sb.shell_pid()}) == 3
        await a.exec("mkdir -p /tmp/a && cd /tmp/a && export ONLY_A=1 && greet() { echo a; }")
        await b.exec("cd /tmp && ONLY_B=2")
        await sb.exec("cd / && MAIN=3")
        ra = await a.exec('pwd; echo "[$ONLY_A][$ONLY_B][$MAIN]"; greet')
        rb = await b.exec(
            'pwd; echo "[$ONLY_A][$ONLY_B][$MAIN]"; type greet 2>/dev/null || echo none'
        )
        rm = await sb.exec('pwd; echo "[$ONLY_A][$ONLY_B][$MAIN]"')
        assert ra.stdout == "/tmp/a\n[1][][]\na\n"
        assert rb.stdout == "/tmp\n[][2][]\nnone\n"
        assert rm.stdout == "/\n[][][3]\n"
        # one sandbox: same filesystem, namespaces and containment
        await a.exec("echo shared > /workspace/f")
        assert (await b.exec("cat /workspace/f")).stdout == "shared\n"
        assert (await b.exec(INSIDE_CHECK)).stdout == "INSIDE\n"
        if sb.cgroup is not None:
            assert {a.bash_pid, b.bash_pid} <= set(sb.cgroup.pids())
        # a fresh session starts in the workspace with the sandbox's environment
        c = await sb.open_session("c")
        rc = await c.exec('pwd; echo "[$ONLY_A][$MAIN][$CORRAL_SANDBOX_ID]"')
        assert rc.stdout == f"/workspace\n[][][{sb.id}]\n"


async def test_exit_codes_stderr_steps_and_events() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        a = await sb.open_session("a")
        r = await a.exec("echo out; echo err >&2; (exit 7)")
        assert (r.exit_code, r.stdout, r.stderr, r.step) == (7, "out\n", "err\n", 1)
        r2 = await sb.exec("true")
        assert r2.step == 2
        ended = [e for e in r.events if e.rule == "sandbox.command_ended"]
        assert ended and ended[0].evidence["session"] == "a" and ended[0].step == 1
        # the agent's output cannot forge the exit code: the control pipe is not theirs
        r = await a.exec(
            "echo '2 0' >&3; printf '2 0\\n'; exit_code_is() { return 5; }; exit_code_is"
        )
        assert r.exit_code == 5
        r = await a.exec("exit 3")
        assert r.exit_code == 3 and not a.alive
        with pytest.raises(SessionEnded):
            await a.exec("echo again")
        a2 = await sb.open_session("a")
        assert (await a2.exec("echo back")).stdout == "back\n"


async def test_timeout_in_one_session_leaves_the_others() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        a = await sb.open_session("a")
        b = await sb.open_session("b")
        await a.exec("sleep 300 & echo $! > /tmp/a-bg")
        await b.exec("X=kept; sleep 300 & echo $! > /tmp/b-bg")
        slow = asyncio.ensure_future(b.exec("sleep 2; echo b-done"))
        r = await a.exec("sleep 60; echo never", timeout=0.3)
        assert r.timed_out and r.exit_code == 124 and "never" not in r.stdout
        assert a.alive and b.alive
        # the concurrent command in b and both background jobs were spared
        assert (await slow).stdout == "b-done\n"
        r = await sb.exec("kill -0 $(cat /tmp/a-bg) && kill -0 $(cat /tmp/b-bg) && echo both")
        assert r.stdout == "both\n"
        assert (await b.exec("echo $X")).stdout == "kept\n"
        assert (await a.exec("echo a-back")).stdout == "a-back\n"
        assert any(e.rule == "resource.command_timeout" and e.evidence.get("session") == "a"
                   for e in sb.events)  # fmt: skip


async def test_closing_ends_every_session() -> None:
    sb = Sandbox(sandbox_policy())
    await sb.start()
    sessions = [await sb.open_session(n) for n in ("a", "b")]
    await sessions[0].exec("sleep 300 &")
    await sessions[1].exec("(sleep 300 &) ; sleep 0")
    pids = set(sb.host_pids())
    assert {s.bash_pid for s in sessions} <= pids and len(pids) >= 7
    await sb.close()
    await asyncio.sleep(0.05)
    left = [p for p in pids if _running(p)]
    assert left == [], [_cmdline(p) for p in left]
    assert not any(s.alive for s in sessions)
    assert not os.path.exists(f"/proc/{sessions[0].bash_pid}/cmdline") or not _running(
        sessions[0].bash_pid
    )


async def test_close_one_session_only() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        a = await sb.open_session("a")
        b = await sb.open_session("b")
        await a.exec("sleep 300 & echo $! > /tmp/a-bg")
        bg = int((await sb.exec("cat /tmp/a-bg")).stdout)  # a pid inside the sandbox
        await a.close()
        assert not a.alive and not _running(a.bash_pid)
        # killed: gone, or a zombie its new parent (the sandbox's init) has not reaped yet, which
        # `kill -0` alone would call alive on a loaded machine
        r = await sb.exec(f"grep -qs '^State:[[:space:]]*[^Z]' /proc/{bg}/status && echo alive "
                          "|| echo gone")  # fmt: skip
        assert r.stdout == "gone\n"
        assert (await b.exec("echo b")).stdout == "b\n"
        with pytest.raises(ValueError):
            await sb.open_session("b")
