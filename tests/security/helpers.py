"""Helpers for the attack tests: a sandbox whose gate is off, so only the containment is tested."""

from __future__ import annotations

import shlex

from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy


def open_box(**kw: object) -> Sandbox:
    return Sandbox(sandbox_policy(), **kw)  # type: ignore[arg-type]


def py(script: str) -> str:
    """A shell command that runs `script` with the sandbox's python3."""
    return f"python3 -c {shlex.quote(script)}"


def host_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out
