"""The HTTP API against a real `corral serve` subprocess on loopback."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from corral.client import CorralAPIError, CorralClient
from corral.rl import SandboxEnv
from tests.server.conftest import AUTH, code

ROCK = "/apis/envs/sandbox/v1"
SAFETY_KEYS = {"events", "worst", "penalty", "terminated"}


def _ok(resp: httpx.Response) -> dict:
    body = resp.json()
    assert resp.status_code == 200, body
    assert body["status"] == "Success", body
    assert set(body["safety"]) == SAFETY_KEYS
    return body["result"]


def _start(http: httpx.Client) -> str:
    return _ok(http.post(f"{ROCK}/start", json={"image": "python:3.11", "memory": "8g"}))[
        "sandbox_id"
    ]


def test_openapi_lists_rock_fusion_and_env_paths(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for name in ("start", "start_async", "is_alive", "get_status", "create_session",
                 "run_in_session", "execute", "read_file", "write_file", "upload", "stop"):  # fmt: skip
        assert f"{ROCK}/{name}" in paths, name
    assert "/run_code" in paths and "/run_jupyter" in paths
    for name in ("get_token", "delete", "restart"):
        assert f"{ROCK}/{name}" in paths, name
    for name in ("make", "reset", "step", "close"):
        assert f"/apis/v1/envs/gem/{name}" in paths, name
    assert "/apis/corral/v1/swerex/start" in paths
    runtime = http.get("/apis/corral/v1/swerex/openapi.json").json()["paths"]
    for name in ("is_alive", "create_session", "run_in_session", "close_session", "execute",
                 "read_file", "write_file", "upload", "close"):  # fmt: skip
        assert f"/{{sandbox_id}}/{name}" in runtime, name
    assert "/apis/corral/v1/env/step" in paths


def test_rock_lifecycle_session_files_and_stop(http: httpx.Client, tmp_path) -> None:
    sid = _start(http)
    assert _ok(http.get(f"{ROCK}/is_alive", params={"sandbox_id": sid}))["is_alive"] is True
    status = _ok(http.get(f"{ROCK}/get_status", params={"sandbox_id": sid}))
    assert status["is_alive"] and status["sandbox_id"] == sid and status["image"] == "python:3.11"
    _ok(http.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "s1",
                                                  "env": {"GREETING": "hello"}}))  # fmt: skip
    run = {"sandbox_id": sid, "session": "s1", "action_type": "bash", "check": "raise"}
    obs = _ok(http.post(f"{ROCK}/run_in_session", json={**run, "command": "cd /tmp && X=7"}))
    assert obs["exit_code"] == 0
    obs = _ok(
        http.post(f"{ROCK}/run_in_session", json={**run, "command": 'echo "$GREETING $X $PWD"'})
    )
    assert obs["output"] == "hello 7 /tmp\n"
    # execute is one-shot: its cwd and env do not leak into the session
    res = _ok(http.post(f"{ROCK}/execute", json={"sandbox_id": sid, "command": ["sh", "-c", "pwd; echo $Y"],
                                                 "cwd": "/workspace", "env": {"Y": "why"}}))  # fmt: skip
    assert res == {"stdout": "/workspace\nwhy\n", "stderr": "", "exit_code": 0}
    # check=raise (ROCK's default): a non-zero exit is Failed with rocklet's message
    failed = http.post(f"{ROCK}/run_in_session", json={**run, "command": "pwd; false"})
    body = failed.json()
    assert failed.status_code == 200 and body["status"] == "Failed" and code(failed) == 400
    assert "failed with exit code 1" in body["message"] and body["result"]["output"] == "/tmp\n"
    silent = {**run, "check": "silent", "command": "pwd; (exit 3)"}
    obs = _ok(http.post(f"{ROCK}/run_in_session", json=silent))
    assert obs["exit_code"] == 3
    obs = _ok(
        http.post(f"{ROCK}/run_in_session", json={**run, "check": "ignore", "command": "false"})
    )
    assert obs["exit_code"] is None
    _ok(http.post(f"{ROCK}/write_file", json={"sandbox_id": sid, "path": "/workspace/a.txt",
                                              "content": "written"}))  # fmt: skip
    assert (
        _ok(http.post(f"{ROCK}/read_file", json={"sandbox_id": sid, "path": "a.txt"}))["content"]
        == "written"
    )
    local = tmp_path / "up.bin"
    local.write_bytes(b"\x00\x01payload")
    up = _ok(http.post(f"{ROCK}/upload", data={"sandbox_id": sid, "target_path": "/workspace/d/up.bin"},
                       files={"file": ("up.bin", local.read_bytes())}))  # fmt: skip
    assert up["success"] and up["file_name"] == "up.bin"
    res = _ok(
        http.post(
            f"{ROCK}/execute", json={"sandbox_id": sid, "command": "od -c d/up.bin | head -1"}
        )
    )
    assert "p   a   y" in res["stdout"]
    assert "stopped" in _ok(http.post(f"{ROCK}/stop", json={"sandbox_id": sid}))
    assert _ok(http.get(f"{ROCK}/is_alive", params={"sandbox_id": sid}))["is_alive"] is False
    gone = http.post(f"{ROCK}/run_in_session", json={**run, "command": "true"})
    assert code(gone) == 410 and "gone" in gone.json()["message"]
    assert set(gone.json()["safety"]) == SAFETY_KEYS


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/execute", {"command": "true"}, 422, "sandbox_id"),
        ("post", "/execute", {"sandbox_id": "  ", "command": "true"}, 422, "sandbox_id"),
        (
            "post",
            "/run_in_session",
            {"sandbox_id": "x", "command": "true", "timeout": "soon"},
            422,
            "timeout",
        ),
        (
            "post",
            "/run_in_session",
            {"sandbox_id": "x", "command": "true", "check": "maybe"},
            422,
            "check",
        ),
        ("post", "/write_file", {"sandbox_id": "x", "path": "a"}, 422, "content"),
        ("get", "/get_status", None, 422, "sandbox_id"),
        ("post", "/run_in_session", {"sandbox_id": "sb-nope", "command": "true"}, 404, "sb-nope"),
        ("post", "/stop", {"sandbox_id": "sb-nope"}, 404, "sb-nope"),
    ],
)
def test_bad_requests_name_the_field(http: httpx.Client, method: str, path: str, body: dict | None,
                                     status: int, field: str) -> None:  # fmt: skip
    url = ROCK + path
    resp = http.get(url) if method == "get" else http.post(url, json=body)
    assert code(resp) == status, resp.text
    data = resp.json()
    assert data["status"] == "Failed" and field in data["message"]
    assert set(data["safety"]) == SAFETY_KEYS


def test_bad_requests_on_a_live_sandbox(http: httpx.Client) -> None:
    sid = _start(http)
    r = http.post(f"{ROCK}/read_file", json={"sandbox_id": sid, "path": "/etc/passwd"})
    assert code(r) == 400 and "outside the workspace" in r.json()["message"]
    r = http.post(f"{ROCK}/read_file", json={"sandbox_id": sid, "path": "missing.txt"})
    assert code(r) == 404 and "missing.txt" in r.json()["message"]
    r = http.post(
        f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": "true", "session": "nope"}
    )
    assert code(r) == 404 and "nope" in r.json()["message"]
    r = http.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "a"})
    assert r.status_code == 200
    r = http.post(f"{ROCK}/create_session", json={"sandbox_id": sid, "session": "a"})
    assert code(r) == 409
    r = http.post("/run_code", json={"code": "x", "language": "cobol"})
    assert code(r) == 422 and "language" in r.json()["message"]
    r = http.post("/run_code", json={"code": "x", "language": "python", "files": {"a": "%%%"}})
    assert code(r) == 422 and "files.a" in r.json()["message"]
    http.post(f"{ROCK}/stop", json={"sandbox_id": sid})


def _run_in_background(http_url: str, body: dict) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go() -> None:
        t0 = time.monotonic()
        with httpx.Client(base_url=http_url, timeout=20, trust_env=False, headers=AUTH) as c:
            out["resp"] = c.post(f"{ROCK}/run_in_session", json=body)
        out["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=go)
    th.start()
    return th, out


def _wait_for_child_of_shell(http: httpx.Client, sid: str, name: str) -> None:
    """Wait until the session's shell has the command's process: no fixed sleeps."""
    shell = _ok(http.get(f"{ROCK}/get_status", params={"sandbox_id": sid}))["corral"]["shell_pid"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
            if any(name in Path(f"/proc/{k}/cmdline").read_text() for k in kids):
                return
        except OSError:
            pass
        time.sleep(0.01)
    pytest.fail(f"{name} never started in the sandbox")


def test_stop_mid_command_returns_promptly_with_410(http: httpx.Client, server: dict) -> None:
    sid = _start(http)
    th, out = _run_in_background(
        str(server["url"]), {"sandbox_id": sid, "command": "echo before; sleep 60"}
    )
    _wait_for_child_of_shell(http, sid, "sleep")
    _ok(http.post(f"{ROCK}/stop", json={"sandbox_id": sid}))
    th.join(15)
    assert not th.is_alive(), "run_in_session hung after the sandbox was stopped"
    resp = out["resp"]
    assert code(resp) == 410, resp.text
    body = resp.json()
    assert "ended while the command ran" in body["message"]
    assert body["result"]["exit_code"] == 137 and "before" in body["result"]["output"]


def test_sandbox_killed_from_outside_mid_command(http: httpx.Client, server: dict) -> None:
    sid = _start(http)
    th, out = _run_in_background(str(server["url"]), {"sandbox_id": sid, "command": "sleep 60"})
    _wait_for_child_of_shell(http, sid, "sleep")
    pid = _ok(http.get(f"{ROCK}/get_status", params={"sandbox_id": sid}))["corral"]["init_pid"]
    os.kill(pid, signal.SIGKILL)
    th.join(15)
    assert not th.is_alive(), "run_in_session hung after the sandbox was killed"
    obs = out["resp"].json()["result"]
    assert obs["exit_code"] == 137
    # the sandbox's session comes back for the next command
    obs = _ok(http.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": "echo back"}))
    assert obs["output"] == "back\n"
    http.post(f"{ROCK}/stop", json={"sandbox_id": sid})


def test_run_code_python_bash_files_stdin_timeout(http: httpx.Client) -> None:
    files = {"data/in.txt": base64.b64encode(b"21\n").decode()}
    code = "n = int(open('data/in.txt').read())\nopen('out.txt', 'w').write(str(n * 2))\nprint(input())"
    r = http.post("/run_code", json={"code": code, "language": "python", "stdin": "from stdin",
                                     "files": files, "fetch_files": ["out.txt", "nope.txt"]})  # fmt: skip
    body = r.json()
    assert r.status_code == 200 and body["status"] == "Success", body
    assert body["run_result"]["status"] == "Finished" and body["run_result"]["return_code"] == 0
    assert body["run_result"]["stdout"] == "from stdin\n"
    assert base64.b64decode(body["files"]["out.txt"]) == b"42"
    assert "nope.txt" in body["message"]
    assert set(body["safety"]) == SAFETY_KEYS
    body = http.post("/run_code", json={"code": "echo err >&2; exit 4", "language": "bash"}).json()
    assert body["status"] == "Failed" and body["run_result"]["return_code"] == 4
    assert body["run_result"]["stderr"] == "err\n"
    body = http.post(
        "/run_code", json={"code": "sleep 30", "language": "bash", "run_timeout": 0.5}
    ).json()
    assert body["status"] == "Failed" and body["run_result"]["status"] == "TimeLimitExceeded"


def test_safety_state_counts_findings(http: httpx.Client) -> None:
    sid = _start(http)
    r = http.post(
        f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": "echo x > /etc/corral-test"}
    )
    body = r.json()
    assert body["result"]["exit_code"] != 0
    assert body["safety"]["events"] >= 1 and body["safety"]["penalty"] < 0
    assert body["safety"]["worst"] in {"low", "medium", "high", "critical"}
    http.post(f"{ROCK}/stop", json={"sandbox_id": sid})


def test_env_over_the_client(server: dict) -> None:
    task = {"instruction": "make answer.txt hold 42",
            "files": {"tests/check.sh": 'test "$(cat answer.txt)" = 42\n'},
            "check": "bash tests/check.sh", "max_steps": 4}  # fmt: skip
    with CorralClient(str(server["url"])) as client:
        env = SandboxEnv(task, client=client)
        obs, info = env.reset(seed=1)
        assert obs == "make answer.txt hold 42" and info["safety"]["terminated"] is False
        obs, reward, term, trunc, info = env.step("echo 42 > answer.txt")
        assert (reward, term, trunc) == (0.0, False, False)
        obs, reward, term, trunc, info = env.step("submit")
        assert (reward, term, trunc) == (1.0, True, False) and info["solved"] is True
        with pytest.raises(CorralAPIError) as err:
            client.env_step(env.episode_id, "true")
        assert err.value.status_code in (404, 409)
        env.close()
