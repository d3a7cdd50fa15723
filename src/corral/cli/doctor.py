"""`corral doctor`: what this host can enforce, probed, not assumed."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from corral.sandbox.probe import probe


def register(app: typer.Typer) -> None:
    app.command()(doctor)


def _daemon() -> dict[str, object]:
    """The fork server's state for this identity (cheap: a socket and one message)."""
    from corral.cli import forkclient, forkserver

    reply = forkserver.ask("status") or {}
    return {"disabled": forkclient.disabled(), "runtime_dir": forkclient.runtime_dir(),
            **{k: v for k, v in reply.items() if k != "t"}}  # fmt: skip


def doctor(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Probe user namespaces, bubblewrap, cgroups, seccomp and GPUs, and say what is enforceable."""
    caps = probe()
    data = caps.as_dict()
    try:
        from corral.monitor.probe import monitor_capabilities  # type: ignore[attr-defined]

        data["monitor"] = monitor_capabilities()
    except ImportError:
        pass
    if caps.bwrap and caps.userns:
        from corral.sandbox.hold import check_hold

        data["hold"] = check_hold()
    data["daemon"] = _daemon()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        raise typer.Exit(0 if caps.userns else 1)
    console = Console()
    table = Table(title="corral doctor", show_header=True)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")

    def row(name: str, ok: bool | None, detail: str) -> None:
        mark = "[green]ok[/]" if ok else ("[yellow]partial[/]" if ok is None else "[red]no[/]")
        table.add_row(name, mark, detail)

    row("running as", True, "root" if caps.root else "ordinary user")
    row("bubblewrap", bool(caps.bwrap), f"{caps.bwrap or 'missing'} {caps.bwrap_version or ''}")
    row("user namespaces", caps.userns, caps.userns_error or "sandbox created and ran /bin/true")
    cg = f"v{caps.cgroup_version}" if caps.cgroup_version else "none"
    row(
        "cgroups",
        caps.cgroup_writable if caps.cgroup_version else False,
        f"{cg}: {', '.join(caps.cgroup_controllers)}; "
        + ("writable" if caps.cgroup_writable else "not writable: rlimit fallback"),
    )
    if caps.cgroup_favordynmods is not None:
        row("cgroup moves after idle", caps.cgroup_favordynmods or caps.root or None,
            "fast (favordynmods)" if caps.cgroup_favordynmods else
            "none: as root, corral-setid starts each sandbox inside its cgroup" if caps.root else
            "wait for an RCU grace period (~20 ms): see the note below")  # fmt: skip
    row("seccomp", caps.seccomp, " ".join(caps.seccomp_actions))
    row(
        "GPU devices", None if not caps.gpu_devices else True, ", ".join(caps.gpu_devices) or "none"
    )
    for name, value in data.get("monitor", {}).items():
        text = str(value)
        working = not any(w in text.upper() for w in ("NOT WORKING", "UNAVAILABLE", "FAILED"))
        row(f"monitor: {name}", working if not text.startswith("off") else None, text)
    for name, value in data.get("hold", {}).items():
        if isinstance(value, bool):
            row(f"hold: {name.replace('_', ' ')}", value, "checked inside a sandbox")
        elif name == "error":
            row("hold", False, str(value))
        else:
            row(f"hold: {name.replace('_', ' ')}", True, str(value))
    d = data["daemon"]
    row("fork server", None if d.get("pid") is None else True,
        f"pid {d['pid']}, {d['calls']} call(s), socket {d['socket']}" if d.get("pid") else
        "off (CORRAL_DAEMON=0)" if d["disabled"] else
        "not running (the next `corral run`/`check` starts it)" if d["runtime_dir"] else
        "no runtime directory of ours: calls run in their own process")  # fmt: skip
    console.print(table)
    for note in caps.notes:
        console.print(f"[yellow]•[/] {note}")
    raise typer.Exit(0 if caps.userns else 1)
