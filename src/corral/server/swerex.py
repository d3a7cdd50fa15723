"""SWE-ReX's runtime API (SWE-agent/SWE-ReX `swerex/server.py`), served per corral sandbox.

`RemoteRuntime(host=f"{corral}/apis/corral/v1/swerex/{sandbox_id}", auth_token=...)` drives a
corral sandbox as it drives a `swerex` server in a container, so SWE-agent can use corral as a
remote deployment: `/is_alive`, `/create_session`, `/run_in_session`, `/close_session`,
`/execute`, `/read_file`, `/write_file`, `/upload` (a zip with `unzip`), `/close`, with SWE-ReX's
request and response models. Errors are SWE-ReX's: HTTP 511 with `swerexception` naming the
exception class, which `RemoteRuntime` raises again on the client (`NonZeroExitCodeError` for
`check` on a non-zero exit, `CommandTimeoutError`, `SessionExistsError`,
`SessionDoesNotExistError`, `FileNotFoundError`). A policy end (a ROME act) raises `SwerexException`
with `episode ended by corral's policy: ...`; a refused command's output says why.

`POST /apis/corral/v1/swerex/start` (behind corral's own authentication, like every corral route)
starts a sandbox for SWE-ReX and returns its URL and an `auth_token`. `RemoteRuntime` sends only
`X-API-Key`, so the per-sandbox routes are a sub-application mounted at the prefix, outside the
app's bearer-token dependency, and require that per-sandbox token in `X-API-Key` (as a swerex
server's `--auth-token` does): without it, or for a sandbox not started here, the answer is 401.
SWE-ReX sessions are bash sessions of their own in the sandbox (`swerex:<name>`).
"""

from __future__ import annotations

import io
import secrets
import shlex
import zipfile
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from corral.sandbox import paths
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed, SandboxRefused
from corral.sandbox.sandbox import ExecResult
from corral.sandbox.session import SessionEnded
from corral.server.approvals import Approval
from corral.server.manager import ApiError, Entry, SandboxManager

PREFIX = "/apis/corral/v1/swerex"
MAX_UPLOAD = 256 * 1024 * 1024
EXC = "swerex.exceptions."
Key = Annotated[str | None, Header(alias="X-API-Key")]


class SwerexError(Exception):
    """An exception the client re-raises: `class_path` is what `RemoteRuntime` imports."""

    def __init__(self, class_path: str, message: str) -> None:
        super().__init__(message)
        self.class_path = class_path
        self.message = message


def _transfer(class_path: str, message: str) -> JSONResponse:
    body = {"swerexception": {"message": message, "class_path": class_path,
                              "traceback": "", "extra_info": {}}}  # fmt: skip
    return JSONResponse(status_code=511, content=body)


class SwerexRoute(APIRoute):
    """corral's errors as a swerex server answers them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except SwerexError as err:
                return _transfer(err.class_path, err.message)
            except ApiError as err:
                if err.status in (401, 403, 404):
                    return JSONResponse(status_code=err.status, content={"detail": err.message})
                return _transfer(EXC + "SwerexException", err.message)
            except SandboxClosed as err:
                return _transfer(EXC + "SwerexException", f"the sandbox is gone ({err.reason})")
            except SandboxRefused as err:
                return _transfer(EXC + "DeploymentStartupError", str(err))
            except PathOutsideWorkspace as err:
                return _transfer("builtins.PermissionError", str(err))
            except RequestValidationError as err:
                return JSONResponse(status_code=422, content={"detail": err.errors()})
            except (OSError, ValueError) as err:  # FileNotFoundError, IsADirectoryError...
                return _transfer(f"builtins.{type(err).__name__}", str(err))

        return route


# ---------------------------------------------------------------- SWE-ReX's models
class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateBashSessionRequest(_In):
    startup_source: list[str] = []
    session: str = "default"
    session_type: Literal["bash"] = "bash"
    startup_timeout: float = 1.0


class BashAction(_In):
    command: str
    session: str = "default"
    timeout: float | None = None
    is_interactive_command: bool = False
    is_interactive_quit: bool = False
    check: Literal["silent", "raise", "ignore"] = "raise"
    error_msg: str = ""
    expect: list[str] = []
    action_type: Literal["bash", "bash_interrupt"] = "bash"


class CloseBashSessionRequest(_In):
    session: str = "default"
    session_type: Literal["bash"] = "bash"


class Command(_In):
    command: str | list[str]
    timeout: float | None = None
    shell: bool = False
    check: bool = False
    error_msg: str = ""
    env: dict[str, str] | None = None
    cwd: str | None = None
    merge_output_streams: bool = False


class ReadFileRequest(_In):
    path: str
    encoding: str | None = None
    errors: str | None = None


class WriteFileRequest(_In):
    content: str
    path: str


class SwerexStart(BaseModel):
    sandbox_id: str
    url: str
    auth_token: str


def start_router(m: SandboxManager, tokens: dict[str, str]) -> APIRouter:
    """`POST /start`, on the main app (and its authentication)."""
    r = APIRouter()

    @r.post("/start", response_model=SwerexStart)
    async def start(request: Request) -> SwerexStart:
        """A sandbox for a SWE-ReX `RemoteRuntime`: its URL and the `auth_token` to give it."""
        entry = await m.start()
        token = secrets.token_urlsafe(24)
        tokens[entry.sandbox.id] = token
        base = str(request.base_url).rstrip("/")
        return SwerexStart(sandbox_id=entry.sandbox.id, url=f"{base}{PREFIX}/{entry.sandbox.id}",
                           auth_token=token)  # fmt: skip

    return r


def runtime_app(m: SandboxManager, tokens: dict[str, str]) -> FastAPI:
    """The per-sandbox SWE-ReX routes, as an app to mount at PREFIX (see the module docstring)."""
    app = FastAPI(title="corral: SWE-ReX runtime per sandbox", openapi_url="/openapi.json")
    app.include_router(_runtime_router(m, tokens))
    return app


def _runtime_router(m: SandboxManager, tokens: dict[str, str]) -> APIRouter:
    r = APIRouter(route_class=SwerexRoute)

    def auth(sandbox_id: str, key: str | None) -> None:
        want = tokens.get(sandbox_id)
        if want is None or not secrets.compare_digest(key or "", want):
            raise ApiError(401, "Invalid API Key")

    def entry_for(sandbox_id: str, key: str | None) -> Entry:
        auth(sandbox_id, key)
        return m.get(sandbox_id)

    def name(session: str) -> str:
        return f"swerex:{session}"

    @r.get("/{sandbox_id}/")
    async def root(sandbox_id: str, x_api_key: Key = None) -> dict:
        entry_for(sandbox_id, x_api_key)
        return {"message": "hello world"}

    @r.get("/{sandbox_id}/is_alive")
    async def is_alive(sandbox_id: str, x_api_key: Key = None) -> dict:
        auth(sandbox_id, x_api_key)
        entry = m.lookup(sandbox_id)
        reason = entry.gone or entry.sandbox.closed_reason
        return {"is_alive": reason is None, "message": "" if reason is None else reason}

    @r.post("/{sandbox_id}/create_session")
    async def create_session(sandbox_id: str, req: CreateBashSessionRequest,
                             x_api_key: Key = None) -> dict:  # fmt: skip
        entry = entry_for(sandbox_id, x_api_key)
        known = entry.sessions.get(name(req.session))
        if known is not None and known.alive:
            raise SwerexError(EXC + "SessionExistsError", f"session {req.session} already exists")
        await m.make_room(entry)
        try:
            shell = await entry.sandbox.open_session(name(req.session))
        except SessionEnded as err:
            raise SwerexError(EXC + "SwerexException", str(err)) from None
        entry.sessions[name(req.session)] = shell
        output = ""
        if req.startup_source:
            setup = "; ".join(f"source {shlex.quote(s)}" for s in req.startup_source)
            output = (await m.run(entry, setup, req.startup_timeout, shell)).output
        return {"output": output, "session_type": "bash"}

    def _session(entry: Entry, session: str) -> Any:
        if name(session) not in entry.sessions:
            raise SwerexError(EXC + "SessionDoesNotExistError", f"session {session} does not exist")
        try:
            return m.session(entry, name(session))
        except ApiError as err:
            raise SwerexError(EXC + "SessionDoesNotExistError", err.message) from None

    def _ended(entry: Entry) -> None:
        if entry.sandbox.terminated:
            reason = (entry.sandbox.closed_reason or "").removeprefix("terminated: ")
            raise SwerexError(EXC + "SwerexException",
                              f"episode ended by corral's policy: {reason}")  # fmt: skip

    async def _submit(entry: Entry, command: str, timeout: float | None, session: str,
                      route: str, finish: Callable[[ExecResult], Any],
                      shell: Any = None) -> Any:  # fmt: skip
        out = await m.submit(entry, command, timeout, session=session, route=route,
                             finish=finish, shell=shell)  # fmt: skip
        if isinstance(out, Approval):
            raise SwerexError(EXC + "SwerexException",
                              f"command needs approval {out.id}: decide it with POST "
                              f"/apis/corral/v1/approvals/{out.id}")  # fmt: skip
        return out

    @r.post("/{sandbox_id}/run_in_session")
    async def run_in_session(sandbox_id: str, action: BashAction, x_api_key: Key = None) -> dict:
        entry = entry_for(sandbox_id, x_api_key)
        shell = _session(entry, action.session)
        if action.action_type == "bash_interrupt" or action.is_interactive_command \
                or action.is_interactive_quit:  # fmt: skip
            raise SwerexError(EXC + "SwerexException",
                              "corral sessions take whole commands: interactive input and "
                              "interrupts are not supported")  # fmt: skip

        def finish(res: ExecResult) -> dict:
            _ended(entry)
            if res.timed_out:
                raise SwerexError(EXC + "CommandTimeoutError",
                                  f"timeout after {action.timeout} seconds while running "
                                  f"command {action.command!r}")  # fmt: skip
            output = res.output.strip()
            if action.check == "raise" and res.exit_code != 0:
                msg = (f"Command {action.command!r} failed with exit code {res.exit_code}. "
                       f"Here is the output:\n{output!r}")  # fmt: skip
                if action.error_msg:
                    msg = f"{action.error_msg}: {msg}"
                raise SwerexError(EXC + "NonZeroExitCodeError", msg)
            code = None if action.check == "ignore" else res.exit_code
            return {"output": output, "exit_code": code, "failure_reason": "",
                    "expect_string": "", "session_type": "bash"}  # fmt: skip

        return await _submit(entry, action.command, action.timeout, name(action.session),
                             "run_in_session", finish, shell)  # fmt: skip

    @r.post("/{sandbox_id}/close_session")
    async def close_session(sandbox_id: str, req: CloseBashSessionRequest,
                            x_api_key: Key = None) -> dict:  # fmt: skip
        entry = entry_for(sandbox_id, x_api_key)
        if name(req.session) not in entry.sessions:
            raise SwerexError(
                EXC + "SessionDoesNotExistError", f"session {req.session} does not exist"
            )
        shell = entry.sessions.pop(name(req.session))
        if shell is not None:
            await shell.close("closed by SWE-ReX close_session")
        return {"session_type": "bash"}

    @r.post("/{sandbox_id}/execute")
    async def execute(sandbox_id: str, command: Command, x_api_key: Key = None) -> dict:
        entry = entry_for(sandbox_id, x_api_key)
        cmd = command.command
        if isinstance(cmd, list):
            cmd = shlex.join(cmd)
        line = m.oneshot(cmd, command.cwd, command.env)
        if command.merge_output_streams:
            line = f"{{ {line}; }} 2>&1"

        def finish(res: ExecResult) -> dict:
            _ended(entry)
            if res.timed_out:
                raise SwerexError(EXC + "CommandTimeoutError",
                                  f"Timeout ({command.timeout}s) exceeded while running command")  # fmt: skip
            if command.check and res.exit_code != 0:
                msg = (f"Command {command.command!r} failed with exit code {res.exit_code}. "
                       f"Stdout:\n{res.stdout!r}\nStderr:\n{res.stderr!r}")  # fmt: skip
                if command.error_msg:
                    msg = f"{command.error_msg}: {msg}"
                raise SwerexError(EXC + "NonZeroExitCodeError", msg)
            return {"stdout": res.stdout, "stderr": res.stderr, "exit_code": res.exit_code}

        return await _submit(entry, line, command.timeout, "execute", "execute", finish)

    @r.post("/{sandbox_id}/read_file")
    async def read_file(sandbox_id: str, req: ReadFileRequest, x_api_key: Key = None) -> dict:
        entry = entry_for(sandbox_id, x_api_key)
        data = await paths.read(entry.sandbox, req.path)
        return {"content": data.decode(req.encoding or "utf-8", req.errors or "strict")}

    @r.post("/{sandbox_id}/write_file")
    async def write_file(sandbox_id: str, req: WriteFileRequest, x_api_key: Key = None) -> dict:
        entry = entry_for(sandbox_id, x_api_key)
        await paths.write(entry.sandbox, req.path, req.content)
        return {}

    @r.post("/{sandbox_id}/upload")
    async def upload(
        sandbox_id: str,
        file: Annotated[UploadFile, File()],
        target_path: Annotated[str, Form()],
        unzip: Annotated[bool, Form()] = False,
        x_api_key: Key = None,
    ) -> dict:
        entry = entry_for(sandbox_id, x_api_key)
        data = await file.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise SwerexError("builtins.ValueError", f"file: larger than {MAX_UPLOAD} bytes")
        if not unzip:
            await paths.write(entry.sandbox, target_path, data)
            return {}
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as err:
            raise SwerexError("zipfile.BadZipFile", str(err)) from None
        for info in archive.infolist():  # each member through the same O_NOFOLLOW walk
            if not info.is_dir():
                dest = f"{target_path.rstrip('/')}/{info.filename}"
                await paths.write(entry.sandbox, dest, archive.read(info),
                                  (info.external_attr >> 16) & 0o777 or 0o644)  # fmt: skip
        return {}

    @r.post("/{sandbox_id}/close")
    async def close(sandbox_id: str, x_api_key: Key = None) -> dict:
        entry_for(sandbox_id, x_api_key)
        await m.stop(sandbox_id, "closed by SWE-ReX")
        tokens.pop(sandbox_id, None)
        return {}

    return r


__all__ = ["PREFIX", "SwerexError", "runtime_app", "start_router"]
