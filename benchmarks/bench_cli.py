"""Issue 15 figures: the `corral` command as a whole process, next to bare bubblewrap.

A user wrapping each command of a script, or a harness calling the CLI per step, pays the whole
process. `corral run` and `corral check` are served by the fork server by default
(`corral.cli.forkserver`): the figures are taken three ways, interleaved with bare bwrap so all see
the same load:

- `*_daemon`: the server warm (the usual case: every call after the first within its idle time);
- `*_no_daemon`: `CORRAL_DAEMON=0`, the whole import and warm-up in the process;
- `*_cold_server`: the first call, no server yet: it runs in its own process and starts one in the
  background (fewer runs: the server is stopped before each and waited for after).

The rule cache is warm (one untimed call first). The calls run in an empty directory: `corral run`'s
default workspace is the current directory, which a root supervisor hands over to the sandbox's
host id and back. The bench uses its own runtime directory and stops every server it started, by
pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from benchmarks.bench_sandbox import _bare_bwrap_argv
from benchmarks.stats import summarize, timed

RUNS = int(os.environ.get("CORRAL_BENCH_CLI_RUNS", "40"))
COLD_RUNS = max(3, RUNS // 8)
CORRAL = [str(Path(sys.executable).with_name("corral"))]


def _argv(*args: str) -> list[str]:
    return [*CORRAL, *args] if Path(CORRAL[0]).exists() else [sys.executable, "-m",
                                                                "corral.cli.main", *args]  # fmt: skip


class _Servers:
    """The fork servers this bench starts: found by `corral daemon status`, stopped by pid."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.env, self.cwd = env, cwd
        self.seen: set[int] = set()

    def pid(self) -> int | None:
        r = subprocess.run(_argv("daemon", "status", "--json"), env=self.env, cwd=self.cwd,
                           capture_output=True, text=True, check=False)  # fmt: skip
        with contextlib.suppress(ValueError):
            pid = json.loads(r.stdout).get("pid")
            if pid:
                self.seen.add(int(pid))
                return int(pid)
        return None

    def wait_ready(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid = self.pid()
            if pid:
                return pid
            time.sleep(0.05)
        raise RuntimeError("the fork server did not start")

    def stop(self) -> None:
        self.pid()
        for pid in list(self.seen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while time.monotonic() < end and _alive(pid):
                time.sleep(0.02)
            self.seen.discard(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _compile() -> None:
    """Bytecode for corral and its dependencies, as an installed wheel has (with
    PYTHONDONTWRITEBYTECODE=1 and an editable install, each process would compile ~100 ms)."""
    import compileall
    import site

    import corral

    compileall.compile_dir(str(Path(corral.__file__).parent), quiet=1, workers=2)
    for d in site.getsitepackages():
        compileall.compile_dir(d, quiet=1, workers=2)


def run(progress: Progress) -> dict[str, Any]:
    _compile()
    home = tempfile.mkdtemp(prefix="corral-bench-cli-")
    cwd = tempfile.mkdtemp(prefix="corral-bench-cwd-")
    rt = tempfile.mkdtemp(prefix="corral-bench-rt-")  # 0700, ours: the servers' sockets
    env = dict(os.environ, CORRAL_HOME=home, XDG_RUNTIME_DIR=rt, CORRAL_DAEMON="1")
    plain_env = dict(env, CORRAL_DAEMON="0")
    run_true = _argv("run", "-q", "--", "true")
    check_one = _argv("check", "--json", "ls -la /tmp")
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "corral_run_true_daemon": (run_true, env),
        "corral_run_true_no_daemon": (run_true, plain_env),
        "corral_check_one_json_daemon": (check_one, env),
        "corral_check_one_json_no_daemon": (check_one, plain_env),
        "corral_version": (_argv("--version"), env),
        "bare_bwrap_true": (_bare_bwrap_argv(), env),
        "python_startup": ([sys.executable, "-c", "pass"], env),
    }
    ok = {0, 1, 2}  # check exits with the verdict
    servers = _Servers(env, cwd)

    def once(argv: list[str], e: dict[str, str]) -> None:
        rc = subprocess.run(argv, env=e, cwd=cwd, stdout=subprocess.DEVNULL,
                            check=False).returncode  # fmt: skip
        if rc not in ok:
            raise RuntimeError(f"{argv} exited {rc}")

    try:
        for argv, e in cases.values():  # warm the rule cache, the page cache and the server
            subprocess.run(argv, env=e, cwd=cwd, capture_output=True, check=False)
        servers.wait_ready()
        samples: dict[str, list[float]] = {k: [] for k in cases}
        task = progress.add_task("CLI whole process (interleaved)", total=RUNS + COLD_RUNS)
        for _ in range(RUNS):
            for name, (argv, e) in cases.items():
                samples[name].append(timed(lambda a=argv, e=e: once(a, e)))
            progress.advance(task)
        cold: dict[str, list[float]] = {"corral_run_true_cold_server": [],
                                        "corral_check_one_json_cold_server": []}  # fmt: skip
        bare_cold: list[float] = []
        for _ in range(COLD_RUNS):
            for name, argv in (("corral_run_true_cold_server", run_true),
                               ("corral_check_one_json_cold_server", check_one)):  # fmt: skip
                servers.stop()
                cold[name].append(timed(lambda a=argv: once(a, env)))
                bare_cold.append(timed(lambda: once(cases["bare_bwrap_true"][0], env)))
                servers.wait_ready()  # the call started it in the background: let it settle
            progress.advance(task)
    finally:
        servers.stop()
    out: dict[str, Any] = {"runs": RUNS, "cold_runs": COLD_RUNS}
    out.update({name: summarize(s) for name, s in samples.items()})
    out.update({name: summarize(s) for name, s in cold.items()})
    out["bare_bwrap_true_beside_cold"] = summarize(bare_cold)
    bwrap = out["bare_bwrap_true"]["median_ms"]
    ratio = out["corral_run_true_daemon"]["median_ms"] / bwrap
    plain = out["corral_run_true_no_daemon"]["median_ms"] / bwrap
    out["targets"] = {
        "corral_run_over_bare_bwrap": {"value": round(ratio, 2), "target": "<= 15x",
                                       "met": ratio <= 15},
        "corral_run_no_daemon_over_bare_bwrap": {"value": round(plain, 2),
                                                 "target": "(reported: the fallback path)"},
        "corral_version_ms": {"value": out["corral_version"]["median_ms"],
                              "target": "tens of ms", "met": out["corral_version"]["median_ms"] < 100},
    }  # fmt: skip
    return out
