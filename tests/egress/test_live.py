"""Per-sandbox caps and a live change of a running sandbox's network policy."""

from __future__ import annotations

import asyncio

import pytest

from tests.egress.conftest import egress_events, network, wait_for_event

pytestmark = pytest.mark.unprivileged

HOLD_PY = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(f"CONNECT {sys.argv[1]}:{sys.argv[2]} HTTP/1.1\r\n\r\n".encode())
print(s.recv(200).split(b"\r\n")[0].decode(), flush=True)
print("closed" if s.recv(10) == b"" else "data", flush=True)
"""


async def _held(sb, n: int) -> None:
    for _ in range(500):
        if len(sb.egress.conns) >= n and all(c.relay for c in sb.egress.conns):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the held connection never opened")


async def test_live_policy_change_cuts_open_connections_and_refuses_new_ones(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    await sb.write_file("hold.py", HOLD_PY)
    await sb.exec(f"python3 hold.py web.test {srv.port} > hold.out 2>&1 &")
    await _held(sb, 1)
    cut = await sb.egress.update(network("other.test", "127.0.0.1"))
    assert cut == [f"web.test:{srv.port}"]
    ev = await wait_for_event(sb, "egress.connection")
    assert ev.evidence["cut"] == "policy changed" and ev.action == "blocked"
    r = await sb.exec(f"curl -sS -f http://web.test:{srv.port}/")
    assert r.exit_code == 22
    assert egress_events(sb, "egress.not_allowed")
    assert egress_events(sb, "egress.policy_updated")[0].evidence["cut"] == cut
    r = await sb.exec("cat hold.out")
    assert "200" in r.stdout and "closed" in r.stdout, r.output


async def test_concurrent_connection_cap(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("web.test", "127.0.0.1", max_connections=1))
    await sb.write_file("hold.py", HOLD_PY)
    await sb.exec(f"python3 hold.py web.test {srv.port} > hold.out 2>&1 &")
    await _held(sb, 1)
    r = await sb.exec(f"curl -sS -f http://web.test:{srv.port}/")
    assert r.exit_code == 22 and "503" in r.stderr
    [ev] = egress_events(sb, "egress.max_connections")
    assert ev.action == "blocked" and ev.argv[0] == "curl"


async def test_byte_cap_cuts_the_transfer(make_sandbox, serve, tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    (root / "big.bin").write_bytes(b"x" * 2_000_000)
    srv = serve(root)
    sb = await make_sandbox(network("web.test", "127.0.0.1", max_bytes=100_000))
    r = await sb.exec(f"curl -sS -o big.bin http://web.test:{srv.port}/big.bin")
    assert r.exit_code != 0
    assert (sb.workspace / "big.bin").stat().st_size < 2_000_000
    ev = await wait_for_event(sb, "egress.max_bytes")
    assert ev.action == "blocked" and ev.evidence["total_bytes"] > 100_000
    ev = await wait_for_event(sb, "egress.connection")
    assert ev.evidence["cut"] == "max_bytes"
    r = await sb.exec(f"curl -sS -f http://web.test:{srv.port}/")
    assert r.exit_code == 22 and len(egress_events(sb, "egress.max_bytes")) == 2


async def test_tools_in_the_sandbox_see_the_proxy(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec(
        "echo $HTTP_PROXY $https_proxy $ALL_PROXY $no_proxy; git config --get http.proxy;"
        " python3 -c 'import urllib.request as u; print(u.getproxies()[\"https\"])'"
    )
    lines = r.stdout.splitlines()
    assert lines[0] == ("http://127.0.0.1:3128 http://127.0.0.1:3128 socks5h://127.0.0.1:3128 "
                        "localhost,127.0.0.1,::1")  # fmt: skip
    assert lines[-1] == "http://127.0.0.1:3128"
    r = await sb.exec("cat /etc/resolv.conf")
    assert r.stdout.startswith("nameserver 127.0.0.1")


async def test_npm_sees_the_proxy(make_sandbox):
    sb = await make_sandbox()
    r = await sb.exec("npm config get https-proxy; npm config get proxy", timeout=60)
    assert r.stdout.split() == ["http://127.0.0.1:3128", "http://127.0.0.1:3128"], r.output


async def test_no_gateway_means_no_sandbox(store):
    """Fail closed: when the gateway cannot be set up inside, the sandbox refuses to start."""
    from corral import Sandbox
    from corral.egress import Egress
    from corral.sandbox.errors import SandboxRefused

    sb = Sandbox("dev", egress=Egress(proxy_port=53), store=store)  # a port the launcher can't bind
    with pytest.raises(SandboxRefused, match="egress gateway could not be set up"):
        await sb.start()
    await sb.close()


async def test_no_gateway_refusal_names_the_gateway_when_the_sandbox_ended_first(
    store, monkeypatch
):
    """The launcher's report is the refusal even when the sandbox is already gone by the time the
    supervisor writes the shell's bootstrap (a busy supervisor): never a bare "Broken pipe"."""
    import time

    from corral import Sandbox
    from corral.egress import Egress
    from corral.sandbox.errors import SandboxRefused
    from corral.sandbox.shell import ShellChannel

    sb = Sandbox("dev", egress=Egress(proxy_port=53), store=store)
    send = ShellChannel.send
    waited: list[int | None] = []

    def late_send(chan: ShellChannel, data: bytes) -> None:
        if not waited:  # the bootstrap: written only once the failed launcher took bwrap down
            assert sb._proc is not None
            end = time.monotonic() + 30
            while sb._proc.poll() is None and time.monotonic() < end:
                time.sleep(0.01)
            waited.append(sb._proc.poll())
        send(chan, data)

    monkeypatch.setattr(ShellChannel, "send", late_send)
    with pytest.raises(SandboxRefused, match="egress gateway could not be set up"):
        await sb.start()
    assert waited and waited[0] is not None  # the sandbox had ended before the bootstrap
    await sb.close()


@pytest.mark.parametrize("launcher", ["python", "native"])
async def test_both_launchers_give_the_same_gateway(make_sandbox, serve, monkeypatch, launcher):
    from corral.egress.gateway import launcher_binary

    if launcher == "python":
        monkeypatch.setenv("CORRAL_EGRESS_LAUNCHER", "python")
    elif launcher_binary() is None:
        pytest.skip("the C launcher is not built (make install builds it)")
    srv = serve()
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    r = await sb.exec(f"curl -sS http://web.test:{srv.port}/")
    assert r.stdout == "hello from loopback\n", r.output
    r = await sb.exec("python3 -c \"import socket; socket.create_connection(('203.0.113.7', 80))\"")
    assert r.exit_code != 0
    assert egress_events(sb, "egress.raw_connect")[0].dst.ip == "203.0.113.7"
    r = await sb.exec("ls /proc/self/fd | wc -l; cat /proc/1/cmdline | tr '\\0' ' '")
    assert int(r.stdout.split()[0]) <= 5, r.output  # nothing of the launcher left open
