"""File transfer to the sandbox's private `/tmp` and scratch directories (`corral.sandbox.paths`),
as root and as an ordinary user: the supervisor reaches them through `/proc/<init>/root`."""

from __future__ import annotations

import pytest

from corral.sandbox import paths
from corral.sandbox.errors import PathOutsideWorkspace
from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy

pytestmark = pytest.mark.unprivileged


async def test_private_tmp_and_scratch_round_trip(tmp_path) -> None:
    async with Sandbox(sandbox_policy(), store=False, egress=False,
                       scratch_dirs=["/tests"]) as sb:  # fmt: skip
        assert await paths.write(sb, "/tmp/a/b.sh", "echo ok\n") == "/tmp/a/b.sh"
        assert (await sb.exec("bash /tmp/a/b.sh")).stdout == "ok\n"
        await paths.write(sb, "/tests/t.txt", b"T")
        assert (await sb.exec("cat /tests/t.txt; touch /tests/new")).stdout == "T"
        assert await paths.read(sb, "/tests/t.txt") == b"T"
        assert await paths.write(sb, "/workspace/w.txt", "W") == "/workspace/w.txt"
        assert await paths.read(sb, "w.txt") == b"W"
        # the agent's /tmp is its own: nothing of it is on the host's /tmp
        await sb.exec("echo mine > /tmp/only-inside")
        assert await paths.read(sb, "/tmp/only-inside") == b"mine\n"
        assert not (tmp_path / "only-inside").exists()


async def test_symlinks_and_other_paths_are_refused() -> None:
    async with Sandbox(sandbox_policy(), store=False, egress=False) as sb:
        await sb.exec("ln -s / /tmp/root; ln -s /etc/passwd /tmp/pw; mkdir /tmp/d")
        for bad in ("/tmp/root/etc/x", "/tmp/pw", "/tmp/d/../root/etc/x", "/etc/passwd", "/app/x"):
            with pytest.raises(PathOutsideWorkspace):
                await paths.write(sb, bad, "x")
        with pytest.raises(PathOutsideWorkspace):
            await paths.read(sb, "/tmp/pw")
