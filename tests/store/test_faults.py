"""Faults of the record: a supervisor killed mid-step, a full disk, a damaged or locked store.

Real parts: a real supervisor process SIGKILLed while its sandbox runs a command; a real full disk
(a small tmpfs in a private mount namespace, root only); real SQLite files damaged on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corral.events.model import Event
from corral.sandbox.limits import Cgroup
from corral.sandbox.probe import probe
from corral.store.sqlite import EventStore, StoreWriteError

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}

SUPERVISOR = """
import asyncio, sys
from corral.sandbox.sandbox import Sandbox

async def main():
    sb = Sandbox("rl-strict")
    await sb.start()
    await sb.exec("echo warm")
    task = asyncio.ensure_future(sb.exec("sleep 300"))
    while not any(e.rule == "sandbox.command_started" and e.step == 2 for e in sb.events):
        await asyncio.sleep(0.01)
    print(sb.id, sb.episode_id, sb.workspace, flush=True)
    await task

asyncio.run(main())
"""


def test_a_killed_supervisor_leaves_its_episode_interrupted_and_its_folders_swept(
    corral_home: Path,
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        sid, episode, workspace = line.split()
        assert Path(workspace).is_dir()
        cg = Cgroup(f"{proc.pid}-{sid}", probe())
        had_cgroup = any(d.is_dir() for d in cg.dirs.values())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = EventStore.shared(corral_home / "events.db")  # the next start
    events = store.query(sandbox_id=sid)
    (mark,) = [e for e in events if e.rule == "sandbox.interrupted"]
    assert mark.episode_id == episode and mark.step == 2 and mark.action == "terminated"
    assert mark.evidence["supervisor_pid"] == proc.pid and mark.evidence["running_steps"] == [2]
    ended = [e for e in events if e.rule == "sandbox.command_ended" and e.step == 2]
    assert ended and ended[0].evidence["interrupted"] is True
    (step,) = [s for s in store.steps(episode) if s.step == 2]
    assert step.kind == "interrupted" and step.action == "sleep 300" and step.terminated
    assert not (corral_home / "egress" / sid).exists()  # (nothing is made there any more)
    assert not Path(workspace).exists()
    if had_cgroup:  # its cgroup goes at the next sandbox start (of a new supervisor)
        subprocess.run([sys.executable, "-m", "corral.cli.main", "run", "-q", "--temp-workspace",
                        "--", "true"], env={**os.environ, **ENV}, check=True, timeout=60)  # fmt: skip
        assert not any(d.exists() for d in cg.dirs.values())
    # marked once: another start finds nothing left to do
    from corral.store.recovery import recover

    assert recover(EventStore(corral_home / "events.db")) == []
    assert len([e for e in store.query(sandbox_id=sid) if e.rule == "sandbox.interrupted"]) == 1


def test_a_live_supervisor_is_not_marked(corral_home: Path, store: EventStore) -> None:
    from corral.store.recovery import recover

    store.add(Event(source="sandbox", rule="sandbox.started", sandbox_id="sb-live",
                    episode_id="ep-live"))  # fmt: skip
    assert recover(EventStore(corral_home / "events.db")) == []
    assert [e.rule for e in store.query(sandbox_id="sb-live")] == ["sandbox.started"]


def _ev(i: int) -> Event:
    return Event(source="sandbox", rule=f"test.e{i}", sandbox_id="sb-x", episode_id="ep-x",
                 message="x" * 2000)  # fmt: skip


def test_writes_that_fail_are_held_and_written_in_order(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    store.add(_ev(0))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
    with pytest.raises(StoreWriteError, match="cannot record .*disk is full"):
        for i in range(1, 40):
            store.add(_ev(i))
    held = i
    assert store.failing
    store._db.execute("PRAGMA max_page_count = 1000000")
    store.add(_ev(99))
    assert not store.failing
    assert [e.rule for e in store.query(sandbox_id="sb-x")] == [
        f"test.e{n}" for n in [*range(held + 1), 99]]  # fmt: skip
    store.close()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root (tmpfs)")
def test_a_full_disk_fails_the_next_command_closed_and_loses_nothing(tmp_path: Path) -> None:
    d = tmp_path / "small"
    d.mkdir()
    script = ROOT / "tests" / "store" / "full_disk_run.py"
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f'mount -t tmpfs -o size=6m tmpfs "{d}" && exec "{sys.executable}" "{script}"'],
                       env={**os.environ, **ENV, "CORRAL_HOME": str(d)}, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["fill_error"] == "No space left on device"
    assert out["first"] == "one\n" and out["after"] == "four\n"
    for refused in out["refused"]:  # both commands refused with the reason, neither ran
        assert refused and "command not run" in refused and "disk is full" in refused
    assert out["started_commands"] == ["echo one", "echo four"]
    # the gate's block while the disk was full was held, then recorded, in the store and the file
    assert out["blocked"] and out["held"]
    assert "exfiltration.http_upload" in out["stored_rules"]
    assert out["stored_rules"] == out["jsonl_rules"]
    assert out["stored_rules"].count("sandbox.stopped") == 2  # the one held while full included
    assert out["pid_reaped"] and out["zombies"] == []  # close() reaped, though it could not record


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root (tmpfs)")
def test_a_full_disk_under_corral_serve_is_507_and_nothing_runs(tmp_path: Path) -> None:
    d = tmp_path / "small"
    d.mkdir()
    script = ROOT / "tests" / "store" / "full_disk_http.py"
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f'mount -t tmpfs -o size=6m tmpfs "{d}" && exec "{sys.executable}" "{script}"'],
                       env={**os.environ, **ENV, "CORRAL_HOME": str(d)}, capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["first"] == "one\n" and out["fill_error"] == "No space left on device"
    assert out["full_status"] == 507 and out["ran"] == 507
    assert "nothing was run" in out["full_message"] and "disk is full" in out["full_message"]
    assert out["after"] == "two\n"  # `ls` shows the command refused while full never ran
