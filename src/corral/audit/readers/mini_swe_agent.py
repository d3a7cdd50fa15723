"""mini-swe-agent `.traj.json`: `{"info": {...exit_status, submission, model_stats...},
"messages": [...], "trajectory_format": "mini-swe-agent-1[.1]"}`.

Assistant `content` holds the action as a fenced ```bash block (1.x) or ```mswea_bash_command
block (2.x text mode); mini runs exactly one, every block found is audited (the conservative
reading); tool-calling models (v2) carry OpenAI `tool_calls`
instead, read as in openai_chat. Step index: 0-based position in `messages[]`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, first_str
from corral.audit.readers.openai_chat import message_steps

NAME = "mini_swe_agent"
GROUPED = False


def sniff(record: Any) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return False
    fmt = record.get("trajectory_format")
    if isinstance(fmt, str) and fmt.startswith("mini-swe-agent"):
        return True
    info = record.get("info")
    return isinstance(info, dict) and ("mini_version" in info or "exit_status" in info)


def trajectory_id(record: Any) -> str | None:
    info = record.get("info") if isinstance(record, dict) else None
    return first_str(record, *TRAJECTORY_ID_KEYS) or first_str(info, "instance_id")


def steps(record: Any) -> list[Step]:
    msgs = record.get("messages")
    if not isinstance(msgs, list):
        raise MalformedError("field 'messages' must be a list")
    out = message_steps(msgs)
    for step in out:
        if step.role == "user" and step.index > 1:
            step.observation, step.text = step.text, ""
    return out
