"""The `corral` command. Each part registers its own subcommands from its own module.

`corral run` and `corral check` as a process first ask the fork server (`corral.cli.forkclient`,
`corral.cli.forkserver`) to run the call in a child of a process that has everything imported;
without one (or with `CORRAL_DAEMON=0` / `corral --no-daemon ...`) they run here as below.

A call imports only the module of the subcommand it names: `corral run` does not pay for the audit
readers, the HTML report or the server, and `corral --version` imports nothing of corral's parts
(nor typer). `--help`, no arguments or an unknown name load every command, so the listing and the
"no such command" hint stay whole. `app` (the full application) is built on first access, for
`typer.testing.CliRunner` and anything else that wants the object.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # not `typing`'s: importing typing costs the fork server's client ~5 ms
if TYPE_CHECKING:
    from typing import Any

    import typer

# command name -> module under corral.cli, in the order `corral --help` lists them
COMMANDS: dict[str, str] = {
    "run": "run",
    "doctor": "doctor",
    "events": "events",
    "check": "check",
    "audit": "audit",
    "rules": "rules",
    "serve": "serve",
    "demo": "demo",
    "export": "export",
    "images": "images",
    "daemon": "daemon",
}
NO_DAEMON = "--no-daemon"


def _version_text() -> str:
    from corral import __version__

    return f"corral {__version__}"


def build_app(commands: list[str] | None = None) -> typer.Typer:
    """The typer application with `commands` registered (all of them when None)."""
    import typer

    app = typer.Typer(
        name="corral",
        help="Contain, watch and audit autonomous AI agents.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    def _show_version(value: bool) -> None:
        if value:
            typer.echo(_version_text())
            raise typer.Exit(0)

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False,
            "--version",
            help="print the version and exit",
            is_eager=True,
            callback=_show_version,
        ),
        no_daemon: bool = typer.Option(
            False,
            NO_DAEMON,
            help="run in this process, not in a child of the fork server (also CORRAL_DAEMON=0)",
        ),  # fmt: skip
    ) -> None:
        """Contain, watch and audit autonomous AI agents."""

    modules = dict.fromkeys(COMMANDS[c] for c in (commands or COMMANDS))
    for name in modules:
        importlib.import_module(f"corral.cli.{name}").register(app)
    return app


_commands: dict[str | None, Any] = {}


def command(name: str | None) -> Any:
    """The click command behind `corral NAME` (None: every command), built once per process: typer
    builds it anew on every call of the app otherwise (~1.5 ms a served call). A fork server's
    children find it built and, after `warm_command`, their parameters' coercion too."""
    cmd = _commands.get(name)
    if cmd is None:
        import typer.main

        cmd = _commands[name] = typer.main.get_command(build_app([name] if name else None))
    return cmd


def warm_command(name: str, args: list[str]) -> None:
    """Parse (never run) `corral NAME ARGS` once, so each parameter's coercion is built (typer
    builds it lazily, on first use: ~1.5 ms of a served call) in the process that forks."""
    group = command(name)
    with group.make_context("corral", [name, *args], resilient_parsing=True) as ctx:
        sub = group.get_command(ctx, name)
        if sub is not None:
            sub.make_context(name, list(args), parent=ctx, resilient_parsing=True).close()


def _named_command(args: list[str]) -> str | None:
    """The subcommand a call names, when it is one we know (options come after it)."""
    if args and not args[0].startswith("-") and args[0] in COMMANDS:
        return args[0]
    return None


def main(argv: list[str] | None = None) -> None:
    """The `corral` process (argv None: from sys.argv, through the fork server where it serves the
    command), or one call in this process (argv given: tests, the fork server's child)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        print(_version_text())
        return
    if argv is None and args[:1] != [NO_DAEMON]:
        code = _through_daemon(args)
        if code is not None:
            raise SystemExit(code)
    if args[:1] == [NO_DAEMON]:
        args = args[1:]
    name = _named_command(args)
    try:
        command(name)(args=args, prog_name="corral")
    except Exception as err:  # noqa: BLE001 - click's own exits pass; the rest is one line
        raise SystemExit(_exit_for(err)) from None


def _through_daemon(args: list[str]) -> int | None:
    """The exit status of `corral ARGS` run by the fork server, or None to run it here."""
    from corral.cli import forkclient

    if not args or args[0] not in forkclient.SERVED or forkclient.disabled():
        return None
    return forkclient.serve_call(args)


def _exit_for(err: Exception) -> int:
    """An error no command turned into its own message: one line naming it, never a traceback
    (exit 3 for a bad rule pack, as `corral check` documents for bad input; 1 otherwise)."""
    from corral.rules.engine import RulePackError

    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, RulePackError):
        print(f"corral: {text}", file=sys.stderr)
        return 3
    from corral.store.sqlite import StoreReadError

    if isinstance(err, StoreReadError):
        print(f"corral: {first}", file=sys.stderr)
        return 1
    print(f"corral: {type(err).__name__}: {first}", file=sys.stderr)
    return 1


def __getattr__(attr: str) -> Any:
    if attr == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


if __name__ == "__main__":
    main()
