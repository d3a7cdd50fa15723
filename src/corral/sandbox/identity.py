"""Who the agent is on the host: never uid 0, one unprivileged id per sandbox.

A root supervisor that started bubblewrap directly would give the agent the host's uid 0 (the
sandbox's user namespace maps 0 to 0): a writable `/proc/sys/kernel/core_pattern` plus one crash then
runs the agent's script as full root on the host, and a setuid-root file left in the workspace works
for every host user afterwards. So a root supervisor starts bubblewrap as an ordinary host id taken
from a range no account uses (one id per live sandbox, so sandboxes cannot touch each other's files
even through a shared path); inside, the id is mapped to 0 and the agent still looks like root.

The range is `corral`'s entry in /etc/subuid when there is one, else a fixed high range. An id is held
by an flock on a file under /run/corral/ids, so two supervisors on one host never hand out the same
id, and a crashed supervisor's ids come free with its locks.

An ordinary-user supervisor needs none of this: bubblewrap runs as that user, who holds no host
privilege; every sandbox of it shares that id (LIMITATION: they are kept apart by their mount
namespaces only, not by ids).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path

from corral.sandbox import treewalk

DEFAULT_BASE = 1_500_000_000
DEFAULT_COUNT = 65536
LOCK_DIR = Path("/run/corral/ids")


class IdentityUnavailable(RuntimeError):
    """No unprivileged host id could be taken for a sandbox."""


def id_range() -> tuple[int, int]:
    """(first id, how many): `corral:START:COUNT` in /etc/subuid, else the fixed high range."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/subuid").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == "corral":
                start, _, count = rest.partition(":")
                if start.isdigit() and count.isdigit() and int(count) > 0 and int(start) > 65535:
                    return int(start), int(count)
    return DEFAULT_BASE, DEFAULT_COUNT


@dataclass
class HostIdentity:
    """An unprivileged host uid/gid held for one sandbox; `release()` gives it back."""

    uid: int
    lock_fd: int = field(repr=False)

    @property
    def gid(self) -> int:
        return self.uid

    def release(self) -> None:
        # forgotten before it is closed: the discard worker's thread may release it while the
        # event loop's does too, and a second close would hit a number someone else holds now
        fd, self.lock_fd = self.lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def allocate() -> HostIdentity:
    """Take a free id from the range (random start, so concurrent supervisors rarely collide)."""
    base, count = id_range()
    LOCK_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = random.randrange(count)
    for i in range(min(count, 4096)):
        uid = base + (start + i) % count
        path = LOCK_DIR / str(uid)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise IdentityUnavailable(f"cannot hold a sandbox id under {LOCK_DIR}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return HostIdentity(uid=uid, lock_fd=fd)
    raise IdentityUnavailable(f"every sandbox id in {base}..{base + count - 1} is in use")


# ------------------------------------------------------------------ workspace ownership
# (st_dev, st_ino) -> (uid, gid, mode) of every entry before the sandbox started
Owners = dict[tuple[int, int], tuple[int, int, int]]
_SUID = stat.S_ISUID | stat.S_ISGID


def hand_over_path(workspace: Path, uid: int, gid: int, keep: list[str]) -> Owners:
    """The directories bubblewrap must search as the sandbox's id when it binds the workspace's
    protected paths: the workspace and each protected path's parents under it, handed over now
    (cheap); `hand_over` does the rest on a thread while bubblewrap starts, given these owners.
    Stops at anything that is not a real directory (a symlink is never followed)."""
    owners: Owners = {}
    dirs = [str(workspace)]
    for k in keep:
        rel = os.path.relpath(k, workspace)
        if rel.startswith(".."):
            continue
        parts = rel.split(os.sep)[:-1]
        dirs += [os.path.join(str(workspace), *parts[:i]) for i in range(1, len(parts) + 1)]
    for d in dict.fromkeys(dirs):
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        owners.setdefault((st.st_dev, st.st_ino), (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        with contextlib.suppress(OSError):
            os.chown(d, uid, gid, follow_symlinks=False)
    return owners


def hand_over(workspace: Path, uid: int, gid: int, keep: list[str] | None = None,
              owners: Owners | None = None) -> Owners:  # fmt: skip
    """Give the workspace to the sandbox's id; returns the original owners to restore at close
    (`owners`: those `hand_over_path` already recorded). Paths under `keep` (protected ones)
    stay with their owners: read-only to the agent twice over."""
    owners = dict(owners or {})

    def record(st: os.stat_result) -> None:
        owners.setdefault((st.st_dev, st.st_ino), (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))

    def give(fd: int, name: str, st: os.stat_result) -> None:
        record(st)
        if (st.st_uid, st.st_gid) != (uid, gid):
            with contextlib.suppress(OSError):
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def restore(fd: int | None, name: str, st: os.stat_result) -> None:
        before = owners.get((st.st_dev, st.st_ino))
        if before is not None and (st.st_uid, st.st_gid) != before[:2]:
            where: dict = {"dir_fd": fd} if fd is not None else {}
            with contextlib.suppress(OSError):
                os.chown(name, *before[:2], follow_symlinks=False, **where)

    root = os.lstat(workspace)
    record(root)
    with contextlib.suppress(OSError):
        os.chown(workspace, uid, gid, follow_symlinks=False)
    treewalk.walk(str(workspace), give)
    for k in keep or []:  # the protected ones go back to their owners
        if os.path.lexists(k) and not os.path.islink(k):
            treewalk.walk(k, restore)
            restore(None, k, os.lstat(k))
    return owners


def take_back(workspace: Path, owners: Owners, sandbox_uid: int | None) -> int:
    """Return the workspace to its owners: entries that existed get their old owner and mode back,
    entries the agent made get the workspace's owner and lose group/other write; every
    setuid/setgid bit on a regular file is cleared (a setuid file must never outlive the sandbox).
    Returns how many setuid/setgid bits were cleared. Iterative (treewalk): no depth or path length
    the agent builds can stop it."""
    root = os.lstat(workspace)
    default = owners.get((root.st_dev, root.st_ino), (os.geteuid(), os.getegid(), 0o755))[:2]
    cleared = 0

    def fix(fd: int | None, name: str, st: os.stat_result) -> None:
        nonlocal cleared
        where: dict = {"dir_fd": fd} if fd is not None else {}
        if stat.S_ISLNK(st.st_mode):
            if sandbox_uid is not None and st.st_uid == sandbox_uid:
                with contextlib.suppress(OSError):
                    os.chown(name, *default, follow_symlinks=False, **where)
            return
        mode = stat.S_IMODE(st.st_mode)
        want_mode = mode
        if stat.S_ISREG(st.st_mode) and mode & _SUID:
            want_mode &= ~_SUID
            cleared += 1
        if sandbox_uid is not None:
            before = owners.get((st.st_dev, st.st_ino))
            if before is not None:
                want_owner = before[:2]
                if not stat.S_ISREG(st.st_mode) or not before[2] & _SUID:
                    want_mode = before[2] & ~(_SUID if stat.S_ISREG(st.st_mode) else 0)
            else:
                want_owner = default
                want_mode &= ~0o022 & ~(stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0)
            if (st.st_uid, st.st_gid) != want_owner:
                with contextlib.suppress(OSError):
                    os.chown(name, *want_owner, follow_symlinks=False, **where)
        if want_mode != mode:
            with contextlib.suppress(OSError):
                os.chmod(name, want_mode, **where)

    treewalk.walk(str(workspace), fix)
    fix(None, str(workspace), root)
    return cleared


__all__ = ["HostIdentity", "IdentityUnavailable", "allocate", "hand_over", "id_range", "take_back"]
