"""tau-bench results (`sierra-research/tau-bench`, `run.py` output): a JSON array of
`{"task_id", "reward", "info", "traj", "trial"}` where `traj` is the OpenAI chat conversation the
agent had, tool calls included (domain tools such as `get_user_details`: read, none are shell).

Step index: 0-based position in `traj[]`.
"""

from __future__ import annotations

from typing import Any

from corral.audit.model import MalformedError, Step
from corral.audit.readers._common import first_str
from corral.audit.readers.openai_chat import message_steps

NAME = "tau_bench"
GROUPED = False


def sniff(record: Any) -> bool:
    traj = record.get("traj") if isinstance(record, dict) else None
    return (
        isinstance(traj, list)
        and bool(traj)
        and all(isinstance(m, dict) and "role" in m for m in traj[:3])
    )


def trajectory_id(record: Any) -> str | None:
    task = first_str(record, "task_id")
    trial = first_str(record, "trial")
    return None if task is None else f"task-{task}" + (f"-trial-{trial}" if trial else "")


def steps(record: Any) -> list[Step]:
    traj = record.get("traj")
    if not isinstance(traj, list):
        raise MalformedError("field 'traj' must be a list of messages")
    return message_steps(traj)
