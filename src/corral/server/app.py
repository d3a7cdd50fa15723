"""`corral serve`: the FastAPI app.

Three faces on one manager: ROCK's sandbox API under `/apis/envs/sandbox/v1` (so a ROCK SDK rollout
switches by changing its base URL), SandboxFusion's `POST /run_code` (verl's code tools), and corral's
own env API under `/apis/corral/v1/env` (what `corral.rl.SandboxEnv(client=...)` speaks). Under a
policy with `gate.ask: callback`, a command the gate asks about answers HTTP 202 `Pending` and waits
for a decision at `/apis/corral/v1/approvals/{id}` (see `corral.server.approvals`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral import __version__
from corral.events.sink import RecordingFailed
from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.rl.reward import EMPTY_SAFETY
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed, SandboxRefused
from corral.server import approval_routes, env_routes, fusion, gem_routes, rock, swerex
from corral.server.auth import AuthError, Tokens, dependency, may_use
from corral.server.errors import http_error_message, invalid_request, os_error_status
from corral.server.limits import (
    BodyTooLarge,
    Limits,
    RequestTooLarge,
    body_limit,
    too_large_body,
)
from corral.server.manager import ApiError, SandboxManager
from corral.store.sqlite import EventStore, StoreWriteError


def create_app(policy: Policy | str | None = None, store: EventStore | None = None,
               approval_timeout: float = 300.0, tokens: Tokens | None = None,
               limits: Limits | None = None, warm: int = 0) -> FastAPI:  # fmt: skip
    """`approval_timeout`: seconds a command the gate asked about waits for a decision (policy
    `gate.ask: callback`) before it is refused as expired. `tokens`: who may call (see
    `corral.server.auth`; `corral serve` always passes them; None, for an app embedded in-process,
    asks for none). `limits`: request body and file transfer sizes (413 beyond). `warm`:
    sandboxes kept started per image, ready to hand out (`corral.sandbox.warm`)."""
    limits = limits or Limits()
    manager = SandboxManager(load_policy(policy), store, approval_timeout=approval_timeout,
                             limits=limits, warm=warm)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manager.warm is not None:
            manager.warm.start()
        yield
        await manager.shutdown()

    app = FastAPI(
        title="corral",
        version=__version__,
        description="Contained sandboxes for agentic RL: ROCK-compatible sandbox API, "
        "SandboxFusion /run_code, and a gym-style env API. Every response carries `safety`.",
        lifespan=lifespan,
        dependencies=[Depends(dependency(tokens or Tokens(open=True)))],
    )
    app.state.manager = manager
    app.add_middleware(body_limit, max_bytes=limits.max_request_bytes)

    @app.exception_handler(AuthError)
    async def _auth(request: Request, err: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(status_code=err.status, headers=headers, content={
            "status": "Failed", "message": err.message, "error": err.message, "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(status_code=err.status, content={
            "status": "Failed", "message": err.message, "error": err.message,
            "result": err.result, "safety": err.safety})  # fmt: skip

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
        # the rest of a request body over the limit is unread: the connection cannot be reused
        headers = {"Connection": "close"} if isinstance(err, RequestTooLarge) else None
        return JSONResponse(status_code=413, content=too_large_body(err), headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (an unknown path, a body that is not UTF-8) in the envelope."""
        msg = http_error_message(err)
        return JSONResponse(status_code=err.status_code, headers=err.headers, content={
            "status": "Failed", "message": msg, "error": msg, "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        msg, detail = invalid_request(err)
        return JSONResponse(status_code=422, content={
            "status": "Failed", "message": msg, "error": msg, "result": None, "detail": detail,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(SandboxRefused)
    async def _refused(request: Request, err: SandboxRefused) -> JSONResponse:
        return JSONResponse(status_code=503, content={
            "status": "Failed", "message": str(err), "error": err.cause, "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(SandboxClosed)
    async def _closed(request: Request, err: SandboxClosed) -> JSONResponse:
        msg = f"the sandbox is gone ({err.reason}); start a new one"
        return JSONResponse(status_code=410, content={
            "status": "Failed", "message": msg, "error": msg, "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(PathOutsideWorkspace)
    async def _outside(request: Request, err: PathOutsideWorkspace) -> JSONResponse:
        return JSONResponse(status_code=400, content={
            "status": "Failed", "message": f"path: {err}", "error": str(err), "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(RecordingFailed)
    @app.exception_handler(StoreWriteError)
    async def _unrecorded(request: Request, err: Exception) -> JSONResponse:
        msg = f"events cannot be recorded, so nothing was run: {err}"
        return JSONResponse(status_code=507, content={
            "status": "Failed", "message": msg, "error": msg, "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.exception_handler(OSError)
    async def _os_error(request: Request, err: OSError) -> JSONResponse:
        status, msg = os_error_status(err)
        return JSONResponse(status_code=status, content={
            "status": "Failed", "message": msg, "error": msg, "result": None,
            "safety": dict(EMPTY_SAFETY)})  # fmt: skip

    @app.get("/apis/corral/v1/health", tags=["corral"])
    async def health() -> dict[str, Any]:
        return {"status": "Success", "result": {"version": __version__,
                "policy": manager.policy.name,
                "sandboxes": sum(1 for e in manager.live.values() if may_use(e.owner))},
                "safety": dict(EMPTY_SAFETY)}  # fmt: skip

    app.include_router(rock.router(manager), prefix="/apis/envs/sandbox/v1", tags=["rock"])
    app.include_router(fusion.router(manager), tags=["sandboxfusion"])
    # SWE-ReX: /start behind the app's authentication; the per-sandbox routes are mounted apart
    # (RemoteRuntime sends only X-API-Key) and check their own per-sandbox token
    swerex_tokens: dict[str, str] = {}
    app.include_router(swerex.start_router(manager, swerex_tokens), prefix=swerex.PREFIX,
                       tags=["swe-rex"])  # fmt: skip
    app.mount(swerex.PREFIX, swerex.runtime_app(manager, swerex_tokens))
    app.include_router(gem_routes.router(manager), prefix=gem_routes.PREFIX, tags=["rock-gem"])
    app.include_router(env_routes.router(manager), prefix="/apis/corral/v1/env", tags=["env"])
    app.include_router(approval_routes.router(manager), prefix="/apis/corral/v1/approvals",
                       tags=["approvals"])  # fmt: skip
    return app
