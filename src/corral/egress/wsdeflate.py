"""permessage-deflate (RFC 7692) for a reader of WebSocket frames that must not be blown up.

The sniffer reads WebSocket frames after an Upgrade; when the 101 response accepted
`permessage-deflate`, the data messages come compressed (RSV1 set on a message's first frame) and
stratum inside them is only visible inflated. wsproto's own extension inflates without a limit: a
few hundred bytes of a deflated run of zeros would become megabytes in the gateway, per
connection. This one inflates at most `budget` bytes per direction (zlib's `max_length`), then
stops and says so (`capped`), so memory and time stay bounded whatever the peer sends.

RFC 7692's rules kept: the sender strips the 0x00 0x00 0xff 0xff tail of each message's sync
flush and the reader appends it (section 7.2.2); with `*_no_context_takeover` negotiated for that
sender the LZ77 window is reset after every message, else it carries over (section 7.1.1); a
15-bit window reads any smaller `*_max_window_bits`; RSV1 on a control or continuation frame is
a protocol error.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"


def negotiated(header_values: list[bytes]) -> dict[str, bool] | None:
    """The permessage-deflate parameters a 101 response's `Sec-WebSocket-Extensions` accepted
    (`client_no_context_takeover`, `server_no_context_takeover`), or None when it accepted none.
    A response names at most one configuration per extension; the first is taken."""
    for value in header_values:
        for ext in value.decode("latin-1").split(","):
            parts = [p.strip().lower() for p in ext.split(";")]
            if parts[0] != NAME:
                continue
            names = {p.split("=", 1)[0].strip() for p in parts[1:]}
            return {
                "client_no_context_takeover": "client_no_context_takeover" in names,
                "server_no_context_takeover": "server_no_context_takeover" in names,
            }
    return None


class BoundedInflate(Extension):
    """Reads (never writes) one direction's permessage-deflate messages, inflating at most
    `budget` bytes in all."""

    name = NAME

    def __init__(self, *, no_context_takeover: bool, budget: int) -> None:
        self.no_context_takeover = no_context_takeover
        self.budget = budget  # inflated bytes still allowed
        self.inflated = 0
        self.compressed = 0  # compressed bytes read to produce them
        self.capped = False  # True once a message would inflate past the budget
        self._zlib: zlib._Decompress | None = None
        self._message_compressed: bool | None = None  # RSV1 of the current message's first frame
        self._frame_is_data = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return NAME  # never sent: the sniffer only reads what others negotiated

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode,
                             rsv: RsvBits, payload_length: int) -> CloseReason | RsvBits:  # fmt: skip
        if rsv.rsv1 and (opcode.iscontrol() or opcode is Opcode.CONTINUATION):
            return CloseReason.PROTOCOL_ERROR
        self._frame_is_data = not opcode.iscontrol()  # a ping may sit between fragments
        if self._frame_is_data and self._message_compressed is None:
            self._message_compressed = rsv.rsv1
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol,
                                   data: bytes) -> bytes | CloseReason:  # fmt: skip
        if not (self._frame_is_data and self._message_compressed):
            return data
        return self._inflate(data)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol,
                               fin: bool) -> bytes | CloseReason | None:  # fmt: skip
        if not self._frame_is_data or not fin:
            return None
        compressed, self._message_compressed = self._message_compressed, None
        if not compressed:
            return None
        out = self._inflate(_TAIL)
        if self.no_context_takeover:
            self._zlib = None
        return out

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        if self.capped or not data:
            return b""
        if self.budget <= 0:  # zlib reads max_length 0 as "no limit"
            self.capped = True
            return b""
        if self._zlib is None:
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            out = self._zlib.decompress(data, self.budget)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        left = len(self._zlib.unconsumed_tail)
        self.compressed += len(data) - left
        self.inflated += len(out)
        self.budget -= len(out)
        if left or self.budget <= 0:
            self.capped = True  # nothing more is inflated, ever
            self._zlib = None
        return out
