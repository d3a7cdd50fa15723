"""The agent never holds host uid 0 or a host capability (issue: Hold, agent identity)."""

from __future__ import annotations

import os
import stat

import pytest

from tests.sandbox.helpers import new_dir
from tests.security.helpers import host_status, open_box


@pytest.mark.unprivileged
async def test_sandbox_processes_hold_no_host_root_and_no_capability() -> None:
    async with open_box() as sb:
        r = await sb.exec("sleep 30 & echo started")
        assert r.exit_code == 0
        pids = sb.host_pids()
        assert len(pids) >= 3
        for pid in pids:
            st = host_status(pid)
            if pid == (sb._proc.pid if sb._proc else None):
                continue  # bwrap's outer process, outside the namespaces
            uids = {int(x) for x in st["Uid"].split()}
            assert 0 not in uids, (pid, st["Name"], st["Uid"])
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, st["Name"]
            if os.geteuid() != 0:
                assert uids == {os.geteuid()}


@pytest.mark.skipif(os.geteuid() != 0, reason="one id per sandbox needs a root supervisor")
async def test_each_sandbox_has_its_own_unprivileged_host_id() -> None:
    async with open_box() as a, open_box() as b:
        ua = int(host_status(a.shell_pid() or 0)["Uid"].split()[0])
        ub = int(host_status(b.shell_pid() or 0)["Uid"].split()[0])
        assert ua != ub and ua >= 65536 and ub >= 65536
        assert a.identity is not None and ua == a.identity.uid


@pytest.mark.unprivileged
async def test_setuid_file_left_in_workspace_is_not_usable_on_the_host(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    async with open_box(workspace=ws) as sb:
        r = await sb.exec("cp /bin/sh ./suid-sh && chmod 6755 ./suid-sh; ls -l suid-sh")
        assert r.exit_code == 0, r.stderr
        mounts = (await sb.exec("cat /proc/self/mountinfo")).stdout
    # every writable mount inside carried nosuid and nodev
    for line in mounts.splitlines():
        opts = line.split()[5].split(",")
        if "rw" in opts and line.split()[4] not in ("/proc", "/dev"):
            assert "nosuid" in opts, line
    st = os.stat(ws / "suid-sh")
    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), oct(st.st_mode)
    assert st.st_uid == os.stat(ws).st_uid  # handed back to the workspace's owner
    assert all(os.stat(ws / p).st_uid == os.stat(ws).st_uid for p in os.listdir(ws))


@pytest.mark.skipif(os.geteuid() != 0, reason="root supervisor only")
async def test_workspace_files_are_given_back_and_reachable_from_root_only_dirs(tmp_path) -> None:
    # a workspace under a directory no other id may search (like /root/project)
    hidden = new_dir(tmp_path / "private")
    os.chmod(hidden, 0o700)
    ws = new_dir(hidden / "ws")
    (ws / "old.txt").write_text("x")
    async with open_box(workspace=ws) as sb:
        r = await sb.exec("echo new > new.txt && echo more >> old.txt && cat old.txt")
        assert r.exit_code == 0 and r.stdout == "xmore\n", r.stderr
    assert (ws / "new.txt").stat().st_uid == 0 and (ws / "old.txt").stat().st_uid == 0
