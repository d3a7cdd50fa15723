"""`corral rules list`, `corral rules macros` and `corral rules test FILE`: the packs, their
macros, and fixtures checked against them.

A fixture file is YAML (a list, or {fixtures: [...]}) or JSONL; each fixture holds one of `command`,
`argv` or `event`, and any of `expect` (rule ids or categories that must be found; `[]` means
nothing found), `absent` (ids or categories that must not be) and `verdict` (allow/ask/deny, under
`policy` or --policy). Exit 1 when any fixture fails, 3 on unreadable input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from corral.policy.loader import PolicyError, load_policy
from corral.rules import Finding, RuleEngine, RulePackError, verdict

rules_app = typer.Typer(
    help="List rule packs and test fixtures against them.", no_args_is_help=True
)
BAD_INPUT = 3


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")


def _engine(packs: list[Path] | None) -> RuleEngine:
    try:
        return RuleEngine.load(packs) if packs else RuleEngine.default()
    except RulePackError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(BAD_INPUT) from None


@rules_app.command("list")
def list_rules(
    packs: list[Path] | None = typer.Option(None, "--rules", help="pack files or directories"),
    category: str | None = typer.Option(None, "--category", help="only this category"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """Every rule: id, category, severity, ATT&CK id, default response, kind, description."""
    engine = _engine(packs)
    rules = [r for r in engine.rules if category is None or r.category == category]
    if as_json:
        for r in rules:
            typer.echo(json.dumps({"id": r.id, "category": r.category, "severity": r.severity,
                                   "attack": r.attack, "response": r.response, "match": r.match,
                                   "description": r.description}))  # fmt: skip
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=max((len(r.id) for r in rules), default=2))
    for col in ("category", "severity", "attack", "response", "match", "description"):
        table.add_column(col)
    for r in rules:
        table.add_row(r.id, r.category, r.severity, r.attack or "", r.response, r.match,
                      escape(r.description))  # fmt: skip
    Console().print(table)
    Console().print(f"{len(rules)} rule(s)")


@rules_app.command("macros")
def list_macros(
    packs: list[Path] | None = typer.Option(None, "--rules", help="pack files or directories"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """Every macro the packs define (the `user_known_*` hooks a policy's `rules.macros` fills in
    say `never` until it does): name, language, condition, where it is defined."""
    engine = _engine(packs)
    macros = [(m, origin) for m, origin in engine.macros.values()]
    if as_json:  # `when`: null for a hook nobody filled in
        for m, origin in macros:
            typer.echo(json.dumps({"macro": m.macro, "match": m.match, "when": m.when,
                                   "pack": origin, "description": m.description}))  # fmt: skip
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("macro", no_wrap=True)
    for col in ("match", "when", "description"):
        table.add_column(col)
    for m, _ in macros:
        when = "never" if m.when is None else json.dumps(m.when)
        table.add_row(m.macro, m.match, escape(when), escape(m.description))
    Console().print(table)
    Console().print(f"{len(macros)} macro(s)")


def _load_fixtures(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON: {err}") from None
        return out
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "fixtures" in data:
        data = data["fixtures"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of fixtures (or {{fixtures: [...]}})")
    return data


def _examples(engine: RuleEngine) -> list[dict[str, Any]]:
    """The packs' own examples as fixtures."""
    out: list[dict[str, Any]] = []
    for r in engine.rules:
        key = "event" if r.match == "event" else "command"
        out += [{key: ex, "expect": [r.id], "name": f"{r.id} example"} for ex in r.examples]
        out += [{key: ex, "absent": [r.id], "name": f"{r.id} counter-example"}
                for ex in r.counter_examples]  # fmt: skip
    return out


def run_fixture(
    engine: RuleEngine, fx: Any, default_policy: str
) -> tuple[bool, str, list[Finding]]:
    """(passed, why, findings) for one fixture."""
    if not isinstance(fx, dict):
        return False, "fixture must be a mapping", []
    if "command" in fx:
        findings = engine.check_command(str(fx["command"]))
    elif "argv" in fx and isinstance(fx["argv"], list):
        findings = engine.check_argv([str(a) for a in fx["argv"]])
    elif "event" in fx and isinstance(fx["event"], dict):
        findings = engine.match_event(fx["event"])
    else:
        return False, "needs one of: command, argv (list), event (mapping)", []
    got = {f.rule for f in findings} | {f.category for f in findings}
    problems = []
    expect = fx.get("expect")
    if expect is not None:
        expect = [expect] if isinstance(expect, str) else list(expect)
        if not expect and findings:
            problems.append("expected no findings")
        missing = [e for e in expect if e not in got]
        if missing:
            problems.append("missing " + ", ".join(missing))
    absent = fx.get("absent") or []
    present = [a for a in ([absent] if isinstance(absent, str) else absent) if a in got]
    if present:
        problems.append("unexpected " + ", ".join(present))
    if "verdict" in fx:
        try:
            pol = load_policy(fx.get("policy") or default_policy)
        except PolicyError as err:
            return False, str(err), findings
        v = verdict(findings, pol)
        if v != fx["verdict"]:
            problems.append(f"verdict {v}, expected {fx['verdict']}")
    if expect is None and "verdict" not in fx and not absent:
        problems.append("fixture states no expectation (expect, absent or verdict)")
    return not problems, "; ".join(problems), findings


@rules_app.command("test")
def test_rules(
    file: Path | None = typer.Argument(
        None, help="fixtures (YAML or JSONL); omit to run the packs' examples"
    ),
    packs: list[Path] | None = typer.Option(None, "--rules", help="pack files or directories"),
    policy: str = typer.Option(
        "rl-strict", "--policy", help="policy: its rules section, and `verdict` expectations"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print failures only"),
) -> None:
    """Check fixtures against the rules (--rules, else those --policy's `rules:` section asks for:
    extra packs, disabled rules, exceptions, macros); exit 1 when any fails."""
    if packs:
        engine = _engine(packs)
    else:
        try:
            engine = RuleEngine.for_policy(load_policy(policy))
        except (PolicyError, RulePackError) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(BAD_INPUT) from None
    if file is None:
        fixtures = _examples(engine)
        origin = "pack examples"
    else:
        try:
            fixtures = _load_fixtures(file)
        except (OSError, ValueError, yaml.YAMLError) as err:
            typer.echo(f"cannot read fixtures: {err}", err=True)
            raise typer.Exit(BAD_INPUT) from None
        origin = str(file)
    console = Console()
    failed = 0
    for i, fx in enumerate(fixtures, 1):
        ok, why, findings = run_fixture(engine, fx, policy)
        failed += not ok
        if ok and quiet:
            continue
        label = fx.get("name") if isinstance(fx, dict) else None
        what = label or (
            fx.get("command") or fx.get("argv") or fx.get("event") if isinstance(fx, dict) else fx
        )
        mark = "[green]pass[/]" if ok else "[bold red]FAIL[/]"
        line = f"{mark} {i}: {escape(str(what)[:100])}"
        if not ok:
            line += f"\n      {escape(why)}; found: {escape(', '.join(f.rule for f in findings) or 'nothing')}"
        console.print(line)
    console.print(f"{len(fixtures) - failed}/{len(fixtures)} fixture(s) passed ({escape(origin)})")
    raise typer.Exit(1 if failed else 0)
