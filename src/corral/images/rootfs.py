"""One sandbox's root on an image: the shared image below, the sandbox's own writable layer above.

    <state>/layer/upper, work     the overlay's writable layer (what the sandbox changed): a tmpfs
                                  of `limits.disk` bytes and `limits.inodes` files (a hard quota,
                                  mounted by the helper in the sandbox's namespace), or a plain
                                  directory where the policy sets no disk limit or `keep=True`
    <state>/root                  the mount point (mounted only inside the sandbox's namespace)
    <state>/protected/<n>         host directories bound read-only over protected paths

The overlay is mounted by `corral-overlay-exec` (a few lines of C next to this module, with a
Python twin) in a mount namespace that only the sandbox's processes share: no mount ever appears on
the host, and it goes when the sandbox's last process does. `discard()` then removes the layer;
`keep=True` leaves it for inspection or for `corral images import <state>/upper` as a new image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from corral.images.config import ImageConfig, resolve_user
from corral.images.errors import ImageError
from corral.images.store import Image, ImageStore, _rmtree
from corral.policy.model import Policy, WorkspacePolicy
from corral.sandbox.bwrap import ImageRoot

HELPER_NAME = "corral-overlay-exec"
_BAD = set(",:\\\n")


def helper_command() -> list[str]:
    """The compiled helper (`make install` builds it), else its Python twin (slower to start;
    CORRAL_OVERLAY_HELPER=python picks it). CORRAL_OVERLAY=fuse makes either use fuse-overlayfs
    instead of the kernel's overlay (they fall back to it where the kernel refuses)."""
    native = Path(__file__).with_name(HELPER_NAME)
    if os.environ.get("CORRAL_OVERLAY_HELPER") == "python":
        pass
    elif native.is_file() and os.access(native, os.X_OK):
        return [str(native)]
    return ["/usr/bin/python3", "-I", "-S", str(Path(__file__).with_name("overlay_exec.py"))]


def image_workdir(policy: Policy, config: ImageConfig) -> str:
    """The workspace inside: the policy's, when it names one other than the default
    (/workspace); else the image's WorkingDir."""
    ws = policy.filesystem.workspace
    if ws.path != WorkspacePolicy().path:
        return ws.path
    return os.path.normpath(config.working_dir or "/")


def protected_paths(policy: Policy, workdir: str) -> list[str]:
    """Every protected path as an absolute path inside the sandbox (relative ones are under the
    workspace)."""
    out = []
    for p in policy.filesystem.protected:
        full = p if p.startswith("/") else f"{workdir.rstrip('/')}/{p}"
        out.append(os.path.normpath(full))
    return out


def _in_image(rootfs: Path, inside: str, label: str) -> Path | None:
    """The path of `inside` in the image's tree, refusing symlinks on the way (a symlink in an
    image points at the host when read from outside); None when it is not in the image."""
    cur = rootfs
    for part in PurePosixPath(inside).parts[1:]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise ImageError(label, f"protected path {inside} is a symlink in the image; name "
                             "the real path", "protected")  # fmt: skip
    return cur


@dataclass
class SandboxRoot:
    image: Image
    state: Path
    label: str
    keep: bool = False
    hold_fd: int | None = None
    protected: list[tuple[Path, str]] = field(default_factory=list)
    spec: ImageRoot | None = None
    quota: tuple[int, int] | None = None  # (bytes, inodes) of the tmpfs layer, when it is one

    @property
    def layer(self) -> Path:
        return self.state / "layer"

    @property
    def upper(self) -> Path:
        return self.layer / "upper"

    @property
    def work(self) -> Path:
        return self.layer / "work"

    @property
    def merged(self) -> Path:
        return self.state / "root"

    @classmethod
    def create(cls, store: ImageStore, ref: str, state: Path, keep: bool = False) -> SandboxRoot:
        img = store.resolve(ref)
        root = cls(image=img, state=state, label=ref, keep=keep)
        root.hold_fd = store.hold(img)
        return root

    def prepare(self, policy: Policy, host_workspace: Path | None) -> ImageRoot:
        """Make the layer's directories and the protected copies; what bwrap needs to know."""
        for p in (self.image.rootfs, self.state):
            if _BAD & set(str(p)):
                raise ImageError(self.label, f"path {p} holds a character overlayfs options "
                                 "cannot carry (, : \\ or newline); move $CORRAL_HOME")  # fmt: skip
        rootfs = self.image.rootfs
        if not any(os.path.lexists(rootfs / p) for p in ("bin/bash", "usr/bin/bash")):
            raise ImageError(self.label, "the image has no /bin/bash (corral's shell runs bash)",
                             "unusable")  # fmt: skip
        lim = policy.limits
        if lim.disk and not self.keep:  # a kept layer must outlive the namespace: on disk
            self.quota = (lim.disk, lim.inodes or 0)
            dirs = [self.layer, self.merged]
        else:
            dirs = [self.upper, self.work, self.merged]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        cfg = self.image.config
        workdir = image_workdir(policy, cfg)
        try:
            uid, gid, home = resolve_user(rootfs, cfg.user)
        except ValueError as err:
            raise ImageError(self.label, str(err), "unusable") from None
        self.protected = []
        for i, (entry, inside) in enumerate(
            zip(policy.filesystem.protected, protected_paths(policy, workdir), strict=True)
        ):
            if inside == "/":
                raise ImageError(self.label, "the whole root cannot be a protected path")
            if host_workspace is not None and not entry.startswith("/"):
                # in a host workspace: its own file or directory, as on the host root (the
                # sandbox makes a placeholder first; bound only if it is no symlink then)
                self.protected.append((host_workspace / entry, inside))
                continue
            host = self.state / "protected" / str(i)
            src = _in_image(rootfs, inside, self.label)
            if src is not None and src.is_file():
                host.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, host)
            elif src is not None and src.is_dir():
                shutil.copytree(src, host, symlinks=True)
            else:
                host.mkdir(parents=True)
            self.protected.append((host, inside))
        self.spec = ImageRoot(
            merged=self.merged,
            workdir=workdir,
            env=dict(cfg.env),
            uid=uid,
            gid=gid,
            home=home,
            protected=list(self.protected),
            host_workspace=host_workspace,
        )
        return self.spec

    def wrap(self, argv: list[str], idmap: int | None = None, join: int | None = None
             ) -> list[str]:  # fmt: skip
        """bwrap's command line (with its setpriv/prlimit prefix, if any), run through the helper
        that mounts the overlay first; `idmap`: the sandbox's host id (root supervisor), which
        the image's root-owned files are shown as; `join`: the pid of the agent sandbox's bwrap
        whose mounted root a harness sandbox shares (nothing is mounted then)."""
        if join is not None:
            return [*helper_command(), "--join", str(join), str(self.image.rootfs),
                    str(self.upper), str(self.work), str(self.merged), "--", *argv]  # fmt: skip
        head = [*helper_command(), *(["--idmap", str(idmap)] if idmap is not None else [])]
        if os.environ.get("CORRAL_OVERLAY") == "fuse":  # (the helper starts with a bare env)
            head.append("--fuse")
        if self.quota is not None:
            head += ["--layer-size", f"{self.quota[0]}:{self.quota[1]}"]
        return [*head, str(self.image.rootfs), str(self.upper), str(self.work),
                str(self.merged), "--", *argv]  # fmt: skip

    def hand_over(self, uid: int, gid: int) -> None:
        """Root supervisor, sandbox run as host id `uid`: the layer becomes that id's (what it
        writes is its own; the image below is shown as its own through the idmapped mount), and
        the mount point must be reachable by it (bwrap binds it as that id)."""
        (self.state / "root.lower").mkdir(exist_ok=True)
        for d in (self.layer, self.merged):  # (a tmpfs layer: the helper gives it away)
            for root, dirs, files in os.walk(d):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, uid, gid)
        os.chmod(self.state, 0o711)

    def protected_target(self, inside: str) -> tuple[Path, str] | None:
        """(host dir or file, its path inside) when `inside` lies in a protected path."""
        for host, p in self.protected:
            if inside == p or inside.startswith(p.rstrip("/") + "/"):
                return host, p
        return None

    def usage(self, outer_pid: int | None) -> tuple[int, int] | None:
        """(bytes, inodes) the sandbox's writable layer holds: the tmpfs's own count, read through
        the helper's (now bwrap's) mount namespace while it runs; a plain layer is walked."""
        if self.quota is not None:
            if not outer_pid:
                return None
            try:
                st = os.statvfs(f"/proc/{outer_pid}/root{self.layer}")
            except OSError:
                return None
            return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree
        if not self.upper.exists():
            return 0, 0
        total = files = 0
        for root, dirs, names in os.walk(self.upper):
            for name in dirs + names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                    files += 1
        return total, files

    def release(self) -> None:
        # forgotten before it is closed: two closes of the sandbox run this on two threads
        # (`discard`), and the second must not close the number after someone re-used it
        fd, self.hold_fd = self.hold_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def discard(self) -> Path | None:
        """End of the sandbox: drop the layer (or keep it and say where). Call after every
        process of the sandbox is gone (the overlay is unmounted with its namespace)."""
        self.release()
        if self.keep:
            with contextlib.suppress(OSError):
                self.merged.rmdir()
            _rmtree(self.work)
            return self.upper
        _rmtree(self.state)
        return None
