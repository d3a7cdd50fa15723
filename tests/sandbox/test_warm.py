"""The warm pool: started sandboxes handed out once each, refilled in the background, recorded
under the episode they were handed to."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Hashable
from pathlib import Path

import httpx
import psutil

from corral import Sandbox
from corral.sandbox.warm import WarmPool
from corral.store.sqlite import EventStore
from tests.sandbox.helpers import sandbox_policy
from tests.server.conftest import AUTH, serve


def _pool(size: int, store: EventStore, **kw: object) -> WarmPool:
    pol = sandbox_policy()

    def factory(key: Hashable, episode_id: str) -> Sandbox:
        return Sandbox(pol, episode_id=episode_id, store=store)

    return WarmPool(factory, size, **kw)  # type: ignore[arg-type]


async def test_hand_out_is_started_and_never_reused(store: EventStore) -> None:
    pool = _pool(2, store)
    try:
        assert await pool.wait_ready(timeout=120)
        seen: set[str] = set()
        workspaces: set[Path] = set()
        for i in range(5):
            sb = await pool.take(episode_id=f"ep-warm-{i}")
            if sb is None:  # the refill has not caught up: wait, never share
                assert await pool.wait_ready(count=1, timeout=120)
                sb = await pool.take(episode_id=f"ep-warm-{i}")
            assert sb is not None
            assert sb.id not in seen and sb.workspace not in workspaces
            seen.add(sb.id)
            workspaces.add(sb.workspace)  # type: ignore[arg-type]
            assert sb.episode_id == f"ep-warm-{i}"
            r = await sb.exec("test ! -e mark && touch mark && echo fresh")
            assert r.stdout == "fresh\n"
            await sb.close()
        events = store.query(episode_id="ep-warm-3")
        rules = [e.rule for e in events]
        assert rules[0] == "sandbox.handed_out"
        assert events[0].evidence["pool_episode"].startswith("pool-")
        assert "sandbox.command_ended" in rules and rules[-1] == "sandbox.stopped"
        assert pool.hits >= 5
    finally:
        await pool.close()


async def test_a_new_key_is_a_miss_then_kept_warm(store: EventStore) -> None:
    pool = _pool(1, store, keys=[])
    try:
        assert await pool.take("img-a") is None
        assert pool.misses == 1
        assert await pool.wait_ready("img-a", timeout=120)
        sb = await pool.take("img-a")
        assert sb is not None and sb.episode_id.startswith("pool-")
        await sb.close()
    finally:
        await pool.close()


async def test_a_sandbox_that_died_idle_is_not_handed_out(store: EventStore) -> None:
    pool = _pool(1, store)
    try:
        assert await pool.wait_ready(timeout=120)
        dead = pool._idle[None][0][0]
        assert dead._init_pid is not None
        os.kill(dead._init_pid, signal.SIGKILL)
        assert dead._proc is not None
        dead._proc.wait(timeout=30)
        sb = await pool.take()
        assert sb is not dead
        assert dead.closed_reason is not None
        if sb is not None:
            assert (await sb.exec("echo ok")).stdout == "ok\n"
            await sb.close()
    finally:
        await pool.close()


async def test_close_ends_the_idle_sandboxes(store: EventStore) -> None:
    pool = _pool(2, store)
    assert await pool.wait_ready(timeout=120)
    idle = [sb for sb, _ in pool._idle[None]]
    pids = [sb._init_pid for sb in idle]
    await pool.close()
    assert all(sb.closed_reason for sb in idle)
    assert not any(p and psutil.pid_exists(p) for p in pids)
    assert await pool.take() is None


def test_serve_warm_hands_out_started_sandboxes(tmp_path: Path) -> None:
    with serve(tmp_path, "--warm", "1") as s, httpx.Client(base_url=str(s["url"]), timeout=60,
                                                           headers=AUTH, trust_env=False) as http:  # fmt: skip
        ids = []
        for i in range(3):
            if i:  # the first start is cold and teaches the pool its shape; let it fill
                time.sleep(3)
            r = http.post("/apis/envs/sandbox/v1/start", json={"episode_id": f"ep-serve-{i}"})
            assert r.status_code == 200, r.text
            sid = r.json()["result"]["sandbox_id"]
            ids.append(sid)
            r = http.post("/apis/envs/sandbox/v1/execute",
                          json={"sandbox_id": sid, "command": "echo hi"})  # fmt: skip
            assert r.status_code == 200 and "hi" in r.text, r.text
        assert len(set(ids)) == 3
    store = EventStore(tmp_path / "events.db")
    try:
        handed = [e.episode_id for e in store.query() if e.rule == "sandbox.handed_out"]
    finally:
        store.close()
    assert "ep-serve-0" not in handed  # nothing was warm yet
    assert set(handed) == {"ep-serve-1", "ep-serve-2"}


async def test_a_pool_start_is_in_the_store_before_any_hand_out(store: EventStore) -> None:
    """Its rows (held for a first command, which for a pool start is a later episode's) are
    written as the pool fills: another reader of the database sees every idle sandbox's start,
    and the episode handed one pays nothing for it."""
    import sqlite3

    pool = _pool(2, store)
    taken: list[Sandbox] = []
    try:
        assert await pool.wait_ready(timeout=120)
        for i in range(2):
            sb = await pool.take(episode_id=f"ep-fresh-{i}")
            assert sb is not None
            taken.append(sb)
        db = sqlite3.connect(store.path)  # a reader of its own: committed rows only
        try:
            started = {row[0] for row in db.execute(
                "SELECT sandbox_id FROM events WHERE rule = 'sandbox.started'")}  # fmt: skip
        finally:
            db.close()
        assert {sb.id for sb in taken} <= started, ([sb.id for sb in taken], started)
    finally:
        for sb in taken:
            await sb.close()
        await pool.close()
