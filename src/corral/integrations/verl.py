"""A verl tool (`verl.tools.base_tool.BaseTool`) that runs the model's shell commands in corral.

In a verl tool config: `class_name: corral.integrations.verl.CorralShellTool` with `config:
{policy: rl-strict, timeout: 30}`. One sandbox per trajectory (`create` .. `release`); `execute`
returns (response, step reward, metrics): the reward is corral's penalty for the step's findings,
`metrics["safety"]` the episode's safety state. When corral's policy ends the episode, the response
says why, `metrics["terminated"]` is True and later calls are refused with the same reason.
When verl is installed the class is a real `BaseTool` subclass; without it, the same interface.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

from corral.integrations._contained import ContainedShell, EpisodeTerminated

SCHEMA = {
    "type": "function",
    "function": {
        "name": "run_shell",
        "description": "Run a shell command in the task's sandbox and return its output.",
        "parameters": {"type": "object", "required": ["command"],
                       "properties": {"command": {"type": "string",
                                                  "description": "the command to run"}}},
    },
}  # fmt: skip

try:  # verl brings torch: an optional base
    from verl.tools.base_tool import BaseTool as _Base
except ImportError:  # pragma: no cover - exercised where verl is absent
    _Base = object  # type: ignore[assignment,misc]


class CorralShellTool(_Base):  # type: ignore[misc,valid-type]
    def __init__(self, config: dict, tool_schema: Any = None) -> None:
        if tool_schema is None:
            tool_schema = _schema()
        if _Base is not object:
            super().__init__(config, tool_schema)
        else:
            self.config = config
            self.tool_schema = tool_schema
            self.name = SCHEMA["function"]["name"]
        self.policy = config.get("policy", "rl-strict")
        self.timeout = float(config.get("timeout", 30))
        self.shells: dict[str, ContainedShell] = {}

    def get_openai_tool_schema(self) -> Any:
        return self.tool_schema

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> str:
        instance_id = instance_id or str(uuid4())
        self.shells[instance_id] = await asyncio.to_thread(ContainedShell, self.policy)
        return instance_id

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
                      ) -> tuple[Any, float, dict]:  # fmt: skip
        shell = self.shells[instance_id]
        command = str(parameters.get("command", ""))
        try:
            out = await asyncio.to_thread(shell.run, command, self.timeout)
        except EpisodeTerminated as err:
            return _response(str(err)), 0.0, {"terminated": True, "safety": shell.safety()}
        text = out.output
        if out.terminated or out.blocked:
            text = f"{text}\n{out.reason}".strip()
        metrics = {"exit_code": out.exit_code, "terminated": out.terminated,
                   "timed_out": out.timed_out, "safety": out.safety}  # fmt: skip
        return _response(text), out.penalty, metrics

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        shell = self.shells.get(instance_id)
        return float(shell.safety()["penalty"]) if shell else 0.0

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        shell = self.shells.pop(instance_id, None)
        if shell is not None:
            await asyncio.to_thread(shell.close)


def _schema() -> Any:
    try:
        from verl.tools.schemas import OpenAIFunctionToolSchema
    except ImportError:
        return SCHEMA
    return OpenAIFunctionToolSchema.model_validate(SCHEMA)


def _response(text: str) -> Any:
    try:
        from verl.tools.schemas import ToolResponse
    except ImportError:
        return {"text": text}
    return ToolResponse(text=text)
