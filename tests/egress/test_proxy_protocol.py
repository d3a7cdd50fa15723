"""The proxy's wire protocol on bytes alone (no sandbox, no socket): HTTP through h11, SOCKS5."""

from __future__ import annotations

import socket

import pytest

from corral.egress.proxy_protocol import (
    Malformed,
    ProxyRequest,
    Reader,
    granted,
    read_request,
    refused,
)

pytestmark = pytest.mark.unprivileged


class Wire:
    """The client's side as chunks to be read, and what the proxy sent back."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    async def recv(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def send(self, data: bytes) -> None:
        self.sent += data


async def read(*chunks: bytes) -> tuple[ProxyRequest | None, Wire, Reader]:
    w = Wire(*chunks)
    r = Reader(w.recv)
    return await read_request(r, w.send), w, r


async def test_connect_split_anywhere_with_pipelined_bytes_left_for_the_relay() -> None:
    raw = b"CONNECT web.test:8443 HTTP/1.1\r\nHost: web.test:8443\r\nUser-Agent: x\r\n\r\nHELLO"
    for i in range(1, len(raw)):
        req, w, r = await read(raw[:i], raw[i:])
        assert req == ProxyRequest("connect", "web.test", 8443, host_header="web.test:8443")
        assert r.rest() + b"".join(w.chunks) == b"HELLO"  # read ahead, or still unread


async def test_connect_without_host_and_ipv6_targets() -> None:
    req, *_ = await read(b"CONNECT 127.0.0.1:40000 HTTP/1.1\r\n\r\n")
    assert (req.via, req.host, req.port) == ("connect", "127.0.0.1", 40000)
    req, *_ = await read(b"CONNECT [2001:db8::1]:443 HTTP/1.0\r\n\r\n")
    assert (req.host, req.port) == ("2001:db8::1", 443)


async def test_absolute_form_is_forwarded_in_origin_form_without_proxy_headers() -> None:
    raw = (b"POST http://web.test:8080/a/b?q=1 HTTP/1.1\r\nHost: web.test:8080\r\n"
           b"Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n"
           b"Content-Length: 3\r\nX-Trace: AbC\r\n\r\nabc")  # fmt: skip
    req, _, r = await read(raw)
    assert (req.via, req.host, req.port, req.host_header) == ("http", "web.test", 8080,
                                                              "web.test:8080")  # fmt: skip
    assert req.forward == (b"POST /a/b?q=1 HTTP/1.1\r\nHost: web.test:8080\r\nContent-Length: 3"
                           b"\r\nX-Trace: AbC\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert r.rest() == b"abc"
    req, *_ = await read(b"GET http://web.test HTTP/1.1\r\nHost: hidden.example\r\n\r\n")
    assert (req.host, req.port, req.host_header) == ("web.test", 80, "hidden.example")


@pytest.mark.parametrize(("raw", "reason"), [
    (b"hello world\r\n\r\n", "illegal request line"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "absolute http:// URLs"),
    (b"GET https://web.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n", "absolute http:// URLs"),
    (b"CONNECT web.test HTTP/1.1\r\nHost: web.test\r\n\r\n", "is not host:port"),
    (b"CONNECT web.test:99999 HTTP/1.1\r\n\r\n", "is not host:port"),
    (b"GET http://web.test/ HTTP/1.1\r\n\r\n", "Host"),
    (b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n", "no complete request head"),
])  # fmt: skip
async def test_malformed_http_requests_are_raised_with_what_came(raw: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as err:
        await read(raw)
    assert reason in err.value.reason and err.value.via == "http"
    assert err.value.head and err.value.reply.startswith(b"HTTP/1.1 400 ")


def socks(host: bytes, atyp: int, port: int, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, atyp]) + host + port.to_bytes(2, "big")


@pytest.mark.parametrize(("addr", "atyp", "host"), [
    (socket.inet_pton(socket.AF_INET, "203.0.113.5"), 1, "203.0.113.5"),
    (socket.inet_pton(socket.AF_INET6, "64:ff9b::a9fe:a9fe"), 4, "64:ff9b::a9fe:a9fe"),
    (b"\x08web.test", 3, "web.test")])  # fmt: skip
async def test_socks5_connect_split_byte_by_byte(addr: bytes, atyp: int, host: str) -> None:
    raw = b"\x05\x01\x00" + socks(addr, atyp, 443)
    req, w, _ = await read(*[bytes([b]) for b in raw])
    assert req == ProxyRequest("socks5", host, 443) and w.sent == b"\x05\x00"


@pytest.mark.parametrize(("raw", "reason", "reply"), [
    (b"\x05\x01\x02", "no-authentication", b""),
    (b"\x05\x01\x00" + socks(b"\x08web.test", 3, 443, cmd=2), "BIND", b"\x05\x07"),
    (b"\x05\x01\x00" + socks(b"\x08web.test", 3, 443, cmd=3), "UDP ASSOCIATE", b"\x05\x07"),
    (b"\x05\x01\x00" + socks(b"\x01\x02", 9, 443), "address type 9", b"\x05\x08"),
    (b"\x05\x01\x00" + socks(b"\x08web.test", 3, 0), "without host or port", b"\x05\x08"),
    (b"\x04\x01\x01\xbb\xcb\x00\x71\x05\x00", "SOCKS4", b"\x00\x5b"),
])  # fmt: skip
async def test_malformed_socks_requests(raw: bytes, reason: str, reply: bytes) -> None:
    with pytest.raises(Malformed) as err:
        await read(raw)
    assert reason in err.value.reason and err.value.reply.startswith(reply)


async def test_nothing_sent_is_no_request_and_replies_match_the_protocol() -> None:
    assert (await read())[0] is None
    assert granted("connect").startswith(b"HTTP/1.1 200 ") and granted("http") == b""
    assert granted("socks5")[:2] == b"\x05\x00" and refused("socks5", 403, "x")[:2] == b"\x05\x02"
    assert refused("connect", 403, "not allowed").startswith(b"HTTP/1.1 403 Forbidden\r\n")
