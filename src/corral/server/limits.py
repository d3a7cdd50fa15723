"""Bounded work for `corral serve`: request body and file transfer sizes (HTTP 413 beyond).

The body limit is an ASGI middleware, so an oversized request is refused from its Content-Length
before a byte of it is read, and a chunked one as soon as it passes the limit, whatever the route:
nothing buffers 100 MB to find out it was too much. File transfers (write_file, upload, read_file,
/run_code files) have their own, smaller limit, checked by the routes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from corral.rl.reward import EMPTY_SAFETY

MiB = 1024 * 1024
log = logging.getLogger("corral.serve")


@dataclass(frozen=True)
class Limits:
    """`max_request_bytes`: any request body; `max_file_bytes`: one file into or out of a sandbox
    (and all of one /run_code's files together)."""

    max_request_bytes: int = 64 * MiB
    max_file_bytes: int = 32 * MiB


class BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body reader passes it on instead of making it a 400."""

    def __init__(self, limit: int, what: str = "request body") -> None:
        self.limit = limit
        self.message = (f"{what}: larger than the server's limit of {limit} bytes "
                        "(corral serve --max-request-bytes / --max-file-bytes)")  # fmt: skip
        super().__init__(413, self.message)


def too_large_body(err: BodyTooLarge) -> dict[str, Any]:
    return {"status": "Failed", "message": err.message, "error": err.message, "result": None,
            "safety": dict(EMPTY_SAFETY)}  # fmt: skip


class body_limit:  # noqa: N801 - named like the other middleware factories Starlette takes
    """Refuse request bodies over `max_bytes` with 413; an unexpected error becomes a JSON 500
    that leaves the client's keep-alive connection usable (uvicorn closes it on an exception)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = -1
                if size > self.max_bytes:
                    await _refuse(send, BodyTooLarge(self.max_bytes))
                    return
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return msg

        async def watched(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as err:
            if started:
                raise
            await _refuse(send, err)
        except Exception as err:  # noqa: BLE001 - the last line: a JSON 500 that keeps the connection
            if started:
                raise
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            msg = f"internal error ({type(err).__name__}); the server log has the details"
            await _send_json(send, 500, {"status": "Failed", "message": msg, "error": msg,
                                         "result": None, "safety": dict(EMPTY_SAFETY)})  # fmt: skip


async def _refuse(send: Any, err: BodyTooLarge) -> None:
    # the unread rest of the body cannot be skipped on a kept-alive connection: close it
    await _send_json(send, 413, too_large_body(err), close=True)


async def _send_json(send: Any, status: int, content: dict[str, Any], close: bool = False) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
