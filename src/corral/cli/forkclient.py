"""The `corral` process's side of the fork server (`corral.cli.forkserver`): hand the call over.

`corral run` and `corral check` as processes pay for the interpreter, then ~300 ms of imports
(pydantic models, typer, the gateway, the rule engine) before any work. A server that has imported
all of that once forks a child per call, as Gradle's daemon and Bazel's server do for the JVM. This
module is what the `corral` process runs first: it imports only the standard library's C parts
(`_socket`, `marshal`, `_struct`, `_signal`, `resource`) so that a served call costs little more than
`python -c pass`, finds the server for exactly this process's identity, and sends it fds 0, 1, 2
and the current directory (SCM_RIGHTS), argv, the environment, umask, rlimits, signal dispositions
and mask, nice, CPU affinity and oom_score_adj. The server's child takes all of those on, runs the
normal `corral.cli.main.main(argv)` and sends back the exit status, which this process exits with.

Never fail a command because of the daemon: no server, a refused or stale one, a protocol error or
a timeout before the child said it is about to run -> `None`, and the caller runs the command in
this process as it always did (and a server is started in the background for the next call).

Trust, both ways. The server is found under a directory only we can write: `$XDG_RUNTIME_DIR/corral`
(the runtime dir used only when it is a real directory owned by us with no group/other access),
else `$TMPDIR/corral-<uid>` (default `/tmp`), created 0700 and refused unless it is a directory, not
a symlink, owned by our uid, mode 0700. The socket is reached through an O_NOFOLLOW fd of that
directory (`/proc/self/fd/N/name`), so a directory swapped after the check is never followed; the
socket file must be a socket owned by us, and before anything is sent the server's SO_PEERCRED uid
must be ours: a socket planted by another user gets no fd, no argv and no environment. The socket's name holds a hash of everything that makes a
process a different principal or a different program (uid/gids, capabilities, no_new_privs,
seccomp, LSM label, cgroup, the inodes of our namespaces, the interpreter, `sys.path`, interpreter
flags, the environment variables read at import time, hard rlimits, nice, oom_score_adj), so a
call inside `unshare -n` never meets a server from another namespace; the server checks the
principal's part of it of each peer (`forkserver.peer_refusal`).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL = 1
# how long the client waits for the server's child to say it is ready (else: in this process)
READY_TIMEOUT_S = 5.0
# environment variables read when modules load (the interpreter, libc, typer, psutil, pydantic's
# core): the server has loaded them already, so a call with other values needs another server
KEY_ENV_PREFIXES = ("PYTHON", "LC_", "LANG", "TYPER_", "_TYPER_", "PSUTIL_", "PYDANTIC_", "LD_",
                    "GLIBC_TUNABLES", "MALLOC_")  # fmt: skip
NAMESPACES = ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")
# /proc/PID/status lines that make a process another principal (compared by the server per peer)
CRED_FIELDS = (b"Uid:", b"Gid:", b"Groups:", b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:",
               b"CapAmb:", b"NoNewPrivs:", b"Seccomp:", b"Seccomp_filters:")  # fmt: skip
DISABLED_VALUES = ("0", "false", "no", "off")
SERVED = ("run", "check")


def disabled(env: Any = None) -> bool:
    """`CORRAL_DAEMON=0` (or false/no/off) turns the fork server off."""
    value = (os.environ if env is None else env).get("CORRAL_DAEMON", "1")
    return value.strip().lower() in DISABLED_VALUES


# ------------------------------------------------------------------ where, and under which key


def _dir_ok(st: os.stat_result, exact: bool) -> bool:
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    mode = stat.S_IMODE(st.st_mode)
    return mode == 0o700 if exact else not mode & 0o077


def runtime_dir() -> str | None:
    """The directory that holds our server's socket (created 0700 if absent), or None when the
    place is not ours: then there is no daemon for this call."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    path = None
    if base.startswith("/"):
        try:
            if _dir_ok(os.lstat(base), exact=False):
                path = os.path.join(base, "corral")
        except OSError:
            pass
    if path is None:
        tmp = os.environ.get("TMPDIR", "")
        path = os.path.join(tmp if tmp.startswith("/") else "/tmp", f"corral-{uid}")
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # ours, just made: whatever the umask took away
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if _dir_ok(st, exact=True) else None


def open_dir(path: str) -> int | None:
    """An fd of the runtime dir, checked again through the fd itself (no symlink followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not _dir_ok(os.fstat(fd), exact=True):
        os.close(fd)
        return None
    return fd


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def creds(pid: int | str = "self") -> list[bytes]:
    """The lines of /proc/PID/status that make a process another principal."""
    status = _read(f"/proc/{pid}/status")
    return [line for line in status.splitlines() if line.startswith(CRED_FIELDS)]


def ns_inodes(pid: int | str = "self") -> list[int]:
    out = []
    for ns in NAMESPACES:
        try:
            out.append(os.stat(f"/proc/{pid}/ns/{ns}").st_ino)
        except OSError:
            out.append(-1)
    return out


def identity() -> list[Any]:
    """Everything that must be equal for a server's child to stand in for this process."""
    import corral

    env = os.environ
    return [
        PROTOCOL,
        os.getuid(),
        os.geteuid(),
        os.getgid(),
        os.getegid(),
        sorted(os.getgroups()),
        ns_inodes(),
        creds(),
        _read("/proc/self/cgroup"),
        _read("/proc/self/attr/current"),
        sys.executable,
        os.path.dirname(os.path.abspath(corral.__file__)),
        sys.path[1:],  # [0] is the script's or -c's directory, not where modules come from
        tuple(sys.flags),
        sys.warnoptions,
        sorted(sys._xoptions.items()),
        sorted((k, v) for k, v in env.items() if k.startswith(KEY_ENV_PREFIXES)),
        # what a child could not take on without privilege if its server had less: the hard
        # limits, nice and oom_score_adj (a caller with other values gets a server of its own)
        [(n, hard) for n, _soft, hard in _limits()],
        os.getpriority(os.PRIO_PROCESS, 0),
        _read("/proc/self/oom_score_adj"),
    ]


def key() -> str:
    try:  # the builtin module: hashlib would load OpenSSL (several ms)
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]
        except ImportError:
            from hashlib import sha256
    return sha256(marshal.dumps(identity(), 4)).hexdigest()[:20]


def socket_name(k: str) -> str:
    return f"forkserver-{k}.sock"


# ------------------------------------------------------------------ framing


def send(sock: Any, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    import _socket
    import _struct

    data = marshal.dumps(msg, 4)
    data = _struct.pack("!I", len(data)) + data
    if fds:
        anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))]
        sent = sock.sendmsg([data], anc)
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: Any, n: int) -> bytes:
    chunks = []
    while n:
        b = sock.recv(n)
        if not b:
            raise EOFError
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


MAX_MESSAGE = 16 << 20


def recv(sock: Any) -> dict[str, Any]:
    """One message; EOFError when the peer closed, ValueError when it is not one of ours."""
    import _struct

    (n,) = _struct.unpack("!I", _recv_exact(sock, 4))
    if n > MAX_MESSAGE:
        raise ValueError("message too large")
    msg = marshal.loads(_recv_exact(sock, n))
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ValueError("not a message")
    return msg


def connect(path_dir: str, k: str, timeout: float) -> Any:
    """A socket connected to our own server, or None (absent, refused, or not our uid's)."""
    import _socket
    import _struct

    dfd = open_dir(path_dir)
    if dfd is None:
        return None
    import stat

    try:  # the socket file: a socket, ours (the server's credentials are checked below too)
        st = os.stat(socket_name(k), dir_fd=dfd, follow_symlinks=False)
    except OSError:
        os.close(dfd)
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        os.close(dfd)
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(f"/proc/self/fd/{dfd}/{socket_name(k)}")
        cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        pid, uid, _gid = _struct.unpack("3i", cred)
        if uid != os.getuid() or pid <= 0:
            sock.close()  # planted by someone else: nothing of ours is sent
            return None
        return sock
    except OSError:
        sock.close()
        return None
    finally:
        os.close(dfd)


# ------------------------------------------------------------------ the call


def _signal_state() -> tuple[list[int], list[int], list[int]]:
    """(ignored, python-default-int, blocked) signals as this process found them at start."""
    import _signal as signal  # the C module: `signal` builds its enums at import (~1-3 ms)

    ignored, pyint = [], []
    for n in range(1, signal.NSIG):
        try:
            h = signal.getsignal(n)
        except (ValueError, OSError):
            continue
        if h is not None and h == signal.SIG_IGN:
            ignored.append(n)
        elif h is signal.default_int_handler:
            pyint.append(n)
    blocked = [int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])]
    return ignored, pyint, blocked


def _limits() -> list[tuple[int, int, int]]:
    import resource

    out = []
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            n = getattr(resource, name)
            try:
                out.append((n, *resource.getrlimit(n)))
            except (ValueError, OSError):
                continue
    return out


def request(args: list[str]) -> tuple[dict[str, Any], list[int]] | None:
    """The call as the server's child needs it, and the fds to send (None: cannot be sent)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return None  # a closed standard fd cannot be handed over: run here
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    ignored, pyint, blocked = _signal_state()
    try:
        oom = int(_read("/proc/self/oom_score_adj") or b"0")
    except ValueError:
        oom = 0
    msg = {
        "t": "run",
        "argv0": sys.argv[0] if sys.argv else "corral",
        "args": list(args),
        "env": dict(os.environb),
        "umask": umask,
        "rlimits": _limits(),
        "ignored": ignored,
        "pyint": pyint,
        "blocked": blocked,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "affinity": sorted(os.sched_getaffinity(0)),
        "oom": oom,
    }
    return msg, [0, 1, 2, cwd]


def _forward_signals(sock: Any, pidfd: int | None) -> None:
    """SIGINT/SIGTERM/SIGHUP and job control's SIGTSTP/SIGCONT go on to the child: through its
    pidfd (it gets them at once, stopped or not), else as a message to its watcher thread."""
    import signal

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            if pidfd is not None:
                # the child leads a session of its own, an orphaned process group to which the
                # kernel does not deliver SIGTSTP: it is stopped with SIGSTOP instead
                sig = signal.SIGSTOP if signum == signal.SIGTSTP else signum
                signal.pidfd_send_signal(pidfd, sig)
            else:
                send(sock, {"t": "signal", "sig": signum})
        if signum == signal.SIGTSTP:  # stop ourselves too, as the default action would
            # with SIGSTOP: a caller in an orphaned process group (a job started by a script or
            # a CI runner without job control) would drop its own SIGTSTP and run on while its
            # call stands stopped; the caller and its call stop and go on together
            os.kill(os.getpid(), signal.SIGSTOP)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGCONT):
        if signal.getsignal(s) != signal.SIG_IGN:  # an ignored signal stays ignored (nohup)
            signal.signal(s, forward)


def _die_like(sig: int) -> None:
    import _signal as signal

    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # not reached for a fatal signal


def serve_call(args: list[str]) -> int | None:
    """Run `corral ARGS` in our fork server: its exit status, or None to run it in this process
    (after starting a server in the background when there was none or it was stale)."""
    sock = None
    try:  # nothing can have run yet: any failure here means "run it in this process"
        where = runtime_dir()
        if where is None:
            return None
        k = key()
        sock = connect(where, k, READY_TIMEOUT_S)
        if sock is None:
            spawn(where, k)
            return None
        reply = _handshake(sock, args)
        if reply is None or reply["t"] != "ready":
            sock.close()  # "fallback" (the child could not take on this call), stale: run here
            if reply is not None and reply["t"] == "stale":
                spawn(where, k)
            return None
    except Exception:  # noqa: BLE001 - never fail a command because of the daemon
        if sock is not None:
            sock.close()
        return None
    # from here the command may run in the child: never again in this process, whatever happens
    try:
        sock.settimeout(None)
        send(sock, {"t": "go"})
        pidfd = None
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
            pidfd = os.pidfd_open(int(reply["pid"]))  # alive: it waited for our "go"
        _forward_signals(sock, pidfd)
        while True:
            reply = recv(sock)
            if reply["t"] == "exit":
                return int(reply["code"])
            if reply["t"] == "signal":
                _die_like(int(reply["sig"]))
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        os.write(2, b"corral: the fork server's child ended without an exit status\n")
        return 1


def _handshake(sock: Any, args: list[str]) -> dict[str, Any] | None:
    """Send the call; the child's first answer ("ready", "fallback", "stale"), or None when the
    call cannot be handed over (a closed standard fd)."""
    req = request(args)
    if req is None:
        return None
    msg, fds = req
    try:
        send(sock, msg, fds)
    finally:
        os.close(fds[3])
    return recv(sock)


def spawn(where: str, k: str) -> None:
    """Start a server for this key, detached (its own session, stdio on /dev/null), without waiting
    for it: a double fork, so it is never our child."""
    import subprocess

    env = {name: v for name, v in os.environ.items() if name.startswith(SERVER_ENV)}
    argv = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c",
            "from corral.cli.forkserver import serve_main; serve_main()",
            marshal.dumps({"key": k, "dir": where, "path": sys.path[1:]}, 4).hex()]  # fmt: skip
    try:
        pid = os.fork()
    except OSError:
        return
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(
                    3, 1 << 20
                )  # no fd of the caller's (a pipe someone waits on) lives on
                os.execve(sys.executable, argv, env)
        finally:
            os._exit(0)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# what the server keeps of the spawning call's environment: what shapes its warm-up (where the rule
# cache lives, PATH for the bwrap probe) and the import-time keys; the rest (tokens, keys) stays out
SERVER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_RUNTIME_DIR", "CORRAL_",
              *KEY_ENV_PREFIXES)  # fmt: skip
