"""Events are written one transaction per command, never lost, and always visible to this handle."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.events.model import Event
from corral.store.sqlite import EventStore


def _event(rule: str, step: int | None = 1, severity: str = "info") -> Event:
    return Event(source="sandbox", rule=rule, severity=severity, sandbox_id="sb-t",
                 episode_id="ep-t", step=step, message=rule)  # fmt: skip


def _rules_on_disk(path: Path) -> list[str]:
    """What another connection (another process, `corral events`) sees."""
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT rule FROM events ORDER BY id")]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = EventStore(tmp_path / "events.db")
    yield s
    s.close()


def test_a_command_is_one_transaction(store: EventStore, tmp_path: Path) -> None:
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.add(_event("sandbox.command_started"))
    store.add(_event("egress.connection"))
    assert _rules_on_disk(tmp_path / "events.db") == []
    store.add(_event("sandbox.command_ended"))
    assert _rules_on_disk(tmp_path / "events.db") == [
        "sandbox.command_started", "egress.connection", "sandbox.command_ended"]  # fmt: skip
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(commits) == 1, statements


def test_a_finding_is_written_at_once(store: EventStore, tmp_path: Path) -> None:
    store.add(_event("sandbox.command_started"))
    store.add(_event("tunnel.ssh_remote_forward", severity="critical"))
    assert _rules_on_disk(tmp_path / "events.db") == [
        "sandbox.command_started", "tunnel.ssh_remote_forward"]  # fmt: skip


def test_a_lone_event_is_written_soon(store: EventStore, tmp_path: Path) -> None:
    store.add(_event("sandbox.started", step=None))
    deadline = time.monotonic() + 10
    while not _rules_on_disk(tmp_path / "events.db") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _rules_on_disk(tmp_path / "events.db") == ["sandbox.started"]


def test_reads_through_the_handle_see_waiting_events(store: EventStore) -> None:
    store.add(_event("sandbox.command_started"))
    assert [e.rule for e in store.query(episode_id="ep-t")] == ["sandbox.command_started"]


def test_close_writes_what_waits(tmp_path: Path) -> None:
    s = EventStore(tmp_path / "events.db")
    s.add(_event("sandbox.command_started"))
    s.close()
    assert _rules_on_disk(tmp_path / "events.db") == ["sandbox.command_started"]
    with pytest.raises(sqlite3.ProgrammingError):
        s.add(_event("sandbox.command_started"))


def test_process_exit_writes_what_waits(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    code = (
        "from corral.events.model import Event\n"
        "from corral.store.sqlite import EventStore\n"
        f"s = EventStore({str(db)!r})\n"
        "s.add(Event(source='sandbox', rule='sandbox.started', message='x'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert _rules_on_disk(db) == ["sandbox.started"]


def test_a_failed_write_keeps_the_events_in_order(store: EventStore, tmp_path: Path) -> None:
    store.add(_event("sandbox.command_started"))
    store._db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON events "
                      "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")  # fmt: skip
    with pytest.raises(sqlite3.DatabaseError, match="disk is full"):
        store.add(_event("sandbox.command_ended"))
    assert _rules_on_disk(tmp_path / "events.db") == []
    store._db.execute("DROP TRIGGER full")
    store.flush()
    assert _rules_on_disk(tmp_path / "events.db") == [
        "sandbox.command_started", "sandbox.command_ended"]  # fmt: skip
