"""The exec sensor for a sandbox without an egress gateway (`Sandbox(egress=False)`).

The gateway's launcher already puts exec and network syscalls on one seccomp listener (there can be
one per filter chain). Without a gateway the same launcher runs in its no-listener mode (port 0): the
filter is installed, the supervisor takes the listener fd, and this attachment serves it: every exec
is seen before it runs, and every direct network attempt is refused and recorded (the sandbox has
no network at all, so nothing but the record changes). Chosen over polling because polling misses
programs that live under a millisecond and needs root for the process connector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.egress import launch, procinfo
from corral.egress.notify import Attempt, Notifier

if TYPE_CHECKING:
    from corral.sandbox.bwrap import BwrapSpec
    from corral.sandbox.sandbox import Sandbox


class ExecSensor:
    """An `Attachment`: the launcher with no listeners, and its seccomp notifier."""

    def __init__(self) -> None:
        self.notifier: Notifier | None = None
        self.netns_pid: int | None = None
        self._launch: launch.Launch | None = None
        self.sandbox: Any = None

    def prepare(self, sandbox: Sandbox, spec: BwrapSpec, command: list[str]
                ) -> tuple[list[str], tuple[int, ...]]:  # fmt: skip
        self.sandbox = sandbox
        self._launch = launch.prepare(0, False, command)  # port 0: no listeners, the filter only
        spec.extra_args = [*spec.extra_args, *self._launch.bwrap_args]
        return self._launch.command, self._launch.child_fds

    async def started(self, sandbox: Sandbox, bwrap_pid: int) -> None:
        assert self._launch is not None
        start, self._launch = self._launch, None
        launcher, taken = await launch.handshake(
            start,
            bwrap_pid,
            "exec sensor",
            "install python3-seccomp, check `corral doctor`, or set monitor.exec_sensor: false",
        )
        notify = taken["notify"]
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
        if self._launch is not None:  # started but never handed over
            launch.abandon(self._launch)
            self._launch = None
