"""`corral daemon status|stop`: the fork server that serves `corral run` and `corral check`.

Only our own server is asked: the one for this identity (uid, namespaces, interpreter,
environment that shapes imports), by its socket, whose owner must be our uid.
Exit status: 0 (status: a server answers; stop: it stopped or there was none), 1 (status: none).
"""

from __future__ import annotations

import json
import time

import typer

from corral.cli import forkclient, forkserver

daemon_app = typer.Typer(help="The fork server behind `corral run` and `corral check` "
                         "(off with CORRAL_DAEMON=0 or `corral --no-daemon`).",
                         no_args_is_help=True)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(daemon_app, name="daemon")


@daemon_app.command()
def status(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Whether a fork server serves this user here: its pid, socket, calls and idle timeout."""
    reply = forkserver.ask("status")
    where = forkclient.runtime_dir()
    state: dict[str, object] = {"disabled": forkclient.disabled(), "runtime_dir": where,
                                "socket": where and f"{where}/{forkclient.socket_name(forkclient.key())}"}  # fmt: skip
    if reply is not None:
        state.update({k: v for k, v in reply.items() if k != "t"})
    if as_json:
        typer.echo(json.dumps(state))
    elif reply is None:
        typer.echo("corral daemon: not running" + (" (disabled: CORRAL_DAEMON=0)"
                                                   if state["disabled"] else ""))  # fmt: skip
    else:
        up = time.time() - float(reply["started"])
        typer.echo(f"corral daemon: pid {reply['pid']}, up {up:.0f}s, {reply['calls']} call(s), "
                   f"{reply['running']} running, idle exit after {reply['idle_s']:g}s\n"
                   f"  socket {reply['socket']}")  # fmt: skip
    raise typer.Exit(0 if reply is not None else 1)


@daemon_app.command()
def stop() -> None:
    """Stop our fork server (calls it is running finish first); the next call runs in its own
    process and starts a new one."""
    reply = forkserver.ask("stop")
    if reply is None:
        typer.echo("corral daemon: not running")
        raise typer.Exit(0)
    pid = int(reply["pid"])
    gone = forkserver.wait_gone(pid)
    typer.echo(f"corral daemon: stopped (pid {pid})" if gone else
               f"corral daemon: pid {pid} asked to stop; it finishes its running calls first")  # fmt: skip
