"""Running an audit: in this process, on local cores, or on a Ray cluster.

Whatever runs it, chunk results come back in chunk order, so the outputs of one worker and of many
are the same files. Each worker builds the rule engine once (pool initializer, or the module-level
cache in a Ray worker process) and keeps its command cache across chunks.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from typing import Any

from corral.audit import checker, shared
from corral.audit.auditor import AuditOptions, audit_chunk
from corral.audit.sources import Chunk, PartReader, load

BATCH_BYTES = 1024 * 1024
BATCH_FILES = 64
# Batches in flight per worker. Results come back in order, so one slow batch at the head holds
# finished ones behind it; a deep window keeps the other workers busy meanwhile.
WINDOW_PER_WORKER = 16


def batches(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Small files travel together: one task per file would cost more in IPC than in auditing."""
    out: list[list[Chunk]] = []
    size = 0
    for chunk in chunks:
        if not out or size + chunk.size > BATCH_BYTES or len(out[-1]) >= BATCH_FILES:
            out.append([])
            size = 0
        out[-1].append(chunk)
        size += chunk.size
    return out


def audit_batch(
    batch: list[Chunk],
    options: AuditOptions,
    share_dir: str | None = None,
    data: list[bytes | None] | None = None,
) -> dict[str, Any]:
    ex = shared.exchange(share_dir) if share_dir else None
    if ex is not None:
        ex.absorb()
    merged: dict[str, Any] = {"results": [], "malformed": [], "bytes": 0}
    for chunk, blob in zip(batch, data or [None] * len(batch), strict=True):
        part = audit_chunk(chunk, options, blob)
        merged["results"] += part["results"]
        merged["malformed"] += part["malformed"]
        merged["bytes"] += part["bytes"]
    if ex is not None:
        ex.publish()
    return merged


def _resolve(parts: PartReader, chunk: Chunk) -> tuple[Chunk, bytes | None]:
    """Parts of gzip files get their lines from the one-pass reader; other chunks are read by
    the worker itself (None)."""
    return parts.read(chunk) if chunk.part is not None else (chunk, None)


def _resolved(parts: PartReader, batch: list[Chunk]) -> tuple[list[Chunk], list[bytes | None]]:
    pairs = [_resolve(parts, c) for c in batch]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _submit(
    pool: ProcessPoolExecutor,
    parts: PartReader,
    batch: list[Chunk],
    options: AuditOptions,
    share: str,
) -> Any:
    chunks, data = _resolved(parts, batch)
    return pool.submit(audit_batch, chunks, options, share, data)


def _shipped(parts: PartReader, batch: list[Chunk]) -> tuple[list[Chunk], list[bytes]]:
    """For Ray: every chunk's bytes travel with it (decompressed lines for gzip parts)."""
    chunks, data = _resolved(parts, batch)
    return chunks, [
        d if d is not None else (b"" if c.oversize else load(c))
        for c, d in zip(chunks, data, strict=True)
    ]


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["corral.audit.worker"])
    return ctx


def start_workers(workers: int) -> None:
    """Start the forkserver now: it imports the auditor and builds the rule engine (about half a
    second) while the caller walks directories and plans chunks, instead of after."""
    if workers > 1:
        _context()
        forkserver.ensure_running()


def _local(chunks: list[Chunk], options: AuditOptions, workers: int) -> Iterator[dict[str, Any]]:
    parts = PartReader()
    if workers <= 1 or len(chunks) <= 1:
        checker.warm()
        for chunk in chunks:
            resolved, data = _resolve(parts, chunk)
            yield audit_chunk(resolved, options, data)
        return
    work = batches(chunks)
    ctx = _context()
    with (
        tempfile.TemporaryDirectory(prefix="corral-audit-") as share,
        ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=checker.warm) as pool,
    ):
        window: deque[Any] = deque()
        pending = iter(work)
        for batch in pending:
            window.append(_submit(pool, parts, batch, options, share))
            if len(window) >= WINDOW_PER_WORKER * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(pending, None)
            if nxt is not None:
                window.append(_submit(pool, parts, nxt, options, share))
            yield result


def _ray_task(batch: list[Chunk], data: list[bytes], options: AuditOptions) -> dict[str, Any]:
    merged: dict[str, Any] = {"results": [], "malformed": [], "bytes": 0}
    for chunk, blob in zip(batch, data, strict=True):
        part = audit_chunk(chunk, options, blob)
        for key in merged:
            merged[key] += part[key]
    return merged


def _ray(chunks: list[Chunk], options: AuditOptions, address: str) -> Iterator[dict[str, Any]]:
    """Chunk bytes are read here and shipped, so workers need no shared filesystem."""
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is a declared extra
        raise RuntimeError("--ray needs the `ray` package: pip install 'corral[ray]'") from err
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")  # fmt: skip
        started = True
    try:
        task = ray.remote(num_cpus=1)(_ray_task)
        width = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        window: deque[Any] = deque()
        pending = iter(batches(chunks))
        parts = PartReader()
        for batch in pending:
            window.append(task.remote(*_shipped(parts, batch), options))
            if len(window) >= width:
                break
        while window:
            result = ray.get(window.popleft())
            nxt = next(pending, None)
            if nxt is not None:
                window.append(task.remote(*_shipped(parts, nxt), options))
            yield result
    finally:
        if started:
            ray.shutdown()


def run_chunks(
    chunks: list[Chunk], options: AuditOptions, workers: int = 1, ray_address: str | None = None
) -> Iterator[dict[str, Any]]:
    """Results in input order: one dict per chunk (one process) or per batch of chunks."""
    if ray_address:
        return _ray(chunks, options, ray_address)
    return _local(chunks, options, workers)
