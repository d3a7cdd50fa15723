"""ROCK's sandbox routes (alibaba/ROCK `rock/admin/entrypoints/sandbox_api.py`), on corral sandboxes.

Differences, on purpose: an unknown sandbox is 404 and an ended one 410 (ROCK answers 200 with
status Failed); `image` is accepted and ignored (the sandbox runs the host's read-only root). As in
ROCK each session is its own bash (`Sandbox.open_session`) in the one sandbox, so `cd` in one is not
seen in another; "default" is the sandbox's main shell, which `execute` also uses (in a subshell).
Under a policy with `gate.ask: callback`, run_in_session and execute answer HTTP 202 `Pending` when
the gate asks a person (see `corral.server.approvals`).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, Query, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from corral.sandbox.sandbox import ExecResult
from corral.sandbox.session import SessionEnded
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
PENDING: dict[int | str, dict[str, Any]] = {
    202: {"model": PendingEnvelope, "description": "the gate asked a person (policy gate.ask: "
          "callback): the command waits for POST /apis/corral/v1/approvals/{id}"}}  # fmt: skip


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter()

    def ok(entry: Entry, result: object, message: str | None = None) -> dict:
        return {"status": "Success", "message": message, "error": None, "result": result,
                "safety": m.safety(entry)}  # fmt: skip

    def start_result(entry: Entry) -> StartResult:
        lim = m.policy.limits
        return StartResult(sandbox_id=entry.sandbox.id, host_name=m.host_name,
                           host_ip="127.0.0.1", cpus=lim.cpus,
                           memory=str(lim.memory) if lim.memory else None,
                           episode_id=entry.sandbox.episode_id)  # fmt: skip

    async def _start(req: StartRequest) -> dict:
        entry = await m.start(episode_id=req.episode_id, image=req.image,
                              idle_minutes=req.auto_clear_time_minutes or req.auto_clear_time)  # fmt: skip
        return ok(entry, start_result(entry))

    @r.post("/start", response_model=Envelope[StartResult])
    async def start(req: StartRequest) -> dict:
        """Start a sandbox; ready for commands when this returns."""
        return await _start(req)

    @r.post("/start_async", response_model=Envelope[StartResult])
    async def start_async(req: StartRequest) -> dict:
        """Same as /start: a corral sandbox is ready in milliseconds, so there is nothing to poll."""
        return await _start(req)

    @r.get("/is_alive", response_model=Envelope[IsAliveResult])
    async def is_alive(sandbox_id: Annotated[NonBlank, Query()]) -> dict:
        entry = m.lookup(sandbox_id)
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
        lim = m.policy.limits
        res = StatusResult(
            sandbox_id=sb.id,
            status={"sandbox": {"status": "running" if alive else "stopped",
                                "message": "ready" if alive else reason}},
            state="running" if alive else "stopped",
            host_name=m.host_name, host_ip="127.0.0.1", is_alive=alive, image=entry.image,
            cpus=lim.cpus, memory=str(lim.memory) if lim.memory else None,
            corral={"episode_id": sb.episode_id, "policy": m.policy.name, "step": sb.step,
                    "init_pid": sb._init_pid, "shell_pid": sb.shell_pid() if alive else None,
                    "sessions": sorted(entry.sessions), "limits": sb.limits.mechanisms},
        )  # fmt: skip
        return ok(entry, res)

    def pending(entry: Entry, ap: Approval) -> JSONResponse:
        msg = (f"command needs approval {ap.id}: decide with POST /apis/corral/v1/approvals/"
               f"{ap.id}, then read its outcome with GET /apis/corral/v1/approvals/{ap.id}")  # fmt: skip
        body = {"status": "Pending", "message": msg, "error": None,
                "result": {"pending": ap.pending()}, "safety": m.safety(entry)}  # fmt: skip
        return JSONResponse(status_code=202, content=jsonable_encoder(body))

    @r.post("/execute", response_model=Envelope[CommandResult], responses=PENDING)
    async def execute(req: CommandRequest) -> Any:
        """A one-shot command in a subshell: the session's state is left as it was."""
        entry = m.get(req.sandbox_id)

        def finish(res: ExecResult) -> CommandResult:
            result = CommandResult(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)
            _raise_if_gone(m, entry, result)
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
        setup = [f"source {_q(s)}" for s in req.startup_source]
        for k, v in (req.env or {}).items():
            if not k.isidentifier():
                raise ApiError(422, f"env: {k!r} is not a valid variable name")
            setup.append(f"export {k}={_q(v)}")
        shell = None
        if req.session != "default":
            try:
                shell = await entry.sandbox.open_session(req.session)
            except SessionEnded as err:
                raise ApiError(503, f"session: {err}", safety=m.safety(entry)) from None
        entry.sessions[req.session] = shell
        output = ""
        if setup:
            res = await m.run(entry, "; ".join(setup), None, shell)
            output = res.output
        return ok(entry, CreateSessionResult(output=output))

    @r.post("/close_session", response_model=Envelope[CloseSessionResult])
    async def close_session(req: CloseSessionRequest) -> dict:
        """End a session's bash and what it started; the sandbox and other sessions go on."""
        entry = m.get(req.sandbox_id)
        if req.session not in entry.sessions:
            raise ApiError(404, f"session: no session {req.session!r} in sandbox "
                           f"{req.sandbox_id!r}", safety=m.safety(entry))  # fmt: skip
        shell = entry.sessions.pop(req.session)
        m.approvals.cancel_session(entry.sandbox.id, req.session, "session closed")
        if shell is not None:
            await shell.close("closed by /close_session")
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
            return obs

        out = await m.submit(entry, req.command, req.timeout, session=req.session,
                             route="run_in_session", finish=finish, shell=shell)  # fmt: skip
        return pending(entry, out) if isinstance(out, Approval) else ok(entry, out)

    @r.post("/read_file", response_model=Envelope[ReadFileResult])
    async def read_file(req: ReadFileRequest) -> dict:
        entry = m.get(req.sandbox_id)
        try:
            data = await entry.sandbox.read_file(req.path, max_bytes=m.limits.max_file_bytes + 1)
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
        where = await entry.sandbox.write_file(req.path, req.content)
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
        where = await entry.sandbox.write_file(target_path, data)
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


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _raise_if_gone(m: SandboxManager, entry: Entry, partial: object) -> None:
    """The sandbox was stopped while the command ran: say so, with what the command had printed,
    instead of passing the cut-off run off as a normal result. A policy end is a normal result
    (the command's own outcome) with `safety.terminated`; the next call gets 410."""
    if entry.gone is not None and not entry.sandbox.terminated:
        raise ApiError(410, f"sandbox {entry.sandbox.id!r} ended while the command ran "
                       f"({entry.gone})", safety=m.safety(entry),
                       result=partial.model_dump() if hasattr(partial, "model_dump") else partial)  # fmt: skip
