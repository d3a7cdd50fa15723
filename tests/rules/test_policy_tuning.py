"""A policy tunes the packs: extra packs, disabled rules, exceptions (with named lists); mistakes are
refused at load, naming the rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.policy.loader import policy_from_mapping
from corral.rules import RuleEngine, RulePackError
from corral.rules.gate import make_gate

TUNNEL = "ssh -R 8080:localhost:22 user@203.0.113.5"


def _pol(**rules: object):  # type: ignore[no-untyped-def]
    return policy_from_mapping({"extends": "rl-strict", "rules": rules})


def test_disabled_rule_never_fires_anywhere() -> None:
    eng = RuleEngine.for_policy(_pol(disabled=["tunnel.ssh_remote_forward"]))
    assert "tunnel.ssh_remote_forward" not in [f.rule for f in eng.check_command(TUNNEL)]
    assert "tunnel.ssh_remote_forward" in [
        f.rule for f in RuleEngine.default().check_command(TUNNEL)
    ]


def test_command_exception_with_a_named_list() -> None:
    pol = _pol(lists={"bastions": ["bastion\\.example\\.org"]},
               exceptions=[{"rule": "tunnel.ssh_remote_forward", "when": {"last_arg": "bastion\\.example\\.org"},
                            "comment": "our jump host"}])  # fmt: skip
    pol.rules.exceptions[0].when = {"args": ["$bastions"]}
    eng = RuleEngine.for_policy(pol)
    assert "tunnel.ssh_remote_forward" not in [
        f.rule for f in eng.check_command("ssh -R 8080:localhost:22 bastion.example.org")
    ]
    assert "tunnel.ssh_remote_forward" in [f.rule for f in eng.check_command(TUNNEL)]
    gate = make_gate(pol)
    assert gate(TUNNEL, None, 1).verdict == "deny"  # type: ignore[arg-type, union-attr]


def test_event_exception_for_the_monitor() -> None:
    pol = _pol(exceptions=[{"rule": "mining.cpu_sustained", "when": {"comm": {"in": ["ffmpeg"]}}}])
    eng = RuleEngine.for_policy(pol)
    facts = {
        "kind": "cpu_sustained",
        "comm": "ffmpeg",
        "cpu": {"corroborated": False, "long": False},
    }
    assert eng.match_event(facts) == []
    assert [f.rule for f in eng.match_event({**facts, "comm": "ninja"})] == ["mining.cpu_sustained"]


def test_extra_pack_adds_rules(tmp_path: Path) -> None:
    extra = tmp_path / "site.yaml"
    extra.write_text(
        "pack: site\nrules:\n  - id: policy.site_tool\n    category: policy\n    severity: low\n"
        "    description: the site's forbidden tool\n    match: command\n"
        "    when: {program: [frobnicate]}\n    examples: [frobnicate x]\n"
    )
    eng = RuleEngine.for_policy(_pol(packs=[str(extra)]))
    assert [f.rule for f in eng.check_command("frobnicate now")] == ["policy.site_tool"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"disabled": ["tunnel.nope"]}, "rules.disabled: no rule 'tunnel.nope'"),
        (
            {"exceptions": [{"rule": "tunnel.nope", "when": {"args": ["x"]}}]},
            r"rule tunnel\.nope\): no such rule",
        ),
        (
            {"exceptions": [{"rule": "tunnel.ssh_remote_forward", "when": {"argz": ["x"]}}]},
            r"rule tunnel\.ssh_remote_forward.*argz: unknown field",
        ),
        (
            {"exceptions": [{"rule": "mining.cpu_sustained", "when": {"comm": {"likes": 1}}}]},
            r"rule mining\.cpu_sustained.*unknown operator 'likes'",
        ),
        (
            {"exceptions": [{"rule": "tunnel.ssh_remote_forward", "when": {"args": ["$nolist"]}}]},
            "no list 'nolist'",
        ),
    ],
    ids=["disabled", "unknown-rule", "unknown-field", "unknown-op", "unknown-list"],
)
def test_mistakes_are_refused_naming_the_rule(rules: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(RulePackError, match=message):
        RuleEngine.for_policy(_pol(**rules))


def test_check_cli_uses_the_policy_rules(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text(
        "extends: rl-strict\nrules:\n  disabled: [tunnel.ssh_remote_forward, tunnel.ssh_outbound]\n"
    )
    out = CliRunner().invoke(app, ["check", "--policy", str(pol), "--json", TUNNEL])
    rules = [f["rule"] for f in json.loads(out.stdout)["findings"]]
    assert "tunnel.ssh_remote_forward" not in rules
    pol.write_text("extends: rl-strict\nrules:\n  disabled: [tunnel.nope]\n")
    bad = CliRunner().invoke(app, ["check", "--policy", str(pol), TUNNEL])
    assert bad.exit_code == 3 and "tunnel.nope" in bad.output
