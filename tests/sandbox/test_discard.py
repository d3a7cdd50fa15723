"""A closed sandbox's own workspace: gone from its path when close() returns, removed behind it,
and its host id let go only once the tree is gone."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from corral.sandbox import discard
from corral.sandbox.procs import of_dead_supervisor


def test_a_discarded_tree_leaves_its_path_at_once_and_goes_before_then(tmp_path: Path) -> None:
    tree = tmp_path / "123-sb-x-abc"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(200):
        (tree / "a" / "b" / f"f{i}").write_text("x")
    seen: list[bool] = []
    assert discard.discard(tree, then=lambda: seen.append((tmp_path / "123-sb-x-abc.closed")
                                                          .exists()))  # fmt: skip
    assert not tree.exists()
    assert discard.wait(30)
    assert seen == [False]  # `then` (the id's release) ran after the tree was removed
    assert list(tmp_path.iterdir()) == []


def test_a_missing_tree_is_left_to_the_caller(tmp_path: Path) -> None:
    assert discard.discard(tmp_path / "nothing") is False


def test_a_dead_supervisors_discarded_tree_is_swept(tmp_path: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()  # its pid is free now (reuse within this test is vanishingly unlikely)
    left = tmp_path / f"{p.pid}-sb-x-abc{discard.SUFFIX}"
    left.mkdir()
    assert left in of_dead_supervisor(tmp_path)


def test_close_takes_the_workspace_away_and_frees_the_id_after(corral_home: Path) -> None:
    from corral.sandbox.sandbox import Sandbox

    async def go() -> tuple[Path, object]:
        sb = Sandbox("rl-strict", store=False)
        await sb.start()
        await sb.exec("mkdir -p deep/er && seq 1 500 | xargs -I{} touch deep/er/f{}")
        ws, ident = sb.workspace, sb.identity
        await sb.close()
        assert ws is not None and not ws.exists()
        return ws, ident

    ws, ident = asyncio.run(go())
    assert discard.wait(30)
    assert not ws.with_name(ws.name + discard.SUFFIX).exists()
    if ident is not None:  # (a root supervisor's own host id: held until the tree was gone)
        assert ident.lock_fd == -1
