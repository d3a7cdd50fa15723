"""`corral run -- CMD...`: one command in a fresh sandbox, with the exit codes wrappers expect."""

from __future__ import annotations

import asyncio
import math
import shlex
import sys
from collections import Counter
from pathlib import Path

import typer

from corral.events.model import Event
from corral.events.sink import RecordingFailed
from corral.policy.loader import PolicyError, load_policy
from corral.sandbox.errors import SandboxError, SandboxRefused
from corral.sandbox.sandbox import KILLED_EXIT, TIMEOUT_EXIT, Sandbox
from corral.store.sqlite import StoreReadError

REFUSED_EXIT = 125


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(run)


def _summary(events: list[Event]) -> str:
    flagged = [e for e in events if e.severity != "info" or e.action != "allowed"]
    counts = Counter(e.source for e in events)
    head = f"corral: {len(events)} event(s) (" + ", ".join(f"{k} {v}" for k, v in
                                                        sorted(counts.items())) + ")"  # fmt: skip
    lines = [head]
    for e in flagged[:20]:
        step = "" if e.step is None else f" step {e.step}"
        lines.append(f"  [{e.severity}] {e.rule} {e.action}{step}: {e.message}")
    if len(flagged) > 20:
        lines.append(f"  ... {len(flagged) - 20} more; see `corral events --episode ...`")
    return "\n".join(lines)


def run(
    command: list[str] = typer.Argument(..., help="the command, after --"),
    policy: str = typer.Option("rl-strict", "--policy", help="preset name or YAML file"),
    workspace: Path | None = typer.Option(
        None,
        "--workspace",
        help="host directory mounted read-write at /workspace (default: the current directory)",
    ),  # fmt: skip
    temp_workspace: bool = typer.Option(
        False, "--temp-workspace", help="an empty workspace of its own, removed afterwards"
    ),
    events_file: Path | None = typer.Option(None, "--events", help="append events as JSON lines"),
    timeout: float | None = typer.Option(
        None, "--timeout", help="seconds before the command is killed"
    ),
    episode: str | None = typer.Option(None, "--episode", help="episode id to record under"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no event summary"),
    image: str | None = typer.Option(
        None, "--image", help="run on this image (name, OCI layout, archive, rootfs, registry ref)"
    ),
) -> None:
    """Run CMD in a fresh sandbox; exit with its status (124 timeout, 125 refused, 126 blocked by
    the gate, 137 killed).

    The workspace is the current directory unless --workspace or --temp-workspace says otherwise,
    as in sandbox-runtime and Codex: `corral run -- python3 train_step.py` sees train_step.py."""
    try:
        pol = load_policy(policy)
    except PolicyError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(REFUSED_EXIT) from None
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        typer.echo(f"--timeout: must be a positive number of seconds (got {timeout})", err=True)
        raise typer.Exit(2)
    if temp_workspace and workspace is not None:
        typer.echo("--workspace and --temp-workspace: give one", err=True)
        raise typer.Exit(2)
    if image is not None and workspace is None:
        pass  # an image's own working directory is the workspace (its config's WorkingDir)
    elif not temp_workspace:
        problem = _workspace_problem(workspace)
        if problem:
            typer.echo(problem, err=True)
            raise typer.Exit(2)
        workspace = (workspace or Path.cwd()).resolve()
    code = asyncio.run(
        _run(shlex.join(command), pol, workspace, events_file, timeout, episode, quiet, image)
    )
    raise typer.Exit(code)


def _workspace_problem(workspace: Path | None) -> str | None:
    """Why this workspace cannot be mounted (and what to do), or None."""
    where = "--workspace" if workspace is not None else "the current directory (the workspace)"
    try:
        ws = (workspace or Path.cwd()).resolve()
    except (OSError, RuntimeError) as err:
        return f"{where}: cannot be resolved ({err}); give --workspace DIR or --temp-workspace"
    if ws.exists() and not ws.is_dir():
        return f"{where} {ws}: is a file, not a directory; give a directory or --temp-workspace"
    if ws == Path("/"):
        return (f"{where} is /: the whole host would be writable in the sandbox; run from a "
                "project directory, or give --workspace DIR or --temp-workspace")  # fmt: skip
    return None


async def _run(cmd, pol, workspace, events_file, timeout, episode, quiet, image=None) -> int:  # type: ignore[no-untyped-def]
    def stream(name: str, data: bytes) -> None:
        out = sys.stdout.buffer if name == "stdout" else sys.stderr.buffer
        out.write(data)
        out.flush()

    from corral.sandbox.ahead import reserve

    reserve.enabled = False  # one sandbox, then exit: nothing to make ahead for a next start
    try:
        sb = Sandbox(pol, workspace=workspace, events_file=events_file, episode_id=episode,
                     image=image)  # fmt: skip
    except OSError as err:  # the events file, the store
        typer.echo(f"corral: {err.filename or '--events'}: {err.strerror}", err=True)
        return REFUSED_EXIT
    except StoreReadError as err:
        typer.echo(f"corral: {err}", err=True)
        return REFUSED_EXIT
    try:
        await sb.start()
    except SandboxRefused as err:
        typer.echo(str(err), err=True)
        await sb.close()
        return REFUSED_EXIT
    except (OSError, SandboxError, RecordingFailed) as err:
        typer.echo(f"corral: could not start the sandbox: {err}", err=True)
        await sb.close()
        return REFUSED_EXIT
    try:
        result = await sb.exec(cmd, timeout=timeout, on_output=stream)
    except (SandboxError, RecordingFailed) as err:
        typer.echo(f"corral: {err}", err=True)
        await sb.close()
        return REFUSED_EXIT
    except asyncio.CancelledError:
        # Ctrl-C (asyncio.run cancels us), or the fork server's caller gone: close the sandbox
        # (its processes killed, sandbox.stopped recorded) before the interrupt goes on
        await sb.close()
        raise
    await sb.close()
    if result.blocked:  # it never ran, so nothing was streamed: say why (exit 126)
        sys.stderr.write(result.stderr)
    if not quiet:
        typer.echo(_summary(sb.events) + f"\n  episode {sb.episode_id}", err=True)
    if result.timed_out:
        return TIMEOUT_EXIT
    if result.blocked:  # it never ran (126), even where the refusal also ended the episode
        return result.exit_code
    if result.killed or sb.terminated:
        return KILLED_EXIT
    return result.exit_code
