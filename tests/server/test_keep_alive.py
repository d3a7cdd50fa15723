"""A kept-alive connection outlives its client's idle expiry: the server closing it at the same
moment a client re-uses it (both at 5 s before) reset that client's request (httpx.ReadError)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server.conftest import TOKEN, serve

HEALTH = "/apis/corral/v1/health"


def _get(sock: socket.socket, host: str) -> bytes:
    """One GET on a kept-alive connection; the response's head and body ("" when closed)."""
    sock.sendall(f"GET {HEALTH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "\r\n".encode())  # fmt: skip
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
def test_an_idle_connection_is_kept_past_the_clients_expiry(tmp_path) -> None:
    with serve(tmp_path, "--policy", "dev") as s:
        url = urlsplit(str(s["url"]))
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            assert _get(sock, url.netloc).startswith(b"HTTP/1.1 200")
            # idle a little past the longest expiry of the clients we serve (httpx's, 5 s): a
            # client may re-use the connection right up to it
            time.sleep(httpx.Limits().keepalive_expiry + 1.0)
            again = _get(sock, url.netloc)
            assert again.startswith(b"HTTP/1.1 200"), "the server closed an idle connection first"
