"""The two clients share one table of calls; only the transport differs.

Both send the service's token (see `corral.server.auth`): the `token` argument, else the
`CORRAL_TOKEN` environment variable, else (for a server on this host only) the admin token that
`corral serve` made in `$CORRAL_HOME/serve.token`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROCK = "/apis/envs/sandbox/v1"
ENV = "/apis/corral/v1/env"
APPROVALS = "/apis/corral/v1/approvals"


class CorralAPIError(RuntimeError):
    def __init__(self, status_code: int, body: dict[str, Any] | str) -> None:
        self.status_code = status_code
        self.body = body if isinstance(body, dict) else {"message": body}
        self.safety = self.body.get("safety")
        self.message = str(self.body.get("message") or self.body.get("error") or body)
        super().__init__(f"HTTP {status_code}: {self.message}")


def _token(base_url: str, token: str | None) -> str | None:
    if token:
        return token
    if os.environ.get("CORRAL_TOKEN"):
        return os.environ["CORRAL_TOKEN"].strip()
    host = urlsplit(base_url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        from corral.store.paths import corral_home

        try:
            return (corral_home() / "serve.token").read_text().strip() or None
        except OSError:
            return None
    return None


def _headers(base_url: str, token: str | None) -> dict[str, str]:
    t = _token(base_url, token)
    return {"Authorization": f"Bearer {t}"} if t else {}


def _check(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code >= 400 or not isinstance(body, dict) or body.get("status") == "Failed":
        # ROCK routes answer failures as HTTP 200 (as ROCK does) with corral's status in a header
        raise CorralAPIError(int(resp.headers.get("X-Corral-Status", resp.status_code)), body)
    return body


def _body(resp: httpx.Response) -> dict[str, Any] | str:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def pending(body: dict[str, Any]) -> dict[str, Any] | None:
    """The pending approval of a run_in_session / execute answer (HTTP 202), or None if it ran."""
    if body.get("status") != "Pending":
        return None
    return (body.get("result") or {}).get("pending")


def _decision(decision: str, by: str | None, reason: str | None) -> dict[str, Any]:
    return {"decision": decision, "by": by, "reason": reason}


def _list_params(status: str, sandbox_id: str | None) -> dict[str, Any]:
    return {"status": status} | ({"sandbox_id": sandbox_id} if sandbox_id else {})


def _start_body(episode_id: str | None, auto_clear_minutes: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if episode_id:
        body["episode_id"] = episode_id
    if auto_clear_minutes:
        body["auto_clear_time_minutes"] = auto_clear_minutes
    return body


class CorralClient:
    """Synchronous client; `with CorralClient(url) as c: sid = c.start()["result"]["sandbox_id"]`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 660.0,
                 token: str | None = None, verify: Any = True) -> None:  # fmt: skip
        """`token`: the service's token (default: CORRAL_TOKEN); `verify`: TLS verification, as
        httpx takes it (a CA bundle path for a self-signed --ssl-certfile)."""
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            trust_env=False,
            headers=_headers(self.base_url, token),
            verify=verify,
        )

    def __enter__(self) -> CorralClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _check(self.http.post(path, json=body))

    def _get(self, path: str, **params: Any) -> dict[str, Any]:
        return _check(self.http.get(path, params=params))

    # ROCK sandbox API
    def start(
        self, episode_id: str | None = None, auto_clear_minutes: float | None = None
    ) -> dict[str, Any]:
        return self._post(f"{ROCK}/start", _start_body(episode_id, auto_clear_minutes))

    def is_alive(self, sandbox_id: str) -> dict[str, Any]:
        return self._get(f"{ROCK}/is_alive", sandbox_id=sandbox_id)

    def get_status(self, sandbox_id: str) -> dict[str, Any]:
        return self._get(f"{ROCK}/get_status", sandbox_id=sandbox_id)

    def create_session(self, sandbox_id: str, session: str = "default",
                       env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        return self._post(f"{ROCK}/create_session",
                          {"sandbox_id": sandbox_id, "session": session, "env": env})  # fmt: skip

    def run_in_session(self, sandbox_id: str, command: str, session: str = "default",
                       timeout: float | None = None, check: str = "silent") -> dict[str, Any]:  # fmt: skip
        """`check`: ROCK's; "silent" (corral's default) answers a non-zero exit as a result,
        "raise" (ROCK's default) as a failure."""
        return self._post(f"{ROCK}/run_in_session", {"sandbox_id": sandbox_id, "command": command,
                          "session": session, "timeout": timeout, "check": check})  # fmt: skip

    def execute(self, sandbox_id: str, command: str | list[str], timeout: float | None = None,
                cwd: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        return self._post(f"{ROCK}/execute", {"sandbox_id": sandbox_id, "command": command,
                          "timeout": timeout, "cwd": cwd, "env": env})  # fmt: skip

    def read_file(self, sandbox_id: str, path: str) -> dict[str, Any]:
        return self._post(f"{ROCK}/read_file", {"sandbox_id": sandbox_id, "path": path})

    def write_file(self, sandbox_id: str, path: str, content: str) -> dict[str, Any]:
        return self._post(f"{ROCK}/write_file",
                          {"sandbox_id": sandbox_id, "path": path, "content": content})  # fmt: skip

    def upload(self, sandbox_id: str, local: str | Path, target_path: str) -> dict[str, Any]:
        p = Path(local)
        with p.open("rb") as f:
            resp = self.http.post(f"{ROCK}/upload", data={"sandbox_id": sandbox_id,
                                  "target_path": target_path}, files={"file": (p.name, f)})  # fmt: skip
        return _check(resp)

    def stop(self, sandbox_id: str) -> dict[str, Any]:
        return self._post(f"{ROCK}/stop", {"sandbox_id": sandbox_id})

    # SandboxFusion
    def run_code(self, code: str, language: str = "python", **fields: Any) -> dict[str, Any]:
        resp = self.http.post("/run_code", json={"code": code, "language": language, **fields})
        if resp.status_code >= 400:
            raise CorralAPIError(resp.status_code, _body(resp))
        return resp.json()

    # env
    def env_reset(self, task: dict[str, Any] | None = None, seed: int | None = None,
                  episode_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        return self._post(
            f"{ENV}/reset", {"task": task or {}, "seed": seed, "episode_id": episode_id}
        )

    def env_step(self, episode_id: str, action: str) -> dict[str, Any]:
        return self._post(f"{ENV}/step", {"episode_id": episode_id, "action": action})

    def env_close(self, episode_id: str) -> dict[str, Any]:
        return self._post(f"{ENV}/close", {"episode_id": episode_id})

    # approvals of the gate's ask verdicts (policy gate.ask: callback)
    def approvals(self, status: str = "pending", sandbox_id: str | None = None) -> dict[str, Any]:
        return _check(self.http.get(APPROVALS, params=_list_params(status, sandbox_id)))

    def approval(self, approval_id: str, wait: float = 0) -> dict[str, Any]:
        """One approval; `wait` seconds for its command to finish (its `outcome`)."""
        return self._get(f"{APPROVALS}/{approval_id}", wait=wait)

    def decide(self, approval_id: str, decision: str, by: str | None = None,
               reason: str | None = None) -> dict[str, Any]:  # fmt: skip
        return self._post(f"{APPROVALS}/{approval_id}", _decision(decision, by, reason))

    def approve(self, approval_id: str, by: str | None = None) -> dict[str, Any]:
        return self.decide(approval_id, "approve", by)

    def deny(self, approval_id: str, by: str | None = None, reason: str | None = None
             ) -> dict[str, Any]:  # fmt: skip
        return self.decide(approval_id, "deny", by, reason)

    def health(self) -> dict[str, Any]:
        return self._get("/apis/corral/v1/health")


class AsyncCorralClient:
    """Async twin of `CorralClient` (same methods, awaitable)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 660.0,
                 token: str | None = None, verify: Any = True) -> None:  # fmt: skip
        """`token`: the service's token (default: CORRAL_TOKEN); `verify`: TLS verification, as
        httpx takes it (a CA bundle path for a self-signed --ssl-certfile)."""
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            trust_env=False,
            headers=_headers(self.base_url, token),
            verify=verify,
        )

    async def __aenter__(self) -> AsyncCorralClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _check(await self.http.post(path, json=body))

    async def _get(self, path: str, **params: Any) -> dict[str, Any]:
        return _check(await self.http.get(path, params=params))

    async def start(self, episode_id: str | None = None,
                    auto_clear_minutes: float | None = None) -> dict[str, Any]:  # fmt: skip
        return await self._post(f"{ROCK}/start", _start_body(episode_id, auto_clear_minutes))

    async def is_alive(self, sandbox_id: str) -> dict[str, Any]:
        return await self._get(f"{ROCK}/is_alive", sandbox_id=sandbox_id)

    async def get_status(self, sandbox_id: str) -> dict[str, Any]:
        return await self._get(f"{ROCK}/get_status", sandbox_id=sandbox_id)

    async def create_session(self, sandbox_id: str, session: str = "default",
                             env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        return await self._post(f"{ROCK}/create_session",
                                {"sandbox_id": sandbox_id, "session": session, "env": env})  # fmt: skip

    async def run_in_session(self, sandbox_id: str, command: str, session: str = "default",
                             timeout: float | None = None, check: str = "silent") -> dict[str, Any]:  # fmt: skip
        return await self._post(f"{ROCK}/run_in_session", {"sandbox_id": sandbox_id,
                                "command": command, "session": session, "timeout": timeout,
                                "check": check})  # fmt: skip

    async def execute(self, sandbox_id: str, command: str | list[str], timeout: float | None = None,
                      cwd: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        return await self._post(f"{ROCK}/execute", {"sandbox_id": sandbox_id, "command": command,
                                "timeout": timeout, "cwd": cwd, "env": env})  # fmt: skip

    async def read_file(self, sandbox_id: str, path: str) -> dict[str, Any]:
        return await self._post(f"{ROCK}/read_file", {"sandbox_id": sandbox_id, "path": path})

    async def write_file(self, sandbox_id: str, path: str, content: str) -> dict[str, Any]:
        return await self._post(f"{ROCK}/write_file",
                                {"sandbox_id": sandbox_id, "path": path, "content": content})  # fmt: skip

    async def upload(self, sandbox_id: str, local: str | Path, target_path: str) -> dict[str, Any]:
        p = Path(local)
        resp = await self.http.post(f"{ROCK}/upload", data={"sandbox_id": sandbox_id,
                                    "target_path": target_path},
                                    files={"file": (p.name, p.read_bytes())})  # fmt: skip
        return _check(resp)

    async def stop(self, sandbox_id: str) -> dict[str, Any]:
        return await self._post(f"{ROCK}/stop", {"sandbox_id": sandbox_id})

    async def run_code(self, code: str, language: str = "python", **fields: Any) -> dict[str, Any]:
        resp = await self.http.post(
            "/run_code", json={"code": code, "language": language, **fields}
        )
        if resp.status_code >= 400:
            raise CorralAPIError(resp.status_code, _body(resp))
        return resp.json()

    async def env_reset(self, task: dict[str, Any] | None = None, seed: int | None = None,
                        episode_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        return await self._post(f"{ENV}/reset",
                                {"task": task or {}, "seed": seed, "episode_id": episode_id})  # fmt: skip

    async def env_step(self, episode_id: str, action: str) -> dict[str, Any]:
        return await self._post(f"{ENV}/step", {"episode_id": episode_id, "action": action})

    async def env_close(self, episode_id: str) -> dict[str, Any]:
        return await self._post(f"{ENV}/close", {"episode_id": episode_id})

    async def approvals(self, status: str = "pending",
                        sandbox_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        return _check(await self.http.get(APPROVALS, params=_list_params(status, sandbox_id)))

    async def approval(self, approval_id: str, wait: float = 0) -> dict[str, Any]:
        return await self._get(f"{APPROVALS}/{approval_id}", wait=wait)

    async def decide(self, approval_id: str, decision: str, by: str | None = None,
                     reason: str | None = None) -> dict[str, Any]:  # fmt: skip
        return await self._post(f"{APPROVALS}/{approval_id}", _decision(decision, by, reason))

    async def approve(self, approval_id: str, by: str | None = None) -> dict[str, Any]:
        return await self.decide(approval_id, "approve", by)

    async def deny(self, approval_id: str, by: str | None = None,
                   reason: str | None = None) -> dict[str, Any]:  # fmt: skip
        return await self.decide(approval_id, "deny", by, reason)

    async def health(self) -> dict[str, Any]:
        return await self._get("/apis/corral/v1/health")
