"""Stratum inside compressed WebSocket frames (permessage-deflate, RFC 7692) is read however the
bytes are split, with and without context takeover, in both directions; a decompression bomb is
inflated only up to the cap and recorded, never crashed on."""

from __future__ import annotations

import os
import zlib

import pytest
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, RsvBits

from corral.egress.sniff import WINDOW, Evidence, StreamSniffer
from corral.egress.wsdeflate import BoundedInflate, negotiated
from corral.rules import RuleEngine

pytestmark = pytest.mark.unprivileged

SUBSCRIBE = '{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]}'
LOGIN = ('{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"44AF","pass":"x",'
         '"agent":"XMRig/6.21.0"}}')  # fmt: skip
NOTIFY = '{"id":null,"method":"mining.notify","params":["bf","4d16b6f85af6e219"]}'
# harmless, and sharing most of its bytes with the stratum lines: with context takeover the
# stratum message is mostly back-references into this one
HARMLESS = '{"id": 1, "method": "status.subscribe", "params": ["client/2.5"], "login": "agent"}'
REQ = (b"GET /ws HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
       b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")  # fmt: skip


def response(extensions: str | None) -> bytes:
    ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" + ext.encode() + b"\r\n")  # fmt: skip


def sender(client: bool, params: str) -> FrameProtocol:
    """A real permessage-deflate sender (wsproto's), configured as the 101 said."""
    ext = PerMessageDeflate()
    ext.finalize(params)
    return FrameProtocol(client=client, extensions=[ext])


def frames(client: bool, params: str, messages: list[str], fragment: bool = False) -> bytes:
    proto = sender(client, params)
    out = bytearray()
    for m in messages:
        if fragment:  # three frames: TEXT then CONTINUATIONs, compressed as one message
            third = len(m) // 3
            out += proto.send_data(m[:third], fin=False)
            out += proto.send_data(m[third : 2 * third], fin=False)
            out += proto.send_data(m[2 * third :], fin=True)
        else:
            out += proto.send_data(m, fin=True)
    return bytes(out)


def splits(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(1, len(data))] + [[bytes([b]) for b in data]]


def judge(up: bool, params: str, wire: bytes, chunks: list[bytes]) -> list[Evidence]:
    s = StreamSniffer("web.test")
    found = s.feed(True, REQ) + s.feed(False, response(params))
    for c in chunks:
        found += s.feed(up, c)
    return found + s.end(up)


def findings(found: list[Evidence]) -> list[str]:
    return [e.finding for e in found if e.finding]


PARAMS = {
    "takeover": "permessage-deflate",
    "no-takeover": "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
    "small-window": "permessage-deflate; client_max_window_bits=9; server_max_window_bits=10",
}


@pytest.mark.parametrize("params", list(PARAMS), ids=list(PARAMS))
@pytest.mark.parametrize("message", [SUBSCRIBE, LOGIN], ids=["json-rpc", "login"])
def test_client_stratum_in_compressed_frames_however_split(params: str, message: str) -> None:
    for lead in ([], [HARMLESS]):  # first, and after a harmless message (context carried over)
        wire = frames(True, PARAMS[params], [*lead, message])
        assert message.encode() not in wire  # compressed: the plain reader would not see it
        for chunks in splits(wire):
            found = judge(True, PARAMS[params], wire, chunks)
            assert findings(found) == ["stratum"], (lead, chunks)
            ev = next(e for e in found if e.finding)
            assert ev.websocket and ev.direction == "up"


@pytest.mark.parametrize("params", ["takeover", "no-takeover"])
def test_a_fragmented_compressed_message_and_the_pools_side(params: str) -> None:
    wire = frames(True, PARAMS[params], [HARMLESS, SUBSCRIBE], fragment=True)
    for chunks in splits(wire):
        assert findings(judge(True, PARAMS[params], wire, chunks)) == ["stratum"], chunks
    down = frames(False, PARAMS[params], [HARMLESS, NOTIFY])
    for chunks in splits(down):
        found = judge(False, PARAMS[params], down, chunks)
        assert findings(found) == ["stratum"] and found[-1].direction == "down", chunks


def test_context_takeover_is_followed_as_negotiated() -> None:
    """A sender that keeps its window writes the second message as back-references: a reader that
    reset its window would read garbage; one told `no_context_takeover` must reset."""
    with_ctx = frames(True, PARAMS["takeover"], [HARMLESS, SUBSCRIBE])
    without = frames(True, PARAMS["no-takeover"], [HARMLESS, SUBSCRIBE])
    assert len(with_ctx) < len(without)  # the takeover really was used
    # read as negotiated: found; read with the other side's idea of the window: not
    assert findings(judge(True, PARAMS["takeover"], with_ctx, [with_ctx])) == ["stratum"]
    assert findings(judge(True, PARAMS["no-takeover"], with_ctx, [with_ctx])) == []


def test_plain_and_unknown_extensions_are_unchanged() -> None:
    plain = bytes(FrameProtocol(client=True, extensions=[]).send_data(SUBSCRIBE, fin=True))
    assert findings(judge(True, "", plain, [plain])) == ["stratum"]
    assert negotiated([b"x-webkit-deflate-frame"]) is None
    assert negotiated([b"foo, permessage-deflate; server_no_context_takeover"]) == {
        "client_no_context_takeover": False, "server_no_context_takeover": True}  # fmt: skip
    # a compressed frame where nothing was negotiated: not readable, ends reading, no crash
    wire = frames(True, PARAMS["takeover"], [SUBSCRIBE])
    assert findings(judge(True, "", wire, [wire])) == []


def _bomb(size: int, head: bytes = b"") -> bytes:
    """One client frame, RSV1 set, whose payload inflates to `head` + `size` zero bytes."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = z.compress(head) + z.compress(bytes(size)) + z.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]  # the tail the RFC strips
    assert len(body) < size // 500
    frame = bytearray([0x80 | 0x40 | Opcode.BINARY])  # FIN, RSV1
    n = len(body)
    if n < 126:
        frame.append(0x80 | n)
    elif n < 65536:
        frame += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        frame += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    frame += mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    return bytes(frame)


@pytest.mark.parametrize("params", ["takeover", "no-takeover"])
def test_a_decompression_bomb_is_capped_and_recorded(params: str) -> None:
    bomb = _bomb(200 * 1024 * 1024)  # 200 MiB of zeros in ~200 KB
    s = StreamSniffer("web.test")
    s.feed(True, REQ)
    s.feed(False, response(PARAMS[params]))
    found: list[Evidence] = []
    for i in range(0, len(bomb), 65536):  # as the relay hands it over
        found += s.feed(True, bomb[i : i + 65536])
        if s.done(True):
            break
    found += s.end(True)
    assert findings(found) == ["inflate_bomb"]
    ev = next(e for e in found if e.finding)
    assert ev.details["inflated"] <= WINDOW and ev.details["cap"] == WINDOW
    assert ev.details["inflated"] >= 100 * ev.details["compressed"]
    assert s.done(True)  # the rest is only relayed, never inflated
    # the packs turn it into a finding that cuts the connection
    fact = {"source": "egress", "kind": "egress_evidence", "via": "connect",
            "evidence": ev.facts()}  # fmt: skip
    [f] = [f for f in RuleEngine.default().match_event(fact) if f.rule == "egress.inflate_bomb"]
    assert f.response == "block"


def test_stratum_at_the_head_of_a_bomb_is_still_stratum() -> None:
    bomb = _bomb(50 * 1024 * 1024, head=SUBSCRIBE.encode() + b"\n")
    found = judge(True, PARAMS["takeover"], bomb, [bomb])
    assert findings(found) == ["stratum"]


def test_a_large_ordinary_message_is_not_a_bomb() -> None:
    text = os.urandom(3 * WINDOW).hex()  # hex deflates about 2:1
    wire = frames(True, PARAMS["takeover"], [text])
    s = StreamSniffer("web.test")
    found = s.feed(True, REQ) + s.feed(False, response(PARAMS["takeover"])) + s.feed(True, wire)
    assert findings(found + s.end(True)) == [] and s.done(True)


def test_the_inflater_never_exceeds_its_budget() -> None:
    ext = BoundedInflate(no_context_takeover=False, budget=1000)
    proto = FrameProtocol(client=False, extensions=[ext])
    proto.receive_bytes(_bomb(10 * 1024 * 1024))
    got = b"".join(bytes(f.payload) for f in proto.received_frames())
    assert len(got) == 1000 == ext.inflated and ext.capped
    assert ext.frame_inbound_header(proto, Opcode.PING, RsvBits(True, False, False), 0) != RsvBits(
        True, False, False
    )  # RSV1 on a control frame is a protocol error
