"""ROCK sessions over HTTP are separate shells in one sandbox (a real `corral serve` on loopback)."""

from __future__ import annotations

import threading

import httpx
import psutil

from tests.server.conftest import AUTH, code

ROCK = "/apis/envs/sandbox/v1"


def _ok(resp: httpx.Response) -> dict:
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "Success", body
    return body["result"]


def _run(http: httpx.Client, sid: str, session: str, command: str, **kw: object) -> dict:
    return _ok(http.post(f"{ROCK}/run_in_session",
                         json={"sandbox_id": sid, "session": session, "command": command, **kw}))  # fmt: skip


def test_sessions_are_separate_shells(http: httpx.Client) -> None:
    sid = _ok(http.post(f"{ROCK}/start", json={}))["sandbox_id"]
    for name, env in (("s1", {"WHO": "one"}), ("s2", {"WHO": "two"})):
        _ok(http.post(f"{ROCK}/create_session",
                      json={"sandbox_id": sid, "session": name, "env": env}))  # fmt: skip
    r = http.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "s1"})
    assert code(r) == 409 and "s1" in r.json()["message"]
    _run(http, sid, "s1", "cd /tmp && X=1")
    _run(http, sid, "default", "cd / && X=main")
    assert _run(http, sid, "s1", 'echo "$PWD $X $WHO"')["output"] == "/tmp 1 one\n"
    assert _run(http, sid, "s2", 'echo "$PWD [$X] $WHO"')["output"] == "/workspace [] two\n"
    assert _run(http, sid, "default", 'echo "$PWD $X"')["output"] == "/ main\n"
    # a timeout in s1 while s2 runs: s2's command finishes, both sessions live on
    out: dict[str, httpx.Response] = {}

    def slow() -> None:
        with httpx.Client(
            base_url=str(http.base_url), timeout=20, trust_env=False, headers=AUTH
        ) as c:
            out["r"] = c.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "session": "s2",
                              "command": "sleep 1.5; echo slow-done"})  # fmt: skip

    th = threading.Thread(target=slow)
    th.start()
    r = http.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "session": "s1",
                                                  "command": "sleep 60", "timeout": 0.3})  # fmt: skip
    body = r.json()  # ROCK: a timeout is Failed, whatever `check` says
    assert body["status"] == "Failed" and code(r) == 408 and "timeout after 0.3" in body["message"]
    obs = body["result"]
    assert obs["exit_code"] == 124 and "timed out" in obs["failure_reason"]
    th.join(20)
    assert out["r"].json()["result"]["output"] == "slow-done\n"
    assert _run(http, sid, "s1", "echo $X")["output"] == "1\n"
    # close one session: it is gone, the others are not
    _ok(http.post(f"{ROCK}/close_session", json={"sandbox_id": sid, "session": "s2"}))
    r = http.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "session": "s2",
                                                  "command": "true"})  # fmt: skip
    assert code(r) == 404 and "session" in r.json()["message"]
    # `exit` ends a session; the next call says so and it can be created again
    assert _run(http, sid, "s1", "exit 4", check="silent")["exit_code"] == 4
    r = http.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "session": "s1",
                                                  "command": "true"})  # fmt: skip
    assert code(r) == 404 and "ended" in r.json()["message"]
    _ok(http.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "s1"}))
    assert _run(http, sid, "s1", "echo again")["output"] == "again\n"
    # stop ends every session: no process of the sandbox is left
    _ok(http.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "s3"}))
    _run(http, sid, "s3", "sleep 300 &")
    status = _ok(http.get(f"{ROCK}/get_status", params={"sandbox_id": sid}))
    assert status["corral"]["sessions"] == ["default", "s1", "s3"]
    init = psutil.Process(status["corral"]["init_pid"])
    tree = [init, *init.children(recursive=True)]
    assert len([p for p in tree if p.name() == "bash"]) >= 3
    _ok(http.post(f"{ROCK}/stop", json={"sandbox_id": sid}))
    _, alive = psutil.wait_procs(tree, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
