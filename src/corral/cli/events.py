"""`corral events`: read the firewall log back.

On a terminal at least 120 columns wide, a one-line-per-event table; narrower, two lines per event
(the detail indented under its rule) so nothing wraps into a column of fragments; piped, one
tab-separated line per event with nothing cut (for grep, cut and awk). A damaged store is read row by
row: every intact event is shown and what could not be read is named on stderr (exit 1); a locked
or unreadable one is a one-line error (exit 1).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from corral.events.model import SOURCES, Event, format_ts
from corral.store.paths import default_db_path
from corral.store.sqlite import EventStore, StoreReadError, salvage_events

SEVERITY_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "red",
                  "critical": "bold red"}  # fmt: skip
EXIT_UNREADABLE = 1
WIDE = 120


def register(app: typer.Typer) -> None:
    app.command()(events)


def events(
    episode: str | None = typer.Option(None, "--episode", help="only this episode"),
    sandbox: str | None = typer.Option(None, "--sandbox", help="only this sandbox"),
    source: str | None = typer.Option(None, "--source", help=f"one of {', '.join(SOURCES)}"),
    category: str | None = typer.Option(None, "--category", help="e.g. mining, tunnel"),
    since: str | None = typer.Option(None, "--since", help="RFC 3339 time"),
    limit: int | None = typer.Option(None, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    with_steps: bool = typer.Option(
        False, "--with-steps", help="with --episode: a timeline per step, its action and its events"
    ),
) -> None:
    """List recorded events, oldest first (exit 1: the store is damaged, locked or unreadable)."""
    if source is not None and source not in SOURCES:
        typer.echo(f"--source must be one of {', '.join(SOURCES)} (got {source!r})", err=True)
        raise typer.Exit(2)
    if with_steps and episode is None:
        typer.echo("--with-steps needs --episode ID", err=True)
        raise typer.Exit(2)
    if since is not None:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            typer.echo(f"--since: not an RFC 3339 time (got {since!r}; e.g. 2026-01-31T12:00:00Z)",
                       err=True)  # fmt: skip
            raise typer.Exit(2) from None
        since = format_ts(when if when.tzinfo else when.replace(tzinfo=UTC))
    path = default_db_path()
    problems: list[str] = []
    try:
        if not path.exists():
            if with_steps:
                typer.echo(f"no steps or events recorded for episode {episode!r} ({path} does "
                           "not exist)", err=True)  # fmt: skip
                raise typer.Exit(1)
            found: list[Event] = []
        else:
            store = EventStore(path, timeout=5)
            try:
                if with_steps:
                    from corral.cli.timeline import show_timeline

                    raise typer.Exit(show_timeline(store, episode or "", as_json=as_json))
                found = store.query(episode_id=episode, sandbox_id=sandbox, source=source,
                                    category=category, since=since, limit=limit)  # fmt: skip
            finally:
                store.close()
    except (StoreReadError, _sqlite_error()) as err:
        text = getattr(err, "cause", None) or str(err)
        if "locked" in text or "busy" in text:
            typer.echo(f"corral events: {path} is locked by another process: retry when it is "
                       "done", err=True)  # fmt: skip
            raise typer.Exit(EXIT_UNREADABLE) from None
        found, problems = _salvage(path, episode, sandbox, source, category, since, limit)
        problems.insert(0, f"{path} is damaged ({text[:120]}); {len(found)} intact event(s) "
                        "read (move the file aside to start a new store)")  # fmt: skip
    _show(found, as_json)
    for p in problems:
        typer.echo(f"corral events: {p}", err=True)
    if problems:
        raise typer.Exit(EXIT_UNREADABLE)


def _sqlite_error() -> type[Exception]:
    import sqlite3

    return sqlite3.Error


def _salvage(path: Path, episode: str | None, sandbox: str | None, source: str | None,
             category: str | None, since: str | None, limit: int | None
             ) -> tuple[list[Event], list[str]]:  # fmt: skip
    got, problems = salvage_events(path)
    keep = [e for e in got
            if (episode is None or e.episode_id == episode)
            and (sandbox is None or e.sandbox_id == sandbox)
            and (source is None or e.source == source)
            and (category is None or e.category == category)
            and (since is None or e.model_dump(mode="json")["ts"] >= since)]  # fmt: skip
    keep.sort(key=lambda e: e.ts)
    return keep[:limit] if limit else keep, problems


def _detail(e: Event) -> str:
    detail = e.message.replace("\n", " ")
    if e.dst:
        detail = f"{e.dst.host or e.dst.ip}:{e.dst.port} {detail}"
    return detail


def _show(found: list[Event], as_json: bool) -> None:
    if as_json:
        for e in found:
            typer.echo(e.to_json())
        return
    if not sys.stdout.isatty():  # piped: whole fields, one line each
        for e in found:
            typer.echo("\t".join([e.ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], e.episode_id or "-",
                                  "-" if e.step is None else str(e.step), e.source, e.rule,
                                  e.severity, e.action, _detail(e)]))  # fmt: skip
        return
    console = Console()
    if console.width >= WIDE:  # one line per event: fixed columns, the detail cut to fit
        rows = [(e.ts.strftime("%H:%M:%S.%f")[:-3], e.episode_id or "",
                 "" if e.step is None else str(e.step), e.source, e.rule, e.severity, e.action)
                for e in found]  # fmt: skip
        head = ("time", "episode", "step", "source", "rule", "severity", "action")
        widths = [max([len(r[i]) for r in rows] + [len(head[i])]) for i in range(len(head))]
        room = max(10, console.width - sum(widths) - 2 * len(widths))

        def line(cells: tuple[str, ...], detail: str, sev: str | None) -> str:
            out = "  ".join(escape(c.ljust(w)) if k != 5 or sev is None else
                            f"[{SEVERITY_STYLE.get(sev, '')}]{c.ljust(w)}[/]"
                            for k, (c, w) in enumerate(zip(cells, widths, strict=True)))  # fmt: skip
            cut = detail if len(detail) <= room else detail[: room - 1] + "…"
            return out + "  " + escape(cut)

        console.print("[bold]" + line(head, "detail", None) + "[/]", highlight=False)
        for r, e in zip(rows, found, strict=True):
            console.print(line(r, _detail(e), e.severity), highlight=False, no_wrap=True)
        return
    last_episode = None
    for e in found:  # narrow: the episode once, then two lines per event
        if e.episode_id != last_episode:
            console.print(f"[bold]episode {e.episode_id or '-'}[/]", highlight=False)
            last_episode = e.episode_id
        step = "" if e.step is None else f"#{e.step}"
        style = SEVERITY_STYLE.get(e.severity, "")
        console.print(f"{e.ts.strftime('%H:%M:%S.%f')[:-3]} {step:>4} {escape(e.rule)} "
                      f"[{style}]{e.severity}[/] {e.action}", highlight=False, no_wrap=True,
                      overflow="ellipsis")  # fmt: skip
        console.print("    " + escape(_detail(e)), highlight=False, no_wrap=True,
                      overflow="ellipsis", style="dim")  # fmt: skip
