"""Rules: the YAML packs and the engine that applies them to commands and runtime events.

from corral.rules import RuleEngine, verdict
engine = RuleEngine.default()
findings = engine.check_command("ssh -R 8080:localhost:22 user@203.0.113.5")
verdict(findings, policy)  # "deny" under rl-strict

The names below are imported on first use (PEP 562): a part that needs only the reputation data
(the egress gateway) does not pay for the shell parser and the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# `verdict` is both a submodule and a function: bound here, eagerly, so that importing the
# submodule elsewhere never leaves `corral.rules.verdict` naming the module instead
from corral.rules.finding import Finding, severity_rank, worst
from corral.rules.verdict import Verdict, effective_severity, host_allowed, verdict

_LAZY = {
    "Reputation": "corral.rules.reputation",
    "RuleEngine": "corral.rules.engine",
    "RulePackError": "corral.rules.engine",
}

__all__ = [
    "Finding",
    "Reputation",
    "RuleEngine",
    "RulePackError",
    "Verdict",
    "effective_severity",
    "host_allowed",
    "severity_rank",
    "verdict",
    "worst",
]

if TYPE_CHECKING:
    from corral.rules.engine import RuleEngine, RulePackError
    from corral.rules.reputation import Reputation


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.rules' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
