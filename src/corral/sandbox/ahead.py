"""What a cold start needs that belongs to no sandbox in particular, made ahead of time.

Why: a cold start after a quiet spell spent ~1 ms of its critical path making directories: its
cgroup (on v1 a `mkdir` and the limit writes in each of five hierarchies, ~0.5 ms) and its own
workspace with a placeholder for each protected path (`mkdtemp`, then a `mkdir` or a create
each; ~0.1 ms apiece on ext4 under load). None of that depends on which sandbox takes it, only on
the policy's limits and protected paths. So after each close, in a quiet spell (no start for
`QUIET_S`), one worker thread makes one of each for that policy, and the next start takes them
(one `rename` gives the workspace its sandbox's name); a start that finds none ready (the first,
another policy's, or many starting at once) makes its own, as before. Only the latest close's
request waits to be served: a burst of closes leaves no backlog of work behind it.

Each item is handed out once: `take_*` pops it under a lock. A reserved item is empty and has no
process in it; it carries this supervisor's pid prefix, so one that a dead supervisor left is
removed by the next supervisor's sweeps (`sweep_stale_cgroups`, `_sweep_workspaces`), and at exit
the worker removes its own. A forked child (the CLI's fork server) forgets the parent's reserve:
those items are the parent's to hand out.

LIMITATION: one item of each kind, for the policy that closed last: a supervisor alternating
between policies with other limits or protected paths mostly makes its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from corral.sandbox import treewalk, usage
from corral.sandbox.limits import Cgroup, LimitReport
from corral.sandbox.probe import Capabilities
from corral.sandbox.usage import Usage

RESERVED = "r"  # the name's middle part: `<pid>-r-<random>` until a sandbox takes it
QUIET_S = 0.02  # a refill waits this long after the close that asked, and for no start meanwhile


def _placeholder_is_file(rel: str) -> bool:
    """Names with a suffix (`conftest.py`) are files, the rest directories (as `Sandbox`)."""
    return "." in rel.rsplit("/", 1)[-1].lstrip(".")


def make_placeholders(workspace: Path, protected: tuple[str, ...]) -> list[Path]:
    """An empty file or directory for each protected path not there yet; the ones made."""
    made = []
    for rel in protected:
        host = workspace / rel
        if os.path.lexists(host):
            continue
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
            if _placeholder_is_file(rel):
                host.touch(0o644)
            else:
                host.mkdir(0o755)
        except OSError:
            continue
        made.append(host)
    return made


class _Reserve:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cgroups: dict[Hashable, tuple[Cgroup, dict[str, str | None]]] = {}
        self._workspaces: dict[Hashable, tuple[Path, list[Path], Usage]] = {}
        # the latest close's request only (no backlog): (starts when asked, what to make)
        self._want: tuple[int, list[Callable[[], None]]] | None = None
        self._running = False
        self._changed = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._exit_hook = False
        self._starts = 0  # starts that asked for a reserve: a refill waits for a quiet spell
        self.enabled = os.environ.get("CORRAL_AHEAD", "1").strip().lower() not in (
            "0", "false", "no", "off")  # fmt: skip

    # ------------------------------------------------------------------ cgroups
    @staticmethod
    def _cgroup_key(caps: Capabilities, limits: Any) -> Hashable:
        return (caps.cgroup_version, caps.cgroup_base, tuple(caps.cgroup_controllers),
                limits.memory, limits.pids, limits.cpus)  # fmt: skip

    def take_cgroup(self, caps: Capabilities, limits: Any, report: LimitReport) -> Cgroup | None:
        """A made and limited cgroup for these limits (its mechanisms put in `report`), or None."""
        if not self.enabled:
            return None
        with self._lock:
            self._starts += 1
            got = self._cgroups.pop(self._cgroup_key(caps, limits), None)
        if got is None:
            return None
        cg, mechanisms = got
        if not all(d.is_dir() for d in cg.dirs.values()):  # removed under us: make one afresh
            with contextlib.suppress(OSError):
                cg.destroy()
            return None
        report.mechanisms.update(mechanisms)
        return cg

    def _make_cgroup(self, caps: Capabilities, limits: Any) -> None:
        key = self._cgroup_key(caps, limits)
        with self._lock:
            if key in self._cgroups:
                return
            stale = list(self._cgroups.values())
            self._cgroups.clear()
        for cg, _ in stale:  # another policy's: one of each kind is kept
            with contextlib.suppress(OSError):
                cg.destroy()
        cg = Cgroup(f"{os.getpid()}-{RESERVED}-{os.urandom(6).hex()}", caps)
        report = LimitReport()
        try:
            cg.create()
            cg.apply(limits, report)
        except OSError:
            with contextlib.suppress(OSError):
                cg.destroy()
            return
        with self._lock:
            self._cgroups[key] = (cg, dict(report.mechanisms))

    # --------------------------------------------------------------- workspaces
    def take_workspace(self, root: Path, protected: tuple[str, ...], name: str
                       ) -> tuple[Path, list[Path], Usage] | None:  # fmt: skip
        """A made workspace under `root`, renamed to `name` + a random suffix, with the
        placeholders made in it and its disk use measured when they were (nothing else is in it:
        none but this supervisor could reach it, 0700 under `root`), or None."""
        if not self.enabled:
            return None
        with self._lock:
            self._starts += 1
            got = self._workspaces.pop((str(root), protected), None)
        if got is None:
            return None
        path, made, base = got
        target = root / f"{name}{path.name.rsplit('-', 1)[-1]}"
        try:
            os.rename(path, target)
        except OSError:
            with contextlib.suppress(OSError):
                treewalk.rmtree(str(path))
            return None
        return target, [target / p.relative_to(path) for p in made], base

    def _make_workspace(self, root: Path, protected: tuple[str, ...]) -> None:
        key = (str(root), protected)
        with self._lock:
            if key in self._workspaces:
                return
            stale = list(self._workspaces.values())
            self._workspaces.clear()
        for path, *_ in stale:
            with contextlib.suppress(OSError):
                treewalk.rmtree(str(path))
        try:
            path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{RESERVED}-", dir=root))
        except OSError:
            return
        made = make_placeholders(path, protected)
        base = usage.measure(str(path))  # the quota's baseline, off the next start's path
        with self._lock:
            self._workspaces[key] = (path, made, base)

    # ------------------------------------------------------------------ the worker
    def refill(self, caps: Capabilities | None, limits: Any, root: Path | None,
               protected: tuple[str, ...] | None) -> None:  # fmt: skip
        """Make, behind the caller, what the next start with this policy will take."""
        if not self.enabled:
            return
        jobs: list[Callable[[], None]] = []
        if caps is not None and limits is not None:
            jobs.append(lambda: self._make_cgroup(caps, limits))
        if root is not None and protected is not None:
            jobs.append(lambda: self._make_workspace(root, protected))
        if not jobs:
            return
        with self._lock:
            self._want = (self._starts, jobs)  # replaces an earlier request not yet served
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="corral-ahead",
                                                daemon=True)  # fmt: skip
                self._worker.start()
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self._at_exit)
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._want is not None)
                want = self._want
            assert want is not None
            # only in a quiet spell: beside starts back to back (a pool filling, a burst of
            # resets) the work would slow them down and come too late to be taken; the next
            # close asks again
            time.sleep(QUIET_S)
            with self._changed:
                if self._want is not want:  # a later close asked since: serve that one
                    continue
                self._want = None
                if self._starts != want[0] or not self.enabled:
                    self._changed.notify_all()
                    continue
                self._running = True
            try:
                for job in want[1]:
                    with contextlib.suppress(Exception):  # a reserve not made is no error
                        job()
            finally:
                with self._changed:
                    self._running = False
                    self._changed.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until no request is waiting and nothing is being made (True), or the timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._want is None and not self._running,
                                          timeout)  # fmt: skip

    def _at_exit(self) -> None:
        self.enabled = False  # what is asked from now on is dropped
        with self._changed:
            self._want = None
        self.wait_idle(2.0)  # a reserve being made now is finished, then removed below
        self.clear()

    def clear(self) -> None:
        """Remove what is reserved (at exit; tests)."""
        with self._lock:
            cgroups, self._cgroups = list(self._cgroups.values()), {}
            workspaces, self._workspaces = list(self._workspaces.values()), {}
        for cg, _ in cgroups:
            with contextlib.suppress(OSError):
                cg.destroy()
        for path, *_ in workspaces:
            with contextlib.suppress(OSError):
                treewalk.rmtree(str(path))

    def _forget_in_child(self) -> None:
        """After fork: the parent's items are the parent's; this process starts with none."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._cgroups = {}
        self._workspaces = {}
        self._want = None
        self._running = False
        self._worker = None
        self._exit_hook = False

    def held(self) -> dict[str, int]:
        with self._lock:
            return {"cgroups": len(self._cgroups), "workspaces": len(self._workspaces)}


reserve = _Reserve()
os.register_at_fork(after_in_child=reserve._forget_in_child)
