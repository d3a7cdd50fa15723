"""What the readers hand to the auditor: trajectories as numbered steps holding shell commands.

Every format is reduced to the same shape so one auditor, one report and one set of rules serve them
all. A step's `index` is always the 0-based position of the entry in the format's main list (see
docs in `corral.audit.readers`), so `jq '.messages[N]'` (or the format's equivalent) finds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class MalformedError(ValueError):
    """A record a reader recognised but cannot use; the message names the field."""


@dataclass(slots=True)
class Command:
    """One shell command an agent ran, or a synthetic one standing for a file write."""

    command: str
    tool: str
    synthetic: bool = False
    mode: str = ""  # synthetic file writes: create, insert or replace (an edit of what was there)


@dataclass(slots=True)
class Step:
    index: int
    role: str
    text: str = ""
    commands: list[Command] = field(default_factory=list)
    observation: str = ""
    ref: str | None = None
    calls: int = 0  # tool calls / actions the reader saw (recognised as commands or not)
    recorded: list[dict[str, Any]] = field(default_factory=list)  # events a live run recorded


@dataclass(slots=True)
class Trajectory:
    """One trajectory: its steps plus where it came from and its original text for --keep/--drop."""

    format: str
    id: str
    file: str
    line: int | None
    item: int | None
    steps: list[Step]
    raw: list[str] = field(default_factory=list)
    cwd: str | None = None  # where the agent's commands ran, when the format records it


# `Trajectory.cwd` of an episode corral recorded: it ran in the policy's workspace, whatever its path
IN_WORKSPACE = "<workspace>"


@dataclass(slots=True)
class Malformed:
    file: str
    line: int | None
    item: int | None
    error: str

    def where(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.item is not None:
            return f"{self.file}[{self.item}]"
        return self.file

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "malformed", "file": self.file, "line": self.line, "item": self.item,
                "error": self.error}  # fmt: skip
