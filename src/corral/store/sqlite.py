"""The event store.

One table keyed by time with the join columns (sandbox, episode, step) indexed, so the ROME forensics
("which step opened this connection?") is one indexed query. WAL lets the CLI read while a supervisor
writes; many supervisors on one host may share the file.

Faults: a write that fails (a full disk, an I/O error, a lock held too long) keeps its rows in memory
and raises `StoreWriteError`; every later write tries those first, in order, so nothing accepted is
lost once the disk has room again. The `live` table says which supervisor runs which sandbox and
which step it is running, so the next start can mark a dead supervisor's episodes `interrupted`
(`corral.store.recovery`). A damaged file is read row by row (`salvage`), skipping what cannot be read.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from corral.events.model import Event, format_ts
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
    evidence TEXT,
    origin_step INTEGER
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
CREATE TABLE IF NOT EXISTS live (
    sandbox_id TEXT PRIMARY KEY,
    episode_id TEXT,
    pid INTEGER NOT NULL,
    pid_start REAL,
    pid_ns INTEGER,
    boot_id TEXT,
    started TEXT NOT NULL,
    workspace TEXT
);
CREATE TABLE IF NOT EXISTS running (
    sandbox_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    command TEXT NOT NULL,
    session TEXT,
    since TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, step)
);
"""


class StoreWriteError(RuntimeError):
    """The store could not write (kept in memory, retried on the next write); says where and why."""


class StoreReadError(RuntimeError):
    """The store cannot be opened or read at all; says which file and what to do (`cause`: the
    database's own words)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


def _supervisor() -> tuple[int, float | None, int | None, str | None]:
    """This process as the `live` table names a supervisor: pid, start time, pid namespace, boot."""
    import os

    pid = os.getpid()
    start = ns = boot = None
    try:
        import psutil

        start = psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - best effort: the pid alone still identifies it
        start = None
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    return pid, start, ns, boot


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
    "origin_step",
]


_INSERT_EVENT = (
    f"INSERT INTO events ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"
)
_INSERT_STEP = (
    f"INSERT INTO steps ({','.join(_STEP_COLUMNS)}) VALUES ({','.join('?' * len(_STEP_COLUMNS))})"
)


def _explain(path: Path, err: sqlite3.Error) -> str:
    text = str(err)
    if "locked" in text or "busy" in text:
        return (f"{path} is locked by another process ({text}): wait for it to finish, or find it "
                f"with `fuser {path}`")  # fmt: skip
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (f"{path} is damaged ({text}): `corral events` reads what is intact; move the "
                "file aside to start a new store")  # fmt: skip
    return f"{path}: cannot open the event store ({text})"


# Plain information from inside a command (an allowed connection, an exec the monitor saw) waits
# at most this long, or until the next event written at once, to share its transaction.
HOLD_S = 0.05
# a sandbox's own lifecycle events that are plain information: held as the monitor's are (the
# start, and a warm sandbox's hand-out, go in the first command's transaction); a command's start
# and end, the stop, findings and refusals are written at once
HELD_RULES = frozenset({"sandbox.started", "sandbox.handed_out"})
HOLD_MAX = 512

_open_stores: weakref.WeakSet[EventStore] = weakref.WeakSet()


@atexit.register
def _flush_open_stores() -> None:
    for store in list(_open_stores):
        if not store._closed:
            try:
                store.flush()
            except Exception as err:  # noqa: BLE001 - exiting: say so, on one line
                print(f"corral: events not written to {store.path}: {err}", file=sys.stderr)


class EventStore:
    """A thread-safe handle on the events database.

    A command's start and end, a sandbox's stop, findings and refusals are written at once: a
    command is recorded as started before it runs, and a full disk refuses it rather than run it
    unrecorded. Plain information (egress and monitor events at `info`, a sandbox's start, the
    step records a close writes, a warm sandbox's hand-out) is held, at most `HOLD_S`, and lands
    in the transaction of the next event written at once (the command's end, its first command's
    start, the stop): one commit per command, not one per event. Reads through this handle, `flush()`, `close()` and
    interpreter exit write what is held first.
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        self._pending: list[tuple[str, tuple[Any, ...]]] = []  # (sql, row) not yet written
        self._held: list[Event] = []  # plain information waiting for its command's transaction
        self._held_writes: list[tuple[str, tuple[Any, ...]]] = []  # step records, likewise
        self._held_lock = threading.Lock()
        self._order = threading.Lock()  # held events are taken and written in the order they came
        self._wake = threading.Condition(threading.Lock())
        self._flusher: threading.Thread | None = None
        self._me_cache: tuple[int, float | None, int | None, str | None] | None = None
        deadline = time.monotonic() + timeout
        while True:  # another process opening or migrating the store at this instant: wait for it
            try:
                self._open(timeout)
                break
            except sqlite3.OperationalError as err:
                locked = "locked" in str(err) or "busy" in str(err)
                if not locked or time.monotonic() > deadline:
                    raise StoreReadError(_explain(self.path, err), str(err)) from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as err:
                raise StoreReadError(_explain(self.path, err), str(err)) from None
        _open_stores.add(self)

    def _open(self, timeout: float) -> None:
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=timeout)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(live)")}
            if "workspace" not in cols:  # a store made before the column
                self._db.execute("ALTER TABLE live ADD COLUMN workspace TEXT")
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(events)")}
            if "origin_step" not in cols:  # a store written before events carried origin steps
                self._db.execute("ALTER TABLE events ADD COLUMN origin_step INTEGER")
        except sqlite3.DatabaseError:
            with contextlib.suppress(Exception):
                self._db.close()
            raise

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
                from corral.store.recovery import recover

                recover(store)  # a supervisor starts: what a dead one left is marked and swept
            return store

    @classmethod
    def release_shared(cls, under: str | Path) -> int:
        """Close the shared handles of every database under `under` (a CORRAL_HOME that is going
        away: a test's, a supervisor's temporary one). Returns how many were closed."""
        root = Path(under)
        with cls._shared_lock:
            keys = [k for k in cls._shared if k == root or root in k.parents]
            stores = [cls._shared.pop(k) for k in keys]
        for store in stores:
            store.close()
        return len(stores)

    def add(self, event: Event, keep: bool = True) -> None:
        plain = event.severity == "info" and (event.source != "sandbox" or event.rule in HELD_RULES)
        if keep and plain and not self._closed:
            with self._held_lock:
                self._held.append(event)
                full = len(self._held) >= HOLD_MAX
            if full:
                self.flush()
            else:
                self._schedule()
            return
        self.add_many([event], keep=keep)

    def add_many(self, events: Iterable[Event], keep: bool = True) -> None:
        """Record events (after what is held, in the same transaction); `keep=False`: on failure
        these are dropped, not held (a command that will not run because of the failure must not
        be recorded as started later)."""
        events = list(events)
        writes = [(_INSERT_EVENT, self._row(e)) for e in events]
        writes += [w for e in events for w in self._live_writes(e)]
        with self._order:
            held = self._take_held()
            if held or writes:
                # one transaction; on failure what was held is kept whatever becomes of these
                self._write(held + writes, keep=len(held) + (len(writes) if keep else 0))

    def _take_held(self) -> list[tuple[str, tuple[Any, ...]]]:
        with self._held_lock:
            held, self._held = self._held, []
            later, self._held_writes = self._held_writes, []
        writes = [(_INSERT_EVENT, self._row(e)) for e in held]
        writes += [w for e in held for w in self._live_writes(e)]
        return writes + later

    def _flush_for_read(self) -> None:
        """What is held, written before a read; a failing disk does not stop the read."""
        if self._held or self._held_writes:
            with contextlib.suppress(StoreWriteError):
                self.flush()

    def _schedule(self) -> None:
        """A flush within HOLD_S (one daemon thread per store, gone after a second idle)."""
        with self._wake:
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="corral-store",
                                                 daemon=True)  # fmt: skip
                self._flusher.start()
            self._wake.notify()

    def _flush_loop(self) -> None:
        warned = False
        while True:
            with self._wake:
                if not self._held and not self._held_writes and not self._closed:
                    self._wake.wait(1.0)
                if self._closed or not (self._held or self._held_writes):
                    self._flusher = None
                    return
            time.sleep(HOLD_S)
            try:
                self.flush()
                warned = False
            except sqlite3.ProgrammingError:  # closed meanwhile: close() wrote what it could
                return
            except Exception as err:  # noqa: BLE001 - kept in memory; said once, tried again
                if not warned:
                    print(f"corral: {err}", file=sys.stderr)
                    warned = True

    @property
    def _me(self) -> tuple[int, float | None, int | None, str | None]:
        """This supervisor, looked up again in a forked child (its sandboxes are its own)."""
        import os

        if self._me_cache is None or self._me_cache[0] != os.getpid():
            self._me_cache = _supervisor()
        return self._me_cache

    @property
    def failing(self) -> bool:
        """Writes are waiting in memory for the disk to take them."""
        return bool(self._pending)

    def flush(self) -> None:
        """Write what is held and what earlier failures left in memory (StoreWriteError if it
        still cannot)."""
        with self._order:
            self._write(self._take_held())

    def _write(self, writes: list[tuple[str, tuple[Any, ...]]], keep: int | None = None) -> None:
        """All pending writes then these, in one transaction; on failure the pending ones and the
        first `keep` of these (all by default) are kept, in order, for the next write."""
        with self._lock:
            batch = self._pending + writes
            if not batch:
                return
            try:
                with self._db:
                    for sql, rows in itertools.groupby(batch, key=lambda w: w[0]):
                        self._db.executemany(sql, [r for _, r in rows])
            except sqlite3.Error as err:
                kept = len(writes) if keep is None else keep
                self._pending = self._pending + writes[:kept]
                raise StoreWriteError(
                    f"the event store {self.path} cannot record ({err}); {len(self._pending)} "
                    "write(s) held in memory until it can: free disk space or fix the file"
                ) from None
            self._pending = []

    def _live_writes(self, e: Event) -> list[tuple[str, tuple[Any, ...]]]:
        """Keep `live` and `running` in step with a sandbox's lifecycle events, for the next
        start's recovery of a supervisor that died (`corral.store.recovery`)."""
        sid = e.sandbox_id
        if sid is None or e.source != "sandbox":
            return []
        ts = format_ts(e.ts)
        if e.rule == "sandbox.started":
            pid, start, ns, boot = self._me
            ws = e.evidence.get("workspace")
            return [("INSERT OR REPLACE INTO live (sandbox_id, episode_id, pid, pid_start, pid_ns, "
                     "boot_id, started, workspace) VALUES (?,?,?,?,?,?,?,?)",
                     (sid, e.episode_id, pid, start, ns, boot, ts,
                      ws if isinstance(ws, str) else None))]  # fmt: skip
        if e.rule == "sandbox.command_started" and e.step is not None:
            cmd = e.argv[2] if e.argv and len(e.argv) > 2 else e.message
            return [("INSERT OR REPLACE INTO running (sandbox_id, step, command, session, since) "
                     "VALUES (?,?,?,?,?)",
                     (sid, e.step, cmd[:65536], e.evidence.get("session"), ts))]  # fmt: skip
        if e.rule == "sandbox.command_ended" and e.step is not None:
            return [("DELETE FROM running WHERE sandbox_id = ? AND step = ?", (sid, e.step))]
        if e.rule == "sandbox.stopped":
            return [("DELETE FROM live WHERE sandbox_id = ?", (sid,)),
                    ("DELETE FROM running WHERE sandbox_id = ?", (sid,))]  # fmt: skip
        return []

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
            d["origin_step"],
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
        self._flush_for_read()
        sql = f"SELECT {','.join(_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        for row in rows:
            yield _event(dict(zip(_COLUMNS, row, strict=True)))

    # ---------------------------------------------------------------- steps (RL episodes)
    def add_step(self, record: StepRecord, hold: bool = False) -> None:
        """Record a step; `hold`: in the transaction of the next event written at once (a
        sandbox's close writes its steps, then `sandbox.stopped`), within `HOLD_S` at the latest."""
        d = record.model_dump(mode="json")
        d["terminated"] = int(d["terminated"])
        d["truncated"] = int(d["truncated"])
        d["info"] = json.dumps(d["info"], default=str)
        row = tuple(d[c] for c in _STEP_COLUMNS)
        if hold and not self._closed:
            with self._held_lock:
                self._held_writes.append((_INSERT_STEP, row))
            self._schedule()
            return
        self._write([(_INSERT_STEP, row)])

    def recharge_steps(self, episode_id: str, penalties: dict[int, float]) -> None:
        """Set recorded action steps' penalty (moving their reward by as much): a finding that
        landed after its step's record was written (a background job, a sensor's sweep) belongs
        to the step that started it, not to the one running when it was seen."""
        sql = ("UPDATE steps SET reward = reward + (? - penalty), penalty = ? "
               "WHERE episode_id = ? AND step = ? AND kind = 'action'")  # fmt: skip
        self._write([(sql, (p, p, episode_id, step)) for step, p in sorted(penalties.items())])

    def steps(self, episode_id: str) -> list[StepRecord]:
        if self._held_writes:  # held steps; held events change no step (a close reads the steps
            self._flush_for_read()  # with its own events held: no commit of their own for them)
        else:
            with self._order:  # but a flush under way (the flusher's, steps in it) lands first
                pass
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
        self._flush_for_read()
        sql = "SELECT episode_id FROM steps GROUP BY episode_id ORDER BY MAX(id) DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return [r[0] for r in self._db.execute(sql).fetchall()]

    def close(self) -> None:
        """Close; writes still held in memory are tried once more, then printed to stderr as
        JSON lines (so a full disk loses nothing that reaches a log)."""
        with contextlib.suppress(StoreWriteError):
            self.flush()
        with self._lock:
            if self._pending:
                import sys

                print(f"corral: {len(self._pending)} write(s) to {self.path} could not be recorded; "
                      "they follow as JSON lines", file=sys.stderr)  # fmt: skip
                for sql, row in self._pending:
                    print(json.dumps({"unrecorded": sql.split("(")[0].strip(), "row": row},
                                     default=str), file=sys.stderr)  # fmt: skip
                self._pending = []
            self._closed = True
            self._db.close()
        with self._wake:
            self._wake.notify()


# ---------------------------------------------------------------- reading a damaged file
SALVAGE_BATCH = 256


def salvage_events(path: Path) -> tuple[list[Event], list[str]]:
    """Every event of a damaged store that can still be read, oldest first by id, and a line for
    each part that could not be (a range of ids, a row that does not decode). Read-only."""
    problems: list[str] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as err:
        return [], [f"{path}: cannot open ({err})"]
    try:
        try:
            db.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError as err:
            return [], [f"{path}: no table can be read ({err})"]
        try:
            top = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            last = int(top[0]) if top else None
        except sqlite3.Error:
            last = None
        if last is None:  # no sequence to go by: scan as far as the rows go
            last = 1 << 40
        out: list[Event] = []
        sql = f"SELECT id, {','.join(_COLUMNS)} FROM events WHERE id >= ? ORDER BY id LIMIT ?"

        def read(start: int, n: int) -> list[Any] | None:
            try:
                return db.execute(sql, (start, n)).fetchall()
            except sqlite3.DatabaseError:
                return None

        next_id = 1
        lost: list[list[int]] = []  # [first, last] id ranges that could not be read
        while next_id <= last:
            rows = read(next_id, SALVAGE_BATCH) or read(next_id, 1)
            if rows is None:  # damaged from here: find the first id a read works from again
                lo, step = next_id, 1
                while next_id + step <= last and read(next_id + step, 1) is None:
                    lo, step = next_id + step, step * 2
                hi = min(next_id + step, last + 1)
                while hi - lo > 1:  # lo fails, hi works (or is past the end)
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if read(mid, 1) is None else (lo, mid)
                if lost and lost[-1][1] == next_id - 1:
                    lost[-1][1] = hi - 1
                else:
                    lost.append([next_id, hi - 1])
                next_id = hi
                continue
            if not rows:
                break
            for row in rows:
                try:
                    out.append(_event(dict(zip(_COLUMNS, row[1:], strict=True))))
                except (ValueError, TypeError) as err:
                    problems.append(f"id {row[0]}: does not decode ({str(err).splitlines()[0]})")
            next_id = rows[-1][0] + 1
        for a, b in lost:
            problems.append(f"ids {a}-{b}: unreadable (damaged pages); the rows there may be fewer")
        return out, problems
    finally:
        db.close()


def _event(d: dict[str, Any]) -> Event:
    d["argv"] = json.loads(d["argv"]) if d["argv"] else None
    d["dst"] = json.loads(d["dst"]) if d["dst"] else None
    d["evidence"] = json.loads(d["evidence"]) if d["evidence"] else {}
    d["message"] = d["message"] or ""
    return Event.model_validate(d)
