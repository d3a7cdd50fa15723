"""Blame on the step that caused it, for orphans (issue 10 item 4): a process forked during a later
step by a short-lived child of an earlier step's background job is an orphan of the sandbox's init
by the time it execs (its forking parent has exited), yet it is blamed on the earlier step.

The sandbox's seccomp filter holds every `exit_group` (and `exit`): while the exiting process is
held, the monitor records each of its children's origin step (its own), before they are
re-parented to init. Each spelling below starts its program only after a later step has begun, from
a parent that is gone when the program execs; the program is a harmless marker script.
"""

from __future__ import annotations

import pytest

from corral.policy.loader import policy_from_mapping
from corral.sandbox.sandbox import Sandbox

MARKER = "#!/bin/sh\nexit 0\n"
# each: how a step-1 background job starts ./marker after `sleep 1`, its parent exiting first
SPELLINGS = {
    # the ROME miner's own: a subshell that forks and exits at once (the program waits a moment
    # here, so that its parent has surely gone: the ROME act's own nohup races it)
    "subshell": "( sleep 1; (sleep 0.2 && ./marker orphan >/dev/null 2>&1 &) ) >/dev/null 2>&1 &",
    # a double fork through a program that exec'd (sh), which exits before its child execs
    "double-fork": "( sleep 1; sh -c '(sleep 0.2; ./marker orphan) &' ) >/dev/null 2>&1 &",
    # setsid -f: forks, the parent exits, the child makes a new session and execs
    "setsid": "( sleep 1; setsid -f sh -c 'sleep 0.2; ./marker orphan' ) >/dev/null 2>&1 &",
    # a program that forks and leaves through exit_group (Python's os._exit)
    "fork-exit": (
        "( sleep 1; python3 -c 'import os,time\nif os.fork()==0:\n time.sleep(0.3);"
        ' os.execv("./marker", ["./marker", "orphan"])\nos._exit(0)\' ) >/dev/null 2>&1 &'
    ),
    # the single-threaded parent leaves through the raw `exit` syscall (no exit_group)
    "raw-exit": (
        "( sleep 1; python3 -c 'import ctypes,os,time\nif os.fork()==0:\n time.sleep(0.3);"
        ' os.execv("./marker", ["./marker", "orphan"])\nctypes.CDLL(None).syscall(60, 0)\''
        " ) >/dev/null 2>&1 &"
    ),
}


def _policy():  # type: ignore[no-untyped-def]
    """rl-strict, best-effort limits (an ordinary user may have no cgroup): only records matter."""
    return policy_from_mapping({"extends": "rl-strict", "limits": {"enforcement": "best_effort"}})


@pytest.mark.unprivileged
@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_an_orphan_forked_in_a_later_step_is_blamed_on_the_step_that_started_it(
    spelling: str, wait_event
) -> None:
    async with Sandbox(_policy(), store=False) as sb:
        await sb.write_file("marker", MARKER, 0o755)
        r = await sb.exec(SPELLINGS[spelling], step=1)
        assert r.exit_code == 0, r.output
        await sb.exec("sleep 0.3", step=2)  # the job's `sleep 1` ends during step 3
        await sb.exec("sleep 1.8", step=3)
        ev = await wait_event(
            sb, lambda e: e.rule == "process.exec" and e.argv == ["./marker", "orphan"]
        )
        assert ev.step == 3, f"it ran while step 3 was running, not {ev.step}"
        # the case: at its exec, the program's parent chain no longer reaches the shell
        chain = {p["pid"] for p in ev.evidence["parents"]}
        assert not chain & sb.ctx.shell_pids(), ("not orphaned", ev.evidence["parents"])
        assert ev.origin_step == 1, f"blamed on step {ev.origin_step}, not 1; {ev.evidence}"


@pytest.mark.unprivileged
async def test_a_jobs_child_that_execs_after_the_next_steps_start_keeps_the_jobs_step(
    wait_event,
) -> None:
    """Step 1's job forks a child during step 2 (its parent alive: no orphan) that execs only
    once step 3 has begun (as on a loaded host): the snapshot at step 3's start must record the
    child as the job's (step 1), not as step 2's because it appeared while step 2 ran."""
    async with Sandbox(_policy(), store=False) as sb:
        await sb.write_file("marker", MARKER, 0o755)
        job = "( sleep 0.5; (sleep 1.2; ./marker late; true) ) >/dev/null 2>&1 &"
        await sb.exec(job, step=1)
        await sb.exec("sleep 1", step=2)  # the job forks its child during this step
        await sb.exec("sleep 1.5", step=3)  # the child execs ./marker during this one
        ev = await wait_event(
            sb, lambda e: e.rule == "process.exec" and e.argv == ["./marker", "late"]
        )
        assert ev.step == 3, f"it ran while step 3 was running, not {ev.step}"
        assert ev.origin_step == 1, f"blamed on step {ev.origin_step}, not 1; {ev.evidence}"


@pytest.mark.unprivileged
async def test_a_child_forked_by_the_shell_itself_is_the_current_step() -> None:
    """The shell's own children are each step's work: the exit records never move them back."""
    async with Sandbox(_policy(), store=False) as sb:
        await sb.write_file("marker", MARKER, 0o755)
        await sb.exec("true", step=1)
        await sb.exec("(./marker now &) ; sleep 0.2", step=2)
        await sb.exec("sleep 0.2", step=3)
        evs = [e for e in sb.events if e.rule == "process.exec" and e.argv == ["./marker", "now"]]
        assert [(e.step, e.origin_step) for e in evs] == [(2, 2)]


@pytest.mark.xfail(
    strict=True,
    reason="LIMITATION (Monitor._orphans): a parent killed by a signal "
    "never calls exit_group/exit, so its orphan's fork-time ancestry is lost",
)
async def test_an_orphan_whose_parent_was_killed_by_a_signal(wait_event) -> None:
    async with Sandbox(_policy(), store=False) as sb:
        await sb.write_file("marker", MARKER, 0o755)
        job = "( sleep 1.5; ( (sleep 0.2; ./marker orphan) & kill -9 $BASHPID ) ) >/dev/null 2>&1 &"
        await sb.exec(job, step=1)
        await sb.exec("sleep 0.1", step=2)  # step 3 begins long before the job forks
        await sb.exec("sleep 2.3", step=3)
        ev = await wait_event(
            sb, lambda e: e.rule == "process.exec" and e.argv == ["./marker", "orphan"]
        )
        assert ev.origin_step == 1
