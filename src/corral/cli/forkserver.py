"""The fork server ("zygote") behind `corral run` and `corral check`, as Gradle's daemon and
Bazel's server are for the JVM: one process per user identity that has imported and warmed what
those commands need (pydantic models, typer, the gateway, the rule engine compiled, the seccomp
program, the bwrap probe) and forks a child per call. The child takes on the caller's fds 0/1/2,
current directory, environment, umask, rlimits, signal dispositions and mask, nice, CPU affinity and
oom_score_adj (`forkclient.request`), then runs exactly the normal `corral.cli.main.main(argv)`:
the same code, the same sandbox, nothing run unsandboxed, nothing run twice.

Started by the first call that finds none (`forkclient.spawn`, detached), it exits after
`CORRAL_DAEMON_IDLE` seconds without a call (default 300), on `corral daemon stop`, or when any file
of the corral package (modules, rule packs, presets, the launcher), the interpreter or a `sys.path`
directory changed since it loaded them: it then answers "stale" and the caller runs in its own
process, so an edited editable install is never served from old code.

Who may call: a peer whose SO_PEERCRED uid is ours, whose user/pid/mnt/net/ipc/uts/cgroup namespace
inodes are ours, and whose credentials (uids, gids, groups, capability sets, no_new_privs, seccomp)
are ours; checked on a pidfd taken from the socket, so a recycled pid cannot pass for the peer.
An agent in a sandbox run by a non-root supervisor has our host uid but other namespaces: refused.

LIMITATIONS (what differs from a plain `corral` process):
- the child's parent is the server and its cgroup is the server's (the key holds the caller's
  cgroup, so a server serves only callers of the cgroup it was started from); it is a session
  leader of its own, without a controlling terminal: the terminal's job control does not reach it
  directly (SIGINT, SIGTERM, SIGHUP, SIGTSTP and SIGCONT that the `corral` process receives are
  forwarded; a signal sent to the `corral` process group reaches only the client);
- /proc/PID/environ and the hash seed of the child are the server's (os.environ is the caller's);
- modules are found on the caller's `sys.path` less its first entry (the script's directory, or
  the current directory under `python -m`);
- only fds 0, 1 and 2 are handed over (a plain process would inherit others; corral uses none);
- stdout that cannot be flushed at exit (a closed pipe) gives exit 120 as the interpreter does,
  without its "Exception ignored" line;
- the first call, which starts the server, shares the CPU with the server's warm-up;
- a call that the child cannot take on (limits or priority it may not set; hard limits, nice and
  oom_score_adj are in the key, so this is rare) or with a closed fd 0-2 runs in the caller's
  process.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import gc
import importlib
import marshal
import os
import select
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from corral.cli import forkclient
from corral.cli.forkclient import recv, send

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; pidfd_open(pid) before that
IDLE_DEFAULT_S = 300.0
REQUEST_TIMEOUT_S = 2.0  # a peer that connects and says nothing does not hold the server longer
MAX_FDS = 4
GO_TIMEOUT_S = 120.0
# what `run` and `check` import on their way (found by diffing sys.modules in a served child)
PRELOAD = (
    "corral.cli.run",
    "corral.cli.check",
    "corral.cli.daemon",
    "corral.sandbox.sandbox",
    "corral.egress",
    "corral.egress.gateway",
    "corral.monitor",
    "corral.monitor.attach",
    "corral.respond",
    "corral.rl",  # (the reward shaper: the steps charged at close)
    "corral.rl.reward",
    "corral.rules.gate",
    "corral.rules.bounded",
    "corral.rules.engine",
    "corral.store.recovery",
    "corral.store.sqlite",
    "concurrent.futures.thread",
    "typer._click.decorators",
    "typer._adapters",
    "pydantic.type_adapter",
    "email.parser",
    "email.feedparser",
    "dns.message",
    "dns.flags",
    "dns.rcode",
    "dns.rdatatype",
    "dns.rrset",
    "h11",
    "wsproto",
    "wsproto.frame_protocol",
    "idna",
    "queue",
    "pynvml",
    "rich.console",
    "rich.table",
    "rich.markup",
)
# the userns-related sysctls the bwrap probe's answer depends on
_USERNS_SYSCTLS = ("/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/user/max_user_namespaces",
                   "/proc/sys/kernel/apparmor_restrict_unprivileged_userns")  # fmt: skip


def serve_main() -> None:
    """`python -c 'from corral.cli.forkserver import serve_main; serve_main()' SPEC` (hex of a
    marshalled {key, dir, path}); `forkclient.spawn` starts it detached."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # not the first caller's mask (SIGCHLD!)
    spec = marshal.loads(bytes.fromhex(sys.argv[1]))
    sys.path[:] = [p for p in spec["path"] if isinstance(p, str)]
    sys.argv = ["corral-forkserver"]
    Server(spec["key"], spec["dir"]).run()


def _idle_s() -> float:
    try:
        return max(0.1, float(os.environ.get("CORRAL_DAEMON_IDLE", IDLE_DEFAULT_S)))
    except ValueError:
        return IDLE_DEFAULT_S


# ------------------------------------------------------------------ staleness


def _package_root() -> str:
    import corral

    return os.path.dirname(os.path.abspath(corral.__file__))


def snapshot() -> list[Any]:
    """What the server's code came from: every file and directory listing of the corral package
    (modules, packs, presets, the launcher), the interpreter, and the `sys.path` directories (an
    install or upgrade there renames a dist-info). Compared before each fork."""
    out: list[Any] = []

    def st(path: str) -> tuple[int, int, int] | None:
        try:
            s = os.stat(path)
        except OSError:
            return None
        return (s.st_ino, s.st_mtime_ns, s.st_size)

    for root, dirs, files in os.walk(_package_root()):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out.append((root, sorted(files), dirs[:]))
        out.extend((f, st(os.path.join(root, f))) for f in sorted(files))
    out.append(st(os.path.realpath(sys.executable)))
    out.extend((p, st(p)) for p in sys.path if p)
    return out


# ------------------------------------------------------------------ the peer


def _peer_pidfd(conn: socket.socket, pid: int) -> int | None:
    try:
        return struct.unpack("i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    except OSError:
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None


def peer_refusal(conn: socket.socket) -> str | None:
    """Why this peer may not use the server (None: it is us: same uid, namespaces, credentials)."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.getuid():
        return f"uid {uid}"
    if pid <= 0:
        return "peer outside our pid namespace"
    pidfd = _peer_pidfd(conn, pid)
    if pidfd is None:
        return f"pid {pid} gone"
    try:
        if forkclient.ns_inodes(pid) != forkclient.ns_inodes():
            return f"pid {pid} in other namespaces"
        theirs, ours = forkclient.creds(pid), forkclient.creds()
        if not theirs or theirs != ours:
            return f"pid {pid} with other credentials"
        try:  # still the process we read (the pidfd pins it: a recycled pid would fail here)
            signal.pidfd_send_signal(pidfd, 0)
        except OSError:
            return f"pid {pid} gone"
    finally:
        os.close(pidfd)
    return None


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The first message and the fds that came with it (closed here when it is malformed)."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    data, anc, flags, _ = conn.recvmsg(
        65536, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, blob in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(blob) // 4
            fds.extend(struct.unpack(f"{n}i", blob[: n * 4]))
    try:
        if flags & socket.MSG_CTRUNC:
            raise ValueError("too many fds")
        if len(data) < 4:
            data += forkclient._recv_exact(conn, 4 - len(data))
        (n,) = struct.unpack("!I", data[:4])
        if n > forkclient.MAX_MESSAGE:
            raise ValueError("message too large")
        body = data[4:]
        if len(body) < n:
            body += forkclient._recv_exact(conn, n - len(body))
        msg = marshal.loads(body[:n])
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            raise ValueError("not a message")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return msg, fds


# ------------------------------------------------------------------ the bwrap probe, kept


def _bwrap_fingerprint(path: str | None) -> tuple[Any, ...] | None:
    """What the probe's two bwrap runs (version, a user namespace) depend on beyond the key."""
    if not path:
        return None
    try:
        s = os.stat(path)
    except OSError:
        return None
    return (path, s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size, s.st_mode, s.st_uid,
            *(forkclient._read(f) for f in _USERNS_SYSCTLS))  # fmt: skip


class _ProbeMemo:
    """The two subprocess runs of `corral.sandbox.probe` (~10 ms a process), made once in the
    server and reused by a child only when its PATH finds the same bwrap file and the userns
    sysctls are unchanged; everything else in the probe (cgroups, seccomp, devices) is read anew
    by the probe's own code in each child."""

    def __init__(self) -> None:
        p = importlib.import_module("corral.sandbox.probe")

        self.path = shutil.which("bwrap")
        self.fp = _bwrap_fingerprint(self.path)
        self.version = p._bwrap_version(self.path) if self.path else None
        self.userns = p._try_userns(self.path) if self.path else None

    def apply(self) -> None:
        p = importlib.import_module("corral.sandbox.probe")

        p.probe.cache_clear()
        path = shutil.which("bwrap")
        if not path or path != self.path or _bwrap_fingerprint(path) != self.fp:
            return  # the child probes itself, as a plain process does
        version, userns = self.version, self.userns
        real_v, real_u = p._bwrap_version, p._try_userns
        p._bwrap_version = lambda b: version if b == path else real_v(b)  # type: ignore[assignment]
        p._try_userns = lambda b: userns if b == path else real_u(b)  # type: ignore[assignment]
        try:
            p.probe()
        finally:
            p._bwrap_version, p._try_userns = real_v, real_u


# ------------------------------------------------------------------ the server


class Server:
    def __init__(self, key: str, where: str) -> None:
        self.key = key
        self.where = where
        self.name = forkclient.socket_name(key)
        self.idle_s = _idle_s()
        self.children: dict[int, socket.socket] = {}
        self.calls = 0
        self.started = time.time()
        self.log_fd = -1
        self.probe: _ProbeMemo | None = None
        self.trace = os.environ.get("CORRAL_DAEMON_TRACE") == "1"
        self.t: list[float] = []

    # -- logging: one line per event worth knowing (start, stop, stale, refusals)
    def log(self, text: str) -> None:
        if self.log_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(
                    self.log_fd, f"{time.strftime('%FT%T')} pid {os.getpid()}: {text}\n".encode()
                )

    def run(self) -> None:
        os.chdir("/")
        self.dfd = forkclient.open_dir(self.where)
        if self.dfd is None:
            return
        with contextlib.suppress(OSError):  # kept across servers of this key, up to 1 MiB
            self.log_fd = os.open(f"forkserver-{self.key}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                  | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dfd)  # fmt: skip
            if os.fstat(self.log_fd).st_size > 1 << 20:
                os.ftruncate(self.log_fd, 0)
        if not self._lock():
            return  # another server holds this key
        self.code = snapshot()  # before the imports: a file edited meanwhile reads as stale
        self._preload()
        if threading.active_count() != 1:
            self.log(f"not serving: {threading.active_count()} threads after warm-up")
            return
        self.listener = self._listen()
        self.log(f"serving {self.where}/{self.name} ({len(sys.modules)} modules)")
        gc.collect()
        gc.freeze()  # the warm objects stay out of the children's collections: fewer copied pages
        try:
            self._loop()
        finally:
            self._unlink()
            self.log(f"exit after {self.calls} call(s)")

    def _lock(self) -> bool:
        fd = os.open(f"forkserver-{self.key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=self.dfd)  # fmt: skip
        end = time.monotonic() + 3.0  # a stale server that just answered is on its way out
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.lock_fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() > end:
                    os.close(fd)
                    return False
                time.sleep(0.05)

    def _preload(self) -> None:
        t0 = time.monotonic()
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - the child imports it itself if need be
                self.log(f"preload {name}: {type(err).__name__}: {err}")
        warm: list[tuple[str, Callable[[], Any]]] = [
            ("apps", self._build_apps),
            ("rules", self._warm_rules),
            ("policy", lambda: importlib.import_module("corral.policy.loader").load_policy("rl-strict")),
            ("seccomp", self._warm_seccomp),
            ("proc", self._warm_proc),
            ("probe", self._warm_probe),
        ]  # fmt: skip
        for what, fn in warm:
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - a warm-up is an optimisation only
                self.log(f"warm-up {what}: {type(err).__name__}: {err}")
        self.log(f"warm in {time.monotonic() - t0:.2f}s")

    @staticmethod
    def _build_apps() -> None:
        from corral.cli.main import command, warm_command

        for name in forkclient.SERVED:
            command(name)
        warm_command("run", ["-q", "--", "true"])
        warm_command("check", ["--json", "ls"])

    @staticmethod
    def _warm_rules() -> None:
        from corral.rules.engine import RuleEngine

        RuleEngine.default()  # the shipped packs parsed (or read from the cache) and compiled

    @staticmethod
    def _warm_seccomp() -> None:
        from corral.sandbox import syscalls

        syscalls.program(True)
        syscalls.program(False)

    @staticmethod
    def _warm_proc() -> None:
        from corral.sandbox import bwrap

        bwrap.kernel_surface_args(None, 1)  # the walks of /proc/irq, /proc/bus, /proc/fs (~1 ms)

    def _warm_probe(self) -> None:
        self.probe = _ProbeMemo()

    def _listen(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):  # a dead server's (we hold the lock)
            os.unlink(self.name, dir_fd=self.dfd)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(f"/proc/self/fd/{self.dfd}/{self.name}")
        finally:
            os.umask(old)
        s.listen(64)
        self.sock_ino = os.stat(self.name, dir_fd=self.dfd, follow_symlinks=False).st_ino
        return s

    def _unlink(self) -> None:
        """Remove our socket's name, only while it is still ours (never a successor's)."""
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(OSError, AttributeError):
            if os.stat(self.name, dir_fd=self.dfd, follow_symlinks=False).st_ino == self.sock_ino:
                os.unlink(self.name, dir_fd=self.dfd)

    def _still_ours(self) -> bool:
        try:
            return (
                os.stat(self.name, dir_fd=self.dfd, follow_symlinks=False).st_ino == self.sock_ino
            )
        except OSError:
            return False

    def _loop(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake = (rfd, wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(s, self._on_term)
        self.stopping = False
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(rfd, select.POLLIN)
        last = time.monotonic()
        while not self.stopping:
            self._reap()
            wait = self.idle_s - (time.monotonic() - last)
            if wait <= 0 and not self.children:
                self.log("idle")
                return
            # past the idle time with calls still running: wait for them (SIGCHLD wakes us)
            events = poller.poll(1000 if wait <= 0 else max(10, min(wait, 30.0) * 1000))
            for fd, _ in events:
                if fd == rfd:
                    with contextlib.suppress(OSError):
                        os.read(rfd, 512)
                elif fd == self.listener.fileno():
                    self._accept()
                    last = time.monotonic()
            if not events and not self._still_ours():
                self.log("socket removed or replaced")
                return
        self._unlink()  # no new call finds us (it runs in its own process and starts a server)
        while self.children:  # stop: the calls running go on; we only stop taking new ones
            self._reap(block=True)

    def _on_term(self, *_: Any) -> None:
        self.stopping = True

    def _reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):  # the child could not say it: the caller dies the same way
                msg = {"t": "signal", "sig": os.WTERMSIG(status)}
            else:
                msg = {"t": "exit", "code": os.waitstatus_to_exitcode(status)}
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                send(conn, msg)  # a repeat of the child's own when it sent one: the client has
            conn.close()  # stopped reading by then

    def _accept(self) -> None:
        self.t = [time.perf_counter()]
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        try:
            why = peer_refusal(conn)
            if why is not None:
                self.log(f"refused: {why}")
                conn.close()
                return
            msg, fds = _recv_request(conn)
        except (OSError, EOFError, ValueError, TypeError, struct.error) as err:
            self.log(f"bad request: {type(err).__name__}: {err}")
            conn.close()
            return
        try:
            self._handle(conn, msg, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _handle(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
        kind = msg["t"]
        if kind == "status":
            with contextlib.suppress(OSError):
                send(conn, self.status())
            conn.close()
            return
        if kind == "stop":
            self.log("stop asked")
            with contextlib.suppress(OSError):
                send(conn, {"t": "stopping", "pid": os.getpid()})
            conn.close()
            self.stopping = True
            return
        if kind != "run" or len(fds) != MAX_FDS:
            conn.close()
            return
        self.t.append(time.perf_counter())
        if snapshot() != self.code:
            self.log("stale: corral's files changed since they were loaded")
            with contextlib.suppress(OSError):
                send(conn, {"t": "stale"})
            conn.close()
            self.stopping = True
            return
        if threading.active_count() != 1:  # forking a threaded process is not safe: stop serving
            self.log(f"{threading.active_count()} threads: not forking")
            with contextlib.suppress(OSError):
                send(conn, {"t": "fallback", "why": "threads"})
            conn.close()
            self.stopping = True
            return
        self.t.append(time.perf_counter())
        try:
            pid = os.fork()
        except OSError as err:  # no process to spare (RLIMIT_NPROC, memory): the caller runs it
            self.log(f"fork: {err}")
            with contextlib.suppress(OSError):
                send(conn, {"t": "fallback", "why": f"fork: {err}"})
            conn.close()
            return
        if pid == 0:
            self.t.append(time.perf_counter())
            try:
                self._child(conn, msg, fds)
            finally:
                os._exit(1)  # not reached: _child leaves by os._exit
        self.calls += 1
        self.children[pid] = conn

    def status(self) -> dict[str, Any]:
        return {"t": "status", "pid": os.getpid(), "key": self.key, "socket": f"{self.where}/{self.name}",
                "started": self.started, "calls": self.calls, "running": len(self.children),
                "idle_s": self.idle_s, "modules": len(sys.modules)}  # fmt: skip

    # -------------------------------------------------------------- in the child

    def _child(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.listener.close()
        for fd in (self.lock_fd, *self.wake, self.dfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        for other in self.children.values():
            other.close()
        self.children.clear()
        try:
            os.setsid()  # each call its own session and process group
            _take_on(msg, fds)
            self.t.append(time.perf_counter())
            if self.probe is not None:
                try:
                    self.probe.apply()
                except Exception:  # noqa: BLE001 - an optimisation: the child probes for itself
                    importlib.import_module("corral.sandbox.probe").probe.cache_clear()
            self.t.append(time.perf_counter())
            # a caller gone answers EOF at once; this only bounds one that stalls: long, so that a
            # caller that said "go" late never finds the child given up
            conn.settimeout(GO_TIMEOUT_S)
            send(conn, {"t": "ready", "pid": os.getpid()})
            if recv(conn).get("t") != "go":
                os._exit(0)
        except Exception as err:  # noqa: BLE001 - nothing ran: the caller runs the call itself
            with contextlib.suppress(Exception):
                if self.log_fd >= 0:
                    self.log(f"fallback: {type(err).__name__}: {err}")
                send(conn, {"t": "fallback", "why": f"{type(err).__name__}: {err}"})
            os._exit(0)
        if self.trace:  # CORRAL_DAEMON_TRACE=1 in the server's environment: each call's phases
            t = self.t
            self.log("call: accept+peer+request {:.2f} snapshot {:.2f} fork {:.2f} take-on {:.2f} "
                     "probe {:.2f} ready->go {:.2f} ms".format(
                         *(1e3 * (b - a) for a, b in zip(t, [*t[1:], time.perf_counter()], strict=True))))  # fmt: skip
        trace = None
        if self.trace:
            trace = self.log
        elif self.log_fd >= 0:
            os.close(self.log_fd)
        conn.settimeout(None)
        _run_call(conn, list(msg["args"]), trace)


def _take_on(msg: dict[str, Any], fds: list[int]) -> None:
    """Become the caller: its stdio, directory, environment, umask, limits, signals, priority."""
    for i in range(3):
        os.dup2(fds[i], i, inheritable=True)
    os.fchdir(fds[3])
    for fd in fds:
        os.close(fd)
    fds.clear()
    env = msg["env"]
    if not all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in env.items()):
        raise ValueError("environment")
    os.environb.clear()
    os.environb.update(env)
    time.tzset()
    os.umask(int(msg["umask"]))
    import resource

    for res, soft, hard in msg["rlimits"]:
        if resource.getrlimit(res) != (soft, hard):
            resource.setrlimit(res, (soft, hard))  # ValueError/OSError: cannot: the caller runs it
    if os.getpriority(os.PRIO_PROCESS, 0) != msg["nice"]:
        os.setpriority(os.PRIO_PROCESS, 0, int(msg["nice"]))
    if sorted(os.sched_getaffinity(0)) != msg["affinity"]:
        os.sched_setaffinity(0, msg["affinity"])
    if int(forkclient._read("/proc/self/oom_score_adj") or b"0") != msg["oom"]:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(int(msg["oom"])))
    ignored, pyint = set(msg["ignored"]), set(msg["pyint"])
    for n in range(1, signal.NSIG):
        if n in (signal.SIGKILL, signal.SIGSTOP):
            continue
        handler = (signal.SIG_IGN if n in ignored else
                   signal.default_int_handler if n in pyint else signal.SIG_DFL)  # fmt: skip
        with contextlib.suppress(OSError, ValueError):
            signal.signal(n, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [int(s) for s in msg["blocked"]])
    sys.argv = [str(msg["argv0"]), *(str(a) for a in msg["args"])]
    # the stdio objects were made on the server's /dev/null: buffer as a process on these fds would
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=fd == 2 or os.isatty(fd))
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # found again from this call's TMPDIR


_done = threading.Event()  # the call finished: the caller closing now is not a caller gone


def _watch(conn: socket.socket) -> None:
    """The caller's signals, forwarded; the caller gone (EOF) ends the call as Ctrl-C would (the
    sandbox closed), and for good 10 s later."""
    try:
        while True:
            msg = recv(conn)
            if msg.get("t") == "signal":
                os.kill(os.getpid(), int(msg["sig"]))
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        pass
    if _done.is_set():
        return
    interrupt = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    term = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGINT if interrupt else signal.SIGTERM if term else signal.SIGKILL)
    time.sleep(10)
    os.kill(os.getpid(), signal.SIGKILL)


def _run_call(
    conn: socket.socket, args: list[str], trace: Callable[[str], None] | None = None
) -> None:
    """`corral ARGS` as the process's whole life: main, then what the interpreter does at exit
    (non-daemon threads joined, atexit, stdio flushed), then the status to the caller."""
    threading.Thread(
        target=_watch, args=(conn,), name="corral-forkserver-watch", daemon=True
    ).start()
    code, die_by = 0, 0
    t0 = time.perf_counter()
    try:
        from corral.cli.main import main

        main(args)
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        die_by = signal.SIGINT  # as the interpreter does for an uncaught KeyboardInterrupt
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    t1 = time.perf_counter()
    main_thread = threading.main_thread()
    for t in threading.enumerate():
        if t is not main_thread and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    gc.collect()  # as the interpreter's finalisation does (a __del__ may still have its say); the
    # server's frozen objects are not walked
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - as the interpreter: exit 120 when stdio cannot flush
            code = code or 120
    _done.set()
    if trace is not None:
        trace(f"call: main {1e3 * (t1 - t0):.2f} exit {1e3 * (time.perf_counter() - t1):.2f} ms")
    if die_by:
        signal.signal(die_by, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [die_by])
        os.kill(os.getpid(), die_by)  # the server reports the signal to the caller
    with contextlib.suppress(OSError):
        send(conn, {"t": "exit", "code": code})
    os._exit(code)


def _exit_code(value: Any) -> int:
    """SystemExit's code as the interpreter turns it into a status."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(Exception):
        print(value, file=sys.stderr)
    return 1


# --------------------------------------------------------------- `corral daemon status|stop`


def ask(kind: str) -> dict[str, Any] | None:
    """Our own server's answer to status/stop (None: there is none for this identity)."""
    where = forkclient.runtime_dir()
    if where is None:
        return None
    sock = forkclient.connect(where, forkclient.key(), 2.0)
    if sock is None:
        return None
    try:
        send(sock, {"t": kind})
        return recv(sock)
    except (OSError, EOFError, ValueError):
        return None
    finally:
        sock.close()


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except OSError as err:
        return err.errno == errno.ESRCH
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
