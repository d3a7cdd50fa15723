"""The auditor's only door to the rule engine: analyse one command string, get findings.

One engine per process (built on first use, or eagerly in the forkserver), and a bounded cache:
corpora repeat the same commands (`ls`, `git status`, `pytest`) millions of times. The engine is the
same one that gates commands in a live sandbox, so an audit and the gate agree.

Local workers each hold their own cache, and a cold miss (a tree-sitter parse plus the rules) costs
far more than parsing the trajectory around it, so every worker re-analysing the commands another
has already seen would eat most of what a second worker buys. Hence `take_fresh` / `learn`: what
one worker analysed is handed to the others (see `corral.audit.shared`). The engine is
deterministic, so a learned answer is the one this process would have computed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from corral.rules import Finding, RuleEngine
from corral.rules import verdict as _verdict

ENGINE = "corral.rules"
CACHE_SIZE = 200_000

_known: dict[str, tuple[Finding, ...]] = {}
_fresh: list[tuple[str, tuple[Finding, ...]]] | None = None  # None: not sharing (one process)


@cache
def engine() -> RuleEngine:
    """Built once per process (the forkserver builds it for every local worker)."""
    return RuleEngine.default()


def analyse(command: str) -> tuple[Finding, ...]:
    """Findings for one command string (cached: equal strings give equal findings)."""
    hit = _known.get(command)
    if hit is None:
        hit = tuple(engine().check_command(command))
        _remember(command, hit)
        if _fresh is not None:
            _fresh.append((command, hit))
    return hit


def _remember(command: str, findings: tuple[Finding, ...]) -> None:
    if len(_known) >= CACHE_SIZE:
        _known.clear()
    _known[command] = findings


def share(on: bool) -> None:
    """Start (or stop) collecting fresh answers for `take_fresh`."""
    global _fresh
    _fresh = [] if on else None


def take_fresh() -> list[tuple[str, tuple[Finding, ...]]]:
    """Commands analysed here since the last call, for other workers to learn."""
    global _fresh
    if not _fresh:
        return []
    out, _fresh = _fresh, []
    return out


def learn(entries: list[tuple[str, tuple[Finding, ...]]]) -> None:
    """Answers another worker computed with the same engine."""
    for command, findings in entries:
        if command not in _known:
            _remember(command, findings)


def verdict(findings: list[Any], policy: Any) -> str:
    return _verdict(findings, policy)


def warm() -> None:
    """Worker initializer: pay the engine's start-up once, before the first chunk."""
    engine()


def reset() -> None:
    """Forget every cached verdict (ours and the engine's own), so a benchmark starts cold."""
    from corral.audit import context  # the per-command file effects are a cache too

    _known.clear()
    context._EFFECTS.clear()
    share(False)
    engine()._cache.clear()
