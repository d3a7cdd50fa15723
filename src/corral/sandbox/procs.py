"""Small /proc readers shared by the shells of a sandbox."""

from __future__ import annotations

import os
from pathlib import Path


def children_of(pid: int | None) -> set[int]:
    """A process's children now: one small /proc read, cheap enough for every command."""
    if not pid:
        return set()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


def of_dead_supervisor(root: Path) -> list[Path]:
    """Entries of `root` named `<pid>-...` whose supervisor pid is gone (not ours, not alive)."""
    out = []
    for d in root.iterdir():
        head = d.name.split("-", 1)[0]
        if not head.isdigit() or int(head) == os.getpid():
            continue
        try:
            os.kill(int(head), 0)
        except ProcessLookupError:
            out.append(d)
        except PermissionError:
            continue
    return out
