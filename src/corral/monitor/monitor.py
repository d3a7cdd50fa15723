"""The runtime monitor: one per supervisor, every watched sandbox's processes, sockets, CPU and GPU.

Every sandbox is watched, whatever starts it: `Sandbox.start()` calls `attach()` (below), which
hands the sandbox's `EpisodeContext` to the supervisor's shared monitor when the policy's
`monitor.enabled` says so. One background thread does all the work, so a hundred sandboxes cost one
thread, not a hundred tasks. Execs arrive from the sandbox's own seccomp listener (the exec sensor:
each exec is read while the caller is held, before it runs, in any namespace and without root);
where that is off, from the kernel's process connector (root, initial network namespace) or a scan
of each sandbox's processes every `monitor.poll_interval`.

Every process remembers the step that started it (`origin_step`): the step whose command the shell
was running when the process's top ancestor below the shell was forked (its /proc starttime against
the steps' start times), inherited by its children. Findings carry it; penalties go to it.
A slower sweep reads each sandbox's TCP table and counters and per-process CPU; idle sandboxes cost
a few small reads per sweep. Commands the session runs are checked too (from the sandbox's
`command_started` event), so a process too short-lived for a scan is still judged by its command.

Sensors turn what they see into *facts* (a dict; see `facts` in each `_on_*`) and the rule engine
decides: `check_argv` for each exec and `match_event` for every fact, with rules as YAML data. The
facts' `kind` is one of: exec, stdio_socket, relay, connections, fanout, cpu_sustained, gpu_use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from corral.contracts import ExecNote, SandboxEpisode
from corral.events.model import Event, severity_rank
from corral.monitor import procfs
from corral.monitor.connector import ConnectorUnavailable, ProcEvent, open_connector, parse
from corral.monitor.gpu import GpuSensor
from corral.respond.responder import RANK, Responder, decide

if TYPE_CHECKING:
    from corral.sandbox.sandbox import Sandbox

MINING_CORROBORATION = "mining"  # findings of this category (not CPU's own) corroborate CPU use

CONFIG_SUFFIXES = (".json", ".conf", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".txt")
CONFIG_MAX = 64 * 1024
INTERPRETERS = ("python", "python3", "perl", "ruby", "node", "bash", "sh", "dash", "php")
_YOUNG_S = 2.0
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")


@dataclass
class Proc:
    pid: int
    argv: list[str]
    step: int | None
    seen: float
    comm: str = ""
    exe: str | None = None
    origin: int | None = None  # the step that started it (inherited)
    start: int = 0  # /proc starttime ticks: tells a reused pid from this process
    cpu: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))
    sockets_checked: bool = False


@dataclass
class Watched:
    sb: SandboxEpisode  # the episode context, never the Sandbox itself
    loop: asyncio.AbstractEventLoop | None
    init_pid: int
    procs: dict[int, Proc] = field(default_factory=dict)
    fired: set[tuple[Any, ...]] = field(default_factory=set)
    step_kill: dict[int, str] = field(default_factory=dict)  # step -> response, from a command
    tcp_hist: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=64))
    cg_cpu_last: tuple[float, int] | None = None
    cpu_s: float = 0.0
    peak_cpu: float = 0.0
    execs: int = 0
    top: dict[str, float] = field(default_factory=dict)
    mem_peak: int | None = None
    engine: Any = None  # the rule engine of this sandbox's policy
    cg_procs: str | None = None  # the cgroup's cgroup.procs, read directly (cheap)
    cg_cpu: str | None = None  # cpuacct.usage (v1, ns) or cpu.stat (v2, usage_usec)
    cg_mem: str | None = None
    net_seen: tuple[int, int, int] = (0, 0, 0)  # ActiveOpens, PassiveOpens, CurrEstab
    net_read_at: float = 0.0
    busy: bool = False  # a command is running: poll it at poll_interval, else at sweep_interval
    exec_sensor: bool = False  # execs come from the seccomp listener: no polling for them
    # origin steps: pid -> (starttime ticks, the step that started it); see _snapshot
    origins: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    current_step: int | None = None  # the step whose command started last
    held: dict[int, tuple[ExecNote, int | None, float]] = field(default_factory=dict)
    cpu_hist: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    cpu_high_since: float | None = None
    corroboration: list[str] = field(default_factory=list)  # mining findings seen in this sandbox
    # monotonic times of the latest IP connect() calls (from the seccomp notifier): a burst past
    # the fan-out threshold is judged at once (`net_due`: queued for the monitor's thread)
    connect_times: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    net_due: bool = False
    # a read of the netns's TCP table is asked of the table reader's thread (one at a time)
    net_reading: bool = False


class Monitor:
    """`monitor.watch(sandbox)`; `with Monitor() as m:` or `start()`/`stop()` around it."""

    def __init__(
        self,
        engine: Any = None,
        *,
        mode: str = "auto",
        responder: Responder | None = None,
        gpu: bool | GpuSensor = True,
        poll_interval: float | None = None,
        sweep_interval: float | None = None,
    ) -> None:
        # None: each sandbox's policy picks its engine (its `rules:` section); given: for all
        self._engine_given = engine is not None
        if engine is None:
            from corral.rules import RuleEngine

            engine = RuleEngine.default()
        self.engine = engine
        self.responder = responder or Responder()
        self.requested_mode = mode
        self.mode: str = "stopped"
        self.mode_reason = ""
        self._poll_interval = poll_interval
        self._sweep_interval = sweep_interval
        self._gpu = gpu if isinstance(gpu, GpuSensor) else (GpuSensor() if gpu else None)
        self._watched: dict[str, Watched] = {}
        self._by_init: dict[int, Watched] = {}
        self._owner: dict[int, Watched | None] = {}
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sock: Any = None
        self._thread: threading.Thread | None = None
        # /proc/PID/net/tcp walks the host's whole TCP hash: 5-10 ms on a quiet 2-core VM, 250-
        # 320 ms under load. Read on a thread of its own, the monitor's thread is never held by
        # it (a fan-out judged behind such a sweep came 0.6-1 s after the probe's exec)
        self._reads: queue.SimpleQueue[Watched | None] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self.errors: list[str] = []
        self.cpu_time = 0.0  # this monitor thread's own CPU seconds, for the benchmark

    # ---------------------------------------------------------------- life
    def start(self) -> Monitor:
        if self._thread is not None:
            return self
        with self._wake_lock:
            if self._wake_r < 0:  # started again after close()
                self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.mode, self.mode_reason = "poll", ""
        if self.requested_mode in ("auto", "connector"):
            try:
                self._sock = open_connector()
                self._sock.setblocking(False)
                self.mode = "connector"
            except ConnectorUnavailable as err:
                if self.requested_mode == "connector":
                    raise
                self.mode_reason = str(err)
        if self._gpu is not None and not self._gpu.available:
            self._gpu.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="corral-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._reader is not None:
            self._reads.put(None)
            self._reader.join(5)
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._gpu is not None:
            self._gpu.stop()
        self.mode = "stopped"

    def close(self) -> None:
        """Idempotent. The wake pipe's numbers are forgotten (under the lock `_wake` takes) before
        they are closed: a sandbox still holding this monitor must never write its wake-up byte
        into, or a second close close, a number another pipe or socket has taken since."""
        self.stop()
        with self._wake_lock:
            fds = [fd for fd in (self._wake_r, self._wake_w) if fd >= 0]
            self._wake_r = self._wake_w = -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Monitor:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    @property
    def gpu_status(self) -> str:
        if self._gpu is None:
            return "off"
        return "nvml" if self._gpu.available else f"unavailable ({self._gpu.error})"

    # ---------------------------------------------------------------- registration
    _shared: Monitor | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Monitor:
        """The supervisor's one monitor, started on first use (every sandbox attaches to it)."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared._stop.is_set():
                # execs come from each sandbox's seccomp listener: no process connector needed
                cls._shared = cls(mode="poll").start()
            return cls._shared

    def watch(self, sandbox: Sandbox | SandboxEpisode) -> None:
        """Start watching a started sandbox (or its episode context); its stop event ends it."""
        sb = sandbox if isinstance(sandbox, SandboxEpisode) else getattr(sandbox, "ctx", None)
        if sb is None:
            sb = SandboxEpisode(sandbox)
        if not sb.init_pid:
            raise RuntimeError("watch() needs a started sandbox (call `await sb.start()` first)")
        if sb.id in self._watched:
            return
        other = getattr(sb, "watch", None)
        if other is not None and other is not self:  # one monitor per sandbox: this one takes over
            other.unwatch(sb)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        w = Watched(sb=sb, loop=loop, init_pid=sb.init_pid)
        if self._engine_given:
            w.engine = self.engine
        else:
            from corral.rules import RuleEngine

            w.engine = RuleEngine.for_policy(sb.policy)
        self._snapshot(w, sb.step or None)  # what runs already is the setup's (or earlier steps')
        cg = sb.cgroup
        if cg is not None:
            d = cg.dirs
            if cg.version == 1:
                for ctl in ("pids", "memory", "freezer", "cpu"):
                    if ctl in d:
                        w.cg_procs = str(d[ctl] / "cgroup.procs")
                        break
                w.cg_cpu = str(d["cpuacct"] / "cpuacct.usage") if "cpuacct" in d else None
                w.cg_mem = str(d["memory"] / "memory.max_usage_in_bytes") if "memory" in d else None
            elif "unified" in d:
                w.cg_procs = str(d["unified"] / "cgroup.procs")
                w.cg_cpu = str(d["unified"] / "cpu.stat")
                w.cg_mem = str(d["unified"] / "memory.peak")
        base = procfs.tcp_counters(w.init_pid)  # baseline: a scan right after watch() counts
        w.tcp_hist.append(
            (time.monotonic(), base.get("ActiveOpens", 0), base.get("AttemptFails", 0))
        )
        with self._lock:
            self._watched[sb.id] = w
            self._by_init[w.init_pid] = w
            for pid in self._sandbox_pids(w):
                self._owner[pid] = w
                st = procfs.stat(pid)
                w.procs[pid] = Proc(pid, procfs.cmdline(pid), None, time.monotonic(),
                                    comm=st[0] if st else "")  # fmt: skip
        sb.subscribe(self._on_sandbox_event)
        if sb.policy.monitor.exec_sensor:

            def on_exec(note: ExecNote, w: Watched = w) -> None:
                """On the sandbox's event loop, while the exec is held: its origin step (the
                process is still there to ask), then queue it for the monitor's thread."""
                origin = self._origin(w, note.pid, note.ppid, note.start_ticks)
                w.origins[note.pid] = (note.start_ticks, origin)
                self._queue.put(("exec", w, (note, origin)))
                self._wake()

            def on_exit(tid: int, w: Watched = w) -> None:
                """On the sandbox's event loop, while a process is held in exit_group/exit."""
                self._orphans(w, tid)

            def on_connect(tid: int, w: Watched = w) -> None:
                """On the sandbox's event loop, at each IP connect(): once the window holds the
                fan-out threshold's worth, the monitor's thread judges the counters now rather
                than at its next sweep (which a loaded process delays by seconds)."""
                now = time.monotonic()
                times = w.connect_times
                times.append(now)
                pol = w.sb.policy.monitor
                n = pol.fanout_threshold
                if w.net_due or len(times) < n or now - times[-n] > pol.fanout_window:
                    return
                w.net_due = True
                self._queue.put(("net", w, None))
                self._wake()

            sb.set_exec_hook(on_exec)
            sb.set_exit_hook(on_exit)
            sb.set_connect_hook(on_connect)
            w.exec_sensor = sb.exec_sensor
        sb.watch = self
        self._wake()

    def unwatch(self, sandbox: Sandbox | SandboxEpisode, *, summarise: bool = False) -> None:
        sid = sandbox.id
        w = self._watched.get(sid)
        if w is not None and summarise:
            self._summarise(w)
        with self._lock:
            w = self._watched.pop(sid, None)
            if w is None:
                return
            self._by_init.pop(w.init_pid, None)
            for pid in [p for p, o in list(self._owner.items()) if o is w]:
                del self._owner[pid]
        sb = w.sb
        sb.set_exec_hook(None)
        sb.set_exit_hook(None)
        sb.set_connect_hook(None)
        if not any(x.sb.sink is sb.sink for x in list(self._watched.values())):
            sb.unsubscribe(self._on_sandbox_event)

    def watched(self) -> list[str]:
        return list(self._watched)

    def usage(self, sb: Sandbox | SandboxEpisode) -> dict[str, Any]:
        """CPU and memory seen for a sandbox so far (per sandbox and the busiest processes)."""
        w = self._watched.get(sb.id)
        if w is None:
            return {}
        counters = sb.cgroup.counters() if sb.cgroup is not None else None
        mem = counters.memory_peak if counters and counters.memory_peak else w.mem_peak
        top = sorted(w.top.items(), key=lambda kv: -kv[1])[:5]
        return {
            "execs": w.execs,
            "cpu_s": round(w.cpu_s, 3),
            "peak_cpu_fraction": round(w.peak_cpu, 3),
            "memory_peak": mem,
            "top_processes": [{"process": k, "peak_cpu_fraction": round(v, 3)} for k, v in top],
        }

    def _on_sandbox_event(self, event: Event) -> None:
        """A sink listener: runs on the sandbox's thread, so it only queues."""
        w = self._watched.get(event.sandbox_id or "")
        if w is None:
            return
        if event.rule == "sandbox.command_started" and event.argv:
            if event.step is not None:  # precise: on the emitting thread, before the shell forks
                self._snapshot(w, event.step)
            w.busy = True
            self._queue.put(("command", w, event))
            self._wake()
        elif event.rule == "sandbox.command_ended":
            self._queue.put(("ended", w, event))
        elif event.rule in ("sandbox.stopped", "sandbox.session_restarted"):
            self._queue.put(("lifecycle", w, event))
            self._wake()
        elif (
            event.category == MINING_CORROBORATION
            and event.source != "resource"
            and event.rule not in ("mining.cpu_sustained", "mining.cpu_corroborated")
            and len(w.corroboration) < 16
        ):  # a pool config, stratum on the wire, a pool address, an ungranted GPU
            w.corroboration.append(event.rule)

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    # ---------------------------------------------------------------- the thread
    def _intervals(self) -> tuple[float, float, float]:
        # a copy first: sandboxes attach on their loops' threads while this one iterates
        pols = [w.sb.policy.monitor for w in list(self._watched.values())]
        poll = self._poll_interval or min((p.poll_interval for p in pols), default=0.05)
        sweep = self._sweep_interval or min((p.sweep_interval for p in pols), default=0.25)
        gpu = min((p.gpu_interval for p in pols), default=1.0)
        return poll, sweep, gpu

    def _run(self) -> None:
        next_poll = next_sweep = next_gpu = time.monotonic()
        t_cpu = time.thread_time()
        while not self._stop.is_set():
            try:
                poll_iv, sweep_iv, gpu_iv = self._intervals()
            except Exception as err:  # noqa: BLE001 - as below: the thread must live on
                self._note_error(err)
                poll_iv, sweep_iv, gpu_iv = 0.05, 0.25, 1.0
            now = time.monotonic()
            # the intervals follow the sandboxes watched now: one whose policy sweeps rarely must
            # not hold back the next sandbox's sweeps once it has gone
            next_poll = min(next_poll, now + poll_iv)
            next_sweep = min(next_sweep, now + sweep_iv)
            next_gpu = min(next_gpu, now + gpu_iv)
            deadlines = [next_sweep]
            if self.mode == "poll":
                deadlines.append(next_poll)
            if self._gpu is not None and self._gpu.available:
                deadlines.append(next_gpu)
            timeout = max(0.0, min(deadlines) - now) if self._watched else 1.0
            # poll, not select: with many sandboxes the supervisor's fds pass 1024
            poller = select.poll()
            if self._wake_r < 0:  # closed while this thread outlived stop()'s join
                break
            poller.register(self._wake_r, select.POLLIN)
            if self._sock is not None:
                poller.register(self._sock, select.POLLIN)
            try:
                got = {fd for fd, _ in poller.poll(timeout * 1000)}
            except (OSError, ValueError):
                got = set()
            ready = [self._wake_r] if self._wake_r in got else []
            if self._sock is not None and self._sock.fileno() in got:
                ready.append(self._sock)
            try:
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.read(self._wake_r, 4096)
                if self._sock is not None and self._sock in ready:
                    self._drain_connector()
                self._drain_queue()
                now = time.monotonic()
                if self.mode == "poll" and now >= next_poll:
                    self._poll_all(busy_only=True)
                    next_poll = now + poll_iv
                if now >= next_sweep:
                    if self.mode == "poll":
                        self._poll_all()  # idle sandboxes: background jobs still exec
                    self._sweep_all(now)
                    next_sweep = now + sweep_iv
                if self._gpu is not None and self._gpu.available and now >= next_gpu:
                    self._gpu_sweep()
                    next_gpu = now + gpu_iv
            except Exception as err:  # noqa: BLE001 - the monitor must outlive any one bad read
                self._note_error(err)
            self.cpu_time = time.thread_time() - t_cpu

    def _note_error(self, err: Exception) -> None:
        self.errors.append(f"{type(err).__name__}: {err}")
        del self.errors[:-50]

    def _drain_queue(self) -> None:
        while True:
            try:
                kind, w, event = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == "exec":
                if w.sb.id in self._watched:
                    self._owner[event[0].pid] = w
                    self._exec_note(w, *event)
            elif kind == "command":
                w.busy = True
                self._on_command(w, event)
            elif kind == "net":
                w.net_due = False
                if w.sb.id in self._watched and not w.sb.closed_reason:
                    self._judge_fanout(w, time.monotonic(), record=False)
            elif kind == "tcp":  # the table reader's answer (see _sweep_net)
                w.net_reading = False
                if event and w.sb.id in self._watched and not w.sb.closed_reason:
                    for pid in list(w.procs):
                        self._check_sockets(w, pid, table=event)
            elif kind == "ended":
                w.busy = False
                w.step_kill.pop(event.step, None)
            elif kind == "lifecycle":
                if event.rule == "sandbox.stopped":
                    self.unwatch(w.sb, summarise=True)
                else:  # a new session: a new init
                    with self._lock:
                        self._by_init.pop(w.init_pid, None)
                        if w.sb.init_pid:
                            w.init_pid = w.sb.init_pid
                            self._by_init[w.init_pid] = w

    # ---------------------------------------------------------------- exec sources
    def _drain_connector(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: the kernel dropped events; rescan to catch up
                self._poll_all()
                return
            for ev in parse(data):
                self._on_proc_event(ev)

    def _on_proc_event(self, ev: ProcEvent) -> None:
        if not self._watched:
            return
        if ev.what == "fork":
            parent = self._owner.get(ev.parent)
            if parent is None and ev.parent not in self._owner:
                parent = self._lookup_owner(ev.parent)
            self._owner[ev.pid] = parent
        elif ev.what == "exec":
            w = self._owner.get(ev.pid) if ev.pid in self._owner else self._lookup_owner(ev.pid)
            if w is not None and ev.pid != w.init_pid:
                self._on_exec(w, ev.pid, "connector", ev.ts_ns)
        elif ev.what == "exit":
            w = self._owner.pop(ev.pid, None)
            if w is not None:
                w.procs.pop(ev.pid, None)

    def _lookup_owner(self, pid: int) -> Watched | None:
        """Walk the parent chain up to a watched sandbox's init (or to pid 1)."""
        chain = []
        p = pid
        owner: Watched | None = None
        for _ in range(64):
            if p in self._by_init:
                owner = self._by_init[p]
                break
            if p in self._owner:
                owner = self._owner[p]
                break
            chain.append(p)
            st = procfs.stat(p)
            if st is None or st[1] <= 1:
                break
            p = st[1]
        for c in chain:
            self._owner[c] = owner
        return owner

    def _sandbox_pids(self, w: Watched) -> list[int]:
        if w.cg_procs is not None:
            raw = procfs.read_text(w.cg_procs)
            if raw:
                return [int(x) for x in raw.split()]
        return procfs.descendants(w.init_pid)

    def _cgroup_cpu_ns(self, w: Watched) -> int | None:
        raw = procfs.read_text(w.cg_cpu) if w.cg_cpu else None
        if not raw:
            return None
        if raw[0].isdigit():
            return int(raw)
        for line in raw.splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) * 1000
        return None

    def _poll_all(self, busy_only: bool = False) -> None:
        for w in list(self._watched.values()):
            if w.exec_sensor:
                if not busy_only:
                    self._prune(w)
                continue
            if w.busy or not busy_only:
                self._poll(w)

    def _prune(self, w: Watched) -> None:
        """Forget processes that have gone (the exec sensor reports births, not deaths)."""
        live = set(self._sandbox_pids(w))
        for pid in [p for p in w.procs if p not in live]:
            del w.procs[pid]
            self._owner.pop(pid, None)

    def _poll(self, w: Watched) -> None:
        now = time.monotonic()
        pids = self._sandbox_pids(w)
        live = set(pids)
        for pid in pids:
            if pid == w.init_pid:
                continue
            known = w.procs.get(pid)
            if known is None:
                self._owner[pid] = w
                self._on_exec(w, pid, "poll")
            elif now - known.seen < _YOUNG_S:
                argv = procfs.cmdline(pid)
                if argv and argv != known.argv:
                    self._on_exec(w, pid, "poll")
        for pid in [p for p in w.procs if p not in live]:
            del w.procs[pid]
            self._owner.pop(pid, None)

    # ---------------------------------------------------------------- exec
    def _parents(self, w: Watched, pid: int, ppid: int) -> list[dict[str, Any]]:
        out = []
        p = ppid
        for _ in range(8):
            if p <= 1 or p == w.init_pid:
                break
            st = procfs.stat(p)
            if st is None:
                break
            known = w.procs.get(p)
            argv = known.argv if known and known.argv else procfs.cmdline(p)
            out.append({"pid": p, "comm": st[0], "argv": argv[:8]})
            p = st[1]
        return out

    def _config_files(
        self, pid: int, argv: list[str], cwd: str | None, exe: str | None
    ) -> list[dict[str, str]]:
        """Small config files a program may read its orders from: ./config.json, files in argv,
        config.json beside a script. Read through /proc/PID/root: the sandbox's own view."""
        root = f"/proc/{pid}/root"
        names: list[str] = []
        base = cwd or "/"
        prog = argv[0].rsplit("/", 1)[-1].rstrip("0123456789.")
        system = (exe or "").startswith(SYSTEM_PREFIXES) and prog not in INTERPRETERS
        if cwd and not system:
            # a renamed miner reads ./config.json; a system tool (ssh, git) does not
            names.append(str(PurePosixPath(cwd) / "config.json"))
        for a in argv[1:]:
            if a.startswith("-") and "=" in a:
                a = a.split("=", 1)[1]
            if not a or a.startswith("-") or len(a) > 512:
                continue
            path = PurePosixPath(a if a.startswith("/") else f"{base}/{a}")
            if path.suffix in CONFIG_SUFFIXES:
                names.append(str(path))
            elif (
                path.suffix in (".py", ".pl", ".rb", ".js", ".sh", "")
                and argv[0].rsplit("/", 1)[-1].rstrip("0123456789.") in INTERPRETERS
            ):
                names.append(str(path.parent / "config.json"))
        out, seen = [], set()
        for n in names:
            if n in seen:
                continue
            seen.add(n)
            text = procfs.read_text(root + n, CONFIG_MAX)
            if text:
                out.append({"path": n, "text": text})
        return out

    def _snapshot(self, w: Watched, new_step: int | None) -> None:
        """At a step's start, before its command is sent: every process in the sandbox not yet
        known was started during the step that ran until now: by that step's command (forked by
        the shell, or by a process of that step), or by an earlier step's background job, whose
        origin it inherits from its parent (the job's `( sleep 1; (./miner &) )` forks during a
        later step; a loaded host may not exec it before the next snapshot). Runs on the sandbox's
        event loop, the thread the exec sensor's hook runs on, so the two never interleave: a
        process absent from the last snapshot was forked after it."""
        pids = procfs.descendants(w.init_pid) if w.init_pid else []  # parents before children
        origins = w.origins
        if len(origins) > 4096:  # forget the dead
            live = set(pids)
            for pid in [p for p in origins if p not in live]:
                del origins[pid]
        shells: set[int] | None = None
        for pid in pids:
            # known: no read. LIMITATION: a pid the kernel reused (pid_max may be 32768) keeps
            # its old entry here; `_origin`'s starttime check then ignores it and walks the chain
            if pid in origins:
                continue
            st = procfs.stat(pid)
            if st is None:
                continue
            if shells is None:
                shells = w.sb.shell_pids()
            if pid == w.init_pid or pid in shells or st[1] in shells or st[1] == w.init_pid:
                origin = w.current_step  # the shell's own child: that step's command
            else:  # a child of a known process (recorded just above: parents come first)
                origin = self._origin(w, pid, st[1], st[3])
            origins[pid] = (st[3], origin)
        w.current_step = new_step

    def _orphans(self, w: Watched, tid: int) -> None:
        """A process is leaving (held in exit_group/exit by the seccomp listener): each of its
        children is about to be re-parented to the sandbox's init, its forking ancestry lost.
        Record now the step that started each (the leaving process's, inherited), so that an
        orphan exec'ing during a later step is still blamed on the step that started its
        ancestor. Runs on the sandbox's event loop, as the exec hook and `_snapshot` do.

        LIMITATION: only a process that leaves through exit_group or exit is seen. A parent
        killed by a signal (SIGKILL from a sibling, or a crash it causes on purpose) never calls
        either: its children's later execs fall back to the chain they still have, else to the
        step running then. A child forked by another thread of the leaving process after this
        read (between its exit_group and the kernel's killing of its other threads) is missed the
        same way. A process-group or session fallback would not help: the shell runs without job
        control, so every step's processes share one group, and `setsid` makes its own."""
        tgid, kids = procfs.process_children(tid)
        if not kids:
            return
        shells = w.sb.shell_pids()
        for child in kids:
            st = procfs.stat(child)
            if st is None:
                continue
            known = w.origins.get(child)
            if known is not None and known[0] == st[3]:
                continue  # exec'd already, or recorded at a step's start
            # the shell's own children are each step's work: the step running now
            origin = w.current_step if tgid in shells else self._origin(w, child, tgid, st[3])
            w.origins[child] = (st[3], origin)

    def _origin(self, w: Watched, pid: int, ppid: int, start: int) -> int | None:
        """The step that started pid: its own or its nearest ancestor's as the snapshots knew
        them (a daemon re-parented to init keeps its own), else the current step's."""
        known = w.origins.get(pid)
        if known is not None and known[0] == start:
            return known[1]
        shells = w.sb.shell_pids()
        p = ppid
        for _ in range(64):
            if p in shells or p == w.init_pid or p <= 1:
                break
            st = procfs.stat(p)
            if st is None:
                break
            known = w.origins.get(p)
            if known is not None and known[0] == st[3]:
                return known[1]
            p = st[1]
        return w.current_step

    def _exec_note(self, w: Watched, note: ExecNote, origin: int | None) -> None:
        """A PATH search (dash, Python's subprocess) tries execve on each directory: a note whose
        file did not exist is held, and dropped when the same pid retries the same argv (it
        failed); anything else, or the sweep after a moment, lets it through (a file made in
        between is then still recorded)."""
        held = w.held.pop(note.pid, None)
        if held is not None and held[0].argv != note.argv:
            self._on_exec(w, held[0].pid, "seccomp", note=held[0], origin=held[1])
        if not note.exists:
            w.held[note.pid] = (note, origin, time.monotonic())
            return
        self._on_exec(w, note.pid, "seccomp", note=note, origin=origin)

    def _release_held(self, w: Watched, now: float) -> None:
        for pid, (note, origin, at) in list(w.held.items()):
            if now - at >= 0.1:
                del w.held[pid]
                self._on_exec(w, pid, "seccomp", note=note, origin=origin)

    def origin_of(self, sb: SandboxEpisode, pid: int) -> int | None:
        """The step that started pid: from its exec record, else from /proc (any thread)."""
        w = self._watched.get(sb.id)
        if w is None:
            return None
        st = procfs.stat(pid)
        if st is None:
            known = w.procs.get(pid)
            return known.origin if known is not None else None
        return self._origin(w, pid, st[1], st[3])

    def _on_exec(self, w: Watched, pid: int, via: str, kernel_ns: int | None = None,
                 note: ExecNote | None = None, origin: int | None = None) -> None:  # fmt: skip
        seen_ns = time.monotonic_ns()
        if note is not None:  # read while the exec was held: the process may be gone by now
            argv, comm, ppid, start, cwd = (
                note.argv,
                note.comm,
                note.ppid,
                note.start_ticks,
                note.cwd,
            )
            exe = note.path
            # the kernel names the new image after its file (comm then is still the old one's)
            comm = PurePosixPath(note.path).name[:15] or comm
            if exe and not exe.startswith("/") and cwd:
                exe = str(PurePosixPath(cwd) / exe)
            kernel_ns = note.mono_ns
        else:
            argv = procfs.cmdline(pid)
            st = procfs.stat(pid)
            if st is None:
                return
            comm, ppid, _ticks, start = st
            exe = procfs.exe(pid)
            cwd = procfs.cwd(pid)
        if not argv:
            argv = [comm]
        sb = w.sb
        step = sb.step or None
        if note is None:
            origin = self._origin(w, pid, ppid, start)
        w.procs[pid] = Proc(pid, argv, step, time.monotonic(), comm=comm, exe=exe, origin=origin,
                            start=start)  # fmt: skip
        w.execs += 1
        parents = self._parents(w, pid, ppid)
        exec_event = sb.emit(
            source="process",
            rule="process.exec",
            pid=pid,
            exe=exe,
            argv=argv,
            step=step,
            origin_step=origin,
            message=" ".join(argv)[:200],
            evidence={
                "cwd": cwd,
                "comm": comm,
                "ppid": ppid,
                "parents": parents,
                "via": via,
                "exec_ns": kernel_ns,
                "seen_ns": seen_ns,
            },  # monotonic clock
            **({"ts": note.ts} if note is not None else {}),
        )
        stdio = procfs.fd_targets(pid, (0, 1, 2))
        configs = self._config_files(pid, argv, cwd, exe)
        facts: dict[str, Any] = {
            "kind": "exec",
            "source": "process",
            "pid": pid,
            "exe": exe,
            "comm": comm,
            "argv": argv,
            "cmdline": " ".join(argv),
            "cwd": cwd,
            "parents": parents,
            "config": {
                "paths": [c["path"] for c in configs],
                "text": "\n".join(c["text"] for c in configs),
            },  # fmt: skip
            "stdio": {str(k): v for k, v in stdio.items()},
            "gpu_granted": sb.policy.gpu.allowed,
        }
        findings = list(w.engine.check_argv(argv)) + list(w.engine.match_event(facts))
        if any(v.startswith("socket:") for v in stdio.values()):
            self._check_sockets(w, pid, only_stdio=True)
        self._act(w, findings, source="process", pid=pid, exe=exe, argv=argv, step=step,
                  evidence={"exec_ts": exec_event.ts.isoformat(), "via": via, "cwd": cwd,
                            "parents": parents}, key=pid, origin=origin)  # fmt: skip
        pending = w.step_kill.get(origin) if origin is not None else None
        if pending and pid in w.procs:
            self._kill_pending(w, pid, origin, pending)

    def _on_command(self, w: Watched, event: Event) -> None:
        command = event.argv[-1] if event.argv else ""
        findings = list(w.engine.check_command(command))
        if not findings:
            return
        self._act(w, findings, source="process", pid=None, exe=None, argv=event.argv,
                  step=event.step, evidence={"via": "command",
                                             "command_ts": event.ts.isoformat()},
                  key=("step", event.step))  # fmt: skip

    # ---------------------------------------------------------------- acting
    def _tree(self, w: Watched, pid: int) -> list[int]:
        """pid and its descendants, but only processes of this sandbox (never its init)."""
        members = set(self._sandbox_pids(w))
        return [p for p in procfs.descendants(pid) if p in members and p != w.init_pid]

    def _step_pids(self, w: Watched, step: int | None) -> list[int]:
        """The processes that a step's command started (and their descendants)."""
        roots = [p.pid for p in w.procs.values() if p.origin == step and step is not None]
        out: list[int] = []
        for r in roots:
            out.extend(x for x in self._tree(w, r) if x not in out)
        return out

    def _act(
        self,
        w: Watched,
        findings: list[Any],
        *,
        source: str,
        pid: int | None,
        exe: str | None,
        argv: list[str] | None,
        step: int | None,
        evidence: dict[str, Any],
        key: Any,
        origin: int | None = None,
        response_cap: str | None = None,
        tree_pids: list[int] | None = None,
    ) -> None:
        if origin is None and pid is not None:
            known = w.procs.get(pid)
            origin = known.origin if known is not None else None
        if origin is None:
            origin = step
        # rules a person approved for the command that started this: the gate recorded them
        approved = getattr(w.sb, "approvals", {}).get(origin, ()) if origin is not None else ()
        fresh, judged = [], []
        for f in findings:
            rule = getattr(f, "rule", None)
            if rule in approved:
                continue
            k = (rule, key)
            # one finding per rule per act: the step that started it (a background job's exec
            # at step 3 is the act step 1's command already showed)
            k_step = (rule, "step", origin)
            if k in w.fired:
                continue
            w.fired.add(k)
            if origin is not None and k_step in w.fired:
                judged.append(f)  # reported already (from the command): enforce, don't repeat
                continue
            if origin is not None:
                w.fired.add(k_step)
            fresh.append(f)
        sb = w.sb
        if sb.closed_reason:
            return

        def decided(f: Any) -> str:
            r = decide(sb, f)
            return r if response_cap is None or RANK[r] <= RANK[response_cap] else response_cap

        if judged and pid is not None and not fresh and origin not in w.step_kill:
            response = max((decided(f) for f in judged), key=lambda r: RANK.get(r, 0))
            if response in ("block", "kill", "terminate"):
                self._kill_pending(w, pid, origin, "kill" if response == "terminate" else response)
        if not fresh:
            return
        # one act, one finding: the strongest response (then severity) is recorded, acted on
        # and charged, the other rules it matched listed with it, as the gate records a command:
        # the same act costs the same whichever sensor saw it or how it was spelled
        fresh.sort(
            key=lambda f: (-RANK.get(decided(f), 0), -severity_rank(getattr(f, "severity", "")))
        )
        chosen = decided(fresh[0])
        if tree_pids:

            def tree() -> list[int]:
                out: list[int] = []
                for root in tree_pids:
                    out.extend(x for x in self._tree(w, root) if x not in out)
                return out
        elif pid is not None:

            def tree() -> list[int]:
                return self._tree(w, pid)
        else:

            def tree() -> list[int]:
                return self._step_pids(w, origin)

        top = fresh[0]
        ev = dict(evidence)
        if len(fresh) > 1:
            ev["also"] = [{"rule": f.rule, "category": f.category, "severity": f.severity}
                          for f in fresh[1:]]  # fmt: skip
        self.responder.respond(sb, top, source=source, loop=w.loop, pid=pid, exe=exe, argv=argv,
                               step=step, evidence=ev, kill_tree=tree, origin_step=origin,
                               response=chosen)  # fmt: skip
        if pid is None and origin is not None and chosen in ("block", "kill"):
            w.step_kill[origin] = chosen

    def _kill_pending(self, w: Watched, pid: int, step: int | None, response: str) -> None:
        from corral.respond.responder import ACTION_OF, kill_pids

        pids = kill_pids(self._tree(w, pid))
        w.sb.emit(source="policy", rule=f"respond.{response}", category="lifecycle", action=ACTION_OF[response], pid=pid, step=step,
                  message=f"killed {len(pids)} process(es) of step {step}, whose command was"
                  " already judged",
                  evidence={"pids": pids})  # fmt: skip

    # ---------------------------------------------------------------- sweeps
    def _sweep_all(self, now: float) -> None:
        for w in list(self._watched.values()):
            if w.held:
                self._release_held(w, now)
            if w.sb.closed_reason:
                continue
            self._sweep_cpu(w, now)
            self._sweep_net(w, now)

    def _cpu_total_ns(self, w: Watched, pids: list[int]) -> int:
        """The sandbox's CPU so far: its cgroup's counter, else the sum over its live processes
        of their own and their reaped children's time (monotone: a dead child's time moves into
        the parent that reaps it; the sandbox's init reaps orphans)."""
        usage = self._cgroup_cpu_ns(w)
        if usage is not None:
            return usage
        total = 0
        for pid in pids:
            t = procfs.cpu_all(pid)
            if t is not None:
                total += t
        return int(total * 1e9 / procfs.CLK_TCK)

    def _sweep_cpu(self, w: Watched, now: float) -> None:
        """CPU judged per sandbox: its total over `cpu_window`, whatever the processes are called
        or however many share the work. Held above `cpu_threshold` cores for the window: a finding
        whose response is capped at alert, unless a mining finding corroborates it (pool config,
        stratum, pool address, ungranted GPU) or it lasts `cpu_kill_window`: then the policy's
        mining response."""
        pol = w.sb.policy.monitor
        pids = self._sandbox_pids(w)
        total = self._cpu_total_ns(w, pids)
        w.cpu_hist.append((now, total))
        while len(w.cpu_hist) > 2 and now - w.cpu_hist[1][0] >= pol.cpu_window:
            w.cpu_hist.popleft()
        w.cpu_s = total / 1e9
        # per process, for the record and to blame the busiest
        for pid in pids:
            if pid == w.init_pid:
                continue
            proc = w.procs.get(pid)
            st = procfs.stat(pid) if proc is not None else None
            if proc is None or st is None:
                continue
            proc.cpu.append((now, st[2]))
            while len(proc.cpu) > 2 and now - proc.cpu[1][0] >= pol.cpu_window:
                proc.cpu.popleft()
        t0, c0 = w.cpu_hist[0]
        span = now - t0
        if span <= 0:
            return
        rate = (total - c0) / 1e9 / span
        w.peak_cpu = max(w.peak_cpu, rate) if span >= pol.cpu_window * 0.5 else w.peak_cpu
        if span < pol.cpu_window * 0.95:
            return
        if rate < pol.cpu_threshold:
            w.cpu_high_since = None
            return
        if w.cg_mem:  # memory peak, read only while the sandbox is busy
            raw = procfs.read_text(w.cg_mem)
            w.mem_peak = int(raw) if raw and raw.strip().isdigit() else w.mem_peak
        if w.cpu_high_since is None:
            w.cpu_high_since = t0
        sustained = now - w.cpu_high_since
        long = sustained >= pol.cpu_kill_window
        corroborated = bool(w.corroboration)
        stage = "enforce" if (long or corroborated) else "alert"
        if ("cpu", stage) in w.fired:
            return
        w.fired.add(("cpu", stage))
        busiest = []
        for proc in w.procs.values():
            if len(proc.cpu) >= 2 and proc.cpu[-1][0] > proc.cpu[0][0]:
                frac = (
                    (proc.cpu[-1][1] - proc.cpu[0][1])
                    / procfs.CLK_TCK
                    / (proc.cpu[-1][0] - proc.cpu[0][0])
                )
                w.top[proc.comm] = max(w.top.get(proc.comm, 0.0), frac)
                busiest.append((frac, proc))
        busiest.sort(key=lambda x: -x[0])
        top = busiest[0][1] if busiest else None
        share = [p for f, p in busiest if f >= 0.1]
        cpu = {"cores": round(rate, 3), "window_s": round(span, 2), "sustained_s": round(sustained, 1),
               "threshold": pol.cpu_threshold, "kill_window_s": pol.cpu_kill_window,
               "corroborated": corroborated, "long": long, "corroboration": w.corroboration[:4],
               "processes": [{"pid": p.pid, "comm": p.comm, "cores": round(f, 3)}
                             for f, p in busiest[:4]],
               # older packs read these two
               "fraction": round(rate, 3), "build": False}  # fmt: skip
        facts = {
            "kind": "cpu_sustained",
            "source": "resource",
            "pid": top.pid if top else None,
            "comm": top.comm if top else "",
            "argv": top.argv if top else [],
            "cmdline": " ".join(top.argv) if top else "",
            "cpu": cpu,
            "exe": top.exe if top else None,
            "evidence": {"cpu_percent": round(100 * rate, 1), "window_s": round(span, 2)},
        }
        findings = list(w.engine.match_event(facts))
        kill_pids = [p.pid for p in share]

        origin = top.origin if top else None
        self._act(w, findings, source="resource", pid=top.pid if top else None,
                  exe=top.exe if top else None, argv=top.argv if top else None,
                  step=w.sb.step or None, evidence={"cpu": cpu}, key=("cpu", stage),
                  origin=origin, response_cap=None if stage == "enforce" else "alert",
                  tree_pids=kill_pids)  # fmt: skip

    def _judge_fanout(self, w: Watched, now: float, record: bool = True) -> dict[str, int]:
        """Connection attempts in the netns's TCP counters over `fanout_window`: past the
        threshold, a fan-out fact. `record`: a sweep keeps the reading in the window's history;
        a reading asked for by a burst of connects (`on_connect`) only compares against it (a
        burst must not push the window's start out of a short history). Returns the counters."""
        pol = w.sb.policy.monitor
        counters = procfs.tcp_counters(w.init_pid)
        if not counters:
            return counters
        opens = counters.get("ActiveOpens", 0)
        fails = counters.get("AttemptFails", 0)
        if record:
            w.tcp_hist.append((now, opens, fails))
            while len(w.tcp_hist) > 2 and now - w.tcp_hist[1][0] >= pol.fanout_window:
                w.tcp_hist.popleft()
        if not w.tcp_hist:
            return counters
        t0, o0, f0 = w.tcp_hist[0]
        attempts = opens - o0
        if attempts < pol.fanout_threshold:
            return counters
        w.tcp_hist.clear()  # these attempts are judged once
        w.tcp_hist.append((now, opens, fails))
        facts = {
            "kind": "fanout",
            "source": "process",
            "net": {"attempts": attempts, "failed": fails - f0,
                    "window_s": round(now - t0, 2), "threshold": pol.fanout_threshold},
        }  # fmt: skip
        findings = list(w.engine.match_event(facts))
        # the counters name no process: the one that made most of the window's connect()
        # calls (the exec sensor's notifier saw each), blamed on the step that started it
        who = getattr(w.sb, "connectors", None)
        pids = who(t0) if who is not None else []
        proc = w.procs.get(pids[0]) if pids else None
        origin = proc.origin if proc is not None else None
        if proc is None and pids and pids[0] in w.origins:
            origin = w.origins[pids[0]][1]
        self._act(w, findings, source="process", pid=pids[0] if pids else None,
                  exe=proc.exe if proc else None, argv=proc.argv if proc else None,
                  step=w.sb.step or None, evidence={"net": facts["net"]},
                  key=("fanout", w.sb.step), origin=origin)  # fmt: skip
        return counters

    def _sweep_net(self, w: Watched, now: float) -> None:
        counters = self._judge_fanout(w, now)
        # /proc/PID/net/tcp walks the host's whole TCP hash (milliseconds): read it only when the
        # netns has connections and something changed, or once a second while they last
        seen = (counters.get("ActiveOpens", 0), counters.get("PassiveOpens", 0),
                counters.get("CurrEstab", 0))  # fmt: skip
        changed, w.net_seen = seen != w.net_seen, seen
        if not counters or (seen[2] == 0 and not changed):
            return
        if not changed and now - w.net_read_at < 1.0:
            return
        w.net_read_at = now
        if not w.net_reading:
            w.net_reading = True
            self._read_table(w)

    def _read_table(self, w: Watched) -> None:
        """Ask the table reader's thread for `w`'s TCP table; the answer comes back through the
        queue (`tcp`), judged on the monitor's thread like everything else."""
        if self._reader is None or not self._reader.is_alive():
            self._reader = threading.Thread(target=self._read_tables, name="corral-monitor-tcp",
                                            daemon=True)  # fmt: skip
            self._reader.start()
        self._reads.put(w)

    def _read_tables(self) -> None:
        while True:
            w = self._reads.get()
            if w is None:
                return
            table: dict[int, dict[str, Any]] = {}
            try:
                table = procfs.tcp_table(w.init_pid)
            except Exception as err:  # noqa: BLE001 - a bad read must not end the reader
                self.errors.append(f"{type(err).__name__}: {err}")
            self._queue.put(("tcp", w, table))
            self._wake()

    def _check_sockets(
        self,
        w: Watched,
        pid: int,
        *,
        only_stdio: bool = False,
        table: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        proc = w.procs.get(pid)
        if proc is None:
            return
        targets = procfs.fd_targets(pid, (0, 1, 2) if only_stdio else None)
        inodes = procfs.socket_inodes(targets)
        if not inodes:
            return
        if table is None:
            table = procfs.tcp_table(pid)
        mine = {fd: table[i] for fd, i in inodes.items() if i in table}
        if not mine:
            return
        stdio = {fd: s for fd, s in mine.items() if fd in (0, 1, 2)}
        listen_ports = {s["local"]["port"] for s in mine.values() if s["state"] == "LISTEN"}
        outbound = [
            s for s in mine.values()
            if s["state"] in ("ESTABLISHED", "SYN_SENT")
            and s["local"]["port"] not in listen_ports
        ]  # fmt: skip
        base = {"source": "process", "pid": pid, "comm": proc.comm, "argv": proc.argv,
                "cmdline": " ".join(proc.argv)}  # fmt: skip
        facts_list = []
        if stdio:
            remote = next(iter(stdio.values()))["remote"]
            facts_list.append({**base, "kind": "stdio_socket",
                               "sockets": {"stdio_fds": sorted(stdio), "remote": remote}})  # fmt: skip
        if listen_ports and outbound and not only_stdio:
            facts_list.append({**base, "kind": "relay", "sockets": {
                "listen_ports": sorted(listen_ports),
                "outbound": [s["remote"] for s in outbound][:16]}})  # fmt: skip
        if outbound and not only_stdio:
            remotes = {(s["remote"]["ip"], s["remote"]["port"]) for s in outbound}
            facts_list.append({**base, "kind": "connections", "sockets": {
                "remote_ports": sorted({p for _, p in remotes}),
                "remote_ips": sorted({ip for ip, _ in remotes}),
                "distinct_remotes": len(remotes)}})  # fmt: skip
        for facts in facts_list:
            findings = list(w.engine.match_event(facts))
            self._act(w, findings, source="process", pid=pid, exe=proc.exe, argv=proc.argv,
                      step=proc.step, evidence={"sockets": facts["sockets"]}, key=pid)  # fmt: skip

    # ---------------------------------------------------------------- GPU
    def _gpu_sweep(self) -> None:
        assert self._gpu is not None
        for gp in self._gpu.processes():
            w = self._owner.get(gp.pid) if gp.pid in self._owner else self._lookup_owner(gp.pid)
            if w is None:
                continue
            proc = w.procs.get(gp.pid)
            argv = proc.argv if proc else procfs.cmdline(gp.pid)
            step = proc.step if proc else (w.sb.step or None)
            key = ("gpu", gp.pid, gp.device)
            if key in w.fired:
                continue
            w.fired.add(key)
            gpu = {"device": gp.device, "device_name": gp.device_name, "kind": gp.kind,
                   "used_memory": gp.used_memory, "utilization": gp.utilization,
                   "granted": w.sb.policy.gpu.allowed}  # fmt: skip
            w.sb.emit(source="gpu", rule="gpu.process", pid=gp.pid, argv=argv, step=step,
                      message=f"GPU {gp.device} ({gp.device_name}) used by pid {gp.pid}",
                      evidence=gpu)  # fmt: skip
            facts = {"kind": "gpu_use", "source": "gpu", "pid": gp.pid, "argv": argv,
                     "cmdline": " ".join(argv), "gpu": gpu}  # fmt: skip
            findings = list(w.engine.match_event(facts))
            self._act(w, findings, source="gpu", pid=gp.pid, exe=proc.exe if proc else None,
                      argv=argv, step=step, evidence={"gpu": gpu}, key=gp.pid)  # fmt: skip

    # ---------------------------------------------------------------- end
    def _summarise(self, w: Watched) -> None:
        usage = self.usage(w.sb)
        if not usage:
            return
        w.sb.emit(source="resource", rule="resource.usage",
                  message=f"{usage['execs']} exec(s), {usage['cpu_s']}s CPU", evidence=usage)  # fmt: skip
