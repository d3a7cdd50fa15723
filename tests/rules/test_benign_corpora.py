"""False positives on the benign dev corpora (shared/corpora beside the repository): under rl-strict,
at most 0.1 % of the plain lines may be denied, fewer than 0.5 % raise a high/critical finding. Nothing runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.policy.loader import load_policy
from corral.rules import RuleEngine, severity_rank, verdict

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [Path(os.environ.get("CORRAL_CORPORA", ROOT.parent / "shared" / "corpora" / "benign")),
              Path("/work/shared/corpora/benign")]  # fmt: skip
CORPORA = next((p for p in CANDIDATES if p.is_dir()), None)
PLAIN = sorted(CORPORA.glob("*.plain.dev.txt")) if CORPORA else []


@pytest.mark.skipif(not PLAIN, reason="the shared benign corpora are not beside this checkout")
@pytest.mark.parametrize("path", PLAIN, ids=[p.name for p in PLAIN])
def test_plain_corpus_false_positive_rate(path: Path) -> None:
    engine = RuleEngine.default()
    policy = load_policy("rl-strict")
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    denied = high = 0
    for line in lines:
        findings = engine.check_command(line)
        denied += verdict(findings, policy) == "deny"
        high += any(severity_rank(f.severity) >= severity_rank("high") for f in findings)
    assert len(lines) > 1000
    assert denied / len(lines) <= 0.001, f"{denied}/{len(lines)} denied"
    assert high / len(lines) < 0.005, f"{high}/{len(lines)} high or critical"
