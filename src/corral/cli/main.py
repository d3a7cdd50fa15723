"""The `corral` command. Each part registers its own subcommands from its own module."""

from __future__ import annotations

import typer

from corral.cli import audit, check, demo, doctor, events, export, images, rules, run, serve

app = typer.Typer(
    name="corral",
    help="Contain, watch and audit autonomous AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (run, doctor, events, check, audit, rules, serve, demo, export, images):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
