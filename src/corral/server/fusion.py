"""SandboxFusion's `POST /run_code` and `POST /run_jupyter` (bytedance/SandboxFusion
`sandbox/server/sandbox_api.py`, runners in `sandbox/runners/`), each request in a fresh corral
sandbox, closed after.

Every language SandboxFusion defines is accepted. Each runs as SandboxFusion runs it (`g++
-std=c++17 ... -o test` then `./test`, `javac Main.java` then `java -ea Main`, `pytest file.py`...)
when the sandbox's root has the toolchain; when it does not, the answer is SandboxFusion's own error
shape (`status: SandboxError` with the reason in `message`, no results), as SandboxFusion answers a
runner that cannot run, so verl scores it as a sandbox error (-1), not as a wrong answer. Status
follows SandboxFusion's `parse_run_status`: Success when every step finished with exit 0, Failed
for a non-zero exit or a time limit.

`files` and `fetch_files` take workspace-relative paths or absolute ones inside the sandbox (the
workspace, `/tmp`). A policy response that ends the episode (a ROME act in the code) answers
Failed with `message` naming the reason, and `safety.terminated`. The run is an episode in the
store, so `/run_code` calls are auditable too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from corral.policy.model import Policy
from corral.rl.episode import ensure_gate, start_sandbox
from corral.rl.reward import enforce, safety_state
from corral.sandbox import paths
from corral.sandbox.errors import PathOutsideWorkspace, SandboxClosed, SandboxRefused
from corral.sandbox.sandbox import ExecResult, Sandbox
from corral.server.limits import BodyTooLarge
from corral.server.manager import ApiError, SandboxManager, capped
from corral.server.models import (
    CellRunResult,
    CommandRunResult,
    RunCodeRequest,
    RunCodeResponse,
    RunJupyterRequest,
    RunJupyterResponse,
)

STDIN = "/tmp/.corral-stdin"
# the inline form of a script, as the command gate reads it (`bash -c`, `python3 -c`...): the code
# of these languages is screened before it runs from its file, so `ssh -R` in a bash answer is
# refused and recorded as it would be as a command
INLINE = {"bash": "bash -c", "python": "python3 -c", "python_gpu": "python3 -c",
          "pytest": "python3 -c", "nodejs": "node -e", "js": "node -e", "perl": "perl -e",
          "ruby": "ruby -e", "php": "php -r"}  # fmt: skip


@dataclass(frozen=True)
class Runner:
    """How SandboxFusion runs one language: the file the code goes in, an optional compile step,
    the run step, and the programs they need."""

    file: str
    run: str
    compile: str | None = None
    tools: tuple[str, ...] = ()
    note: str = ""


RUNNERS: dict[str, Runner] = {
    "python": Runner("main.py", "python3 main.py", tools=("python3",)),
    "python_gpu": Runner("main.py", "python3 main.py", tools=("python3",)),
    "python2": Runner("main.py", "python2 main.py", tools=("python2",)),
    "pytest": Runner("test_main.py", "python3 -m pytest test_main.py", tools=("python3",)),
    "cpp": Runner("main.cpp", "./test", "g++ -std=c++17 main.cpp -o test", ("g++",)),
    "gtest": Runner(
        "main.cpp",
        "./test",
        "g++ -std=c++17 main.cpp -o test -lgtest -lgtest_main -lpthread",
        ("g++",),
    ),  # fmt: skip
    "cuda": Runner("main.cu", "./test", "nvcc main.cu -o test", ("nvcc",)),
    "nodejs": Runner("main.js", "node main.js", tools=("node",)),
    "js": Runner("main.js", "node main.js", tools=("node",)),
    "typescript": Runner("main.ts", "tsx main.ts", tools=("tsx",)),
    "ts": Runner("main.ts", "tsx main.ts", tools=("tsx",)),
    "jest": Runner(
        "main.test.ts",
        "npm run test",
        tools=("npm", "jest"),
        note="jest needs SandboxFusion's node project",
    ),  # fmt: skip
    "react": Runner(
        "main.test.tsx",
        "npm run test",
        tools=("npm", "jest"),
        note="react needs SandboxFusion's node project",
    ),  # fmt: skip
    "go": Runner("main.go", "./out", "go build -o out main.go", ("go",)),
    "go_test": Runner("main_test.go", "go test main_test.go", tools=("go",)),
    "java": Runner("Main.java", "java -cp . -ea Main", "javac -cp . Main.java", ("javac", "java")),
    "junit": Runner(
        "Main.java",
        "junit",
        tools=("junit-platform-console-standalone",),
        note="junit needs SandboxFusion's junit jars",
    ),  # fmt: skip
    "kotlin_script": Runner("main.kts", "kotlinc -script main.kts", tools=("kotlinc",)),
    "scala": Runner("main.scala", "scala main.scala", tools=("scala",)),
    "php": Runner("main.php", "php -f main.php", tools=("php",)),
    "csharp": Runner("Program.cs", "dotnet run", tools=("dotnet",)),
    "bash": Runner("main.sh", "/bin/bash main.sh", tools=("bash",)),
    "sql": Runner("main.sql", "sqlite3 :memory: < main.sql", tools=("sqlite3",)),
    "rust": Runner("main.rs", "./test", "rustc main.rs -o test", ("rustc",)),
    "lua": Runner("main.lua", "lua main.lua", tools=("lua",)),
    "R": Runner("main.R", "Rscript main.R", tools=("Rscript",)),
    "perl": Runner("main.pl", "perl main.pl", tools=("perl",)),
    "D_ut": Runner("main.d", "./test", "dmd -unittest -main main.d -of=test", ("dmd",)),
    "ruby": Runner("main.rb", "ruby main.rb", tools=("ruby",)),
    "julia": Runner("main.jl", "julia main.jl", tools=("julia",)),
    "verilog": Runner("main.v", "vvp out", "iverilog -o out main.v", ("iverilog", "vvp")),
    "lean": Runner("Main.lean", "lean Main.lean", tools=("lean",)),
    "swift": Runner("main.swift", "swift main.swift", tools=("swift",)),
    "racket": Runner("main.rkt", "racket main.rkt", tools=("racket",)),
}


def _decode(files: dict[str, str | None]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path, b64 in files.items():
        if "\x00" in path or len(path) > 4096:
            raise ApiError(422, f"files: {path[:80]!r}... is not a usable path (NUL or too long)")
        try:
            out[path] = base64.b64decode(b64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, f"files.{path}: not valid base64") from None
    return out


def _policy(m: SandboxManager, memory_mb: int) -> Policy:
    policy = m.policy
    if memory_mb > 0:
        want = memory_mb * 1024 * 1024
        cap = policy.limits.memory
        limits = policy.limits.model_copy(
            update={"memory": want if cap is None else min(want, cap)}
        )
        policy = policy.model_copy(update={"limits": limits})
    return policy


def _result(res: ExecResult, elapsed: float) -> CommandRunResult:
    return CommandRunResult(status="TimeLimitExceeded" if res.timed_out else "Finished",
                            execution_time=elapsed, return_code=res.exit_code, stdout=res.stdout,
                            stderr=res.stderr)  # fmt: skip


class _Run:
    """One request's sandbox: start, files in, steps, findings enforced, files out, close."""

    def __init__(self, m: SandboxManager, memory_mb: int) -> None:
        self.m = m
        self.policy = _policy(m, memory_mb)
        self.sb: Sandbox = None  # type: ignore[assignment]  # set on entry

    async def __aenter__(self) -> _Run:
        # warm (`corral serve --warm N`) when the request keeps the server's policy
        pooled = await self.m._from_pool(None, None) if self.policy is self.m.policy else None
        self.sb = pooled or ensure_gate(Sandbox(self.policy, store=self.m.store))
        if pooled is None:
            await start_sandbox(self.sb)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sb.close()

    def safety(self) -> dict[str, Any]:
        return safety_state(self.sb, self.m.shaper)

    async def put(self, files: dict[str, bytes]) -> None:
        try:
            for path, data in files.items():
                await paths.write(self.sb, path, data)
        except PathOutsideWorkspace as err:
            raise ApiError(422, f"files: {err}") from None

    async def missing(self, tools: tuple[str, ...]) -> list[str]:
        """The programs this sandbox's root lacks (looked up inside it, on its PATH)."""
        if not tools:
            return []
        script = "; ".join(f"command -v {shlex.quote(t)} >/dev/null || echo {shlex.quote(t)}"
                           for t in tools)  # fmt: skip
        res = await self.sb.exec(script, timeout=10)
        return res.stdout.split()

    async def screened(self, language: str, code: str) -> ExecResult | None:
        """Ask the gate about the code in its inline form; when it would not run, run that form
        so the gate refuses and records it (and a terminate response ends the episode)."""
        head = INLINE.get(language)
        gate = self.sb.gate
        if head is None or gate is None:
            return None
        inline = f"{head} {shlex.quote(code)}"
        decision = gate(inline, self.sb, self.sb.step + 1)
        if asyncio.iscoroutine(decision):
            decision.close()  # an approval callback: the run itself asks, like any command
            return None
        if getattr(decision, "verdict", "allow") == "allow":
            return None
        res, _ = await self.step(inline, 10)
        return res

    async def step(self, command: str, timeout: float) -> tuple[ExecResult, float]:
        t0 = time.monotonic()
        res = await self.sb.exec(
            command, timeout=capped(timeout, self.sb.policy.limits.command_timeout)
        )
        elapsed = time.monotonic() - t0
        await enforce(self.sb, self.m.shaper, list(self.sb.events))
        return res, elapsed

    async def fetch(self, wanted: list[str]) -> tuple[dict[str, str], list[str]]:
        """The files asked for, all together at most the server's file limit; what could not be
        fetched (absent, outside, or past the limit, which is said) is listed, not fatal."""
        got: dict[str, str] = {}
        missing: list[str] = []
        budget = self.m.limits.max_file_bytes
        for path in wanted:
            try:
                data = await paths.read(self.sb, path, max_bytes=budget + 1)
            except (FileNotFoundError, PathOutsideWorkspace, SandboxClosed, OSError, ValueError):
                missing.append(path)
                continue
            if len(data) > budget:
                missing.append(f"{path} (over the --max-file-bytes limit of "
                               f"{self.m.limits.max_file_bytes} bytes for all fetched files)")  # fmt: skip
                continue
            budget -= len(data)
            got[path] = base64.b64encode(data).decode()
        return got, missing

    def ended(self) -> str | None:
        if self.sb.terminated:
            reason = (self.sb.closed_reason or "").removeprefix("terminated: ")
            return f"episode ended by corral's policy: {reason}"
        return None


def lowered(policy: Policy, memory_limit_mb: int) -> Policy:
    """The policy with the request's memory limit where it is lower: a request cannot raise it."""
    if memory_limit_mb <= 0:
        return policy
    asked = memory_limit_mb * 1024 * 1024
    if policy.limits.memory is not None and asked >= policy.limits.memory:
        return policy
    limits = policy.limits.model_copy(update={"memory": asked})
    return policy.model_copy(update={"limits": limits})


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter()

    @r.post("/run_code", response_model=RunCodeResponse)
    async def run_code(req: RunCodeRequest) -> RunCodeResponse:
        files = _decode(req.files)
        if sum(map(len, files.values())) + len(req.code) > m.limits.max_file_bytes:
            raise BodyTooLarge(m.limits.max_file_bytes, "files and code")
        runner = RUNNERS[req.language]
        try:
            async with _Run(m, req.memory_limit_MB) as run:
                need = await run.missing(runner.tools)
                if need:
                    why = f" ({runner.note})" if runner.note else ""
                    return RunCodeResponse(
                        status="SandboxError",
                        message=f"exception on running code: language {req.language!r} needs "
                        f"{', '.join(need)}, which this sandbox's root does not have{why}",
                        safety=run.safety(),
                    )  # fmt: skip
                await run.put(files)
                await paths.write(run.sb, runner.file, req.code)
                compiled = ran = None
                refused = await run.screened(req.language, req.code)
                if refused is not None:
                    return RunCodeResponse(
                        status="Failed", message=run.ended() or refused.stderr.strip(),
                        run_result=_result(refused, refused.duration), safety=run.safety())  # fmt: skip
                if runner.compile:
                    res, elapsed = await run.step(runner.compile, req.compile_timeout)
                    compiled = _result(res, elapsed)
                if compiled is None or (compiled.status == "Finished" and compiled.return_code == 0
                                        and not run.ended()):  # fmt: skip
                    command = runner.run
                    if req.language == "pytest" and req.args:
                        command += " " + shlex.join(req.args)
                    if req.stdin is not None:
                        await paths.write(run.sb, STDIN, req.stdin)
                        command += f" < {STDIN}"
                    res, elapsed = await run.step(command, req.run_timeout)
                    ran = _result(res, elapsed)
                fetched, missing = await run.fetch(req.fetch_files)
                steps = [s for s in (compiled, ran) if s is not None]
                ok = all(s.status == "Finished" and s.return_code == 0 for s in steps)
                message = run.ended() or (
                    f"could not fetch: {', '.join(missing)}" if missing else "")  # fmt: skip
                return RunCodeResponse(
                    status="Success" if ok and not run.ended() else "Failed", message=message,
                    compile_result=compiled, run_result=ran, files=fetched, safety=run.safety())  # fmt: skip
        except (SandboxClosed, SandboxRefused) as err:
            return RunCodeResponse(
                status="SandboxError", message=f"exception on running code: {err}"
            )

    @r.post("/run_jupyter", response_model=RunJupyterResponse)
    async def run_jupyter(req: RunJupyterRequest) -> RunJupyterResponse:
        files = _decode(req.files)
        if sum(map(len, files.values())) + sum(map(len, req.cells)) > m.limits.max_file_bytes:
            raise BodyTooLarge(m.limits.max_file_bytes, "files and cells")
        try:
            async with _Run(m, -1) as run:
                if await run.missing(("python3",)):
                    return RunJupyterResponse(status="SandboxError", safety=run.safety(),
                                              message="exception on running jupyter: no python3")  # fmt: skip
                await run.put(files)
                await paths.write(run.sb, "/tmp/.corral-cells.json",
                                  json.dumps({"cells": req.cells, "cell_timeout": req.cell_timeout}))  # fmt: skip
                await paths.write(run.sb, "/tmp/.corral-jupyter.py", _JUPYTER_DRIVER)
                res, elapsed = await run.step(
                    "python3 /tmp/.corral-jupyter.py /tmp/.corral-cells.json /tmp/.corral-out.json",
                    req.total_timeout if req.total_timeout > 0 else 45,
                )
                driver = _result(res, elapsed)
                ended = run.ended()
                if driver.status != "Finished" or ended:
                    return RunJupyterResponse(status="Failed", message=ended or "", driver=driver,
                                              safety=run.safety())  # fmt: skip
                try:
                    cells = json.loads(await paths.read(run.sb, "/tmp/.corral-out.json"))
                except (OSError, ValueError) as err:
                    return RunJupyterResponse(status="SandboxError", driver=driver,
                                              message=f"exception on running jupyter: {err}",
                                              safety=run.safety())  # fmt: skip
                fetched, missing = await run.fetch(req.fetch_files)
                return RunJupyterResponse(
                    status="Success", driver=driver, files=fetched, safety=run.safety(),
                    message=f"could not fetch: {', '.join(missing)}" if missing else "",
                    cells=[CellRunResult.model_validate(c) for c in cells])  # fmt: skip
        except (SandboxClosed, SandboxRefused) as err:
            return RunJupyterResponse(status="SandboxError",
                                      message=f"exception on running jupyter: {err}")  # fmt: skip

    return r


# Runs inside the sandbox: the cells in one namespace, as one kernel would; a cell's last
# expression is displayed (text/plain), an exception is the cell's error and later cells still run.
_JUPYTER_DRIVER = r"""
import ast, contextlib, io, json, signal, sys, traceback
spec = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
out = []
def _alarm(*a):
    raise TimeoutError("cell timed out")
signal.signal(signal.SIGALRM, _alarm)
for src in spec["cells"]:
    cell = {"stdout": "", "stderr": "", "display": [], "error": []}
    o, e = io.StringIO(), io.StringIO()
    if spec["cell_timeout"] > 0:
        signal.setitimer(signal.ITIMER_REAL, spec["cell_timeout"])
    try:
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            tree = ast.parse(src, "<cell>", "exec")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<cell>", "exec"), ns)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
                if value is not None:
                    cell["display"].append({"text/plain": repr(value)})
    except BaseException as err:
        cell["error"].append({"ename": type(err).__name__, "evalue": str(err),
                              "traceback": traceback.format_exception(err)})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    cell["stdout"], cell["stderr"] = o.getvalue(), e.getvalue()
    out.append(cell)
json.dump(out, open(sys.argv[2], "w"))
"""
