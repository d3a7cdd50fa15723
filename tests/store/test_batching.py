"""A command's events share a transaction (its start is written before it runs, for the full-disk
refusal and recovery), nothing held is lost, and this handle always sees what it was given."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.events.model import Event
from corral.store import sqlite as sqlite_store
from corral.store.sqlite import EventStore, StoreWriteError


def _event(rule: str, step: int | None = 1, severity: str = "info") -> Event:
    return Event(source=rule.split(".")[0], rule=rule, severity=severity, sandbox_id="sb-t",
                 episode_id="ep-t", step=step, message=rule)  # fmt: skip


def _rules_on_disk(path: Path) -> list[str]:
    """What another connection (another process, `corral events`) sees."""
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT rule FROM events ORDER BY id")]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A store whose held events wait for an event written at once (no timer in the way)."""
    monkeypatch.setattr(sqlite_store, "HOLD_S", 600.0)
    s = EventStore(tmp_path / "events.db")
    yield s
    s.close()


def test_a_command_is_written_in_its_start_and_its_end_transactions(
    store: EventStore, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.add(_event("sandbox.command_started"))
    assert _rules_on_disk(db) == ["sandbox.command_started"]  # before the command runs
    for _ in range(5):
        store.add(_event("egress.connection"))
    store.add(Event(source="process", rule="process.exec", sandbox_id="sb-t", episode_id="ep-t",
                    step=1, message="ls"))  # fmt: skip
    assert _rules_on_disk(db) == ["sandbox.command_started"]  # held for the command's end
    store.add(_event("sandbox.command_ended"))
    assert _rules_on_disk(db) == ["sandbox.command_started", *["egress.connection"] * 5,
                                  "process.exec", "sandbox.command_ended"]  # fmt: skip
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(commits) == 2, statements


def test_a_finding_is_written_at_once(store: EventStore, tmp_path: Path) -> None:
    store.add(_event("egress.connection"))
    store.add(Event(source="egress", rule="egress.denied", severity="medium", sandbox_id="sb-t",
                    episode_id="ep-t", step=1, message="x"))  # fmt: skip
    assert _rules_on_disk(tmp_path / "events.db") == ["egress.connection", "egress.denied"]


def test_a_lone_event_is_written_soon(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    store.add(_event("egress.connection", step=None))
    deadline = time.monotonic() + 10
    while not _rules_on_disk(tmp_path / "events.db") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _rules_on_disk(tmp_path / "events.db") == ["egress.connection"]
    store.close()


def test_reads_through_the_handle_see_waiting_events(store: EventStore) -> None:
    store.add(_event("egress.connection"))
    assert [e.rule for e in store.query(episode_id="ep-t")] == ["egress.connection"]


def test_close_writes_what_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "HOLD_S", 600.0)
    s = EventStore(tmp_path / "events.db")
    s.add(_event("egress.connection"))
    s.close()
    assert _rules_on_disk(tmp_path / "events.db") == ["egress.connection"]


def test_process_exit_writes_what_waits(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    code = (
        "from corral.events.model import Event\n"
        "from corral.store import sqlite\n"
        "from corral.store.sqlite import EventStore\n"
        "sqlite.HOLD_S = 600.0\n"
        f"s = EventStore({str(db)!r})\n"
        "s.add(Event(source='egress', rule='egress.connection', message='x'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert _rules_on_disk(db) == ["egress.connection"]


def test_a_failed_write_keeps_the_held_events_in_order(store: EventStore, tmp_path: Path) -> None:
    store.add(_event("egress.connection"))
    store._db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON events "
                      "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")  # fmt: skip
    with pytest.raises(StoreWriteError, match="disk is full"):
        store.add(_event("sandbox.command_ended"))
    assert _rules_on_disk(tmp_path / "events.db") == []
    store._db.execute("DROP TRIGGER full")
    store.flush()
    assert _rules_on_disk(tmp_path / "events.db") == ["egress.connection", "sandbox.command_ended"]


@pytest.mark.parametrize("held", ["egress.connection", "sandbox.started"])
def test_a_refused_start_drops_itself_but_keeps_what_was_held(store: EventStore, tmp_path: Path,
                                                              held: str) -> None:  # fmt: skip
    """Held rows and the refused command's start share the failed transaction (one commit, not
    two): the held ones are written later, the refused start never is."""
    store.add(_event(held, step=None))
    store._db.execute("CREATE TEMP TRIGGER full BEFORE INSERT ON events "
                      "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")  # fmt: skip
    with pytest.raises(StoreWriteError):
        store.add(_event("sandbox.command_started"), keep=False)
    store._db.execute("DROP TRIGGER full")
    store.flush()
    db = tmp_path / "events.db"
    assert _rules_on_disk(db) == [held]
    if held == "sandbox.started":  # and recovery's record of the live sandbox with it
        with sqlite3.connect(db) as raw:
            assert raw.execute("SELECT sandbox_id FROM live").fetchall() == [("sb-t",)]


def test_a_sandbox_start_lands_in_its_first_command_transaction(
    store: EventStore, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.add(_event("sandbox.started", step=None))
    assert _rules_on_disk(db) == []  # held: no commit of its own
    store.add(_event("sandbox.command_started"))
    assert _rules_on_disk(db) == ["sandbox.started", "sandbox.command_started"]
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(commits) == 1, statements
    with sqlite3.connect(db) as raw:  # recovery's record of the live sandbox came with it
        assert raw.execute("SELECT sandbox_id FROM live").fetchall() == [("sb-t",)]


def test_the_first_command_of_a_sandbox_costs_one_commit_through_the_sink(
    store: EventStore, tmp_path: Path
) -> None:
    """The sink writes a command's start fail-closed (dropped, not held, if the disk refuses it);
    what was held before it still goes in the same transaction, not one of its own."""
    from corral.events.sink import EventSink

    db = tmp_path / "events.db"
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    sink = EventSink(store=store)
    sink.emit(_event("sandbox.started", step=None))
    sink.emit(_event("sandbox.command_started"))
    assert _rules_on_disk(db) == ["sandbox.started", "sandbox.command_started"]
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(commits) == 1, statements


def test_a_hand_out_lands_in_the_first_commands_transaction(
    store: EventStore, tmp_path: Path
) -> None:
    """A warm sandbox's hand-out is information: held, then written with the episode's first
    command's start, in one commit."""
    from corral.events.sink import EventSink

    db = tmp_path / "events.db"
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    sink = EventSink(store=store)
    sink.emit(_event("sandbox.handed_out", step=None))
    assert _rules_on_disk(db) == []
    sink.emit(_event("sandbox.command_started"))
    assert _rules_on_disk(db) == ["sandbox.handed_out", "sandbox.command_started"]
    commits = [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert len(commits) == 1, statements


def test_steps_held_at_close_land_with_the_stop(store: EventStore, tmp_path: Path) -> None:
    from corral.store.steps import StepRecord

    db = tmp_path / "events.db"
    store.add_step(StepRecord(episode_id="ep-t", sandbox_id="sb-t", step=1, action="ls"), hold=True)
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT count(*) FROM steps").fetchone() == (0,)
    assert [r.step for r in store.steps("ep-t")] == [1]  # this handle sees it (written first)
    store.add_step(
        StepRecord(episode_id="ep-t", sandbox_id="sb-t", step=2, action="pwd"), hold=True
    )
    store.add(_event("sandbox.stopped", step=None))
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT step FROM steps ORDER BY step").fetchall() == [(1,), (2,)]
        assert raw.execute("SELECT count(*) FROM live").fetchone() == (0,)


def test_reading_the_steps_writes_held_steps_first_but_not_held_events(
    store: EventStore, tmp_path: Path
) -> None:
    """A close reads the episode's steps while its own events are held: they go in the close's
    one transaction, not in a commit of their own for a read they cannot change."""
    from corral.store.steps import StepRecord

    db = tmp_path / "events.db"
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.add(_event("egress.connection"))  # held: information
    assert store.steps("ep-t") == []
    assert not [s for s in statements if s.strip().upper().startswith("COMMIT")]
    assert _rules_on_disk(db) == []
    store.add_step(StepRecord(episode_id="ep-t", sandbox_id="sb-t", step=1, action="ls"),
                   hold=True)  # fmt: skip
    assert [r.step for r in store.steps("ep-t")] == [1]  # a held step is read
    assert _rules_on_disk(db) == ["egress.connection"]  # (written with it)


def test_reading_the_steps_waits_for_a_write_under_way(store: EventStore) -> None:
    """A red-team note: with only events held, the read skipped the flush, and with it the wait
    for the flusher's write in progress, which may carry step rows: a close then found no step
    and wrote it again. The flusher's write is stood in for by one that holds the write order."""
    import threading

    taken = threading.Event()

    def flusher() -> None:
        with store._order:
            taken.set()
            time.sleep(0.3)
            store._write([(sqlite_store._INSERT_STEP, _step_row(store, 4))])

    t = threading.Thread(target=flusher)
    t.start()
    taken.wait(5)
    store.add(_event("egress.connection"))  # an event held: the read does not flush for it
    assert [r.step for r in store.steps("ep-t")] == [4]
    t.join()


def _step_row(store: EventStore, step: int) -> tuple[object, ...]:
    from corral.store.steps import StepRecord

    d = StepRecord(episode_id="ep-t", sandbox_id="sb-t", step=step, action="ls").model_dump(
        mode="json"
    )
    d["terminated"], d["truncated"] = int(d["terminated"]), int(d["truncated"])
    d["info"] = json.dumps(d["info"])
    return tuple(d[c] for c in sqlite_store._STEP_COLUMNS)
