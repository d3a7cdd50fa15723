"""What each RL stack's route adds per step, against the in-process `Sandbox.exec` of the same
command: a ROCK session step (raw HTTP and through the rl-rock SDK), a SWE-ReX `RemoteRuntime` step,
and SandboxFusion's `/run_code` (a fresh sandbox per call, so it is also compared with starting,
running in and closing an in-process sandbox). One `corral serve` on loopback; medians and p95.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

STEPS = 100
RUN_CODE_CALLS = 20
ROCK = "/apis/envs/sandbox/v1"


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 3),
            "p95_ms": round(xs[max(0, int(len(xs) * 0.95) - 1)] * 1000, 3)}  # fmt: skip


async def _in_process(progress: Any, t: Any) -> tuple[list[float], list[float]]:
    from corral.sandbox.sandbox import Sandbox

    steps: list[float] = []
    async with Sandbox(store=False) as sb:
        for _ in range(STEPS):
            t0 = time.perf_counter()
            await sb.exec("echo hi")
            steps.append(time.perf_counter() - t0)
            progress.advance(t)
    fresh: list[float] = []
    for _ in range(RUN_CODE_CALLS):
        t0 = time.perf_counter()
        async with Sandbox(store=False) as sb:
            await sb.exec("python3 -c 'print(1)'")
        fresh.append(time.perf_counter() - t0)
        progress.advance(t)
    return steps, fresh


def _serve() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli.main", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/apis/corral/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("corral serve did not come up")
        time.sleep(0.05)


def _rock_raw(url: str, progress: Any, t: Any) -> list[float]:
    out: list[float] = []
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        sid = c.post(f"{ROCK}/start", json={}).json()["result"]["sandbox_id"]
        c.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "s"})
        body = {"sandbox_id": sid, "session": "s", "command": "echo hi"}
        for _ in range(STEPS):
            t0 = time.perf_counter()
            c.post(f"{ROCK}/run_in_session", json=body).raise_for_status()
            out.append(time.perf_counter() - t0)
            progress.advance(t)
        c.post(f"{ROCK}/stop", json={"sandbox_id": sid})
    return out


async def _rock_sdk(url: str, progress: Any, t: Any) -> list[float] | str:
    try:
        from rock.actions import Action, CreateBashSessionRequest
        from rock.sdk.sandbox.client import Sandbox
        from rock.sdk.sandbox.config import SandboxConfig
    except ImportError:
        return "rl-rock not installed (the clients extra)"
    sb = Sandbox(SandboxConfig(base_url=url, startup_timeout=30))
    await sb.start()
    await sb.create_session(CreateBashSessionRequest(session="s"))
    out: list[float] = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        await sb.run_in_session(Action(command="echo hi", session="s"))
        out.append(time.perf_counter() - t0)
        progress.advance(t)
    await sb.stop()
    return out


async def _swerex(url: str, progress: Any, t: Any) -> list[float] | str:
    try:
        from swerex.runtime.abstract import BashAction, CreateBashSessionRequest
        from swerex.runtime.remote import RemoteRuntime
    except ImportError:
        return "swe-rex not installed (the clients extra)"
    started = httpx.post(f"{url}/apis/corral/v1/swerex/start", timeout=30).json()
    rt = RemoteRuntime(host=started["url"], auth_token=started["auth_token"], timeout=10)
    await rt.create_session(CreateBashSessionRequest())
    out: list[float] = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        await rt.run_in_session(BashAction(command="echo hi"))
        out.append(time.perf_counter() - t0)
        progress.advance(t)
    await rt.close()
    return out


def _run_code(url: str, progress: Any, t: Any) -> list[float]:
    out: list[float] = []
    with httpx.Client(timeout=60, trust_env=False) as c:
        for _ in range(RUN_CODE_CALLS):
            t0 = time.perf_counter()
            body = c.post(f"{url}/run_code", json={"code": "print(1)", "language": "python"}).json()
            out.append(time.perf_counter() - t0)
            if body["status"] != "Success":
                raise RuntimeError(f"/run_code failed: {body}")
            progress.advance(t)
    return out


def run(progress: Any) -> dict[str, Any]:
    os.environ.setdefault("CORRAL_HOME", tempfile.mkdtemp(prefix="corral-bench-clients-"))
    t = progress.add_task("clients: routes vs in-process", total=5 * STEPS + 3 * RUN_CODE_CALLS)
    steps, fresh = asyncio.run(_in_process(progress, t))
    base = _ms(steps)
    out: dict[str, Any] = {"in_process_exec": base, "in_process_fresh_sandbox": _ms(fresh),
                           "steps": STEPS, "run_code_calls": RUN_CODE_CALLS}  # fmt: skip
    proc, url = _serve()
    try:
        routes: dict[str, list[float] | str] = {
            "rock_session_http": _rock_raw(url, progress, t),
            "rock_session_sdk": asyncio.run(_rock_sdk(url, progress, t)),
            "swerex_remote_runtime": asyncio.run(_swerex(url, progress, t)),
        }
        run_code = _run_code(url, progress, t)
    finally:
        proc.terminate()
        proc.wait(10)
    for name, xs in routes.items():
        if isinstance(xs, str):
            out[name] = {"skipped": xs}
            continue
        figs = _ms(xs)
        out[name] = {**figs, "added_median_ms": round(figs["median_ms"] - base["median_ms"], 3)}
    rc = _ms(run_code)
    out["run_code"] = {**rc, "added_vs_exec_median_ms": round(rc["median_ms"] - base["median_ms"], 3),
                       "added_vs_fresh_sandbox_median_ms":
                           round(rc["median_ms"] - out["in_process_fresh_sandbox"]["median_ms"], 3)}  # fmt: skip
    out["target"] = "a few ms added per session step on loopback; /run_code pays a sandbox start"
    return out


if __name__ == "__main__":
    import json

    from rich.progress import Progress

    with Progress() as p:
        print(json.dumps(run(p), indent=2))
