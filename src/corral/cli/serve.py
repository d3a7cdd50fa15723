"""`corral serve`: the sandbox service for RL rollouts (ROCK API, SandboxFusion /run_code, env API)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    policy: str = typer.Option("rl-strict", "--policy", help="preset name or YAML file"),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level"),
    warm: int = typer.Option(
        0, "--warm", min=0, help="sandboxes kept started per image, ready to hand out (0: none)"
    ),
    approval_timeout: float = typer.Option(
        300.0,
        "--approval-timeout",
        min=0.1,
        help="seconds a command the gate asks about waits for a decision (gate.ask: callback)",
    ),
) -> None:
    """Serve sandboxes over HTTP; the OpenAPI spec is at /openapi.json, docs at /docs."""
    from corral.policy.loader import PolicyError, load_policy

    try:
        pol = load_policy(policy)
    except PolicyError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    try:
        import uvicorn

        from corral.server.app import create_app
    except ImportError as err:
        typer.echo(f"corral serve needs the server extra: pip install 'corral[server]' ({err})",
                   err=True)  # fmt: skip
        raise typer.Exit(2) from None
    typer.echo(f"corral serve: policy {pol.name} on http://{host}:{port} (OpenAPI: /openapi.json)",
               err=True)  # fmt: skip
    uvicorn.run(
        create_app(pol, approval_timeout=approval_timeout, warm=warm),
        host=host,
        port=port,
        log_level=log_level,
    )
