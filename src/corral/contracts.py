"""The types the parts of corral hand each other, in one place.

`ExecResult` and `GateDecision` (what a command gave and what the gate said of it), `Finding` (one
rule that fired), `Facts` (what a sensor saw, the rule engine's input), `ExecNote` (an exec read while
the caller was held) and `EpisodeContext`: the narrow view of one running episode that the gateway,
the monitor and the responder get instead of the whole `Sandbox`, so that none of them reaches into
`Sandbox._*` and each can be unit-tested with a fake context.

The old import paths (`corral.sandbox.sandbox.ExecResult`, `corral.rules.finding.Finding`, ...) keep
working: they re-export these.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from corral.events.model import Event

if TYPE_CHECKING:
    from corral.policy.model import Policy

Facts = dict[str, Any]
"""What a sensor saw, as the rule engine reads it: `kind` (exec, stdio_socket, relay, connections,
fanout, cpu_sustained, gpu_use, ...), `source` and the kind's own fields (see `rules/schema.py`)."""

# The facts vocabulary: what event rules may name. A pack naming anything else is refused at load
# (a typo would otherwise make a rule that can never fire). A sensor that adds a kind or a field
# adds it here.
FACT_KINDS: frozenset[str] = frozenset(
    {"exec", "stdio_socket", "relay", "connections", "fanout", "cpu_sustained", "gpu_use",
     # the egress gateway's (egress/facts.py)
     "egress_attempt", "egress_evidence", "egress_malformed", "egress_record", "dns_query"}
)  # fmt: skip
EVENT_FIELDS: frozenset[str] = frozenset(
    {"ts", "sandbox_id", "episode_id", "step", "origin_step", "source", "rule", "category",
     "severity", "action", "attack", "pid", "exe", "argv", "dst", "path", "message", "evidence"}
)  # fmt: skip
FACT_FIELDS: dict[str, frozenset[str] | None] = {
    **{f: None for f in EVENT_FIELDS},  # None: any sub-field (evidence is free-form)
    "kind": None, "comm": None, "cmdline": None, "cwd": None, "parents": None, "stdio": None,
    "gpu_granted": None,
    "dst": frozenset({"host", "ip", "port", "proto", "class"}),
    # the egress gateway's facts (egress/facts.py)
    "via": None, "record": None, "protocol_allowed": None, "dns": None, "refusal": None,
    "protocol_listed": None, "chain": None, "outcome": None,
    "config": frozenset({"paths", "text"}),
    "sockets": frozenset({"stdio_fds", "remote", "listen_ports", "outbound", "remote_ports",
                          "remote_ips", "distinct_remotes"}),
    "cpu": frozenset({"cores", "window_s", "sustained_s", "threshold", "kill_window_s",
                      "corroborated", "long", "corroboration", "processes", "fraction", "build"}),
    "net": frozenset({"attempts", "failed", "window_s", "threshold"}),
    "gpu": frozenset({"device", "device_name", "kind", "used_memory", "utilization", "granted"}),
}  # fmt: skip


def check_fact_path(path: str) -> str | None:
    """Why an event rule may not name `path` (None: it may)."""
    head, _, rest = path.partition(".")
    if head not in FACT_FIELDS:
        return f"unknown event field {path!r}"
    sub = FACT_FIELDS[head]
    if sub is not None and rest and rest.split(".")[0] not in sub:
        return f"unknown event field {path!r} ({head} has {', '.join(sorted(sub))})"
    return None


__all__ = [
    "FACT_FIELDS",
    "FACT_KINDS",
    "EpisodeContext",
    "ExecNote",
    "ExecResult",
    "Facts",
    "Finding",
    "GateDecision",
    "SandboxEpisode",
]


Severity = Literal["info", "low", "medium", "high", "critical"]
ResponseName = Literal["alert", "block", "kill", "terminate"]


class Finding(BaseModel):
    """One rule that fired on one command or event. Frozen, because the engine caches findings per
    command: use `model_copy(update=...)` to attach a step or anything else."""

    model_config = ConfigDict(frozen=True)

    rule: str
    category: str
    severity: Severity
    attack: str | None = None
    message: str = ""
    response: ResponseName = "alert"
    evidence: dict[str, Any] = Field(default_factory=dict)
    step: int | None = None

    def brief(self) -> dict[str, Any]:
        """The five fields of the `corral check --json` contract."""
        return {"rule": self.rule, "category": self.category, "severity": self.severity,
                "attack": self.attack, "message": self.message}  # fmt: skip


@dataclass
class ExecNote:
    """An exec as the kernel was asked for it, read (by the seccomp notifier) while the caller was
    held: the exec sensor's observation."""

    pid: int
    ppid: int
    path: str
    argv: list[str]
    cwd: str | None
    start_ticks: int  # /proc/PID/stat starttime: when the process was forked (kept across exec)
    comm: str
    syscall: str = "execve"
    # False: the file did not exist from the caller's view when read (a PATH search's miss); the
    # monitor holds such a note and drops it if the same pid retries the same argv at once
    exists: bool = True
    mono_ns: int = field(default_factory=time.monotonic_ns)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


class GateDecision(BaseModel):
    """What the gate said of a command before it ran."""

    verdict: str = "allow"  # allow | ask | deny
    findings: list[dict[str, Any]] = Field(default_factory=list)
    reason: str = ""


class ExecResult(BaseModel):
    command: str
    step: int
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    killed: bool = False
    blocked: bool = False
    truncated: bool = False
    events: list[Event] = Field(default_factory=list)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@runtime_checkable
class EpisodeContext(Protocol):
    """One running episode, as the watchers see it: ids, the step, the policy, `emit`, its
    processes, and `terminate`. The responder charges `penalty` on it."""

    id: str  # the sandbox id
    episode_id: str
    penalty: float

    @property
    def policy(self) -> Policy: ...
    @property
    def step(self) -> int: ...
    @property
    def closed_reason(self) -> str | None: ...
    def emit(self, **fields: Any) -> Event: ...
    def host_pids(self) -> list[int]: ...
    def terminate(self, reason: str, *, emit: bool = True, rule: str | None = None
                  ) -> Awaitable[None]: ...  # fmt: skip


class SandboxEpisode:
    """The `EpisodeContext` of a `Sandbox`: forwards the few things watchers may use, and holds
    what they add to an episode (the exec sensor's hook, the steps' start times).

    Made by `Sandbox.start()`; the gateway hands it the seccomp notifier it serves, the monitor
    sets the exec hook; either may come first, and a restarted shell's new notifier gets the hook.
    """

    def __init__(self, sandbox: Any) -> None:
        self._sb = sandbox
        self.id: str = sandbox.id
        self.episode_id: str = sandbox.episode_id
        self._notifier: Any = None
        self._exec_hook: Callable[[ExecNote], None] | None = None
        self._exit_hook: Callable[[int], None] | None = None
        self._connect_hook: Callable[[int], None] | None = None
        self.exec_sensor = False  # True once a seccomp notifier reports execs for this episode
        self.watch: Any = None  # the monitor's handle, for close()
        # rules a person (or the policy's gate.ask: allow) approved for a step's command: the
        # monitor records their findings for that step's processes but does not act on them
        self.approvals: dict[int, set[str]] = {}

    # ---------------------------------------------------------------- the protocol
    @property
    def policy(self) -> Policy:
        return self._sb.policy

    @property
    def step(self) -> int:
        return self._sb.step

    @property
    def closed_reason(self) -> str | None:
        return self._sb.closed_reason

    @property
    def penalty(self) -> float:
        return self._sb.penalty

    @penalty.setter
    def penalty(self, value: float) -> None:
        self._sb.penalty = value

    def emit(self, **fields: Any) -> Event:
        return self._sb.emit(**fields)

    def host_pids(self) -> list[int]:
        return self._sb.host_pids()

    def terminate(self, reason: str, *, emit: bool = True, rule: str | None = None
                  ) -> Awaitable[None]:  # fmt: skip
        return self._sb.terminate(reason, emit=emit, rule=rule)

    # ---------------------------------------------------------------- for the monitor
    @property
    def init_pid(self) -> int | None:
        return self._sb._init_pid

    def shell_pids(self) -> set[int]:
        """The shells that run the agent's commands: a process they fork starts a step's work."""
        out = {self._sb._shell_pid} if self._sb._shell_pid else set()
        for s in getattr(self._sb, "sessions", {}).values():
            if getattr(s, "bash_pid", None):
                out.add(s.bash_pid)
        return out

    @property
    def cgroup(self) -> Any:
        return self._sb.cgroup

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        if listener not in self._sb.sink.listeners:
            self._sb.sink.listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Event], None]) -> None:
        import contextlib

        with contextlib.suppress(ValueError):
            self._sb.sink.listeners.remove(listener)

    @property
    def sink(self) -> Any:
        return self._sb.sink

    @property
    def events(self) -> list[Event]:
        """What this episode recorded so far (read-only by convention)."""
        return self._sb.events

    def approve(self, step: int, rules: list[str]) -> None:
        self.approvals.setdefault(step, set()).update(rules)

    def origin_of(self, pid: int | None) -> int | None:
        """The step that started pid (inherited from its ancestors), as the monitor knows it;
        None when unwatched or unknown. Any sensor may ask (the gateway for a connection's pid)."""
        if not pid or self.watch is None:
            return None
        try:
            return self.watch.origin_of(self, pid)
        except Exception:  # noqa: BLE001 - a vanished process must not break a record
            return None

    def connectors(self, since: float) -> list[int]:
        """The pids that called connect() on an IP socket since `since` (monotonic), most calls
        first, from the seccomp notifier; empty without one."""
        from collections import Counter

        calls = list(getattr(self._notifier, "connects", ()))
        counts = Counter(pid for t, pid in calls if t >= since)
        return [pid for pid, _ in counts.most_common()]

    # ---------------------------------------------------------------- the exec sensor
    def set_notifier(self, notifier: Any) -> None:
        """Called by whoever serves the sandbox's seccomp listener (gateway or exec sensor)."""
        self._notifier = notifier
        if notifier is not None:
            self.exec_sensor = True
            notifier.on_exec = self._exec_hook
            notifier.on_exit = self._exit_hook
            notifier.on_connect = self._connect_hook
            notifier.on_refused = getattr(self._sb, "syscall_refused", None)

    def set_exec_hook(self, hook: Callable[[ExecNote], None] | None) -> None:
        self._exec_hook = hook
        if self._notifier is not None:
            self._notifier.on_exec = hook

    def set_connect_hook(self, hook: Callable[[int], None] | None) -> None:
        """`hook(tid)` runs on each IP connect() the notifier sees (before it is carried out)."""
        self._connect_hook = hook
        if self._notifier is not None:
            self._notifier.on_connect = hook

    def set_exit_hook(self, hook: Callable[[int], None] | None) -> None:
        """`hook(tid)` runs while a process (thread) of the sandbox is held in exit_group/exit."""
        self._exit_hook = hook
        if self._notifier is not None:
            self._notifier.on_exit = hook
