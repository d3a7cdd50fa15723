"""One recorded step of an episode: what the agent did, what it saw, and when.

Stored beside the events so that any event joins to the step that caused it on (episode_id, step).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from corral.events.model import format_ts, utcnow

StepKind = Literal["reset", "action", "check", "lost", "interrupted"]


class StepRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_id: str
    sandbox_id: str | None = None
    step: int
    kind: StepKind = "action"
    action: str = ""
    observation: str = ""
    exit_code: int | None = None
    reward: float = 0.0
    penalty: float = 0.0
    terminated: bool = False
    truncated: bool = False
    started: datetime = Field(default_factory=utcnow)
    ended: datetime = Field(default_factory=utcnow)
    info: dict[str, Any] = Field(default_factory=dict)

    @field_serializer("started", "ended")
    def _ts(self, ts: datetime) -> str:
        return format_ts(ts)

    @property
    def duration(self) -> float:
        return (self.ended - self.started).total_seconds()
