"""Bad packs fail at load with errors naming the file, the rule and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.rules import RuleEngine, RulePackError

GOOD = """
pack: demo
category: tunnel
rules:
  - id: demo.rule
    severity: high
    attack: T1572
    description: demo
    match: command
    when: {program: [ssh], flags: [-R]}
"""


def load(tmp_path: Path, text: str) -> RuleEngine:
    p = tmp_path / "pack.yaml"
    p.write_text(text)
    return RuleEngine.load([p])


def test_good_pack_loads(tmp_path: Path) -> None:
    eng = load(tmp_path, GOOD)
    assert [f.rule for f in eng.check_command("ssh -R 1:a:2 h")] == ["demo.rule"]
    assert eng.check_command("ssh h") == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (("severity: high", "severity: huge"), "severity"),
        (("flags: [-R]", "flags: [R]"), "flags"),
        (("program: [ssh]", "program: [ssh], nope: 1"), "unknown field"),
        (("program: [ssh]", "program: [ssh], args: ['(']"), "bad regular expression"),
        (("attack: T1572", "attack: 1572"), "attack"),
        (("id: demo.rule", "id: Demo"), "id"),
        (("match: command", "match: sometimes"), "match"),
        (("category: tunnel", "category: weather"), "category"),
    ],
)
def test_errors_name_file_rule_and_field(
    tmp_path: Path, change: tuple[str, str], needle: str
) -> None:
    with pytest.raises(RulePackError) as err:
        load(tmp_path, GOOD.replace(*change))
    msg = str(err.value)
    assert "pack.yaml" in msg and needle in msg
    if change[0] != "id: demo.rule":
        assert "demo.rule" in msg


def test_bad_event_operator(tmp_path: Path) -> None:
    text = GOOD.replace("match: command", "match: event").replace(
        "when: {program: [ssh], flags: [-R]}", "when: {dst.port: {approx: 3}}"
    )
    with pytest.raises(RulePackError, match="unknown operator 'approx'"):
        load(tmp_path, text)


def test_duplicate_ids_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(RulePackError, match="duplicate rule id demo.rule"):
        RuleEngine.load([tmp_path])
    with pytest.raises(RulePackError, match="not valid YAML"):
        load(tmp_path, "pack: [")


def test_command_examples_must_be_strings(tmp_path: Path) -> None:
    text = GOOD + "    examples:\n      - curl -H 'A: b' x\n"
    text = text.replace(
        "    examples:\n      - curl -H 'A: b' x\n", "    examples:\n      - curl -H A: b\n"
    )
    with pytest.raises(RulePackError, match="examples"):
        load(tmp_path, text)


def test_duplicate_keys_are_refused_naming_the_rule(tmp_path: Path) -> None:
    pack = tmp_path / "dup.yaml"
    pack.write_text(
        "pack: t\nrules:\n  - id: t.first\n    category: tunnel\n    severity: high\n"
        "    description: d\n    match: command\n    when: {program: [ssh]}\n"
        "    when: {program: [scp]}\n    examples: [ssh x]\n"
    )
    with pytest.raises(RulePackError, match=r"rule t\.first: duplicate key 'when' \(line 9\)"):
        RuleEngine.load(pack)


def test_record_rules_declare_ids_and_match_nothing(tmp_path: Path) -> None:
    pack = tmp_path / "rec.yaml"
    pack.write_text(
        "pack: r\nrules:\n  - {id: sensor.seen, match: record, category: lifecycle,"
        " severity: info, description: d}\n"
    )
    eng = RuleEngine.load(pack)
    assert eng.rule("sensor.seen") is not None
    assert eng.match_event({"kind": "exec", "argv": ["x"]}) == []
    pack.write_text(
        "pack: r\nrules:\n  - {id: sensor.seen, match: record, category: lifecycle,"
        " severity: info, description: d, when: {kind: exec}}\n"
    )
    with pytest.raises(RulePackError, match="sensor.seen"):
        RuleEngine.load(pack)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            "{kind: exec, cofnig.text: {regex: pool}}",
            r"rule t\.ev.*unknown event field 'cofnig\.text'",
        ),
        ("{kind: exec, cpu.cors: {gte: 1}}", r"rule t\.ev.*unknown event field 'cpu\.cors'"),
        ("{kind: exce}", r"rule t\.ev.*unknown fact kind exce"),
    ],
    ids=["field", "sub-field", "kind"],
)
def test_unknown_facts_and_fields_are_refused_naming_the_rule(tmp_path: Path, when: str,
                                                              message: str) -> None:  # fmt: skip
    pack = tmp_path / "ev.yaml"
    pack.write_text(
        "pack: t\nrules:\n  - id: t.ev\n    category: mining\n    severity: high\n"
        f"    description: d\n    match: event\n    when: {when}\n"
    )
    with pytest.raises(RulePackError, match=r"(?s)" + message):
        RuleEngine.load(pack)
