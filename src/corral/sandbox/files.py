"""File transfer between the supervisor and a sandbox's workspace.

The supervisor runs with more rights than the agent, so a path the agent controls must never lead it
outside the workspace: every component is opened relative to its parent with O_NOFOLLOW, which defeats
symlinks planted by the agent (including ones swapped in while we walk).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from corral.sandbox.errors import PathOutsideWorkspace, ProtectedPath


def _relative(inside_root: str, path: str) -> list[str]:
    p = PurePosixPath(path)
    if p.is_absolute():
        root = PurePosixPath(inside_root)
        try:
            p = p.relative_to(root)
        except ValueError:
            raise PathOutsideWorkspace(
                f"{path!r} is outside the workspace {inside_root}: only workspace files can be "
                "transferred"
            ) from None
    parts = [x for x in p.parts if x not in ("", ".")]
    if ".." in parts:
        raise PathOutsideWorkspace(f"{path!r}: '..' is not allowed in sandbox paths")
    if not parts:
        raise PathOutsideWorkspace(f"{path!r} names the workspace itself, not a file")
    return parts


def _open_parent(ws: Path, parts: list[str], create: bool,
                 owner: tuple[int, int] | None = None) -> int:  # fmt: skip
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[:-1]:
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                if owner is not None:
                    os.fchown(nfd, *owner)
            except OSError as err:
                raise PathOutsideWorkspace(f"{name!r} is not a plain directory: {err}") from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write(ws: Path, inside_root: str, path: str, data: bytes, mode: int = 0o644,
          owner: tuple[int, int] | None = None) -> str:  # fmt: skip
    """Write in place (the same inode: a protected file bound read-only into a running sandbox
    shows the new content); `owner` is the sandbox's host id for files the agent may edit."""
    parts = _relative(inside_root, path)
    dfd = _open_parent(ws, parts, create=True, owner=owner)
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode,
                     dir_fd=dfd)  # fmt: skip
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
    except OSError as err:
        if err.errno == 40:  # ELOOP: the last component is a symlink
            raise PathOutsideWorkspace(f"{path!r} is a symlink; refusing to follow it") from None
        raise
    finally:
        os.close(dfd)
    return str(PurePosixPath(inside_root, *parts))


def protected_hit(inside_root: str, path: str, protected: list[str]) -> str | None:
    """The protected entry `path` falls under, if any."""
    try:
        rel = "/".join(_relative(inside_root, path))
    except PathOutsideWorkspace:
        return None
    for p in protected:
        if p.startswith("/"):  # an absolute path in an image root (Sandbox._protected_hit)
            continue
        p = p.strip("/")
        if rel == p or rel.startswith(p + "/"):
            return p
    return None


def read(ws: Path, inside_root: str, path: str, max_bytes: int | None = None) -> bytes:
    parts = _relative(inside_root, path)
    dfd = _open_parent(ws, parts, create=False)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError as err:
        if err.errno == 40:
            raise PathOutsideWorkspace(f"{path!r} is a symlink; refusing to follow it") from None
        raise
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        return f.read(max_bytes) if max_bytes is not None else f.read()


def upload(ws: Path, inside_root: str, local: Path, path: str,
           owner: tuple[int, int] | None = None) -> str:  # fmt: skip
    """Copy a host file or directory tree into the workspace."""
    if local.is_dir():
        dest_parts = _relative(inside_root, path)
        for src in sorted(local.rglob("*")):
            if src.is_file() and not src.is_symlink():
                rel = src.relative_to(local).as_posix()
                write(ws, inside_root, "/".join([*dest_parts, rel]), src.read_bytes(),
                      src.stat().st_mode & 0o777, owner)  # fmt: skip
        return str(PurePosixPath(inside_root, *dest_parts))
    if not local.is_file():
        raise FileNotFoundError(f"upload source {local} does not exist")
    return write(ws, inside_root, path, local.read_bytes(), local.stat().st_mode & 0o777, owner)


__all__ = ["ProtectedPath", "protected_hit", "read", "upload", "write"]
