"""Conversation datasets (AgentTuning, CodeActInstruct, ShareGPT style): `{"id", "conversations":
[{"from": "human"|"gpt"|"system", "value"} or {"role", "content"}]}`.

The agent's actions are text in its turns: AgentTuning-OS writes `Act: bash` and a fenced ```bash
block, CodeAct writes `<execute>` / `<execute_ipython>` / `<execute_bash>` (see
`corral.audit.tools.text_commands`). Step index: 0-based position in `conversations[]`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, first_str
from corral.audit.readers.openai_chat import message_steps

NAME = "conversations"
GROUPED = False
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system", "observation": "tool", "tool": "tool", "function": "tool"}  # fmt: skip


def sniff(record: Any) -> bool:
    conv = record.get("conversations") if isinstance(record, dict) else None
    return (
        isinstance(conv, list)
        and bool(conv)
        and all(isinstance(m, dict) and ("from" in m or "role" in m) for m in conv[:3])
    )


def trajectory_id(record: Any) -> str | None:
    return first_str(record, *TRAJECTORY_ID_KEYS)


def steps(record: Any) -> list[Step]:
    conv = record.get("conversations")
    if not isinstance(conv, list):
        raise MalformedError("field 'conversations' must be a list")
    msgs = []
    for i, m in enumerate(conv):
        if not isinstance(m, dict):
            raise MalformedError(f"conversations[{i}] must be an object")
        who = str(m.get("from", m.get("role", "")))
        msgs.append(
            {"role": _ROLES.get(who.lower(), who), "content": m.get("value", m.get("content"))}
        )
    return message_steps(msgs)
