"""Which directories may be handed to an agent as its workspace.

The workspace is bound read-write into the sandbox and, under a root supervisor, given to the
sandbox's host id for the episode: `/`, a system tree, a home directory or anything holding the
supervisor's own state (the event store, other sandboxes' workspaces) must never be one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from pathlib import Path

from corral.sandbox.errors import SandboxRefused

SYSTEM_TREES = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
                "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/usr", "/var", "/home",
                "/mnt", "/media", "/snap", "/var/lib", "/var/log", "/usr/local")  # fmt: skip


# Folders of $CORRAL_HOME no workspace may lie in (other sandboxes' gateway files, the image cache,
# tokens); a workspace may lie elsewhere in it (`sandboxes/`, the demo's), never hold it.
PRIVATE_STATE = {".", "egress", "images", "cache", "tokens", "rules-cache", "ids"}


def _homes() -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError, KeyError):
        for entry in pwd.getpwall():
            if entry.pw_dir and entry.pw_dir not in ("/", "/nonexistent"):
                out.add(os.path.realpath(entry.pw_dir))
    with contextlib.suppress(RuntimeError, KeyError):
        out.add(os.path.realpath(Path.home()))
    return out


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def check_workspace(path: Path, supervisor_paths: list[str]) -> Path:
    """The resolved workspace, or SandboxRefused naming why it cannot be one."""
    fix = "pass a project directory of its own (e.g. --workspace ./repo), or none for a fresh one"
    real = os.path.realpath(path)
    if not os.path.lexists(real):
        raise SandboxRefused(f"workspace {path} does not exist", "create it first, " + fix)
    if not os.path.isdir(real):
        raise SandboxRefused(f"workspace {path} is not a directory", fix)
    if real in SYSTEM_TREES:
        raise SandboxRefused(f"workspace {real} is a system directory", fix)
    if real in _homes():
        raise SandboxRefused(f"workspace {real} is a home directory (keys, shell history)", fix)
    for sup in supervisor_paths:
        sup_real = os.path.realpath(sup)
        under = (
            os.path.relpath(real, sup_real).split(os.sep)[0] if _inside(real, sup_real) else None
        )
        if _inside(sup_real, real) or under in PRIVATE_STATE:
            raise SandboxRefused(
                f"workspace {real} holds or lies in corral's own state ({sup_real})",
                fix + "; or set CORRAL_HOME outside the workspace",
            )
    return Path(real)


__all__ = ["SYSTEM_TREES", "check_workspace"]
