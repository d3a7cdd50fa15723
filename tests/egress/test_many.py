"""Fifty sandboxes with the gateway at once: every allowed fetch works, every raw attempt is refused
and recorded against its own sandbox and step, and nothing is left behind in the supervisor."""

from __future__ import annotations

import asyncio
import os
import resource

import psutil
import pytest

from corral import Sandbox
from corral.egress import Egress, Resolver
from corral.policy.loader import load_policy
from tests.egress.conftest import TEST_NAMES, assert_isolated, egress_events, network

pytestmark = [pytest.mark.slow, pytest.mark.unprivileged]

COUNT = 50

FETCH = (
    'python3 -c "import urllib.request as u; '
    "print(u.urlopen('http://web.test:{port}/index.html', timeout=20).read().decode(), end='')\""
)
RAW = "python3 -c \"import socket; socket.create_connection(('203.0.113.7', 8443), timeout=5)\""


def _open_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            continue
    return out


async def _one(store, port: int) -> tuple[Sandbox, object, object, list[int]]:
    policy = load_policy("dev").model_copy(deep=True)
    policy.network = network("web.test", "127.0.0.1")
    policy.gate.enabled = False
    sb = Sandbox(policy, egress=Egress(resolver=Resolver(TEST_NAMES, use_dns=False)), store=store)
    await sb.start()
    try:
        await assert_isolated(sb)  # before the outside address is named
        fetched = await sb.exec(FETCH.format(port=port), step=1)
        raw = await sb.exec(RAW, step=2)
        pids = [sb._init_pid or 0, *sb.host_pids()]
    finally:
        await sb.close()
    return sb, fetched, raw, pids


@pytest.fixture
def low_fd_limit():
    """A soft limit on open files too low for fifty gateways (the hard one stays): the supervisor
    must lift it itself rather than fail with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"hard limit on open files is {hard}; fifty gateways need more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_fifty_sandboxes_with_the_gateway_at_once(serve, store, low_fd_limit):
    srv = serve()
    await _one(
        store, srv.port
    )  # warm up: what the first sandbox opens once (and keeps) is not a leak
    before = _open_fds()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    results = await asyncio.gather(*(_one(store, srv.port) for _ in range(COUNT)))
    ids = {sb.id for sb, *_ in results}
    assert len(ids) == COUNT
    failed = [f"{sb.id}: {f.output[-400:]}" for sb, f, *_ in results if f.exit_code != 0]
    assert not failed, "\n".join(failed)
    for sb, fetched, raw, _ in results:
        assert fetched.stdout == "hello from loopback\n", fetched.output
        assert raw.exit_code != 0 and "refused" in raw.output.lower(), raw.output
        [blocked] = egress_events(sb, "egress.raw_connect")
        assert blocked.sandbox_id == sb.id and blocked.episode_id == sb.episode_id
        assert blocked.step == 2 and blocked.action == "blocked"
        assert blocked.dst.ip == "203.0.113.7" and blocked.dst.port == 8443
        assert blocked.argv[0] == "python3"
        [conn] = [e for e in egress_events(sb, "egress.connection") if e.dst.host == "web.test"]
        assert conn.sandbox_id == sb.id and conn.step == 1 and conn.action == "allowed"
    # every record reached the store, each under its own sandbox
    stored = [e for e in store.query(source="egress") if e.rule == "egress.raw_connect"]
    assert sorted(e.sandbox_id for e in stored if e.sandbox_id in ids) == sorted(ids)
    # nothing left: no process of these sandboxes, no child of the supervisor, no fd
    for *_, pids in results:
        for pid in pids:
            if psutil.pid_exists(pid):
                assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    left = {p.pid for p in psutil.Process().children(recursive=True)} - children
    assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
    # (each own workspace is removed behind close(); its host id's lock goes once it is gone)
    from corral.sandbox import discard

    assert discard.wait(60)
    assert _open_fds() - before == set()
