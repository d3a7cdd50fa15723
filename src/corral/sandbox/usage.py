"""How much disk an agent has added: the workspace's bytes and files, and its /tmp.

/tmp is a tmpfs capped at `limits.disk` (bwrap `--size`), so the kernel itself stops it; the
supervisor reads its fill through the sandbox's root (`/proc/<init>/root/tmp`) to record the hit.
The workspace is a host directory with no quota of its own (LIMITATION: project quotas would need
the host filesystem's cooperation), so its growth is measured by a walk after each command and every
few seconds while one runs, and answered as a limit hit (the command's processes are killed).
A walk stops as soon as the inode allowance is passed, so a flood of files cannot make it slow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    bytes: int
    inodes: int
    complete: bool = True


def measure(root: str, max_inodes: int | None = None) -> Usage:
    """Bytes (allocated blocks) and entries under root, never following a symlink."""
    total = count = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    count += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if max_inodes is not None and count > max_inodes:
                        return Usage(total, count, complete=False)
        except OSError:
            continue
    return Usage(total, count)


def tmp_fill(init_pid: int | None) -> tuple[int, int] | None:
    """(used, size) bytes of the sandbox's /tmp tmpfs, seen through its root; None if unreadable."""
    if not init_pid:
        return None
    try:
        st = os.statvfs(f"/proc/{init_pid}/root/tmp")
    except OSError:
        return None
    size = st.f_blocks * st.f_frsize
    return (size - st.f_bfree * st.f_frsize, size)


__all__ = ["Usage", "measure", "tmp_fill"]
