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

from corral.sandbox import treewalk


@dataclass(frozen=True)
class Usage:
    bytes: int
    inodes: int
    complete: bool = True


def measure(root: str, max_inodes: int | None = None, max_names: int | None = None) -> Usage:
    """Bytes (allocated blocks) and entries under root, never following a symlink; iterative, so
    no depth or path length stops it (treewalk). Incomplete past `max_inodes` entries counted, or
    past `max_names` names read from directories (read as they come, never a whole listing)."""
    total = count = 0

    def add(fd: int, name: str, st: os.stat_result) -> bool:
        nonlocal total, count
        count += 1
        total += st.st_blocks * 512
        return not (max_inodes is not None and count > max_inodes)

    complete = treewalk.walk(root, add, max_names=max_names)
    return Usage(total, count, complete=complete)


MAPS_INLINE_BYTES = 64 * 1024  # a budgeted look reads no larger /proc/PID/maps


def unlinked_bytes(pids: list[int], device: int, max_fds: int | None = None) -> int | None:
    """Bytes held by deleted files on `device` that the sandbox's processes still hold open or
    mapped (a file unlinked after opening, or mapped MAP_SHARED and its fd closed, fills the disk
    without showing in any walk); None as soon as more than `max_fds` descriptors (or processes,
    or mappings) are seen (the caller then looks again where time matters less).

    LIMITATION: a descriptor in flight in a unix socket (sent with SCM_RIGHTS, never received)
    is in no process's table: a file held only so is not counted. Only a quota the filesystem
    keeps (a project quota, a loop or tmpfs workspace) would count it."""
    seen: set[int] = set()
    total = 0
    budget = max_fds
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        if budget is not None:
            budget -= max(1, len(fds))  # a process with none still cost a look
            if budget < 0:
                return None
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if st.st_nlink == 0 and st.st_dev == device and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
        mapped = _mapped_deleted(pid, device, seen, max_fds is not None)
        if mapped is None:
            return None
        total += mapped
    return total


def _mapped_deleted(pid: int, device: int, seen: set[int], budgeted: bool) -> int | None:
    """Bytes of deleted files on `device` mapped by `pid` and not yet in `seen` (their inodes
    added); None when a budgeted look finds the process's map list too large to read here."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            raw = f.read(MAPS_INLINE_BYTES + 1) if budgeted else f.read()
    except OSError:
        return 0
    if budgeted and len(raw) > MAPS_INLINE_BYTES:
        return None
    total = 0
    for line in raw.splitlines():
        if not line.endswith(b" (deleted)"):
            continue
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        span, _, _, dev, inode = parts[:5]
        major, _, minor = dev.partition(b":")
        try:
            if os.makedev(int(major, 16), int(minor, 16)) != device or int(inode) in seen:
                continue
            ino = int(inode)
        except ValueError:
            continue
        try:  # the file itself, through the mapping (root: map_files needs CAP_SYS_ADMIN)
            st = os.stat(f"/proc/{pid}/map_files/{span.decode()}")
            size = st.st_blocks * 512 if st.st_nlink == 0 else 0
        except OSError:  # not readable to us: the mapping's length, as good a measure as any
            start, _, end = span.partition(b"-")
            size = int(end, 16) - int(start, 16)
        seen.add(ino)
        total += size
    return total


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


__all__ = ["Usage", "measure", "tmp_fill", "unlinked_bytes"]
