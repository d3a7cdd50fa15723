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
    # empty private tmpfs directories at these absolute paths (ROCK images let harnesses create
    # /tests, /app): made before the root turns read-only, gone with the sandbox
    scratch_dirs: list[str] = field(default_factory=list)


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def build_argv(bwrap: str, spec: BwrapSpec, command: list[str]) -> list[str]:
    pol = spec.policy
    fs = pol.filesystem
    ws_in = fs.workspace.path
    argv = [
        bwrap,
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
    for d in spec.scratch_dirs:
        argv += ["--tmpfs", d]
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
