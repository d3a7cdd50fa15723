"""OpenAI Responses API items: `local_shell_call` (`action.command`, an argv list), `shell_call`
(`action.commands`), `function_call` (`name`, `arguments` JSON string), their `*_output` items and
`message` items.

A record is a Response object (`{"object": "response", "output": [...]}`), a conversation
`{"input": [...], "output": [...]}`, or a bare list of items. Step index: 0-based position in the
item list, `input` items first, then `output`; `ref` is the item's `call_id`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import Command, MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, clip, first_str, flatten
from corral.audit.tools import argv_to_command, commands_for_tool

NAME = "openai_responses"
GROUPED = False
_ITEM_TYPES = {"local_shell_call", "local_shell_call_output", "function_call",
               "function_call_output", "shell_call", "shell_call_output", "reasoning",
               "custom_tool_call", "custom_tool_call_output"}  # fmt: skip


def _items(record: Any) -> Any:
    if isinstance(record, list):
        return record
    if isinstance(record, dict):
        items: list[Any] = []
        for key in ("input", "output", "items"):
            value = record.get(key)
            if isinstance(value, list):
                items.extend(value)
            elif value is not None and key != "input":
                return None
        return items
    return None


def sniff(record: Any) -> bool:
    items = _items(record)
    if not isinstance(items, list) or not items:
        return False
    if isinstance(record, dict) and record.get("object") == "response":
        return True
    return any(isinstance(it, dict) and it.get("type") in _ITEM_TYPES for it in items)


def trajectory_id(record: Any) -> str | None:
    return first_str(record, *TRAJECTORY_ID_KEYS)


def steps(record: Any) -> list[Step]:
    items = _items(record)
    if not isinstance(items, list):
        raise MalformedError("field 'output' (or 'input'/'items') must be a list of items")
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise MalformedError(f"item {i} must be an object")
        kind = str(it.get("type", "message" if "role" in it else ""))
        step = Step(i, str(it.get("role", "assistant" if kind.endswith("call") else "tool")))
        step.ref = first_str(it, "call_id", "id")
        step.calls = int(kind.endswith("call"))
        if kind == "local_shell_call":
            action = it.get("action")
            cmd = argv_to_command(action.get("command")) if isinstance(action, dict) else None
            if cmd is None:
                raise MalformedError(f"item {i}: local_shell_call.action.command must be a list")
            step.commands.append(Command(cmd, "local_shell"))
        elif kind == "shell_call":
            action = it.get("action")
            cmds = action.get("commands") if isinstance(action, dict) else None
            if not isinstance(cmds, list):
                raise MalformedError(f"item {i}: shell_call.action.commands must be a list")
            step.commands.extend(Command(c, "shell") for c in cmds if isinstance(c, str))
        elif kind in ("function_call", "custom_tool_call"):
            if not isinstance(it.get("name"), str):
                raise MalformedError(f"item {i}: function_call.name missing")
            step.commands.extend(
                commands_for_tool(it["name"], it.get("arguments", it.get("input")))
            )
        elif kind.endswith("_output"):
            step.role, step.observation = "tool", clip(flatten(it.get("output")))
        else:
            step.text = clip(flatten(it.get("content", it.get("summary"))))
        out.append(step)
    return out
