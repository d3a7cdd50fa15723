"""Walking a tree the agent built, whatever its shape.

`os.walk`, `os.fwalk` and `shutil.rmtree` recurse in Python: a directory 1,100 levels deep raises
RecursionError (and a path past PATH_MAX makes `os.walk` skip the subtree without a word), so an
agent could make the supervisor's clean-up crash and leave a setuid file or a held id behind. This
walker is iterative and holds one directory fd at a time: it descends with `openat(name,
O_NOFOLLOW)` and climbs back with `openat("..")`, so neither depth nor path length matters, and no
symlink is ever followed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# visit(dir_fd, name, lstat) for every entry below the root; return False to stop the walk
Visit = Callable[[int, str, os.stat_result], "bool | None"]
# left(parent_fd, name) after a directory's entries were all visited (bottom-up hook)
Left = Callable[[int, str], None]


class _Budget(Exception):
    """More names than `walk`'s `max_names`: the walk stops, incomplete."""


def walk(root: str, visit: Visit, left: Left | None = None, max_names: int | None = None) -> bool:
    """Visit every entry under `root` (not root itself); True when the walk was complete.

    `max_names`: stop (incomplete) once more names than this have been read from directories,
    counting as they are read: a directory of a million entries costs a bounded read, not a
    listing of them all (the event loop's own disk look, `Sandbox._check_disk`)."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return False
    top = os.fstat(fd)
    stack: list[list[str]] = []
    names: list[str] = []
    budget = max_names

    def entries(dir_fd: int) -> list[str]:
        """The directory's names; against the budget, read one at a time (never all at once)."""
        nonlocal budget
        if budget is None:
            return _entries(dir_fd)
        out: list[str] = []
        try:
            with os.scandir(dir_fd) as it:
                for entry in it:
                    if budget <= 0:
                        raise _Budget
                    budget -= 1
                    out.append(entry.name)
        except OSError:
            pass
        return out

    try:
        stack.append(entries(fd))
        while stack:
            if not stack[-1]:
                stack.pop()
                if not stack:
                    break
                parent = os.open("..", DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                child = names.pop()
                if not stack[:-1] and not _same(os.fstat(fd), top):
                    return False  # the tree moved under us: never climb past the root
                if left is not None:
                    left(fd, child)
                continue
            name = stack[-1].pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if visit(fd, name, st) is False:
                return False
            if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                try:
                    child_fd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                os.close(fd)
                fd = child_fd
                names.append(name)
                stack.append(entries(fd))
        return True
    except _Budget:
        return False
    finally:
        os.close(fd)


def _entries(fd: int) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError:
        return []


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def rmtree(root: str) -> bool:
    """Remove `root` and everything under it, however deep; True when it is gone."""

    def unlink(fd: int, name: str, st: os.stat_result) -> None:
        if not stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)

    def rmdir(parent: int, name: str) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=parent)

    walk(root, unlink, rmdir)
    with contextlib.suppress(OSError):
        os.rmdir(root)
    return not os.path.lexists(root)


__all__ = ["rmtree", "walk"]
