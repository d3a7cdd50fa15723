#!/usr/bin/env python3
"""Exercise corral's NVML GPU sensor against a real GPU (the test suite fakes NVML at its boundary).

    PYTHONPATH=src python scripts/gpu-check.py [--seconds 15] [--sandbox-python PATH]

1. lists the devices NVML reports;
2. starts a small CUDA workload on the host (torch, else cupy; else it only reads what is running)
   and waits until the sensor reports its pid, with the memory it holds;
3. where the policy can grant a GPU here, starts a sandbox granted one, runs the same workload
   inside it under a watching Monitor, and checks the `gpu.process` event names that sandbox and
   step and raises no finding; then checks a sandbox not granted a GPU has no /dev/nvidia* at all.
Prints one JSON object; exit status 0 when every step that could run passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from corral.monitor import GpuSensor, Monitor  # noqa: E402
from corral.policy.loader import policy_from_mapping  # noqa: E402
from corral.sandbox.errors import SandboxRefused  # noqa: E402
from corral.sandbox.sandbox import Sandbox  # noqa: E402

WORKLOAD = """
import sys, time
end = time.time() + float(sys.argv[1])
try:
    import torch
    x = torch.randn(4096, 4096, device="cuda")
    while time.time() < end:
        x = (x @ x).clamp_(-1, 1)
    torch.cuda.synchronize()
except ImportError:
    import cupy
    x = cupy.random.rand(4096, 4096, dtype=cupy.float32)
    while time.time() < end:
        x = cupy.clip(x @ x, -1, 1)
    cupy.cuda.Stream.null.synchronize()
print("workload done")
"""


def _has_cuda_lib(python: str) -> str | None:
    for mod in ("torch", "cupy"):
        r = subprocess.run([python, "-c", f"import {mod}"], capture_output=True)
        if r.returncode == 0:
            return mod
    return None


def host_check(sensor: GpuSensor, seconds: float) -> dict[str, object]:
    lib = _has_cuda_lib(sys.executable)
    out: dict[str, object] = {"cuda_library": lib}
    out["already_running"] = [p.__dict__ for p in sensor.processes()]
    if lib is None:
        out["workload"] = "skipped: neither torch nor cupy importable"
        return out
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(seconds)])
    t0 = time.monotonic()
    seen = None
    while time.monotonic() - t0 < seconds and proc.poll() is None:
        hit = [p for p in sensor.processes() if p.pid == proc.pid]
        if hit:
            seen = hit[0]
            break
        time.sleep(0.1)
    out["workload_pid"] = proc.pid
    out["seen_by_sensor"] = seen.__dict__ if seen else None
    out["seconds_to_seen"] = round(time.monotonic() - t0, 3) if seen else None
    proc.terminate()
    proc.wait(10)
    out["ok"] = seen is not None
    return out


async def sandbox_check(seconds: float, python: str = "python3") -> dict[str, object]:
    out: dict[str, object] = {}
    granted = policy_from_mapping({"extends": "rl-strict", "gpu": {"allowed": True},
                                   "limits": {"enforcement": "best_effort", "memory": None}})  # fmt: skip
    mon = Monitor(gpu=True)
    mon.start()
    out["monitor_mode"] = mon.mode
    out["gpu_status"] = mon.gpu_status
    try:
        try:
            sb = Sandbox(granted, store=False)
            await sb.start()
        except SandboxRefused as err:
            out["granted_sandbox"] = f"skipped: {err}"
        else:
            try:
                mon.watch(sb)
                r = await sb.exec(f"{python} -c 'import torch' 2>/dev/null && echo torch || "
                                  f"({python} -c 'import cupy' 2>/dev/null && echo cupy)")  # fmt: skip
                if not r.stdout.strip():
                    out["granted_sandbox"] = "skipped: no torch/cupy for the sandbox's python3"
                else:
                    await sb.write_file("w.py", WORKLOAD)
                    ran = await sb.exec(f"{python} w.py {seconds}", step=7)
                    out["granted_sandbox_workload"] = (ran.exit_code, ran.stdout[-200:],
                                                       ran.stderr[-800:])  # fmt: skip
                    gp = [e for e in sb.events if e.rule == "gpu.process"]
                    bad = [e for e in sb.events if e.source == "gpu" and e.severity != "info"]
                    out["granted_sandbox"] = {
                        "gpu_events": [e.model_dump(mode="json") for e in gp],
                        "findings": [e.rule for e in bad],
                        "ok": bool(gp)
                        and gp[0].step == 7
                        and gp[0].sandbox_id == sb.id
                        and not bad,
                    }
            finally:
                await sb.close()
        async with Sandbox(policy_from_mapping({"extends": "rl-strict", "limits": {
                "enforcement": "best_effort"}}), store=False) as plain:  # fmt: skip
            r = await plain.exec("ls /dev/nvidia* 2>/dev/null | wc -l")
            out["ungranted_sandbox_nvidia_devices"] = int(r.stdout.strip() or 0)
    finally:
        mon.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument(
        "--sandbox-python",
        default="python3",
        help="the interpreter with torch or cupy, as the sandbox sees it",
    )
    args = ap.parse_args()
    sensor = GpuSensor()
    result: dict[str, object] = {"root": os.geteuid() == 0}
    if not sensor.start():
        result["error"] = sensor.error
        print(json.dumps(result, indent=2))
        return 1
    result["devices"] = sensor.devices
    result["host"] = host_check(sensor, args.seconds)
    sensor.stop()
    result["sandbox"] = asyncio.run(sandbox_check(args.seconds, args.sandbox_python))
    print(json.dumps(result, indent=2, default=str))
    host_ok = result["host"].get("ok", True)  # type: ignore[union-attr]
    sb = result["sandbox"].get("granted_sandbox")  # type: ignore[union-attr]
    sb_ok = sb.get("ok", False) if isinstance(sb, dict) else True
    no_dev = result["sandbox"].get("ungranted_sandbox_nvidia_devices") == 0  # type: ignore[union-attr]
    return 0 if host_ok and sb_ok and no_dev else 1


if __name__ == "__main__":
    raise SystemExit(main())
