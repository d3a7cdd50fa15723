"""What the monitor really does on this host, for `corral doctor`: tried, not assumed.

The exec sensor is checked end to end: a throwaway sandbox runs `/bin/true` and the record of that
exec must come back through the sandbox's seccomp listener, the way every sandbox is watched.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from corral.monitor.gpu import GpuSensor


async def _exec_sensor_check() -> str:
    from corral.policy.loader import policy_from_mapping
    from corral.sandbox.sandbox import Sandbox

    pol = policy_from_mapping({"extends": "dev", "limits": {"enforcement": "best_effort"},
                               "gate": {"enabled": False}})  # fmt: skip
    t0 = time.monotonic()
    async with Sandbox(pol, store=False, egress=False) as sb:
        await sb.exec("/bin/true")
        end = time.monotonic() + 2
        while time.monotonic() < end:
            seen = [e for e in sb.events if e.rule == "process.exec" and e.argv == ["/bin/true"]]
            if seen:
                via = seen[0].evidence.get("via")
                return (f"attached to every sandbox; exec seen before it runs via {via} "
                        f"(checked in {time.monotonic() - t0:.2f}s)")  # fmt: skip
            await asyncio.sleep(0.02)
    return "NOT WORKING: a sandbox's exec of /bin/true was not recorded"


def monitor_capabilities() -> dict[str, Any]:
    """Which exec sensor is in force (checked with a real sandbox), and the GPU sensor."""
    out: dict[str, Any] = {}
    try:
        out["exec_sensor"] = asyncio.run(_exec_sensor_check())
    except Exception as err:  # noqa: BLE001 - doctor reports, it does not crash
        out["exec_sensor"] = f"NOT WORKING: {type(err).__name__}: {err}"
    gpu = GpuSensor()
    if gpu.start():
        out["gpu_sensor"] = "NVML: " + ", ".join(d["name"] for d in gpu.devices)
        gpu.stop()
    else:
        out["gpu_sensor"] = f"off ({gpu.error})"
    out["sockets_sensor"] = "/proc/<pid>/fd + the sandbox netns /proc/<pid>/net/tcp"
    out["resources_sensor"] = (
        "cgroup CPU total per sandbox" if os.path.isdir("/sys/fs/cgroup") else "/proc"
    )
    out["network_record"] = (
        "seccomp listener: connect/sendto/sendmsg/sendmmsg performed by the supervisor"
    )
    return out
