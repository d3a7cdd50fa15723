"""Acceptance: a task image as the sandbox's root, with a writable layer of its own.

The SWE-bench shape: the agent edits /testbed, the harness uploads /tests/test_x.py and grades in a
harness session; the agent cannot write /tests (refused by the kernel, recorded). Two sandboxes on
one image see neither each other's writes nor change the cache; nothing remains after close.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from corral import Sandbox
from corral.images import ImageStore, rootfs
from corral.policy.model import Policy
from corral.rl.reward import RewardShaper
from corral.sandbox.errors import ProtectedPath, SandboxRefused
from tests.images.imagekit import TEST_X
from tests.sandbox.helpers import sandbox_policy

pytestmark = pytest.mark.unprivileged

GRADE = "cd /testbed && python3 -m pytest -q -p no:cacheprovider /tests/test_x.py"


def _policy() -> Policy:
    pol = sandbox_policy()  # gate off: the kernel itself must refuse
    pol.filesystem.protected = [*pol.filesystem.protected, "/tests"]
    return pol


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            p = Path(dirpath, name)
            h.update(str(p.relative_to(root)).encode())
            if not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


async def _reward(sb: Sandbox) -> float:
    grader = sb.sessions.get("grader") or await sb.open_session("grader", harness=True)
    r = await grader.exec(GRADE)
    return 1.0 if r.exit_code == 0 else 0.0


async def test_swe_task_agent_fixes_harness_grades(image_home: Path) -> None:
    sb = Sandbox(_policy(), image="swe")
    recorded: list = []  # everything the sink records, the harness sandbox's events included
    sb.sink.listeners.append(recorded.append)
    async with sb:
        r = await sb.exec("pwd; echo $TASK; python3 -c 'import pytest'")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.splitlines() == ["/testbed", "swe-tiny"]
        # the harness's upload: any path, /tests included, recorded as the harness's
        await sb.write_file("/tests/test_x.py", TEST_X)  # the file API is the harness's
        assert await _reward(sb) == 0.0  # the bug is still there
        steps_before = sb.step
        # the agent tries the grader's files, through the shell and the file API
        r = await sb.exec("echo 'def test_add(): pass' > /tests/test_x.py")
        assert r.exit_code != 0 and "Read-only file system" in r.stderr
        with pytest.raises(ProtectedPath):  # the agent's own editor tool
            await sb.write_file("/tests/test_x.py", "def test_add(): pass\n", agent=True)
        assert (await sb.read_file("/tests/test_x.py")).decode() == TEST_X
        refused = [e for e in sb.events if e.rule == "file.protected_write"]
        assert len(refused) >= 2 and all(e.path == "/tests/test_x.py" for e in refused)
        assert all(e.action == "blocked" and e.severity == "high" for e in refused)
        # the agent's real work
        r = await sb.exec(
            "sed -i 's/a - b/a + b/' calc.py && python3 -c 'import calc; print(calc.add(2, 3))'"
        )
        assert r.stdout == "5\n", r.stderr
        assert sb.step == steps_before + 2
        assert await _reward(sb) == 1.0
        assert sb.step == steps_before + 2  # the harness's commands are not the agent's steps
        r = await sb.harness_exec(GRADE)  # the one-shot form: the same root, the agent's fix
        assert r.exit_code == 0, r.stdout + r.stderr
        harness = [e for e in sb.events
                   if e.rule == "file.harness_write" or (e.evidence or {}).get("harness")]  # fmt: skip
        assert {e.rule for e in harness} >= {"file.harness_write"}
        in_harness = [e for e in recorded if e.sandbox_id == f"{sb.id}-harness"]
        assert any(e.rule == "sandbox.command_started" for e in in_harness)
        assert RewardShaper(sb.policy).penalty([*harness, *in_harness]) == 0.0
        assert all(e.step is None for e in harness)
        state = sb.workspace
    assert state is not None and not state.exists()


async def test_two_sandboxes_are_isolated_and_leave_nothing(image_home: Path) -> None:
    img = ImageStore().get("swe")
    assert img is not None
    before = _tree_digest(img.rootfs)
    async with Sandbox(_policy(), image="swe") as a, Sandbox(_policy(), image="swe") as b:
        r = await a.exec("echo A > /etc/image-marker; echo A > /testbed/new.txt; rm /testbed/README"
                         "; mkdir -p /opt/a && echo 1 > /opt/a/f; echo t > /tmp/a")  # fmt: skip
        assert r.exit_code == 0, r.stderr
        r = await b.exec("cat /etc/image-marker; ls /testbed; ls /opt /tmp")
        assert r.stdout.splitlines()[0] == "from-the-image"
        assert "README" in r.stdout and "new.txt" not in r.stdout and "a" not in r.stdout.split()
        r = await a.exec("cat /etc/image-marker; test -e /testbed/README || echo gone")
        assert r.stdout == "A\ngone\n"
        dirs = [a.workspace, b.workspace]
        assert all(d is not None and d.exists() for d in dirs)
    assert _tree_digest(img.rootfs) == before  # the shared cache never changed
    assert not any(d.exists() for d in dirs)  # type: ignore[union-attr]
    sandboxes = dirs[0].parent  # type: ignore[union-attr]
    mine = [d for d in sandboxes.iterdir() if a.id in d.name or b.id in d.name]
    assert mine == []
    with open("/proc/self/mountinfo") as f:
        assert not any(str(sandboxes) in line for line in f)  # no mount leaked to the host


async def test_keep_leaves_the_layer(image_home: Path) -> None:
    async with Sandbox(_policy(), image="swe", keep=True) as sb:
        await sb.exec("echo kept > /testbed/out.txt")
    assert sb.kept_layer is not None
    try:
        assert (sb.kept_layer / "testbed" / "out.txt").read_text() == "kept\n"
        stopped = [e for e in sb.events if e.rule == "sandbox.stopped"][-1]
        assert stopped.evidence["kept_layer"] == str(sb.kept_layer)
        assert stopped.evidence["layer_bytes"] > 0
    finally:
        shutil.rmtree(sb.kept_layer.parents[1], ignore_errors=True)  # the sandbox's state dir


async def test_policy_image_field_and_host_workspace(image_home: Path, tmp_path: Path) -> None:
    pol = _policy()
    pol.image = "swe"
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "mine.txt").write_text("host\n")
    async with Sandbox(pol, workspace=ws) as sb:
        r = await sb.exec("pwd; cat mine.txt; cat /etc/image-marker; echo back > out.txt")
        assert r.stdout.splitlines() == ["/testbed", "host", "from-the-image"], r.stderr
        assert (await sb.read_file("/etc/image-marker")) == b"from-the-image\n"
        await sb.write_file("/tmp/from-harness", "h")
        r = await sb.exec("cat /tmp/from-harness")
        assert r.stdout == "h"
    assert (ws / "out.txt").read_text() == "back\n"  # a given workspace is the caller's


async def test_no_image_no_change_and_bad_image_refused(image_home: Path) -> None:
    async with Sandbox(sandbox_policy()) as sb:  # the host root, as before
        r = await sb.exec("pwd; test -e /etc/image-marker || echo host")
        assert r.stdout == "/workspace\nhost\n"
    with pytest.raises(SandboxRefused, match="unknown image"):
        async with Sandbox(sandbox_policy(), image="/no/such/image"):
            pass


def _fuse_usable() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fuse-overlayfs") is not None


@pytest.mark.parametrize(
    ("helper", "overlay"),
    [("native", "kernel"), ("python", "kernel"), ("native", "fuse"), ("python", "fuse")],
)
async def test_each_helper_and_overlay_kind(image_home: Path, monkeypatch: pytest.MonkeyPatch,
                                            helper: str, overlay: str) -> None:  # fmt: skip
    """The C helper and its Python twin, the kernel overlay and fuse-overlayfs (the fallback where
    the kernel refuses an unprivileged overlay): each gives a writable root of its own."""
    if overlay == "fuse" and not _fuse_usable():
        pytest.skip("/dev/fuse is not usable by this user here")
    if helper == "native" and not (Path(rootfs.__file__).with_name(rootfs.HELPER_NAME)).exists():
        pytest.skip("the C helper is not built (make install)")
    monkeypatch.setenv("CORRAL_OVERLAY_HELPER", helper)
    if overlay == "fuse":
        monkeypatch.setenv("CORRAL_OVERLAY", "fuse")
    async with Sandbox(_policy(), image="swe") as sb:
        r = await sb.exec("grep ' / ' /proc/self/mounts; echo mine > /etc/image-marker; "
                          "cat /etc/image-marker")  # fmt: skip
        assert r.exit_code == 0, r.stderr
        assert r.stdout.split()[2] == ("fuse.fuse-overlayfs" if overlay == "fuse" else "overlay")
        assert r.stdout.endswith("mine\n")
        layer = sb._root.upper
    assert (ImageStore().get("swe").rootfs / "etc/image-marker").read_text() == "from-the-image\n"
    assert not layer.exists()


async def test_writable_layer_has_a_hard_quota(image_home: Path) -> None:
    """limits.disk / limits.inodes hold on the image root: the kernel refuses past them, and the
    hit is a resource event; the image below is untouched."""
    pol = _policy()
    pol.limits.disk = 8 * 1024 * 1024
    pol.limits.inodes = 500
    async with Sandbox(pol, image="swe") as sb:
        r = await sb.exec("dd if=/dev/zero of=/var/tmp/fill bs=1M count=16")
        assert r.exit_code != 0 and "No space left on device" in r.stderr
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert hits and hits[-1].evidence["limit_bytes"] == 8 * 1024 * 1024
        r = await sb.exec("rm -f /var/tmp/fill; mkdir /many && cd /many && "
                          "for ((i = 0; i < 600; i++)); do : > f$i || break; done; ls | wc -l")  # fmt: skip
        assert int(r.stdout.split()[-1]) < 600
        assert any(e.evidence.get("limit_inodes") == 500 for e in sb.events
                   if e.rule == "resource.disk_limit" and e.step == 2)  # fmt: skip
        r = await sb.exec("rm -rf /many; echo fine > /testbed/after.txt && cat /testbed/after.txt")
        assert r.stdout == "fine\n"  # room again once the agent cleans up
    stopped = [e for e in sb.events if e.rule == "sandbox.stopped"][-1]
    assert 0 < stopped.evidence["layer_bytes"] < 8 * 1024 * 1024
