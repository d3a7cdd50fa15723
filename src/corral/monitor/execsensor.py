"""The exec sensor for a sandbox without an egress gateway (`Sandbox(egress=False)`).

The gateway's launcher already puts exec and network syscalls on one seccomp listener (there can be
one per filter chain). Without a gateway the same launcher runs in its no-listener mode (port 0): the
filter is installed, the supervisor takes the listener fd, and this attachment serves it: every exec
is seen before it runs, and every direct network attempt is refused and recorded (the sandbox has
no network at all, so nothing but the record changes). Chosen over polling because polling misses
programs that live under a millisecond and needs root for the process connector.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from corral.egress import procinfo
from corral.egress.gateway import _python_launcher, _read_line, launcher_binary
from corral.egress.notify import Attempt, Notifier
from corral.sandbox.errors import SandboxRefused

if TYPE_CHECKING:
    from corral.sandbox.bwrap import BwrapSpec
    from corral.sandbox.sandbox import Sandbox


class ExecSensor:
    """An `Attachment`: the launcher with no listeners, and its seccomp notifier."""

    def __init__(self) -> None:
        self.notifier: Notifier | None = None
        self.netns_pid: int | None = None
        self._pipes: tuple[int, ...] | None = None
        self.sandbox: Any = None

    def prepare(self, sandbox: Sandbox, spec: BwrapSpec, command: list[str]
                ) -> tuple[list[str], tuple[int, ...]]:  # fmt: skip
        self.sandbox = sandbox
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        self._pipes = (out_r, out_w, in_r, in_w)
        args = [str(out_w), str(in_r), "0", "0", *command]
        native = launcher_binary()
        if native is not None:
            exe = os.open(native, os.O_RDONLY)
            self._pipes = (*self._pipes, exe)
            return [f"/proc/self/fd/{exe}", *args], (out_w, in_r, exe)
        return ["/usr/bin/python3", "-I", "-S", "-c", _python_launcher(), *args], (out_w, in_r)

    async def started(self, sandbox: Sandbox, bwrap_pid: int) -> None:
        assert self._pipes is not None
        out_r, out_w, in_r, in_w, *exe = self._pipes
        for fd in (out_w, in_r, *exe):
            os.close(fd)
        try:
            line = await _read_line(out_r, 10.0)
            if not line.startswith("ok "):
                raise SandboxRefused(
                    f"the exec sensor could not be set up inside the sandbox: {line or 'no reply'}",
                    "install python3-seccomp, check `corral doctor`, or set monitor.exec_sensor: false",
                )
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            launcher = await asyncio.to_thread(
                procinfo.find_by_ns_pid, bwrap_pid, int(fields.pop("pid"))
            )
            if launcher is None:
                raise SandboxRefused("the exec sensor's launcher vanished", "run `corral doctor`")
            notify = procinfo.pidfd_getfd(launcher, int(fields["notify"]))
            os.write(in_w, b"go\n")
        except OSError as err:
            raise SandboxRefused(f"could not take the exec sensor's listener: {err}",
                                 "run as root or as the same user as the supervisor") from err  # fmt: skip
        finally:
            os.close(out_r)
            os.close(in_w)
            self._pipes = None
        self.netns_pid = launcher
        self.notifier = Notifier(notify, self._on_attempt)
        ctx = getattr(sandbox, "ctx", None)
        if ctx is not None:
            ctx.set_notifier(self.notifier)

    def _on_attempt(self, a: Attempt) -> None:
        sb = self.sandbox
        if sb is None:
            return
        p = a.proc or procinfo.ProcInfo(pid=a.pid)
        sb.emit(source="egress", rule="egress.raw_connect" if a.proto == "tcp" else "egress.raw_udp",
                category="policy", severity="low", action="blocked", pid=p.pid, exe=p.exe,
                argv=p.argv, step=sb.step or None, dst={"ip": a.ip, "port": a.port, "proto": a.proto},
                message=f"{a.proto.upper()} {a.syscall}() to {a.ip}:{a.port} refused: this sandbox"
                " has no network", evidence={"syscall": a.syscall, "gateway": False})  # fmt: skip

    async def stopped(self, sandbox: Sandbox) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        if self._pipes is not None:
            for fd in self._pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipes = None
