"""`WarmPool`: sandboxes started ahead, N per key, so an episode's first command does not wait.

A cold start is tens of milliseconds (bubblewrap, the namespaces, the egress gateway, the shell:
see docs/startup.md). An RL rollout that resets thousands of episodes pays it on every reset. The
pool keeps `size` sandboxes per key started and idle (about 0.6 MiB each), hands one out in
microseconds and starts a replacement in the background.

Keys are what makes two sandboxes interchangeable besides the policy the pool was made for: the
image (`None` for the host root). A key asked for once is kept warm from then on (at most
`max_keys` keys, the least recently asked dropped first).

A handed-out sandbox is never seen by the pool again: it is popped before it is returned, the pool
keeps no reference, and closing it does not return it. Each episode gets a sandbox no command has
ever run in. At hand-out the sandbox takes the episode's id (its `sandbox.started` event was
recorded under a placeholder `pool-...` episode; `sandbox.handed_out`, under the episode's id,
records the hand-out and the placeholder), and its wall-time limit starts then, not at its start.
Inside the sandbox, `CORRAL_EPISODE_ID` keeps the placeholder until the shell restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from corral.sandbox.sandbox import Sandbox

Factory = Callable[[Hashable, str], Sandbox]
REFILL_DELAY_S = 0.05


class WarmPool:
    """`await pool.take(key, episode_id=...)` -> a started Sandbox, or None (start one cold)."""

    def __init__(self, factory: Factory, size: int, *, max_keys: int = 8,
                 keys: list[Hashable] | None = None) -> None:  # fmt: skip
        """`factory(key, episode_id)` makes an unstarted sandbox for `key`; `keys` are warmed from
        the start (default: the `None` key)."""
        if size < 0:
            raise ValueError("size must be >= 0")
        self.factory = factory
        self.size = size
        self.max_keys = max(1, max_keys)
        self._idle: OrderedDict[Hashable, deque[tuple[Sandbox, float]]] = OrderedDict()
        for key in [None] if keys is None else keys:
            self._idle[key] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.started = 0  # sandboxes the pool has started
        self.hits = 0
        self.misses = 0
        self.last_error: str | None = None

    # ---------------------------------------------------------------- filling
    def start(self) -> None:
        """Begin filling, on the running loop (also done by the first `take`)."""
        if self._closed or self.size == 0:
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._fill())
        self._wake.set()

    def ready(self, key: Hashable = None) -> int:
        """Idle sandboxes ready for `key` now."""
        return len(self._idle.get(key, ()))

    async def wait_ready(self, key: Hashable = None, count: int | None = None,
                         timeout: float = 60.0) -> bool:  # fmt: skip
        """Wait until `count` (default: `size`) sandboxes are ready for `key`; False on timeout."""
        self.start()
        want = self.size if count is None else count
        end = time.monotonic() + timeout
        while self.ready(key) < want:
            if time.monotonic() > end or self._closed:
                return False
            await asyncio.sleep(0.01)
        return True

    def _deficit(self) -> Hashable | object:
        for key, idle in self._idle.items():
            if len(idle) < self.size:
                return key
        return _FULL

    async def _fill(self) -> None:
        """Start one sandbox at a time for the first key short of `size`; sleep when all are
        full. A start that fails is reported in `last_error` and retried with a growing pause."""
        assert self._wake is not None
        backoff = 0.5
        while not self._closed:
            key = self._deficit()
            if key is _FULL:
                self._wake.clear()
                await self._wake.wait()
                # a hand-out woke us: let its first command run before a start (mostly CPU on
                # this same loop) competes with it
                await asyncio.sleep(REFILL_DELAY_S)
                continue
            sb = self.factory(key, "pool-" + uuid.uuid4().hex[:12])
            try:
                await sb.start()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await sb.close()
                raise
            except Exception as err:  # noqa: BLE001 - kept and retried; take() falls back to cold
                self.last_error = f"{type(err).__name__}: {err}"
                with contextlib.suppress(Exception):
                    await sb.close()
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            backoff = 0.5
            # a start's rows are held for its first command's transaction; here that command is
            # some later episode's, after its hand-out: they are written now, in the background,
            # not in that episode's first command (-0.23 ms a hand-out, 150 interleaved pairs)
            store = getattr(sb.sink, "store", None)
            if store is not None:
                with contextlib.suppress(Exception):  # (kept held, written with a later write)
                    store.flush()
            self.started += 1
            idle = self._idle.get(key)
            if idle is None or self._closed:  # the key was dropped meanwhile
                await sb.close()
                continue
            idle.append((sb, time.monotonic()))

    # ---------------------------------------------------------------- handing out
    async def take(self, key: Hashable = None, *, episode_id: str | None = None) -> Sandbox | None:
        """A started sandbox for `key`, now the episode's own (never handed out again), or None
        when none is ready (the caller starts one cold; the key is kept warm from now on)."""
        if self._closed or self.size == 0:
            return None
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
            while len(self._idle) > self.max_keys:
                _, dropped = self._idle.popitem(last=False)
                for sb, _t in dropped:
                    await sb.close()
        self._idle.move_to_end(key)
        sb: Sandbox | None = None
        while idle:
            candidate, since = idle.popleft()
            if _alive(candidate):
                sb = candidate
                break
            await candidate.close()  # its shell died while idle: nobody gets it
        self.start()
        if sb is None:
            self.misses += 1
            return None
        self.hits += 1
        _hand_over(sb, episode_id, key, time.monotonic() - since)
        return sb

    async def close(self) -> None:
        """Stop filling and close every idle sandbox (handed-out ones are their owners')."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for idle in self._idle.values():
            while idle:
                sb, _ = idle.popleft()
                with contextlib.suppress(Exception):
                    await sb.close()

    def stats(self) -> dict[str, Any]:
        return {"size": self.size, "ready": {str(k): len(v) for k, v in self._idle.items()},
                "started": self.started, "hits": self.hits, "misses": self.misses,
                "last_error": self.last_error}  # fmt: skip


_FULL = object()


def _alive(sb: Sandbox) -> bool:
    proc = sb._proc
    chan = sb._chan
    return (sb.closed_reason is None and proc is not None and proc.poll() is None
            and chan is not None and not chan.eof)  # fmt: skip


def _hand_over(sb: Sandbox, episode_id: str | None, key: Hashable, idle_s: float) -> None:
    """The sandbox becomes the episode's: its id, a record of the hand-out, and a wall-time
    limit counted from now (it was started while nobody used it)."""
    placeholder = sb.episode_id
    if episode_id:
        sb.episode_id = episode_id
    sb.emit(source="sandbox", rule="sandbox.handed_out", pid=sb._init_pid,
            message=f"warm sandbox handed out after {idle_s:.3f}s idle",
            evidence={"pool_episode": placeholder, "key": None if key is None else str(key),
                      "idle_s": round(idle_s, 6), "workspace": str(sb.workspace)})  # fmt: skip
    wall = sb.policy.limits.wall_time
    if sb._wall_task is not None:
        sb._wall_task.cancel()
        sb._wall_task = None
    if wall:
        sb._started_at = time.monotonic()
        sb._wall_task = asyncio.get_running_loop().create_task(sb._wall_timer(wall))
