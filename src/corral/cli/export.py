"""`corral export --episode ID --format atif|openai [--out FILE]`: a recorded episode for audit or
training, as Harbor ATIF (trajectory.json) or OpenAI chat messages (one JSONL line)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from corral.store.sqlite import EventStore

FORMATS = ("atif", "openai")


def register(app: typer.Typer) -> None:
    app.command()(export)


def export(
    episode: str = typer.Option(..., "--episode", help="the episode to export"),
    fmt: str = typer.Option(
        "atif", "--format", help="atif (Harbor trajectory.json) or openai (JSONL)"
    ),
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
) -> None:
    """Export one episode's steps and events."""
    from corral.rl.export import NoSuchEpisode, to_atif, to_openai

    if fmt not in FORMATS:
        typer.echo(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})", err=True)
        raise typer.Exit(2)
    import sqlite3

    from corral.store.sqlite import StoreReadError

    try:
        store = EventStore(timeout=5)
        text = (
            json.dumps(to_atif(store, episode), indent=2)
            if fmt == "atif"
            else to_openai(store, episode)
        )
    except NoSuchEpisode as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None
    except (StoreReadError, sqlite3.Error) as err:
        typer.echo(f"corral export: {err}", err=True)
        raise typer.Exit(1) from None
    if out is None:
        typer.echo(text)
    else:
        try:
            out.write_text(text + "\n")
        except OSError as err:
            typer.echo(f"--out {out}: {err.strerror}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"wrote {out}", err=True)
