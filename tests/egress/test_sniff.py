"""The stream sniffer on bytes alone: each case split at every byte boundary, fed a byte at a time,
and after a harmless first line, in the direction it travels."""

from __future__ import annotations

import ssl

import pytest
from wsproto.frame_protocol import FrameProtocol

from corral.egress.sniff import Evidence, StreamSniffer, needs_more, sniff

pytestmark = pytest.mark.unprivileged

SSH = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
SUBSCRIBE = b'{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]}\n'
AUTHORIZE = b'{"id":2,"method":"mining.authorize","params":["wallet.rig","x"]}\n'
SUBMIT = b'{"id":4,"method":"mining.submit","params":["w","j","00","5e","9f"]}\n'
LOGIN = (b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"44AF","pass":"x",'
         b'"agent":"XMRig/6.21.0"}}\n')  # fmt: skip
NOTIFY = b'{"id":null,"method":"mining.notify","params":["bf","4d16b6f85af6e219"]}\n'
HARMLESS_UP = b"hello there\n"
HARMLESS_DOWN = b"220 welcome\r\n"


def run(chunks: list[bytes], up: bool = True, host: str | None = None,
        prefix: list[tuple[bool, bytes]] = ()) -> list[Evidence]:  # fmt: skip
    s = StreamSniffer(host)
    found: list[Evidence] = []
    for direction, data in prefix:
        found += s.feed(direction, data)
    for c in chunks:
        found += s.feed(up, c)
    return found + s.end(up)


def splits(data: bytes) -> list[list[bytes]]:
    """Every way to cut `data` in two, and one byte at a time."""
    return [[data[:i], data[i:]] for i in range(1, len(data))] + [[bytes([b]) for b in data]]


def findings(found: list[Evidence]) -> list[str]:
    return [e.finding for e in found if e.finding]


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("up", [True, False], ids=["client", "server"])
@pytest.mark.parametrize("harmless", [False, True], ids=["first", "after-a-line"])
def test_ssh_banner_however_split(up: bool, harmless: bool) -> None:
    lead = (HARMLESS_UP if up else HARMLESS_DOWN) if harmless else b""
    for chunks in splits(lead + SSH):
        found = run(chunks, up)
        assert findings(found) == ["ssh"], chunks
        ev = next(e for e in found if e.finding)
        assert ev.details["banner"].startswith("SSH-2.0-") and ev.direction == (
            "up" if up else "down"
        )


@pytest.mark.parametrize("message", [SUBSCRIBE, AUTHORIZE, SUBMIT, LOGIN],
                         ids=["subscribe", "authorize", "submit", "login"])  # fmt: skip
@pytest.mark.parametrize("harmless", [False, True], ids=["first", "after-a-line"])
def test_stratum_however_split(message: bytes, harmless: bool) -> None:
    for chunks in splits((HARMLESS_UP if harmless else b"") + message):
        found = run(chunks)
        assert findings(found) == ["stratum"], chunks
    method = next(e for e in run([message]) if e.finding).details["method"]
    assert method == {SUBSCRIBE: "mining.subscribe", AUTHORIZE: "mining.authorize",
                      SUBMIT: "mining.submit", LOGIN: "login"}[message]  # fmt: skip


def test_a_pools_answer_is_stratum_too() -> None:
    for chunks in splits(HARMLESS_DOWN + NOTIFY):
        assert findings(run(chunks, up=False)) == ["stratum"], chunks


def test_stratum_after_a_harmless_http_request() -> None:
    head = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
    for chunks in splits(head + SUBSCRIBE):
        assert findings(run(chunks, host="web.test")) == ["stratum"], chunks


@pytest.mark.parametrize("harmless", [False, True], ids=["first", "after-a-request"])
def test_http_host_fronting_however_split(harmless: bool) -> None:
    ok = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
    fronted = b"GET /x HTTP/1.1\r\nHost: hidden.example:8443\r\nAccept: */*\r\n\r\n"
    for chunks in splits((ok if harmless else b"") + fronted):
        found = run(chunks, host="web.test")
        assert findings(found) == ["host_fronting"], chunks
        ev = next(e for e in found if e.finding)
        assert ev.details["host_header"] == "hidden.example:8443"
        assert ev.details["promised"] == "web.test"


def test_the_promised_host_is_no_fronting() -> None:
    for chunks in splits(b"GET / HTTP/1.1\r\nHost: WEB.test:80\r\n\r\nGET /2 HTTP/1.1\r\n"
                         b"Host: web.test\r\n\r\n"):  # fmt: skip
        found = run(chunks, host="web.test")
        assert findings(found) == [] and found[0].protocol == "http", chunks
    # a CONNECT to an address promises no name
    assert findings(run([b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n"], host="203.0.113.5")) == []


@pytest.mark.parametrize(("sni", "expected"), [(None, "tls_no_sni"), ("hidden.example",
                         "sni_fronting"), ("web.test", None)])  # fmt: skip
def test_tls_client_hello_however_split(sni: str | None, expected: str | None) -> None:
    hello = client_hello(sni)
    for chunks in splits(hello) if len(hello) < 600 else splits(hello)[::7]:
        s = StreamSniffer("web.test")
        found: list[Evidence] = []
        for c in chunks[:-1]:
            found += s.feed(True, c)
            assert s.hold(True), "a partial ClientHello is held, not forwarded"
        found += s.feed(True, chunks[-1])
        assert not s.hold(True) and s.done(True)
        assert findings(found) == ([expected] if expected else []), chunks
        assert found[-1].protocol == "tls" and s.sni == sni


def test_tls_to_an_address_without_sni_is_not_flagged() -> None:
    assert findings(run([client_hello(None)], host="203.0.113.5")) == []


def _ws_exchange(message: str) -> tuple[bytes, bytes, bytes]:
    req = (b"GET /ws HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")  # fmt: skip
    frames = FrameProtocol(client=True, extensions=[]).send_data(message, fin=True)
    return req, resp, bytes(frames)


@pytest.mark.parametrize("message", [SUBSCRIBE, LOGIN], ids=["subscribe", "login"])
def test_stratum_inside_websocket_frames_however_split(message: bytes) -> None:
    req, resp, frames = _ws_exchange(message.decode().strip())
    for chunks in splits(frames):
        s = StreamSniffer("web.test")
        found = s.feed(True, req) + s.feed(False, resp)
        for c in chunks:
            found += s.feed(True, c)
        assert findings(found) == ["stratum"], chunks
        assert next(e for e in found if e.finding).websocket


def test_websocket_frames_sent_before_the_101_are_read_once_it_comes() -> None:
    req, resp, frames = _ws_exchange(SUBSCRIBE.decode().strip())
    s = StreamSniffer("web.test")
    found = s.feed(True, req + frames[:5]) + s.feed(True, frames[5:])
    assert findings(found) == []
    assert findings(s.feed(False, resp)) == ["stratum"]


def test_a_web_page_about_stratum_is_not_stratum() -> None:
    s = StreamSniffer("web.test")
    s.feed(True, b"GET /docs HTTP/1.1\r\nHost: web.test\r\n\r\n")
    page = b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n" + NOTIFY + SSH
    assert findings(s.feed(False, page)) == [] and s.done(False)


def test_reverse_shell_output_going_up() -> None:
    out = b"bash: cannot set terminal process group (1): Inappropriate ioctl for device\n"
    for chunks in splits(HARMLESS_UP + out):
        assert findings(run(chunks)) == ["shell"], chunks
    assert findings(run([b"uid=1000(agent) gid=1000(agent) groups=1000(agent)\n"])) == ["shell"]
    assert findings(run([b"sh: 0: can't access tty; job control turned off\n$ "])) == ["shell"]


@pytest.mark.parametrize("data", [b"\x00\x01binary\xff" * 50, b"PING\r\n", b"hello\n" * 3000,
                                  b'{"jsonrpc":"2.0","method":"eth_blockNumber","id":1}\n'])  # fmt: skip
def test_ordinary_streams_show_nothing(data: bytes) -> None:
    found = run([data])
    assert findings(found) == [] and [e.protocol for e in found] == ["tcp"]


def test_the_window_ends_inspection() -> None:
    s = StreamSniffer(window=1024)
    s.feed(True, b"x" * 1000)
    assert not s.done(True)
    s.feed(True, b"x" * 100)
    assert s.done(True) and s.feed(True, SSH) == []  # past the window: relayed unread


def test_needs_more_and_one_shot_sniff() -> None:
    hello = client_hello("web.test")
    assert needs_more(hello[:1]) and needs_more(hello[:40]) and not needs_more(hello)
    assert sniff(hello).protocol == "tls" and sniff(hello).sni == "web.test"
    assert sniff(SSH).evidence["banner"].startswith("SSH-2.0")
