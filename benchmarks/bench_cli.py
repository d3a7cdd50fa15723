"""Issue 15 figures: the `corral` command as a whole process, next to bare bubblewrap.

A user wrapping each command of a script, or a harness calling the CLI per step, pays the whole
process: interpreter start, imports, the rule engine, the sandbox's start and close. Runs are
interleaved (corral, then bare bwrap, then corral...) so both see the same load. The rule cache is
warm (one untimed call first), as it is for every call after the first on a host. The calls run
in an empty directory: `corral run`'s default workspace is the current directory, which a root
supervisor hands over to the sandbox's host id and back (a walk of the whole tree each way: 1.2 s
from this repository's root with its .venv).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.progress import Progress

from benchmarks.bench_sandbox import _bare_bwrap_argv
from benchmarks.stats import summarize, timed

RUNS = int(os.environ.get("CORRAL_BENCH_CLI_RUNS", "40"))
CORRAL = [str(Path(sys.executable).with_name("corral"))]


def _argv(*args: str) -> list[str]:
    return [*CORRAL, *args] if Path(CORRAL[0]).exists() else [sys.executable, "-m",
                                                                "corral.cli.main", *args]  # fmt: skip


def run(progress: Progress) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="corral-bench-cli-")
    cwd = tempfile.mkdtemp(prefix="corral-bench-cwd-")
    env = dict(os.environ, CORRAL_HOME=home)
    cases = {
        "corral_run_true": _argv("run", "-q", "--", "true"),
        "corral_version": _argv("--version"),
        "corral_check_one_json": _argv("check", "--json", "ls -la /tmp"),
        "bare_bwrap_true": _bare_bwrap_argv(),
        "python_startup": [sys.executable, "-c", "pass"],
    }
    ok = {0, 1, 2}  # check exits with the verdict
    for argv in cases.values():  # warm the rule cache and the page cache, untimed
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    task = progress.add_task("CLI whole process (interleaved)", total=RUNS)

    def once(argv: list[str]) -> None:
        rc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            check=False).returncode  # fmt: skip
        if rc not in ok:
            raise RuntimeError(f"{argv} exited {rc}")

    for _ in range(RUNS):
        for name, argv in cases.items():
            samples[name].append(timed(lambda a=argv: once(a)))
        progress.advance(task)
    out: dict[str, Any] = {"runs": RUNS}
    out.update({name: summarize(s) for name, s in samples.items()})
    bwrap = out["bare_bwrap_true"]["median_ms"]
    ratio = out["corral_run_true"]["median_ms"] / bwrap
    out["targets"] = {
        "corral_run_over_bare_bwrap": {"value": round(ratio, 2), "target": "<= 15x",
                                       "met": ratio <= 15},
        "corral_version_ms": {"value": out["corral_version"]["median_ms"],
                              "target": "tens of ms", "met": out["corral_version"]["median_ms"] < 100},
    }  # fmt: skip
    return out
