"""A `corral serve` killed mid-command: the next start marks the episode interrupted."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from corral.store.sqlite import EventStore
from tests.server.conftest import AUTH, serve

ROCK = "/apis/envs/sandbox/v1"


def test_a_killed_server_leaves_its_running_step_interrupted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("killed-home")
    with serve(home, "--policy", "dev") as s:
        c = httpx.Client(base_url=str(s["url"]), headers=AUTH, timeout=30)
        sid = c.post(f"{ROCK}/start", json={}).json()["result"]["sandbox_id"]
        episode = c.get(f"{ROCK}/get_status", params={"sandbox_id": sid}).json()["result"][
            "corral"]["episode_id"]  # fmt: skip

        def hang() -> None:
            with contextlib.suppress(httpx.TransportError):  # the server dies under it
                httpx.post(str(s["url"]) + f"{ROCK}/run_in_session", headers=AUTH, timeout=60,
                           json={"sandbox_id": sid, "command": "sleep 300"})  # fmt: skip

        t = threading.Thread(target=hang)
        t.start()
        store = EventStore(home / "events.db")
        deadline = time.monotonic() + 30
        while not any(e.rule == "sandbox.command_started" for e in store.query(sandbox_id=sid)):
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        store.close()
        s["proc"].kill()  # type: ignore[attr-defined]
        s["proc"].wait()  # type: ignore[attr-defined]
        t.join()
        c.close()
    with serve(home, "--policy", "dev"):  # the next start
        store = EventStore(home / "events.db")
        events = store.query(sandbox_id=sid)
        (mark,) = [e for e in events if e.rule == "sandbox.interrupted"]
        assert mark.episode_id == episode and mark.evidence["running_steps"] == [mark.step]
        (step,) = [x for x in store.steps(episode) if x.kind == "interrupted"]
        assert step.action == "sleep 300" and step.step == mark.step
        store.close()
    assert not (Path(home) / "egress" / sid).exists()
