"""`corral audit`: a verdict per recorded trajectory, at corpus scale.

--json FILE writes one JSON object per line:
  trajectory lines: {"kind": "trajectory", "file", "line" (1-based line of its first record, null
    for a whole-file JSON document), "item" (index in a top-level JSON array, else null), "format",
    "id", "steps" (step count), "commands" (commands analysed), "actions" (tool calls and text
    actions the reader saw, shell or not), "verdict" ("allow"|"ask"|"deny"|
    "unreadable": steps but no tool call or command the reader recognises, so nothing was checked;
    "unreadable" then says why),
    "passed" (what --keep took), "worst": null | {"rule", "category", "severity", "attack",
    "message", "steps": [step indexes where that rule fired]}, "findings": [{"step", "ref", "rule",
    "category", "severity", "attack", "message", "command", "synthetic", "via" (only for a file
    run after it was written: {"path", "written_at": [steps], "run_at": step}; the finding is on
    both steps)}]}
  malformed lines: {"kind": "malformed", "file", "line", "item", "error"}
Step indexes are 0-based positions in each format's main list (see corral.audit.readers).
--keep / --drop get the original records of passing / failing trajectories, one JSON record per
line (a Claude Code session or OpenHands event file: all of its lines). A trajectory passes when its
verdict is allow, or ask under a policy whose gate.ask is "allow", or unreadable with
--keep-unreadable. Malformed records go to neither.
The exit status is 0 when the run completes (verdicts are data, not errors), 1 when it read no
trajectory at all (empty inputs, or none in a format corral reads), 2 on bad arguments (a --ray
address where no cluster answers included).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral.audit.auditor import AuditOptions
from corral.audit.readers import FORMAT_NAMES
from corral.audit.report_html import render
from corral.audit.runner import run_chunks, start_workers
from corral.audit.sink import AuditSink
from corral.audit.sources import discover, plan
from corral.policy import PolicyError, load_policy

VERDICT_STYLE = {"deny": "bold red", "ask": "yellow", "allow": "green", "unreadable": "magenta"}


RAY_CONNECT_S = 5.0


def register(app: typer.Typer) -> None:
    app.command()(audit)


def audit(
    paths: list[Path] = typer.Argument(
        ..., help="trajectory files or directories (JSON, JSONL, .gz)"
    ),
    fmt: str = typer.Option("auto", "--format", help=f"auto, or one of: {', '.join(FORMAT_NAMES)}"),
    report: Path | None = typer.Option(None, "--report", help="write a self-contained HTML report"),
    json_out: Path | None = typer.Option(None, "--json", help="per-trajectory results as JSONL"),
    keep: Path | None = typer.Option(None, "--keep", help="JSONL of trajectories that pass"),
    drop: Path | None = typer.Option(None, "--drop", help="JSONL of trajectories that fail"),
    workers: int = typer.Option(1, "--workers", help="local worker processes"),
    ray_address: str | None = typer.Option(
        None, "--ray", help="Ray cluster address (e.g. auto, host:6379)"
    ),
    policy_spec: str = typer.Option(
        "rl-strict", "--policy", help="preset name or policy YAML file"
    ),
    max_record_mb: int = typer.Option(
        256, "--max-record-mb", help="skip (and report) a JSONL line or JSON file larger than this"
    ),
    keep_unreadable: bool = typer.Option(
        False,
        "--keep-unreadable",
        help="--keep also takes trajectories whose commands were not read",
    ),
) -> None:
    """Audit recorded agent trajectories: verdict, worst finding and its steps, per trajectory."""
    err = Console(stderr=True)
    if fmt != "auto" and fmt not in FORMAT_NAMES:
        err.print(f"--format must be auto or one of {', '.join(FORMAT_NAMES)} (got {fmt!r})")
        raise typer.Exit(2)
    if max_record_mb < 1:
        err.print(f"--max-record-mb must be at least 1 (got {max_record_mb})")
        raise typer.Exit(2)
    if workers < 1:
        err.print(f"--workers must be at least 1 (got {workers})")
        raise typer.Exit(2)
    if ray_address:
        problem = _ray_unreachable(ray_address)
        if problem:
            err.print(f"[red]error:[/] --ray {escape(ray_address)}: {escape(problem)}")
            raise typer.Exit(2)
    else:
        start_workers(workers)  # the forkserver warms up while we walk the paths
    try:
        policy = load_policy(policy_spec)
        chunks = plan(discover(paths), max_record=max_record_mb * 1024 * 1024)
    except (PolicyError, FileNotFoundError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    options = AuditOptions(policy, None if fmt == "auto" else fmt, keep_raw=bool(keep or drop),
                           context=report is not None, json_lines=json_out is not None,
                           keep_unreadable=keep_unreadable)  # fmt: skip
    sink = AuditSink(json_out, keep, drop)
    started = time.perf_counter()
    total = sum(c.size for c in chunks)
    try:
        with Progress(
            TextColumn("[bold]auditing"), BarColumn(), DownloadColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
            transient=False,
        ) as progress:  # fmt: skip
            task = progress.add_task("", total=total or 1)
            for result in _guarded(run_chunks(chunks, options, workers, ray_address), ray_address):
                sink.add_chunk(result)
                v = sink.verdicts
                progress.update(
                    task, advance=result["bytes"],
                    description=f"{sink.trajectories:,} traj · [red]{v['deny']} deny[/] · "
                    f"[yellow]{v['ask']} ask[/] · {sink.malformed_count} malformed",
                )  # fmt: skip
            if not total:
                progress.update(task, advance=1)
    finally:
        sink.close()
    elapsed = time.perf_counter() - started
    summary = sink.summary()
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            render(summary, sink.worst(), sink.malformed, policy=policy.name,
                   inputs=[str(p) for p in paths], flagged=sink.flagged),
            encoding="utf-8",
        )  # fmt: skip
    _print_summary(Console(), summary, sink, elapsed, report, json_out, keep, drop)
    if not sink.trajectories:
        err.print(f"[red]read no trajectory[/] from {len(paths)} path(s): empty, or not a format "
                  f"corral reads ({', '.join(FORMAT_NAMES)}); check the paths or --format")  # fmt: skip
        raise typer.Exit(1)


def _ray_unreachable(address: str) -> str | None:
    """Why nothing can answer at a `host:port` Ray address (checked in seconds; Ray itself retries
    for minutes), or None. `auto` and other forms are left to Ray, which fails fast on them."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_S):
            return None
    except OSError as e:
        why = e.strerror or type(e).__name__.replace("TimeoutError", "timed out")
        return (f"no Ray cluster answers there within {RAY_CONNECT_S:g}s ({why}); start one "
                "(ray start --head) or fix the address")  # fmt: skip


def _guarded(results, ray_address: str | None):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """Ray's connection errors as one line and exit 2, not a traceback."""
    try:
        yield from results
    except (ConnectionError, TimeoutError) as e:
        if not ray_address:
            raise
        Console(stderr=True).print(f"[red]error:[/] --ray {escape(ray_address)}: {escape(str(e))}")
        raise typer.Exit(2) from None


def _print_summary(con: Console, s: dict, sink: AuditSink, elapsed: float, report: Path | None,
                   json_out: Path | None, keep: Path | None, drop: Path | None) -> None:  # fmt: skip
    v = s["verdicts"]
    rate = s["trajectories"] / elapsed if elapsed > 0 else 0.0
    con.print(
        f"[bold]{s['trajectories']:,}[/] trajectories from {s['files']} files in {elapsed:.2f}s "
        f"({rate:,.0f}/s): [red]{v['deny']} deny[/], [yellow]{v['ask']} ask[/], "
        f"[green]{v['allow']} allow[/], [magenta]{v['unreadable']} unreadable[/]; "
        f"kept {s['kept']}, dropped {s['dropped']}; "
        f"{s['malformed']} malformed records skipped"
    )
    if s["categories"]:
        t = Table("category", "trajectories", "findings", title="findings per category")
        for cat, n in s["categories"].items():
            t.add_row(cat, str(n["trajectories"]), str(n["findings"]))
        con.print(t)
    if s["format_verdicts"]:
        cols = ("allow", "ask", "deny", "unreadable")
        t = Table("format", *cols, title="verdicts per format")
        for fmt_name, counts in s["format_verdicts"].items():
            t.add_row(fmt_name, *(str(counts.get(c, 0)) for c in cols))
        con.print(t)
    if s["rules"]:
        t = Table("rule", "findings", title="findings per rule")
        for rule, n in list(s["rules"].items())[:20]:
            t.add_row(rule, str(n))
        con.print(t)
    for u in s["unreadable"][:10]:
        loc = u["file"] + (f":{u['line']}" if u["line"] is not None else "")
        con.print(f"[magenta]unreadable[/] {escape(loc)} {escape(str(u['id']))}: "
                  f"{escape(u['unreadable'])}")  # fmt: skip
    if s["verdicts"]["unreadable"] > 10:
        con.print(
            f"… and {s['verdicts']['unreadable'] - 10} more unreadable (see --json or --report)"
        )
    worst = sink.worst()[:10]
    if worst:
        t = Table(
            "verdict", "trajectory", "where", "worst finding", "steps", title="worst trajectories"
        )
        for r in worst:
            w = r["worst"]
            where = f"{r['file']}:{r['line']}" if r["line"] is not None else r["file"]
            t.add_row(f"[{VERDICT_STYLE[r['verdict']]}]{r['verdict']}[/]", escape(r["id"]),
                      escape(where), f"{w['severity']} {w['rule']}",
                      ", ".join(map(str, w["steps"])))  # fmt: skip
        con.print(t)
    for m in sink.malformed[:10]:
        loc = m["file"] + (f":{m['line']}" if m["line"] is not None else "")
        loc += f"[{m['item']}]" if m["item"] is not None else ""
        con.print(f"[yellow]malformed[/] {escape(loc)}: {escape(m['error'])}")
    if s["malformed"] > 10:
        con.print(f"… and {s['malformed'] - 10} more malformed records (see --json or --report)")
    for label, path in (("report", report), ("json", json_out), ("keep", keep), ("drop", drop)):
        if path is not None:
            con.print(f"{label}: {path}")
