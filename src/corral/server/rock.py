"""ROCK's sandbox routes (alibaba/ROCK `rock/admin/entrypoints/sandbox_api.py`), on corral sandboxes.

Kept as ROCK answers them, because the rl-rock SDK and ROLL's sandbox managers read only ROCK's
envelope: every failure is HTTP 200 with `status: Failed` and the reason in `message` and `error`
(`X-Corral-Status` carries the HTTP status corral would have used); `run_in_session` honours `check`
(`raise`: a non-zero exit is Failed with rocklet's message; `silent`: Success with the exit code;
`ignore`: no exit code) and a command timeout is Failed; a command that ends `&` at top level prints
`[N] PID` as ROCK's interactive bash does (ROLL reads the PID from it); `/tmp`, `/tests` and `/app`
are the sandbox's own writable tmpfs directories, reachable by upload/read/write like the workspace.
`memory` and `cpus` are honoured up to the policy's own limit; `image` is echoed. `is_alive` of an
unknown sandbox is Success with `is_alive: false`, as in ROCK.

A ROME act (a finding whose policy response is `terminate`) answers Failed in every `check` mode
with `episode ended by corral's policy: ...` in `message`, the command's observation in `result`,
and `safety.terminated`; later calls answer Failed naming the same reason.

Sessions: each is its own bash in the one sandbox (`Sandbox.open_session`); "default" is the main
shell. The SDK opens a `bash-<ns>` session per call and never closes it, so past `MAX_SESSIONS`
the least recently used idle session is closed (the SDK's first; one whose jobs still run, such
as an SDK nohup job being polled, last). `env` of `create_session` is set
without passing the gate (corral's own quoting); `startup_source` files run as commands and are
gated and recorded, because the agent may have written them.

Under a policy with `gate.ask: callback`, run_in_session and execute answer HTTP 202 `Pending`
when the gate asks a person (see `corral.server.approvals`).
"""

from __future__ import annotations

import math
import os
import re
import shlex
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import tree_sitter_bash
from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from tree_sitter import Language, Parser

from corral.policy.model import Policy
from corral.rl.reward import EMPTY_SAFETY
from corral.sandbox import paths
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed, SandboxRefused
from corral.sandbox.sandbox import ExecResult
from corral.sandbox.session import SessionEnded, _control
from corral.server.approvals import Approval
from corral.server.limits import BodyTooLarge
from corral.server.manager import ApiError, Entry, SandboxManager
from corral.server.models import (
    BashActionRequest,
    BashObservation,
    CloseSessionRequest,
    CloseSessionResult,
    CommandRequest,
    CommandResult,
    CreateSessionRequest,
    CreateSessionResult,
    Envelope,
    IsAliveResult,
    NonBlank,
    PendingEnvelope,
    ReadFileRequest,
    ReadFileResult,
    StartRequest,
    StartResult,
    StatusResult,
    UploadResult,
    WriteFileRequest,
    WriteFileResult,
)

MAX_UPLOAD = 256 * 1024 * 1024
# private writable directories of a ROCK sandbox besides /tmp: ROCK images let harnesses create
# them (ROLL's run_tests does `mkdir -p /tests`); on corral they are empty tmpfs mounts
ROCK_SCRATCH = ["/tests", "/app"]
PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": PendingEnvelope, "description": "the gate asked a person (policy gate.ask: "
          "callback): the command waits for POST /apis/corral/v1/approvals/{id}"}}  # fmt: skip
_BINARY = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:ib|i|b)?\s*", re.I)
_PARSER = Parser(Language(tree_sitter_bash.language()))


def failed(status: int, message: str, *, result: Any = None,
           safety: dict[str, Any] | None = None) -> JSONResponse:  # fmt: skip
    """ROCK's failure envelope: HTTP 200, `status: Failed`, the reason in message and error."""
    body = {"status": "Failed", "message": message, "error": message, "result": result,
            "safety": safety or dict(EMPTY_SAFETY)}  # fmt: skip
    return JSONResponse(status_code=200, content=jsonable_encoder(body),
                        headers={"X-Corral-Status": str(status)})  # fmt: skip


def as_failure(err: Exception) -> JSONResponse | None:
    """corral's errors as ROCK answers them; None for anything else (an auth 401 stays a 401)."""
    if isinstance(err, ApiError):
        return failed(err.status, err.message, result=err.result, safety=err.safety)
    if isinstance(err, RequestValidationError):
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "form"))
            problems.append(f"{loc or 'body'}: {e.get('msg')}")
        return failed(422, "invalid request: " + "; ".join(problems))
    if isinstance(err, SandboxClosed):
        return failed(410, f"the sandbox is gone ({err.reason}); start a new one")
    if isinstance(err, SandboxRefused):
        return failed(503, str(err))
    if isinstance(err, PathOutsideWorkspace):
        return failed(400, f"path: {err}")
    return None


class RockRoute(APIRoute):
    """Answers corral's errors on this router in ROCK's envelope (see `as_failure`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as err:
                answer = as_failure(err)
                if answer is None:
                    raise
                return answer

        return route


def parse_memory(value: str | int | None) -> int | None:
    """ROCK's (docker's) memory: "8g", "512m", "2Gi", bytes; the units are binary."""
    if value is None or isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(value)
    if not m:
        raise ApiError(422, f"memory: not a size: {value!r} (use e.g. '8g' or '512m')")
    return int(float(m.group(1)) * _BINARY[m.group(2).lower()])


def format_memory(n: int | None) -> str | None:
    if n is None:
        return None
    return f"{n // 1024**3}g" if n % 1024**3 == 0 else f"{math.ceil(n / 1024**2)}m"


def sized_policy(policy: Policy, memory: str | int | None, cpus: float | None) -> Policy:
    """The policy with the client's memory and cpus, never above the policy's own limits."""
    lim = policy.limits
    update: dict[str, Any] = {}
    want = parse_memory(memory)
    if want is not None and want > 0:
        update["memory"] = want if lim.memory is None else min(want, lim.memory)
    if cpus is not None and cpus > 0:
        update["cpus"] = cpus if lim.cpus is None else min(cpus, lim.cpus)
    if not update:
        return policy
    return policy.model_copy(update={"limits": lim.model_copy(update=update)})


def announce_jobs(command: str) -> str:
    """Make a top-level `cmd &` print `[N] PID` to stderr, as ROCK's interactive bash does."""
    if "&" not in command:
        return command
    raw = command.encode()
    tree = _PARSER.parse(raw)
    cuts = [c.end_byte for c in tree.root_node.children if c.type == "&"]
    if not cuts or tree.root_node.has_error:
        return command
    note = (b" __corral_jn=$(( ${__corral_jn:-0} + 1 ));"
            b" builtin printf '[%d] %d\\n' \"$__corral_jn\" \"$!\" >&2;")  # fmt: skip
    out = bytearray()
    last = 0
    for cut in cuts:
        out += raw[last:cut] + note
        last = cut
    out += raw[last:]
    return out.decode()


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter(route_class=RockRoute)

    def ok(entry: Entry, result: object, message: str | None = None) -> dict:
        return {"status": "Success", "message": message, "error": None, "result": result,
                "safety": m.safety(entry)}  # fmt: skip

    def start_result(entry: Entry) -> StartResult:
        lim = entry.sandbox.policy.limits
        return StartResult(sandbox_id=entry.sandbox.id, host_name=m.host_name,
                           host_ip="127.0.0.1", cpus=lim.cpus, memory=format_memory(lim.memory),
                           episode_id=entry.sandbox.episode_id)  # fmt: skip

    async def _start(req: StartRequest) -> dict:
        policy = sized_policy(m.policy, req.memory, req.cpus)
        if req.sandbox_id and (req.sandbox_id in m.live or req.sandbox_id in m.gone):
            raise ApiError(409, f"sandbox_id: {req.sandbox_id!r} is already in use")
        entry = await m.start(episode_id=req.episode_id, image=req.image, policy=policy,
                              idle_minutes=req.auto_clear_time_minutes or req.auto_clear_time,
                              scratch_dirs=ROCK_SCRATCH, sandbox_id=req.sandbox_id)  # fmt: skip
        return ok(entry, start_result(entry))

    @r.post("/start", response_model=Envelope[StartResult])
    async def start(req: StartRequest) -> dict:
        """Start a sandbox; ready for commands when this returns."""
        return await _start(req)

    @r.post("/start_async", response_model=Envelope[StartResult])
    async def start_async(req: StartRequest) -> dict:
        """Same as /start: a corral sandbox is ready in milliseconds, so there is nothing to poll."""
        return await _start(req)

    async def _restart(sandbox_id: str) -> dict:
        entry = m.lookup(sandbox_id)
        if entry.gone is None and not entry.sandbox.closed_reason:
            return ok(entry, start_result(entry), "already running")
        if entry.sandbox.terminated:
            raise ApiError(409, f"sandbox {sandbox_id!r} was ended by corral's policy "
                           f"({entry.sandbox.closed_reason}); start a new one",
                           safety=m.safety(entry))  # fmt: skip
        m.forget(sandbox_id)
        args = dict(entry.start_args)
        new = await m.start(sandbox_id=sandbox_id, **args)
        return ok(new, start_result(new), "restarted with a fresh workspace")

    @r.post("/restart", response_model=Envelope[StartResult])
    async def restart(sandbox_id: Annotated[NonBlank, Body(embed=True)]) -> dict:
        """Start a stopped sandbox again under the same id (its files are not kept: a corral
        workspace goes with its sandbox). A sandbox the policy ended cannot be restarted."""
        return await _restart(sandbox_id)

    @r.post("/sandboxes/{sandbox_id}/restart", response_model=Envelope[StartResult])
    async def restart_restful(sandbox_id: str) -> dict:
        return await _restart(sandbox_id)

    @r.post("/delete", response_model=Envelope[str])
    async def delete(sandbox_id: Annotated[NonBlank, Body(embed=True)]) -> dict:
        """Forget a stopped sandbox (ROCK: Failed while it runs, Success when unknown)."""
        entry = m.live.get(sandbox_id)
        if entry is not None and not entry.sandbox.closed_reason:
            raise ApiError(409, f"sandbox {sandbox_id!r} is running: stop it before deleting it",
                           safety=m.safety(entry))  # fmt: skip
        if entry is not None:  # ended by the policy, not yet retired
            await m.stop(sandbox_id)
        m.forget(sandbox_id)
        return {"status": "Success", "message": None, "error": None,
                "result": f"{sandbox_id} deleted", "safety": dict(EMPTY_SAFETY)}  # fmt: skip

    @r.get("/get_token")
    async def get_token(account: str = "legacy") -> dict:
        """ROCK's OSS credentials. corral has no object store: every field is null, so the SDK
        finds OSS unavailable and sends files through /upload."""
        creds = dict.fromkeys(("AccessKeyId", "AccessKeySecret", "SecurityToken", "Expiration",
                               "Endpoint", "Bucket", "Region", "Prefix"))  # fmt: skip
        return {"status": "Success", "message": "corral has no object storage: use /upload",
                "error": None, "result": creds, "safety": dict(EMPTY_SAFETY)}  # fmt: skip

    @r.get("/is_alive", response_model=Envelope[IsAliveResult])
    async def is_alive(sandbox_id: Annotated[NonBlank, Query()]) -> dict:
        """ROCK answers Success with `is_alive: false` for a sandbox it does not know."""
        try:
            entry = m.lookup(sandbox_id)
        except ApiError as err:
            return {"status": "Success", "message": err.message, "error": None,
                    "result": IsAliveResult(is_alive=False, message=err.message),
                    "safety": dict(EMPTY_SAFETY)}  # fmt: skip
        alive = entry.gone is None and not entry.sandbox.closed_reason
        msg = (
            m.host_name if alive else f"sandbox ended: {entry.gone or entry.sandbox.closed_reason}"
        )
        return ok(entry, IsAliveResult(is_alive=alive, message=msg))

    @r.get("/get_status", response_model=Envelope[StatusResult])
    async def get_status(sandbox_id: Annotated[NonBlank, Query()]) -> dict:
        entry = m.lookup(sandbox_id)
        sb = entry.sandbox
        reason = entry.gone or sb.closed_reason
        alive = reason is None
        lim = sb.policy.limits
        res = StatusResult(
            sandbox_id=sb.id,
            status={"sandbox": {"status": "running" if alive else "stopped",
                                "message": "ready" if alive else reason}},
            state="running" if alive else "stopped",
            host_name=m.host_name, host_ip="127.0.0.1", is_alive=alive, image=entry.image,
            cpus=lim.cpus, memory=format_memory(lim.memory),
            corral={"episode_id": sb.episode_id, "policy": m.policy.name, "step": sb.step,
                    "init_pid": sb._init_pid, "shell_pid": sb.shell_pid() if alive else None,
                    "sessions": sorted(entry.sessions), "limits": sb.limits.mechanisms,
                    "closed_reason": sb.closed_reason},
        )  # fmt: skip
        return ok(entry, res)

    def pending(entry: Entry, ap: Approval) -> JSONResponse:
        msg = (f"command needs approval {ap.id}: decide with POST /apis/corral/v1/approvals/"
               f"{ap.id}, then read its outcome with GET /apis/corral/v1/approvals/{ap.id}")  # fmt: skip
        body = {"status": "Pending", "message": msg, "error": None,
                "result": {"pending": ap.pending()}, "safety": m.safety(entry)}  # fmt: skip
        return JSONResponse(status_code=202, content=jsonable_encoder(body))

    def policy_end(entry: Entry, result: Any) -> None:
        """The policy ended the episode during this command: Failed, naming the reason."""
        if entry.sandbox.terminated:
            reason = (entry.sandbox.closed_reason or "terminated").removeprefix("terminated: ")
            raise ApiError(409, f"episode ended by corral's policy: {reason}",
                           safety=m.safety(entry), result=result.model_dump())  # fmt: skip

    @r.post("/execute", response_model=Envelope[CommandResult], responses=PENDING)
    async def execute(req: CommandRequest) -> Any:
        """A one-shot command in a subshell: the session's state is left as it was."""
        entry = m.get(req.sandbox_id)

        def finish(res: ExecResult) -> CommandResult:
            result = CommandResult(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)
            _raise_if_gone(m, entry, result)
            policy_end(entry, result)
            if res.timed_out:
                raise ApiError(408, f"timeout after {req.timeout or 'the policy limit of'} "
                               f"seconds while running command {req.command!r}",
                               safety=m.safety(entry), result=result.model_dump())  # fmt: skip
            return result

        out = await m.submit(entry, m.oneshot(req.command, req.cwd, req.env), req.timeout,
                             session="execute", route="execute", finish=finish)  # fmt: skip
        return pending(entry, out) if isinstance(out, Approval) else ok(entry, out)

    @r.post("/create_session", response_model=Envelope[CreateSessionResult])
    async def create_session(req: CreateSessionRequest) -> dict:
        """A new session: its own bash in the sandbox, starting in the workspace with the
        sandbox's environment plus `env`, after sourcing `startup_source`."""
        entry = m.get(req.sandbox_id)
        known = entry.sessions.get(req.session)
        if (
            req.session != "default"
            and req.session in entry.sessions
            and (known is None or known.alive)
        ):
            raise ApiError(409, f"session: {req.session!r} already exists in sandbox "
                           f"{req.sandbox_id!r}", safety=m.safety(entry))  # fmt: skip
        exports = []
        for k, v in (req.env or {}).items():
            if not k.isidentifier():
                raise ApiError(422, f"env: {k!r} is not a valid variable name")
            exports.append(f"export {k}={shlex.quote(v)}")
        shell = None
        if req.session != "default":
            await m.make_room(entry)
            try:
                shell = await entry.sandbox.open_session(req.session)
            except SessionEnded as err:
                raise ApiError(503, f"session: {err}", safety=m.safety(entry)) from None
        entry.sessions[req.session] = shell
        entry.session_used[req.session] = time.monotonic()
        output = ""
        if exports:  # corral's own quoting: no command of the agent's, so no gate and no step
            lock = shell._lock if shell is not None else entry.sandbox._lock
            async with lock:
                chan = shell._chan if shell is not None else entry.sandbox._chan
                if chan is not None:
                    output += await _control(entry.sandbox, chan, "\n".join(exports) + "\n")
        if req.startup_source:
            setup = "; ".join(f"source {shlex.quote(s)}" for s in req.startup_source)
            res = await m.run(entry, setup, None, shell)
            output += res.output
        return ok(entry, CreateSessionResult(output=output))

    @r.post("/close_session", response_model=Envelope[CloseSessionResult])
    async def close_session(req: CloseSessionRequest) -> dict:
        """End a session's bash and what it started; the sandbox and other sessions go on."""
        entry = m.get(req.sandbox_id)
        if req.session not in entry.sessions:
            raise ApiError(404, f"session: no session {req.session!r} in sandbox "
                           f"{req.sandbox_id!r}", safety=m.safety(entry))  # fmt: skip
        shell = entry.sessions.pop(req.session)
        entry.session_used.pop(req.session, None)
        m.approvals.cancel_session(entry.sandbox.id, req.session, "session closed")
        if shell is not None:
            await shell.close("closed by /close_session")
        if req.session == "default":
            entry.sessions["default"] = None  # the main shell stays: it is the sandbox's own
        return ok(entry, CloseSessionResult())

    @r.post("/run_in_session", response_model=Envelope[BashObservation], responses=PENDING)
    async def run_in_session(req: BashActionRequest) -> Any:
        """A command in the session's persistent bash: `cd`, variables and jobs persist."""
        entry = m.get(req.sandbox_id)
        shell = m.session(entry, req.session)

        def finish(res: ExecResult) -> BashObservation:
            reason = ""
            if res.blocked:
                reason = res.stderr.strip()
            elif res.timed_out:
                reason = f"command timed out and was killed (exit {res.exit_code})"
            elif entry.sandbox.terminated:
                reason = f"episode ended by corral's policy ({entry.sandbox.closed_reason})"
            elif res.killed:
                reason = "killed by corral's policy response"
            obs = BashObservation(output=res.output, exit_code=res.exit_code, failure_reason=reason)
            _raise_if_gone(m, entry, obs)
            policy_end(entry, obs)
            if res.timed_out:
                raise ApiError(408, f"timeout after {req.timeout or 'the policy limit of'} "
                               f"seconds while running command {req.command!r}",
                               safety=m.safety(entry), result=obs.model_dump())  # fmt: skip
            if req.check == "ignore":
                obs.exit_code = None
            elif req.check == "raise" and res.exit_code != 0:
                msg = (f"Command {req.command!r} failed with exit code {res.exit_code}. "
                       f"Here is the output:\n{res.output!r}")  # fmt: skip
                if res.blocked:
                    msg = f"{reason}: {msg}"
                raise ApiError(400, msg, safety=m.safety(entry), result=obs.model_dump())
            return obs

        out = await m.submit(entry, announce_jobs(req.command), req.timeout, session=req.session,
                             route="run_in_session", finish=finish, shell=shell,
                             shown=req.command)  # fmt: skip
        return pending(entry, out) if isinstance(out, Approval) else ok(entry, out)

    @r.post("/read_file", response_model=Envelope[ReadFileResult])
    async def read_file(req: ReadFileRequest) -> dict:
        entry = m.get(req.sandbox_id)
        try:
            data = await paths.read(entry.sandbox, req.path, max_bytes=m.limits.max_file_bytes + 1)
        except FileNotFoundError:
            raise ApiError(404, f"path: no file {req.path!r} in the sandbox",
                           safety=m.safety(entry)) from None  # fmt: skip
        except (IsADirectoryError, NotADirectoryError) as err:
            raise ApiError(
                400, f"path: {req.path!r}: {err.strerror}", safety=m.safety(entry)
            ) from None
        if len(data) > m.limits.max_file_bytes:
            raise BodyTooLarge(m.limits.max_file_bytes, f"path: {req.path!r}")
        try:
            text = data.decode(req.encoding or "utf-8", req.errors or "strict")
        except (UnicodeDecodeError, LookupError) as err:
            raise ApiError(422, f"encoding: cannot decode {req.path!r}: {err}",
                           safety=m.safety(entry)) from None  # fmt: skip
        return ok(entry, ReadFileResult(content=text))

    @r.post("/write_file", response_model=Envelope[WriteFileResult])
    async def write_file(req: WriteFileRequest) -> dict:
        entry = m.get(req.sandbox_id)
        if len(req.content) > m.limits.max_file_bytes:
            raise BodyTooLarge(m.limits.max_file_bytes, "content")
        where = await paths.write(entry.sandbox, req.path, req.content)
        return ok(entry, WriteFileResult(success=True, message=f"wrote {where}"))

    @r.post("/upload", response_model=Envelope[UploadResult])
    async def upload(
        file: Annotated[UploadFile, File()],
        target_path: Annotated[NonBlank, Form()],
        sandbox_id: Annotated[NonBlank, Form()],
    ) -> dict:
        entry = m.get(sandbox_id)
        limit = min(MAX_UPLOAD, m.limits.max_file_bytes)
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"file: larger than {limit} bytes", safety=m.safety(entry))
        where = await paths.write(entry.sandbox, target_path, data)
        name = os.path.basename(file.filename or target_path)
        return ok(entry, UploadResult(success=True, message=f"uploaded to {where}", file_name=name))

    @r.post("/stop", response_model=Envelope[str])
    async def stop(sandbox_id: Annotated[NonBlank, Body(embed=True)]) -> dict:
        entry = m.lookup(sandbox_id)
        was = entry.gone
        await m.stop(sandbox_id)
        return ok(
            entry,
            f"{sandbox_id} stopped" if was is None else f"{sandbox_id} already stopped ({was})",
        )

    return r


def _raise_if_gone(m: SandboxManager, entry: Entry, partial: object) -> None:
    """The sandbox was stopped while the command ran: say so, with what the command had printed,
    instead of passing the cut-off run off as a normal result."""
    if entry.gone is not None and not entry.sandbox.terminated:
        raise ApiError(410, f"sandbox {entry.sandbox.id!r} ended while the command ran "
                       f"({entry.gone})", safety=m.safety(entry),
                       result=partial.model_dump() if hasattr(partial, "model_dump") else partial)  # fmt: skip
