"""What a connection speaks, read from both directions across its first kilobytes.

The relay shows every chunk to a `StreamSniffer` before forwarding it, so the chunk that completes a
piece of evidence (the rest of an SSH banner, the newline of a `mining.subscribe`) is never
delivered: a connection is judged on everything said so far, however the bytes were split or
whatever harmless line came first. HTTP is parsed with h11; after an HTTP Upgrade answered by 101
the WebSocket frames (wsproto) are unwrapped and their payloads read like a plain stream, inflated
first where the 101 accepted permessage-deflate (`wsdeflate`: at most the window's worth per
direction, so a decompression bomb costs the gateway nothing; one that inflates far past that from
a few bytes is itself evidence, `inflate_bomb`).

Recognised: an SSH identification line (either side), an interactive shell's output going up (a
reverse shell: `id` output, bash's "no job control" line, a `bash-5.2$ ` prompt), stratum (JSON-RPC `mining.*`, `eth_submit*`,
the XMRig `login`, and a pool's `mining.notify` / job replies), a TLS ClientHello without SNI where a
name was promised (CONNECT by name), SNI unlike the promised name, and HTTP `Host` unlike it
(domain fronting).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # h11 and wsproto load on the first HTTP stream a sandbox opens, not before
    import h11
    from wsproto.frame_protocol import FrameProtocol

from corral.egress.wsdeflate import BoundedInflate, negotiated

WINDOW = 16 * 1024  # bytes per direction read before the rest is only relayed
TLS_RECORD_MAX = 16 * 1024 + 5
_TAIL = 256  # a signature is shorter than this: a partial line is rescanned only over its tail
_HEAD_MAX = 16 * 1024
# inflated bytes per compressed byte, when a direction's inflate cap is hit, past which it is a
# bomb (text and JSON deflate 3-20x; a run of one byte ~1000x)
BOMB_RATIO = 100

STRATUM_METHODS = ("mining.subscribe", "mining.authorize", "mining.submit", "mining.extranonce",
                   "mining.extranonce.subscribe", "mining.configure", "mining.suggest_difficulty",
                   "eth_submitLogin", "eth_getWork", "eth_submitWork",
                   "eth_submitHashrate")  # fmt: skip
_SSH = re.compile(rb"(?<![^\n])(SSH-(?:2\.0|1\.99|1\.5)-[^\r\n]{0,200})")
_CLIENT_RPC = re.compile(
    rb'"method"\s*:\s*"(mining\.(?:subscribe|authorize|submit|extranonce\.subscribe|configure)'
    rb"|eth_submitLogin|eth_submitWork|eth_getWork|eth_submitHashrate)\""
)
_POOL_RPC = re.compile(
    rb'"method"\s*:\s*"(mining\.(?:notify|set_difficulty|set_target|set_extranonce))"'
    rb'|\[\s*"(mining\.notify)"'
    rb'|"job"\s*:\s*\{[^{}]*"(blob)"\s*:\s*"[0-9a-fA-F]{64,}'
)
# an interactive shell's output going up a connection: what a reverse shell sends back
_SHELL = re.compile(
    rb"(?<![^\n])(uid=\d+\([\w.-]+\) gid=\d+\([\w.-]+\)"
    rb"|(?:ba|z|k|da)?sh: (?:cannot set terminal process group|no job control in this shell)"
    rb"|(?:da)?sh: \d+: can't access tty; job control turned off"
    rb"|(?:sh|bash)-\d+(?:\.\d+)*[$#] )"
)
_HTTP_START = re.compile(rb"[A-Z]{1,16}(?: |\Z)")


@dataclass
class Evidence:
    """One thing learnt about a connection: a protocol and, when it matters, what gives it away."""

    protocol: str  # ssh | stratum | shell | tls | http | tcp
    finding: str | None = None  # ssh | stratum | shell | tls_no_sni | sni_fronting | host_fronting
    direction: str = "up"  # up: client to server; down: server to client
    websocket: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """The `evidence` part of a gateway fact (what the rule packs read)."""
        return {"protocol": self.protocol, "finding": self.finding, "direction": self.direction,
                "websocket": self.websocket, **self.details}  # fmt: skip


@dataclass
class Sniff:
    """A one-shot reading of a client's first bytes (kept for callers that have only those)."""

    protocol: str  # http | tls | ssh | stratum | tcp
    sni: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def needs_more(data: bytes) -> bool:
    """A TLS record split over reads: wait for the whole first record (at most 16 KiB)."""
    if data[:1] == b"\x16" and len(data) < 5:
        return True
    if len(data) >= 5 and data[0] == 0x16 and data[1] == 0x03:
        return len(data) < min(5 + int.from_bytes(data[3:5], "big"), TLS_RECORD_MAX)
    return False


def tls_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello, or None."""
    return _client_hello(data)[1]


def _client_hello(data: bytes) -> tuple[bool, str | None]:
    """(is a ClientHello, its server_name or None)."""
    try:
        if data[0] != 0x16 or data[5] != 0x01:
            return False, None
        p = 9 + 2 + 32  # record(5) + handshake header(4) + version + random
        p += 1 + data[p]  # session id
        p += 2 + int.from_bytes(data[p : p + 2], "big")  # cipher suites
        p += 1 + data[p]  # compression methods
        end = p + 2 + int.from_bytes(data[p : p + 2], "big")
        p += 2
        while p + 4 <= min(end, len(data)):
            etype = int.from_bytes(data[p : p + 2], "big")
            elen = int.from_bytes(data[p + 2 : p + 4], "big")
            body = data[p + 4 : p + 4 + elen]
            if etype == 0:  # server_name: list len, type, name len, name
                if len(body) >= 5 and body[2] == 0:
                    n = int.from_bytes(body[3:5], "big")
                    return True, body[5 : 5 + n].decode("ascii", errors="replace").lower()
                return True, None
            p += 4 + elen
    except IndexError:
        return True, None
    return True, None


def _host_only(authority: str) -> str:
    a = authority.strip().lower()
    if a.startswith("["):
        return a[1:].split("]", 1)[0]
    if a.count(":") == 1:
        a = a.split(":", 1)[0]
    return a.rstrip(".")


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _json_line(line: bytes) -> dict[str, Any] | None:
    """A stratum message in one complete line, or None."""
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    if not isinstance(msg, dict):
        return None
    method = str(msg.get("method", ""))
    params = msg.get("params")
    text = line[:200].decode(errors="replace")
    if method in STRATUM_METHODS:
        return {"method": method, "line": text}
    if (
        method == "login"
        and isinstance(params, dict)
        and ("agent" in params or ("login" in params and "pass" in params))
    ):
        return {"method": "login", "agent": str(params.get("agent", ""))[:80], "line": text}
    return None


class _Lines:
    """Signatures in a line-oriented byte stream, scanned incrementally (each byte about once)."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.buf = bytearray()
        self.line_start = 0  # bytes before this are complete lines already read

    def feed(self, data: bytes) -> dict[str, Any] | None:
        old = len(self.buf)
        self.buf += data
        start = max(self.line_start, old - _TAIL)
        # the byte before the region is kept, so "\n" + "SSH-..." split at the newline is seen
        pos = 1 if start > 0 else 0
        region = bytes(self.buf[start - pos :])
        m = _SSH.search(region, pos)
        if m is not None:
            banner = m.group(1).decode(errors="replace").strip()
            return {"protocol": "ssh", "finding": "ssh", "banner": banner[:100]}
        if self.up:
            m = _SHELL.search(region, pos)
            if m is not None:
                return {"protocol": "shell", "finding": "shell",
                        "line": m.group(1).decode(errors="replace")[:100]}  # fmt: skip
        rx = _CLIENT_RPC if self.up else _POOL_RPC
        m = rx.search(region, pos)
        if m is not None:
            method = next(g for g in m.groups() if g).decode()
            line_at = self.buf.rfind(b"\n", 0, start - pos + m.start()) + 1
            line = bytes(self.buf[line_at : line_at + 200]).split(b"\n", 1)[0]
            return {"protocol": "stratum", "finding": "stratum",
                    "method": "job" if method == "blob" else method,
                    "line": line.decode(errors="replace")}  # fmt: skip
        end = self.buf.rfind(b"\n")
        if end >= self.line_start:
            for line in bytes(self.buf[self.line_start : end]).split(b"\n"):
                got = _json_line(line) if self.up else None
                if got is not None:
                    return {"protocol": "stratum", "finding": "stratum", **got}
            self.line_start = end + 1
        return None


class _Dir:
    def __init__(self, up: bool) -> None:
        self.up = up
        self.seen = 0
        self.mode = "start"  # start | tls | http | lines | ws | done
        self.first = bytearray()  # bytes before the mode is known, and a TLS first record
        self.lines = _Lines(up)
        self.http: h11.Connection | None = None
        self.pending = bytearray()  # bytes given to the current h11 connection
        self.ws: FrameProtocol | None = None
        self.ws_lines = _Lines(up)
        self.ws_seen = 0
        self.inflate: BoundedInflate | None = None  # permessage-deflate, where negotiated
        self.capped_seen = False


class StreamSniffer:
    """Evidence from both directions of one connection; `feed` each chunk before forwarding it.

    `host` is the name the client promised (CONNECT or URI host, SOCKS name), against which SNI and
    `Host` are compared; an address promises no name.
    """

    def __init__(self, host: str | None = None, *, window: int = WINDOW) -> None:
        self.host = _host_only(host) if host and not _is_ip(host) else None
        self.window = window
        self.protocol = "tcp"
        self.sni: str | None = None
        self.evidence: list[Evidence] = []
        self._up, self._down = _Dir(True), _Dir(False)
        self._upgrade: h11.Request | None = None  # a request that asked for a WebSocket
        self._classified = False

    # ------------------------------------------------------------------ public
    def feed(self, up: bool, data: bytes) -> list[Evidence]:
        """What this chunk (with everything before it) shows; new evidence only."""
        d = self._up if up else self._down
        if d.mode == "done" or not data:
            return []
        out: list[Evidence] = []
        d.seen += len(data)
        self._step(d, bytes(data), out)
        if d.seen >= self.window and d.mode not in ("ws", "done") and not self.hold(up):
            self._finish(d, out)
        if d.mode == "ws" and d.ws_seen >= self.window:
            d.mode = "done"
        if out:
            self.evidence += out
        return out

    def hold(self, up: bool) -> bool:
        """True while this direction's bytes must not be forwarded yet (an unfinished TLS record
        at the start: SNI is in it)."""
        d = self._up if up else self._down
        return d.mode in ("start", "tls") and d.up and needs_more(bytes(d.first))

    def done(self, up: bool) -> bool:
        """Nothing more to learn from this direction: the relay may stop showing it chunks."""
        return (self._up if up else self._down).mode == "done"

    def end(self, up: bool) -> list[Evidence]:
        """The direction closed: judge what was held."""
        d = self._up if up else self._down
        out: list[Evidence] = []
        if d.mode in ("start", "tls") and d.first:
            self._classify(d, bytes(d.first), out, final=True)
        if d.mode != "done":
            self._finish(d, out)
        self.evidence += out
        return out

    # ------------------------------------------------------------------ internals
    def _finish(self, d: _Dir, out: list[Evidence]) -> None:
        d.mode = "done"
        if d.up and not self._classified:
            self._classified = True
            out.append(Evidence(self.protocol, direction="up"))

    def _add(self, d: _Dir, out: list[Evidence], ev: dict[str, Any], ws: bool = False) -> None:
        protocol, finding = ev.pop("protocol"), ev.pop("finding")
        if d.up:
            self._classified = True
        self.protocol = protocol if self.protocol in ("tcp", "http") else self.protocol
        out.append(Evidence(protocol, finding, "up" if d.up else "down", ws, ev))

    def _step(self, d: _Dir, data: bytes, out: list[Evidence]) -> None:
        if d.mode in ("start", "tls"):
            d.first += data
            self._classify(d, bytes(d.first), out, final=False)
            return
        if d.mode == "http":
            self._http(d, data, out)
        elif d.mode == "lines":
            got = d.lines.feed(data)
            if got is not None:
                self._add(d, out, got)
                d.mode = "done"
        elif d.mode == "ws":
            self._ws(d, data, out)
        elif d.mode == "ws_wait":
            d.first += data  # frames sent before the server's 101: read once it comes

    def _classify(self, d: _Dir, buf: bytes, out: list[Evidence], *, final: bool) -> None:
        """Pick the mode once enough of the start is here: TLS record, HTTP request, or lines."""
        if buf[:1] == b"\x16":
            if needs_more(buf) and not final:
                d.mode = "tls"
                return
            if len(buf) >= 6 and buf[1] == 0x03:
                self._tls(d, buf, out)
                return
        if d.up and _HTTP_START.match(buf[:17]) and not final and b" " not in buf[:17]:
            return  # "GE": a method still arriving
        d.first = bytearray()
        if d.up and _HTTP_START.match(buf[:17]) and b" " in buf[:17]:
            d.mode = "http"
            self._http(d, buf, out)
            return
        if not d.up and self._upgrade is not None:
            d.mode = "http"
            self._http(d, buf, out)
            return
        if not d.up and self.protocol in ("http", "tls"):
            d.mode = "done"  # a web page or ciphertext: not where evidence is
            return
        d.mode = "lines"
        got = d.lines.feed(buf)
        if got is not None:
            self._add(d, out, got)
            d.mode = "done"
        elif d.up and not self._classified and (len(buf) >= 16 or b"\n" in buf or final):
            self._classified = True
            out.append(Evidence("tcp", direction="up"))

    def _tls(self, d: _Dir, buf: bytes, out: list[Evidence]) -> None:
        d.mode = "done"  # what follows the first record is encrypted
        d.first = bytearray()
        if not d.up:
            return
        hello, sni = _client_hello(buf)
        if not hello:
            return
        self.protocol, self.sni = "tls", sni
        self._classified = True
        if self.host and sni is None:
            out.append(Evidence("tls", "tls_no_sni", "up", details={"sni": None,
                                                                    "promised": self.host}))  # fmt: skip
        elif self.host and sni is not None and sni.rstrip(".") != self.host:
            out.append(Evidence("tls", "sni_fronting", "up", details={"sni": sni,
                                                                      "promised": self.host}))  # fmt: skip
        else:
            out.append(Evidence("tls", direction="up", details={"sni": sni}))

    # ---------------------------------------------------------------- HTTP
    def _http(self, d: _Dir, data: bytes, out: list[Evidence]) -> None:
        if d.up:
            self._http_up(d, data, out)
        else:
            self._http_down(d, data, out)

    def _http_up(self, d: _Dir, data: bytes, out: list[Evidence]) -> None:
        import h11

        if d.http is None:
            d.http = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEAD_MAX)
            d.pending = bytearray()
        d.http.receive_data(data)
        d.pending += data
        while True:
            try:
                ev = d.http.next_event()
            except h11.RemoteProtocolError:
                self._to_lines(d, bytes(d.pending), out)  # not HTTP (any more)
                return
            if ev is h11.NEED_DATA:
                return
            if isinstance(ev, h11.Request):
                self._request(d, ev, out)
                if d.mode == "done":
                    return
            elif isinstance(ev, h11.EndOfMessage) or ev is h11.PAUSED:
                rest = bytes(d.http.trailing_data[0])
                if self._upgrade is not None:  # frames follow once the server says 101
                    d.http = None
                    d.mode = "ws_wait"
                    d.first = bytearray(rest)
                    return
                # the next request, or something else after a harmless one: classify again
                d.http = None
                d.mode = "start"
                d.first = bytearray()
                if rest:
                    self._step(d, rest, out)
                return
            elif isinstance(ev, h11.ConnectionClosed):
                d.mode = "done"
                return

    def _request(self, d: _Dir, req: h11.Request, out: list[Evidence]) -> None:
        host_header = next((v.decode("latin-1") for k, v in req.headers if k == b"host"), "")
        target = req.target.decode("latin-1")
        first = not self._classified
        self.protocol = "http" if self.protocol == "tcp" else self.protocol
        self._classified = True
        details = {"request": f"{req.method.decode()} {target[:160]}", "host_header": host_header}
        if self.host and host_header and _host_only(host_header) != self.host:
            out.append(Evidence("http", "host_fronting", "up",
                                details={**details, "promised": self.host}))  # fmt: skip
            d.mode = "done"
            return
        if first:
            out.append(Evidence("http", direction="up", details=details))
        upgrade = {v.lower() for k, v in req.headers if k == b"upgrade"}
        if b"websocket" in upgrade:
            self._upgrade = req

    def _http_down(self, d: _Dir, data: bytes, out: list[Evidence]) -> None:
        import h11
        from wsproto.frame_protocol import FrameProtocol

        """Only a reply to a WebSocket upgrade is read: 101 switches both sides to frames."""
        if d.http is None:
            assert self._upgrade is not None
            d.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_MAX)
            up = self._upgrade
            d.http.send(h11.Request(method=up.method, target=up.target, headers=list(up.headers)))
            d.http.send(h11.EndOfMessage())
        d.http.receive_data(data)
        try:
            ev = d.http.next_event()
        except h11.RemoteProtocolError:
            d.mode = "done"
            return
        if ev is h11.NEED_DATA:
            return
        if isinstance(ev, h11.InformationalResponse) and ev.status_code == 101:
            rest = bytes(d.http.trailing_data[0])
            d.http = None
            deflate = negotiated([v for k, v in ev.headers if k == b"sec-websocket-extensions"])
            for side in (self._up, self._down):
                if deflate is not None:
                    who = "client" if side.up else "server"  # the sender of this direction
                    side.inflate = BoundedInflate(
                        no_context_takeover=deflate[f"{who}_no_context_takeover"],
                        budget=self.window,
                    )
                side.ws = FrameProtocol(client=not side.up,
                                        extensions=[side.inflate] if side.inflate else [])  # fmt: skip
                held, side.first = bytes(side.first), bytearray()
                side.mode = "ws"
                if side is self._up and held:
                    self._ws(side, held, out)
            if rest:
                self._ws(d, rest, out)
            return
        d.mode = "done"  # an ordinary answer: the rest is a web page, not evidence

    def _to_lines(self, d: _Dir, rest: bytes, out: list[Evidence]) -> None:
        d.http = None
        d.mode = "lines"
        got = d.lines.feed(rest)
        if got is not None:
            self._add(d, out, got)
            d.mode = "done"

    # ---------------------------------------------------------------- WebSocket
    def _ws(self, d: _Dir, data: bytes, out: list[Evidence]) -> None:
        from wsproto.frame_protocol import Opcode, ParseFailed

        assert d.ws is not None
        d.ws.receive_bytes(data)
        try:
            for frame in d.ws.received_frames():
                if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                    continue
                payload = frame.payload
                chunk = payload.encode() if isinstance(payload, str) else bytes(payload)
                if frame.message_finished:
                    chunk += b"\n"  # a message is a line, as stratum over WebSocket frames it
                d.ws_seen += len(chunk)
                got = d.ws_lines.feed(chunk)
                if got is not None:
                    self._add(d, out, got, ws=True)
                    d.mode = "done"
                    return
        except ParseFailed:
            d.mode = "done"
        ext = d.inflate
        if ext is not None and ext.capped and not d.capped_seen:
            d.capped_seen = True
            d.mode = "done"  # the window's worth is read; the rest is only relayed
            if ext.inflated >= BOMB_RATIO * max(ext.compressed, 1):
                out.append(Evidence("websocket", "inflate_bomb", "up" if d.up else "down", True,
                                    {"inflated": ext.inflated, "compressed": ext.compressed,
                                     "cap": self.window}))  # fmt: skip


def sniff(data: bytes, host: str | None = None) -> Sniff:
    """The protocol of a client's first bytes, in one call."""
    s = StreamSniffer(host)
    found = s.feed(True, data) + s.end(True)
    ev = next((e for e in found if e.finding), found[0] if found else Evidence("tcp"))
    return Sniff(ev.protocol, sni=s.sni, evidence=dict(ev.details))
