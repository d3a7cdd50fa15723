"""`corral check` on what the gate cannot analyse: a verdict each (deny), never a crash or a hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CORRAL = [sys.executable, "-m", "corral.cli.main"]


def test_huge_and_nul_commands_get_a_deny_each(tmp_path: Path) -> None:
    batch = tmp_path / "batch.txt"
    lines = [" | ".join(["cat"] * 20000), "echo " + "A" * 10_000_000, "echo a\x00b", "ls -la"]
    batch.write_text("\n".join(lines) + "\n")
    r = subprocess.run([*CORRAL, "check", "--batch", str(batch), "--json"], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["verdict"] for o in out] == ["deny", "deny", "deny", "allow"]
    for o in out[:3]:
        assert o["findings"][0]["rule"] == "gate.unanalysable"
    r = subprocess.run([*CORRAL, "check", "--json", lines[0]], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 2 and json.loads(r.stdout)["verdict"] == "deny"
