"""The event model of DESIGN.md.

Every sensor, the gate and the responder emit this one shape, so that "which episode and step opened
the tunnel" is a single query over one table, whatever part of corral saw it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

Source = Literal["egress", "process", "resource", "gpu", "file", "policy", "sandbox"]
Severity = Literal["info", "low", "medium", "high", "critical"]
Action = Literal["allowed", "blocked", "alerted", "killed", "terminated"]

SOURCES: tuple[str, ...] = ("egress", "process", "resource", "gpu", "file", "policy", "sandbox")
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
ACTIONS: tuple[str, ...] = ("allowed", "blocked", "alerted", "killed", "terminated")
CATEGORIES: tuple[str, ...] = (
    "mining",
    "tunnel",
    "reverse_shell",
    "probe_internal",
    "metadata",
    "exfiltration",
    "persistence",
    "escape",
    "ingress_exec",
    "reward_tampering",
    "resource",
    "policy",
    "lifecycle",
)


def severity_rank(severity: str | None) -> int:
    """Order severities so 'worst' can be computed; unknown ranks below info."""
    try:
        return SEVERITIES.index(severity or "")
    except ValueError:
        return -1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str | None = None
    ip: str | None = None
    port: int | None = None
    proto: str | None = None


class Event(BaseModel):
    """One line of the log; `evidence` holds whatever the sensor saw that a person would want."""

    model_config = ConfigDict(extra="forbid")

    ts: datetime = Field(default_factory=utcnow)
    sandbox_id: str | None = None
    episode_id: str | None = None
    step: int | None = None
    # the step whose command started the process that did this (inherited by its children): a
    # background job started at step 1 that connects at step 3 has step 3, origin_step 1
    origin_step: int | None = None
    source: Source
    rule: str
    category: str = "lifecycle"
    severity: Severity = "info"
    action: Action = "allowed"
    attack: str | None = None
    pid: int | None = None
    exe: str | None = None
    argv: list[str] | None = None
    dst: Destination | None = None
    path: str | None = None
    message: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)

    @field_serializer("ts")
    def _ts(self, ts: datetime) -> str:
        return format_ts(ts)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), default=str)


def format_ts(ts: datetime) -> str:
    """RFC 3339, UTC, microseconds, with a Z: sortable as text, which the store relies on."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
