"""A mini-swe-agent environment whose commands run in a corral sandbox.

In a mini-swe-agent config: `environment: {environment_class:
corral.integrations.mini_swe_agent.CorralEnvironment, policy: rl-strict, timeout: 30}`. `execute`
answers as mini-swe-agent's `LocalEnvironment` does (`output`, `returncode`, `exception_info`, and
the `COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT` submission). A command corral refuses answers with its
reason as the output. When corral's policy ends the episode (a ROME act), `execute` raises
mini-swe-agent's own `InterruptAgentFlow` with an `exit` message (`exit_status:
TerminatedByPolicy`, the reason as content), so `DefaultAgent.run` stops and returns it.
"""

from __future__ import annotations

import platform
from typing import Any

from pydantic import BaseModel

from corral.integrations._contained import ContainedShell, EpisodeTerminated

SUBMIT = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


class CorralEnvironmentConfig(BaseModel):
    policy: str = "rl-strict"
    cwd: str = ""
    env: dict[str, str] = {}
    timeout: int = 30
    episode_id: str | None = None


class CorralEnvironment:
    def __init__(self, *, config_class: type = CorralEnvironmentConfig, **kwargs: Any) -> None:
        self.config = config_class(**kwargs)
        self.shell = ContainedShell(self.config.policy, episode_id=self.config.episode_id,
                                    env=self.config.env)  # fmt: skip

    def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
        from minisweagent.exceptions import InterruptAgentFlow, Submitted

        command = action.get("command", "")
        try:
            out = self.shell.run(command, timeout=timeout or self.config.timeout,
                                 cwd=cwd or self.config.cwd or None)  # fmt: skip
        except EpisodeTerminated as err:
            raise InterruptAgentFlow(_exit(str(err))) from None
        if out.terminated:
            raise InterruptAgentFlow(_exit(out.reason))
        result: dict[str, Any] = {"output": out.output, "returncode": out.exit_code,
                                  "exception_info": ""}  # fmt: skip
        if out.timed_out:
            result["exception_info"] = (
                f"The command timed out after {timeout or self.config.timeout}s"
            )
        elif out.blocked:
            result["exception_info"] = out.reason
        lines = out.output.lstrip().splitlines(keepends=True)
        if lines and lines[0].strip() == SUBMIT and out.exit_code == 0:
            submission = "".join(lines[1:])
            raise Submitted({"role": "exit", "content": submission,
                             "extra": {"exit_status": "Submitted", "submission": submission}})  # fmt: skip
        return result

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        return {**self.config.model_dump(), **platform.uname()._asdict(),
                "safety": self.shell.safety(), **kwargs}  # fmt: skip

    def serialize(self) -> dict:
        return {"info": {"config": {
            "environment": self.config.model_dump(mode="json"),
            "environment_type": f"{self.__class__.__module__}.{self.__class__.__name__}"}}}  # fmt: skip

    def close(self) -> None:
        self.shell.close()


def _exit(reason: str) -> dict:
    return {"role": "exit", "content": reason,
            "extra": {"exit_status": "TerminatedByPolicy", "submission": "", "reason": reason}}  # fmt: skip
