"""Starting the sandbox's first process (the launcher) and taking its fds: one handshake shared by
the egress gateway and, without a gateway, the exec sensor.

The launcher (`launcher.c`, or its Python twin `launcher_main.py`) runs inside the sandbox before
the shell: it opens the listeners it was asked for, installs the seccomp user-notify filter, writes
one line `ok pid=N name=fd ...` on a pipe, waits for `go` and execs the shell. The supervisor copies
the named fds out of it (`pidfd_getfd`) before it says `go`.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corral.egress import procinfo
from corral.sandbox.errors import SandboxRefused

LAUNCHER_NAME = "corral-egress-launcher"
INIT_NAME = "corral-init"


def launcher_binary() -> Path | None:
    """The compiled launcher (`make install` builds it next to this module; ~1 ms to start where
    the Python twin takes ~10-20 ms), or None to use the Python one."""
    env = os.environ.get("CORRAL_EGRESS_LAUNCHER")  # a path, or "python" for the Python twin
    if env == "python":
        return None
    for cand in ([Path(env)] if env else []) + [Path(__file__).with_name(LAUNCHER_NAME)]:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@functools.lru_cache(maxsize=1)
def python_launcher() -> str:
    return resources.files("corral.egress").joinpath("launcher_main.py").read_text()


@dataclass
class Launch:
    """The pipes (and the launcher's exe fd) of one start; `command` wraps the sandbox's own."""

    out_r: int
    out_w: int
    in_r: int
    in_w: int
    exe: int | None
    command: list[str]
    # the compiled launcher is the sandbox's pid 1 (bwrap --as-pid-1; launcher.c's --init)
    as_init: bool = False
    init_fd: int | None = None  # corral-init, which pid 1 becomes

    @property
    def bwrap_args(self) -> list[str]:
        """What bwrap must be told for this launcher."""
        return ["--as-pid-1"] if self.as_init else []

    @property
    def child_fds(self) -> tuple[int, ...]:
        """The fds bwrap must pass down to the launcher."""
        return ((self.out_w, self.in_r) + ((self.exe,) if self.exe is not None else ())
                + ((self.init_fd,) if self.init_fd is not None else ()))  # fmt: skip


def prepare(port: int, dns: bool, command: list[str]) -> Launch:
    """The launcher's command line around the sandbox's own (`port` 0: no listeners at all)."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    args = [str(out_w), str(in_r), str(port), "1" if dns else "0", *command]
    native = launcher_binary()
    if native is not None:  # exec'd through an inherited fd: nothing to mount inside
        exe = os.open(native, os.O_RDONLY)
        init = native.with_name(INIT_NAME)  # the sandbox's pid 1 (init.c); -1: the launcher's
        init_fd = os.open(init, os.O_RDONLY) if os.access(init, os.X_OK) else -1
        return Launch(out_r, out_w, in_r, in_w, exe,
                      [f"/proc/self/fd/{exe}", f"--init={init_fd}", *args], as_init=True,
                      init_fd=init_fd if init_fd >= 0 else None)  # fmt: skip
    argv = ["/usr/bin/python3", "-I", "-S", "-c", python_launcher(), *args]
    return Launch(out_r, out_w, in_r, in_w, None, argv)


async def handshake(launch: Launch, bwrap_pid: int, what: str, fix: str
                    ) -> tuple[int, dict[str, int]]:  # fmt: skip
    """Wait for the launcher's report, copy every fd it names, tell it to go on. Returns its host
    pid and the copied fds by name. `what` names the part in errors (the egress gateway, the exec
    sensor); `fix` is what to do when the launcher says it could not set up."""
    for fd in launch.child_fds:
        os.close(fd)
    try:
        line = await read_line(launch.out_r, 10.0)
        if not line.startswith("ok "):
            raise SandboxRefused(
                f"the {what} could not be set up inside the sandbox: {line or 'no reply'}", fix
            )
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        # inline, not on a thread: the walk is bwrap -> its init -> the launcher (a few /proc
        # reads), and a thread hop on a busy host costs more than the walk
        pid = procinfo.find_by_ns_pid(bwrap_pid, int(fields.pop("pid")))
        if pid is None:
            raise SandboxRefused(f"the {what}'s launcher vanished", "run `corral doctor`")
        taken = {k: procinfo.pidfd_getfd(pid, int(v)) for k, v in fields.items()}
        os.write(launch.in_w, b"go\n")
    except OSError as err:
        raise SandboxRefused(f"could not take the {what}'s fds: {err}",
                             "run as root or as the same user as the supervisor") from err  # fmt: skip
    finally:
        os.close(launch.out_r)
        os.close(launch.in_w)
    return pid, taken


def abandon(launch: Launch) -> None:
    """Close every fd of a start that never reached the handshake."""
    for fd in (launch.out_r, launch.in_w, *launch.child_fds):
        try:
            os.close(fd)
        except OSError:
            continue


async def read_line(fd: int, timeout: float) -> str:
    """The launcher's one-line report, read on the event loop: fifty sandboxes starting at once
    must not each hold one of the default executor's few threads while they wait."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or buf.endswith(b"\n")) and not done.done():
            done.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
    return bytes(buf).decode(errors="replace").strip()


__all__ = ["INIT_NAME", "LAUNCHER_NAME", "Launch", "abandon", "handshake", "launcher_binary", "prepare",
           "python_launcher", "read_line"]  # fmt: skip
