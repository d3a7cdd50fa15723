"""`corral check`: the gate's verdict on shell commands, without running them.

Exit status: 0 every command allowed, 1 the worst verdict was ask, 2 the worst was deny, 3 bad input
(unreadable file, unknown policy). `--batch` reads one command per line (`-` for stdin) and writes
one JSON object per line, in the same order, with `--json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import typer

from corral.policy.loader import PolicyError, load_policy
from corral.policy.model import Policy
from corral.rules import Finding, RuleEngine, RulePackError, verdict
from corral.rules.bounded import bounded_findings

EXIT = {"allow": 0, "ask": 1, "deny": 2}
BAD_INPUT = 3
SEVERITY_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "red",
                  "critical": "bold red"}  # fmt: skip
VERDICT_STYLE = {"allow": "green", "ask": "yellow", "deny": "bold red"}


def register(app: typer.Typer) -> None:
    app.command()(check)


def check_line(engine: RuleEngine, command: str, policy: Policy) -> dict[str, Any]:
    """The `--json` object for one command (field names are a contract)."""
    findings = bounded_findings(command, engine)
    return {"command": command, "verdict": verdict(findings, policy),
            "findings": [f.brief() for f in findings]}  # fmt: skip


def check(
    command: str | None = typer.Argument(None, help="the shell command to check (quote it)"),
    policy: str = typer.Option("rl-strict", "--policy", help="preset name or policy YAML file"),
    as_json: bool = typer.Option(False, "--json", help="JSON output (one object per line)"),
    batch: Path | None = typer.Option(
        None, "--batch", help="file with one command per line ('-' for stdin)"
    ),
) -> None:
    """Verdict (allow / ask / deny) and findings for COMMAND or each line of --batch FILE.

    Exit status: 0 allow, 1 ask, 2 deny (the worst verdict over a batch), 3 bad input.
    """
    try:
        pol = load_policy(policy)
    except PolicyError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(BAD_INPUT) from None
    if (command is None) == (batch is None):
        typer.echo("give either COMMAND or --batch FILE (not both)", err=True)
        raise typer.Exit(BAD_INPUT)
    try:
        engine = RuleEngine.for_policy(pol)  # the policy's rules: section (packs, disabled, ...)
    except RulePackError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(BAD_INPUT) from None
    if batch is None:
        assert command is not None
        result = check_line(engine, command, pol)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _print_one(command, result["verdict"], bounded_findings(command, engine), pol.name)
        raise typer.Exit(EXIT[result["verdict"]])
    try:
        stream: TextIO = sys.stdin if str(batch) == "-" else batch.open(encoding="utf-8",
                                                                         errors="replace")  # fmt: skip
    except OSError as err:
        typer.echo(f"cannot read {batch}: {err}", err=True)
        raise typer.Exit(BAD_INPUT) from None
    worst = 0
    with stream:
        if as_json:
            out = sys.stdout
            for line in stream:
                result = check_line(engine, line.rstrip("\r\n"), pol)
                worst = max(worst, EXIT[result["verdict"]])
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
            out.flush()
        else:
            worst = _print_batch(engine, stream, pol)
    raise typer.Exit(worst)


def _print_one(command: str, v: str, findings: list[Finding], policy: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[{VERDICT_STYLE[v]}]{v}[/] under {escape(policy)}: {escape(command)}")
    if not findings:
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("rule", no_wrap=True, min_width=max(len(f.rule) for f in findings))
    for col in ("category", "severity", "attack", "message"):
        table.add_column(col)
    for f in findings:
        table.add_row(f.rule, f.category, f"[{SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/]",
                      f.attack or "", escape(f.message))  # fmt: skip
    console.print(table)


def _print_batch(engine: RuleEngine, stream: TextIO, policy: Policy) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(show_header=True, header_style="bold")
    for col in ("#", "verdict", "command", "findings"):
        table.add_column(col)
    worst = 0
    counts = {"allow": 0, "ask": 0, "deny": 0}
    for i, line in enumerate(stream, 1):
        command = line.rstrip("\r\n")
        findings = bounded_findings(command, engine)
        v = verdict(findings, policy)
        counts[v] += 1
        worst = max(worst, EXIT[v])
        if v == "allow" and not findings:
            continue
        table.add_row(str(i), f"[{VERDICT_STYLE[v]}]{v}[/]", escape(command[:120]),
                      escape(", ".join(f"{f.rule} ({f.severity})" for f in findings)))  # fmt: skip
    if table.row_count:
        console.print(table)
    console.print(f"{sum(counts.values())} command(s): {counts['allow']} allow, {counts['ask']} ask,"
                  f" {counts['deny']} deny under {escape(policy.name)}")  # fmt: skip
    return worst
