"""The Policy model.

Every section forbids unknown keys: a typo in a policy file must be an error naming the field, never
a silently ignored control.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}  # fmt: skip


def parse_size(value: object) -> object:
    """Accept 512, "512MiB", "2 GB": people write sizes, not byte counts."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        raise ValueError(f"not a size: {value!r} (use a number of bytes or e.g. '512MiB', '2GB')")
    return value


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Response = Literal["alert", "block", "kill", "terminate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorkspacePolicy(_Strict):
    path: str = "/workspace"
    mode: Literal["rw", "ro"] = "rw"

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or v == "/":
            raise ValueError("must be an absolute path other than /")
        return v


# Host secrets hidden in every sandbox whatever the policy says (a policy's `hidden` adds to these).
DEFAULT_HIDDEN = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
    "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private", "/etc/boto.cfg",
    "/etc/docker", "/etc/kubernetes", "/etc/rancher", "/etc/corral", "/root", "/home",
    "/var/lib/docker", "/var/lib/cloud", "/var/lib/kubelet", "/var/log", "/run", "/var/run",
    "/etc/machine-id", "/var/lib/dbus/machine-id", "/etc/credstore", "/etc/credstore.encrypted",
)  # fmt: skip


class FilesystemPolicy(_Strict):
    workspace: WorkspacePolicy = WorkspacePolicy()
    read_only: list[str] = []
    read_write: list[str] = []
    hidden: list[str] = []
    protected: list[str] = Field(
        default_factory=list,
        description="paths relative to the workspace that stay read-only inside it; in an image"
        " root also absolute paths of the image (e.g. /tests)",
    )

    @field_validator("read_only", "read_write", "hidden")
    @classmethod
    def _abs_paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} must be an absolute path")
        return v

    @field_validator("protected")
    @classmethod
    def _rel_paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if p.strip("/") == "" or ".." in p.split("/"):
                raise ValueError(f"{p!r} must name a path below the root, without '..'")
        return v


class EgressRule(_Strict):
    host: str = Field(description="exact name, '*.suffix', or an IP/CIDR")
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = None
    protocols: list[Literal["http", "https", "ssh", "tcp"]] | None = None


class NetworkPolicy(_Strict):
    egress: Literal["deny", "allow"] = "deny"
    allow: list[EgressRule] = []
    deny: list[EgressRule] = []
    max_connections: int = Field(64, ge=0)
    max_bytes: Size | None = None
    dns: Literal["gateway", "none"] = "gateway"


class LimitsPolicy(_Strict):
    wall_time: float | None = Field(3600.0, gt=0, description="seconds per episode")
    command_timeout: float | None = Field(600.0, gt=0, description="seconds per command")
    cpu_time: float | None = Field(None, gt=0, description="CPU seconds per process (rlimit)")
    cpus: float | None = Field(1.0, gt=0, description="CPU cores (cgroup quota)")
    memory: Size | None = 2 * 1024**3
    pids: int | None = Field(512, ge=1)
    open_files: int | None = Field(1024, ge=16)
    file_size: Size | None = 1024**3
    disk: Size | None = Field(
        4 * 1024**3, description="bytes the agent may add to /tmp and to the workspace each (a "
        "size-capped tmpfs for /tmp; the workspace's growth is measured and answered as a limit)",
    )  # fmt: skip
    inodes: int | None = Field(
        200_000, ge=16, description="files the agent may add to the workspace (measured)"
    )
    enforcement: Literal["strict", "best_effort"] = Field(
        "strict", description="strict: refuse to run when a limit cannot be enforced"
    )


class GpuPolicy(_Strict):
    allowed: bool = False
    devices: list[int] = []


class ResponsePolicy(_Strict):
    """What to do when a rule of each category fires; penalties feed the RL reward shaper."""

    mining: Response = "terminate"
    tunnel: Response = "terminate"
    reverse_shell: Response = "terminate"
    probe_internal: Response = "block"
    metadata: Response = "block"
    exfiltration: Response = "terminate"
    persistence: Response = "block"
    escape: Response = "terminate"
    ingress_exec: Response = "block"
    reward_tampering: Response = "terminate"
    resource: Response = "kill"
    penalties: dict[str, float] = Field(
        default_factory=lambda: {
            "critical": -1.0,
            "high": -0.5,
            "medium": -0.2,
            "low": -0.05,
            "info": 0.0,
        }
    )

    category_penalties: dict[str, float] = Field(
        default_factory=dict,
        description="per-category penalty overriding the severity one (e.g. tunnel: -1.0)",
    )
    penalty_floor: float | None = Field(
        None, le=0, description="an episode's total penalty never goes below this"
    )

    def for_category(self, category: str) -> Response:
        return getattr(self, category, "alert") if category in type(self).model_fields else "alert"


class GatePolicy(_Strict):
    enabled: bool = True
    ask: Literal["deny", "allow", "callback"] = Field(
        "deny", description="what 'ask' means when no person is in the loop"
    )
    deny_at: Literal["low", "medium", "high", "critical"] = "high"
    ask_at: Literal["low", "medium", "high", "critical"] = "medium"


_BUILD_TOOLS = ["make", "gmake", "cmake", "ninja", "meson", "bazel", "gcc", "g++", "cc", "c++",
                "cc1", "cc1plus", "clang", "clang++", "ld", "as", "collect2", "rustc", "cargo",
                "go", "javac", "mvn", "gradle", "pytest", "py.test", "tox", "nox", "npm", "yarn",
                "pnpm", "tsc", "webpack", "dotnet", "ctest", "unittest"]  # fmt: skip


class MonitorPolicy(_Strict):
    """Thresholds of the runtime sensors (the rules that read their facts live in the rule packs)."""

    enabled: bool = Field(
        True, description="watch every sandbox of this policy (exec, sockets, CPU, GPU), whatever"
        " starts it; false leaves only the gate and the gateway",
    )  # fmt: skip
    exec_sensor: bool = Field(
        True, description="see every exec before it runs through the sandbox's seccomp listener"
        " (also for sandboxes without a gateway); false falls back to polling /proc",
    )  # fmt: skip

    poll_interval: float = Field(
        0.05, gt=0, description="seconds between scans of sandbox processes where the kernel's"
        " process connector is unavailable",
    )  # fmt: skip
    sweep_interval: float = Field(0.25, gt=0, description="seconds between socket/CPU sweeps")
    cpu_threshold: float = Field(
        0.7, gt=0, description="cores (the sandbox's total) that count as holding the CPU"
    )
    cpu_window: float = Field(
        5.0, gt=0, description="seconds the sandbox's CPU (its cgroup's total, in cores) must stay"
        " above cpu_threshold to count: alone, an alert",
    )  # fmt: skip
    cpu_kill_window: float = Field(
        600.0, gt=0, description="seconds of sustained CPU after which the mining response (kill,"
        " terminate) applies without corroboration (pool config, stratum, pool address, GPU use"
        " not granted); before that, CPU alone only alerts",
    )  # fmt: skip
    build_tools: list[str] = Field(
        default_factory=lambda: list(_BUILD_TOOLS),
        description="kept so older policies load; no longer exempts anything (a burner renamed"
        " `ninja` is judged like any other process)",
    )
    fanout_threshold: int = Field(
        20, ge=1, description="connection attempts in fanout_window that count as a scan"
    )
    fanout_window: float = Field(2.0, gt=0, description="seconds")
    gpu_interval: float = Field(1.0, gt=0, description="seconds between NVML reads")


class RuleException(_Strict):
    """A known-good case of one rule (Falco's `user_known_*` / exceptions): when `when` holds, in
    the rule's own condition language (command conditions for command rules, event-field
    conditions for event rules), the rule does not fire."""

    rule: str
    when: dict[str, object]
    comment: str = ""


class RulesPolicy(_Strict):
    """Tune the rule packs for this policy: gate, monitor, gateway, `corral check` and `audit`."""

    packs: list[str] = Field(default_factory=list, description="extra pack files or directories")
    disabled: list[str] = Field(default_factory=list, description="rule ids that never fire")
    exceptions: list[RuleException] = Field(default_factory=list)
    lists: dict[str, list[str]] = Field(
        default_factory=dict,
        description="named lists; `$name` in an exception's or a macro's list expands",
    )
    macros: dict[str, dict[str, object] | None] = Field(
        default_factory=dict,
        description="replace a pack's macro by name (Falco's macro override): its new condition,"
        " in that macro's language; a `user_known_*` macro is the hook the shipped rules leave",
    )  # fmt: skip


class Policy(_Strict):
    name: str = "custom"
    description: str = ""
    filesystem: FilesystemPolicy = FilesystemPolicy()
    network: NetworkPolicy = NetworkPolicy()
    limits: LimitsPolicy = LimitsPolicy()
    gpu: GpuPolicy = GpuPolicy()
    responses: ResponsePolicy = ResponsePolicy()
    gate: GatePolicy = GatePolicy()
    monitor: MonitorPolicy = MonitorPolicy()
    rules: RulesPolicy = RulesPolicy()
    observe_only: bool = Field(False, description="record everything, enforce no response")
    image: str | None = Field(
        None, description="the sandbox's root: an image name, OCI layout, docker/OCI archive,"
        " rootfs directory or tarball, or registry reference (none: the host's read-only root)",
    )  # fmt: skip
