"""Host mounts bwrap never binds from are detached from setid's copy of the mount table
(`corral.sandbox.mounttrim`, setid.c `--trim`): bwrap re-reads the whole table at every bind.

The rule that must hold whatever the host: no mount at, above or below a path the sandbox binds
from is ever detached (a sandbox would otherwise fail to start, or a recursive bind lose a mount
it carries), and `/` never is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.sandbox import mounttrim
from corral.sandbox.bwrap import setid_binary
from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import new_dir, sandbox_policy

ROOT = os.geteuid() == 0


def test_mountinfo_points_are_read_with_the_kernels_escapes_undone() -> None:
    text = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:27 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"
        "31 22 0:28 / /mnt/tab\\011here rw - tmpfs tmpfs rw\n"
    )
    assert mounttrim.parse_mount_points(text) == ["/", "/mnt/with space", "/mnt/tab\there"]


def test_a_mount_is_kept_at_above_or_below_a_source_and_the_rest_is_trimmed() -> None:
    points = ["/", "/sys", "/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/data", "/data/ws",
              "/etc/hosts", "/srv", "/srv/a/b", "/run/user/1000"]  # fmt: skip
    used = {"/data/ws/x", "/etc", "/srv/a"}
    out = mounttrim.trims(points, used)
    # /data and /data/ws hold the source; /etc/hosts is carried by the recursive bind of /etc;
    # /srv holds a source and /srv/a/b lies below one; /sys goes with its submounts in one detach
    assert out == ["/sys", "/run/user/1000"]


def test_sources_are_real_paths_so_a_symlink_into_a_mount_keeps_it(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    used = mounttrim.sources(["bwrap", "--ro-bind", str(tmp_path / "link"), "/x", "--", "sh"])
    assert str(target.resolve()) in used
    assert mounttrim.trims([str(target.resolve())], used) == []


_seg = st.sampled_from(["a", "b", "c", "sys", "run"])
_path = st.lists(_seg, min_size=1, max_size=4).map(lambda xs: "/" + "/".join(xs))


@given(points=st.lists(_path, max_size=12), used=st.sets(_path, max_size=5))
def test_no_trim_touches_a_used_path_and_none_lies_inside_another(
    points: list[str], used: set[str]
) -> None:
    out = mounttrim.trims(["/", *points], used)

    def under(p: str, top: str) -> bool:
        return p == top or p.startswith(top + "/")

    assert "/" not in out
    for t in out:
        assert not any(under(u, t) or under(t, u) for u in used), (t, used)
        assert not any(t != o and under(t, o) for o in out), (t, out)
    # and every point left alone is either needed or inside a trimmed one
    for p in set(points):
        if p not in out and not any(under(p, o) for o in out):
            assert any(under(u, p) or under(p, u) for u in used), (p, used, out)


@pytest.mark.skipif(not ROOT or setid_binary() is None, reason="setid trims as root")
async def test_a_sandbox_on_a_host_mount_keeps_it_and_its_bwrap_sees_the_rest_trimmed() -> None:
    """The workspace lies on /dev/shm, a mount of its own that nothing else would keep: the
    sandbox starts and reads it; the outer bwrap (host side) no longer has /sys, the host has."""
    shm = Path("/dev/shm")
    if shm.stat().st_dev == Path("/dev").stat().st_dev:
        pytest.skip("/dev/shm is no mount of its own here")
    ws = new_dir(shm / f"corral-trim-{os.getpid()}")
    try:
        (ws / "hello.txt").write_text("from a host mount\n")
        async with Sandbox(sandbox_policy(), store=False, workspace=ws) as sb:
            r = await sb.exec("cat /workspace/hello.txt")
            assert r.stdout == "from a host mount\n", r.stderr
            assert sb._proc is not None
            outer = mounttrim.parse_mount_points(
                Path(f"/proc/{sb._proc.pid}/mountinfo").read_text()
            )
        host = mounttrim.parse_mount_points(Path("/proc/self/mountinfo").read_text())
        assert "/dev/shm" in outer
        assert "/sys" in host and "/sys" not in outer
        assert len(outer) < len(host)
    finally:
        for p in sorted(ws.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        ws.rmdir()


def test_trim_arguments_name_each_mount_roots_device_and_inode(tmp_path: Path) -> None:
    """setid checks them before it detaches (a path may lead elsewhere by then)."""
    argv = ["/usr/bin/bwrap", "--ro-bind", "/usr", "/usr", "--", "/bin/true"]
    for arg in mounttrim.trim_args(argv):
        dev, ino, path = arg.removeprefix("--trim=").split(":", 2)
        st = os.lstat(path)
        assert (int(dev), int(ino)) == (st.st_dev, st.st_ino), arg


def test_a_relative_source_keeps_every_mount() -> None:
    """bwrap resolves it from its own working directory: nothing can be ruled out."""
    assert "/" in mounttrim.sources(["bwrap", "--ro-bind", "data", "/data", "--", "sh"])
    assert mounttrim.trims(["/", "/sys", "/mnt/x"], {"/"}) == []
