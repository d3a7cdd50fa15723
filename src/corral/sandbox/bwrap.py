"""bubblewrap command line for one sandbox.

Only system directories are bound (read-only); the host's home, /tmp, /run, the repository and every
other sandbox's workspace simply do not exist inside. The network namespace holds loopback alone, so
there is no route off the host: the egress gateway is the only way out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from corral.policy.model import Policy

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_HOME = "/tmp/home"


@dataclass
class BwrapSpec:
    policy: Policy
    workspace: Path
    sandbox_id: str
    episode_id: str
    info_fd: int
    supervisor_paths: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    gpu_devices: list[str] = field(default_factory=list)
    image: ImageRoot | None = None  # set: the sandbox's root is this image (build_image_argv)


@dataclass
class ImageRoot:
    """A sandbox's image root, as `corral.images.rootfs` prepared it: the mounted overlay (image
    below, the sandbox's own writable layer above) and what the image's config asks for."""

    merged: Path  # where corral-overlay-exec mounts the overlay; bound as the sandbox's /
    workdir: str  # the workspace inside: the image's WorkingDir unless the policy names one
    env: dict[str, str]  # the image's Env (PATH included)
    uid: int = 0
    gid: int = 0
    home: str = "/root"
    protected: list[tuple[Path, str]] = field(default_factory=list)  # (host dir, path inside)
    host_workspace: Path | None = None  # a host directory bound at `workdir`, when one was given


def isolation_args(spec: BwrapSpec) -> list[str]:
    """The hardening every sandbox gets, whatever its root (host or image): namespaces, no new
    user namespaces, no capabilities. Both build_argv and build_image_argv start with these."""
    argv = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "corral",
        "--info-fd",
        str(spec.info_fd),
    ]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
    return argv


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def build_argv(bwrap: str, spec: BwrapSpec, command: list[str]) -> list[str]:
    pol = spec.policy
    fs = pol.filesystem
    ws_in = fs.workspace.path
    argv = [bwrap, *isolation_args(spec)]
    bound: list[str] = []
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            argv += ["--ro-bind", d, d]
            bound.append(d)
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", SANDBOX_HOME]
    for p in fs.read_only:
        if Path(p).exists():
            argv += ["--ro-bind", p, p]
            bound.append(p)
    for p in fs.read_write:
        if Path(p).exists():
            argv += ["--bind", p, p]
            bound.append(p)
    mode = "--bind" if fs.workspace.mode == "rw" else "--ro-bind"
    argv += [mode, str(spec.workspace), ws_in]
    for rel in fs.protected:
        if rel.startswith("/"):  # a path in an image (build_image_argv binds those)
            continue
        host = spec.workspace / rel
        if host.exists():
            argv += ["--ro-bind", str(host), f"{ws_in.rstrip('/')}/{rel}"]
    # Hide what lies under a bound tree: secrets by name, and anything of the supervisor's.
    for p in [*fs.hidden, *spec.supervisor_paths]:
        if not _under(p, bound) or not os.path.lexists(p):
            continue
        if os.path.isdir(p) and not os.path.islink(p):
            argv += ["--tmpfs", p, "--remount-ro", p]
        else:
            argv += ["--ro-bind", "/dev/null", p]
    for dev in spec.gpu_devices:
        argv += ["--dev-bind", dev, dev]
    # the sandbox's own root is a tmpfs: make it read-only too, once every mount point exists
    argv += ["--remount-ro", "/"]
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": SANDBOX_HOME,
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "CORRAL_SANDBOX_ID": spec.sandbox_id,
        "CORRAL_EPISODE_ID": spec.episode_id,
        **spec.extra_env,
    }
    argv += ["--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    argv += ["--chdir", ws_in, *spec.extra_args, "--", *command]
    return argv


def build_image_argv(bwrap: str, spec: BwrapSpec, command: list[str]) -> list[str]:
    """The command line of a sandbox whose root is an image (see `corral.images.rootfs`).

    The root is the overlay corral-overlay-exec mounted (bwrap makes every bind nosuid, the overlay
    itself is mounted nosuid,nodev): the agent may write anywhere in it, and every write lands in
    the sandbox's own layer. Nothing of the host is bound but what the policy names (read_only,
    read_write), a host workspace when one was given, and the GPU devices; protected paths are
    per-sandbox host directories bound read-only over their place in the image, so the harness
    can still write them from outside while the agent cannot.
    """
    img = spec.image
    assert img is not None
    fs = spec.policy.filesystem
    argv = [bwrap, *isolation_args(spec), "--bind", str(img.merged), "/"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for p in fs.read_only:
        if Path(p).exists():
            argv += ["--ro-bind", p, p]
    for p in fs.read_write:
        if Path(p).exists():
            argv += ["--bind", p, p]
    if img.host_workspace is not None:
        mode = "--bind" if fs.workspace.mode == "rw" else "--ro-bind"
        argv += [mode, str(img.host_workspace), img.workdir]
    for host, inside in img.protected:
        argv += ["--ro-bind", str(host), inside]
    for dev in spec.gpu_devices:
        argv += ["--dev-bind", dev, dev]
    env = {
        "HOME": img.home,
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        **img.env,
        "PATH": img.env.get("PATH") or SANDBOX_PATH,
        "CORRAL_SANDBOX_ID": spec.sandbox_id,
        "CORRAL_EPISODE_ID": spec.episode_id,
        **spec.extra_env,
    }
    argv += ["--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    if img.uid or img.gid:
        argv += ["--uid", str(img.uid), "--gid", str(img.gid)]
    argv += ["--chdir", img.workdir, *spec.extra_args, "--", *command]
    return argv
