"""`corral serve` refuses to start where it cannot make sandboxes (rather than answering 503 to every
request), and the fix it names works here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from corral.sandbox.probe import probe
from tests.server.conftest import AUTH, TOKEN, serve


@pytest.mark.unprivileged
def test_serve_refuses_with_the_fix_and_the_fix_works(tmp_path: Path) -> None:
    if probe().cgroup_writable:
        pytest.skip("this user can write cgroups: rl-strict's limits hold here")
    env = {**os.environ, "CORRAL_HOME": str(tmp_path), "CORRAL_TOKEN": TOKEN,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "corral.cli.main", "serve", "--port", "9",
                        "--policy", "rl-strict"], env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 125, r.stderr
    assert "cannot make sandboxes on this host" in r.stderr and "Traceback" not in r.stderr
    assert "limits.enforcement: best_effort" in r.stderr  # the fix it names ...
    fixed = tmp_path / "best-effort.yaml"
    fixed.write_text("extends: rl-strict\nlimits: {enforcement: best_effort}\n")
    with serve(tmp_path, "--policy", str(fixed)) as s:  # ... works: a sandbox runs a command
        c = httpx.Client(base_url=str(s["url"]), headers=AUTH, timeout=30)
        sid = c.post("/apis/envs/sandbox/v1/start", json={}).json()["result"]["sandbox_id"]
        out = c.post("/apis/envs/sandbox/v1/execute", json={"sandbox_id": sid,
                                                            "command": "echo up"}).json()  # fmt: skip
        c.close()
        assert out["result"]["stdout"] == "up\n", out


def test_serve_with_a_damaged_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "events.db").write_bytes(b"not sqlite\n" * 100)
    env = {**os.environ, "CORRAL_HOME": str(tmp_path), "CORRAL_TOKEN": TOKEN,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "corral.cli.main", "serve", "--port", "9",
                        "--policy", "dev"], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "is damaged (file is not a database)" in r.stderr and "Traceback" not in r.stderr
