"""DNS over TCP on the sandbox's 127.0.0.1:53: the same answers, records and refusals as UDP.

A resolver retries a truncated UDP answer over TCP, and some tools ask over TCP from the start; the
queries are hand-built by a small script run with the sandbox's system python3 (no dnspython there).
"""

from __future__ import annotations

import os

import pytest

from corral.egress.gateway import launcher_binary
from tests.egress.conftest import egress_events, network

pytestmark = [
    pytest.mark.unprivileged,
    pytest.mark.skipif(
        os.geteuid() != 0 and launcher_binary() is None,
        reason="an ordinary user answers DNS through the C launcher (make install)",
    ),
]

# argv: tcp|udp NAME...; prints "NAME RCODE TC IP,IP,..." per query (several queries on one TCP
# connection, as RFC 7766 allows)
ASK = r"""
import socket, struct, sys

def query(name, qid):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)

def show(name, m, r):
    rcode, tc, count = r[3] & 15, (r[2] >> 1) & 1, struct.unpack("!H", r[6:8])[0]
    at, ips = len(m), []
    for _ in range(count):  # A records after a compressed name: 16 bytes each
        ips.append(socket.inet_ntoa(r[at + 12:at + 16]))
        at += 16
    print(name, rcode, tc, ",".join(ips) or "-")

def recvn(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise SystemExit("closed")
        out += chunk
    return out

mode, names = sys.argv[1], sys.argv[2:]
if mode == "tcp":
    s = socket.create_connection(("127.0.0.1", 53), timeout=5)
    for i, name in enumerate(names):
        m = query(name, i + 1)
        s.sendall(struct.pack("!H", len(m)) + m)
        show(name, m, recvn(s, struct.unpack("!H", recvn(s, 2))[0]))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    for i, name in enumerate(names):
        m = query(name, i + 1)
        s.sendto(m, ("127.0.0.1", 53))
        show(name, m, s.recv(4096))
"""

BIG = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(60)]  # 60 A records: > 512 bytes


async def ask(sb, mode: str, *names: str) -> list[list[str]]:
    await sb.write_file("ask.py", ASK)
    r = await sb.exec(f"python3 ask.py {mode} {' '.join(names)}")
    assert r.exit_code == 0, r.output
    return [line.split() for line in r.stdout.splitlines()]


async def test_tcp_query_for_a_name_not_allowed_is_refused_and_recorded(make_sandbox):
    sb = await make_sandbox()
    [[name, rcode, _tc, ips]] = await ask(sb, "tcp", "blocked.example.org")
    assert (name, rcode, ips) == ("blocked.example.org", "5", "-")  # 5: REFUSED
    [ev] = egress_events(sb, "egress.dns_blocked")
    assert ev.dst.host == "blocked.example.org" and ev.category == "policy"
    assert ev.evidence["transport"] == "tcp" and ev.action == "blocked"
    assert ev.argv[:2] == ["python3", "ask.py"]


async def test_tcp_query_for_a_pool_name_is_mining(make_sandbox):
    sb = await make_sandbox(mining="block")
    [[name, rcode, _tc, ips]] = await ask(sb, "tcp", "pool.supportxmr.com")
    assert (name, rcode, ips) == ("pool.supportxmr.com", "5", "-")
    [ev] = egress_events(sb, "mining.pool_destination")
    assert ev.category == "mining" and ev.evidence["transport"] == "tcp"


async def test_tcp_answers_allowed_names_several_per_connection(make_sandbox):
    sb = await make_sandbox(network("web.test", "127.0.0.1"))
    rows = await ask(sb, "tcp", "web.test", "other.test", "web.test")
    assert rows == [["web.test", "0", "0", "127.0.0.1"], ["other.test", "5", "0", "-"],
                    ["web.test", "0", "0", "127.0.0.1"]]  # fmt: skip
    allowed = egress_events(sb, "egress.dns_query")
    assert [e.dst.host for e in allowed] == ["web.test", "web.test"]
    assert all(e.evidence["transport"] == "tcp" and e.argv[1] == "ask.py" for e in allowed)
    [refused] = egress_events(sb, "egress.dns_blocked")
    assert refused.dst.host == "other.test" and refused.evidence["transport"] == "tcp"
    await sb.egress.update(network("web.test", "127.0.0.1", dns="none"))
    [[_, rcode, _, _]] = await ask(sb, "tcp", "web.test")
    assert rcode == "5"


async def test_a_truncated_udp_answer_is_completed_over_tcp(make_sandbox):
    from corral.egress import Resolver

    sb = await make_sandbox(network("big.test", "127.0.0.0/8"))
    sb.egress.resolver = Resolver({"big.test": BIG}, use_dns=False)
    [[_, rcode, tc, ips]] = await ask(sb, "udp", "big.test")
    assert (rcode, tc, ips) == ("0", "1", "-")  # too big for 512 bytes: truncated, no records
    [[_, rcode, tc, ips]] = await ask(sb, "tcp", "big.test")
    assert (rcode, tc) == ("0", "0") and sorted(ips.split(",")) == sorted(BIG)
    transports = {e.evidence["transport"] for e in egress_events(sb, "egress.dns_query")}
    assert transports == {"udp", "tcp"}
