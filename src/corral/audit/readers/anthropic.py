"""Anthropic Messages: `messages[].content[]` blocks `tool_use` {`id`, `name`, `input`} and
`tool_result` {`tool_use_id`, `content`}.

A record is `{"messages": [...]}` (a request body, optionally with `system`/`tools`) or a bare list
of messages. Step index: 0-based position in `messages[]`; `ref` is the first `tool_use` id.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, clip, first_str, flatten
from corral.audit.tools import commands_for_tool

NAME = "anthropic"
GROUPED = False
_BLOCKS = {"tool_use", "tool_result", "server_tool_use"}


def _messages(record: Any) -> Any:
    return record.get("messages") if isinstance(record, dict) else record


def sniff(record: Any) -> bool:
    msgs = _messages(record)
    if not isinstance(msgs, list) or not msgs:
        return False
    for m in msgs:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") in _BLOCKS for b in content
        ):
            return True
    return False


def trajectory_id(record: Any) -> str | None:
    return first_str(record, *TRAJECTORY_ID_KEYS)


def content_step(index: int, role: str, content: Any, where: str) -> Step:
    """One message's blocks as a step; shared with the Claude Code reader."""
    step = Step(index, role)
    if isinstance(content, str):
        step.text = clip(content)
        return step
    if not isinstance(content, list):
        raise MalformedError(f"{where}.content must be a string or a list of blocks")
    texts, outputs = [], []
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise MalformedError(f"{where}.content[{j}] must be an object")
        kind = block.get("type")
        if kind in ("tool_use", "server_tool_use"):
            if not isinstance(block.get("name"), str):
                raise MalformedError(f"{where}.content[{j}].name missing in tool_use block")
            step.calls += 1
            step.commands.extend(commands_for_tool(block["name"], block.get("input")))
            step.ref = step.ref or first_str(block, "id")
        elif kind == "tool_result":
            outputs.append(flatten(block.get("content")))
            step.ref = step.ref or first_str(block, "tool_use_id")
        else:
            texts.append(flatten([block]))
    step.text, step.observation = clip("\n".join(t for t in texts if t)), clip("\n".join(outputs))
    return step


def steps(record: Any) -> list[Step]:
    msgs = _messages(record)
    if not isinstance(msgs, list):
        raise MalformedError("field 'messages' must be a list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise MalformedError(f"messages[{i}] must be an object")
        out.append(content_step(i, str(m.get("role", "")), m.get("content"), f"messages[{i}]"))
    return out
