"""bubblewrap command line for one sandbox.

Only system directories are bound (read-only); the host's home, /tmp, /run, the repository and every
other sandbox's workspace simply do not exist inside. The network namespace holds loopback alone, so
there is no route off the host: the egress gateway is the only way out.
"""

from __future__ import annotations

import functools
import os
import resource
import stat
from dataclasses import dataclass, field
from pathlib import Path

from corral.policy.model import DEFAULT_HIDDEN, Policy
from corral.sandbox import mounttrim

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
    host_uid: int | None = None  # root supervisor: the unprivileged host id bwrap runs as
    seccomp_fd: int | None = None
    tmp_size: int | None = None
    protected_abs: list[str] = field(default_factory=list)
    # fds holding bind data; the caller passes them to bwrap and closes them
    fds: list[int] = field(default_factory=list)
    staged: dict[str, str] = field(default_factory=dict)  # unreachable dir -> its staged mount
    # (resource, soft, hard): set by `prlimit` before bwrap starts when it runs as host_uid (a
    # supervisor may lack CAP_SYS_RESOURCE over another id's processes, as in some containers)
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    image: ImageRoot | None = None  # set: the sandbox's root is this image (build_image_argv)
    # (cgroup dir fd, pid pipe's write end): bwrap born in its v2 cgroup by corral-setid (clone3),
    # the pid reported on the pipe; the caller passes both and closes them
    born_in: tuple[int, int] | None = None


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


# Kernel files no agent needs to write or read: covered read-only (dirs) or by /dev/null (files).
# /proc/sys always: the sandbox's root owns its network namespace's sysctls (the kernel lets it
# write them whatever the host's modes say). The others only where some file under them is open
# to the sandbox's host credentials for writing (`_open_to_write`): each bind is ~0.15 ms of a
# cold start, and on a host where only root may write there none is needed.
PROC_RO_DIRS = ("/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_RO_ALWAYS = ("/proc/sys",)
PROC_MASKED = ("/proc/sysrq-trigger", "/proc/kcore", "/proc/kmsg", "/proc/keys",
               "/proc/timer_list", "/proc/sched_debug", "/proc/kallsyms")  # fmt: skip
BIND_OPTS = ("--bind", "--ro-bind")


def _bind(spec: BwrapSpec, opt: str, src: str, dest: str) -> list[str]:
    """One bind. As an unprivileged host id bwrap resolves sources itself, so a directory it could
    not reach is bound from the staged copy of its mount (`spec.staged`) and a read-only file is
    handed over as data through an fd the supervisor opened."""
    if spec.host_uid is None:
        return [opt, src, dest]
    staged = _staged(spec, src)
    if staged is not None:
        return [opt, staged, dest]
    if opt == "--ro-bind" and os.path.isfile(src) and not reachable(src, spec.host_uid):
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        spec.fds.append(fd)
        return ["--ro-bind-data", str(fd), dest]
    return [opt, src, dest]


def _staged(spec: BwrapSpec, src: str) -> str | None:
    for root, stage in spec.staged.items():
        if src == root or src.startswith(root.rstrip("/") + "/"):
            return stage + src[len(root) :]
    return None


def reachable(path: str, uid: int | None = None) -> bool:
    """Can host id `uid` (any id, when None) walk down to `path`: every parent directory searchable
    by others, or owned by `uid` and searchable by its owner?"""
    p = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.stat(p)
        except OSError:
            return False
        if not (st.st_mode & 0o001 or uid is not None and st.st_uid == uid and st.st_mode & 0o100):
            return False
        if p == "/":
            return True
        p = os.path.dirname(p)


def _fd_binds(spec: BwrapSpec, args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in BIND_OPTS and i + 2 < len(args):
            out += _bind(spec, args[i], args[i + 1], args[i + 2])
            i += 3
            continue
        out.append(args[i])
        i += 1
    return out


def closed_to_sandbox(path: str, host_uid: int | None, st: os.stat_result | None = None) -> bool:
    """Whether the sandbox could neither read nor write `path` (a regular file), or neither list
    nor enter it (a directory), with its host credentials: no mount is needed to hide it.

    Root supervisor (`host_uid`): the agent runs as a fresh host id with no groups and no host
    capability, so only a file's "other" bits apply to it (no ACL entry can name an id made
    for one sandbox). Ordinary supervisor: the agent has the supervisor's own credentials, so
    `access()` answers (ACLs and groups included). Root without an id of its own: never.
    `st`: the path's `lstat`, when the caller has it.
    """
    if st is None:
        try:
            st = os.lstat(path)
        except OSError:
            return False
    is_dir = stat.S_ISDIR(st.st_mode)
    if not (is_dir or stat.S_ISREG(st.st_mode)):
        return False  # a symlink or a device: covered as before
    if host_uid is not None:
        if host_uid in (st.st_uid, st.st_gid):
            return False
        need = (stat.S_IROTH | stat.S_IXOTH) if is_dir else (stat.S_IROTH | stat.S_IWOTH)
        return not st.st_mode & need
    if os.geteuid() == 0:
        return False
    modes = (os.R_OK, os.X_OK) if is_dir else (os.R_OK, os.W_OK)
    return not any(os.access(path, m) for m in modes)


@dataclass(frozen=True)
class _Writers:
    """Who may write an entry under a directory, from the entries' owners and modes."""

    owners: frozenset[int]  # owners of entries with the owner's write bit
    groups: frozenset[int]  # groups of entries with the group's write bit
    others: bool  # some entry is writable by anyone
    us: bool  # `access(W_OK)` says yes for some entry, with this process's credentials


@functools.lru_cache(maxsize=16)
def _writers(root: str, euid: int, groups: tuple[int, ...]) -> _Writers:
    """Walked once per process and credentials (~1 ms for /proc/irq); symlinks are skipped.

    LIMITATION: a kernel entry made later (a new IRQ's directory) is not seen; the kernel makes
    those root's and 0644 or narrower, as the ones it walked."""
    owners: set[int] = set()
    group_w: set[int] = set()
    others = us = False
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = os.path.join(top, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & stat.S_IWUSR:
                owners.add(st.st_uid)
            if st.st_mode & stat.S_IWGRP:
                group_w.add(st.st_gid)
            others = others or bool(st.st_mode & stat.S_IWOTH)
            us = us or (euid != 0 and os.access(p, os.W_OK))
    return _Writers(frozenset(owners), frozenset(group_w), others, us)


def _open_to_write(root: str, host_uid: int | None) -> bool:
    """Could the sandbox write anything under `root` (a /proc directory global to the host)?
    Root supervisor: the agent is a fresh host id whose only group is its own id, so only an
    entry it owns, its group's, or writable by others is open to it. Ordinary supervisor: the
    agent has our credentials (`access`). Root without an id of its own: always."""
    if not os.path.isdir(root):
        return False
    euid = os.geteuid()
    if host_uid is None and euid == 0:
        return True
    w = _writers(root, euid, tuple(sorted(os.getgroups())))
    if host_uid is None:
        return w.us
    return w.others or host_uid in w.owners or host_uid in w.groups


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def isolation_args(spec: BwrapSpec) -> list[str]:
    """The hardening every sandbox gets, whatever its root (host or image): namespaces, no new
    user namespaces, the agent's identity (root inside, an unprivileged id or no capabilities
    outside), the seccomp filter. build_argv and build_image_argv both start with these."""
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
    if spec.host_uid is not None:
        # bwrap runs as the sandbox's own unprivileged host id (see identity.py); root inside
        argv += ["--uid", "0", "--gid", "0"]
    elif os.geteuid() == 0:
        argv += ["--cap-drop", "ALL"]
    if spec.seccomp_fd is not None:
        argv += ["--seccomp", str(spec.seccomp_fd)]
    return argv


def kernel_surface_args(shm_size: int | None = None, host_uid: int | None = None) -> list[str]:
    """/proc with the kernel's writable and secret files covered, and a private /dev: the same
    for a host root and an image root. A masked file the sandbox's host id could neither read
    nor write anyway (/proc/kmsg, /proc/kcore: root's alone) needs no mount."""
    argv = ["--proc", "/proc"]
    for d in PROC_RO_DIRS:
        if d in PROC_RO_ALWAYS and os.path.isdir(d) or _open_to_write(d, host_uid):
            argv += ["--ro-bind", d, d]
    for f in PROC_MASKED:
        if os.path.exists(f) and not closed_to_sandbox(f, host_uid):
            argv += ["--ro-bind", "/dev/null", f]
    # /dev/shm a capped tmpfs of its own; /dev itself is made read-only at the end (dev_read_only)
    shm = ["--size", str(shm_size)] if shm_size else []
    return [*argv, "--dev", "/dev", *shm, "--tmpfs", "/dev/shm"]


def dev_read_only() -> list[str]:
    """After the last device is bound: nothing can be written to /dev but /dev/shm."""
    return ["--remount-ro", "/dev"]


def identity_prefix(spec: BwrapSpec, argv: list[str], trim: bool = False) -> list[str]:
    """A root supervisor starts bwrap as the sandbox's own host id, its rlimits already set:
    through `corral-setid` (one exec, setid.c) where `make install` built it, else through
    `prlimit` and `setpriv` (two). `trim`: the host mounts bwrap never binds from are detached
    from setid's own copy of the mount table first (`mounttrim`)."""
    if spec.host_uid is None:
        return argv
    helper = setid_binary()
    if helper is not None:
        limits = [f"--rlimit={w}:{soft}:{hard}" for w, soft, hard in spec.rlimits]
        trims = mounttrim.trim_args(argv) if trim else []
        born = ([f"--cgroup-fd={spec.born_in[0]}", f"--pid-fd={spec.born_in[1]}"]
                if spec.born_in else [])  # fmt: skip
        return [str(helper), str(spec.host_uid), str(spec.host_uid), *limits, *trims, *born, "--",
                *argv]  # fmt: skip
    return [*prlimit_prefix(spec.rlimits), *setpriv_prefix(spec.host_uid), *argv]


SETID_NAME = "corral-setid"


@functools.lru_cache(maxsize=1)
def setid_binary() -> Path | None:
    """The compiled `corral-setid` next to this module, or None (then prlimit + setpriv).
    `CORRAL_SETID=off` forces the fallback (tests compare the two)."""
    if os.environ.get("CORRAL_SETID") == "off":
        return None
    cand = Path(__file__).with_name(SETID_NAME)
    return cand if cand.is_file() and os.access(cand, os.X_OK) else None


def build_argv(bwrap: str, spec: BwrapSpec, command: list[str]) -> list[str]:
    pol = spec.policy
    fs = pol.filesystem
    ws_in = fs.workspace.path
    argv = [bwrap, *isolation_args(spec)]
    bound: list[str] = []
    for d in SYSTEM_DIRS:  # (one lstat each: this runs at every start)
        st = _lstat(d)
        if st is None:
            continue
        if stat.S_ISLNK(st.st_mode):
            argv += ["--symlink", os.readlink(d), d]
        elif stat.S_ISDIR(st.st_mode):
            argv += ["--ro-bind", d, d]
            bound.append(d)
    argv += kernel_surface_args(spec.tmp_size, spec.host_uid)
    if spec.tmp_size:
        argv += ["--size", str(spec.tmp_size)]
    argv += ["--tmpfs", "/tmp", "--dir", SANDBOX_HOME]
    for p in fs.read_only:
        if Path(p).exists():
            argv += _bind(spec, "--ro-bind", p, p)
            bound.append(p)
    for p in fs.read_write:
        if Path(p).exists():
            argv += _bind(spec, "--bind", p, p)
            bound.append(p)
    mode = "--bind" if fs.workspace.mode == "rw" else "--ro-bind"
    argv += _bind(spec, mode, str(spec.workspace), ws_in)
    bound.append(str(spec.workspace))
    for rel in fs.protected:
        if rel.startswith("/"):  # a path in an image (build_image_argv binds those)
            continue
        host = spec.workspace / rel
        st = _lstat(str(host))
        if st is not None and not stat.S_ISLNK(st.st_mode):
            # each parent of a nested protected path becomes a mount point of its own, so the
            # agent cannot rename it away (`mv pkg pkg_old && mkdir -p pkg/tests`): EBUSY
            parts = rel.strip("/").split("/")
            for i in range(1, len(parts)):
                anc = "/".join(parts[:i])
                if (spec.workspace / anc).is_dir() and not (spec.workspace / anc).is_symlink():
                    argv += _bind(spec, mode, str(spec.workspace / anc),
                                  f"{ws_in.rstrip('/')}/{anc}")  # fmt: skip
            argv += _bind(spec, "--ro-bind", str(host), f"{ws_in.rstrip('/')}/{rel}")
    # Hide what lies under a bound tree: secrets by name, and anything of the supervisor's.
    # A default secret the sandbox's host id could not read anyway costs no mount (each is
    # ~0.1 ms of a cold start); what else the policy or the supervisor names is always covered.
    always = (set(fs.hidden) - set(DEFAULT_HIDDEN)) | set(spec.supervisor_paths)
    for p in dict.fromkeys([*DEFAULT_HIDDEN, *fs.hidden, *spec.supervisor_paths]):
        if not _under(p, bound):
            continue
        st = _lstat(p)
        if st is None:
            continue
        if p not in always and closed_to_sandbox(p, spec.host_uid, st):
            continue
        if stat.S_ISDIR(st.st_mode):
            argv += ["--tmpfs", p, "--remount-ro", p]
        else:
            argv += ["--ro-bind", "/dev/null", p]
    for dev in spec.gpu_devices:
        argv += ["--dev-bind", dev, dev]
    for d in spec.scratch_dirs:  # sized as /tmp is
        argv += [*(["--size", str(spec.tmp_size)] if spec.tmp_size else []), "--tmpfs", d]
    # the sandbox's own root is a tmpfs: make it read-only too, once every mount point exists
    argv += [*dev_read_only(), "--remount-ro", "/"]
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": SANDBOX_HOME,
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        # the session's shell: bash looks it up in the user database when unset (getpwuid, whose
        # two nscd connect()s are two round trips to the seccomp listener at every start)
        "SHELL": "/bin/bash",
        "CORRAL_SANDBOX_ID": spec.sandbox_id,
        "CORRAL_EPISODE_ID": spec.episode_id,
        **spec.extra_env,
    }
    argv += ["--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    argv += ["--chdir", ws_in, *_fd_binds(spec, spec.extra_args), "--", *command]
    return identity_prefix(spec, argv, trim=True)


def build_image_argv(bwrap: str, spec: BwrapSpec, command: list[str]) -> list[str]:
    """The command line of a sandbox whose root is an image (see `corral.images.rootfs`).

    The root is the overlay corral-overlay-exec mounted (bwrap makes every bind nosuid, the overlay
    itself is mounted nosuid,nodev): the agent may write anywhere in it, and every write lands in
    the sandbox's own layer. Nothing of the host is bound but what the policy names (read_only,
    read_write), a host workspace when one was given, and the GPU devices; protected paths are
    per-sandbox host directories bound read-only over their place in the image, so the harness
    can still write them from outside while the agent cannot. The hardening (isolation_args,
    kernel_surface_args, identity_prefix) is the host root's, from the same functions.
    """
    img = spec.image
    assert img is not None
    fs = spec.policy.filesystem
    argv = [bwrap, *isolation_args(spec), "--bind", str(img.merged), "/"]
    argv += kernel_surface_args(spec.tmp_size, spec.host_uid)
    for p in fs.read_only:
        if Path(p).exists():
            argv += _bind(spec, "--ro-bind", p, p)
    for p in fs.read_write:
        if Path(p).exists():
            argv += _bind(spec, "--bind", p, p)
    if img.host_workspace is not None:
        mode = "--bind" if fs.workspace.mode == "rw" else "--ro-bind"
        argv += _bind(spec, mode, str(img.host_workspace), img.workdir)
    for host, inside in img.protected:
        if host.exists() and not host.is_symlink():
            argv += _bind(spec, "--ro-bind", str(host), inside)
    for dev in spec.gpu_devices:
        argv += ["--dev-bind", dev, dev]
    argv += dev_read_only()
    env = {
        "HOME": img.home,
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "SHELL": "/bin/bash",  # (as on a host root; the image's own wins)
        **img.env,
        "PATH": img.env.get("PATH") or SANDBOX_PATH,
        "CORRAL_SANDBOX_ID": spec.sandbox_id,
        "CORRAL_EPISODE_ID": spec.episode_id,
        **spec.extra_env,
    }
    argv += ["--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    if img.uid or img.gid:  # the image's own user (after isolation_args' --uid 0, so it wins)
        argv += ["--uid", str(img.uid), "--gid", str(img.gid)]
    argv += ["--chdir", img.workdir, *_fd_binds(spec, spec.extra_args), "--", *command]
    return identity_prefix(spec, argv)


_PRLIMIT_FLAGS = {resource.RLIMIT_AS: "as", resource.RLIMIT_NPROC: "nproc",
                  resource.RLIMIT_NOFILE: "nofile", resource.RLIMIT_FSIZE: "fsize",
                  resource.RLIMIT_CPU: "cpu", resource.RLIMIT_CORE: "core",
                  resource.RLIMIT_DATA: "data", resource.RLIMIT_STACK: "stack",
                  resource.RLIMIT_MEMLOCK: "memlock"}  # fmt: skip


def prlimit_prefix(rlimits: list[tuple[int, int, int]]) -> list[str]:
    if not rlimits:
        return []
    return ["prlimit", *(f"--{_PRLIMIT_FLAGS[w]}={soft}:{hard}" for w, soft, hard in rlimits), "--"]


def setpriv_prefix(uid: int) -> list[str]:
    """Run bwrap as `uid` with no supplementary groups and no way to regain privilege."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--no-new-privs", "--"]  # fmt: skip
