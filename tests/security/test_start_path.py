"""The fast start path holds what the slow one held (issue: Hold, cold start).

- `corral-setid` (one exec instead of `prlimit` + `setpriv`) leaves bubblewrap with the sandbox's
  id in every uid/gid slot, no groups, no capability, no_new_privs and the rlimits, and refuses
  anything less;
- a default secret is left unmounted only where the sandbox's host id could not read it anyway;
- the workspace is handed over while bubblewrap starts, yet bubblewrap can still reach every
  protected path, and nothing runs before the hand-over is done.
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
from pathlib import Path

import pytest

from corral.sandbox import bwrap
from corral.sandbox.bwrap import closed_to_sandbox, setid_binary
from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy
from tests.security.helpers import host_status, open_box

ROOT = os.geteuid() == 0
SANDBOX_UID = 1_500_000_000 + 4242  # a fresh id, as identity.allocate hands out
needs_setid = pytest.mark.skipif(
    setid_binary() is None, reason="`make install` builds corral-setid"
)


def _box(hidden: list[str] | None = None, protected: list[str] | None = None,
         **kw: object) -> Sandbox:  # fmt: skip
    pol = sandbox_policy()
    fs = pol.filesystem.model_copy(
        update={
            "hidden": [*pol.filesystem.hidden, *(hidden or [])],
            "protected": protected or pol.filesystem.protected,
        }
    )
    return Sandbox(pol.model_copy(update={"filesystem": fs}), **kw)  # type: ignore[arg-type]


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@needs_setid
@pytest.mark.skipif(not ROOT, reason="dropping to another id needs root")
def test_setid_drops_every_id_group_and_capability_and_sets_the_rlimits() -> None:
    nofile = resource.RLIMIT_NOFILE
    r = subprocess.run(
        [str(setid_binary()), str(SANDBOX_UID), str(SANDBOX_UID), f"--rlimit={nofile}:77:78",
         f"--rlimit={resource.RLIMIT_CORE}:0:0", "--", "/bin/sh", "-c",
         "cat /proc/self/status; ulimit -n; ulimit -Hn; ulimit -c"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    st = _status(r.stdout)
    assert st["Uid"].split() == [str(SANDBOX_UID)] * 4
    assert st["Gid"].split() == [str(SANDBOX_UID)] * 4
    assert st["Groups"].strip() == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap], 16) == 0, cap
    assert st["NoNewPrivs"].strip() == "1"
    assert r.stdout.split()[-3:] == ["77", "78", "0"]


@needs_setid
@pytest.mark.parametrize(
    "args",
    [
        ["0", "0", "--", "/bin/true"],  # root is never the target
        [str(SANDBOX_UID), "0", "--", "/bin/true"],
        [str(SANDBOX_UID), str(SANDBOX_UID), "--rlimit=7:x:1", "--", "/bin/true"],
        [str(SANDBOX_UID), str(SANDBOX_UID), "--rlimit=7:5", "--", "/bin/true"],
        [str(SANDBOX_UID), str(SANDBOX_UID), "/bin/true"],  # no --
        ["-5", str(SANDBOX_UID), "--", "/bin/true"],  # strtoull would wrap it
        ["4294967295", "4294967295", "--", "/bin/true"],  # (uid_t)-1: "unchanged", i.e. root
        [" 7", str(SANDBOX_UID), "--", "/bin/true"],
        [str(SANDBOX_UID), str(SANDBOX_UID), "--trim=1:2:/", "--", "/bin/true"],  # the root
        [str(SANDBOX_UID), str(SANDBOX_UID), "--trim=1:2:sys", "--", "/bin/true"],  # relative
        [str(SANDBOX_UID), str(SANDBOX_UID), "--trim=/sys", "--", "/bin/true"],  # no root ids
        [str(SANDBOX_UID), str(SANDBOX_UID), "--cgroup-fd=0", "--", "/bin/true"],  # no --pid-fd
    ],
)
def test_setid_refuses_bad_arguments_and_runs_nothing(args: list[str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    tmp_path.chmod(0o777)
    run = ["/bin/sh", "-c", f"touch {marker}"]
    r = subprocess.run([str(setid_binary()), *args[:-1], *run], capture_output=True, text=True,
                       timeout=10)  # fmt: skip
    assert r.returncode == 126, (args, r.returncode, r.stderr)
    assert r.stderr.startswith("corral-setid: ") or r.stderr.startswith("usage:")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.skipif(not ROOT, reason="a root supervisor's fallback path")
async def test_sandbox_without_setid_falls_back_to_prlimit_and_setpriv(monkeypatch) -> None:
    monkeypatch.setenv("CORRAL_SETID", "off")
    bwrap.setid_binary.cache_clear()
    try:
        async with open_box() as sb:
            r = await sb.exec("ulimit -c; cat /proc/self/status | grep -E '^(NoNewPrivs|CapEff)'")
            assert r.exit_code == 0
            assert r.stdout.split()[0] == "0"
            assert "NoNewPrivs:\t1" in r.stdout
            uid = int(host_status(sb.shell_pid() or 0)["Uid"].split()[0])
            assert sb.identity is not None and uid == sb.identity.uid
    finally:
        monkeypatch.delenv("CORRAL_SETID")
        bwrap.setid_binary.cache_clear()


def _file(tmp_path: Path, name: str, mode: int) -> str:
    p = tmp_path / name
    p.write_text("secret\n")
    p.chmod(mode)
    return str(p)


def test_closed_to_sandbox_for_a_fresh_host_id_reads_only_the_other_bits(tmp_path: Path) -> None:
    assert closed_to_sandbox(_file(tmp_path, "a", 0o640), SANDBOX_UID)
    assert closed_to_sandbox(_file(tmp_path, "b", 0o600), SANDBOX_UID)
    assert not closed_to_sandbox(_file(tmp_path, "c", 0o644), SANDBOX_UID)
    assert not closed_to_sandbox(_file(tmp_path, "d", 0o602), SANDBOX_UID)  # writable by others
    d = tmp_path / "dir"
    d.mkdir(mode=0o750)
    d.chmod(0o750)
    assert closed_to_sandbox(str(d), SANDBOX_UID)
    d.chmod(0o751)  # enterable: whatever is inside can be opened by name
    assert not closed_to_sandbox(str(d), SANDBOX_UID)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")
    assert not closed_to_sandbox(str(link), SANDBOX_UID)  # never judged through a link
    assert not closed_to_sandbox(str(tmp_path / "missing"), SANDBOX_UID)


@pytest.mark.skipif(not ROOT, reason="chown to the sandbox's id needs root")
def test_closed_to_sandbox_is_false_for_a_file_of_the_sandbox_id(tmp_path: Path) -> None:
    p = _file(tmp_path, "own", 0o600)
    os.chown(p, SANDBOX_UID, 0)
    assert not closed_to_sandbox(p, SANDBOX_UID)
    os.chown(p, 0, SANDBOX_UID)
    os.chmod(p, 0o640)
    assert not closed_to_sandbox(p, SANDBOX_UID)


def test_closed_to_sandbox_as_the_supervisor_itself(tmp_path: Path) -> None:
    p = _file(tmp_path, "mine", 0o600)
    if ROOT:
        assert not closed_to_sandbox(p, None)  # root without an id of its own: always covered
    else:
        assert not closed_to_sandbox(p, None)  # its own file: readable by the agent too
        os.chmod(p, 0)
        assert closed_to_sandbox(p, None)
        os.chmod(p, 0o600)


@pytest.mark.unprivileged
async def test_a_policy_hidden_path_is_covered_even_when_unreadable(tmp_path: Path) -> None:
    """What a policy names itself is always mounted over: only the default list is judged by
    permissions."""
    secret = Path("/etc/corral-test-hidden") if ROOT else None
    if secret is None:
        pytest.skip("needs a file under a bound system directory (root makes one in /etc)")
    secret.write_text("topsecret\n")
    secret.chmod(0o600)
    try:
        async with _box(hidden=[str(secret)]) as sb:
            r = await sb.exec(f"stat -c %s {secret}; cat {secret}")
            assert r.stdout.split()[0] == "0", r.stdout  # /dev/null over it, not the file
            assert "topsecret" not in r.stdout
    finally:
        secret.unlink()


@pytest.mark.skipif(not ROOT, reason="the hand-over happens under a root supervisor")
async def test_protected_paths_under_a_closed_directory_bind_while_the_hand_over_runs(
    tmp_path: Path,
) -> None:
    """bwrap binds protected paths as the sandbox's id while the rest of the workspace is still
    being handed over on a thread: their parent directories are handed over first."""
    ws = tmp_path / "ws"
    (ws / "pkg" / "tests").mkdir(parents=True)
    (ws / "pkg" / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    for i in range(300):  # enough for the walk to still be running when bwrap binds
        (ws / f"f{i}").write_text("x")
    os.chmod(ws, 0o700)
    os.chmod(ws / "pkg", 0o700)
    before = {p: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) for p in (ws, ws / "pkg")}
    async with _box(protected=["pkg/tests"], workspace=ws) as sb:
        r = await sb.exec("ls pkg/tests && echo hi > f0 && cat f0 && touch pkg/tests/new; echo $?")
        assert "test_x.py" in r.stdout and "hi" in r.stdout
        assert r.stdout.split()[-1] != "0"  # the protected path stays read-only
        r = await sb.exec("stat -c %u f299 pkg")  # handed over before the first command ran
        assert r.stdout.split() == ["0", "0"], r.stdout
    after = {p: (p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) for p in (ws, ws / "pkg")}
    assert after == before


def _tree(tmp_path: Path, name: str, mode: int) -> str:
    """A directory holding a subdirectory with one file of `mode` and a symlink (never judged)."""
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    f = root / "sub" / "knob"
    f.write_text("0\n")
    f.chmod(mode)
    (root / "link").symlink_to("/tmp")
    return str(root)


def test_a_proc_tree_is_covered_only_where_the_sandbox_could_write_in_it(tmp_path: Path) -> None:
    """/proc/irq, /proc/bus, /proc/fs get a read-only bind only when some entry is open to the
    sandbox's host credentials for writing (each bind is ~0.15 ms of a cold start)."""
    ro = _tree(tmp_path, "ro", 0o644)
    ow = _tree(tmp_path, "ow", 0o646)
    os.chmod(tmp_path / "ro", 0o755)
    os.chmod(tmp_path / "ro" / "sub", 0o755)
    os.chmod(tmp_path / "ow", 0o755)
    os.chmod(tmp_path / "ow" / "sub", 0o755)
    assert bwrap._open_to_write(ow, SANDBOX_UID)  # writable by others
    assert not bwrap._open_to_write(str(tmp_path / "missing"), SANDBOX_UID)
    if ROOT:
        assert not bwrap._open_to_write(ro, SANDBOX_UID)  # root's, 0644: not the fresh id's
        assert bwrap._open_to_write(ro, None)  # root without an id of its own: always covered
    else:
        assert bwrap._open_to_write(ro, None)  # our own file: the agent has our credentials
        assert bwrap._open_to_write(ro, SANDBOX_UID) is False


@pytest.mark.skipif(not ROOT, reason="chown to the sandbox's id needs root")
def test_a_proc_tree_with_an_entry_of_the_sandbox_id_is_covered(tmp_path: Path) -> None:
    own = _tree(tmp_path, "own", 0o600)
    os.chown(Path(own) / "sub" / "knob", SANDBOX_UID, 0)
    assert bwrap._open_to_write(own, SANDBOX_UID)
    grp = _tree(tmp_path, "grp", 0o620)
    os.chown(Path(grp) / "sub" / "knob", 0, SANDBOX_UID)
    assert bwrap._open_to_write(grp, SANDBOX_UID)


@pytest.mark.parametrize("tree", ["/proc/irq", "/proc/bus", "/proc/fs"])
def test_the_hosts_proc_trees_are_judged_by_what_the_sandbox_may_write(tree: str) -> None:
    """On this host: bound exactly when open to the sandbox (the kernel makes them root's)."""
    if not os.path.isdir(tree):
        pytest.skip(f"{tree} is not on this host")
    uid = SANDBOX_UID if ROOT else None
    argv = bwrap.kernel_surface_args(None, uid)
    bound = any(argv[i : i + 3] == ["--ro-bind", tree, tree] for i in range(len(argv)))
    assert bound == bwrap._open_to_write(tree, uid)


def _mount_points(text: str) -> list[str]:
    return [line.split()[4] for line in text.splitlines()]


@needs_setid
@pytest.mark.skipif(not ROOT, reason="a mount namespace of its own needs root")
def test_setid_trims_its_own_copy_of_the_mount_table_and_never_the_hosts() -> None:
    """`--trim` detaches a mount in setid's private copy (a slave of the host's) before the ids
    drop: the program sees the mount gone, the host still has it, and no mount event reached it."""
    host_before = Path("/proc/self/mountinfo").read_text()
    points = _mount_points(host_before)
    sub = sorted({p for p in points if p.startswith("/sys/") or p == "/sys"}, key=len)
    if not sub:
        pytest.skip("no mount under /sys on this host to trim")
    st = os.lstat(sub[0])
    r = subprocess.run(
        [str(setid_binary()), str(SANDBOX_UID), str(SANDBOX_UID),
         f"--trim={st.st_dev}:{st.st_ino}:{sub[0]}", "--trim=1:2:/no/such/mount", "--",
         "/bin/cat", "/proc/self/mountinfo"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    inside = _mount_points(r.stdout)
    assert not [p for p in inside if p == sub[0] or p.startswith(sub[0] + "/")], inside
    assert set(inside) < set(points)  # the rest is there, nothing new
    assert Path("/proc/self/mountinfo").read_text() == host_before


TRIM_SWAP = r"""
set -e
mount -t tmpfs corral-t-under "$T"
mkdir "$T/top"; mount -t tmpfs corral-t-ws "$T/top"
mkdir -p "$T/top/user/a/top"
mount -t tmpfs corral-t-users "$T/top/user/a/top"
listed=$(stat -c %d:%i "$T/top/user/a/top")   # the supervisor read its table here
mv "$T/top/user/a" "$T/top/user/b"; ln -s "$T" "$T/top/user/a"   # then the user swapped a dir
now=$(stat -c %d:%i "$T/top/user/a/top")       # (through the link: the workspace mount's root)
s() { "$SETID" 65534 65534 "--trim=$1" -- /bin/sh -c "$2"; }
s "$listed:$T/top/user/a/top" 'echo "stale: $(grep -c corral-t-ws /proc/self/mountinfo)"'
s "$now:$T/top/user/a/top" 'echo "through the link: $(grep -c corral-t-ws /proc/self/mountinfo)"'
s "$now:$T/top/user/b/top" 'echo "other root ids: $(grep -c corral-t-users /proc/self/mountinfo)"'
s "$listed:$T/top/user/b/top" 'echo "its own: $(grep -c corral-t-users /proc/self/mountinfo)"'
"""


@needs_setid
@pytest.mark.skipif(not ROOT, reason="mounts in a private namespace of the test's own need root")
def test_setid_trims_no_mount_reached_through_a_symlink_or_by_other_root_ids(
    tmp_path: Path,
) -> None:
    """A red-team finding: a user's own mount (FUSE) on the trim list, then its parent directory
    swapped for a symlink, made setid detach whatever mount the link led to (the workspace's, or
    /proc: every start failing). setid now detaches only a mount root with the listed device and
    inode, reached with no symlink followed, through the fd that found it. Run in a private mount
    namespace of this test's own (nothing reaches the host's table)."""
    host_before = Path("/proc/self/mountinfo").read_text()
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", TRIM_SWAP],
        env={**os.environ, "T": str(tmp_path), "SETID": str(setid_binary())},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "stale: 1",  # the listed path now leads through a link: the workspace's mount stays
        "through the link: 1",  # with the ids the link leads to: it stays all the same
        "other root ids: 1",  # the user's mount, at its own path, named with other ids: kept
        "its own: 0",  # the user's own mount, no link, its own ids: detached
    ], r.stdout
    assert Path("/proc/self/mountinfo").read_text() == host_before


UNIFIED = Path("/sys/fs/cgroup/unified")


@needs_setid
@pytest.mark.skipif(not ROOT, reason="a cgroup of the test's own needs root")
def test_setid_starts_the_program_born_in_a_v2_cgroup_as_the_callers_own_child() -> None:
    """cgroup v2: `--cgroup-fd --pid-fd` makes the program a child of setid's caller born in the
    cgroup (clone3 CLONE_INTO_CGROUP | CLONE_PARENT): nothing is moved in later, so no wait for
    the RCU grace period after an idle spell. Here on the v2 hierarchy a v1 host mounts beside
    its controllers (a hybrid host; a v2-only one has it at /sys/fs/cgroup)."""
    from corral.sandbox.reap import adopt_child

    root = UNIFIED if (UNIFIED / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists():
        pytest.skip("no cgroup v2 hierarchy mounted")
    cg = root / f"corral-test-born-{os.getpid()}"
    cg.mkdir()
    try:
        cg_fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        pid_r, pid_w = os.pipe()
        setid = subprocess.Popen(
            [str(setid_binary()), str(SANDBOX_UID), str(SANDBOX_UID), f"--cgroup-fd={cg_fd}",
             f"--pid-fd={pid_w}", "--", "/bin/sh", "-c", "read x"],
            pass_fds=(cg_fd, pid_w), stdin=subprocess.PIPE,
        )  # fmt: skip
        os.close(cg_fd)
        os.close(pid_w)
        pid = int(os.read(pid_r, 64))
        os.close(pid_r)
        assert setid.wait(5) == 0
        assert pid != setid.pid
        child = adopt_child(pid, ["sh"])
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            assert int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid()  # our own child
            assert str(pid) in (cg / "cgroup.procs").read_text().split()  # born inside
            assert _status(Path(f"/proc/{pid}/status").read_text())["Uid"].split()[0] == str(
                SANDBOX_UID)  # fmt: skip
            assert child.poll() is None
        finally:
            assert setid.stdin is not None
            setid.stdin.close()  # (the child's stdin: it reads EOF and ends)
            assert child.wait(5) == 1
    finally:
        cg.rmdir()


def test_an_adopted_child_polls_waits_and_is_killed_like_any_popen() -> None:
    from corral.sandbox.reap import adopt_child

    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], os.environ)
    child = adopt_child(pid, ["sleep", "30"])
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.05)
    child.kill()
    assert child.wait(5) == -9
    assert child.poll() == -9 and child.returncode == -9
    child.kill()  # gone: a no-op, as for a Popen
