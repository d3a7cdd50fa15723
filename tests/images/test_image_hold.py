"""What the Hold issue enforces on the host root holds on an image root too (checked side by side,
never by performing an escape on the host), and the image's own settings apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import Sandbox
from corral.images import ImageStore
from corral.images.config import resolve_user
from tests.sandbox.helpers import is_root, sandbox_policy

pytestmark = pytest.mark.unprivileged


@pytest.mark.parametrize("image", [None, "swe"], ids=["host-root", "image-root"])
async def test_hold_holds_on_either_root(image_home: Path, image: str | None) -> None:
    async with Sandbox(sandbox_policy(), image=image) as sb:
        pid = sb.shell_pid()
        assert pid is not None
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        if is_root():
            assert "0" not in uids  # the agent never holds host uid 0
        r = await sb.exec("grep -E ' (/|/proc/sys) ' /proc/self/mounts; grep Seccomp: "
                          "/proc/self/status; test -e " + str(image_home) + " && echo SEEN")  # fmt: skip
        mounts = [line.split() for line in r.stdout.splitlines() if len(line.split()) > 3]
        by_point = {m[1]: m[3].split(",") for m in mounts}
        assert "ro" in by_point["/proc/sys"]
        if image:
            assert {"nosuid", "nodev"} <= set(by_point["/"]) and "rw" in by_point["/"]
        assert "Seccomp:\t2" in r.stdout
        assert "SEEN" not in r.stdout  # the supervisor's state (the image cache) is unreachable


async def test_image_user_and_home_apply(image_home: Path, swe) -> None:  # type: ignore[no-untyped-def]
    ImageStore(image_home).add(str(swe["user"]), name="swe-user")
    async with Sandbox(sandbox_policy(), image="swe-user") as sb:
        r = await sb.exec("id -u; id -g; echo $HOME; pwd; echo ok > /testbed/mine && cat mine")
        assert r.stdout.splitlines() == ["1000", "1000", "/testbed", "/testbed", "ok"], r.stderr


def test_resolve_user_reads_the_images_own_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nbob:x:1234:99::/home/b:/bin/sh\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    assert resolve_user(tmp_path, "") == (0, 0, "/root")
    assert resolve_user(tmp_path, "bob") == (1234, 99, "/home/b")
    assert resolve_user(tmp_path, "bob:staff") == (1234, 50, "/home/b")
    assert resolve_user(tmp_path, "1234") == (1234, 99, "/home/b")
    assert resolve_user(tmp_path, "4321:7") == (4321, 7, "/")
    with pytest.raises(ValueError, match="'alice' is not in its /etc/passwd"):
        resolve_user(tmp_path, "alice")


@pytest.mark.parametrize("image", [None, "swe"], ids=["host-root", "image-root"])
async def test_file_api_agent_vs_harness_on_either_root(image_home: Path, tmp_path: Path,
                                                        image: str | None) -> None:  # fmt: skip
    from corral.sandbox.errors import ProtectedPath

    pol = sandbox_policy()
    pol.filesystem.protected = ["tests"]
    async with Sandbox(pol, image=image) as sb:
        where = await sb.write_file("tests/t.py", "graded\n")  # the harness (the default)
        with pytest.raises(ProtectedPath):
            await sb.write_file("tests/t.py", "forged\n", agent=True)  # the agent's tool
        assert await sb.read_file(where) == b"graded\n"
        r = await sb.exec("cat tests/t.py")
        assert r.stdout == "graded\n"
        rules = [e.rule for e in sb.events if e.source == "file"]
        assert {"file.harness_write", "file.protected_write"} <= set(rules)
