"""Helpers for sandbox tests: proof that a command really runs inside a sandbox."""

from __future__ import annotations

import os
from pathlib import Path

from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.sandbox.probe import probe


def sandbox_policy(**limits: object) -> Policy:
    """rl-strict, with best-effort limits when this user cannot write cgroups (unprivileged runs),
    and the command gate off: these tests prove the containment line that stands behind it."""
    pol = load_policy("rl-strict").model_copy(deep=True)
    pol.gate.enabled = False
    caps = probe()
    if not caps.cgroup_writable:
        pol.limits.enforcement = "best_effort"
    for k, v in limits.items():
        setattr(pol.limits, k, v)
    return pol


INSIDE_CHECK = (
    'test "$(hostname)" = corral && test -d /workspace && '
    "test \"$(ip -o link show 2>/dev/null | grep -vc ': lo:')\" = 0 && "
    'test -z "$(ip route show 2>/dev/null)" && echo INSIDE'
)


def is_root() -> bool:
    return os.geteuid() == 0


def new_dir(path: Path) -> Path:
    """A fresh directory for a workspace (corral refuses a missing one rather than make it)."""
    path.mkdir(parents=True, exist_ok=True)
    return path
