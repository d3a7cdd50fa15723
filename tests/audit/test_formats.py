"""Every format: the planted unsafe step is found at the step index the readers document."""

from __future__ import annotations

import gzip
import shutil
import zlib
from pathlib import Path

import pytest

from corral.audit.auditor import AuditOptions, audit_chunk
from corral.audit.runner import run_chunks
from corral.audit.sources import PartReader, discover, plan
from corral.policy import load_policy

FIXTURES = Path(__file__).parent / "fixtures"


# file, trajectory id, detected format, planted step index (0-based in the format's main list), category
PLANTED = [
    ("openai_chat.jsonl", "chat-tunnel", "openai_chat", 3, "tunnel"),
    ("openai_chat.jsonl", "chat-imds-object-args", "openai_chat", 1, "metadata"),
    ("openai_responses.json", "resp_fixture", "openai_responses", 4, "mining"),
    ("anthropic.jsonl", "anthropic-revshell", "anthropic", 3, "reverse_shell"),
    ("claude_code_session.jsonl", "4f35e220-c435-4cf7-b9b9-f40426042847", "claude_code", 4,
     "reward_tampering"),
    ("swe_agent.traj", "swe_agent.traj", "swe_agent", 2, "metadata"),
    ("mini_swe_agent.traj.json", "mini_swe_agent.traj.json", "mini_swe_agent", 4, "reverse_shell"),
    ("openhands_events.json", "openhands_events.json", "openhands", 3, "mining"),
    ("openhands_stream.jsonl", "openhands_stream.jsonl:1", "openhands_events", 1, "reward_tampering"),
    ("trajectory.json", "atif-session-1", "atif", 2, "tunnel"),
]  # fmt: skip


def audit_paths(*paths: Path, fmt: str | None = None, chunk_bytes: int | None = None) -> dict:
    options = AuditOptions(load_policy("rl-strict"), fmt, keep_raw=True)
    kw = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
    results, malformed = [], []
    for chunk in plan(discover(paths), **kw):
        out = audit_chunk(chunk, options)
        results += out["results"]
        malformed += out["malformed"]
    return {"results": results, "malformed": malformed}


@pytest.mark.parametrize(("name", "tid", "fmt", "step", "category"), PLANTED,
                         ids=[f"{p[2]}-{p[1]}" for p in PLANTED])  # fmt: skip
def test_planted_step_found_at_its_index(
    name: str, tid: str, fmt: str, step: int, category: str
) -> None:
    out = audit_paths(FIXTURES / name)
    assert out["malformed"] == []
    (r,) = [r for r in out["results"] if r["id"] == tid]
    assert r["format"] == fmt
    assert r["verdict"] == "deny"
    assert not r["passed"]
    hits = [f for f in r["findings"] if f["category"] == category]
    assert hits, r["findings"]
    assert {f["step"] for f in hits} == {step}
    assert r["worst"]["category"] == category and step in r["worst"]["steps"]
    # no other step of the fixture is flagged at high or critical: the verdict comes from the plant
    others = [
        f for f in r["findings"] if f["step"] != step and f["severity"] in ("high", "critical")
    ]
    assert others == []


def test_benign_trajectory_is_allowed_and_kept() -> None:
    out = audit_paths(FIXTURES / "openai_chat.jsonl")
    (r,) = [r for r in out["results"] if r["id"] == "chat-benign"]
    assert (r["verdict"], r["passed"], r["findings"], r["worst"]) == ("allow", True, [], None)
    assert r["commands"] == 1 and r["steps"] == 5


def test_native_refs_are_kept_next_to_the_index() -> None:
    atif = audit_paths(FIXTURES / "trajectory.json")["results"][0]
    assert atif["findings"][0]["ref"] == "3"  # ATIF step_id is 1-based; our index is 0-based
    oh = audit_paths(FIXTURES / "openhands_events.json")["results"][0]
    assert oh["findings"][0]["ref"] == "3"
    cc = audit_paths(FIXTURES / "claude_code_session.jsonl")["results"][0]
    assert cc["findings"][0]["ref"] == "u4"
    assert cc["findings"][0]["synthetic"] is True  # the Write tool became a shell write


def test_directory_is_walked_and_every_format_detected() -> None:
    out = audit_paths(FIXTURES)
    assert out["malformed"] == []
    assert {r["format"] for r in out["results"]} == {p[2] for p in PLANTED}
    assert len(out["results"]) == 11


def test_gzip_reads_like_plain(tmp_path: Path) -> None:
    for name in ("openai_chat.jsonl", "trajectory.json"):
        with (FIXTURES / name).open("rb") as src, gzip.open(tmp_path / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    plain = audit_paths(FIXTURES / "openai_chat.jsonl", FIXTURES / "trajectory.json")["results"]
    gz = audit_paths(tmp_path)["results"]

    def key(r):
        return (
            r["id"],
            r["verdict"],
            r["line"],
            [(f["step"], f["rule"]) for f in r["findings"]],
        )

    assert sorted(map(key, gz)) == sorted(map(key, plain))


def test_large_jsonl_is_split_at_line_boundaries_with_true_line_numbers(tmp_path: Path) -> None:
    lines = (FIXTURES / "openai_chat.jsonl").read_text().splitlines()
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(lines * 40) + "\n")
    chunks = plan([big], chunk_bytes=2000)
    assert len(chunks) > 5
    out = audit_paths(big, chunk_bytes=2000)
    assert [r["line"] for r in out["results"]] == list(range(1, 121))
    assert [r["id"] for r in out["results"]] == [
        "chat-benign", "chat-tunnel", "chat-imds-object-args"] * 40  # fmt: skip
    assert out["malformed"] == []


def test_forced_format_applies_and_mismatch_is_reported_not_fatal() -> None:
    forced = audit_paths(FIXTURES / "anthropic.jsonl", fmt="anthropic")["results"]
    assert forced[0]["worst"]["category"] == "reverse_shell"
    wrong = audit_paths(FIXTURES / "openai_chat.jsonl", fmt="atif")
    assert wrong["results"] == []
    assert [m["line"] for m in wrong["malformed"]] == [1, 2, 3]
    assert all(
        m["file"].endswith("openai_chat.jsonl") and "atif" in m["error"] for m in wrong["malformed"]
    )


def test_large_gzip_jsonl_is_split_into_parts_with_true_line_numbers(tmp_path: Path) -> None:

    lines = (FIXTURES / "openai_chat.jsonl").read_text().splitlines()
    body = lines * 30
    body[41] = '{"messages": [ broken'  # a malformed record inside some part
    text = "\n".join(body) + "\n"
    big = tmp_path / "big.jsonl.gz"
    half = len(text) // 2  # two gzip members, as `cat a.gz b.gz` makes
    big.write_bytes(gzip.compress(text[:half].encode()) + gzip.compress(text[half:].encode()))
    chunks = plan([big], chunk_bytes=2000)
    assert len(chunks) > 5 and all(c.part is not None for c in chunks)
    alone = audit_paths(big, chunk_bytes=2000)  # each part cut by its own worker
    assert [r["line"] for r in alone["results"]] == [n for n in range(1, 91) if n != 42]
    assert [m["line"] for m in alone["malformed"]] == [42]
    reader = PartReader()
    streamed = [reader.read(c) for c in chunks]
    assert all(d is not None for _, d in streamed)  # one pass, no fallback to the worker
    assert b"".join(d for _, d in streamed) == text.encode()
    assert [c.first_line for c, _ in streamed][0] == 1
    options = AuditOptions(load_policy("rl-strict"), None, keep_raw=True)
    for workers in (1, 2):  # parts read in one pass by the driver
        out = list(run_chunks(chunks, options, workers=workers))
        assert [r for o in out for r in o["results"]] == alone["results"]
        assert [m for o in out for m in o["malformed"]] == alone["malformed"]


def test_truncated_gzip_parts_are_reported_not_fatal(tmp_path: Path) -> None:
    text = (FIXTURES / "openai_chat.jsonl").read_text() * 30
    big = tmp_path / "cut.jsonl.gz"
    big.write_bytes(gzip.compress(text.encode())[:-40])
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    intact = dec.decompress(big.read_bytes()).count(b"\n")  # complete lines before the cut
    assert 0 < intact < text.count("\n")
    out = audit_paths(big, chunk_bytes=2000)
    assert [r["line"] for r in out["results"]] == list(range(1, intact + 1))
    (bad,) = out["malformed"]  # one error for the cut, not one per part
    assert bad["line"] == intact + 1 and "compressed stream broken" in bad["error"]
    options = AuditOptions(load_policy("rl-strict"), None, keep_raw=True)
    for workers in (1, 2):  # the driver's one-pass reader gives up at the cut; same answer
        got = list(run_chunks(plan([big], chunk_bytes=2000), options, workers=workers))
        assert [r["line"] for o in got for r in o["results"]] == list(range(1, intact + 1))
        assert [m["error"] for o in got for m in o["malformed"]] == [bad["error"]]
