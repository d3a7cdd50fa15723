"""`corral run`, `corral events` and `corral doctor` as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from corral.sandbox.probe import probe

CORRAL = [sys.executable, "-m", "corral.cli.main"]
BEST_EFFORT = "" if probe().cgroup_writable else "enforcement: best_effort, "


def corral(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def policy_file(tmp_path):
    def make(limits: str = "") -> str:
        f = tmp_path / "policy.yaml"
        f.write_text("extends: rl-strict\nlimits: {" + BEST_EFFORT + limits + "}\n")
        return str(f)

    return make


@pytest.mark.unprivileged
def test_run_streams_output_and_keeps_exit_status(tmp_path, policy_file) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    ev = tmp_path / "ev.jsonl"
    r = corral("run", "--policy", policy_file(), "--workspace", str(ws), "--events", str(ev),
               "--episode", "ep-cli", "--", "sh", "-c", "echo hello > out.txt; cat out.txt; exit 3")  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stdout == "hello\n"
    assert (ws / "out.txt").read_text() == "hello\n"
    assert "corral:" in r.stderr and "ep-cli" in r.stderr
    rules = [json.loads(x)["rule"] for x in ev.read_text().splitlines()]
    assert "sandbox.started" in rules and rules[-1] == "sandbox.stopped"
    assert "egress.gateway_started" in rules  # the gateway is attached by default
    r = corral("events", "--episode", "ep-cli", "--json")
    assert [json.loads(x)["rule"] for x in r.stdout.splitlines()] == rules


@pytest.mark.unprivileged
def test_run_timeout_exits_124(policy_file) -> None:
    r = corral("run", "--policy", policy_file(), "--timeout", "0.5", "--", "sleep", "30")
    assert r.returncode == 124
    r = corral("events", "--source", "resource", "--json")
    assert any(json.loads(x)["rule"] == "resource.command_timeout" for x in r.stdout.splitlines())


@pytest.mark.unprivileged
def test_run_policy_kill_exits_137(policy_file) -> None:
    r = corral("run", "--policy", policy_file("wall_time: 1"), "--", "sleep", "30")
    assert r.returncode == 137
    assert "resource.wall_time" in r.stderr


@pytest.mark.unprivileged
def test_bad_policy_exits_125_and_runs_nothing(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: {pids: many}\n")
    marker = tmp_path / "ran"
    r = corral("run", "--policy", str(bad), "--workspace", str(tmp_path), "--", "touch", "ran")
    assert r.returncode == 125
    assert "limits.pids" in r.stderr
    assert not marker.exists()


@pytest.mark.unprivileged
@pytest.mark.skipif(probe().cgroup_writable, reason="only where cgroups are not writable")
def test_unenforceable_strict_policy_is_refused(tmp_path) -> None:
    r = corral("run", "--policy", "rl-strict", "--workspace", str(tmp_path), "--", "touch", "ran")
    assert r.returncode == 125
    assert "cannot enforce" in r.stderr and "fix:" in r.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.unprivileged
def test_missing_bwrap_is_refused_not_run_bare(tmp_path) -> None:
    env = dict(os.environ, PATH="/nonexistent")
    r = subprocess.run([*CORRAL, "run", "--workspace", str(tmp_path), "--", "/usr/bin/touch", "ran"],
                       capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 125
    assert "bubblewrap" in r.stderr and "apt-get install" in r.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.unprivileged
def test_doctor_json() -> None:
    r = corral("doctor", "--json")
    data = json.loads(r.stdout)
    assert data["bwrap"] and data["userns"] is True and r.returncode == 0
    assert data["root"] == (os.geteuid() == 0)
    assert data["cgroup_version"] in (1, 2, None)
    assert isinstance(data["seccomp_actions"], list)
