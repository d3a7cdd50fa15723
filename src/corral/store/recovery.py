"""After a supervisor died: mark its episodes `interrupted` and sweep what it left on disk.

The store's `live` table names the supervisor of each running sandbox (pid, its start time, pid
namespace and boot) and `running` the steps it had started and not ended. At the next start, a
sandbox whose supervisor is gone (same boot and pid namespace, and the pid is dead or now another
process) gets a `sandbox.interrupted` event, each step that was running gets a step record of kind
`interrupted` and a `sandbox.command_ended` saying so, and its egress folder and workspace are
removed (empty cgroups are swept by the sandbox itself). Supervisors of another boot are dead too;
those of another pid namespace are left alone: we cannot see whether they live.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from corral.events.model import Event
from corral.store.paths import corral_home
from corral.store.sqlite import EventStore, StoreWriteError, _supervisor
from corral.store.steps import StepRecord


def _alive(pid: int, start: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start is None:
        return True
    try:
        import psutil

        return abs(psutil.Process(pid).create_time() - start) < 1.0
    except Exception:  # noqa: BLE001 - gone between the two looks
        return False


def recover(store: EventStore, home: Path | None = None) -> list[str]:
    """Mark the sandboxes of dead supervisors interrupted; the ids handled (each by one process)."""
    _, _, my_ns, my_boot = _supervisor()
    try:
        with store._lock:
            rows = store._db.execute(
                "SELECT sandbox_id, episode_id, pid, pid_start, pid_ns, boot_id, started, workspace "
                "FROM live"
            ).fetchall()
    except sqlite3.Error:
        return []
    dead = []
    for sid, episode, pid, start, ns, boot, started, workspace in rows:
        other_boot = boot is not None and my_boot is not None and boot != my_boot
        if other_boot or (ns == my_ns and pid != os.getpid() and not _alive(pid, start)):
            dead.append((sid, episode, pid, started, workspace))
    done = []
    for sid, episode, pid, started, workspace in dead:
        if _claim(store, sid, episode, pid, started):
            done.append(sid)
            _sweep(home or corral_home(), sid, pid, workspace)
    return done


def _claim(store: EventStore, sid: str, episode: str | None, pid: int, started: str) -> bool:
    """Record the interruption of one sandbox, once even if several processes recover at once."""
    with store._lock:
        try:
            with store._db:
                gone = store._db.execute("DELETE FROM live WHERE sandbox_id = ?", (sid,)).rowcount
                if not gone:
                    return False
                running = store._db.execute(
                    "SELECT step, command, session, since FROM running WHERE sandbox_id = ? "
                    "ORDER BY step", (sid,)).fetchall()  # fmt: skip
                store._db.execute("DELETE FROM running WHERE sandbox_id = ?", (sid,))
        except sqlite3.Error:
            return False
    now = datetime.now(UTC)
    why = f"supervisor pid {pid} died without closing the sandbox"
    events = []
    for step, command, session, _since in running:
        tag = {"session": session} if session else {}
        events.append(Event(source="sandbox", rule="sandbox.command_ended", sandbox_id=sid,
                            episode_id=episode, step=step, action="terminated",
                            severity="medium", argv=["bash", "-c", command],
                            message=f"interrupted: {why}",
                            evidence={"exit_code": None, "interrupted": True, **tag}))  # fmt: skip
    events.append(Event(source="sandbox", rule="sandbox.interrupted", sandbox_id=sid,
                        episode_id=episode, step=running[-1][0] if running else None,
                        severity="medium", action="terminated",
                        message=f"episode interrupted: {why}" + (
                            f"; step {', '.join(str(r[0]) for r in running)} was running"
                            if running else ""),
                        evidence={"supervisor_pid": pid, "started": started,
                                  "running_steps": [r[0] for r in running]}))  # fmt: skip
    with contextlib.suppress(StoreWriteError):
        store.add_many(events)
        if episode:
            for step, command, session, since in running:
                store.add_step(StepRecord(
                    episode_id=episode, sandbox_id=sid, step=step, kind="interrupted",
                    action=command, observation="", exit_code=None, terminated=True,
                    started=datetime.fromisoformat(since.replace("Z", "+00:00")), ended=now,
                    info={"interrupted": why, **({"session": session} if session else {})},
                ))  # fmt: skip
    return True


def _sweep(home: Path, sid: str, pid: int, workspace: str | None) -> None:
    """The egress folder and the workspace of a dead sandbox, if corral made it: a temporary one is
    named `<supervisor pid>-<sandbox id>-<random>`; a workspace the caller gave is never touched."""
    shutil.rmtree(home / "egress" / sid, ignore_errors=True)
    made = [Path(workspace)] if workspace else []
    with contextlib.suppress(OSError):
        made += list((home / "sandboxes").iterdir())
    for d in made:
        if d.name.startswith(f"{pid}-{sid}-") and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
