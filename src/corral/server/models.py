"""Wire models of the service.

ROCK-compatible requests and results follow alibaba/ROCK (`rock/actions/sandbox/request.py`,
`rock/actions/sandbox/response.py`, `rock/admin/proto/request.py`, `rock/admin/proto/response.py`,
envelope `RockResponse` in `rock/actions/response.py`); `/run_code` follows bytedance/SandboxFusion
(`sandbox/server/sandbox_api.py`: RunCodeRequest / RunCodeResponse, CommandRunResult). ROCK requests
ignore fields corral does not use (image, registry credentials, kata...) so the stock SDK works;
corral's own env requests forbid unknown fields. Every response adds `safety`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# ids, session names and paths: no NUL (no file or shell name can hold one) and a sane length
NonBlank = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=4096, pattern=r"^[^\x00]*$"),
]
T = TypeVar("T")


class Safety(BaseModel):
    events: int = Field(0, description="findings so far (events above info, lifecycle excluded)")
    worst: str | None = Field(None, description="worst severity so far")
    penalty: float = Field(0.0, description="reward penalty so far, from the policy's shaper")
    terminated: bool = Field(False, description="the policy ended the episode")


class Envelope(BaseModel, Generic[T]):
    """ROCK's `RockResponse` plus `safety`."""

    status: Literal["Success", "Failed"] = "Success"
    message: str | None = None
    error: str | None = None
    result: T | None = None
    safety: Safety = Safety()


class _Rock(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- ROCK requests
class StartRequest(_Rock):
    image: str | None = Field(
        None, description="accepted for ROCK compatibility; corral runs the host's read-only root"
    )
    memory: str | int | None = Field(
        None, description="e.g. '8g' (binary units, as docker); capped at the policy's limit"
    )
    cpus: float | None = Field(None, description="CPU cores; capped at the policy's limit")
    sandbox_id: str | None = Field(None, description="the id to give the sandbox (ROCK)")
    auto_clear_time: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="minutes idle before the sandbox is stopped"
    )
    auto_clear_time_minutes: float | None = Field(None, ge=0, allow_inf_nan=False)
    startup_timeout: float | None = Field(None, allow_inf_nan=False)
    episode_id: str | None = Field(None, description="corral: the RL episode this sandbox serves")


class SandboxRef(_Rock):
    sandbox_id: NonBlank


class CommandRequest(_Rock):
    sandbox_id: NonBlank
    command: str | list[str]
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    cwd: NonBlank | None = None
    env: dict[str, str] | None = None


class CreateSessionRequest(_Rock):
    sandbox_id: NonBlank
    session: NonBlank = "default"
    startup_source: list[str] = []
    env_enable: bool = False
    env: dict[str, str] | None = None
    session_type: Literal["bash"] = "bash"


class CloseSessionRequest(_Rock):
    sandbox_id: NonBlank
    session: NonBlank = "default"
    session_type: Literal["bash"] = "bash"


class BashActionRequest(_Rock):
    sandbox_id: NonBlank
    command: str
    session: NonBlank = "default"
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    check: Literal["silent", "raise", "ignore"] = "raise"
    action_type: Literal["bash"] = "bash"


class ReadFileRequest(_Rock):
    sandbox_id: NonBlank
    path: NonBlank
    encoding: str | None = None
    errors: str | None = None


class WriteFileRequest(_Rock):
    sandbox_id: NonBlank
    path: NonBlank
    content: str


# ---------------------------------------------------------------- ROCK results
class StartResult(BaseModel):
    sandbox_id: str
    host_name: str | None = None
    host_ip: str | None = None
    cpus: float | None = None
    memory: str | None = None
    code: int | None = None
    exit_code: int | None = None
    failure_reason: str | None = None
    episode_id: str | None = None


class IsAliveResult(BaseModel):
    is_alive: bool
    message: str = ""


class StatusResult(BaseModel):
    sandbox_id: str
    status: dict[str, Any] = {}
    state: str | None = None
    port_mapping: dict[str, Any] = {}
    host_name: str | None = None
    host_ip: str | None = None
    is_alive: bool = True
    image: str | None = None
    cpus: float | None = None
    memory: str | None = None
    corral: dict[str, Any] = Field(default_factory=dict, description="episode, policy, pids, step")


class CommandResult(BaseModel):
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None


class CreateSessionResult(BaseModel):
    output: str = ""
    session_type: Literal["bash"] = "bash"


class CloseSessionResult(BaseModel):
    session_type: Literal["bash"] = "bash"


class BashObservation(BaseModel):
    session_type: Literal["bash"] = "bash"
    output: str = ""
    exit_code: int | None = None
    failure_reason: str = ""
    expect_string: str = ""


class ReadFileResult(BaseModel):
    content: str = ""


class WriteFileResult(BaseModel):
    success: bool = False
    message: str = ""


class UploadResult(BaseModel):
    success: bool = False
    message: str = ""
    file_name: str = ""


# ---------------------------------------------------------------- SandboxFusion
FusionLanguage = Literal[
    "python", "python2", "cpp", "nodejs", "js", "go", "go_test", "java", "php", "csharp", "bash",
    "typescript", "ts", "sql", "rust", "cuda", "lua", "R", "perl", "D_ut", "ruby", "scala",
    "julia", "pytest", "junit", "kotlin_script", "jest", "verilog", "python_gpu", "lean", "swift",
    "racket", "gtest", "react",
]  # fmt: skip


class RunCodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = Field(..., description="the code to run")
    language: FusionLanguage = Field(..., description="the language or execution mode")
    compile_timeout: float = Field(
        10, gt=0, allow_inf_nan=False, description="seconds the compile step may take"
    )
    run_timeout: float = Field(
        10, gt=0, allow_inf_nan=False, description="seconds the code may run"
    )
    memory_limit_MB: int = Field(-1, description="memory limit in MB (capped at the policy's)")
    stdin: str | None = None
    files: dict[str, str | None] = Field({}, description="sandbox path -> base64 content")
    fetch_files: list[str] = Field([], description="paths to return, base64, after the run")
    args: list[str] = Field([], description="extra command-line arguments passed to pytest")


class CommandRunResult(BaseModel):
    status: Literal["Finished", "Error", "TimeLimitExceeded"]
    execution_time: float | None = None
    cpu_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = {}
    safety: Safety = Safety()


class RunJupyterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cells: list[str] = Field(..., description="code blocks run one after another in one namespace")
    cell_timeout: float = Field(0, ge=0, description="seconds per cell (0: no limit)")
    total_timeout: float = Field(45, ge=0, description="seconds for all the cells")
    kernel: Literal["python3"] = "python3"
    files: dict[str, str] = Field({}, description="sandbox path -> base64 content")
    fetch_files: list[str] = Field([], description="paths to return, base64, after the run")


class CellRunResult(BaseModel):
    stdout: str
    stderr: str
    display: list[dict[str, Any]]
    error: list[dict[str, Any]]


class RunJupyterResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    driver: CommandRunResult | None = None
    cells: list[CellRunResult] = []
    executor_pod_name: str | None = None
    files: dict[str, str] = {}
    safety: Safety = Safety()


# ---------------------------------------------------------------- corral env
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvResetRequest(_Strict):
    task: dict[str, Any] = Field(default_factory=dict, description="a corral.rl.TaskSpec")
    seed: int | None = None
    episode_id: str | None = None


class EnvStepRequest(_Strict):
    episode_id: NonBlank
    action: str


class EnvCloseRequest(_Strict):
    episode_id: NonBlank


class EnvResetResult(BaseModel):
    episode_id: str
    observation: str
    info: dict[str, Any]


class EnvStepResult(BaseModel):
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


# ---------------------------------------------------------------- approvals (gate ask)
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled"]


class PendingApproval(BaseModel):
    id: str
    command: str = Field(..., description="the command as the gate saw it")
    findings: list[dict[str, Any]] = Field(default_factory=list, description="worst first")
    expires_at: datetime = Field(..., description="after this the command is refused")
    sandbox_id: str
    session: str
    step: int
    url: str = Field(..., description="where to decide it and read its outcome")


class PendingResult(BaseModel):
    pending: PendingApproval


class PendingEnvelope(BaseModel):
    """HTTP 202 from run_in_session / execute: the command waits for a decision; it has not run."""

    status: Literal["Pending"] = "Pending"
    message: str | None = None
    error: str | None = None
    result: PendingResult
    safety: Safety = Safety()


class ApprovalOutcome(BaseModel):
    """What the original call would have answered, once the command ran or was refused."""

    status: Literal["Success", "Failed"]
    message: str | None = None
    error: str | None = None
    result: Any = None
    http_status: int = Field(200, description="the status the original call would have had")
    safety: Safety = Safety()


class ApprovalInfo(BaseModel):
    id: str
    sandbox_id: str
    episode_id: str
    session: str
    route: Literal["run_in_session", "execute"]
    step: int
    command: str
    findings: list[dict[str, Any]]
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str | None = None
    done: bool = Field(False, description="the command ran (or was refused) and `outcome` is set")
    outcome: ApprovalOutcome | None = None


class ApprovalDecision(_Strict):
    decision: Literal["approve", "deny"]
    by: str | None = Field(None, max_length=200, description="who decided (a name for the record)")
    reason: str | None = Field(None, max_length=2000)
