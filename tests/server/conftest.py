"""A real `corral serve` subprocess on loopback, shared by this directory's tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(home: Path, *args: str) -> Iterator[dict[str, object]]:
    """`corral serve --port P ARGS...` with its own CORRAL_HOME, up and answering when it yields."""
    port = _port()
    env = dict(os.environ, CORRAL_HOME=str(home))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "serve", "--port", str(port), *args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/apis/corral/v1/health", timeout=1).status_code == 200:
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
    with httpx.Client(base_url=str(server["url"]), timeout=20, trust_env=False) as c:
        yield c


def code(resp: httpx.Response) -> int:
    """The status corral means: ROCK routes answer failures as HTTP 200 `Failed` (as ROCK does)
    and carry corral's own status in `X-Corral-Status`."""
    return int(resp.headers.get("X-Corral-Status", resp.status_code))
