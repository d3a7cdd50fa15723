"""Real servers on loopback and sandboxes whose only way out is the egress gateway."""

from __future__ import annotations

import functools
import http.server
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from corral import Sandbox
from corral.egress import Egress, Resolver
from corral.policy.loader import load_policy
from corral.policy.model import EgressRule, NetworkPolicy


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Server:
    def __init__(self, root: Path, tls: ssl.SSLContext | None = None) -> None:
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(tmp_path: Path) -> Callable[..., Server]:
    servers: list[Server] = []

    def start(root: Path | None = None, tls: ssl.SSLContext | None = None) -> Server:
        if root is None:
            root = tmp_path / f"www{len(servers)}"
            root.mkdir()
            (root / "index.html").write_text("hello from loopback\n")
        s = Server(root, tls)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a certificate for web.test, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=corral test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "web.key", "-out", "web.csr",
        "-subj", "/CN=web.test")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:web.test\n")
    run("x509", "-req", "-in", "web.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "web.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "web.pem", "key": d / "web.key"}


@pytest.fixture
def tls_context(tls_files: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_files["cert"], tls_files["key"])
    return ctx


TEST_NAMES = {"web.test": "127.0.0.1", "pypi.test": "127.0.0.1", "git.test": "127.0.0.1",
              "pool.test": "127.0.0.1", "inside.test": "10.0.0.5",
              "listener.test": "127.0.0.1"}  # fmt: skip


def network(*allow: str | EgressRule, **kw: Any) -> NetworkPolicy:
    rules = [r if isinstance(r, EgressRule) else EgressRule(host=r) for r in allow]
    return NetworkPolicy(allow=rules, **kw)


@pytest.fixture
async def make_sandbox(store: Any) -> AsyncIterator[Callable[..., Any]]:
    """An async factory: `sb = await make_sandbox(network(...), mining="block")`."""
    opened: list[Sandbox] = []

    async def make(net: NetworkPolicy | None = None, **responses: str) -> Sandbox:
        policy = load_policy("dev").model_copy(deep=True)
        policy.network = net or network()
        policy.gate.enabled = False  # these tests exercise the network layer, not the command gate
        policy.monitor.enabled = (
            False  # nor the monitor, which would kill the act before it connects
        )
        for k, v in responses.items():
            setattr(policy.responses, k, v)
        eg = Egress(resolver=Resolver(TEST_NAMES, use_dns=False))
        sb = Sandbox(policy, egress=eg, store=store)
        await sb.start()
        opened.append(sb)
        await assert_isolated(sb)
        return sb

    yield make
    for sb in opened:
        await sb.close()


async def assert_isolated(sb: Sandbox) -> None:
    """Before any outside address is named: the sandbox's namespace holds loopback and no route."""
    r = await sb.exec(
        "python3 -c \"import pathlib; l=[x.split(':')[0].strip() for x in "
        "pathlib.Path('/proc/net/dev').read_text().splitlines()[2:]]; "
        "r=pathlib.Path('/proc/net/route').read_text().splitlines()[1:]; print(l, len(r))\""
    )
    assert r.stdout.strip() == "['lo'] 0", r.output


def egress_events(sb: Sandbox, rule: str | None = None) -> list[Any]:
    return [e for e in sb.events if e.source == "egress" and (rule is None or e.rule == rule)]


async def wait_for_event(
    sb: Sandbox, rule: str, timeout: float = 5.0, source: str = "egress"
) -> Any:
    """Connection records are written when a relay ends: await one through the sink's listeners."""
    import asyncio

    found = [e for e in sb.events if e.source == source and e.rule == rule]
    if found:
        return found[-1]
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def listen(ev: Any) -> None:
        if ev.source == source and ev.rule == rule and not fut.done():
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(ev))

    sb.sink.listeners.append(listen)
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        raise AssertionError(
            f"no {rule} event; egress events: {[e.rule for e in egress_events(sb)]}"
        ) from None
    finally:
        sb.sink.listeners.remove(listen)
