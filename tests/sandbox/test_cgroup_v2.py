"""cgroup v2 limits. This host's controllers are bound to v1, so the v2 controller files cannot be had
here: these tests write into a directory laid out like a v2 cgroupfs (a fake at the kernel boundary)
and check what corral writes and how it reads the kernel's counters back."""

from __future__ import annotations

from pathlib import Path

from corral.policy.model import LimitsPolicy
from corral.sandbox.limits import Cgroup, LimitReport
from corral.sandbox.probe import Capabilities


def _caps(base: Path) -> Capabilities:
    return Capabilities(root=True, bwrap="/usr/bin/bwrap", bwrap_version="0.8.0", userns=True,
                        userns_error=None, cgroup_version=2, cgroup_controllers=["memory", "pids", "cpu"],
                        cgroup_writable=True, cgroup_base=str(base))  # fmt: skip


def test_v2_limits_written_and_reported(tmp_path: Path) -> None:
    base = tmp_path / "corral"
    base.mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    cg = Cgroup("123-sb-x", _caps(base))
    cg.create()
    report = LimitReport()
    cg.apply(LimitsPolicy(memory="256MiB", pids=64, cpus=0.5), report)
    d = base / "123-sb-x"
    assert (d / "memory.max").read_text() == str(256 * 1024**2)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "64"
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert report.mechanisms == {"memory": "cgroup-v2", "pids": "cgroup-v2", "cpus": "cgroup-v2"}
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 2\n")
    (d / "pids.events").write_text("max 7\n")
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.peak").write_text("4096\n")
    c = cg.counters()
    assert (c.oom_kills, c.pids_max_hits, c.cpu_usage_ns, c.memory_peak) == (2, 7, 1_500_000, 4096)
    c = cg.counters(hits_only=True)
    assert (c.oom_kills, c.pids_max_hits, c.cpu_usage_ns, c.memory_peak) == (2, 7, None, None)


def test_v2_unwritable_limit_is_reported_missing(tmp_path: Path) -> None:
    base = tmp_path / "corral"
    base.mkdir()
    cg = Cgroup("1-sb", _caps(base))
    cg.create()
    (base / "1-sb" / "pids.max").mkdir()  # writing it fails, as a missing controller does
    report = LimitReport(values={"pids": 64, "memory": None, "cpus": None},
                         mechanisms={"pids": None, "memory": None, "cpus": None})  # fmt: skip
    cg.apply(LimitsPolicy(memory=None, pids=64, cpus=None), report)
    assert report.missing() == ["pids"]


def test_favordynmods_is_read_from_the_cgroup2_mount_options() -> None:
    """Without it, a start after an idle spell waits for an RCU grace period as its processes
    join their cgroup (measured on a cgroup v2 host: 30.6 ms against 9.6 ms with it): doctor says
    so and names the remount. Mount texts as /proc/self/mounts gives them (the real one here is
    v1: the text is the kernel's boundary)."""
    from corral.sandbox.probe import cgroup2_favors_dynmods

    plain = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
    fast = ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,"
            "favordynmods,memory_recursiveprot 0 0\n")  # fmt: skip
    elsewhere = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,favordynmods 0 0\n"
    assert cgroup2_favors_dynmods(plain) is False
    assert cgroup2_favors_dynmods(fast) is True
    assert cgroup2_favors_dynmods(elsewhere) is None  # v1 with a unified side mount: not ours
    assert cgroup2_favors_dynmods("proc /proc proc rw 0 0\n") is None
    assert cgroup2_favors_dynmods(plain + fast) is True  # the last mount on the path is the one
