"""Issue 12 figures: task images as sandbox roots.

- cold start on a cached image next to the host-root cold start, interleaved (target <= 2x);
- first start of a new image: import (skopeo copy + umoci unpack) per GB unpacked;
- disk each extra sandbox on one image costs (its writable layer and protected copies).

The image is the suite's SWE-shaped test image (tests/images/imagekit.py, built from this host's
files, cached under /var/tmp): no registry is reachable here.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from benchmarks.stats import summarize
from corral import Sandbox
from corral.images import ImageStore
from corral.images.store import _du
from corral.policy.loader import load_policy
from corral.sandbox.probe import probe
from corral.store.sqlite import EventStore
from tests.images.imagekit import swe_image

RUNS = int(os.environ.get("CORRAL_BENCH_IMAGE_RUNS", "40"))
IMPORTS = int(os.environ.get("CORRAL_BENCH_IMAGE_IMPORTS", "3"))
EXTRA = int(os.environ.get("CORRAL_BENCH_IMAGE_SANDBOXES", "10"))


def _policy() -> Any:
    pol = load_policy("rl-strict").model_copy(deep=True)
    if not probe().cgroup_writable:
        pol.limits.enforcement = "best_effort"
    pol.filesystem.protected = [*pol.filesystem.protected, "/tests"]
    return pol


async def _cold(progress: Progress, home: Path) -> dict[str, Any]:
    store = EventStore(home / "events.db")
    pol = _policy()
    host, image = [], []
    task = progress.add_task("image vs host cold start", total=RUNS)
    for _ in range(RUNS):
        for sink, kw in ((host, {}), (image, {"image": "swe"})):
            sb = Sandbox(pol, store=store, **kw)
            t0 = time.perf_counter()
            await sb.start()
            sink.append(time.perf_counter() - t0)
            await sb.close()
        progress.advance(task)
    store.close()
    h, i = summarize(host), summarize(image)
    return {
        "host_root": h,
        "image_root": i,
        "ratio_median": round(i["median_ms"] / h["median_ms"], 2),
        "target_ratio": 2.0,
    }


def _first_start(progress: Progress, oci: Path) -> dict[str, Any]:
    times, size = [], 0
    task = progress.add_task("first start of a new image", total=IMPORTS)
    for _ in range(IMPORTS):
        home = Path(tempfile.mkdtemp(prefix="corral-bench-img-"))
        try:
            t0 = time.perf_counter()
            img = ImageStore(home).add(str(oci))
            times.append(time.perf_counter() - t0)
            size = img.size
        finally:
            shutil.rmtree(home, ignore_errors=True)
        progress.advance(task)
    s = summarize(times)
    gb = size / 1e9
    return {
        "import": s,
        "unpacked_bytes": size,
        "seconds_per_gb": round(s["median_ms"] / 1000 / gb, 2) if gb else None,
    }


async def _disk(progress: Progress, home: Path) -> dict[str, Any]:
    pol = _policy()
    task = progress.add_task("disk per extra sandbox", total=EXTRA)
    sbs = []
    try:
        for _ in range(EXTRA):
            sb = Sandbox(pol, image="swe", store=False)
            await sb.start()
            sbs.append(sb)
            progress.advance(task)

        def cost() -> list[int]:
            # on disk (state dir: protected copies, mount points) + the layer (a tmpfs, in memory)
            out = []
            for sb in sbs:
                layer = sb._root.usage(sb._proc.pid) if sb._root and sb._proc else None
                out.append(_du(sb.workspace) + (layer[0] if layer else 0))
            return out

        idle = cost()
        for sb in sbs:  # a typical small edit: one source file of the repo changed
            await sb.exec("echo '# edited' >> /testbed/calc.py")
        edited = cost()
    finally:
        for sb in sbs:
            await sb.close()
    img = ImageStore(home).get("swe")
    return {
        "sandboxes": len(sbs),
        "image_bytes_shared": img.size if img else None,
        "layer": "tmpfs (limits.disk)" if pol.limits.disk else "directory",
        "per_sandbox_idle_bytes": int(sum(idle) / len(idle)),
        "per_sandbox_after_edit_bytes": int(sum(edited) / len(edited)),
    }


def run(progress: Progress) -> dict[str, Any]:
    forms = swe_image()
    home = Path(tempfile.mkdtemp(prefix="corral-bench-images-"))
    old = os.environ.get("CORRAL_HOME")
    os.environ["CORRAL_HOME"] = str(home)
    try:
        ImageStore(home).add(str(forms["oci"]), name="swe")
        out: dict[str, Any] = {"cold_start": asyncio.run(_cold(progress, home))}
        out["first_start"] = _first_start(progress, forms["oci"])
        out["disk"] = asyncio.run(_disk(progress, home))
        return out
    finally:
        if old is None:
            os.environ.pop("CORRAL_HOME", None)
        else:
            os.environ["CORRAL_HOME"] = old
        shutil.rmtree(home, ignore_errors=True)
