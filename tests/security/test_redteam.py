"""Attacks a red-team pass found working, each now a test of its class."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from corral.rl.env import SandboxEnv
from corral.sandbox.errors import PathOutsideWorkspace
from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import new_dir, sandbox_policy
from tests.security.helpers import open_box, py

DEEP = r"""
import os, shutil
for i in range(1100):
    os.mkdir('d'); os.chdir('d')
shutil.copy('/bin/true', 'sid'); os.chmod('sid', 0o6755)
print('made', oct(os.stat('sid').st_mode))
"""

LONG = r"""
import os
for i in range(17):
    os.mkdir('x' * 250); os.chdir('x' * 250)
with open('big', 'wb') as f:
    f.write(b'\1' * 3_000_000)
for i in range(400):
    open(f'f{i}', 'w').close()
os.link('big', 'sid') if False else None
import shutil; shutil.copy('/bin/true', 'sid'); os.chmod('sid', 0o4755)
print('made')
"""


def _find(root, name: str):  # type: ignore[no-untyped-def]
    """Iteratively (no recursion, no paths past PATH_MAX) find entries called `name`."""
    found = []

    def visit(fd: int, n: str, st: os.stat_result) -> None:
        if n == name:
            found.append(st)

    from corral.sandbox.treewalk import walk

    walk(str(root), visit)
    return found


@pytest.mark.unprivileged
async def test_a_very_deep_tree_cannot_stop_the_hand_back(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    async with open_box(workspace=ws) as sb:
        r = await sb.exec(py(DEEP))
        assert "made 0o106755" in r.stdout, r.stderr
    [sid] = _find(ws, "sid")
    assert not sid.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert sid.st_uid == os.stat(ws).st_uid
    assert sb.identity is None  # the id was given back
    # a fresh workspace with the same tree is removed entirely
    async with open_box() as sb2:
        await sb2.exec(py(DEEP))
        own = sb2.workspace
    assert own is not None and not own.exists()
    from corral.sandbox import discard  # (removed behind close(): wait for it, then look)

    assert discard.wait(60)
    assert not own.with_name(own.name + discard.SUFFIX).exists()


@pytest.mark.unprivileged
async def test_links_left_in_the_workspace_lead_its_removal_nowhere(tmp_path) -> None:
    """The own workspace is removed behind close() by a worker thread: links the agent left
    there (to a host file, a host directory, and a directory replaced by a link mid-tree) must
    be removed as links, never followed into the host."""
    from corral.sandbox import discard

    host = new_dir(tmp_path / "host")
    (host / "canary").write_text("keep")
    (host / "sub").mkdir()
    (host / "sub" / "inner").write_text("keep")
    os.chmod(host, 0o755)
    async with open_box() as sb:
        r = await sb.exec(f"ln -s {host}/canary f && ln -s {host} d && mkdir -p a/b && "
                          f"rmdir a/b && ln -s {host}/sub a/b && ls -la a | wc -l")  # fmt: skip
        assert r.exit_code == 0, r.stderr
        own = sb.workspace
    assert own is not None and discard.wait(60)
    assert not own.exists() and not own.with_name(own.name + discard.SUFFIX).exists()
    assert (host / "canary").read_text() == "keep"
    assert (host / "sub" / "inner").read_text() == "keep"


@pytest.mark.unprivileged
async def test_paths_past_path_max_are_measured_and_handed_back(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    pol.limits.inodes = 300
    async with Sandbox(pol, workspace=ws) as sb:
        r = await sb.exec(py(LONG))
        assert "made" in r.stdout, r.stderr
        rules = {e.rule for e in sb.events}
        assert {"resource.disk_limit", "resource.inode_limit"} <= rules, rules
    [sid] = _find(ws, "sid")
    assert not sid.st_mode & stat.S_ISUID


@pytest.mark.unprivileged
@pytest.mark.parametrize("many_fds", [False, True], ids=["few-fds", "past-the-inline-look"])
async def test_an_unlinked_open_file_counts_against_the_disk_allowance(tmp_path,
                                                                       many_fds: bool) -> None:  # fmt: skip
    """Also with more descriptors open than the event loop looks through itself
    (`Sandbox.INLINE_DISK_FDS`): the look then happens on a thread, with the same verdict."""
    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    hold = ('for i in $(seq 20 400); do eval "exec $i</dev/null"; done; ' if many_fds
            else "")  # fmt: skip
    async with Sandbox(pol, workspace=new_dir(tmp_path / "ws")) as sb:
        await sb.exec(hold + "exec 7>/workspace/hidden; rm hidden; "
                      "head -c 4000000 /dev/zero >&7; true")  # fmt: skip
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert hits and hits[0].evidence["where"] == "workspace_disk"


MAPPED = r"""
import ctypes, mmap, os, time
libc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
fd = os.open("/workspace/x", os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"\1" * 4_000_000)
assert libc.mmap(None, 4_000_000, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) not in (None, 2**64 - 1)
os.close(fd); os.unlink("/workspace/x")
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.unprivileged
async def test_a_deleted_file_kept_by_a_mapping_alone_counts_against_the_disk_allowance(
    tmp_path,
) -> None:
    """Red team: mapped MAP_SHARED, its fd closed, then unlinked: in no walk and in no fd table,
    yet on the disk. /proc/PID/maps names it."""
    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    ws = new_dir(tmp_path / "ws")
    (ws / "m.py").write_text(MAPPED)
    os.chmod(ws / "m.py", 0o644)
    async with Sandbox(pol, workspace=ws) as sb:
        r = await sb.exec("(python3 m.py > out 2>&1 &); for i in $(seq 50); do "
                          "grep -q held out 2>/dev/null && break; sleep 0.1; done; cat out")  # fmt: skip
        assert "held" in r.stdout, r.stdout + r.stderr
        await sb.exec("true")  # the job holds it now, after its command
        hits = [e for e in sb.events if e.rule == "resource.disk_limit"]
        assert hits and hits[0].evidence["where"] == "workspace_disk", [e.rule for e in sb.events]


@pytest.mark.unprivileged
async def test_dev_is_read_only_and_dev_shm_is_capped() -> None:
    pol = sandbox_policy()
    pol.limits.disk = 2 * 1024 * 1024
    async with Sandbox(pol) as sb:
        r = await sb.exec("echo x > /dev/y; echo rc=$?")
        assert "rc=1" in r.stdout
        r = await sb.exec("head -c 4000000 /dev/zero > /dev/shm/x; echo rc=$?; du -k /dev/shm/x")
        assert "rc=1" in r.stdout and int(r.stdout.split()[-2]) <= 2048


@pytest.mark.unprivileged
async def test_nothing_a_graded_run_starts_lives_on_to_the_next_grade(tmp_path) -> None:
    async with open_box(workspace=new_dir(tmp_path / "ws")) as sb:
        await sb.harness_exec("(sleep 60 & echo $! > /tmp/daemon) ; sleep 0.1")
        r = await sb.harness_exec("ps -e -o comm= | grep -c sleep; true")
        assert r.stdout.strip() == "0"


@pytest.mark.unprivileged
async def test_a_planted_pyc_is_not_loaded_by_the_harness(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    (ws / "mod.py").write_text("print('real')\n")
    forge = r"""
import importlib.util, marshal, os, struct
st = os.stat('mod.py')
code = compile("print('forged')", 'mod.py', 'exec')
os.makedirs('__pycache__', exist_ok=True)
tag = importlib.util.cache_from_source('mod.py')
with open(tag, 'wb') as f:
    f.write(importlib.util.MAGIC_NUMBER + struct.pack('<III', 0, int(st.st_mtime), st.st_size) + marshal.dumps(code))
print(tag)
"""
    async with open_box(workspace=ws) as sb:
        r = await sb.exec(py(forge) + "; python3 -c 'import mod'")
        assert "forged" in r.stdout  # the forgery works in the agent's own python
        r = await sb.harness_exec("python3 -c 'import mod'")
        assert r.stdout == "real\n", r.stdout


@pytest.mark.unprivileged
async def test_a_nested_protected_path_cannot_be_renamed_away(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    (ws / "pkg" / "tests").mkdir(parents=True)
    (ws / "pkg" / "tests" / "test_t.py").write_text("assert False\n")
    pol = sandbox_policy()
    pol.filesystem.protected = ["pkg/tests"]
    async with Sandbox(pol, workspace=ws) as sb:
        r = await sb.exec("mv pkg pkg_old && mkdir -p pkg/tests && echo MOVED; true")
        assert "MOVED" not in r.stdout
        await sb.write_file("pkg/tests/test_t.py", "assert False  # harness\n")
        await sb.exec("echo pass > pkg/tests/test_t.py; true")
    assert (ws / "pkg" / "tests" / "test_t.py").read_text() == "assert False  # harness\n"


@pytest.mark.unprivileged
def test_nothing_of_the_agent_runs_while_the_episode_is_graded() -> None:
    task = {"check": "a=$(cat counter); sleep 0.5; b=$(cat counter); test \"$a\" = \"$b\"",
            "max_steps": 4}  # fmt: skip
    with SandboxEnv(task, policy=sandbox_policy()) as env:
        env.reset()
        env.step("(i=0; while true; do i=$((i+1)); echo $i > counter; sleep 0.01; done) &")
        _, reward, terminated, _, info = env.step("submit")
        assert terminated and info["solved"] is True, info


@pytest.mark.unprivileged
async def test_a_fifo_or_huge_sparse_file_cannot_hang_the_file_api(tmp_path) -> None:
    async with open_box(workspace=new_dir(tmp_path / "ws")) as sb:
        await sb.exec("mkfifo answer.txt input.txt; truncate -s 900M sparse.txt")
        for call in (sb.read_file("answer.txt"), sb.write_file("input.txt", "x"),
                     sb.read_file("sparse.txt")):  # fmt: skip
            with pytest.raises(PathOutsideWorkspace):
                await asyncio.wait_for(call, 10)
        assert len(await sb.read_file("sparse.txt", max_bytes=10)) == 10


@pytest.mark.unprivileged
async def test_copying_the_shells_fds_is_refused() -> None:
    prog = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, os.getppid(), 0)  # pidfd_open
rc = libc.syscall(438, pidfd, 1, 0)          # pidfd_getfd
print('RC', rc, errno.errorcode.get(ctypes.get_errno()))
"""
    async with open_box() as sb:
        r = await sb.exec(py(prog))
        assert "RC -1 EPERM" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership changes back only under a root supervisor")
async def test_files_the_agent_made_come_back_without_group_or_world_write(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    (ws / "old.txt").write_text("x")
    os.chmod(ws / "old.txt", 0o640)
    async with open_box(workspace=ws) as sb:
        await sb.exec("chmod 777 old.txt; mkdir -m 2777 drop; echo y > new.sh; chmod 777 new.sh")
    assert stat.S_IMODE(os.stat(ws / "old.txt").st_mode) == 0o640
    for p in ("drop", "new.sh"):
        mode = stat.S_IMODE(os.stat(ws / p).st_mode)
        assert not mode & 0o022 and not mode & stat.S_ISGID, (p, oct(mode))
