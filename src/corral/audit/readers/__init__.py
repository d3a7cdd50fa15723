"""One small module per trajectory format, each built from that format's published field names.

Every reader module exposes `NAME`, `GROUPED` (one record per line that must be grouped into a
trajectory, e.g. Claude Code sessions), `sniff(record) -> bool`, `steps(record) -> list[Step]` and
`trajectory_id(record)`; grouped readers also `group_key(record)` and take a list of records.

Step indexing is the same rule everywhere: the 0-based position of the entry in the format's main
list (messages[], items, trajectory[], events, steps[], session lines). Native ids (tool call ids,
ATIF's 1-based `step_id`, OpenHands event `id`, Claude Code `uuid`) are kept as the step's `ref`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from corral.audit.readers import (
    anthropic,
    atif,
    claude_code,
    claude_loglines,
    codex_rollout,
    conversations,
    mini_swe_agent,
    openai_chat,
    openai_responses,
    openhands,
    openhands_events,
    openhands_v1,
    swe_agent,
    tau_bench,
)

# Detection order: the most specific signatures first; plain chat messages last.
READERS: tuple[ModuleType, ...] = (
    atif,
    swe_agent,
    mini_swe_agent,
    claude_code,
    codex_rollout,
    openhands_v1,
    openhands_events,
    openhands,
    tau_bench,
    claude_loglines,
    conversations,
    openai_responses,
    anthropic,
    openai_chat,
)
BY_NAME: dict[str, ModuleType] = {r.NAME: r for r in READERS}
FORMAT_NAMES: tuple[str, ...] = tuple(BY_NAME)


def detect(record: Any, hint: ModuleType | None = None) -> ModuleType | None:
    """The reader for one record; `hint` (the last one that matched in this file) is tried first."""
    if hint is not None and hint.sniff(record):
        return hint
    for reader in READERS:
        if reader is not hint and reader.sniff(record):
            return reader
    return None


def describe(record: Any) -> str:
    """A short account of an unrecognised record for the malformed-record message."""
    if isinstance(record, dict):
        keys = ", ".join(sorted(map(str, record))[:8])
        return f"object with keys [{keys}]"
    if isinstance(record, list):
        return f"list of {len(record)} items"
    return type(record).__name__
