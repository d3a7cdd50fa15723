"""`corral events --episode ID --with-steps`: the ROME forensics in one command.

Each step's action, outcome and reward, with the events it caused underneath; events that belong to
no step (sandbox start and stop, a host lost between steps) come first and last.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from corral.events.model import Event
from corral.store.sqlite import EventStore

WIDE = 120
SEVERITY_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "red",
                  "critical": "bold red"}  # fmt: skip


def timeline(store: EventStore, episode: str) -> list[dict]:
    steps = store.steps(episode)
    events = store.query(episode_id=episode)
    by_step: dict[int | None, list[Event]] = defaultdict(list)
    for e in events:
        by_step[e.step].append(e)
    out: list[dict] = []
    seen: set[int] = set()
    for s in steps:
        d = s.model_dump(mode="json")
        d["duration_s"] = round(s.duration, 6)
        d["events"] = (
            [] if s.step in seen else [e.model_dump(mode="json") for e in by_step.get(s.step, [])]
        )
        seen.add(s.step)
        out.append(d)
    for n in sorted(
        k for k in by_step if k is not None and k not in seen
    ):  # events with no step row
        out.append({"episode_id": episode, "step": n, "kind": None, "action": None,
                    "events": [e.model_dump(mode="json") for e in by_step[n]]})  # fmt: skip
    if by_step.get(None):
        out.append({"episode_id": episode, "step": None, "kind": "episode", "action": None,
                    "events": [e.model_dump(mode="json") for e in by_step[None]]})  # fmt: skip
    return out


def show_timeline(store: EventStore, episode: str, *, as_json: bool = False) -> int:
    rows = timeline(store, episode)
    if not rows:
        typer.echo(f"no steps or events recorded for episode {episode!r} in {store.path}", err=True)
        return 1
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, separators=(",", ":"), default=str))
        return 0
    console = Console()
    if not sys.stdout.isatty() or console.width < WIDE:
        _lines(rows, episode, console if sys.stdout.isatty() else None)
        return 0
    table = Table(show_header=True, header_style="bold", title=f"episode {episode}")
    for col in ("step", "action / event", "exit", "reward", "severity", "detail"):
        table.add_column(col)
    for r in rows:
        step = "" if r["step"] is None else str(r["step"])
        if r.get("kind") not in (None, "episode"):
            flags = " [bold red]TERMINATED[/]" if r.get("terminated") else ""
            flags += " [yellow]truncated[/]" if r.get("truncated") else ""
            label = r["action"] if r["kind"] != "reset" else "(reset) " + r["observation"][:60]
            table.add_row(f"[bold]{step}[/]", f"[bold]$ {label}[/]{flags}",
                          "" if r.get("exit_code") is None else str(r["exit_code"]),
                          f"{r.get('reward', 0.0):+.3f}", "", r.get("observation", "")[:60].replace("\n", " "))  # fmt: skip
        for e in r["events"]:
            if e["severity"] == "info" and e["rule"] in (
                "sandbox.command_started",
                "sandbox.command_ended",
            ):
                continue
            detail = e["message"]
            if e.get("dst"):
                detail = (
                    f"{e['dst'].get('host') or e['dst'].get('ip')}:{e['dst'].get('port')} {detail}"
                )
            table.add_row(step, f"  {e['source']} {e['rule']} [{e['action']}]", "", "",
                          f"[{SEVERITY_STYLE.get(e['severity'], '')}]{e['severity']}[/]", detail[:80])  # fmt: skip
    console.print(table)
    return 0


def _lines(rows: list[dict], episode: str, console: Console | None) -> None:
    """Narrow terminals and pipes: a line per step, its events indented under it, nothing wrapped
    into fragments (piped: nothing cut either)."""

    def out(text: str, style: str = "") -> None:
        if console is None:
            typer.echo(text)
        else:
            console.print(escape(text), style=style, highlight=False, no_wrap=True,
                          overflow="ellipsis")  # fmt: skip

    out(f"episode {episode}", "bold")
    for r in rows:
        step = "-" if r["step"] is None else str(r["step"])
        if r.get("kind") not in (None, "episode"):
            label = r["action"] if r["kind"] != "reset" else "(reset) " + r["observation"][:60]
            flags = (" TERMINATED" if r.get("terminated") else "") + (
                " truncated" if r.get("truncated") else "")  # fmt: skip
            code = "" if r.get("exit_code") is None else f" exit {r['exit_code']}"
            out(f"step {step}{code} reward {r.get('reward', 0.0):+.3f}{flags} [{r['kind']}]: "
                f"$ {label}".replace("\n", " "), "bold")  # fmt: skip
        for e in r["events"]:
            if e["severity"] == "info" and e["rule"] in (
                "sandbox.command_started",
                "sandbox.command_ended",
            ):
                continue
            detail = e["message"]
            if e.get("dst"):
                detail = (
                    f"{e['dst'].get('host') or e['dst'].get('ip')}:{e['dst'].get('port')} {detail}"
                )
            out(f"    {e['severity']} {e['rule']} [{e['action']}] {detail}".replace("\n", " "),
                SEVERITY_STYLE.get(e["severity"], ""))  # fmt: skip
