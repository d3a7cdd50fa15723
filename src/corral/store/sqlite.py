"""The event store.

One table keyed by time with the join columns (sandbox, episode, step) indexed, so the ROME forensics
("which step opened this connection?") is one indexed query. WAL lets the CLI read while a supervisor
writes; many supervisors on one host may share the file.
"""

from __future__ import annotations

import atexit
import json
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from corral.events.model import Event
from corral.store.paths import default_db_path
from corral.store.steps import StepRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    sandbox_id TEXT,
    episode_id TEXT,
    step INTEGER,
    source TEXT NOT NULL,
    rule TEXT NOT NULL,
    category TEXT NOT NULL,
    severity TEXT NOT NULL,
    action TEXT NOT NULL,
    attack TEXT,
    pid INTEGER,
    exe TEXT,
    argv TEXT,
    dst TEXT,
    path TEXT,
    message TEXT,
    evidence TEXT
);
CREATE INDEX IF NOT EXISTS events_episode ON events(episode_id, step);
CREATE INDEX IF NOT EXISTS events_sandbox ON events(sandbox_id);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_source ON events(source);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL,
    sandbox_id TEXT,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    observation TEXT NOT NULL,
    exit_code INTEGER,
    reward REAL NOT NULL,
    penalty REAL NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    started TEXT NOT NULL,
    ended TEXT NOT NULL,
    info TEXT
);
CREATE INDEX IF NOT EXISTS steps_episode ON steps(episode_id, step);
"""

_STEP_COLUMNS = [
    "episode_id",
    "sandbox_id",
    "step",
    "kind",
    "action",
    "observation",
    "exit_code",
    "reward",
    "penalty",
    "terminated",
    "truncated",
    "started",
    "ended",
    "info",
]
_COLUMNS = [
    "ts",
    "sandbox_id",
    "episode_id",
    "step",
    "source",
    "rule",
    "category",
    "severity",
    "action",
    "attack",
    "pid",
    "exe",
    "argv",
    "dst",
    "path",
    "message",
    "evidence",
]


# An event waits at most this long for the transaction of the command it belongs to.
FLUSH_AFTER_S = 0.05
# Written at once, with whatever waits before them: the end of a command or of a sandbox (so a
# command's events land in one transaction), and every event that is not plain information.
FLUSH_RULES = frozenset({"sandbox.command_ended", "sandbox.stopped", "sandbox.terminated"})
FLUSH_MAX = 512

_open_stores: weakref.WeakSet[EventStore] = weakref.WeakSet()


@atexit.register
def _flush_open_stores() -> None:
    for store in list(_open_stores):
        try:
            store.flush()
        except Exception as err:  # noqa: BLE001 - exiting: say so, on one line
            print(f"corral: events not written to {store.path}: {err}", file=sys.stderr)


class EventStore:
    """A thread-safe handle on the events database.

    `add` batches: a command's events are written in one transaction when it ends (or a sandbox
    stops, or an event above `info` arrives), and nothing waits longer than `FLUSH_AFTER_S`; one
    commit per event cost more than the rest of a warm step. Reads through this handle, `close()`
    and interpreter exit write what waits first, so a reader in this process never misses one.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pending: list[Event] = []
        self._flush_lock = threading.Lock()  # one flush at a time, so batches land in order
        self._wake = threading.Condition(threading.Lock())
        self._flusher: threading.Thread | None = None
        _open_stores.add(self)

    _shared: dict[Path, EventStore] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, path: str | Path | None = None) -> EventStore:
        """One handle per database file per process: a hundred sandboxes need one connection."""
        key = Path(path) if path else default_db_path()
        with cls._shared_lock:
            store = cls._shared.get(key)
            if store is None or store._closed:
                store = cls._shared[key] = cls(key)
            return store

    def add(self, event: Event) -> None:
        """Record one event: at once if it ends a command or matters, else with its command."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            self._pending.append(event)
            now = (event.rule in FLUSH_RULES or event.severity != "info"
                   or len(self._pending) >= FLUSH_MAX)  # fmt: skip
        if now:
            self.flush()
        else:
            self._schedule()

    def flush(self) -> None:
        """Write every waiting event in one transaction; on failure they stay queued (in order)
        and the error is raised."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self.add_many(batch)
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch
                raise

    def _schedule(self) -> None:
        """Make sure a flush comes within FLUSH_AFTER_S (one daemon thread per store)."""
        with self._wake:
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="corral-store",
                                                 daemon=True)  # fmt: skip
                self._flusher.start()
            self._wake.notify()

    def _flush_loop(self) -> None:
        """Flush what waits, FLUSH_AFTER_S after it began to wait; ends after a second idle."""
        warned = False
        while True:
            with self._wake:
                if not self._pending and not self._closed:
                    self._wake.wait(1.0)
                if self._closed or not self._pending:
                    self._flusher = None
                    return
            time.sleep(FLUSH_AFTER_S)
            try:
                self.flush()
                warned = False
            except sqlite3.ProgrammingError:  # closed meanwhile: close() wrote what it could
                return
            except Exception as err:  # noqa: BLE001 - kept queued; said once, retried later
                if not warned:
                    print(f"corral: events not yet written to {self.path}: {err}", file=sys.stderr)
                    warned = True

    def add_many(self, events: Iterable[Event]) -> None:
        rows = [self._row(e) for e in events]
        if not rows:
            return
        placeholders = ",".join("?" * len(_COLUMNS))
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT INTO events ({','.join(_COLUMNS)}) VALUES ({placeholders})", rows
            )

    @staticmethod
    def _row(e: Event) -> tuple[Any, ...]:
        d = e.model_dump(mode="json")
        return (
            d["ts"],
            d["sandbox_id"],
            d["episode_id"],
            d["step"],
            d["source"],
            d["rule"],
            d["category"],
            d["severity"],
            d["action"],
            d["attack"],
            d["pid"],
            d["exe"],
            json.dumps(d["argv"]) if d["argv"] is not None else None,
            json.dumps(d["dst"]) if d["dst"] is not None else None,
            d["path"],
            d["message"],
            json.dumps(d["evidence"]),
        )

    def query(
        self,
        *,
        episode_id: str | None = None,
        sandbox_id: str | None = None,
        source: str | None = None,
        category: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        return list(
            self.iter(
                episode_id=episode_id,
                sandbox_id=sandbox_id,
                source=source,
                category=category,
                since=since,
                limit=limit,
            )
        )

    def iter(
        self,
        *,
        episode_id: str | None = None,
        sandbox_id: str | None = None,
        source: str | None = None,
        category: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Event]:
        where, args = [], []
        for col, val in (
            ("episode_id", episode_id),
            ("sandbox_id", sandbox_id),
            ("source", source),
            ("category", category),
        ):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        self.flush()
        sql = f"SELECT {','.join(_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        for row in rows:
            d = dict(zip(_COLUMNS, row, strict=True))
            d["argv"] = json.loads(d["argv"]) if d["argv"] else None
            d["dst"] = json.loads(d["dst"]) if d["dst"] else None
            d["evidence"] = json.loads(d["evidence"]) if d["evidence"] else {}
            d["message"] = d["message"] or ""
            yield Event.model_validate(d)

    # ---------------------------------------------------------------- steps (RL episodes)
    def add_step(self, record: StepRecord) -> None:
        self.flush()  # the step's events first
        d = record.model_dump(mode="json")
        d["terminated"] = int(d["terminated"])
        d["truncated"] = int(d["truncated"])
        d["info"] = json.dumps(d["info"], default=str)
        row = tuple(d[c] for c in _STEP_COLUMNS)
        placeholders = ",".join("?" * len(_STEP_COLUMNS))
        with self._lock, self._db:
            self._db.execute(
                f"INSERT INTO steps ({','.join(_STEP_COLUMNS)}) VALUES ({placeholders})", row
            )

    def steps(self, episode_id: str) -> list[StepRecord]:
        self.flush()
        sql = f"SELECT {','.join(_STEP_COLUMNS)} FROM steps WHERE episode_id = ? ORDER BY step, id"
        with self._lock:
            rows = self._db.execute(sql, (episode_id,)).fetchall()
        out = []
        for row in rows:
            d = dict(zip(_STEP_COLUMNS, row, strict=True))
            d["terminated"] = bool(d["terminated"])
            d["truncated"] = bool(d["truncated"])
            d["info"] = json.loads(d["info"]) if d["info"] else {}
            out.append(StepRecord.model_validate(d))
        return out

    def episodes(self, limit: int | None = None) -> list[str]:
        """Episodes that recorded steps, newest first."""
        self.flush()
        sql = "SELECT episode_id FROM steps GROUP BY episode_id ORDER BY MAX(id) DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return [r[0] for r in self._db.execute(sql).fetchall()]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._db.close()
            with self._wake:
                self._wake.notify()
