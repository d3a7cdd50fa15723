"""The finding: one rule that fired on one command or event (defined in `corral.contracts`)."""

from __future__ import annotations

from corral.contracts import Finding, ResponseName, Severity

__all__ = ["SEVERITIES", "Finding", "ResponseName", "Severity", "severity_rank", "worst"]
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")


def severity_rank(severity: str | None) -> int:
    try:
        return SEVERITIES.index(severity or "")
    except ValueError:
        return -1


def worst(findings: list[Finding]) -> Finding | None:
    return max(findings, key=lambda f: severity_rank(f.severity), default=None)
