"""The record and the host's resources are out of the agent's reach (issue: Hold, items 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.sandbox.errors import SandboxRefused
from tests.sandbox.helpers import new_dir
from tests.security.helpers import open_box


@pytest.mark.unprivileged
async def test_store_is_not_reachable_from_the_sandbox(corral_home: Path) -> None:
    async with open_box() as sb:
        await sb.exec("echo hi")
        assert (corral_home / "events.db").exists()
        r = await sb.exec(
            f"ls -la {corral_home} 2>&1; find / -xdev -name 'events.db*' 2>/dev/null | head; echo END"
        )
        assert "events.db" not in r.stdout, r.stdout


@pytest.mark.unprivileged
async def test_workspace_holding_corral_home_is_refused(tmp_path, monkeypatch) -> None:
    ws = new_dir(tmp_path / "ws")
    monkeypatch.setenv("CORRAL_HOME", str(ws / ".corral-home"))
    with pytest.raises(SandboxRefused, match="corral's own state"):
        async with open_box(workspace=ws, store=False):
            pass


@pytest.mark.unprivileged
@pytest.mark.parametrize("where", ["/", "/etc", "/usr", "HOME", "MISSING", "FILE"])
async def test_dangerous_workspaces_are_refused(tmp_path, where: str) -> None:
    path = {"HOME": str(Path.home()), "MISSING": str(tmp_path / "nope"),
            "FILE": str(tmp_path / "f")}.get(where, where)  # fmt: skip
    if where == "FILE":
        Path(path).write_text("x")
    with pytest.raises(SandboxRefused):
        async with open_box(workspace=path, store=False):
            pass
    assert not (tmp_path / "nope").exists()


@pytest.mark.unprivileged
async def test_tmp_is_capped_by_the_disk_limit() -> None:
    from corral.sandbox.sandbox import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    pol = sandbox_policy()
    pol.limits.disk = 4 * 1024 * 1024
    async with Sandbox(pol) as sb:
        r = await sb.exec("head -c 8000000 /dev/zero > /tmp/fill; echo rc=$?; du -k /tmp/fill")
        assert "rc=1" in r.stdout
        assert int(r.stdout.split()[-2]) <= 4096


@pytest.mark.unprivileged
@pytest.mark.parametrize(
    "fill", ["head -c 3000000 /dev/zero > big", "mkdir d && cd d && touch $(seq 1 400)"]
)
async def test_filling_the_workspace_is_a_resource_event(tmp_path, fill: str) -> None:
    from corral.sandbox.sandbox import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    pol.limits.inodes = 300
    async with Sandbox(pol, workspace=new_dir(tmp_path / "ws")) as sb:
        await sb.exec(fill)
        hits = [e for e in sb.events if e.rule in ("resource.disk_limit", "resource.inode_limit")]
        assert hits and hits[0].source == "resource" and hits[0].step == 1
        assert hits[0].evidence["where"].startswith("workspace")


@pytest.mark.unprivileged
async def test_a_workspace_past_the_loops_own_look_is_still_measured(tmp_path) -> None:
    """More files than the event loop walks itself (`Sandbox.INLINE_DISK_ENTRIES`), under the
    limit: no event; then a fill, and a shrink back: each verdict as from a full walk."""
    from corral.sandbox.sandbox import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    pol.limits.inodes = 1000
    n = Sandbox.INLINE_DISK_ENTRIES + 50
    async with Sandbox(pol, workspace=new_dir(tmp_path / "ws")) as sb:
        r = await sb.exec(f"mkdir d && cd d && touch $(seq 1 {n}) && ls | wc -l")
        assert r.stdout.split() == [str(n)], r.stderr
        assert not [e for e in sb.events if e.source == "resource"]
        await sb.exec("head -c 3000000 /dev/zero > big")
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert hits and hits[0].step == 2 and hits[0].evidence["where"] == "workspace_disk"
        await sb.exec("rm -rf d big")  # small again: the loop looks itself, and still sees
        await sb.exec("head -c 3000000 /dev/zero > big2")
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert [e.step for e in hits] == [2, 4], hits


@pytest.mark.unprivileged
async def test_a_full_tmp_is_recorded() -> None:
    from corral.sandbox.sandbox import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    async with Sandbox(pol) as sb:
        await sb.exec("cat /dev/zero > /tmp/fill 2>/dev/null; echo agent swallowed the error")
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert hits and hits[0].evidence["where"] == "tmp_disk"
