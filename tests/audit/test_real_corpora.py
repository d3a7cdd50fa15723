"""`corral audit` on real published trajectories (the shared development corpora beside the
checkout; skipped when absent): few denials, nothing unread passes, and the commands found are the
commands each format holds, counted here by the format's own rules, not by the readers."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from corral.audit.auditor import AuditOptions
from corral.audit.runner import run_chunks
from corral.audit.sources import discover, plan
from corral.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [Path(os.environ.get("CORRAL_TRAJECTORIES", ROOT.parent / "shared" / "corpora" /
                                  "trajectories")), Path("/work/shared/corpora/trajectories")]  # fmt: skip
CORPUS = next((p for p in CANDIDATES if p.is_dir()), None)
pytestmark = pytest.mark.skipif(CORPUS is None, reason="the shared trajectories are not here")


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    assert CORPUS is not None
    options = AuditOptions(load_policy("rl-strict"))
    out: list[dict[str, Any]] = []
    for part in run_chunks(plan(discover([CORPUS])), options, workers=1):
        out += part["results"]
    return out


def test_at_most_two_percent_of_real_runs_are_denied(results: list[dict[str, Any]]) -> None:
    assert len(results) > 300
    denied = [r["id"] for r in results if r["verdict"] == "deny"]
    assert len(denied) / len(results) <= 0.02, denied


def test_nothing_unread_is_allowed(results: list[dict[str, Any]]) -> None:
    for r in results:
        if r["verdict"] == "allow" and r["steps"]:
            assert r["commands"] or r["actions"], r["id"]
        if r["verdict"] == "unreadable":
            assert r["commands"] == 0 and not r["passed"] and r["unreadable"]


# Counting by each producer's rules: mini runs the fenced bash block of each reply (1.x ```bash,
# 2.x text mode ```mswea_bash_command) or its tool calls; SWE-agent runs each `action` line except
# its navigation commands (open/goto/scroll/search/find_file/submit), writes included.
_FENCE = re.compile(r"```(?:bash|sh|mswea_bash_command)[ \t]*\n(.*?)\n?```", re.DOTALL)
_NAV = {"submit", "open", "goto", "scroll_up", "scroll_down", "find_file", "search_dir",
        "search_file", "exit", "exit_forfeit", "filemap"}  # fmt: skip


def _docs(folder: str, suffix: str) -> list[Any]:
    assert CORPUS is not None
    out = []
    for f in sorted((CORPUS / folder).rglob(f"*{suffix}.gz")):
        text = gzip.decompress(f.read_bytes()).decode("utf-8", "replace")
        if suffix == ".jsonl":
            out.extend(json.loads(x) for x in text.splitlines() if x.strip())
        else:
            out.append(json.loads(text))
    return out


def _mini_count(doc: dict[str, Any]) -> int:
    n = 0
    for m in doc.get("messages", []):
        if m.get("role") == "assistant":
            if m.get("tool_calls"):
                n += len(m["tool_calls"])
            elif isinstance(m.get("content"), str):
                n += sum(1 for b in _FENCE.findall(m["content"]) if b.strip())
    return n


def _swe_count(doc: dict[str, Any]) -> int:
    entries = doc.get("trajectory") or [
        m for m in doc.get("history") or [] if m.get("role") == "assistant"
    ]  # a file without `trajectory[]` holds its actions on the history's assistant turns
    actions = [(e.get("action") or "").strip() for e in entries]
    return sum(1 for a in actions if a and a.split()[0] not in _NAV)


# OpenHands runs one command per `run`, one cell per `run_ipython`, and writes on `write` and on
# `edit` unless it only views (older layouts keep the arguments inline instead of under `args`).
def _openhands_count(doc: Any) -> int:
    records = doc if isinstance(doc, list) and doc and "history" in doc[0] else [doc]
    n = 0
    for rec in records:
        events = rec.get("history") if isinstance(rec, dict) else rec
        for e in events if isinstance(events, list) else []:
            if not isinstance(e, dict) or not isinstance(e.get("action"), str):
                continue
            args = e.get("args", e)
            a = e["action"]
            n += (
                (a == "run" and bool((args.get("command") or "").strip()))
                or (a == "run_ipython" and bool((args.get("code") or "").strip()))
                or a == "write"
                or (a == "edit" and args.get("command") not in ("view", "undo_edit"))
            )
    return n


@pytest.mark.parametrize(("fmt", "folders", "suffix", "count"), [
    ("mini_swe_agent", ["mini_v1", "mini_v2"], ".traj.json", _mini_count),
    ("swe_agent", ["swe_agent_0x", "swe_agent_1x"], ".traj", _swe_count),
    ("openhands", ["openhands"], ".json", _openhands_count),
    ("openhands", ["openhands"], ".jsonl", _openhands_count),
])  # fmt: skip
def test_commands_found_match_what_the_format_holds(
    results: list[dict[str, Any]], fmt: str, folders: list[str], suffix: str, count: Any
) -> None:
    expected = sum(
        count(d) for f in folders for d in _docs(f, suffix) if isinstance(d, dict | list)
    )
    found = sum(r["commands"] for r in results if r["format"] == fmt
                and r["file"].endswith(f"{suffix}.gz")
                and any(f"/{f}/" in r["file"] for f in folders))  # fmt: skip
    assert expected > 10
    assert abs(found - expected) <= 0.01 * expected, (found, expected)


def test_every_folder_is_read(results: list[dict[str, Any]]) -> None:
    per = Counter(Path(r["file"]).relative_to(CORPUS).parts[0] for r in results)  # type: ignore[arg-type]
    assert {"mini_v1", "mini_v2", "swe_agent_0x", "swe_agent_1x", "openhands", "openhands_v1",
            "claude_code", "tau_bench", "adp"} <= set(per)  # fmt: skip
