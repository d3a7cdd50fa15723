"""Shared fixtures. The suite runs inside a loopback-only network namespace (scripts/test-isolated.sh)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.events.model import Event
from corral.monitor import Monitor
from corral.sandbox.sandbox import Sandbox
from corral.store.sqlite import EventStore

# No test starts a fork server by accident (`corral run`/`check` as processes would, and it would
# outlive the test): tests/cli/test_forkserver.py opts back in with its own runtime directory.
os.environ["CORRAL_DAEMON"] = "0"


def _only_loopback() -> bool:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    links = [line.split(":")[1].strip() for line in out.splitlines() if ":" in line]
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout.strip()
    return links == ["lo"] and not routes


@pytest.fixture(scope="session", autouse=True)
def _isolated_network() -> None:
    """Refuse to run any test where a bug could send a packet off the machine."""
    if not _only_loopback() and not os.environ.get("CORRAL_TEST_ALLOW_NETWORK"):
        pytest.exit(
            "tests must run in a loopback-only network namespace: use `make test`", returncode=3
        )


@pytest.fixture(autouse=True)
def corral_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Path]:  # fmt: skip
    home = tmp_path_factory.mktemp("corral-home")
    monkeypatch.setenv("CORRAL_HOME", str(home))
    yield home
    # the shared store of this test's home (Sandbox's default): three fds each, a thousand tests
    EventStore.release_shared(home)


@pytest.fixture
def store(corral_home: Path) -> EventStore:
    s = EventStore(corral_home / "events.db")
    yield s
    s.close()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the runtime monitor, the responder and the demo: a real monitor thread, real sandboxes ----


@pytest.fixture
def monitor() -> Monitor:
    """The monitor as `make test` runs it: polling (the connector needs the initial netns)."""
    m = Monitor(mode="poll", gpu=False)
    m.start()
    yield m
    m.close()


async def wait_event(sb: Sandbox, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
    """The first event of `sb` matching `pred`, awaited (no fixed sleeps); fails on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for e in list(sb.events):
            if pred(e):
                return e
        await asyncio.sleep(0.01)
    seen = [(e.rule, e.category, e.action) for e in sb.events]
    raise AssertionError(f"no matching event within {timeout}s; saw {seen}")


@pytest.fixture(name="wait_event")
def _wait_event_fixture() -> Callable[..., object]:
    return wait_event


def behind_the_gate(preset: str = "rl-strict", **over: object):  # type: ignore[no-untyped-def]
    """`preset` with its command gate off: these tests are of the runtime monitor, the line behind
    the gate (which refuses some of these commands before they run, and has its own tests)."""
    from corral.policy.loader import policy_from_mapping

    return policy_from_mapping({"extends": preset, "gate": {"enabled": False}, **over})


@pytest.fixture(name="behind_the_gate")
def _behind_the_gate_fixture() -> Callable[..., object]:
    return behind_the_gate
