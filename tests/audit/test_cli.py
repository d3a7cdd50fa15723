"""`corral audit` end to end through the real CLI: outputs, malformed input, keep/drop, report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
MALFORMED = Path(__file__).parent / "malformed"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_malformed_records_are_reported_with_file_and_line_and_skipped(cli, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    res = cli(str(MALFORMED), "--json", str(out))
    assert res.exit_code == 0, res.output
    rows = read_jsonl(out)
    bad = [r for r in rows if r["kind"] == "malformed"]
    assert [(Path(r["file"]).name, r["line"]) for r in bad] == [
        ("chat_with_bad_lines.jsonl", 2), ("chat_with_bad_lines.jsonl", 3),
        ("chat_with_bad_lines.jsonl", 4)]  # fmt: skip
    assert "invalid JSON" in bad[0]["error"]
    assert "unrecognised" in bad[1]["error"]
    assert "function.name" in bad[2]["error"]
    good = {r["id"]: r for r in rows if r["kind"] == "trajectory"}
    assert set(good) == {"ok-1", "ok-2"}  # the run went on past the bad lines
    assert good["ok-2"]["verdict"] == "deny" and good["ok-2"]["line"] == 5
    assert "chat_with_bad_lines.jsonl:2" in res.output
    assert "3 malformed" in res.output


def test_json_fields(cli, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert cli(str(FIXTURES / "trajectory.json"), "--json", str(out)).exit_code == 0
    (r,) = read_jsonl(out)
    assert set(r) == {"kind", "file", "line", "item", "format", "id", "steps", "commands",
                      "actions", "verdict", "passed", "worst", "findings"}  # fmt: skip
    assert set(r["worst"]) == {"rule", "category", "severity", "attack", "message", "steps"}
    assert set(r["findings"][0]) == {"step", "ref", "rule", "category", "severity", "attack",
                                     "message", "command", "synthetic"}  # fmt: skip


def test_keep_and_drop_hold_the_original_records(cli, tmp_path: Path) -> None:
    keep, drop, out = tmp_path / "keep.jsonl", tmp_path / "drop.jsonl", tmp_path / "r.jsonl"
    res = cli(str(FIXTURES), "--keep", str(keep), "--drop", str(drop), "--json", str(out))
    assert res.exit_code == 0, res.output
    source_lines = (FIXTURES / "openai_chat.jsonl").read_text().splitlines()
    kept = keep.read_text().splitlines()
    assert kept == [source_lines[0]]  # chat-benign, byte for byte
    dropped = drop.read_text().splitlines()
    assert source_lines[1] in dropped and source_lines[2] in dropped
    session = (FIXTURES / "claude_code_session.jsonl").read_text().splitlines()
    assert all(line in dropped for line in session)  # a session goes whole
    stream = (FIXTURES / "openhands_stream.jsonl").read_text().splitlines()
    assert all(line in dropped for line in stream)
    assert len(dropped) == 8 + len(session) + len(stream)  # 10 denied: 8 one-record ones
    # both files are ready to feed back in: re-auditing gives the same verdicts
    again_keep, again_drop = tmp_path / "k2.jsonl", tmp_path / "d2.jsonl"
    assert cli(str(keep), "--json", str(again_keep)).exit_code == 0
    assert cli(str(drop), "--json", str(again_drop)).exit_code == 0
    assert {r["verdict"] for r in read_jsonl(again_keep)} == {"allow"}
    redone = read_jsonl(again_drop)
    assert {r["verdict"] for r in redone} == {"deny"}
    first = {r["id"]: r["worst"]["steps"] for r in read_jsonl(out) if r["verdict"] == "deny"}
    assert len(redone) == len(first)
    for r in redone:
        if r["id"] in first:  # ids derived from file names change when records move
            assert r["worst"]["steps"] == first[r["id"]]


def test_html_report_shows_the_planted_step_in_context(cli, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    res = cli(str(FIXTURES / "openai_chat.jsonl"), str(FIXTURES / "trajectory.json"),
              "--report", str(report))  # fmt: skip
    assert res.exit_code == 0, res.output
    html = report.read_text()
    assert "ssh -N -R 2222:localhost:22 tunnel@203.0.113.7" in html
    assert "chat-tunnel" in html and "atif-session-1" in html
    # previous and next steps of the planted step (chat-tunnel step 3) are shown
    assert "step 2 · tool" in html and "Makefile src" in html
    assert "step 4 · tool" in html
    assert "<svg" in html and "tunnel" in html
    # self-contained: no scripts, no external stylesheets, images or fonts
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def test_bad_arguments_exit_2(cli, tmp_path: Path) -> None:
    assert cli(str(tmp_path / "missing.jsonl")).exit_code == 2
    assert cli(str(FIXTURES), "--format", "nope").exit_code == 2
    assert cli(str(FIXTURES), "--workers", "0").exit_code == 2
    assert cli(str(FIXTURES), "--policy", "no-such-policy").exit_code == 2


def test_workers_two_gives_the_same_results_as_one(cli, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for i in range(6):
        shutil.copytree(FIXTURES, corpus / f"copy{i}")
    big = corpus / "big.jsonl"
    big.write_text(
        (FIXTURES / "openai_chat.jsonl").read_text() * 2000
    )  # > one chunk? no: many lines
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    k1, k2 = tmp_path / "k1.jsonl", tmp_path / "k2.jsonl"
    assert cli(str(corpus), "--json", str(one), "--keep", str(k1)).exit_code == 0
    assert cli(str(corpus), "--json", str(two), "--keep", str(k2), "--workers", "2").exit_code == 0
    assert one.read_text() == two.read_text()
    assert k1.read_text() == k2.read_text()
    rows = read_jsonl(one)
    assert len(rows) == 6 * 11 + 6000
    assert json.loads(one.read_text().splitlines()[0])["kind"] == "trajectory"
