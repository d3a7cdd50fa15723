"""A real `corral serve` subprocess on loopback, shared by this directory's tests.

Every server of the session takes the admin token TOKEN (from CORRAL_TOKEN, as an operator would
give it); the test process has CORRAL_TOKEN set too, so `corral.client` sends it, and `AUTH` is the
header for plain httpx clients.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TOKEN = "test-admin-" + secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _client_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TOKEN", TOKEN)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(home: Path, *args: str, token: str | None = TOKEN, ready_token: str | None = TOKEN,
          scheme: str = "http", verify: object = True) -> Iterator[dict[str, object]]:  # fmt: skip
    """`corral serve --port P ARGS...` with its own CORRAL_HOME, up and answering when it yields.
    `token`: the server's CORRAL_TOKEN (None: unset); `ready_token`: what the readiness poll sends."""
    port = _port()
    env = dict(os.environ, CORRAL_HOME=str(home))
    env.pop("CORRAL_TOKEN", None)
    if token is not None:
        env["CORRAL_TOKEN"] = token
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "serve", "--port", str(port), *args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            headers = {"Authorization": f"Bearer {ready_token}"} if ready_token else {}
            r = httpx.get(url + "/apis/corral/v1/health", timeout=1, headers=headers, verify=verify)
            if r.status_code == 200 or (ready_token is None and r.status_code == 401):
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("corral serve did not come up:\n" + (home / "serve.log").read_text())
        time.sleep(0.05)
    try:
        yield {"url": url, "home": home, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    with serve(tmp_path_factory.mktemp("serve-home")) as s:
        yield s


@pytest.fixture
def http(server: dict[str, object]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=str(server["url"]), timeout=20, trust_env=False, headers=AUTH) as c:
        yield c


def code(resp: httpx.Response) -> int:
    """The status corral means: ROCK routes answer failures as HTTP 200 `Failed` (as ROCK does)
    and carry corral's own status in `X-Corral-Status`."""
    return int(resp.headers.get("X-Corral-Status", resp.status_code))
