"""Bad and oversized input over HTTP: a 4xx naming the input (never a 500), the connection kept
alive, limits answered with 413, and the gate's verdict on commands it cannot analyse."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from corral.policy.loader import load_policy
from corral.server.fusion import lowered
from corral.store.sqlite import EventStore
from tests.server.conftest import AUTH, serve

ROCK = "/apis/envs/sandbox/v1"
FILE_LIMIT = 64 * 1024
BODY_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    with serve(tmp_path_factory.mktemp("small-home"), "--max-request-bytes", str(BODY_LIMIT),
               "--max-file-bytes", str(FILE_LIMIT)) as s:  # fmt: skip
        yield s


def _client(s: dict[str, object]) -> httpx.Client:
    return httpx.Client(base_url=str(s["url"]), timeout=60, trust_env=False, headers=AUTH)


def _start(c: httpx.Client) -> str:
    return c.post(f"{ROCK}/start", json={}).json()["result"]["sandbox_id"]


def test_bodies_over_the_limit_are_413(small: dict[str, object]) -> None:
    with _client(small) as c:
        sid = _start(c)
        big = {"sandbox_id": sid, "command": "echo " + "a" * (BODY_LIMIT + 10)}
        r = c.post(f"{ROCK}/run_in_session", json=big)
        assert r.status_code == 413 and "--max-request-bytes" in r.json()["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"sandbox_id": "' + sid.encode() + b'", "command": "echo '
            for _ in range(BODY_LIMIT // 65536 + 2):
                yield b"a" * 65536
            yield b'"}'

        r = c.post(f"{ROCK}/run_in_session", content=chunks(),
                   headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 413, r.text
        # the server goes on
        assert c.post(f"{ROCK}/execute", json={"sandbox_id": sid, "command": "echo ok"}).json()[
            "result"]["stdout"] == "ok\n"  # fmt: skip


def test_file_transfers_over_the_limit_are_413(small: dict[str, object]) -> None:
    with _client(small) as c:
        sid = _start(c)
        r = c.post(f"{ROCK}/write_file", json={"sandbox_id": sid, "path": "f",
                                               "content": "x" * (FILE_LIMIT + 1)})  # fmt: skip
        assert r.status_code == 413 and "content" in r.json()["message"]
        r = c.post(f"{ROCK}/upload", data={"sandbox_id": sid, "target_path": "u"},
                   files={"file": ("u", b"x" * (FILE_LIMIT + 1))})  # fmt: skip
        assert r.status_code == 413
        c.post(f"{ROCK}/execute", json={"sandbox_id": sid,
                                        "command": f"head -c {FILE_LIMIT + 1} /dev/zero > big"})  # fmt: skip
        r = c.post(f"{ROCK}/read_file", json={"sandbox_id": sid, "path": "big"})
        assert r.status_code == 413 and "'big'" in r.json()["message"]
        r = c.post("/run_code", json={"code": "print(1)", "language": "python",
                                      "files": {"d": base64.b64encode(b"x" * FILE_LIMIT).decode()}})  # fmt: skip
        assert r.status_code == 413
        # at the limit is fine
        r = c.post(f"{ROCK}/write_file", json={"sandbox_id": sid, "path": "f",
                                               "content": "x" * FILE_LIMIT})  # fmt: skip
        assert r.status_code == 200


BAD = [
    ("POST", f"{ROCK}/read_file", {"path": "a\x00b"}, "path"),
    ("POST", f"{ROCK}/read_file", {"path": "x" * 5000}, "path"),
    ("POST", f"{ROCK}/read_file", {"path": "x" * 300}, "path"),
    ("POST", f"{ROCK}/write_file", {"path": "y" * 300, "content": "a"}, "path"),
    ("POST", f"{ROCK}/write_file", {"path": "d/\x00", "content": "a"}, "path"),
    ("POST", f"{ROCK}/create_session", {"session": "s" * 5000}, "session"),
    ("POST", f"{ROCK}/create_session", {"session": "s\x00"}, "session"),
    ("POST", f"{ROCK}/create_session", {"session": "e", "env": {"A\x00": "b"}}, "env"),
    ("POST", f"{ROCK}/execute", {"command": "true", "cwd": "/\x00"}, "cwd"),
    ("POST", f"{ROCK}/execute", {"command": "true", "env": {"A-" * 2500: "v"}}, "env"),
    ("POST", f"{ROCK}/execute", {"command": "true", "env": {"K": "v\x00"}}, "env"),
    ("POST", f"{ROCK}/run_in_session", {"command": "true", "timeout": float("inf")}, "timeout"),
    ("POST", f"{ROCK}/run_in_session", {"command": "true", "session": "n" * 5000}, "session"),
    ("POST", f"{ROCK}/execute", {"command": "true", "timeout": float("nan")}, "timeout"),
    ("POST", f"{ROCK}/upload", None, "file"),
    ("POST", "/run_code", {"code": "1", "language": "python", "files": {"a\x00": "eA=="}},
     "files"),
    ("POST", "/run_code", {"code": "1", "language": "python", "run_timeout": float("inf")},
     "run_timeout"),
    ("POST", "/run_code", {"code": "1", "language": "python", "fetch_files": ["\x00", "z" * 5000]},
     None),
    ("GET", f"{ROCK}/get_status?sandbox_id=" + "q" * 5000, None, "sandbox_id"),
    ("GET", f"{ROCK}/is_alive?sandbox_id=%00", None, "sandbox_id"),
    ("POST", "/apis/corral/v1/env/step", {"episode_id": "\x00", "action": "ls"}, "episode_id"),
]  # fmt: skip


def test_bad_input_is_a_4xx_naming_it_and_the_connection_survives(
    small: dict[str, object],
) -> None:
    with _client(small) as c:
        sid = _start(c)
    u = urlsplit(str(small["url"]))
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        for method, path, body, field in BAD:
            if isinstance(body, dict) and not path.startswith(("/run_code", "/apis/corral")):
                body = {"sandbox_id": sid, **body}
            payload = json.dumps(body).encode() if body is not None else None
            headers = {**AUTH, "content-type": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = json.loads(resp.read())
            sock = conn.sock
            assert sock is not None, (path, body, "the server closed the connection")
            if field is None:  # /run_code runs and reports what it could not fetch
                assert resp.status == 200 and "could not fetch" in data["message"], data
            else:
                assert 400 <= resp.status < 500, (path, body, resp.status, data)
                assert field in data["message"], (field, data["message"])
            # the same connection answers the next request
            conn.request("GET", f"{ROCK}/is_alive?sandbox_id={sid}", headers=AUTH)
            ok = conn.getresponse()
            assert ok.status == 200 and json.loads(ok.read())["result"]["is_alive"] is True
            assert conn.sock is sock, (path, "a new connection was needed")
    finally:
        conn.close()


def _events(s: dict[str, object], sid: str) -> list:
    store = EventStore(Path(str(s["home"])) / "events.db")
    try:
        return store.query(sandbox_id=sid)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("20,000-stage pipeline", " | ".join(["cat"] * 20000)),
        ("10 MB line", "echo " + "A" * 10_000_000),
        ("NUL byte", "echo a\x00b"),
        ("8,000-stage pipeline under the size cap", "|".join(["a"] * 8000)),
    ],
)
def test_the_gate_gives_a_verdict_on_what_it_cannot_analyse(
    server: dict[str, object], name: str, command: str
) -> None:
    with _client(server) as c:
        sid = _start(c)
        r = c.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": command})
        assert r.status_code == 200, r.text
        obs = r.json()["result"]
        assert obs["exit_code"] == 126 and "command blocked by policy" in obs["failure_reason"]
        blocked = [e for e in _events(server, sid) if e.action == "blocked"]
        assert blocked and blocked[-1].source == "policy", name
        assert blocked[-1].rule in ("gate.unanalysable", "analysis.incomplete"), blocked[-1]
        # the sandbox goes on
        ok = c.post(f"{ROCK}/run_in_session", json={"sandbox_id": sid, "command": "echo fine"})
        assert ok.json()["result"]["output"] == "fine\n"
        c.post(f"{ROCK}/stop", json={"sandbox_id": sid})


def test_run_code_memory_limit_can_only_lower_the_policy() -> None:
    pol = load_policy("rl-strict")
    assert pol.limits.memory is not None
    assert lowered(pol, -1).limits.memory == pol.limits.memory
    higher = pol.limits.memory // (1024 * 1024) * 4
    assert lowered(pol, higher).limits.memory == pol.limits.memory
    assert lowered(pol, 64).limits.memory == 64 * 1024 * 1024
    assert pol.limits.memory != 64 * 1024 * 1024  # the policy itself is untouched


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"sandbox_id":', 422),
        (b'{"sandbox_id": "x", "command": "echo \xff"}', 400),
        (b"[1, 2]", 422),
    ],  # fmt: skip
)
def test_bodies_that_are_not_json_objects_get_the_envelope(
    small: dict[str, object], raw: bytes, status: int
) -> None:
    with _client(small) as c:
        r = c.post(f"{ROCK}/execute", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "Failed" and "body" in body["message"] and "safety" in body
