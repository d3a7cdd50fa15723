"""Claude Code web export (simonw/claude-code-transcripts): one JSON document
`{"loglines": [...]}` whose entries are Claude Code session lines (`type`, `message`, ...).

Read as one session (see `claude_code`); step index: 0-based position in `loglines[]`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import Step
from corral.audit.readers import claude_code
from corral.audit.readers._common import first_str, require_list

NAME = "claude_loglines"
GROUPED = False


def sniff(record: Any) -> bool:
    lines = record.get("loglines") if isinstance(record, dict) else None
    return isinstance(lines, list) and any(isinstance(x, dict) and "type" in x for x in lines[:5])


def trajectory_id(record: Any) -> str | None:
    return first_str(record, "sessionId", "session_id", "id") or claude_code.trajectory_id(
        [x for x in record["loglines"] if isinstance(x, dict)]
    )


def cwd(record: Any) -> str | None:
    return claude_code.cwd(record.get("loglines") or [])


def steps(record: Any) -> list[Step]:
    lines = [
        x if isinstance(x, dict) else {"type": "unknown"} for x in require_list(record, "loglines")
    ]
    return claude_code.steps(lines)
