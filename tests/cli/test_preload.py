"""A served call imports nothing the fork server did not load first: every module a child imports
is parsed, compiled and built again for each call (about 12 ms for `corral.rl` when it slipped
out of the list). Checked by diffing `sys.modules` in a forked child, as the server forks it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import gc, json, os, sys
from corral.cli.forkserver import Server
s = Server.__new__(Server)
errors = []
s.log = errors.append
s._preload()
gc.freeze()
import corral.cli.main as m
out = {}
for name, args in (("run", ["run", "-q", "--temp-workspace", "--", "true"]),
                   ("check", ["check", "--json", "ls -la"])):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        before = set(sys.modules)
        code = 0
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            m.main(args)
        except SystemExit as e:
            code = e.code
        os.write(w, json.dumps({"code": code, "new": sorted(set(sys.modules) - before)}).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    out[name] = json.loads(data)
print(json.dumps({"calls": out, "errors": [e for e in errors if "preload" in e]}))
"""


@pytest.mark.parametrize("call", ["run", "check"])
def test_a_served_call_imports_nothing_new(call: str, corral_home: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "CORRAL_DAEMON": "0"})  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["errors"] == []  # every name in PRELOAD imports
    got = out["calls"][call]
    assert got["code"] in (0, None), got
    assert got["new"] == [], (
        f"`corral {call}` in a served child imported {got['new']}: add them to PRELOAD"
    )
