"""Extra shell sessions in one sandbox: each its own bash, as ROCK's `create_session` gives.

A session's bash runs in the sandbox's namespaces, filesystem, cgroup and egress gateway; only its
shell state (cwd, variables, functions, jobs) is its own. The sandbox's main shell starts it: it
makes four anonymous pipes (`exec N<> <(:)`), starts a wrapper subshell on them whose bash reads
framed commands on stdin and reports on fd 3 (the framing of `corral.sandbox.shell`), and prints the
pipes' fd numbers. The supervisor then opens the same pipes through `/proc/<main shell>/fd/N` and
the main shell closes its copies, so nothing but the session's bash and the supervisor holds them:
no path in the sandbox names them, and the agent's commands in other shells never hold its control
pipe. The wrapper reports the bash's exit status (`exit N`) so `exit 3` in a session answers 3.

Commands pass the sandbox's gate and are recorded as steps of the sandbox like `Sandbox.exec`, with
the session's name in `evidence`. A timeout kills what the command started in this session only;
the other shells and their jobs live on. Closing the sandbox ends every session (its cgroup and pid
namespace go); `close()` ends one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import stat
import time
from typing import TYPE_CHECKING

import psutil

from corral.sandbox.errors import SandboxClosed
from corral.sandbox.procs import children_of
from corral.sandbox.shell import Capture, OutputCallback, ShellChannel, bootstrap, frame, new_key

if TYPE_CHECKING:
    from corral.sandbox.sandbox import ExecResult, Sandbox

TIMEOUT_EXIT = 124
KILLED_EXIT = 137
SESSION_CTL_FD = 3
# closes every fd above 3 the wrapper inherited (saved copies of the main shell's pipes included),
# so the main shell's end is seen as soon as it ends
_CLOSE_INHERITED = (
    "for __f in /proc/$BASHPID/fd/*; do __f=${__f##*/}; "
    '(( __f > 3 )) && builtin eval "exec $__f>&-"; done'
)


class SessionEnded(RuntimeError):
    """The session's bash is gone (`exit`, a kill, close); the session must be opened again."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"session {name!r} ended ({reason})")
        self.name = name
        self.reason = reason


class ShellSession:
    """One more persistent bash in a sandbox; `exec` behaves as `Sandbox.exec`."""

    def __init__(self, sandbox: Sandbox, name: str, chan: ShellChannel, bash_pid: int,
                 wrapper_pid: int, exit_status: asyncio.Future[int],
                 harness: bool = False) -> None:  # fmt: skip
        self.sandbox = sandbox
        self.name = name
        # the harness's own session (uploads, test runs, grading): its commands are recorded but
        # never gated, never numbered as the agent's steps, never charged to the agent
        self.harness = harness
        self.owner: Sandbox | None = None  # a harness session: the agent sandbox frozen meanwhile
        self.bash_pid = bash_pid
        self.wrapper_pid = wrapper_pid
        self.ended: str | None = None
        self._chan: ShellChannel | None = chan
        self._exit = exit_status
        self._lock = asyncio.Lock()
        self._next_id = 0

    @property
    def alive(self) -> bool:
        return self.ended is None and self._chan is not None and not self._chan.eof

    async def exec(self, command: str, step: int | None = None, timeout: float | None = None,
                   on_output: OutputCallback | None = None) -> ExecResult:  # fmt: skip
        async with self._lock:
            owner = self.owner
            frozen = owner is not None and await asyncio.to_thread(owner._freeze_agent, True)
            try:
                return await self._exec(command, step, timeout, on_output)
            finally:
                if frozen and owner is not None:
                    await asyncio.to_thread(owner._freeze_agent, False)

    async def _exec(self, command: str, step: int | None, timeout: float | None,
                    on_output: OutputCallback | None) -> ExecResult:  # fmt: skip

        sb = self.sandbox
        if sb.closed_reason:
            raise SandboxClosed(sb.closed_reason)
        if not self.alive:
            raise SessionEnded(self.name, self.ended or "its shell exited")
        if self.harness:
            step = None
        else:
            step = sb.step + 1 if step is None else step
            sb.step = max(sb.step, step)
        first_event = len(sb.events)
        t0 = time.monotonic()
        blocked = None if self.harness else await sb._gated(command, step, t0, first_event)
        if blocked is not None:
            return blocked
        if not self.alive:  # ended while the gate waited for a person
            raise SessionEnded(self.name, self.ended or "its shell exited")
        argv = ["bash", "-c", command]
        tag = {"session": self.name, **({"harness": True} if self.harness else {})}
        sb.emit(source="sandbox", rule="sandbox.command_started", step=step, argv=argv,
                message=command[:200], evidence=tag)  # fmt: skip
        chan = self._chan
        assert chan is not None
        self._next_id += 1
        key = new_key(f"{self._next_id}-")
        cap = Capture(on_output=on_output)
        chan.capture = cap
        done = chan.expect(key)
        limit = timeout if timeout is not None else sb.policy.limits.command_timeout
        spared = children_of(self.bash_pid)
        timed_out = killed = False
        try:
            chan.send(frame(key, command, SESSION_CTL_FD))
            exit_code = await asyncio.wait_for(asyncio.shield(done), limit)
        except TimeoutError:
            timed_out = True
            await asyncio.to_thread(self._kill_command, spared)
            try:
                await asyncio.wait_for(asyncio.shield(done), 3)
            except (TimeoutError, EOFError):
                await self.close("it did not come back from a timed-out command")
            exit_code = TIMEOUT_EXIT
        except (EOFError, BrokenPipeError, OSError):
            exit_code = await self._exit_code()
            killed = sb.terminated
        chan.drain()
        chan.capture = None
        if (sb._check_counters(step, command) and not self.harness
                and sb._resource_response() in ("kill", "terminate")):  # fmt: skip
            await asyncio.to_thread(self._kill_command, spared)
        return sb._finish_command(command, step, t0, first_event, cap, exit_code,
                                  timed_out=timed_out, killed=killed, limit=limit,
                                  session=self.name, harness=self.harness)  # fmt: skip

    async def _exit_code(self) -> int:
        """The session's bash ended mid-command: the wrapper reported its status, or it was
        killed."""
        try:
            rc = await asyncio.wait_for(asyncio.shield(self._exit), 2)
        except (TimeoutError, EOFError, asyncio.CancelledError):
            rc = KILLED_EXIT
        self._close_channel("its shell exited")
        return rc

    def _kill_command(self, spared: set[int]) -> None:
        """Interrupt the session's bash and kill what the command started under it, sparing the
        jobs it had before: other sessions and the main shell are not its descendants."""
        keep = {self.bash_pid}
        for pid in spared:
            with contextlib.suppress(psutil.Error):
                keep |= {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.bash_pid, signal.SIGUSR1)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                victims = [p.pid for p in psutil.Process(self.bash_pid).children(recursive=True)
                           if p.pid not in keep]  # fmt: skip
            except psutil.Error:
                return
            if not victims:
                return
            for pid in victims:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def _close_channel(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        if self._chan is not None:
            self._chan.close()
            self._chan = None

    async def close(self, reason: str = "closed") -> None:
        """End this session: its bash, the wrapper and everything they started."""
        if self.ended is not None and self._chan is None:
            return
        pids: list[int] = []
        for pid in (self.wrapper_pid, self.bash_pid):
            with contextlib.suppress(psutil.Error):
                pids += [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._close_channel(reason)
        for _ in range(200):  # gone (or a zombie) within a moment: callers may count on it
            if not any(_running(pid) for pid in pids):
                break
            await asyncio.sleep(0.005)
        self.sandbox.emit(source="sandbox", rule="sandbox.session_closed",
                          message=f"session {self.name!r} closed: {reason}",
                          evidence={"session": self.name})  # fmt: skip


async def open_session(sb: Sandbox, name: str, harness: bool = False) -> ShellSession:
    """Start a session's bash through the main shell (see the module docstring)."""
    if sb.closed_reason:
        raise SandboxClosed(sb.closed_reason)
    async with sb._lock:
        if sb._proc is None or sb._chan is None or sb._chan.eof:
            await sb._restart_session()
        assert sb._chan is not None and sb._shell_pid
        main = sb._chan
        env = _environ(sb._shell_pid)
        ws = sb.policy.filesystem.workspace.path
        envs = " ".join(shlex.quote(e) for e in env if not e.startswith(("PWD=", "OLDPWD=")))
        # fd numbers the shell does not use; not `{var}` allocation, which may pick the number of
        # the control fd while the framing has it closed (bash restores it over the pipe after)
        used = {int(x) for x in os.listdir(f"/proc/{sb._shell_pid}/fd") if x.isdigit()}
        i, o, e, c = [n for n in range(100, 200) if n not in used][:4]
        script = (
            # one pipe per exec: with several process substitutions in one, bash keeps one open
            # (plain `exec`: `builtin exec` would undo its redirections when it returns)
            f"exec {i}<> <(:)\nexec {o}<> <(:)\nexec {e}<> <(:)\nexec {c}<> <(:)\n"
            f"( {_CLOSE_INHERITED}; builtin cd {shlex.quote(ws)} 2>/dev/null;"
            f" env -i {envs} PWD={shlex.quote(ws)} /bin/bash --noprofile --norc;"
            f" builtin printf 'exit %d\\n' $? >&{SESSION_CTL_FD} )"
            f" <&{i} >&{o} 2>&{e} {SESSION_CTL_FD}>&{c} &\n"
            "builtin printf '%d\\n' $!\n"
        )
        said = (await _control(sb, main, script)).strip()
        if not said.isdigit():
            raise SessionEnded(name, f"could not be started: {said!r}")
        wrapper_ns = int(said)
        ends: list[int] = []
        try:
            base = f"/proc/{sb._shell_pid}/fd"
            ends.append(os.open(f"{base}/{i}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            for fd in (o, e, c):
                ends.append(os.open(f"{base}/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            if not all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in ends):
                raise OSError("not the session's pipes")
            os.set_blocking(ends[0], True)
        except OSError as err:
            for fd in ends:
                os.close(fd)
            raise SessionEnded(name, f"could not be started: its pipes: {err}") from None
        finally:
            await _control(sb, main, f"exec {i}<&-\nexec {o}>&-\nexec {e}>&-\nexec {c}>&-\n")
        left = _fds_on(sb._shell_pid, {os.fstat(fd).st_ino for fd in ends})
        if left:  # the session's end could not be seen while the main shell held its pipes
            for fd in ends:
                os.close(fd)
            raise SessionEnded(
                name, f"could not be started: the main shell kept its pipes ({left})"
            )
        chan = ShellChannel(asyncio.get_running_loop(), *ends)
        chan.on_forged = sb._forged
        exit_status = chan.expect("exit")
        ready = chan.expect("ready")
        for fut in (exit_status, ready):  # an EOF nobody awaits is no error
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        chan.send(bootstrap(SESSION_CTL_FD))
        try:
            await asyncio.wait_for(asyncio.shield(ready), 10)
        except (TimeoutError, EOFError) as err:
            chan.close()
            raise SessionEnded(name, f"did not come up: {err!r}") from None
        wrapper = _host_pid(sb._shell_pid, wrapper_ns)
        kids = children_of(wrapper) if wrapper else set()
        if not wrapper or not kids:
            chan.close()
            raise SessionEnded(name, "could not be started: its bash could not be found")
        session = ShellSession(sb, name, chan, min(kids), wrapper, exit_status, harness)
        sb.emit(source="sandbox", rule="sandbox.session_opened", pid=session.bash_pid,
                message=f"{'harness ' if harness else ''}session {name!r} opened",
                evidence={"session": name, "harness": harness})  # fmt: skip
        return session


async def _control(sb: Sandbox, chan: ShellChannel, script: str) -> str:
    """Run corral's own command in the main shell (not the agent's: no gate, no step)."""
    sb._next_id += 1
    key = new_key(f"c{sb._next_id}-")
    cap = Capture()
    chan.capture = cap
    done = chan.expect(key)
    try:
        chan.send(frame(key, script, sb._ctl_fd_inside))  # type: ignore[arg-type]
        await asyncio.wait_for(done, 10)
    finally:
        chan.drain()
        chan.capture = None
    return cap.stdout.decode(errors="replace")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _environ(pid: int) -> list[str]:
    """The main shell's environment as the sandbox started it (later exports are not in it)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [e.decode(errors="replace") for e in f.read().split(b"\0") if e]


def _fds_on(pid: int, inodes: set[int]) -> list[int]:
    """The fds of `pid` open on any of these pipes."""
    found = []
    names = {f"pipe:[{ino}]" for ino in inodes}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in names:
                    found.append(int(fd))
    return found


def _host_pid(parent: int, ns_pid: int) -> int | None:
    """The host pid of a child of `parent` known inside the sandbox as `ns_pid`."""
    for pid in children_of(parent):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return pid
        except (OSError, ValueError):
            continue
    return None
