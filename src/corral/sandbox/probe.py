"""What this host can enforce, found by trying rather than assuming.

`corral doctor` prints this; the sandbox consults it to refuse, with the cause and the fix, a policy
it cannot hold.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")


@dataclass
class Capabilities:
    root: bool
    bwrap: str | None
    bwrap_version: str | None
    userns: bool
    userns_error: str | None
    cgroup_version: int | None  # 1, 2 or None
    cgroup_controllers: list[str] = field(default_factory=list)
    cgroup_writable: bool = False
    cgroup_base: str | None = None
    # cgroup v2 mounted with `favordynmods` (None: not v2): without it the first move of a
    # sandbox's processes into its cgroup after an idle spell waits for an RCU grace period
    cgroup_favordynmods: bool | None = None
    seccomp: bool = False
    seccomp_actions: list[str] = field(default_factory=list)
    proc_connector: bool | None = None
    gpu_devices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _bwrap_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip().split()[-1] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def _try_userns(bwrap: str) -> tuple[bool, str | None]:
    # --as-pid-1: no bwrap init between, so the outer bwrap reaps /bin/true itself (with an init,
    # the outer one exits on the status it reports and the init is left to the host's PID 1)
    cmd = [bwrap, "--unshare-all", "--as-pid-1", "--die-with-parent", "--ro-bind", "/", "/", "--",
           "/bin/true"]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    if out.returncode == 0:
        return True, None
    return False, out.stderr.strip() or f"bwrap exited {out.returncode}"


def _cgroup_v2_base() -> Path | None:
    """Root: a corral cgroup at the top. Not root: our own cgroup when it was delegated to us."""
    if os.geteuid() == 0:
        return CGROUP_ROOT / "corral"
    try:
        own = Path("/proc/self/cgroup").read_text().strip().splitlines()[0].split("::", 1)[1]
    except (OSError, IndexError):
        return None
    parent = CGROUP_ROOT / own.lstrip("/")
    return parent.parent / "corral" if os.access(parent.parent, os.W_OK) else None


def _cgroups() -> tuple[int | None, list[str], bool, str | None]:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        base = _cgroup_v2_base()
        writable = base is not None and (
            base.exists() and os.access(base, os.W_OK) or os.access(base.parent, os.W_OK)
        )
        return 2, controllers, writable, str(base) if base else None
    present = [c for c in V1_CONTROLLERS if (CGROUP_ROOT / c / "cgroup.procs").exists()]
    if not present:
        return None, [], False, None
    writable = all(os.access(CGROUP_ROOT / c, os.W_OK) for c in present)
    return 1, present, writable, str(CGROUP_ROOT / "<controller>" / "corral")


def cgroup2_favors_dynmods(mounts: str | None = None) -> bool | None:
    """Whether the cgroup v2 hierarchy at /sys/fs/cgroup is mounted with `favordynmods` (None: no
    cgroup2 mount there). `mounts`: a /proc/self/mounts text (read when not given)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    found = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup2" and fields[1] == str(CGROUP_ROOT):
            found = "favordynmods" in fields[3].split(",")  # (the last mount there wins)
    return found


FAVORDYNMODS_NOTE = (
    "cgroup v2 is mounted without favordynmods and corral runs as an ordinary user: a sandbox"
    " started after an idle spell waits for an RCU grace period while its processes are moved into"
    " their cgroup (cold start 30.6 ms after 200 ms idle against 9.7 ms back to back, measured on a"
    " 16-core cgroup v2 host). As root, corral-setid starts them inside it (11.6 ms); else remove"
    " the wait host-wide with `sudo mount -o remount,favordynmods /sys/fs/cgroup` (Linux 6.0+;"
    " forks and exits cost a little more: 9.6 ms); corral does not change host mounts itself"
)


def _seccomp() -> tuple[bool, list[str]]:
    try:
        actions = Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return False, []
    return True, actions


@functools.lru_cache(maxsize=1)
def probe() -> Capabilities:
    bwrap = shutil.which("bwrap")
    version = _bwrap_version(bwrap) if bwrap else None
    userns, userns_err = _try_userns(bwrap) if bwrap else (False, "bwrap not installed")
    version_cg, controllers, writable, base = _cgroups()
    seccomp, actions = _seccomp()
    gpus = sorted(str(p) for p in Path("/dev").glob("nvidia*")) + sorted(
        str(p) for p in Path("/dev/dri").glob("*") if Path("/dev/dri").exists()
    )
    caps = Capabilities(
        root=os.geteuid() == 0,
        bwrap=bwrap,
        bwrap_version=version,
        userns=userns,
        userns_error=userns_err,
        cgroup_version=version_cg,
        cgroup_controllers=controllers,
        cgroup_writable=writable,
        cgroup_base=base,
        cgroup_favordynmods=cgroup2_favors_dynmods() if version_cg == 2 else None,
        seccomp=seccomp,
        seccomp_actions=actions,
        gpu_devices=gpus,
    )
    if not bwrap:
        caps.notes.append("install bubblewrap: sudo apt-get install -y bubblewrap")
    elif not userns:
        caps.notes.append(
            "user namespaces unavailable: enable with `sudo sysctl -w kernel.unprivileged_userns_clone=1`"
            " (and kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04+), or run as root"
        )
    if version_cg and not writable:
        caps.notes.append(
            "cgroups not writable by this user: limits fall back to rlimits (no CPU quota, per-user"
            " pids); run as root or in a delegated cgroup (systemd-run --user --scope -p Delegate=yes)"
        )
    if version_cg == 2 and writable and caps.cgroup_favordynmods is False and not caps.root:
        caps.notes.append(FAVORDYNMODS_NOTE)
    return caps
