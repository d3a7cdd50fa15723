"""A ROCK sandbox that corral's policy ended is closed, not only forgotten: the monitor lets go of
it and its steps are in the store, charged by origin step, without a /stop from the client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from corral.store.sqlite import EventStore
from tests.server.test_http_api import ROCK, _ok, _start

TUNNEL = "ssh -R 8080:localhost:22 agent@203.0.113.7"  # TEST-NET; refused before it runs


def test_a_policy_ended_sandbox_is_closed_and_recorded(http: httpx.Client, server: dict) -> None:
    sid = _start(http)
    eid = _ok(http.get(f"{ROCK}/get_status", params={"sandbox_id": sid}))["corral"]["episode_id"]
    r = http.post(f"{ROCK}/execute", json={"sandbox_id": sid, "command": TUNNEL})
    assert r.json()["safety"]["terminated"] is True, r.text
    store = EventStore(Path(str(server["home"])) / "events.db")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rules = [e.rule for e in store.query(episode_id=eid)]
            if "sandbox.stopped" in rules:
                break
            time.sleep(0.05)
        assert "sandbox.stopped" in rules, rules  # closed by the server itself
        [step] = [s for s in store.steps(eid) if s.kind == "action"]
        assert step.penalty == -1.0 and step.terminated
    finally:
        store.close()
