"""SWE-agent `.traj`: `trajectory[]` entries {`action`, `observation`, `thought`, `response`,
`state`, `execution_time`}, plus `history` (the chat, messages with `role`, `content`, `agent`,
`message_type`, and `action`/`thought` on assistant turns) and `info` (`exit_status`,
`submission`, `model_stats`).

Actions are command lines; `str_replace_editor create|str_replace|insert PATH ...`, `create PATH`
and the windowed editor's `edit`/`insert`/`append` into the file `open`/`create` made current
become synthetic file writes. Step index: 0-based position in `trajectory[]`; when a file has
no `trajectory[]`, the 0-based position in `history[]` of assistant messages carrying `action`.
nebius/SWE-agent-trajectories rows keep the chat as `trajectory[]` of {`role`: system|user|ai,
`text`}: the action is the reply's last fenced block; index: position in that list.
"""

from __future__ import annotations

import re
from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, clip, first_str
from corral.audit.tools import swe_agent_action

NAME = "swe_agent"
GROUPED = False


def sniff(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    traj = record.get("trajectory")
    if isinstance(traj, list) and (not traj or isinstance(traj[0], dict) and "action" in traj[0]):
        return "history" in record or "info" in record or bool(traj)
    if isinstance(traj, list) and _chat_shaped(traj):
        return True
    hist = record.get("history")
    return isinstance(hist, list) and any(
        isinstance(h, dict) and "agent" in h and "role" in h for h in hist[:5]
    )


def _chat_shaped(traj: list[Any]) -> bool:
    """nebius/SWE-agent-trajectories: `trajectory[]` of {`role`: system|user|ai, `text`}."""
    return bool(traj) and all(isinstance(t, dict) and "role" in t and "text" in t for t in traj[:3])


# SWE-agent's thought-action parser: the action is the last fenced block of the reply
_FENCE = re.compile(r"```[ \t]*(?:bash|sh|shell)?[ \t]*\n(.*?)\n?```", re.DOTALL)


def _chat_steps(traj: list[Any]) -> list[Step]:
    out, state = [], {}
    for i, t in enumerate(traj):
        if not isinstance(t, dict):
            raise MalformedError(f"trajectory[{i}] must be an object")
        role = str(t.get("role", ""))
        text = t.get("text") if isinstance(t.get("text"), str) else ""
        step = Step(i, role, clip(text))
        if role in ("ai", "assistant"):
            blocks = _FENCE.findall(text)
            if blocks:
                step.calls = 1
                step.commands = swe_agent_action(blocks[-1], state)
        elif role == "user" and i > 1:
            step.observation, step.text = step.text, ""
        out.append(step)
    return out


def trajectory_id(record: Any) -> str | None:
    info = record.get("info") if isinstance(record, dict) else None
    return first_str(record, *TRAJECTORY_ID_KEYS) or first_str(info, "instance_id")


def steps(record: Any) -> list[Step]:
    traj = record.get("trajectory")
    if isinstance(traj, list) and _chat_shaped(traj):
        return _chat_steps(traj)
    if traj:
        if not isinstance(traj, list):
            raise MalformedError("field 'trajectory' must be a list")
        out = []
        state: dict[str, str] = {}
        for i, entry in enumerate(traj):
            if not isinstance(entry, dict) or not isinstance(entry.get("action", ""), str):
                raise MalformedError(f"trajectory[{i}].action must be a string")
            step = Step(i, "assistant", clip(entry.get("thought") or entry.get("response")),
                        swe_agent_action(entry.get("action") or "", state),
                        clip(entry.get("observation")))  # fmt: skip
            step.calls = int(bool((entry.get("action") or "").strip()))
            out.append(step)
        return out
    hist = record.get("history")
    if not isinstance(hist, list):
        raise MalformedError("field 'trajectory' (or 'history') must be a list")
    out = []
    state: dict[str, str] = {}
    for i, m in enumerate(hist):
        if not isinstance(m, dict):
            raise MalformedError(f"history[{i}] must be an object")
        step = Step(i, str(m.get("role", "")), clip(m.get("thought") or m.get("content")))
        if m.get("role") == "assistant" and isinstance(m.get("action"), str):
            step.commands = swe_agent_action(m["action"], state)
            step.calls = int(bool(m["action"].strip()))
        out.append(step)
    return out
