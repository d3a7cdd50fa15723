"""The proxy's wire protocol on its one port: HTTP (absolute-form requests and CONNECT, parsed with
h11) and SOCKS5 (RFC 1928, CONNECT only, no authentication).

Kept apart from the gateway so it can be tested on bytes alone: `read_request` reads one request
from a `Reader` and answers protocol-level refusals itself; a request it cannot read raises
`Malformed`, which carries what was sent (for the record) and the reply to give.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

HEAD_MAX = 64 * 1024
_STATUS = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway",
           503: "Service Unavailable"}  # fmt: skip
_HOP = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")
SOCKS_OK = bytes([5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
SOCKS_REFUSED = bytes([5, 2, 0, 1, 0, 0, 0, 0, 0, 0])  # "connection not allowed by ruleset"
_SOCKS_NO_METHOD = b"\x05\xff"
_SOCKS_CMD = bytes([5, 7, 0, 1, 0, 0, 0, 0, 0, 0])  # command not supported
_SOCKS_ATYP = bytes([5, 8, 0, 1, 0, 0, 0, 0, 0, 0])  # address type not supported
_SOCKS4_REJECT = bytes([0, 0x5B, 0, 0, 0, 0, 0, 0])


class Malformed(Exception):
    """A request the proxy cannot serve as sent; `head` is what came (shortened for the record)."""

    def __init__(self, via: str, reason: str, head: bytes, reply: bytes) -> None:
        super().__init__(reason)
        self.via, self.reason, self.head, self.reply = via, reason, head[:256], reply


@dataclass
class ProxyRequest:
    via: str  # connect | http | socks5
    host: str
    port: int
    forward: bytes = b""  # for via=http: the request to send upstream (origin-form)
    host_header: str | None = None


class Reader:
    """Buffered reads from a stream, leaving what follows a request for the relay."""

    def __init__(self, recv: Callable[[], Awaitable[bytes]]) -> None:
        self.recv, self.buf = recv, b""

    async def _more(self) -> bool:
        data = await self.recv()
        self.buf += data
        return bool(data)

    async def peek(self) -> bytes:
        if not self.buf:
            await self._more()
        return self.buf

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._more():
                raise EOFError("client closed")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def until(self, sep: bytes, limit: int = HEAD_MAX) -> bytes | None:
        """Up to and including `sep`; None when the stream ends or passes `limit` first."""
        while sep not in self.buf:
            if len(self.buf) > limit or not await self._more():
                return None
        out, _, self.buf = self.buf.partition(sep)
        return out + sep

    def rest(self) -> bytes:
        out, self.buf = self.buf, b""
        return out


def http_status(code: int, reason: str) -> bytes:
    body = f"corral egress: {reason}\n".encode()
    return (f"HTTP/1.1 {code} {_STATUS.get(code, 'Error')}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body  # fmt: skip


def granted(via: str) -> bytes:
    """The reply once the upstream connection is open (nothing for a forwarded HTTP request)."""
    if via == "connect":
        return b"HTTP/1.1 200 Connection established\r\n\r\n"
    return SOCKS_OK if via == "socks5" else b""


def refused(via: str, status: int, message: str) -> bytes:
    return SOCKS_REFUSED if via == "socks5" else http_status(status, message)


def split_hostport(text: str, default: int | None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare host; ValueError when there is no usable port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    else:
        host, port = text, default
    if not host or port is None or not 0 < port < 65536:
        raise ValueError(f"no host and port in {text!r}")
    return host, port


async def read_request(reader: Reader, send: Callable[[bytes], Awaitable[None]]
                       ) -> ProxyRequest | None:  # fmt: skip
    """One proxy request; None when the client closed before sending one."""
    head = await reader.peek()
    if not head:
        return None
    if head[0] == 5:
        return await _socks5(reader, send)
    if head[0] == 4:
        raise Malformed("socks4", "SOCKS4 is not served (use SOCKS5 or HTTP)", head,
                        _SOCKS4_REJECT)  # fmt: skip
    raw = await reader.until(b"\r\n\r\n")
    if raw is None:
        raise Malformed("http", "no complete request head", reader.rest(),
                        http_status(400, "bad proxy request"))  # fmt: skip
    return _http(raw)


def _http(raw: bytes) -> ProxyRequest:
    import h11  # on the first HTTP request to the proxy, not with the gateway

    def bad(reason: str, code: int = 400) -> Malformed:
        return Malformed("http", reason, raw, http_status(code, f"bad proxy request: {reason}"))

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_MAX)
    line = raw.split(b"\r\n", 1)[0]
    if line.startswith(b"CONNECT ") and b"\nhost:" not in raw.lower():
        # RFC 9110 9.3.6: the target names the authority; minimal clients (proxychains, the
        # benchmarks' own) omit Host, which h11 requires of HTTP/1.1
        authority = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
        raw = raw[: len(line)] + b"\r\nHost: " + authority + raw[len(line) :]
    conn.receive_data(raw)
    try:
        req = conn.next_event()
    except h11.RemoteProtocolError as err:
        raise bad(str(err) or "unparsable request") from None
    if not isinstance(req, h11.Request):
        raise bad("no request head")
    method = req.method.decode("ascii", "replace")
    target = req.target.decode("latin-1")
    host_header = next((v.decode("latin-1") for k, v in req.headers if k == b"host"), None)
    if method == "CONNECT":
        try:
            host, port = split_hostport(target, None)
        except ValueError:
            raise bad(f"CONNECT target {target[:80]!r} is not host:port") from None
        return ProxyRequest("connect", host, port, host_header=host_header)
    if not target.lower().startswith("http://"):
        raise bad(f"{method} {target[:80]!r}: the proxy forwards absolute http:// URLs and CONNECT")
    hostport, _, path = target[7:].partition("/")
    try:
        host, port = split_hostport(hostport.rsplit("@", 1)[-1], 80)
    except ValueError:
        raise bad(f"no host in {target[:80]!r}") from None
    lines = [f"{method} /{path} HTTP/{req.http_version.decode()}\r\n".encode("latin-1")]
    for name, value in req.headers.raw_items():
        if name.lower() not in _HOP:
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Connection: close\r\n\r\n")
    return ProxyRequest("http", host, port, b"".join(lines), host_header)


async def _socks5(reader: Reader, send: Callable[[bytes], Awaitable[None]]) -> ProxyRequest:
    greeting = await reader.exactly(2)
    methods = await reader.exactly(greeting[1])
    if 0 not in methods:
        await send(_SOCKS_NO_METHOD)
        raise Malformed("socks5", "SOCKS5 without the no-authentication method",
                        greeting + methods, b"")  # fmt: skip
    await send(b"\x05\x00")
    req = await reader.exactly(4)
    ver, cmd, _, atyp = req
    if ver != 5:
        raise Malformed("socks5", f"SOCKS5 request with version {ver}", req, _SOCKS_CMD)
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, await reader.exactly(4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, await reader.exactly(16))
    elif atyp == 3:
        raw = await reader.exactly((await reader.exactly(1))[0])
        try:
            host = raw.decode("idna")
        except UnicodeError:
            raise Malformed("socks5", "SOCKS5 host name is not a valid name", req + raw,
                            _SOCKS_ATYP) from None  # fmt: skip
    else:
        raise Malformed("socks5", f"SOCKS5 address type {atyp} unknown", req, _SOCKS_ATYP)
    port = int.from_bytes(await reader.exactly(2), "big")
    if cmd != 1:  # CONNECT only: no BIND (an inbound port) and no UDP ASSOCIATE
        what = {2: "BIND", 3: "UDP ASSOCIATE"}.get(cmd, f"command {cmd}")
        raise Malformed("socks5", f"SOCKS5 {what} to {host}:{port} is not served", req,
                        _SOCKS_CMD)  # fmt: skip
    if not host or port == 0:
        raise Malformed("socks5", "SOCKS5 request without host or port", req, _SOCKS_ATYP)
    return ProxyRequest("socks5", host, port)
