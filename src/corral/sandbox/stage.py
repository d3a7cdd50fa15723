"""Making a directory reachable by a sandbox's unprivileged host id (root supervisor only).

bubblewrap, started as the sandbox's own host id (identity.py), resolves every bind source with that
id's rights: a workspace under `/root` cannot be walked to. Such a directory is bind-mounted (by the
root supervisor, in its own mount namespace, private propagation) at `/run/corral/stage/<pid>-<id>`,
whose parents anyone may search, and bwrap binds it from there. `unstage` detaches it at close; a
supervisor that died leaves stale stages, which the next one detaches (`sweep`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import uuid
from pathlib import Path

STAGE_ROOT = Path("/run/corral/stage")
SANDBOX_ROOT_FALLBACK = Path("/var/lib/corral/sandboxes")
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _searchable_dirs(path: Path, mode: int = 0o711) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for p in (path, *path.parents):
        if str(p) in ("/", "/run", "/var", "/var/lib"):
            break
        with contextlib.suppress(OSError):
            if not os.stat(p).st_mode & 0o001:
                os.chmod(p, mode)


def stage(src: str, sandbox_id: str) -> str:
    """Bind `src` where the sandbox's id can reach it; returns the staged path."""
    _searchable_dirs(STAGE_ROOT)
    target = STAGE_ROOT / f"{os.getpid()}-{sandbox_id}-{uuid.uuid4().hex[:8]}"
    target.mkdir(mode=0o711)
    _check(_libc.mount(src.encode(), str(target).encode(), None, MS_BIND | MS_REC, None),
           f"bind {src}")  # fmt: skip
    _check(_libc.mount(None, str(target).encode(), None, MS_PRIVATE | MS_REC, None),
           f"make {target} private")  # fmt: skip
    return str(target)


def unstage(target: str) -> None:
    _libc.umount2(target.encode(), MNT_DETACH)
    with contextlib.suppress(OSError):
        os.rmdir(target)


def sweep() -> None:
    """Detach stages of supervisors that are gone."""
    if not STAGE_ROOT.is_dir():
        return
    from corral.sandbox.procs import of_dead_supervisor

    for d in of_dead_supervisor(STAGE_ROOT):
        unstage(str(d))


def sandboxes_root(preferred: Path) -> Path:
    """Where fresh workspaces go: `preferred` when a sandbox's id can reach it, else a system one."""
    from corral.sandbox.bwrap import reachable

    preferred.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or reachable(str(preferred / "x")):
        return preferred
    _searchable_dirs(SANDBOX_ROOT_FALLBACK)
    return SANDBOX_ROOT_FALLBACK


__all__ = ["SANDBOX_ROOT_FALLBACK", "STAGE_ROOT", "sandboxes_root", "stage", "sweep", "unstage"]
