"""`make bench`: every part's figures, measured side by side in one run, as one JSON object.

Each `benchmarks/bench_*.py` module exposes `run(progress) -> dict`; its result lands under the
module's name (without `bench_`). Targets are printed next to the figures, never asserted.

Each module runs in a process of its own (`python -m benchmarks.run --one NAME`), one after the
other: what one leaves behind (a Ray driver's threads, a server, a large heap, a pool) must not
be timed as part of the next. In one process the sandbox figures ran after the clients' and the
RL benchmarks' and came out 0.2-0.7 ms slower than alone.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

HERE = Path(__file__).parent


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )


def run_one(name: str) -> int:
    """One module's figures as JSON on stdout (its progress on stderr)."""
    mod = importlib.import_module(f"benchmarks.{name}")
    with _progress(Console(stderr=True)) as progress:
        try:
            result = mod.run(progress)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the rest
            result = {"error": f"{type(err).__name__}: {err}"}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _in_own_process(name: str) -> object:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--one", name],
                          stdout=subprocess.PIPE, text=True, check=False)  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"benchmarks.{name} exited {proc.returncode} without its figures"}


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["--one"] and len(args) == 2:
        return run_one(args[1])
    only = set(args)
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        modules = [m for m in modules if m.removeprefix("bench_") in only or m in only]
    results: dict[str, object] = {
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "root": os.geteuid() == 0,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    }
    for name in modules:
        results[name.removeprefix("bench_")] = _in_own_process(name)
    text = json.dumps(results, indent=2)
    Path("bench-results.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
