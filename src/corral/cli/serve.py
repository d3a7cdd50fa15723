"""`corral serve`: the sandbox service for RL rollouts (ROCK API, SandboxFusion /run_code, env API).

It asks for a token by default (see `corral.server.auth`), refuses to start when this host cannot
make sandboxes under the policy (rather than answering 503 to every request), and serves TLS itself
with `--ssl-certfile/--ssl-keyfile` (or behind a reverse proxy that terminates TLS, see README).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

EXIT_USAGE = 2
EXIT_CANNOT_SANDBOX = 125
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
# How long an idle kept-alive connection stays open. uvicorn's default (5 s) equals httpx's and
# httpcore's keep-alive expiry (5 s), so a client re-used a pooled connection just as the server
# closed it, and its request met a reset (httpx.ReadError) on a busy host. The server's idle
# timeout must outlast its clients': 75 s (nginx's keepalive_timeout) is above httpx's and
# aiohttp's (15 s) expiry.
KEEP_ALIVE_S = 75


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port"),
    policy: str = typer.Option("rl-strict", "--policy", help="preset name or YAML file"),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level"),
    warm: int = typer.Option(
        0, "--warm", min=0, help="sandboxes kept started per image, ready to hand out (0: none)"
    ),
    approval_timeout: float = typer.Option(
        300.0,
        "--approval-timeout",
        min=0.1,
        max=86400.0,
        help="seconds a command the gate asks about waits for a decision (gate.ask: callback)",
    ),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="file holding the admin token (default: CORRAL_TOKEN, else "
        "$CORRAL_HOME/serve.token, made at first start)",
    ),  # fmt: skip
    tenants: Path | None = typer.Option(
        None, "--tenants", help="file of tenant tokens, one `NAME TOKEN` per line"
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="ask no token (loopback --host only), for clients that send none"
    ),
    ssl_certfile: Path | None = typer.Option(None, "--ssl-certfile", help="TLS certificate (PEM)"),
    ssl_keyfile: Path | None = typer.Option(None, "--ssl-keyfile", help="TLS private key (PEM)"),
    max_request_bytes: int = typer.Option(
        64 * 1024 * 1024, "--max-request-bytes", min=1024, help="largest request body (413 beyond)"
    ),
    max_file_bytes: int = typer.Option(
        32 * 1024 * 1024, "--max-file-bytes", min=1, help="largest file into or out of a sandbox"
    ),
) -> None:
    """Serve sandboxes over HTTP; the OpenAPI spec is at /openapi.json, docs at /docs.

    Exit 2: a bad option, policy or token file, or an event store that cannot be opened; 3: the
    address cannot be bound; 125: this host cannot make sandboxes."""
    from corral.policy.loader import PolicyError, load_policy

    def fail(msg: str, code: int = EXIT_USAGE) -> typer.Exit:
        typer.echo(f"corral serve: {msg}", err=True)
        return typer.Exit(code)

    try:
        pol = load_policy(policy)
    except PolicyError as err:
        raise fail(str(err)) from None
    if log_level.lower() not in LOG_LEVELS:
        raise fail(f"--log-level must be one of {', '.join(LOG_LEVELS)} (got {log_level!r})")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together: give both")
    for opt, f in (("--ssl-certfile", ssl_certfile), ("--ssl-keyfile", ssl_keyfile)):
        if f is not None and not f.is_file():
            raise fail(f"{opt} {f}: no such file")
    try:
        import uvicorn

        from corral.server.app import create_app
        from corral.server.auth import TokenSetupError, is_loopback, setup
        from corral.server.limits import Limits
    except ImportError as err:
        raise fail(f"needs the server extra: pip install 'corral[server]' ({err})") from None
    from corral.store.paths import corral_home

    cannot = _cannot_sandbox(pol)
    if cannot is not None:
        raise fail(cannot, EXIT_CANNOT_SANDBOX)
    try:
        tokens, notes = setup(corral_home(), host=host, no_auth=no_auth, token_file=token_file,
                              tenants_file=tenants, env_token=os.environ.get("CORRAL_TOKEN"))  # fmt: skip
    except TokenSetupError as err:
        raise fail(str(err)) from None
    for line in notes:
        typer.echo(f"corral serve: {line}", err=True)
    scheme = "https" if ssl_certfile else "http"
    if scheme == "http" and not is_loopback(host):
        typer.echo("corral serve: warning: tokens travel in clear text off this host: use "
                   "--ssl-certfile/--ssl-keyfile or a TLS reverse proxy (README)", err=True)  # fmt: skip
    limits = Limits(max_request_bytes=max_request_bytes, max_file_bytes=max_file_bytes)
    from corral.store.sqlite import StoreReadError

    try:
        app = create_app(pol, approval_timeout=approval_timeout, tokens=tokens, limits=limits,
                         warm=warm)  # fmt: skip
    except StoreReadError as err:  # damaged or locked: nothing could be recorded
        raise fail(str(err)) from None
    typer.echo(f"corral serve: policy {pol.name} on {scheme}://{host}:{port} (OpenAPI: "
               "/openapi.json)", err=True)  # fmt: skip
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                    timeout_keep_alive=KEEP_ALIVE_S,
                    ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                    ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)  # fmt: skip
    except OSError as err:  # the TLS files did not load
        raise fail(f"cannot serve: {err}") from None


def _cannot_sandbox(pol: object) -> str | None:
    """Why this host cannot make sandboxes under `pol` (and the fix), or None when it can.

    One real sandbox is started and closed (recording nothing): the service must not come up only
    to answer 503 to every request. It also sweeps what a dead supervisor left behind."""
    import asyncio

    from corral.sandbox.errors import SandboxError, SandboxRefused
    from corral.sandbox.sandbox import Sandbox

    async def probe() -> str | None:
        sb = Sandbox(pol, store=False, gate=lambda *a: None)  # type: ignore[arg-type]
        try:
            await sb.start()
        except SandboxRefused as err:
            return f"cannot make sandboxes on this host: {err.cause}\n  fix: {err.fix}"
        except (SandboxError, OSError) as err:
            return f"cannot make sandboxes on this host: {err}\n  fix: run `corral doctor`"
        finally:
            await sb.close()
        return None

    return asyncio.run(probe())
