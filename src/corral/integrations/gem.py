"""GEM (`gem-llm`) on corral: `gem.make("corral/shell", task=..., seed=...)` gives a
`corral.rl.SandboxEnv` (a `gem.Env`), and `CorralPythonCodeTool` is GEM's Python code tool with the
model's code run in a corral sandbox instead of on the trainer host (GEM's own `run_python` runs it
in a subprocess there). Importing this module registers the env id with GEM.

Safety in GEM's channel: the env's `info["safety"]` and `terminated`. A tool has no way to end an
episode in GEM, so wrap the env with `CorralToolEnvWrapper` (GEM's `ToolEnvWrapper` plus this):
when corral's policy ends a tool's sandbox, the step answers `terminated=True` with the reason in
the observation and `info["terminated_by_policy"]`.
"""

from __future__ import annotations

import shlex
from typing import Any

import gem
from gem.tools.python_code_tool import PythonCodeTool
from gem.tools.tool_env_wrapper import ToolEnvWrapper

from corral.integrations._contained import ContainedShell, EpisodeTerminated
from corral.rl.env import _register_with_gem

ENV_ID = "corral/shell"

_register_with_gem()
if ENV_ID not in gem.envs.registration.ENV_REGISTRY:
    gem.register(ENV_ID, "corral.rl.env:SandboxEnv")


class CorralPythonCodeTool(PythonCodeTool):
    """GEM's `PythonCodeTool`, parsing and answering as it does, running code in corral."""

    tool_type = "python_code"

    def __init__(self, timeout: int = 5, keep_error_last_line: bool = False,
                 policy: str = "rl-strict") -> None:  # fmt: skip
        super().__init__(timeout=timeout, sandbox_type="corral",
                         keep_error_last_line=keep_error_last_line)  # fmt: skip
        self.policy = policy
        self._shell: ContainedShell | None = None
        self.terminated_reason: str | None = None
        self.safety: dict[str, Any] = {}

    @property
    def shell(self) -> ContainedShell:
        if self._shell is None:
            self._shell = ContainedShell(self.policy)
        return self._shell

    def execute_action(self, action: str) -> tuple[bool, bool, str, str]:
        parsed_code, parsed_action, is_valid = self._parse_action(action)
        if not is_valid:
            return is_valid, True, "", parsed_action
        try:  # inline, so the command gate reads the code itself
            out = self.shell.run(f"python3 -c {shlex.quote(parsed_code)}", timeout=self.timeout)
            stdout, stderr, ok = out.stdout, out.stderr, out.exit_code == 0
            if out.terminated:
                self.terminated_reason = out.reason
                stderr = f"{stderr}\n{out.reason}".strip()
            self.safety = out.safety
        except EpisodeTerminated as err:
            self.terminated_reason = str(err)
            stdout, stderr, ok = "", str(err), False
        if stderr and self.keep_error_last_line:
            stderr = stderr.split("\n")[-1]
        result = f"{stdout}\n{stderr}" if stderr else stdout
        observation = "Code execution result: " + result.lstrip(" \n") + "\n"
        return is_valid, not ok, observation, parsed_action

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()
            self._shell = None


class CorralToolEnvWrapper(ToolEnvWrapper):
    """GEM's `ToolEnvWrapper`; a tool whose sandbox corral's policy ended ends the episode."""

    def step(self, action: str, verbose: bool = False) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = super().step(action, verbose=verbose)
        for tool in self.tools:
            reason = getattr(tool, "terminated_reason", None)
            if reason:
                info["terminated_by_policy"] = reason
                info["safety"] = getattr(tool, "safety", {})
                return obs, reward, True, truncated, info
        return obs, reward, terminated, truncated, info
