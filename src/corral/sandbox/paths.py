"""Where a file path a client names lives: the workspace, or one of the sandbox's private tmpfs mounts.

RL harnesses put scripts in `/tmp` (ROLL's `_upload_settings`, the rl-rock SDK's
`process.execute_script`) and tests in `/tests`. Those directories are tmpfs mounts inside the
sandbox's own mount namespace: the supervisor reaches them through `/proc/<sandbox init>/root`, and
from there walks with the same `O_NOFOLLOW`-per-component code as the workspace
(`corral.sandbox.files`), so a symlink the agent plants under `/tmp` cannot lead a write out of the
sandbox. Any other absolute path is refused with a message naming the places that work.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from corral.sandbox import files
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed
from corral.sandbox.sandbox import Sandbox

PRIVATE_TMP = "/tmp"
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def _as_sandbox(sb: Sandbox, fn: Callable[..., T], *args: object) -> T:
    """Run `fn` (in a worker thread) with this thread's filesystem ids set to the sandbox's own
    host id, when it has one (a root supervisor runs each sandbox as its own id): a tmpfs of the
    sandbox's user namespace takes new files only from ids mapped in it, and so the files are the
    agent's to change, as in the workspace. `setfsuid` is per thread; the ids are restored."""
    ident = getattr(sb, "identity", None)
    if ident is None:
        return fn(*args)
    old_gid = _libc.setfsgid(ident.gid)
    old_uid = _libc.setfsuid(ident.uid)
    try:
        return fn(*args)
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)


def private_mounts(sb: Sandbox) -> list[str]:
    """The sandbox's private tmpfs directories a client may transfer files to and from."""
    return [PRIVATE_TMP, *sb.scratch_dirs]


def _mount_of(sb: Sandbox, path: str) -> str | None:
    p = PurePosixPath(path)
    if not p.is_absolute():
        return None
    for mount in private_mounts(sb):
        if p == PurePosixPath(mount) or PurePosixPath(mount) in p.parents:
            return mount
    return None


async def _host_dir(sb: Sandbox, mount: str) -> Path:
    """The mount as the supervisor sees it, while the sandbox runs (its shell is started again
    first if an `exit` ended it, as the next command would)."""
    if sb.closed_reason:
        raise SandboxClosed(sb.closed_reason)
    if sb._proc is None and sb.workspace is not None:
        async with sb._lock:
            if sb._proc is None and not sb.closed_reason:
                await sb._restart_session()
    pid = sb._init_pid
    if sb.closed_reason or not pid:
        raise SandboxClosed(sb.closed_reason or "not started")
    return Path(f"/proc/{pid}/root{mount}")


def _check(sb: Sandbox, path: str) -> None:
    ws = sb.policy.filesystem.workspace.path
    p = PurePosixPath(path)
    if p.is_absolute() and p != PurePosixPath(ws) and PurePosixPath(ws) not in p.parents:
        where = ", ".join([ws, *private_mounts(sb)])
        raise PathOutsideWorkspace(
            f"{path!r} is outside the workspace and the sandbox's private directories "
            f"({where}): only files there can be transferred"
        )


async def write(sb: Sandbox, path: str, data: bytes | str, mode: int = 0o644) -> str:
    """Write a file into the sandbox; the path as the sandbox sees it."""
    raw = data.encode() if isinstance(data, str) else data
    mount = _mount_of(sb, path)
    if mount is None:
        _check(sb, path)
        return await sb.write_file(path, raw, mode)
    where = await _host_dir(sb, mount)
    return await asyncio.to_thread(_as_sandbox, sb, files.write, where, mount, path, raw, mode)


async def read(sb: Sandbox, path: str, max_bytes: int | None = None) -> bytes:
    """Read a file from the sandbox."""
    mount = _mount_of(sb, path)
    if mount is None:
        _check(sb, path)
        return await sb.read_file(path, max_bytes)
    where = await _host_dir(sb, mount)
    return await asyncio.to_thread(_as_sandbox, sb, files.read, where, mount, path, max_bytes)
