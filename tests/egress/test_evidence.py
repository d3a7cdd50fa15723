"""Protocol evidence from the client's first bytes: stratum, SSH through the proxy, domain fronting."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import pytest

from corral.policy.model import EgressRule
from tests.egress.conftest import egress_events, network, wait_for_event

pytestmark = pytest.mark.unprivileged

CONNECT_PY = r"""
import select, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(1)
    if not chunk:
        sys.exit("proxy closed")
    head += chunk
if b" 200 " not in head.split(b"\r\n")[0]:
    sys.exit("proxy refused: " + head.decode(errors="replace"))
if len(sys.argv) > 3:  # a client that sends one line and prints what comes back
    s.sendall(sys.argv[3].encode() + b"\n")
    data = s.recv(4096)
    print("reply:", data.decode(errors="replace").strip() or "<cut>")
    sys.exit(0)
while True:  # a ProxyCommand: relay stdin/stdout
    r, _, _ = select.select([s, 0], [], [])
    if s in r:
        d = s.recv(65536)
        if not d:
            break
        sys.stdout.buffer.write(d); sys.stdout.flush()
    if 0 in r:
        d = sys.stdin.buffer.read1(65536)
        if not d:
            s.shutdown(socket.SHUT_WR)
        else:
            s.sendall(d)
"""


class LineServer:
    """A loopback listener that records every line it gets: a fake pool, or an SSH banner."""

    def __init__(self, greeting: bytes = b"", reply: bytes = b"", once: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.greeting, self.reply, self.once = greeting, reply, once
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a cut connection resets: expected here
            if self.greeting:
                conn.sendall(self.greeting)
            while data := conn.recv(4096):
                self.received.append(data)
                if self.reply:
                    conn.sendall(self.reply)
                if self.once:
                    return

    def close(self) -> None:
        # shutdown first: a close() alone leaves the accepting thread blocked on the socket (which
        # keeps listening), and its fd number free for the next test's sockets
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def line_server():
    made: list[LineServer] = []

    def make(**kw: Any) -> LineServer:
        made.append(LineServer(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


async def test_stratum_to_an_allowed_pool_is_cut_while_http_to_it_works(make_sandbox, serve,
                                                                         line_server):  # fmt: skip
    pool = line_server(reply=b'{"id":1,"result":[["mining.notify","ae6812eb4cd7735a"],"08",4]}\n')
    web = serve()
    sb = await make_sandbox(network("pool.test", "127.0.0.1"), mining="block")
    await sb.write_file("connect.py", CONNECT_PY)
    sub = '{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]}'
    r = await sb.exec(f"python3 connect.py pool.test {pool.port} '{sub}'")
    assert r.stdout.strip() == "reply: <cut>", r.output
    assert pool.received == []  # the subscribe never reached the pool
    ev = await wait_for_event(sb, "mining.stratum_wire")
    assert ev.category == "mining" and ev.action == "blocked" and ev.severity == "critical"
    assert ev.evidence["method"] == "mining.subscribe" and ev.dst.port == pool.port
    assert ev.argv[:2] == ["python3", "connect.py"]
    r = await sb.exec(f"curl -sS http://pool.test:{web.port}/")
    assert r.exit_code == 0 and r.stdout == "hello from loopback\n", r.output
    # a line that is not stratum goes through, untouched; the pool's stratum answer does not
    r = await sb.exec(f"python3 connect.py pool.test {pool.port} hello")
    assert r.stdout.strip() == "reply: <cut>", r.output
    assert pool.received == [b"hello\n"]
    down = [
        e for e in egress_events(sb, "mining.stratum_wire") if e.evidence["direction"] == "down"
    ]
    assert down and down[0].evidence["method"] == "mining.notify"
    echo = line_server(reply=b"hello back\n")
    r = await sb.exec(f"python3 connect.py pool.test {echo.port} hello")
    assert r.stdout.strip() == "reply: hello back", r.output


async def test_xmrig_style_login_is_mining(make_sandbox, line_server):
    pool = line_server(reply=b"{}\n")
    sb = await make_sandbox(network("pool.test", "127.0.0.1"), mining="block")
    await sb.write_file("connect.py", CONNECT_PY)
    login = '{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"x","pass":"x","agent":"XMRig/6.21"}}'
    r = await sb.exec(f"python3 connect.py pool.test {pool.port} '{login}'")
    assert r.stdout.strip() == "reply: <cut>", r.output
    ev = await wait_for_event(sb, "mining.stratum_wire")
    assert ev.evidence["agent"] == "XMRig/6.21"


async def test_ssh_reverse_tunnel_through_the_proxy_is_refused(make_sandbox, line_server):
    banner = line_server(greeting=b"SSH-2.0-OpenSSH_9.2p1 corral-test\r\n")
    sb = await make_sandbox(network("127.0.0.1"))
    await sb.write_file("connect.py", CONNECT_PY)
    r = await sb.exec(
        f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o ConnectTimeout=5 "
        f"-o ProxyCommand='python3 /workspace/connect.py %h %p' -p {banner.port} "
        f"-R 2222:localhost:22 u@127.0.0.1",
        timeout=20,
    )
    assert r.exit_code == 255, r.output
    # ssh -R above the ProxyCommand: judged when it connects, with the plain command's severity
    ev = await wait_for_event(sb, "tunnel.ssh_forward_on_wire")
    assert ev.category == "tunnel" and ev.action == "blocked" and ev.attack == "T1572"
    assert ev.severity == "critical" and ev.evidence["outcome"] == "allowed"
    assert ev.dst.ip == "127.0.0.1" and ev.dst.port == banner.port
    assert any(p and p[0] == "ssh" and "-R" in p for p in ev.evidence["parents"])
    assert not any(d.startswith(b"SSH-") for d in banner.received)


async def test_ssh_allowed_by_policy_is_not_a_tunnel_event(make_sandbox, line_server):
    banner = line_server(greeting=b"SSH-2.0-OpenSSH_9.2p1 corral-test\r\n", once=True)
    allow = EgressRule(host="127.0.0.1", ports=[banner.port], protocols=["ssh"])
    sb = await make_sandbox(network(allow))
    await sb.write_file("connect.py", CONNECT_PY)
    await sb.exec(
        f"ssh -o BatchMode=yes -o ConnectTimeout=3 -o ProxyCommand='python3 /workspace/connect.py"
        f" %h %p' -p {banner.port} u@127.0.0.1",
        timeout=20,
    )
    await wait_for_event(sb, "egress.connection")
    assert not egress_events(sb, "tunnel.ssh_via_proxy")
    assert any(d.startswith(b"SSH-2.0-") for d in banner.received)


async def test_tls_sni_unlike_the_connect_host_is_domain_fronting(make_sandbox, serve,
                                                                 tls_context, tls_files):  # fmt: skip
    srv = serve(tls=tls_context)
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    await sb.write_file("ca.pem", tls_files["ca"].read_bytes())
    r = await sb.exec(
        "python3 -c \"import socket, ssl; s=socket.create_connection(('127.0.0.1', 3128)); "
        f"s.sendall(b'CONNECT web.test:{srv.port} HTTP/1.1\\r\\n\\r\\n'); print(s.recv(100)); "
        "c=ssl.create_default_context(cafile='/workspace/ca.pem'); "
        "c.wrap_socket(s, server_hostname='hidden.example')\""
    )
    assert r.exit_code != 0
    ev = await wait_for_event(sb, "tunnel.domain_fronting")
    assert ev.evidence["sni"] == "hidden.example" and ev.dst.host == "web.test"
    assert ev.action == "blocked"


async def test_terminate_response_ends_the_episode(make_sandbox, line_server):
    pool = line_server(reply=b"{}\n")
    sb = await make_sandbox(network("pool.test", "127.0.0.1"), mining="terminate")
    await sb.write_file("connect.py", CONNECT_PY)
    sub = '{"id": 1, "method": "mining.subscribe", "params": []}'
    r = await sb.exec(f"python3 connect.py pool.test {pool.port} '{sub}'")
    ev = await wait_for_event(sb, "mining.stratum_wire")
    assert ev.action == "terminated" and pool.received == []
    await wait_for_event(sb, "respond.terminate", source="sandbox")
    assert sb.terminated and "mining" in (sb.closed_reason or ""), (r.output, sb.closed_reason)
