"""Issue 11: one sandbox flooding non-socket connects, DNS and proxy handshakes while 20 others
run: all 20 finish right, and the supervisor's fd count returns to its baseline."""

from __future__ import annotations

import asyncio
import os

import pytest

from corral.sandbox.sandbox import Sandbox
from tests.sandbox.helpers import sandbox_policy

FLOOD = r"""
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
f = open('/etc/hostname')
addr = struct.pack('<HH4s8x', 2, socket.htons(3128), socket.inet_aton('127.0.0.1'))
for i in range(3000):  # connect() on a file: the listener must not keep what it looked at
    libc.connect(f.fileno(), addr, 16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(500):
    try:
        u.sendto(b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01',
                 ('127.0.0.1', 53))
    except OSError:
        pass
for i in range(300):  # half-finished SOCKS handshakes
    c = socket.socket()
    try:
        c.connect(('127.0.0.1', 3128))
        c.sendall(b'\x05\x01\x00')
    except OSError:
        pass
    c.close()
print('flooded')
"""


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.unprivileged
async def test_a_flooding_sandbox_starves_no_other_and_leaks_no_fd() -> None:
    pol = sandbox_policy()
    others = [Sandbox(pol, store=False) for _ in range(20)]
    flood = Sandbox(pol, store=False)
    await asyncio.gather(*(b.start() for b in [*others, flood]))
    try:
        base = _fds()
        work = asyncio.gather(*(
            b.exec(f"for j in 1 2 3; do echo {i}-$j; sleep 0.2; done; (exit {i % 5})")
            for i, b in enumerate(others)))  # fmt: skip
        await flood.write_file("flood.py", FLOOD)
        r = await flood.exec("python3 flood.py", timeout=180)
        assert "flooded" in r.stdout, r.stderr
        results = await work
        for i, res in enumerate(results):
            assert (res.exit_code, res.stdout) == (i % 5, f"{i}-1\n{i}-2\n{i}-3\n"), res.stderr
        for _ in range(50):  # connections the gateway is still closing
            if _fds() <= base:
                break
            await asyncio.sleep(0.1)
        assert _fds() <= base
    finally:
        await asyncio.gather(*(b.close() for b in [*others, flood]), return_exceptions=True)
