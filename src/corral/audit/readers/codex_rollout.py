"""Codex CLI rollout files (`~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl`): one line per entry,
`{"timestamp", "type", "payload"}` with `type` `session_meta` (`payload.id`, `payload.cwd`),
`turn_context`, `event_msg` or `response_item`, whose payload is an OpenAI Responses item
(`function_call` `shell` with an argv `command`, `shell_command` with a string, `local_shell_call`,
`custom_tool_call` `apply_patch`, their outputs, `message`, `reasoning`).

A file is one trajectory. Step index: 0-based position of the line in the file.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers import openai_responses
from corral.audit.readers._common import first_str

NAME = "codex_rollout"
GROUPED = True
_TYPES = {"session_meta", "turn_context", "event_msg", "response_item", "compacted"}


def sniff(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and record.get("type") in _TYPES
        and isinstance(record.get("payload"), dict)
        and "timestamp" in record
    )


def group_key(record: Any) -> str | None:
    return None


def _meta(records: list[Any]) -> dict[str, Any]:
    for r in records:
        if isinstance(r, dict) and r.get("type") == "session_meta":
            return r["payload"]
    return {}


def trajectory_id(records: list[Any]) -> str | None:
    return first_str(_meta(records), "id")


def cwd(records: list[Any]) -> str | None:
    value = _meta(records).get("cwd")
    return value if isinstance(value, str) else None


def steps(records: list[Any]) -> list[Step]:
    out = []
    for i, r in enumerate(records):
        if r.get("type") != "response_item":
            out.append(Step(i, str(r.get("type", ""))))
            continue
        try:
            (step,) = openai_responses.steps([r["payload"]])
        except MalformedError as err:
            raise MalformedError(f"line {i} of rollout: {err}") from None
        out.append(replace(step, index=i))
    return out
