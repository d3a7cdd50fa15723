"""`EventStore.release_shared`: a CORRAL_HOME going away takes its shared handles with it."""

from __future__ import annotations

import os
from pathlib import Path

from corral.store.sqlite import EventStore


def _open_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return out


def test_release_shared_closes_only_the_stores_under_that_home(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sa = EventStore.shared(a / "events.db")
    sb = EventStore.shared(b / "events.db")
    assert any(p.startswith(str(a)) for p in _open_fds())
    assert EventStore.release_shared(a) == 1
    assert not any(p.startswith(str(a)) for p in _open_fds())
    assert EventStore.shared(b / "events.db") is sb  # the other home's handle is untouched
    again = EventStore.shared(a / "events.db")
    assert again is not sa  # a fresh handle when asked for again
    assert EventStore.release_shared(tmp_path) == 2
    assert EventStore.release_shared(tmp_path) == 0
