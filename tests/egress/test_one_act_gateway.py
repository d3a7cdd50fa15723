"""One act, two sensors, one penalty: a renamed miner whose pool is only in its config file is seen
at its exec (the exec sensor reads the config) and on the wire (the gateway reads stratum); the
episode is charged the act's penalty once (issue 10 item 3)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest

from corral import Sandbox
from corral.egress import Egress, Resolver
from corral.policy.loader import policy_from_mapping
from corral.rl.reward import Finding, RewardShaper
from tests.conftest import wait_event
from tests.egress.conftest import TEST_NAMES, assert_isolated

# a miner that reaches its pool through the sandbox's proxy (as xmrig's --proxy does)
MINER = r"""#!/usr/bin/python3
import hashlib, json, os, socket, time
cfg = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")))
pool = cfg["pools"][0]
host, port = pool["url"].split("://", 1)[1].rsplit(":", 1)
s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
f = s.makefile("rwb", buffering=0)
f.write(b'{"id": 1, "method": "mining.subscribe", "params": ["kworker/1.0"]}\n')
f.readline()
end = time.time() + 20
n = 0
while time.time() < end:
    hashlib.sha256(str(n).encode()).digest()
    n += 1
"""


class Pool:
    """A fake stratum pool on the host's loopback (the test's own network namespace)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ValueError):
            for line in conn.makefile("rb"):
                mid = json.loads(line).get("id")
                conn.sendall(
                    json.dumps({"id": mid, "result": True, "error": None}).encode() + b"\n"
                )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def pool():  # type: ignore[no-untyped-def]
    p = Pool()
    yield p
    p.close()


async def test_a_miner_seen_at_its_exec_and_on_the_wire_costs_one_act(pool: Pool) -> None:
    # mining alerts so both sensors see it (rl-strict would kill it at its exec); the pool's
    # loopback address is declared known (a user_known_* macro), so only the mining act is judged
    pol = policy_from_mapping({
        "extends": "rl-strict", "gate": {"enabled": False},
        "responses": {"mining": "alert"},
        "network": {"allow": [{"host": "pool.test"}, {"host": "127.0.0.1"}]},
        "rules": {"macros": {"user_known_internal_destinations": {"dst.ip": "127.0.0.1"}}},
    })  # fmt: skip
    config = {"pools": [{"url": f"stratum+tcp://pool.test:{pool.port}", "user": "w", "pass": "x"}]}
    eg = Egress(resolver=Resolver(TEST_NAMES, use_dns=False))
    async with Sandbox(pol, egress=eg, store=False) as sb:
        await assert_isolated(sb)
        await sb.write_file(".cache/kworker", MINER, 0o755)
        await sb.write_file(".cache/config.json", json.dumps(config), 0o644)
        await sb.exec("cd .cache && (nohup ./kworker >/dev/null 2>&1 &)", step=1, timeout=30)
        mining = lambda e: e.category == "mining" and e.severity != "info"  # noqa: E731
        at_exec = await wait_event(sb, lambda e: mining(e) and e.source == "process", timeout=30)
        on_wire = await wait_event(sb, lambda e: mining(e) and e.source == "egress", timeout=30)
    assert at_exec.rule == "mining.config_pools_at_exec"
    assert on_wire.rule == "mining.stratum_wire"
    assert at_exec.pid == on_wire.pid and at_exec.origin_step == on_wire.origin_step == 1
    found = [e for e in sb.events if mining(e)]
    shaper = RewardShaper(pol)
    one_act = min(shaper.finding_penalty(Finding("mining", e.severity, e.rule)) for e in found)
    assert one_act < 0
    assert sb.penalty == one_act
    assert shaper.penalty(sb.events) == one_act
    assert [e.step for e in sb.events if e.rule == "respond.penalty"] == [1]
