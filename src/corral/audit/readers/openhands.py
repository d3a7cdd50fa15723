"""OpenHands event streams: events {`id`, `source`, `timestamp`, `message`} that are either actions
(`action`: run, run_ipython, write, edit, read, browse, message, finish, ... with `args`) or
observations (`observation`, `content`, `extras`, `cause`).

A record is a list of events (a saved trajectory), an object with `history` (evaluation
`output.jsonl` lines, with `instance_id`), or, in a JSONL file, one event per line (the whole file
is then one trajectory). Mapped: `run` -> `args.command`; `run_ipython` -> `python3 -c args.code`;
`write` -> file write of `args.content` to `args.path`; `edit` -> `args.command`
create/str_replace/insert on `args.path`. Step index: 0-based position in the event list; `ref` is
the event `id`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import TRAJECTORY_ID_KEYS, clip, first_str
from corral.audit.tools import commands_for_tool

NAME = "openhands"
_NOT_CALLS = {"message", "system", "finish", "recall", "think", "change_agent_state", "null"}
GROUPED = False
_ACTIONS = {"run": "execute_bash", "run_ipython": "execute_ipython_cell", "write": "write_file",
            "edit": "str_replace_editor"}  # fmt: skip


def is_event(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and ("action" in e and "args" in e or "observation" in e)
        and ("id" in e or "source" in e)
    )


def is_old_event(e: Any) -> bool:
    """The older resolver layout (`output.jsonl` of openhands-resolver): `history[]` holds bare
    actions with their arguments inline ({`action`: "run", `command`, `thought`}) and
    observations ({`observation`: "run", `content`, `command`}), without ids."""
    return (
        isinstance(e, dict)
        and "role" not in e
        and (isinstance(e.get("action"), str) or isinstance(e.get("observation"), str))
    )


def _events(record: Any) -> Any:
    if isinstance(record, dict):
        for key in ("history", "events"):
            if isinstance(record.get(key), list):
                return record[key]
        return None
    return record


def sniff(record: Any) -> bool:
    events = _events(record)
    if not isinstance(events, list):
        return False
    if any(is_event(e) for e in events[:5]):
        return True
    return isinstance(record, dict) and any(is_old_event(e) for e in events[:5])


def trajectory_id(record: Any) -> str | None:
    return first_str(record, *TRAJECTORY_ID_KEYS)


def event_step(i: int, e: Any) -> Step:
    if not isinstance(e, dict):
        raise MalformedError(f"event {i} must be an object")
    step = Step(i, str(e.get("source", "")), ref=first_str(e, "id"))
    if "action" in e:
        args = e.get("args")
        if args is None:  # older layout: arguments inline
            args = {k: v for k, v in e.items() if k not in ("action", "id", "source", "message")}
        if not isinstance(args, dict):
            raise MalformedError(f"event {i}: field 'args' must be an object")
        tool = _ACTIONS.get(str(e["action"]))
        if tool == "write_file":
            args = {"command": "create", **args}
        if tool:
            step.commands = commands_for_tool(tool, args)
        step.calls = int(str(e["action"]) not in _NOT_CALLS)
        step.text = clip(args.get("thought") or e.get("message") or args.get("content"))
    else:
        step.role, step.observation = "tool", clip(e.get("content"))
    return step


def steps(record: Any) -> list[Step]:
    events = _events(record)
    if not isinstance(events, list):
        raise MalformedError("field 'history' must be a list of events")
    return [event_step(i, e) for i, e in enumerate(events)]
