"""Bad input to the SWE-ReX runtime routes (per sandbox, `X-API-Key`): a 422 naming the field, as
on every other route of `corral serve`; what SWE-ReX itself raises (no such session, a file error)
its 511 exception transfer, which `RemoteRuntime` raises again. Never a 500; the connection
survives."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server.conftest import AUTH

BAD = [
    ("create_session", {"session": "s" * 5000}, "session"),
    ("create_session", {"session": "a\x00"}, "session"),
    ("run_in_session", {"command": "true", "session": "n" * 5000}, "session"),
    ("run_in_session", {"command": "true", "timeout": float("inf")}, "timeout"),
    ("run_in_session", {"command": "true", "timeout": float("nan")}, "timeout"),
    ("execute", {"command": "true", "timeout": float("inf")}, "timeout"),
    ("execute", {"command": "true", "cwd": "/\x00"}, "cwd"),
    ("execute", {"command": "true", "env": {"K": "v\x00"}}, "env"),
    ("execute", {"command": "true", "env": {"A-" * 2500: "v"}}, "env"),
    ("read_file", {"path": "a\x00b"}, "path"),
    ("read_file", {"path": "x" * 5000}, "path"),
    ("write_file", {"path": "d/\x00", "content": "a"}, "path"),
    ("write_file", {"path": "f", "content": "\ud800"}, "content"),
    ("close_session", {"session": "z\x00"}, "session"),
    ("upload", None, "file"),
]  # fmt: skip
# SWE-ReX's own exceptions: (route, body, the class RemoteRuntime raises, a word of its message)
RAISED = [
    ("run_in_session", {"command": "true", "session": "nope"}, "SessionDoesNotExistError", "nope"),
    ("close_session", {"session": "nope"}, "SessionDoesNotExistError", "nope"),
    ("read_file", {"path": "y" * 300}, "builtins.OSError", "File name too long"),
    ("read_file", {"path": "missing.txt"}, "builtins.FileNotFoundError", "missing.txt"),
    ("run_in_session", {"command": "exit 3"}, "NonZeroExitCodeError", "exit code 3"),
]  # fmt: skip


@pytest.fixture(scope="module")
def runtime(server: dict[str, object]) -> Iterator[tuple[str, dict[str, str]]]:
    with httpx.Client(base_url=str(server["url"]), timeout=30, trust_env=False,
                      headers=AUTH) as c:  # fmt: skip
        started = c.post("/apis/corral/v1/swerex/start").json()
        key = {"X-API-Key": started["auth_token"]}
        assert c.post(started["url"] + "/create_session", json={}, headers=key).status_code == 200
        yield started["url"], key
        c.post(started["url"] + "/close", headers=key)


@pytest.mark.parametrize(("route", "body", "field"), BAD)
def test_bad_input_is_a_4xx_naming_it(runtime: tuple[str, dict[str, str]], route: str,
                                      body: dict, field: str) -> None:  # fmt: skip
    url, key = runtime
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request("POST", f"{u.path}/{route}", body=payload,
                     headers={**key, "content-type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == 422, (route, body, resp.status, data)
        assert field in json.dumps(data["detail"]), data
        sock = conn.sock
        conn.request("GET", f"{u.path}/is_alive", headers=key)
        ok = conn.getresponse()
        assert ok.status == 200 and json.loads(ok.read())["is_alive"] is True
        assert conn.sock is sock and sock is not None
    finally:
        conn.close()


@pytest.mark.parametrize(("route", "body", "raised", "word"), RAISED)
def test_what_swerex_raises_is_transferred(runtime: tuple[str, dict[str, str]], route: str,
                                           body: dict, raised: str, word: str) -> None:  # fmt: skip
    url, key = runtime
    r = httpx.post(f"{url}/{route}", json=body, headers=key, timeout=30)
    assert r.status_code == 511, r.text
    exc = r.json()["swerexception"]
    assert exc["class_path"].endswith(raised) and word in exc["message"], exc
