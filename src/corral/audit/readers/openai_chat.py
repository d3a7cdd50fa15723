"""OpenAI Chat Completions messages: `messages[].tool_calls[].function.{name, arguments}`.

A record is `{"messages": [...]}` (one per JSONL line, as in fine-tuning files) or a bare list of
messages. `arguments` may be a JSON string (the API's form) or an object (many exporters).
Step index: 0-based position in `messages[]`; `ref` is the tool call `id`. `corral export --format
openai` adds `metadata.corral.steps[]` (one per tool call, its recorded events): findings too.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import IN_WORKSPACE, MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, clip, first_str, flatten
from corral.audit.tools import commands_for_tool, text_commands

NAME = "openai_chat"
GROUPED = False


def _messages(record: Any) -> Any:
    return record.get("messages") if isinstance(record, dict) else record


def sniff(record: Any) -> bool:
    msgs = _messages(record)
    if not isinstance(msgs, list) or not msgs:
        return False
    return all(isinstance(m, dict) and "role" in m for m in msgs[:3])


def trajectory_id(record: Any) -> str | None:
    return first_str(record, *TRAJECTORY_ID_KEYS)


def message_steps(msgs: list[Any]) -> list[Step]:
    steps = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise MalformedError(f"messages[{i}] must be an object")
        role = str(m.get("role", ""))
        step = Step(i, role, clip(m.get("content")))
        calls = m.get("tool_calls") or []
        if not isinstance(calls, list):
            raise MalformedError(f"messages[{i}].tool_calls must be a list")
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise MalformedError(f"messages[{i}].tool_calls[{j}].function.name missing")
            step.calls += 1
            step.commands.extend(commands_for_tool(fn["name"], fn.get("arguments")))
            step.ref = step.ref or first_str(call, "id")
        if not calls and role == "assistant":  # agents without native tool calling write actions
            step.commands = text_commands(flatten(m.get("content")))
            step.calls = len(step.commands)
        if role in ("tool", "function", "ipython"):
            step.observation, step.text = clip(flatten(m.get("content"))), ""
            step.ref = first_str(m, "tool_call_id")
        steps.append(step)
    return steps


def _corral_meta(record: Any) -> dict[str, Any] | None:
    meta = record.get("metadata") if isinstance(record, dict) else None
    mine = meta.get("corral") if isinstance(meta, dict) else None
    return mine if isinstance(mine, dict) else None


def cwd(record: Any) -> str | None:
    """`corral export --format openai` episodes ran in the policy's workspace."""
    return IN_WORKSPACE if _corral_meta(record) is not None else None


def steps(record: Any) -> list[Step]:
    msgs = _messages(record)
    if not isinstance(msgs, list):
        raise MalformedError("field 'messages' must be a list")
    out = message_steps(msgs)
    mine = _corral_meta(record)
    per_step = mine.get("steps") if mine is not None else None
    if isinstance(per_step, list):  # `corral export`: one entry per assistant tool call, in order
        acting = [s for s in out if s.role == "assistant" and s.calls]
        for step, rec in zip(acting, per_step, strict=False):
            if isinstance(rec, dict) and isinstance(rec.get("events"), list):
                step.recorded = [e for e in rec["events"] if isinstance(e, dict)]
    return out
