"""File transfer between the supervisor and a sandbox's workspace.

The supervisor runs with more rights than the agent, so a path the agent controls must never lead it
outside the workspace: every component is opened relative to its parent with O_NOFOLLOW, which defeats
symlinks planted by the agent (including ones swapped in while we walk).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from corral.sandbox.errors import PathOutsideWorkspace, ProtectedPath

MAX_READ = 256 * 1024 * 1024  # bytes read_file returns when the caller sets no limit


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
        # O_NONBLOCK: a FIFO the agent planted must not hang the supervisor (no reader: ENXIO);
        # truncated only once it is known to be a regular file
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, mode,
                     dir_fd=dfd)  # fmt: skip
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PathOutsideWorkspace(f"{path!r} is not a regular file; refusing to write it")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
    except OSError as err:
        if err.errno == 40:  # ELOOP: the last component is a symlink
            raise PathOutsideWorkspace(f"{path!r} is a symlink; refusing to follow it") from None
        if err.errno == 6:  # ENXIO: a FIFO nobody reads
            raise PathOutsideWorkspace(
                f"{path!r} is not a regular file; refusing to write it"
            ) from None
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
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError as err:
        if err.errno == 40:
            raise PathOutsideWorkspace(f"{path!r} is a symlink; refusing to follow it") from None
        raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(21, "Is a directory", path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or socket the agent planted would hang us
        os.close(fd)
        raise PathOutsideWorkspace(f"{path!r} is not a regular file; refusing to read it")
    limit = MAX_READ if max_bytes is None else max_bytes
    if max_bytes is None and st.st_size > MAX_READ:  # e.g. a sparse 1 TB file: no memory for it
        os.close(fd)
        raise PathOutsideWorkspace(
            f"{path!r} is {st.st_size} bytes, over the {MAX_READ}-byte read limit; pass max_bytes"
        )
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


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
