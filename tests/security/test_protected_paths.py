"""Protected paths hold against every route the agent has, and for files written after start."""

from __future__ import annotations

import os

import pytest

from tests.sandbox.helpers import new_dir
from tests.security.helpers import open_box

ATTACKS = [
    "echo x > tests/late.py",
    "rm -f tests/late.py",
    "mv tests/late.py tests/moved.py",
    "mv tests gone",
    "ln tests/late.py hard && echo x >> hard",
    "ln -sf /workspace/tests/late.py sym && echo x >> sym",
    "cp /etc/hostname tests/late.py",
    "python3 -c \"open('tests/late.py','w').write('x')\"",
    "truncate -s0 tests/late.py",
    "chmod 777 tests/late.py",
    "touch tests/newfile",
    "echo x > conftest.py",
]


@pytest.mark.unprivileged
@pytest.mark.parametrize("attack", ATTACKS)
async def test_late_harness_file_in_protected_path_holds(tmp_path, attack: str) -> None:
    ws = new_dir(tmp_path / "ws")  # no tests/ at start: corral makes it so it is protected
    pol_protected = ["tests", "conftest.py"]
    from tests.sandbox.helpers import sandbox_policy

    pol = sandbox_policy()
    pol.filesystem.protected = pol_protected
    from corral.sandbox.sandbox import Sandbox

    async with Sandbox(pol, workspace=ws) as sb:
        await sb.write_file("tests/late.py", "def test(): assert False\n")  # the harness, later
        await sb.exec(attack + " 2>/dev/null; true")
        assert (ws / "tests" / "late.py").read_text() == "def test(): assert False\n"
        assert not (ws / "tests" / "newfile").exists()
        assert not (ws / "tests" / "moved.py").exists()
        assert (ws / "conftest.py").read_text() == ""
    assert not (ws / "conftest.py").exists()  # the empty placeholder is removed at close


@pytest.mark.unprivileged
async def test_agent_symlink_cannot_break_the_next_shell_start(tmp_path) -> None:
    ws = new_dir(tmp_path / "ws")
    async with open_box(workspace=ws) as sb:
        await sb.exec("ln -s /etc/passwd .bashrc; ln -s /proc/self/fd/0 grader2; exit")
        r = await sb.exec("echo back")  # the session restarts
        assert r.stdout == "back\n"
        r = await sb.harness_exec("echo grader ok")
        assert r.stdout == "grader ok\n"
    assert os.path.islink(ws / ".bashrc")


@pytest.mark.unprivileged
async def test_agent_file_api_write_to_protected_path_is_refused_and_recorded(tmp_path) -> None:
    from corral.sandbox.errors import ProtectedPath

    ws = new_dir(tmp_path / "ws")
    async with open_box(workspace=ws) as sb:
        await sb.write_file("tests/test_x.py", "assert False\n")  # the harness may
        with pytest.raises(ProtectedPath):
            await sb.write_file("tests/test_x.py", "pass\n", agent=True)
        with pytest.raises(ProtectedPath):
            await sb.write_file("/workspace/./tests//new.py", "pass\n", agent=True)
        await sb.write_file("src/ok.py", "x = 1\n", agent=True)
        r = await sb.exec("echo y >> src/ok.py && cat src/ok.py")  # harness files stay editable
        assert r.stdout == "x = 1\ny\n", r.stderr
        assert (ws / "tests" / "test_x.py").read_text() == "assert False\n"
        hits = [e for e in sb.events if e.rule == "file.protected_write"]
        assert hits and hits[0].category == "reward_tampering"


@pytest.mark.unprivileged
async def test_a_protected_file_written_late_by_the_harness_is_seen_and_held(tmp_path) -> None:
    from corral.sandbox.sandbox import Sandbox
    from tests.sandbox.helpers import sandbox_policy

    pol = sandbox_policy()
    pol.filesystem.protected = ["conftest.py"]
    async with Sandbox(pol, workspace=new_dir(tmp_path / "ws")) as sb:
        await sb.write_file("conftest.py", "HARNESS = 1\n")
        r = await sb.exec("cat conftest.py; echo 'HARNESS = 0' > conftest.py; echo rc=$?")
        assert r.stdout.startswith("HARNESS = 1\n") and "rc=1" in r.stdout
