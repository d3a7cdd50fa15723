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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from corral import __version__
from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.rl.reward import EMPTY_SAFETY
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed, SandboxRefused
from corral.server import approval_routes, env_routes, fusion, rock
from corral.server.manager import ApiError, SandboxManager
from corral.store.sqlite import EventStore


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "form")]
    return ".".join(parts) or "body"


def create_app(policy: Policy | str | None = None, store: EventStore | None = None,
               approval_timeout: float = 300.0, warm: int = 0) -> FastAPI:  # fmt: skip
    """`approval_timeout`: seconds a command the gate asked about waits for a decision (policy
    `gate.ask: callback`) before it is refused as expired. `warm`: sandboxes kept started per
    image, ready to hand out (`corral.sandbox.warm`)."""
    manager = SandboxManager(load_policy(policy), store, approval_timeout=approval_timeout,
                             warm=warm)  # fmt: skip

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
    )
    app.state.manager = manager

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(status_code=err.status, content={
            "status": "Failed", "message": err.message, "error": err.message,
            "result": err.result, "safety": err.safety})  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{_field(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in err.errors()]
        msg = "invalid request: " + "; ".join(problems)
        detail = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg"),
                   "type": e.get("type")} for e in err.errors()]  # fmt: skip
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

    @app.get("/apis/corral/v1/health", tags=["corral"])
    async def health() -> dict[str, Any]:
        return {"status": "Success", "result": {"version": __version__,
                "policy": manager.policy.name, "sandboxes": len(manager.live)},
                "safety": dict(EMPTY_SAFETY)}  # fmt: skip

    app.include_router(rock.router(manager), prefix="/apis/envs/sandbox/v1", tags=["rock"])
    app.include_router(fusion.router(manager), tags=["sandboxfusion"])
    app.include_router(env_routes.router(manager), prefix="/apis/corral/v1/env", tags=["env"])
    app.include_router(approval_routes.router(manager), prefix="/apis/corral/v1/approvals",
                       tags=["approvals"])  # fmt: skip
    return app
