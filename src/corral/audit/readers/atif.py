"""ATIF `trajectory.json` (Harbor's Agent Trajectory Interchange Format): `schema_version`
("ATIF-v1.x"), `session_id`, `agent`, `steps[]` with `step_id`, `source` (system/user/agent),
`message`, `reasoning_content`, `tool_calls[]` {`tool_call_id`, `function_name`, `arguments`},
`observation.results[]` {`source_call_id`, `content`}.

Terminus-2 writes `bash_command` calls with `keystrokes` (and `duration`); with raw content kept it
writes no tool calls and the agent `message` holds its JSON answer (`commands[].keystrokes`).
`corral export` puts a step's recorded events in `extra.corral.events`: they are findings too.
Step index: 0-based position in `steps[]` (ATIF's own `step_id` starts at 1; it is kept as `ref`).
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import IN_WORKSPACE, MalformedError, Step
from corral.audit.readers._common import clip, first_str, flatten, require_list
from corral.audit.tools import commands_for_tool, text_commands

NAME = "atif"
GROUPED = False


def sniff(record: Any) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("steps"), list):
        return False
    version = record.get("schema_version")
    if isinstance(version, str) and version.upper().startswith("ATIF"):
        return True
    return any(isinstance(s, dict) and "step_id" in s for s in record["steps"][:3])


def cwd(record: Any) -> str | None:
    """`corral export` episodes ran in the policy's workspace."""
    agent = record.get("agent") if isinstance(record, dict) else None
    return (
        IN_WORKSPACE if isinstance(agent, dict) and agent.get("name") == "corral-episode" else None
    )


def trajectory_id(record: Any) -> str | None:
    return first_str(record, "session_id", "id")


def steps(record: Any) -> list[Step]:
    out = []
    for i, s in enumerate(require_list(record, "steps")):
        if not isinstance(s, dict):
            raise MalformedError(f"steps[{i}] must be an object")
        step = Step(i, str(s.get("source", "")), clip(s.get("message") or s.get("reasoning_content")),
                    ref=first_str(s, "step_id"))  # fmt: skip
        calls = s.get("tool_calls") or []
        if not isinstance(calls, list):
            raise MalformedError(f"steps[{i}].tool_calls must be a list")
        for j, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("function_name"), str):
                raise MalformedError(f"steps[{i}].tool_calls[{j}].function_name missing")
            step.calls += 1
            step.commands.extend(commands_for_tool(call["function_name"], call.get("arguments")))
        if not calls and step.role == "agent":  # terminus with raw content kept: JSON or text
            step.commands = text_commands(flatten(s.get("message")))
            step.calls = len(step.commands)
        extra = s.get("extra")
        mine = extra.get("corral") if isinstance(extra, dict) else None
        if isinstance(mine, dict) and isinstance(mine.get("events"), list):
            step.recorded = [e for e in mine["events"] if isinstance(e, dict)]
        obs = s.get("observation")
        if isinstance(obs, dict):
            results = obs.get("results") or []
            step.observation = clip("\n".join(flatten(r.get("content")) for r in results
                                              if isinstance(r, dict)))  # fmt: skip
        out.append(step)
    return out
