"""`corral audit` that read nothing, or was given a Ray address where nothing answers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

CORRAL = [sys.executable, "-m", "corral.cli.main"]


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    # the subprocess timeout only bounds a hang: the command must end on its own, with an error
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=120)


def test_audit_that_read_nothing_exits_1(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("just some notes\n")
    for target in (tmp_path / "empty.jsonl", tmp_path):
        r = corral("audit", str(target))
        assert r.returncode == 1, (target, r.stdout, r.stderr)
        assert "read no trajectory" in r.stderr and "Traceback" not in r.stderr


def test_a_ray_address_where_nothing_answers_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = corral("audit", str(f), "--ray", f"127.0.0.1:{port}")
    assert r.returncode == 2, r.stderr
    assert "no Ray cluster answers there" in r.stderr and "Traceback" not in r.stderr
