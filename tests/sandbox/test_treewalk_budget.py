"""The event loop's own disk look reads a bounded number of names, however large a directory the
agent grew while the loop was not looking (red team: a background job made 300k entries between
two commands; the next look listed them all on the loop, ~110 ms)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox import treewalk, usage


class _CountingScandir:
    """os.scandir, counting the entries the walk pulls out of it."""

    def __init__(self) -> None:
        self.pulled = 0
        self.real = os.scandir

    def __call__(self, fd: int) -> Any:
        it = self.real(fd)
        outer = self

        class Wrapped:
            def __enter__(self) -> Wrapped:
                return self

            def __exit__(self, *exc: object) -> None:
                it.close()

            def __iter__(self) -> Wrapped:
                return self

            def __next__(self) -> os.DirEntry[str]:
                entry = next(it)
                outer.pulled += 1
                return entry

        return Wrapped()


def test_a_huge_directory_costs_a_bounded_read(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    big = tmp_path / "ws" / "d"
    big.mkdir(parents=True)
    for i in range(5000):
        (big / str(i)).symlink_to("x")
    counting = _CountingScandir()
    monkeypatch.setattr(treewalk.os, "scandir", counting)
    got = usage.measure(str(tmp_path / "ws"), None, max_names=256)
    assert not got.complete and got.inodes <= 256
    assert counting.pulled <= 257, counting.pulled


def test_a_budget_the_tree_fits_in_changes_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "a" / "b").mkdir(parents=True)
    for i in range(40):
        (ws / "a" / f"f{i}").write_bytes(b"x" * 10)
    full = usage.measure(str(ws))
    bounded = usage.measure(str(ws), None, max_names=256)
    assert full.complete and bounded == full
    assert usage.measure(str(ws), 10, max_names=256).inodes == 11  # the inode cap still first
