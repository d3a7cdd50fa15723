"""OpenHands V1 (software-agent-sdk) event stream: one event per JSONL line (or one per JSON file),
each with `id`, `timestamp`, `source`, `kind` (`ActionEvent`, `ObservationEvent`, `MessageEvent`,
`SystemPromptEvent`, `ConversationStateUpdateEvent`, ...). An `ActionEvent` carries `tool_name`,
`action` (`{"kind": "TerminalAction", "command"}`, `FileEditorAction` with `command`/`path`/
`file_text`/`new_str`, ...) and the raw `tool_call` {`name`, `arguments`}.

The lines of a file are one trajectory. Step index: 0-based position of the event line; `ref` is the
event `id`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import clip, first_str, flatten
from corral.audit.tools import commands_for_tool

NAME = "openhands_v1"
GROUPED = True


def sniff(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("kind"), str)
        and record["kind"].endswith("Event")
        and "source" in record
        and "id" in record
    )


def group_key(record: Any) -> str | None:
    return None


def trajectory_id(records: list[Any]) -> str | None:
    return None


def event_step(i: int, e: Any) -> Step:
    if not isinstance(e, dict):
        raise MalformedError(f"event {i} must be an object")
    step = Step(i, str(e.get("source", "")), ref=first_str(e, "id"))
    kind = e.get("kind")
    if kind == "ActionEvent":
        action = e.get("action")
        call = e.get("tool_call")
        name = e.get("tool_name") or (call.get("name") if isinstance(call, dict) else None)
        if not isinstance(name, str):
            raise MalformedError(f"event {i}: ActionEvent.tool_name missing")
        args = action if isinstance(action, dict) else (call or {}).get("arguments")
        step.calls = 1
        step.commands = commands_for_tool(name, args)
        if not step.commands and isinstance(call, dict):
            step.commands = commands_for_tool(name, call.get("arguments"))
        step.text = clip(flatten(e.get("thought")))
    elif kind == "ObservationEvent":
        obs = e.get("observation")
        step.role = "tool"
        step.observation = clip(flatten(obs.get("content")) if isinstance(obs, dict) else obs)
    else:
        msg = e.get("llm_message")
        step.text = clip(flatten(msg.get("content")) if isinstance(msg, dict) else "")
    return step


def steps(records: list[Any]) -> list[Step]:
    if isinstance(records, dict):  # a per-event file read on its own
        records = [records]
    return [event_step(i, e) for i, e in enumerate(records)]
