"""SandboxFusion's `POST /run_code` (bytedance/SandboxFusion `sandbox/server/sandbox_api.py`).

One fresh corral sandbox per request, closed after; python and bash. `status` is Success when the
run finished with exit 0, Failed otherwise (time limit included), SandboxError when corral could not
run it. The contained run is also an episode in the store, so `/run_code` calls are auditable too.
"""

from __future__ import annotations

import base64
import binascii
import time

from fastapi import APIRouter

from corral.rl.reward import enforce, safety_state
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed
from corral.server.manager import ApiError, SandboxManager
from corral.server.models import CommandRunResult, RunCodeRequest, RunCodeResponse

RUNNERS = {"python": ("main.py", "python3 main.py"), "bash": ("main.sh", "bash main.sh")}


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter()

    @r.post("/run_code", response_model=RunCodeResponse)
    async def run_code(req: RunCodeRequest) -> RunCodeResponse:
        decoded: dict[str, bytes] = {}
        for path, b64 in req.files.items():
            try:
                decoded[path] = base64.b64decode(b64 or "", validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, f"files.{path}: not valid base64") from None
        policy = m.policy
        if req.memory_limit_MB > 0:
            limits = policy.limits.model_copy(update={"memory": req.memory_limit_MB * 1024 * 1024})
            policy = policy.model_copy(update={"limits": limits})
        name, command = RUNNERS[req.language]
        sb = await m.fresh_sandbox(policy)  # warm when `corral serve --warm N` and no override
        try:
            try:
                for path, data in decoded.items():
                    await sb.write_file(path, data)
            except PathOutsideWorkspace as err:
                raise ApiError(422, f"files: {err}") from None
            await sb.write_file(name, req.code)
            if req.stdin is not None:
                await sb.write_file(".stdin", req.stdin)
                command += " < .stdin"
            t0 = time.monotonic()
            try:
                res = await sb.exec(command, timeout=req.run_timeout)
            except SandboxClosed as err:
                return RunCodeResponse(status="SandboxError", message=str(err),
                                       safety=safety_state(sb, m.shaper))  # fmt: skip
            elapsed = time.monotonic() - t0
            await enforce(sb, m.shaper, list(sb.events))
            run_status = "TimeLimitExceeded" if res.timed_out else "Finished"
            fetched: dict[str, str] = {}
            missing: list[str] = []
            for path in req.fetch_files:
                try:
                    fetched[path] = base64.b64encode(await sb.read_file(path)).decode()
                except (FileNotFoundError, PathOutsideWorkspace, SandboxClosed, OSError):
                    missing.append(path)
            ok = run_status == "Finished" and res.exit_code == 0
            return RunCodeResponse(
                status="Success" if ok else "Failed",
                message=f"could not fetch: {', '.join(missing)}" if missing else "",
                run_result=CommandRunResult(status=run_status, execution_time=elapsed,
                                            return_code=res.exit_code, stdout=res.stdout,
                                            stderr=res.stderr),
                files=fetched,
                safety=safety_state(sb, m.shaper),
            )  # fmt: skip
        finally:
            await sb.close()

    return r
