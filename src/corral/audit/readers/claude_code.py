"""Claude Code session JSONL (`~/.claude/projects/<project>/<session>.jsonl`): one event per line,
`type` user/assistant/system/summary/..., `sessionId`, `uuid`, `message` (an Anthropic message:
assistant `content[]` holds `tool_use` blocks such as `Bash` with `input.command`, `Write` with
`input.file_path`/`input.content`, `Edit`/`MultiEdit`).

Lines are grouped into one trajectory per `sessionId` (lines without one, such as `summary`, join
the session next to them). Step index: 0-based position of the line within its session; `ref` is
the line's `uuid`. --keep/--drop write a session's lines back unchanged, one per line.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import clip, first_str
from corral.audit.readers.anthropic import content_step

NAME = "claude_code"
GROUPED = True
_TYPES = {"user", "assistant", "system", "summary", "file-history-snapshot", "queue-operation",
          "progress", "result"}  # fmt: skip


def sniff(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("type") not in _TYPES:
        return False
    if record.get("type") in ("user", "assistant"):
        return isinstance(record.get("message"), dict) and (
            "sessionId" in record or "uuid" in record or "parentUuid" in record
        )
    return "sessionId" in record or "leafUuid" in record or "uuid" in record


def group_key(record: Any) -> str | None:
    return first_str(record, "sessionId")


def trajectory_id(records: list[Any]) -> str | None:
    for r in records:
        if (key := group_key(r)) is not None:
            return key
    return None


def cwd(records: list[Any]) -> str | None:
    """Each line carries the session's working directory (`cwd`)."""
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("cwd"), str):
            return str(r["cwd"])
    return None


def steps(records: list[Any]) -> list[Step]:
    out = []
    for i, r in enumerate(records):
        kind = r.get("type")
        if kind in ("user", "assistant"):
            msg = r.get("message")
            if not isinstance(msg, dict):
                raise MalformedError(f"line {i} of session: field 'message' must be an object")
            step = content_step(i, str(msg.get("role", kind)), msg.get("content"), "message")
            if isinstance(r.get("toolUseResult"), dict | str) and not step.observation:
                step.observation = clip(r["toolUseResult"])
        else:
            step = Step(i, str(kind), clip(r.get("summary") or r.get("content")))
        step.ref = first_str(r, "uuid") or step.ref
        out.append(step)
    return out
