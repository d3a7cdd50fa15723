"""Resource limits: cgroups (v1 or v2) where we may write them, rlimits otherwise.

What is in force is reported per limit (`LimitReport`), never assumed: a strict policy whose limit
has no mechanism here is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from corral.policy.model import LimitsPolicy
from corral.sandbox import reap
from corral.sandbox.probe import CGROUP_ROOT, Capabilities


class LimitsUnenforceable(RuntimeError):
    """A strict policy asked for a limit this host cannot enforce."""


@dataclass
class LimitReport:
    """limit name -> mechanism in force ('cgroup-v1', 'cgroup-v2', 'rlimit', 'timer', or None)."""

    mechanisms: dict[str, str | None] = field(default_factory=dict)
    values: dict[str, float | int | None] = field(default_factory=dict)

    def missing(self) -> list[str]:
        return [
            k for k, v in self.mechanisms.items() if v is None and self.values.get(k) is not None
        ]


@dataclass
class CgroupCounters:
    oom_kills: int = 0
    pids_max_hits: int = 0
    memory_peak: int | None = None
    cpu_usage_ns: int | None = None


class Cgroup:
    """One sandbox's cgroup, in whichever hierarchy the host has."""

    def __init__(self, name: str, caps: Capabilities) -> None:
        self.name = name
        self.version = caps.cgroup_version
        self.born_inside = False  # set by `spawning`: `join` has nothing to move or check
        self.dirs: dict[str, Path] = {}
        if self.version == 1:
            for ctl in caps.cgroup_controllers:
                self.dirs[ctl] = CGROUP_ROOT / ctl / "corral" / name
        elif self.version == 2 and caps.cgroup_base:
            self.dirs["unified"] = Path(caps.cgroup_base) / name

    @property
    def controllers(self) -> set[str]:
        if self.version == 1:
            return set(self.dirs)
        base = self.dirs.get("unified")
        if base is None:
            return set()
        try:
            return set((base / "cgroup.controllers").read_text().split())
        except OSError:
            return set()

    def create(self) -> None:
        if self.version == 2:
            base = self.dirs["unified"]
            parent = base.parent
            parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                avail = (parent / "cgroup.controllers").read_text().split()
                want = [c for c in ("memory", "pids", "cpu") if c in avail]
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in want))
            base.mkdir(exist_ok=True)
            return
        for d in self.dirs.values():
            d.parent.mkdir(exist_ok=True)
            d.mkdir(exist_ok=True)

    def _write(self, ctl: str, fname: str, value: str) -> bool:
        d = self.dirs.get("unified" if self.version == 2 else ctl)
        if d is None:
            return False
        try:
            (d / fname).write_text(value)
            return True
        except OSError:
            return False

    def _read(self, ctl: str, fname: str) -> str | None:
        d = self.dirs.get("unified" if self.version == 2 else ctl)
        if d is None:
            return None
        try:  # os-level: read after every command, where pathlib's layers cost more than the read
            fd = os.open(f"{d}/{fname}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.read(fd, 65536).decode(errors="replace")
        except OSError:
            return None
        finally:
            os.close(fd)

    def apply(self, limits: LimitsPolicy, report: LimitReport) -> None:
        mech = f"cgroup-v{self.version}"
        if limits.memory is not None:
            if self.version == 1:
                ok = self._write("memory", "memory.limit_in_bytes", str(limits.memory))
                # no swap beyond the limit, where the kernel accounts it
                self._write("memory", "memory.memsw.limit_in_bytes", str(limits.memory))
                self._write("memory", "memory.swappiness", "0")
            else:
                ok = self._write("memory", "memory.max", str(limits.memory))
                self._write("memory", "memory.swap.max", "0")
            if ok:
                report.mechanisms["memory"] = mech
        if limits.pids is not None and self._write("pids", "pids.max", str(limits.pids)):
            report.mechanisms["pids"] = mech
        if limits.cpus is not None:
            period = 100_000
            quota = max(1000, int(limits.cpus * period))
            if self.version == 1:
                ok = self._write("cpu", "cpu.cfs_period_us", str(period)) and self._write(
                    "cpu", "cpu.cfs_quota_us", str(quota)
                )
            else:
                ok = self._write("cpu", "cpu.max", f"{quota} {period}")
            if ok:
                report.mechanisms["cpus"] = mech

    def join(self, *pids: int) -> None:
        """Move processes in; v1 moves one task at a time, so callers move each before it forks.
        A hierarchy where every one of them already is (born inside: `spawning`) is not written:
        the write would take the kernel's global lock, and with it the wait below, for nothing."""
        if self.born_inside:  # `spawning` held the forking thread in every hierarchy: no reads
            return
        placed = {pid: _cgroups_of(f"/proc/{pid}") for pid in pids} if self.version == 1 else {}
        for ctl, d in self.dirs.items():
            want = self._relative(ctl)
            if want is not None and all(placed[pid].get(ctl) == want for pid in pids):
                continue
            with open(d / "cgroup.procs", "w") as f:
                for pid in pids:
                    f.write(str(pid))
                    f.flush()

    def _relative(self, ctl: str) -> str | None:
        """This cgroup's path as /proc/<pid>/cgroup shows it, in `ctl`'s v1 hierarchy."""
        d = self.dirs.get(ctl)
        if d is None or self.version != 1:
            return None
        return "/" + str(d.relative_to(CGROUP_ROOT / ctl))

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Hold the calling thread inside this cgroup while it starts a process, so the process
        is born inside and nothing has to be moved in afterwards.

        Why: on cgroup v1, moving another process in (`cgroup.procs`) takes a global lock whose
        first taker after an idle spell waits for an RCU grace period (0-15 ms, most of a cold
        start). A thread moving itself (writing 0 to `tasks`) skips that lock, and a child is
        born in the cgroup of the thread that forks it. The thread moves back to where it was as
        soon as the block ends. v2 has no per-thread moves: there a root supervisor's
        `corral-setid` starts bwrap with clone3(CLONE_INTO_CGROUP) (`Sandbox._born_in_cgroup`);
        otherwise `join` moves the processes, and waits as it must.
        """
        if self.version != 1 or not self.dirs:
            yield
            return
        home = _cgroups_of("/proc/thread-self")
        entered: list[str] = []
        try:
            for ctl, d in self.dirs.items():
                if ctl not in home:
                    continue
                with open(d / "tasks", "w") as f:
                    f.write("0")
                entered.append(ctl)
        except OSError:
            pass  # not all of them: `join` moves the children where they are not yet
        try:
            yield
            # a process forked in the block (and its children) is in every hierarchy
            self.born_inside = len(entered) == len(self.dirs)
        finally:
            for ctl in entered:
                _move_self_back(ctl, home[ctl])

    def pids(self) -> list[int]:
        for ctl in ("pids", "memory", "unified", "freezer", "cpu"):
            raw = self._read(ctl, "cgroup.procs") if ctl in self.dirs else None
            if raw is not None:
                return [int(x) for x in raw.split()]
        return []

    def counters(self, hits_only: bool = False) -> CgroupCounters:
        """The cgroup's counters; `hits_only`: the limit hits alone (OOM kills, refused forks),
        as after every command, without the memory peak and CPU time."""
        c = CgroupCounters()
        if self.version == 1:
            oom = self._read("memory", "memory.oom_control") or ""
            for line in oom.splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    c.oom_kills = int(v)
            if not hits_only:
                peak = self._read("memory", "memory.max_usage_in_bytes")
                c.memory_peak = int(peak) if peak else None
                usage = self._read("cpuacct", "cpuacct.usage")
                c.cpu_usage_ns = int(usage) if usage else None
        else:
            for line in (self._read("memory", "memory.events") or "").splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    c.oom_kills = int(v)
            if not hits_only:
                peak = self._read("memory", "memory.peak")
                c.memory_peak = int(peak) if peak else None
                for line in (self._read("cpu", "cpu.stat") or "").splitlines():
                    k, _, v = line.partition(" ")
                    if k == "usage_usec":
                        c.cpu_usage_ns = int(v) * 1000
        for line in (self._read("pids", "pids.events") or "").splitlines():
            k, _, v = line.partition(" ")
            if k == "max":
                c.pids_max_hits = int(v)
        return c

    def freeze(self, frozen: bool) -> bool:
        """Stop (or resume) every task, so a fork bomb cannot outrun the kill loop."""
        if self.version == 1 and "freezer" in self.dirs:
            return self._write("freezer", "freezer.state", "FROZEN" if frozen else "THAWED")
        if self.version == 2:
            return self._write("unified", "cgroup.freeze", "1" if frozen else "0")
        return False

    def kill_all(self, deadline: float = 5.0) -> None:
        """SIGKILL every task until the cgroup is empty; returns at once when it already is (the
        usual case: the sandbox's init was killed first and took its pid namespace with it).
        v2 kills in one write (`cgroup.kill`). v1 freezes first, so a fork bomb cannot race the
        kills, and thaws after, so they land. Exits are waited for on pidfds, not slept for."""
        pids = self._others()
        if not pids:
            return
        end = time.monotonic() + deadline
        killed_v2 = self.version == 2 and self._write("unified", "cgroup.kill", "1")
        # never freeze a cgroup a thread of ours is in (`spawning`): it would freeze us with it
        mine = os.getpid() in self.pids()
        while pids and time.monotonic() < end:
            frozen = not killed_v2 and not mine and self.freeze(True)
            if frozen:
                pids = self._others()  # as they are now that none can fork
            fds = [fd for fd in map(reap.pidfd_open, pids) if fd is not None]
            try:
                if not killed_v2:
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                if frozen:
                    self.freeze(False)
                if fds:
                    reap.wait_pidfds(fds, min(1.0, max(0.0, end - time.monotonic())))
                else:  # no pidfd support here: give the kills a moment to land
                    time.sleep(0.001)
            finally:
                for fd in fds:
                    os.close(fd)
            pids = self._others()

    def _others(self) -> list[int]:
        """The cgroup's processes but this one: a thread of ours inside (`spawning`) must not
        get the supervisor killed."""
        me = os.getpid()
        return [p for p in self.pids() if p != me]

    def destroy(self) -> None:
        """Remove the cgroup's directories; a cgroup that still holds tasks is emptied first."""
        for d in self.dirs.values():
            for attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt == 0:
                        self.kill_all()
                    else:
                        time.sleep(0.01)


def _cgroups_of(proc: str) -> dict[str, str]:
    """v1 controller -> cgroup path of a process (`/proc/<pid>`) or thread (`/proc/thread-self`)."""
    out: dict[str, str] = {}
    try:
        with open(f"{proc}/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                for name in names.split(","):
                    if name:
                        out[name] = path
    except (OSError, ValueError):
        return {}
    return out


def _move_self_back(ctl: str, path: str) -> None:
    """Back to the thread's own cgroup in `ctl` (or, if that went meanwhile, the nearest parent
    left): a supervisor thread must never stay in a sandbox's cgroup, which is killed at close."""
    here = Path(path)
    for d in [here, *here.parents]:
        try:
            with open(CGROUP_ROOT / ctl / d.relative_to("/") / "tasks", "w") as f:
                f.write("0")
            return
        except OSError:
            continue
    raise OSError(f"could not move the supervisor thread out of a sandbox cgroup ({ctl})")


def cgroup_name(sandbox_id: str) -> str:
    """Prefixed with the supervisor's pid, so a sweep can tell a dead supervisor's leftovers from a
    live one's cgroup that has no process in it yet."""
    return f"{os.getpid()}-{sandbox_id}"


def _owner_alive(name: str) -> bool:
    head = name.split("-", 1)[0]
    if not head.isdigit():
        return False
    try:
        os.kill(int(head), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_cgroups(caps: Capabilities) -> int:
    """Remove empty corral cgroups whose supervisor has died (SIGKILL leaves them behind)."""
    removed = 0
    bases: list[Path] = []
    if caps.cgroup_version == 1:
        bases = [CGROUP_ROOT / c / "corral" for c in caps.cgroup_controllers]
    elif caps.cgroup_version == 2 and caps.cgroup_base:
        bases = [Path(caps.cgroup_base)]
    for base in bases:
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if not d.is_dir() or _owner_alive(d.name):
                continue
            try:
                if (d / "cgroup.procs").read_text().strip():
                    continue
                d.rmdir()
                removed += 1
            except OSError:
                continue
    return removed


def rlimits_for(
    limits: LimitsPolicy, report: LimitReport, *, have_cgroup_memory: bool, have_cgroup_pids: bool
) -> list[tuple[int, int]]:
    """rlimits set in the child before exec; also the fallback for memory and pids."""
    out: list[tuple[int, int]] = [(resource.RLIMIT_CORE, 0)]
    if limits.open_files is not None:
        out.append((resource.RLIMIT_NOFILE, limits.open_files))
        report.mechanisms["open_files"] = "rlimit"
    if limits.file_size is not None:
        out.append((resource.RLIMIT_FSIZE, limits.file_size))
        report.mechanisms["file_size"] = "rlimit"
    if limits.cpu_time is not None:
        out.append((resource.RLIMIT_CPU, int(limits.cpu_time)))
        report.mechanisms["cpu_time"] = "rlimit"
    if limits.memory is not None and not have_cgroup_memory:
        # address space, not resident memory: coarser, but it holds
        out.append((resource.RLIMIT_AS, limits.memory))
        report.mechanisms["memory"] = "rlimit-as"
    if limits.pids is not None and not have_cgroup_pids and os.geteuid() != 0:
        # RLIMIT_NPROC counts every process of this uid on the host, so allow for those running
        import psutil

        uid = os.getuid()
        mine = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid)
        out.append((resource.RLIMIT_NPROC, mine + limits.pids))
        report.mechanisms["pids"] = "rlimit-nproc(per-user)"
    return out
