"""corral: contain, watch and audit autonomous AI agents.

The public names below are imported on first use (PEP 562), so `import corral.x` for one part, and
`corral --version`, do not pay for pydantic, the sandbox and the egress gateway.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not `typing`'s: the fork server's client (`corral run`) imports this first

__version__ = "0.1.0"

_LAZY = {
    "Event": "corral.events.model",
    "ExecResult": "corral.sandbox",
    "Policy": "corral.policy",
    "PolicyError": "corral.policy",
    "Sandbox": "corral.sandbox",
    "SandboxClosed": "corral.sandbox",
    "SandboxRefused": "corral.sandbox",
    "SyncSandbox": "corral.sandbox",
    "load_policy": "corral.policy",
}
__all__ = [
    "Event",
    "ExecResult",
    "Policy",
    "PolicyError",
    "Sandbox",
    "SandboxClosed",
    "SandboxRefused",
    "SyncSandbox",
    "load_policy",
]

if TYPE_CHECKING:
    from typing import Any

    from corral.events.model import Event
    from corral.policy import Policy, PolicyError, load_policy
    from corral.sandbox import ExecResult, Sandbox, SandboxClosed, SandboxRefused, SyncSandbox


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
