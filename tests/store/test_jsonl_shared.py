"""The JSON-lines file is shared per path in a process: a sandbox that closes while the file
refuses writes (a full disk) loses nothing; the next sandbox's write puts the held lines first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, resource, sys
from corral.events.model import Event
from corral.events.sink import EventSink, JsonlFile

path = sys.argv[1]
ev = lambda rule, sid: Event(source="sandbox", rule=rule, sandbox_id=sid, episode_id="ep")
a = EventSink(jsonl=path)
a.emit(ev("t.one", "a"))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 10, hard))  # "the disk is full"
a.emit(ev("t.two", "a"))
a.emit(ev("t.three", "a"))
failure = a.failure
a.close()
late = None
a.emit(ev("t.late", "a"))  # a sensor's event after close: held too, not dropped
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
b = EventSink(jsonl=path)
b.emit(ev("t.four", "b"))
b.close()
print(json.dumps({"failure": failure, "open": len(JsonlFile._open)}))
"""


def test_lines_held_by_a_closed_sink_go_first_with_the_next(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "cannot be written" in out["failure"]
    rules = [json.loads(x)["rule"] for x in path.read_text().splitlines()]
    assert rules == ["t.one", "t.two", "t.three", "t.late", "t.four"]
    assert out["open"] == 0  # the last release closed it once nothing was held


def test_lines_still_held_at_exit_go_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    script = SCRIPT.split("resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))")[0]
    p = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "did not take these lines" in p.stderr
    assert '"rule":"t.two"' in p.stderr and '"rule":"t.late"' in p.stderr
