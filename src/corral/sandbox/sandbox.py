"""`corral.Sandbox`: one contained episode with a persistent shell.

The sandbox refuses to start rather than run with less isolation than its policy asks for. Every
lifecycle step, command and limit hit becomes an event tied to the sandbox, the episode and the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import psutil

from corral.contracts import ExecResult, GateDecision  # noqa: F401 - their old import path
from corral.events.model import Event, severity_rank
from corral.events.sink import EventSink
from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.sandbox import ahead, discard, files, identity, stage, syscalls, treewalk, usage
from corral.sandbox.bwrap import BwrapSpec, build_argv, build_image_argv, setid_binary
from corral.sandbox.errors import (
    PathOutsideWorkspace,
    ProtectedPath,
    SandboxClosed,
    SandboxRefused,
)
from corral.sandbox.limits import (
    Cgroup,
    CgroupCounters,
    LimitReport,
    cgroup_name,
    rlimits_for,
    sweep_stale_cgroups,
)
from corral.sandbox.probe import Capabilities, probe
from corral.sandbox.procs import children_of, of_dead_supervisor
from corral.sandbox.reap import adopt_child, finish, kill_init
from corral.sandbox.session import ShellSession, open_session
from corral.sandbox.shell import (
    Capture,
    OutputCallback,
    ShellChannel,
    bootstrap,
    frame,
    new_key,
)
from corral.sandbox.workspace import check_workspace
from corral.store.paths import corral_home
from corral.store.sqlite import EventStore

TIMEOUT_EXIT = 124
KILLED_EXIT = 137
CTL_FD_LOW = 9  # below bash's own saved-fd range (10+) and any open-files limit (>= 16)
_RO_RE = re.compile(
    r"(?:['‘\"](/?[^\s'’\":]+)['’\"]: Read-only file system)"
    r"|(?:(?:^|\s)(/?[^\s'’\":]+): Read-only file system)"
    r"|(?:Read-only file system: ['\"]([^'\"]+)['\"])",
    re.MULTILINE,
)

_swept = False
_swept_workspaces = False


def _sweep_workspaces(root: Path) -> None:
    """Remove workspaces of supervisors that died without closing (named `<pid>-<sandbox>-*`)."""
    global _swept_workspaces
    _swept_workspaces = True
    for d in of_dead_supervisor(root):
        treewalk.rmtree(str(d))


def rlimit_triples(rlimits: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each limit, as the sandbox's processes get them."""
    import resource

    out = []
    for which, value in rlimits:
        # CPU: SIGXCPU at the limit (visible as such), SIGKILL a second later
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        own = resource.getrlimit(which)[1]
        if own != resource.RLIM_INFINITY and hard > own:
            # the kernel refuses to raise a hard limit past the supervisor's own (even for
            # root, across the sandbox's user namespace): hold the stricter one instead
            value, hard = min(value, own), own
        out.append((which, value, hard))
    return out


class Attachment(Protocol):
    """A part that wraps the sandbox's first process (the egress gateway): called on every spawn.
    It may also have `cloned(sandbox, init_pid)`, called as soon as bwrap reports the sandbox's
    init (its namespaces exist; bwrap is still mounting its root; nothing of the agent runs)."""

    def prepare(self, sandbox: Sandbox, spec: BwrapSpec, command: list[str]
                ) -> tuple[list[str], tuple[int, ...]]: ...  # fmt: skip
    async def started(self, sandbox: Sandbox, bwrap_pid: int) -> None: ...
    async def stopped(self, sandbox: Sandbox) -> None: ...


GateHook = Callable[[str, "Sandbox", int], "Awaitable[GateDecision] | GateDecision"]


class Sandbox:
    """Async context manager: `async with Sandbox() as sb: await sb.exec("ls")`."""

    def __init__(
        self,
        policy: Policy | str | None = None,
        *,
        workspace: str | Path | None = None,
        episode_id: str | None = None,
        sandbox_id: str | None = None,
        events_file: str | Path | None = None,
        store: EventStore | bool | None = True,
        sink: EventSink | None = None,
        gate: GateHook | None = None,
        extra_env: dict[str, str] | None = None,
        extra_bwrap_args: list[str] | None = None,
        egress: Attachment | bool | None = True,
        image: str | None = None,
        keep: bool = False,
        scratch_dirs: list[str] | None = None,
    ) -> None:
        self.policy = load_policy(policy)
        # the task's image as the sandbox's root (None: the host's read-only root); `keep` leaves
        # the sandbox's writable layer on disk at close (its path in `kept_layer`)
        self.image = image or self.policy.image
        self.keep = keep
        self.kept_layer: Path | None = None
        self._root: Any = None  # corral.images.rootfs.SandboxRoot, while running on an image
        self._join: Sandbox | None = (
            None  # a harness sandbox: the agent sandbox whose root it shares
        )
        self.id = sandbox_id or "sb-" + uuid.uuid4().hex[:12]
        self.episode_id = episode_id or "ep-" + uuid.uuid4().hex[:12]
        self._own_workspace = workspace is None
        self._workspace_arg = Path(workspace) if workspace else None
        self.workspace: Path | None = None
        self.identity: identity.HostIdentity | None = None
        self._owners: identity.Owners = {}
        self._placeholders: list[Path] = []
        # what this start took from (or would have): `ahead` makes the next one's after close
        self._ahead_root: Path | None = None
        self._ahead_cgroup = False
        self._stages: dict[str, str] = {}
        self._harness: Sandbox | None = None
        self._disk_base: usage.Usage | None = None
        self._prep: asyncio.Future[None] | None = None  # _prepare_workspace, while bwrap starts
        self._disk_hit: set[str] = set()
        self._refusals: dict[str, int] = {}
        self._borrowed_identity = False
        self._own_sink = sink is None
        if sink is None:
            if store is True:
                store = EventStore.shared()
            sink = EventSink(store=store or None, jsonl=events_file)
        self.sink = sink
        if gate is None and self.policy.gate.enabled:
            from corral.rules.gate import make_gate

            gate = make_gate(self.policy)
        self.gate = gate
        self.extra_env = dict(extra_env or {})
        self.extra_bwrap_args = list(extra_bwrap_args or [])
        self.scratch_dirs = list(scratch_dirs or [])
        if egress is True:
            # the gateway is the only way out and the firewall log; False leaves the sandbox with
            # no network at all and nothing recorded of its attempts
            from corral.egress import Egress

            egress = Egress()
        self.egress: Attachment | None = egress or None
        self.events: list[Event] = []
        self.limits = LimitReport()
        self.caps: Capabilities | None = None
        self.cgroup: Cgroup | None = None
        self.step = 0
        self.penalty = 0.0
        self.closed_reason: str | None = None
        self.terminated = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: ShellChannel | None = None
        self._teardown_task: asyncio.Future[None] | None = None
        self._init_pid: int | None = None
        self._lock = asyncio.Lock()
        self._counters = CgroupCounters()
        self._disk_small = True  # the last disk look found few files (see _check_disk)
        self._next_id = 0
        self._started_at = 0.0
        self._wall_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # the close under way (see close())
        self._ctl_fd_inside = 0
        self._shell_pid: int | None = None
        self._attached = False  # to the monitor (see _attach_while_shell_loads)
        self._attach_error: Exception | None = None
        self.sessions: dict[str, ShellSession] = {}

    # ---------------------------------------------------------------- events
    def emit(self, **fields: Any) -> Event:
        fields.setdefault("sandbox_id", self.id)
        fields.setdefault("episode_id", self.episode_id)
        event = Event(**fields)
        self.events.append(event)
        self.sink.emit(event)
        return event

    @property
    def worst(self) -> Event | None:
        flagged = [e for e in self.events if e.severity != "info"]
        return max(flagged, key=lambda e: severity_rank(e.severity), default=None)

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_enforceable(self, caps: Capabilities) -> None:
        if not caps.bwrap:
            raise SandboxRefused(
                "bubblewrap (bwrap) is not installed",
                "sudo apt-get install -y bubblewrap (or `make install`)",
            )
        if not caps.userns:
            raise SandboxRefused(
                f"bubblewrap cannot create namespaces here: {caps.userns_error}",
                "allow unprivileged user namespaces (sudo sysctl -w kernel.unprivileged_userns_clone=1;"
                " on Ubuntu 24.04+ also kernel.apparmor_restrict_unprivileged_userns=0) or run as root",
            )
        gpu = self.policy.gpu
        if gpu.allowed and not caps.gpu_devices:
            raise SandboxRefused(
                "the policy grants a GPU but no /dev/nvidia* device exists on this host",
                "run on a GPU host or set gpu.allowed: false",
            )

    def _gpu_devices(self, caps: Capabilities) -> list[str]:
        if not self.policy.gpu.allowed:
            return []
        wanted = self.policy.gpu.devices
        out = []
        for dev in caps.gpu_devices:
            name = Path(dev).name
            m = re.fullmatch(r"nvidia(\d+)", name)
            if m and wanted and int(m.group(1)) not in wanted:
                continue
            out.append(dev)
        return out

    def _setup_limits(self, caps: Capabilities) -> list[tuple[int, int]]:
        lim = self.policy.limits
        report = LimitReport(
            values={
                "memory": lim.memory,
                "pids": lim.pids,
                "cpus": lim.cpus,
                "cpu_time": lim.cpu_time,
                "open_files": lim.open_files,
                "file_size": lim.file_size,
                "wall_time": lim.wall_time,
                "command_timeout": lim.command_timeout,
            }
        )
        report.mechanisms = {k: None for k in report.values}
        report.mechanisms["wall_time"] = "timer"
        report.mechanisms["command_timeout"] = "timer"
        report.values["disk"] = lim.disk
        report.values["inodes"] = lim.inodes
        report.mechanisms["disk"] = "tmpfs size (/tmp) + workspace scan"
        report.mechanisms["inodes"] = "workspace scan"
        if caps.cgroup_version and caps.cgroup_writable:
            self._ahead_cgroup = True
            self.cgroup = ahead.reserve.take_cgroup(caps, lim, report)  # made ahead, limited
        if self.cgroup is None and caps.cgroup_version and caps.cgroup_writable:
            cg = Cgroup(cgroup_name(self.id), caps)
            try:
                cg.create()
                cg.apply(lim, report)
                self.cgroup = cg
            except OSError as err:
                cg.destroy()
                self.cgroup = None
                report.mechanisms.update({"memory": None, "pids": None, "cpus": None})
                report.values["cgroup_error"] = None
                self.emit(
                    source="sandbox",
                    rule="sandbox.cgroup_unavailable",
                    message=f"cgroup setup failed, falling back to rlimits: {err}",
                )
        rl = rlimits_for(
            lim,
            report,
            have_cgroup_memory=report.mechanisms.get("memory") is not None,
            have_cgroup_pids=report.mechanisms.get("pids") is not None,
        )
        self.limits = report
        missing = report.missing()
        if missing and lim.enforcement == "strict":
            if self.cgroup:
                self.cgroup.destroy()
                self.cgroup = None
            raise SandboxRefused(
                f"policy {self.policy.name!r} asks for limits this host cannot enforce: "
                + ", ".join(missing),
                "run as root or in a delegated cgroup (systemd-run --user --scope -p Delegate=yes),"
                " or use a policy with limits.enforcement: best_effort, or set those limits to null",
            )
        return rl

    async def start(self) -> None:
        if self._proc is not None:
            return
        if self.closed_reason:
            raise SandboxClosed(self.closed_reason)
        caps = self.caps = probe()
        self._check_enforceable(caps)
        global _swept
        if caps.cgroup_writable and not _swept:  # once per supervisor process is enough
            _swept = True
            with contextlib.suppress(OSError):
                sweep_stale_cgroups(caps)
            if caps.root:
                with contextlib.suppress(OSError):
                    stage.sweep()
        if self.image and self._root is None:
            await asyncio.to_thread(self._prepare_image)
        placeholders_made = False
        ahead_base: usage.Usage | None = None  # a made-ahead workspace's disk use, measured then
        if self.workspace is None:
            if self._workspace_arg is not None:
                self.workspace = check_workspace(self._workspace_arg, [str(corral_home())])
            else:
                root = stage.sandboxes_root(corral_home() / "sandboxes")
                if not _swept_workspaces:
                    await asyncio.to_thread(_sweep_workspaces, root)
                name = f"{os.getpid()}-{self.id}-"
                self._ahead_root = root
                taken = ahead.reserve.take_workspace(root, self._host_protected(), name)
                if taken is not None:  # made ahead, with its placeholders (sandbox/ahead.py)
                    self.workspace, self._placeholders, ahead_base = taken
                    placeholders_made = True
                else:
                    self.workspace = Path(tempfile.mkdtemp(prefix=name, dir=root))
        if not placeholders_made and (self._root is None
                                      or self._root.spec.host_workspace is not None):  # fmt: skip
            self._make_protected_placeholders()  # (an image's own paths: copies, images/rootfs.py)
        measure = self._disk_base is None and bool(self.policy.limits.disk
                                                   or self.policy.limits.inodes)  # fmt: skip
        fresh = ahead_base is not None and self._root is None
        if measure and fresh:
            self._disk_base, measure = ahead_base, False
        hand_over: tuple[Path, list[str]] | None = None
        if caps.root and self.identity is None:
            hand_over = await self._take_identity()
            if fresh:
                # a made-ahead workspace holds its protected placeholders alone, which stay put,
                # and their parents, which `_take_identity` handed over: the walk would change
                # nothing (its owners are not needed either: the workspace is discarded at close)
                hand_over = None
        elif self._borrowed_identity:
            pass  # a harness sandbox runs as its agent sandbox's id over the same workspace
        if measure or hand_over is not None:
            # the disk baseline and the hand-over walk the workspace on a thread while bubblewrap
            # starts; `_spawn` waits for them before it lets anything run in the sandbox
            self._prep = asyncio.ensure_future(
                asyncio.to_thread(self._prepare_workspace, measure, hand_over)
            )
        rlimits = self._setup_limits(caps)
        self.ctx = self._episode_context()
        try:
            await self._spawn(caps, rlimits)
        except BaseException:
            with contextlib.suppress(Exception):  # no walk left running behind a failed start
                await self._settle_prep()
            raise
        self._started_at = time.monotonic()
        if self.policy.limits.wall_time:
            self._wall_task = asyncio.get_running_loop().create_task(
                self._wall_timer(self.policy.limits.wall_time)
            )
        self.emit(
            source="sandbox",
            rule="sandbox.started",
            pid=self._init_pid,
            message=f"sandbox started under policy {self.policy.name}",
            evidence={
                "policy": self.policy.name,
                "workspace": str(self.workspace),
                "limits": self.limits.mechanisms,
                "root": caps.root,
                **self._image_evidence(),
            },
        )
        # every sandbox is watched, whatever started it (policy `monitor:`): attached while the
        # shell loaded where a notifier let its exec go, else now
        self._attach()
        if self._attach_error is not None:
            err, self._attach_error = self._attach_error, None
            raise err

    def _attach_while_shell_loads(self) -> None:
        """Attach the monitor the moment the shell's exec is let go, while bash loads (about a
        millisecond in which the supervisor waits), rather than after the shell reports ready:
        -0.1 to -0.2 ms a start (150 interleaved pairs, twice). Not earlier: that exec is the launcher's, not the agent's, and a monitor
        attached before it would record it. Without a notifier, `start` attaches after ready."""
        notifier = getattr(self.egress, "notifier", None)
        if notifier is None or not self.policy.monitor.enabled:
            return
        if notifier.execs_let_go:  # (already let go while the gateway finished setting up)
            self._attach()
        else:
            notifier.after_exec = self._attach_keeping_error

    def _attach(self) -> None:
        if self._attached:
            return
        self._attached = True
        from corral.monitor.attach import attach

        attach(self.ctx)

    def _attach_keeping_error(self) -> None:
        """From the notifier's callback: an error is kept for `start` to raise, not lost there."""
        try:
            self._attach()
        except Exception as err:  # noqa: BLE001 - re-raised by start()
            self._attach_error = err

    def _detach_failed_start(self) -> None:
        """A start that fails after the monitor attached leaves nothing watched behind."""
        notifier = getattr(self.egress, "notifier", None)
        if notifier is not None:
            notifier.after_exec = None
        if self._attached:
            self._attached = False
            from corral.monitor.attach import detach

            detach(self.ctx, record_steps=False)

    def _prepare_image(self) -> None:
        """Resolve the image (import or pull it on first use), hold it, and lay out this sandbox's
        writable layer; any failure is a refusal naming the image and the cause."""
        from corral.images import ImageError, ImageStore
        from corral.images.rootfs import SandboxRoot

        assert self.image
        if self._join is not None:  # a harness sandbox: the agent's own root, not a new layer
            self._root = self._join._root
            self.workspace = self._join.workspace
            if self._root is None:
                raise SandboxClosed(
                    self._join.closed_reason or "the agent's sandbox is not running"
                )
            return
        root = stage.sandboxes_root(corral_home() / "sandboxes")
        if not _swept_workspaces:
            _sweep_workspaces(root)
        state = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{self.id}-", dir=root))
        try:
            host_ws = (None if self._workspace_arg is None
                       else check_workspace(self._workspace_arg, [str(corral_home())]))  # fmt: skip
        except BaseException:
            treewalk.rmtree(str(state))
            raise
        try:
            sroot = SandboxRoot.create(ImageStore(), self.image, state, keep=self.keep)
            try:
                sroot.prepare(self.policy, host_ws)
            except BaseException:
                sroot.release()
                raise
        except ImageError as err:
            treewalk.rmtree(str(state))
            raise SandboxRefused(
                str(err), "see `corral images list`; import it with `corral images import PATH`"
            ) from None
        except OSError as err:
            treewalk.rmtree(str(state))
            raise SandboxRefused(f"image {self.image!r}: {err}", "run `corral doctor`") from None
        self._root = sroot
        self.workspace = host_ws or state

    def _image_evidence(self) -> dict[str, Any]:
        if self._root is None:
            return {}
        return {"image": self._root.image.id, "image_ref": self.image,
                "workdir": self._root.spec.workdir}  # fmt: skip

    def _host_protected(self) -> tuple[str, ...]:
        """The protected paths that lie in the host workspace (not an image's own, `/...`)."""
        return tuple(r for r in self.policy.filesystem.protected if not r.startswith("/"))

    def _make_protected_placeholders(self) -> None:
        """A protected path that does not exist yet is made (empty) before the sandbox starts, so
        that it is bound read-only from the first command: files the harness writes there later
        are protected too. Names with a suffix (`conftest.py`) become files, the rest directories;
        the ones still empty at close are removed again."""
        assert self.workspace is not None
        self._placeholders += ahead.make_placeholders(self.workspace, self._host_protected())

    def _drop_placeholders(self) -> None:
        for host in reversed(self._placeholders):
            with contextlib.suppress(OSError):
                if host.is_dir() and not host.is_symlink():
                    host.rmdir()
                elif host.is_file() and host.stat().st_size == 0:
                    host.unlink()
        self._placeholders = []

    async def _take_identity(self) -> tuple[Path, list[str]] | None:
        """Root supervisor: the sandbox runs as its own unprivileged host id (identity.py).
        Returns the workspace to hand over to it and the protected paths that stay put (done by
        `_prepare_workspace` while bubblewrap starts), or None when there is none."""
        assert self.workspace is not None
        if setid_binary() is None and shutil.which("setpriv") is None:
            raise SandboxRefused(
                "neither corral-setid nor setpriv (util-linux) is there: a root supervisor must"
                " start each sandbox as an unprivileged host id",
                "`make install` (builds corral-setid), or sudo apt-get install -y util-linux",
            )  # fmt: skip
        try:
            self.identity = identity.allocate()
        except identity.IdentityUnavailable as err:
            raise SandboxRefused(str(err), "close idle sandboxes, or give corral a larger range"
                                 " with a `corral:START:COUNT` line in /etc/subuid") from None  # fmt: skip
        # an image root: its layer is the sandbox's (and the image shows as its own, idmapped);
        # a host workspace given with it is handed over as on the host root
        target = self.workspace if self._root is None else self._root.spec.host_workspace
        if self._root is not None:
            await asyncio.to_thread(self._root.hand_over, self.identity.uid, self.identity.gid)
        if target is None:
            return None
        protected = [str(target / rel) for rel in self.policy.filesystem.protected
                     if not rel.startswith("/")]  # fmt: skip
        # what bwrap must search as the sandbox's id, now; the rest while it starts
        self._owners = identity.hand_over_path(target, self.identity.uid, self.identity.gid,
                                               protected)  # fmt: skip
        return target, protected

    def _prepare_workspace(self, measure: bool, hand_over: tuple[Path, list[str]] | None
                           ) -> None:  # fmt: skip
        """(On a thread, while bubblewrap starts.) The disk baseline the quota counts from, then
        the workspace handed to the sandbox's host id (the original owners kept for close)."""
        assert self.workspace is not None
        if measure:
            self._disk_base = usage.measure(str(self.workspace))
        if hand_over is not None and self.identity is not None:
            target, protected = hand_over
            self._owners = identity.hand_over(target, self.identity.uid, self.identity.gid,
                                              protected, self._owners)  # fmt: skip

    async def _settle_prep(self) -> None:
        """Wait for `_prepare_workspace`; its error (if any) is raised once, here."""
        prep, self._prep = self._prep, None
        if prep is not None:
            await prep

    def _give_back_workspace(self) -> None:
        """Files back to their owners, and no setuid/setgid file outlives the sandbox (whoever
        the supervisor is: a setuid copy of a shell would make any host user the file's owner)."""
        if self.workspace is not None and self.workspace.exists():
            uid = self.identity.uid if self.identity else None
            cleared = identity.take_back(self.workspace, self._owners, uid)
            if cleared:
                self.emit(source="file", rule="file.setuid_cleared", category="escape",
                          severity="high", action="blocked", step=self.step or None,
                          message=f"{cleared} setuid/setgid file(s) left in the workspace were "
                          "made ordinary before it was handed back")  # fmt: skip
        if self.identity is not None:
            self.identity.release()
            self.identity = None

    def _stage_sources(self) -> dict[str, str]:
        """Directories the sandbox's host id could not reach, bound where it can (stage.py)."""
        if self.identity is None:
            return {}
        if self._join is not None:  # its agent sandbox's stages: the mount namespace it joins
            return dict(self._join._stages)  # was copied before they were made in this one
        from corral.sandbox.bwrap import reachable

        fs = self.policy.filesystem
        for src in [str(self.workspace), *fs.read_only, *fs.read_write]:
            if src in self._stages or not os.path.isdir(src) or reachable(src):
                continue
            try:
                self._stages[src] = stage.stage(src, self.id)
            except OSError as err:
                raise SandboxRefused(f"cannot make {src} reachable by the sandbox: {err}",
                                     "use a workspace whose parent directories others may "
                                     "search (chmod o+x)") from None  # fmt: skip
        return dict(self._stages)

    def _unstage(self) -> None:
        for target in self._stages.values():
            stage.unstage(target)
        self._stages = {}

    def file_owner(self) -> tuple[int, int] | None:
        """Host uid/gid that files the supervisor writes for the agent should carry."""
        return (self.identity.uid, self.identity.gid) if self.identity else None

    async def _spawn(self, caps: Capabilities, rlimits: list[tuple[int, int]]) -> None:
        """Start bwrap held at --block-fd, put both its processes in the cgroup and under the
        rlimits, then let it exec the shell: nothing runs in the sandbox before its limits do, and
        no preexec_fn means Python can spawn with vfork (a fork of a big supervisor is slow)."""
        assert caps.bwrap and self.workspace
        loop = asyncio.get_running_loop()
        ctl_r, ctl_w = os.pipe()
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_ends = (in_r, out_w, err_w, ctl_w, info_w, block_r)
        spec = BwrapSpec(
            policy=self.policy,
            workspace=self.workspace,
            sandbox_id=self.id,
            episode_id=self.episode_id,
            info_fd=info_w,
            supervisor_paths=[str(corral_home())],
            extra_env=self.extra_env,
            extra_args=["--block-fd", str(block_r), *self.extra_bwrap_args],
            gpu_devices=self._gpu_devices(caps),
            image=self._root.spec if self._root is not None else None,
            scratch_dirs=self.scratch_dirs,
            host_uid=self.identity.uid if self.identity else None,
            tmp_size=self.policy.limits.disk,
            staged=self._stage_sources(),
            rlimits=rlimit_triples(rlimits) if self.identity else [],
        )
        try:  # the launcher's user-notify filter refuses and records the escape calls itself
            spec.seccomp_fd = syscalls.program_fd(notified=self.egress is not None)
        except syscalls.SeccompUnavailable as err:
            for fd in (ctl_r, ctl_w, info_r, info_w, block_r, block_w, in_r, in_w, out_r, out_w,
                       err_r, err_w):  # fmt: skip
                os.close(fd)
            raise SandboxRefused(str(err), "sudo apt-get install -y python3-seccomp") from None
        command = ["/bin/bash", "--noprofile", "--norc"]
        extra_fds: tuple[int, ...] = ()
        if self.egress is not None:
            command, extra_fds = self.egress.prepare(self, spec, command)
        pid_r = self._born_in_cgroup(spec)
        try:
            if spec.image is not None:  # the image root: the helper mounts the overlay first
                join = self._join._proc.pid if self._join and self._join._proc else None
                argv = self._root.wrap(build_image_argv(caps.bwrap, spec, command),
                                       idmap=spec.host_uid, join=join)  # fmt: skip
            else:
                argv = build_argv(caps.bwrap, spec, command)
            # born in its cgroup (v1): no move later, so no wait for the kernel's global lock
            with self.cgroup.spawning() if self.cgroup else contextlib.nullcontext():
                self._proc = subprocess.Popen(
                    argv,
                    stdin=in_r,
                    stdout=out_w,
                    stderr=err_w,
                    pass_fds=(ctl_w, info_w, block_r, spec.seccomp_fd, *spec.fds, *extra_fds),
                    close_fds=True,
                    # bwrap stays in the sandbox as its pid 1, /proc/1/environ readable by the
                    # agent: it must not carry the supervisor's environment (keys, tokens)
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                )
        except OSError as err:
            for fd in (*child_ends, in_w, out_r, err_r, ctl_r, info_r, block_w):
                os.close(fd)
            if pid_r is not None:
                os.close(pid_r)
            if self.egress is not None:
                await self.egress.stopped(self)
            raise SandboxRefused(
                f"could not start bubblewrap: {err}", "run `corral doctor`"
            ) from err
        finally:
            for fd in (spec.seccomp_fd, *spec.fds):
                with contextlib.suppress(OSError):
                    os.close(fd)
        for fd in child_ends:
            os.close(fd)
        if pid_r is not None:
            self._adopt_born(pid_r)
        # A busy supervisor hands over fd numbers past the sandbox's open-files limit, where bash
        # could not put back the control fd it closes around each command ("Bad file
        # descriptor" on every command): the shell moves it to a low number first.
        self._ctl_fd_inside = ctl_w if ctl_w < CTL_FD_LOW else CTL_FD_LOW
        self._chan = ShellChannel(loop, in_w, out_r, err_r, ctl_r)
        self._chan.on_forged = self._forged
        cap = Capture()
        self._chan.capture = cap
        try:
            self._init_pid = await self._read_child_pid(info_r)
            cloned = getattr(self.egress, "cloned", None)
            if cloned is not None:  # the namespaces exist: work that needs them, not the root
                cloned(self, self._init_pid)
            self._confine(self._proc.pid, self._init_pid, rlimits)
            await self._settle_prep()
            ready = self._chan.expect("ready")
            os.write(block_w, b"1")
            # the bootstrap waits in the shell's stdin pipe, so bash reads it the moment the
            # launcher execs it, while the gateway finishes setting up here
            broken: BrokenPipeError | None = None
            try:
                self._chan.send(bootstrap(self._ctl_fd_inside, moved_from=ctl_w))
            except BrokenPipeError as err:
                # the sandbox is gone already, most likely because the launcher could not set up:
                # its own report (naming the gateway and the cause) is the refusal, not the pipe
                broken = err
            if self.egress is not None:
                await self.egress.started(self, self._proc.pid)
            if broken is not None:
                raise broken
            self._attach_while_shell_loads()
            await asyncio.wait_for(ready, 10)
        except SandboxRefused:
            self._chan.drain()
            self._detach_failed_start()
            await self._teardown()
            raise
        except (EOFError, TimeoutError, OSError, ValueError) as err:
            self._chan.drain()
            detail = cap.stderr.decode(errors="replace").strip()
            self._detach_failed_start()
            await self._teardown()
            raise SandboxRefused(
                f"the sandbox did not come up: {detail or err}", "run `corral doctor`"
            ) from None
        except BaseException:  # cancelled (a caller's timeout): nothing left running or watched
            self._chan.drain()
            self._detach_failed_start()
            await asyncio.shield(self._teardown())
            raise
        finally:
            os.close(block_w)
            if self._chan is not None:
                self._chan.capture = None
        self._shell_pid = self.shell_pid()

    def _born_in_cgroup(self, spec: BwrapSpec) -> int | None:
        """On cgroup v2 (root, `corral-setid`, the host's root): bwrap is to be born in the
        sandbox's cgroup (setid's clone3), so nothing is moved in later: no wait for the RCU grace
        period a move's lock takes after an idle spell (setid.c). Returns the pipe its pid comes
        back on (None: bwrap is moved in, as on v1 without `spawning`)."""
        cg = self.cgroup
        if (cg is None or cg.version != 2 or "unified" not in cg.dirs or self.identity is None
                or spec.image is not None or setid_binary() is None):  # fmt: skip
            return None
        try:
            cg_fd = os.open(cg.dirs["unified"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        pid_r, pid_w = os.pipe()
        spec.born_in = (cg_fd, pid_w)
        spec.fds += [cg_fd, pid_w]  # passed to setid, closed after Popen with the rest
        return pid_r

    def _adopt_born(self, pid_r: int) -> None:
        """setid wrote bwrap's pid and exited: that child of ours is the sandbox's process from
        now on, already in its cgroup. (Its own pid: clone3 refused, setid is bwrap; moved later.)"""
        try:
            data = os.read(pid_r, 64)  # at once: setid writes before it exits, ~0.1 ms after exec
        finally:
            os.close(pid_r)
        assert self._proc is not None and self.cgroup is not None
        text = data.decode(errors="replace").strip()
        if not text.isdigit() or int(text) == self._proc.pid:
            return
        setid = self._proc
        self._proc = adopt_child(int(text), setid.args)
        with contextlib.suppress(subprocess.TimeoutExpired):
            setid.wait(5)  # (it exits right after the write)
        self.cgroup.born_inside = True

    @staticmethod
    async def _read_child_pid(info_r: int) -> int:
        """bwrap writes {"child-pid": N} to --info-fd right after it clones the sandbox's init."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        buf = bytearray()

        def readable() -> None:
            try:
                chunk = os.read(info_r, 4096)
            except BlockingIOError:
                return
            buf.extend(chunk)
            if (not chunk or b"}" in buf) and not fut.done():
                fut.set_result(bytes(buf))

        os.set_blocking(info_r, False)
        loop.add_reader(info_r, readable)
        try:
            data = await asyncio.wait_for(fut, 10)
        finally:
            loop.remove_reader(info_r)
            os.close(info_r)
        pid = int(json.loads(data.decode() or "{}").get("child-pid") or 0)
        if not pid:
            raise EOFError("bwrap did not report its sandbox process")
        return pid

    def _confine(self, outer: int, init: int, rlimits: list[tuple[int, int]]) -> None:
        """Join the cgroup and take the rlimits, for both bwrap processes, while they are held."""
        import resource

        if self.cgroup is not None:
            try:
                self.cgroup.join(outer, init)
            except OSError:
                # the cgroup vanished under us (another supervisor's sweep): make it again, once
                self.cgroup.create()
                self.cgroup.apply(self.policy.limits, LimitReport())
                self.cgroup.join(outer, init)
        if self.identity is not None:
            return  # set by `prlimit` before bwrap started (see rlimit_triples)
        for which, value, hard in rlimit_triples(rlimits):
            for pid in (outer, init):
                resource.prlimit(pid, which, (value, hard))

    async def _wall_timer(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.emit(
            source="resource",
            rule="resource.wall_time",
            category="resource",
            severity="medium",
            action="terminated",
            message=f"episode wall time of {seconds:g}s reached",
            step=self.step or None,
        )
        await self.terminate("wall_time", emit=False)

    def shell_pid(self) -> int | None:
        """Host pid of the session's bash (the init's only child when it starts)."""
        kids = children_of(self._init_pid)
        return min(kids) if kids else self._init_pid

    def _agent_pids(self) -> list[int]:
        """`host_pids` but bubblewrap's outer process and the sandbox's init when that is not the
        shell (corral-init, or bwrap's own): neither runs the agent's code nor holds its files."""
        ours = {self._proc.pid if self._proc else None}
        if self._init_pid and self._init_pid != self._shell_pid:
            ours.add(self._init_pid)
        return [p for p in self.host_pids() if p not in ours]

    def host_pids(self) -> list[int]:
        """Every process of this sandbox, as host pids: the cgroup where there is one."""
        if self.cgroup is not None:
            return self.cgroup.pids()
        if not self._init_pid:
            return []
        try:
            init = psutil.Process(self._init_pid)
            return [init.pid] + [p.pid for p in init.children(recursive=True)]
        except psutil.Error:
            return []

    # ---------------------------------------------------------------- commands
    async def open_session(self, name: str, *, harness: bool = False) -> ShellSession:
        """Another persistent bash in this sandbox, with its own cwd and variables (ROCK's
        sessions); `await session.exec(...)` as `exec`. Closing the sandbox ends it.

        `harness=True` is the harness's session (uploading tests, running the grader), the
        persistent-shell form of `harness_exec`: a bash in the harness sandbox (same root and
        workspace, its own pid namespace, unreachable from the agent's processes, which are
        frozen while each of its commands runs); its commands are recorded, tagged `harness`,
        under the harness sandbox's id, never gated, never the agent's steps or charges."""
        old = self.sessions.get(name)
        if old is not None and old.alive:
            raise ValueError(f"session {name!r} is already open")
        if harness:
            hs = await self._harness_sandbox()
            session = await open_session(hs, name, harness=True)
            session.owner = self
            hs.sessions[name] = session
        else:
            session = await open_session(self, name)
        self.sessions[name] = session
        return session

    async def exec(
        self,
        command: str,
        step: int | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        async with self._lock:
            return await self._exec(command, step, timeout, on_output)

    async def _exec(
        self,
        command: str,
        step: int | None,
        timeout: float | None,
        on_output: OutputCallback | None,
    ) -> ExecResult:
        if self.closed_reason:
            raise SandboxClosed(self.closed_reason)
        if self._proc is None or (self._chan is not None and self._chan.eof):
            await self._restart_session()
        step = self.step + 1 if step is None else step
        self.step = max(self.step, step)
        first_event = len(self.events)
        t0 = time.monotonic()
        blocked = await self._gated(command, step, t0, first_event)
        if blocked is not None:
            return blocked
        self.emit(
            source="sandbox",
            rule="sandbox.command_started",
            step=step,
            argv=["bash", "-c", command],
            message=command[:200],
        )
        assert self._chan is not None
        chan = self._chan
        self._next_id += 1
        key = new_key(f"{self._next_id}-")
        cap = Capture(on_output=on_output)
        chan.capture = cap
        done = chan.expect(key)
        limit = timeout if timeout is not None else self.policy.limits.command_timeout
        spared = self._running_before()
        timed_out = killed = False
        watch = asyncio.get_running_loop().create_task(self._disk_watch(step, command, spared))
        try:
            chan.send(frame(key, command, self._ctl_fd_inside))
            exit_code = await asyncio.wait_for(asyncio.shield(done), limit)
        except TimeoutError:
            timed_out = True
            self._kill_command_tree(spared, interrupt=True)
            try:
                await asyncio.wait_for(asyncio.shield(done), 3)
            except (TimeoutError, EOFError):
                await self._teardown()
            exit_code = TIMEOUT_EXIT
        except (EOFError, BrokenPipeError, OSError):
            exit_code = await self._session_exit_code()
            killed = self.terminated
        watch.cancel()
        chan.drain()
        chan.capture = None
        over_disk = self._check_disk(step, command, inline=True)  # small: no thread hop
        if over_disk is None:
            over_disk = bool(await asyncio.to_thread(self._check_disk, step, command))
        if (self._check_counters(step, command) or over_disk) and self._resource_response() in (
            "kill",
            "terminate",
        ):
            # a fork bomb held at its pids limit keeps spinning: end what this command started
            self._kill_command_tree(spared)
        return self._finish_command(command, step, t0, first_event, cap, exit_code,
                                    timed_out=timed_out, killed=killed, limit=limit)  # fmt: skip

    def _finish_command(self, command: str, step: int | None, t0: float, first_event: int,
                        cap: Capture, exit_code: int, *, timed_out: bool, killed: bool,
                        limit: float | None, session: str | None = None,
                        harness: bool = False) -> ExecResult:  # fmt: skip
        """What every shell (the main one or a named session) records once a command is over."""
        duration = time.monotonic() - t0
        stdout = cap.stdout.decode(errors="replace")
        stderr = cap.stderr.decode(errors="replace")
        argv = ["bash", "-c", command]
        tag = {"session": session} if session else {}
        if harness:  # the harness's command: recorded, never the agent's offence
            tag["harness"] = True
        if timed_out:
            self.emit(source="resource", rule="resource.command_timeout", category="resource",
                      severity="info" if harness else "low", action="killed", step=step, argv=argv,
                      message=f"command exceeded its {limit:g}s time limit and was killed",
                      evidence={"limit_s": limit, **tag})  # fmt: skip
        if (
            not harness
            and self.limits.mechanisms.get("cpu_time")
            and "CPU time limit exceeded" in stderr
        ):
            self.emit(source="resource", rule="resource.cpu_time", category="resource",
                      severity="low", action="killed", step=step, argv=argv,
                      message=f"CPU time limit of {self.policy.limits.cpu_time:g}s reached")  # fmt: skip
        if not harness and not self._borrowed_identity:  # the harness's are not the agent's
            self._scan_denied_writes(stderr, step)
        if self._root is not None and self._join is None:
            self._check_layer(step, argv, stderr)
        if self.terminated:
            killed = True
            exit_code = KILLED_EXIT
        self.emit(source="sandbox", rule="sandbox.command_ended", step=step,
                  message=f"exit {exit_code} after {duration:.3f}s",
                  evidence={"exit_code": exit_code, "duration_s": round(duration, 6),
                            "timed_out": timed_out, **tag})  # fmt: skip
        return ExecResult(command=command, step=step or 0, exit_code=exit_code, stdout=stdout,
                          stderr=stderr, duration=duration, timed_out=timed_out, killed=killed,
                          truncated=cap.truncated, events=self.events[first_event:])  # fmt: skip

    async def _gated(self, command: str, step: int, t0: float, first_event: int
                     ) -> ExecResult | None:  # fmt: skip
        """The gate's verdict before a command runs: None to run it, else the blocked result."""
        if self.gate is not None:
            decision = self.gate(command, self, step)
            if asyncio.iscoroutine(decision):
                decision = await decision
            assert isinstance(decision, GateDecision)
            if decision.verdict != "allow":
                await self._refused(command, step, decision)
                return ExecResult(
                    command=command,
                    step=step,
                    exit_code=126,
                    stdout="",
                    stderr=f"corral: command blocked by policy: {decision.reason}\n",
                    duration=time.monotonic() - t0,
                    blocked=True,
                    events=self.events[first_event:],
                )
        return None

    async def _refused(self, command: str, step: int, decision: GateDecision) -> None:
        """A command the gate refused is a finding like any other: it goes to the responder,
        which records it (`blocked`: it never ran), charges the penalty to this step and, where
        the policy's response for its category is `terminate`, ends the episode, as the same act
        run from a script and caught at its exec would (issue 10: judged by what it did)."""
        from corral.respond.responder import Responder, decide

        top = max(decision.findings, default=None,
                  key=lambda f: severity_rank(f.get("effective_severity") or f.get("severity")))  # fmt: skip
        finding = {
            "rule": top["rule"] if top else "policy.gate_denied",
            "category": top["category"] if top else "policy",
            "severity": (top.get("effective_severity") or top["severity"]) if top else "medium",
            "attack": top.get("attack") if top else None,
            "message": decision.reason or f"gate verdict {decision.verdict}",
        }
        # nothing ran, so nothing to kill: a refusal is a block, or the episode's end
        response = "terminate" if decide(self, finding) == "terminate" else "block"
        Responder().respond(
            self, finding, source="policy", step=step, argv=["bash", "-c", command],
            evidence={"verdict": decision.verdict, "findings": decision.findings,
                      "gate": "policy.gate_denied"},
            response=response, act=False, action="blocked",
        )  # fmt: skip
        if response == "terminate":
            await self.terminate(f"{finding['category']}: {finding['rule']}",
                                 rule="respond.terminate")  # fmt: skip

    async def _session_exit_code(self) -> int:
        """The shell ended mid-command (`exit`, a kill): its status is the command's."""
        if self._proc is None:
            return KILLED_EXIT
        try:
            rc = await asyncio.wait_for(asyncio.to_thread(self._proc.wait), 5)
        except TimeoutError:
            rc = KILLED_EXIT
        await self._teardown()
        return 128 - rc if rc < 0 else rc

    async def _restart_session(self) -> None:
        if self._harness is not None and self._root is not None:
            # it shares the mount namespace of the shell that ended: start it again with the next
            await self._harness.close()
            self._harness = None
        if self._proc is not None:
            await self._teardown()
        assert self.caps is not None
        rlimits = self._setup_limits(self.caps)
        await self._spawn(self.caps, rlimits)
        self.emit(source="sandbox", rule="sandbox.session_restarted", pid=self._init_pid,
                  message="the shell session ended; a new one was started")  # fmt: skip

    def _running_before(self) -> set[int]:
        """Processes a new command must not kill on timeout: earlier background jobs and daemons."""
        return (children_of(self._shell_pid) | children_of(self._init_pid)) - {self._shell_pid}

    def _kill_command_tree(self, spared: set[int], interrupt: bool = False) -> None:
        """Kill what the timed-out command started, orphans included (a fork bomb's children are
        re-parented to the sandbox's init), sparing the shell and what ran before the command."""
        keep = {self._init_pid, self._shell_pid, self._proc.pid if self._proc else None}
        for pid in spared:
            with contextlib.suppress(psutil.Error):
                keep |= {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
        if interrupt and self._shell_pid:  # abandon the rest of the command's list
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._shell_pid, signal.SIGUSR1)
        frozen = self.cgroup is not None and self.cgroup.freeze(True)
        deadline = time.monotonic() + 2.0
        try:
            while time.monotonic() < deadline:
                victims = [pid for pid in self.host_pids() if pid not in keep]
                if not victims:
                    break
                for pid in victims:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                if frozen and self.cgroup is not None:  # let the kills land, then look again
                    self.cgroup.freeze(False)
                    time.sleep(0.002)
                    self.cgroup.freeze(True)
                else:
                    time.sleep(0.002)
        finally:
            if frozen and self.cgroup is not None:
                self.cgroup.freeze(False)

    DISK_WATCH_INTERVAL = 3.0
    # After a command, a sandbox whose workspace and open files are this few is measured on the
    # event loop (~0.1 ms), saving two thread hops; anything larger, or grown past these during
    # the command, is measured on a thread, so the loop never walks more than this much.
    INLINE_DISK_ENTRIES = 256
    INLINE_DISK_FDS = 256

    async def _disk_watch(self, step: int, command: str, spared: set[int]) -> None:
        """While a command runs, look at its disk use now and then (usage.py)."""
        while True:
            await asyncio.sleep(self.DISK_WATCH_INTERVAL)
            over = await asyncio.to_thread(self._check_disk, step, command)
            if over and self._resource_response() in ("kill", "terminate"):
                await asyncio.to_thread(self._kill_command_tree, spared)

    def _check_disk(self, step: int | None, command: str | None, inline: bool = False
                    ) -> bool | None:  # fmt: skip
        """A `source=resource` event when the workspace grew past `limits.disk`/`inodes` or /tmp
        filled up; True while over (the command is then answered like any limit hit).

        `inline` (on the event loop): None, having recorded nothing, unless the last look found
        the sandbox small and it still is (`INLINE_DISK_*`); the caller then looks on a thread."""
        lim = self.policy.limits
        over: dict[str, str] = {}
        if self._disk_base is not None and self.workspace is not None:
            if inline and not self._disk_small:
                return None
            base = self._disk_base
            cap = base.inodes + lim.inodes if lim.inodes else None
            # inline: no more names read than the bound, however large one directory has grown
            now = usage.measure(str(self.workspace), cap,
                                self.INLINE_DISK_ENTRIES if inline else None)  # fmt: skip
            if inline and not now.complete and (cap is None or now.inodes <= cap):
                self._disk_small = False  # past the loop's bound, not the limit: on a thread
                return None
            hidden = usage.unlinked_bytes(self._agent_pids(), os.stat(self.workspace).st_dev,
                                          self.INLINE_DISK_FDS if inline else None)  # fmt: skip
            if hidden is None:
                self._disk_small = False
                return None
            self._disk_small = now.complete and now.inodes <= self.INLINE_DISK_ENTRIES
            if lim.inodes and now.inodes - base.inodes > lim.inodes:
                over["workspace_inodes"] = f"more than {lim.inodes} files added to the workspace"
            if lim.disk and now.bytes + hidden - base.bytes > lim.disk:
                over["workspace_disk"] = f"workspace grew past {lim.disk} bytes"
        tmp = usage.tmp_fill(self._init_pid)
        if lim.disk and tmp is not None and tmp[1] and tmp[0] >= tmp[1] - 64 * 1024:
            over["tmp_disk"] = f"/tmp is full ({tmp[1]} bytes)"
        argv = ["bash", "-c", command] if command else None
        for where, why in over.items():
            if where in self._disk_hit:
                continue
            self._disk_hit.add(where)
            rule = "resource.inode_limit" if where.endswith("inodes") else "resource.disk_limit"
            self.emit(source="resource", rule=rule, category="resource", severity="medium",
                      action="killed" if self._resource_response() in ("kill", "terminate")
                      else "blocked", step=step, argv=argv, message=why,
                      evidence={"where": where, "limit_bytes": lim.disk,
                                "limit_inodes": lim.inodes})  # fmt: skip
        self._disk_hit &= set(over)  # a limit freed again may be reported again
        return bool(over)

    def _resource_response(self) -> str:
        return (
            "alert" if self.policy.observe_only else self.policy.responses.for_category("resource")
        )

    def _check_counters(self, step: int | None, command: str | None = None) -> bool:
        """Turn new cgroup limit hits into events; True when a limit was hit."""
        if self.cgroup is None:
            return False
        now = self.cgroup.counters(hits_only=True)
        prev, self._counters = self._counters, now
        argv = ["bash", "-c", command] if command else None
        if now.oom_kills > prev.oom_kills:
            self.emit(
                source="resource",
                rule="resource.memory_limit",
                category="resource",
                severity="medium",
                action="killed",
                step=step,
                argv=argv,
                message=f"memory limit of {self.policy.limits.memory} bytes hit; the kernel killed "
                f"{now.oom_kills - prev.oom_kills} process(es)",
                evidence={
                    "oom_kills": now.oom_kills,
                    "memory_peak": self.cgroup.counters().memory_peak,
                },  # fmt: skip
            )
        if now.pids_max_hits > prev.pids_max_hits:
            self.emit(
                source="resource",
                rule="resource.pids_limit",
                category="resource",
                severity="medium",
                action="killed" if self._resource_response() in ("kill", "terminate") else "blocked",
                step=step,
                argv=argv,
                message=f"process limit of {self.policy.limits.pids} hit: "
                f"{now.pids_max_hits - prev.pids_max_hits} fork(s) refused",
                evidence={"refused_forks": now.pids_max_hits,
                          "response": self._resource_response()},
            )  # fmt: skip
        return now.oom_kills > prev.oom_kills or now.pids_max_hits > prev.pids_max_hits

    def _check_layer(self, step: int | None, argv: list[str], stderr: str) -> None:
        """An image root's writable layer at its quota (limits.disk / limits.inodes, a sized
        tmpfs: the kernel already refused the write): a `source=resource` event."""
        quota = self._root.quota if self._root is not None else None
        if quota is None or self._proc is None:
            return
        usage = self._root.usage(self._proc.pid)
        if usage is None:
            return
        used, files = usage
        full = used >= quota[0] - 65536 or (quota[1] and files >= quota[1] - 1)
        if not full and "No space left on device" not in stderr:
            return
        what = "inodes" if quota[1] and files >= quota[1] - 1 else "disk"
        self.emit(source="resource", rule="resource.disk_limit", category="resource",
                  severity="medium", action="blocked", step=step, argv=argv,
                  message=f"the sandbox's writable layer is full ({what}: {used} bytes, {files} "
                  f"files of {quota[0]} bytes, {quota[1] or 'unlimited'} files)",
                  evidence={"layer_bytes": used, "layer_inodes": files, "limit_bytes": quota[0],
                            "limit_inodes": quota[1]})  # fmt: skip

    MAX_REFUSAL_EVENTS = 10  # per syscall and sandbox: evidence, not a flood

    def syscall_refused(self, pid: int, name: str) -> None:
        """An escape syscall (io_uring, bpf, mount, unshare...) refused by the seccomp listener:
        recorded with who tried, the first few times per call."""
        seen = self._refusals.get(name, 0) + 1
        self._refusals[name] = seen
        if seen > self.MAX_REFUSAL_EVENTS:
            return
        from corral.monitor import procfs

        argv = procfs.cmdline(pid)
        more = " (further ones not recorded)" if seen == self.MAX_REFUSAL_EVENTS else ""
        self.emit(source="policy", rule="escape.syscall_refused", category="escape",
                  severity="high", action="blocked", pid=pid, argv=argv[:16] or None,
                  step=self.step or None, attack="T1611",
                  message=f"{name}() refused: not available in a corral sandbox{more}",
                  evidence={"syscall": name, "count": seen})  # fmt: skip

    def _forged(self, line: str) -> None:
        """A report on a control pipe that no command was waiting for: the agent writing to the
        framing's channel (through /proc/<shell>/fd) to fake an exit status."""
        self.emit(source="sandbox", rule="sandbox.report_forged", category="reward_tampering",
                  severity="high", action="blocked", step=self.step or None, attack="T1565",
                  message="a command's exit report was forged on the shell's control channel",
                  evidence={"line": line})  # fmt: skip

    def _scan_denied_writes(self, stderr: str, step: int | None) -> None:
        if "Read-only file system" not in stderr:
            return
        seen: set[str] = set()
        for m in _RO_RE.finditer(stderr):
            path = m.group(1) or m.group(2) or m.group(3)
            if path and not path.startswith("/"):
                path = self._inside_path(path)
            if not path or path in seen:
                continue
            seen.add(path)
            protected = self._protected_hit(path) is not None
            self.emit(
                source="file",
                rule="file.protected_write" if protected else "file.write_denied",
                category="reward_tampering" if protected else "policy",
                severity="high" if protected else "low",
                action="blocked",
                attack="T1565" if protected else None,
                step=step,
                path=path,
                message=("write to protected path " if protected else "write outside the "
                         "workspace ") + f"{path} refused (read-only)",
            )  # fmt: skip

    def _inside_path(self, rel: str) -> str | None:
        """Resolve a relative path from an error message against the shell's current directory
        (the kernel shows it as the sandbox sees it)."""
        if not self._shell_pid:
            return None
        try:
            cwd = os.readlink(f"/proc/{self._shell_pid}/cwd")
        except OSError:
            return None
        return os.path.normpath(f"{cwd}/{rel}")

    # ---------------------------------------------------------------- harness
    async def harness_exec(self, command: str, timeout: float | None = None,
                           step: int | None = None) -> ExecResult:  # fmt: skip
        """Run the harness's own command (a grader, a test run, a set-up step): never in the agent's
        shell, never gated, never charged to the agent.

        It runs in a harness sandbox of its own over the same workspace — same policy, limits,
        seccomp list, host id and protected paths, but its own pid namespace and shell — so nothing
        the agent defined (functions, aliases, a `bash` of its own, a stub on PATH in its shell)
        and none of its processes can reach it: they cannot see, signal, trace or write to it. The
        agent's processes are frozen while the command runs, so none can race it either.
        """
        if self.closed_reason:
            raise SandboxClosed(self.closed_reason)
        # frozen first: no agent process may watch the harness start or race its files; a fresh
        # harness sandbox each time, so nothing a graded run left behind (a daemon started by the
        # code under test) lives on to the next one
        frozen = await asyncio.to_thread(self._freeze_agent, True)
        try:
            harness = await self._new_harness_sandbox()
            try:
                result = await harness.exec(command, step=step, timeout=timeout)
            finally:
                await harness.close()
        finally:
            if frozen:
                await asyncio.to_thread(self._freeze_agent, False)
        return result  # its events are in the store under `<id>-harness`, not the agent's

    async def stop_agent(self) -> None:
        """End every agent process now (its shell, background jobs, a write in flight) but keep
        the sandbox and its workspace: before a final grade, so nothing of the agent runs while the
        harness writes hidden tests or grades. A later `exec` starts a fresh shell."""
        async with self._lock:
            if self._proc is not None:
                await self._teardown()

    async def _harness_sandbox(self) -> Sandbox:
        """The long-lived harness sandbox behind `open_session(..., harness=True)`."""
        if self._harness is not None and self._harness.closed_reason is None:
            return self._harness
        self._harness = await self._new_harness_sandbox()
        return self._harness

    async def _new_harness_sandbox(self) -> Sandbox:
        assert self.workspace is not None
        policy = self.policy.model_copy(deep=True)
        policy.gate.enabled = False
        policy.monitor.enabled = False  # the harness is not the agent: not watched, not charged
        # git config the agent wrote (core.fsmonitor, hooks) must not run its code in the harness
        git_safe = "'core.fsmonitor'='' 'core.hooksPath'='/dev/null' 'core.pager'='cat'"
        env = {**self.extra_env, "GIT_CONFIG_PARAMETERS": git_safe,
               # bytecode only from and to a cache of the harness's own: a .pyc the agent planted
               # in __pycache__ (a forged conftest) is never loaded, by Python or pytest
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": "/tmp/.harness-pycache",
               "PYTHONNOUSERSITE": "1"}  # fmt: skip
        if self._root is not None:  # an image root: the harness runs on the same mounted root
            host_ws = self._root.spec.host_workspace
            harness = Sandbox(policy, workspace=host_ws, image=self.image,
                              episode_id=self.episode_id, sandbox_id=f"{self.id}-harness",
                              sink=self.sink, extra_env=env, egress=False)  # fmt: skip
            harness._join = self
        else:
            harness = Sandbox(policy, workspace=self.workspace, episode_id=self.episode_id,
                              sandbox_id=f"{self.id}-harness", sink=self.sink, extra_env=env,
                              egress=False)  # fmt: skip
        harness.identity = self.identity
        harness._borrowed_identity = True
        await harness.start()
        return harness

    def _freeze_agent(self, freeze: bool) -> bool:
        """Stop (or let go on) every agent process: the cgroup freezer, else SIGSTOP/SIGCONT."""
        if self.cgroup is not None and self.cgroup.freeze(freeze):
            return True
        sig = signal.SIGSTOP if freeze else signal.SIGCONT
        for pid in self.host_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return True

    # ---------------------------------------------------------------- files
    def _require_workspace(self) -> Path:
        if self.workspace is None:
            raise SandboxClosed(self.closed_reason or "not started")
        return self.workspace

    def _inside(self, path: str) -> str:
        """`path` as the sandbox sees it (relative paths are under the workspace)."""
        if ".." in path.split("/"):
            raise PathOutsideWorkspace(f"{path!r}: '..' is not allowed in sandbox paths")
        ws = self._root.spec.workdir if self._root is not None else (
            self.policy.filesystem.workspace.path)  # fmt: skip
        return os.path.normpath(path if path.startswith("/") else f"{ws}/{path}")

    def _protected_hit(self, inside: str) -> str | None:
        """The protected path `inside` lies in, if any (workspace-relative ones included)."""
        ws = self._root.spec.workdir if self._root is not None else (
            self.policy.filesystem.workspace.path)  # fmt: skip
        for p in self.policy.filesystem.protected:
            full = os.path.normpath(p if p.startswith("/") else f"{ws}/{p}")
            if inside == full or inside.startswith(full.rstrip("/") + "/"):
                return full
        return None

    async def _image_target(self, path: str, *, write: bool, agent: bool
                            ) -> tuple[Path, str, str, str | None]:  # fmt: skip
        """Where a file API call lands on an image root: (host directory, the sandbox path it
        stands for, the path to give `files` under it, the protected path it lies in).

        Protected paths are host directories bound read-only inside (the harness writes them
        here, the agent's tool calls are refused and recorded), a host workspace is itself, and
        anything else is reached through the running sandbox's own root (`/proc/<init>/root`,
        walked without following links)."""
        inside = self._inside(path)
        hit = self._protected_hit(inside)
        if write and hit and agent:
            self.emit(source="file", rule="file.protected_write", category="reward_tampering",
                      severity="high", action="blocked", attack="T1565", step=self.step or None,
                      path=inside, message=f"file API write to protected path {inside} refused",
                      evidence={"via": "file_api", "protected": hit})  # fmt: skip
            raise ProtectedPath(f"{path!r} is protected ({hit}): the agent may not write it")
        spec = self._root.spec
        prot = self._root.protected_target(inside)
        if prot is not None:
            host, where = prot
            if host.is_file():  # a protected file: written as its copy's name in its directory
                if inside != where:
                    raise PathOutsideWorkspace(f"{path!r}: {where} is a file")
                return host.parent, "/", "/" + host.name, hit
            return host, where, inside, hit
        ws = spec.workdir
        if spec.host_workspace is not None and (inside == ws or inside.startswith(ws + "/")):
            return spec.host_workspace, ws, inside, hit
        if self._init_pid is None:
            if self.closed_reason:
                raise SandboxClosed(self.closed_reason)
            async with self._lock:
                await self._restart_session()
        return Path(f"/proc/{self._init_pid}/root"), "/", inside, hit

    async def write_file(self, path: str, content: str | bytes, mode: int = 0o644, *,
                         agent: bool = False) -> str:  # fmt: skip
        """Write a workspace file. By default the caller is the harness (task files, tests; any
        path, protected ones included, recorded as `file.harness_write` there). `agent=True` is an
        agent's tool call: a protected path is refused and recorded as tampering, as in its shell.
        On an image root any absolute path of the image may be written (relative ones are under
        the workspace, the image's working directory).
        """
        ws = self._require_workspace()
        data = content.encode() if isinstance(content, str) else content
        if self._root is not None:
            base, root, target, hit = await self._image_target(path, write=True, agent=agent)
            owner = None if hit is not None else self.file_owner()
            await asyncio.to_thread(files.write, base, root, target, data, mode, owner)
            written = self._inside(path)
            if hit is not None:
                self.emit(source="file", rule="file.harness_write", path=written,
                          message=f"harness wrote protected file {written}",
                          evidence={"bytes": len(data), "protected": hit})  # fmt: skip
            return written
        inside = self.policy.filesystem.workspace.path
        hit = files.protected_hit(inside, path, self.policy.filesystem.protected)
        if hit is not None and agent:
            self.emit(source="file", rule="file.protected_write", category="reward_tampering",
                      severity="high", action="blocked", attack="T1565", step=self.step or None,
                      path=path, message=f"file API write to protected path {path} refused",
                      evidence={"via": "file_api", "protected": hit})  # fmt: skip
            raise files.ProtectedPath(f"{path!r} is protected ({hit}): the agent may not write it")
        owner = None if hit is not None else self.file_owner()
        written = await asyncio.to_thread(files.write, ws, inside, path, data, mode, owner)
        if hit is not None:
            self.emit(source="file", rule="file.harness_write", path=written,
                      message=f"harness wrote protected file {written}",
                      evidence={"bytes": len(data), "protected": hit})  # fmt: skip
        return written

    async def read_file(self, path: str, max_bytes: int | None = None) -> bytes:
        ws = self._require_workspace()
        if self._root is not None:
            base, root, target, _ = await self._image_target(path, write=False, agent=False)
            return await asyncio.to_thread(files.read, base, root, target, max_bytes)
        return await asyncio.to_thread(files.read, ws, self.policy.filesystem.workspace.path,
                                       path, max_bytes)  # fmt: skip

    async def upload(self, local: str | Path, path: str) -> str:
        ws = self._require_workspace()
        if self._root is not None:
            base, root, target, hit = await self._image_target(path, write=True, agent=False)
            owner = None if hit is not None else self.file_owner()
            await asyncio.to_thread(files.upload, base, root, Path(local), target, owner)
            return self._inside(path)
        return await asyncio.to_thread(files.upload, ws, self.policy.filesystem.workspace.path,
                                       Path(local), path, self.file_owner())  # fmt: skip

    # ---------------------------------------------------------------- ending
    async def terminate(self, reason: str, *, emit: bool = True, rule: str | None = None) -> None:
        """End the episode now (a policy response): everything in the sandbox is killed."""
        if self.closed_reason:
            return
        self.terminated = True
        self.closed_reason = f"terminated: {reason}"
        if emit:
            self.emit(source="sandbox", rule=rule or "sandbox.terminated", action="terminated",
                      severity="high", step=self.step or None,
                      message=f"episode terminated: {reason}")  # fmt: skip
        await self._teardown()

    async def _teardown(self) -> None:
        """End the processes and close the channel and the gateway. Single-flight: the responder's
        `terminate` and the caller's `close` (or a command's timeout) may run it at once, and the
        second waits for the first rather than closing the same fd numbers again after an await,
        when they may belong to another sandbox."""
        running = self._teardown_task
        if running is None:
            running = self._teardown_task = asyncio.ensure_future(self._teardown_once())
            running.add_done_callback(self._teardown_done)
        await asyncio.shield(running)

    def _teardown_done(self, task: asyncio.Future[None]) -> None:
        if self._teardown_task is task:  # a later start and teardown get their own
            self._teardown_task = None

    async def _teardown_once(self) -> None:
        with contextlib.suppress(Exception):  # no walk of the workspace still running at close
            await self._settle_prep()
        # the init first: its pid namespace goes with it, the outer bwrap reaps it and is reaped in
        # turn, so no process is left to the host's PID 1 (`corral.sandbox.reap`); the channel
        # and the gateway are closed while the kernel tears the namespaces down
        killed = kill_init(self._proc, self._init_pid)
        for session in self.sessions.values():  # their processes went with the pid namespace
            session._close_channel(self.closed_reason or "the sandbox's shell ended")
        if self._chan is not None:
            self._chan.close()  # (idempotent: the channel forgets its fds)
        if self.egress is not None:
            await self.egress.stopped(self)
        await finish(self._proc, killed)
        if self.cgroup is not None and self.cgroup.pids():  # what the namespace did not take
            await asyncio.to_thread(self.cgroup.kill_all)
        self._proc = None
        self._chan = None
        self._init_pid = None

    def _episode_context(self) -> Any:
        """The narrow view the gateway, monitor and responder get (not this object); without a
        gateway the launcher still runs, for the exec sensor (policy `monitor.exec_sensor`)."""
        from corral.contracts import SandboxEpisode

        mon = self.policy.monitor
        if self.egress is None and mon.enabled and mon.exec_sensor:
            from corral.monitor.execsensor import ExecSensor

            self.egress = ExecSensor()
        return getattr(self, "ctx", None) or SandboxEpisode(self)

    async def close(self) -> None:
        """End the sandbox and give back all it holds. One close at a time: a close while one is
        under way (a server's stop beside an episode's end) waits for that one, rather than run
        the same teardown beside it (the store would get `sandbox.stopped` twice, the layer and
        cgroup would be removed twice). A caller that is cancelled does not cancel the close."""
        loop = asyncio.get_running_loop()
        running = self._closing
        if running is None or running.done() or running.get_loop() is not loop:
            running = self._closing = loop.create_task(self._close())
        await asyncio.shield(running)

    async def _close(self) -> None:
        if self._wall_task is not None:
            self._wall_task.cancel()
            self._wall_task = None
        if getattr(self, "ctx", None) is not None:
            from corral.monitor.attach import detach

            detach(self.ctx, record_steps=not self._borrowed_identity)
            self._attached = False
        already = self.closed_reason is not None and self._proc is None and self.workspace is None
        if already:
            return
        if self._harness is not None:
            await self._harness.close()
            self._harness = None
        if self._join is not None:  # a harness sandbox: the layer is its agent sandbox's
            self._root = None
        usage = None
        if self._root is not None:  # (a tmpfs layer is only readable while the sandbox runs)
            usage = await asyncio.to_thread(
                self._root.usage, self._proc.pid if self._proc else None
            )
        await self._teardown()
        if self.cgroup is not None:
            self._check_counters(self.step or None)
            if self.cgroup.pids():  # emptying it may take a while: off the event loop
                await asyncio.to_thread(self.cgroup.destroy)
            else:  # a few rmdirs
                self.cgroup.destroy()
            self.cgroup = None
        layer: dict[str, Any] = {}
        if self._root is not None:
            if usage is None and self._root.quota is None:
                usage = await asyncio.to_thread(self._root.usage, None)
            layer["layer_bytes"], layer["layer_inodes"] = usage or (None, None)
            self.kept_layer = await asyncio.to_thread(self._root.discard)
            layer["kept_layer"] = str(self.kept_layer) if self.kept_layer else None
            self._root = None
        self.emit(
            source="sandbox",
            rule="sandbox.stopped",
            action="terminated" if self.terminated else "allowed",
            message=f"sandbox stopped after {self.step} step(s)"
            + (f" ({self.closed_reason})" if self.closed_reason else ""),
            evidence={"steps": self.step, "terminated": self.terminated, **layer},
        )
        if self._stages:
            await asyncio.to_thread(self._unstage)
        if self._borrowed_identity:
            self.identity = None  # the agent sandbox's, given back by it
        elif self._own_workspace and self.workspace is not None:
            if self.kept_layer is None:  # (an image root's state dir holds a kept layer)
                # renamed now, removed behind us; the id is let go once its files are gone
                held = self.identity
                if discard.discard(self.workspace, then=held.release if held else None):
                    self.identity = None
                else:
                    await asyncio.to_thread(treewalk.rmtree, str(self.workspace))
        else:
            try:
                await asyncio.to_thread(self._drop_placeholders)
                await asyncio.to_thread(self._give_back_workspace)
            except OSError as err:
                self.emit(source="sandbox", rule="sandbox.give_back_failed", severity="high",
                          message=f"the workspace could not be fully handed back: {err}")  # fmt: skip
        if self.kept_layer is not None and not self._borrowed_identity:
            # a kept layer outlives the sandbox: no setuid file and nothing of its id in it
            uid = self.identity.uid if self.identity else None
            await asyncio.to_thread(identity.take_back, self.kept_layer, {}, uid)
        if self.identity is not None:
            self.identity.release()
            self.identity = None
        self.workspace = None
        self.closed_reason = self.closed_reason or "closed"
        if self._own_sink:  # (lines a full disk refused stay held by the shared file)
            self.sink.close()
        if self._ahead_cgroup or self._ahead_root is not None:  # the next start's, made behind us
            ahead.reserve.refill(self.caps if self._ahead_cgroup else None, self.policy.limits,
                                 self._ahead_root, self._host_protected())  # fmt: skip
