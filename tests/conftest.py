"""Shared fixtures. The suite runs inside a loopback-only network namespace (scripts/test-isolated.sh)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import time
import traceback
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


# Where sandboxes start and close in this process: every fd the supervisor closes there is closed
# once. A second close of a number is EBADF only while nobody re-used it; when someone had, it
# closed their fd (a shell channel's, which then reads blocking and stalls the event loop), so an
# EBADF here is the visible half of a bug that, on a busier run, is a hang.
_ONE_CLOSE_DIRS = {"sandbox", "egress", "monitor", "server", "rl", "security"}


@pytest.fixture(autouse=True)
def _each_fd_closed_once(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                         ) -> Iterator[None]:  # fmt: skip
    try:
        parts = Path(str(request.node.path)).relative_to(Path(__file__).parent).parts
    except ValueError:  # not a test of this directory
        parts = ()
    if not parts or parts[0] not in _ONE_CLOSE_DIRS:
        yield
        return
    twice: list[str] = []
    real_close = os.close

    def close(fd: int) -> None:
        try:
            real_close(fd)
        except OSError as err:
            if err.errno == errno.EBADF:  # recorded even where the caller suppresses it
                where = "".join(traceback.format_stack(limit=8)[:-1])
                twice.append(f"os.close({fd}) on a closed fd, from:\n{where}")
            raise

    monkeypatch.setattr(os, "close", close)
    yield
    monkeypatch.setattr(os, "close", real_close)
    assert not twice, "an fd was closed twice:\n" + "\n".join(twice[:3])


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
