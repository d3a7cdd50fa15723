"""The DNS server module through a small fake context: the real rule packs judge each lookup; no
sandbox, no socket, no responder."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from corral.egress.dns_answer import UNIQUE_WINDOW, DnsAnswerer, to_wire
from corral.egress.procinfo import ProcInfo
from corral.egress.resolve import Resolver
from corral.policy.model import EgressRule, NetworkPolicy
from corral.rules import RuleEngine

pytestmark = pytest.mark.unprivileged
ENGINE = RuleEngine.default()


class FakeContext:
    """What the gateway gives the answerer: policy, resolver, judging and records."""

    def __init__(self, *allow: str, **kw: Any) -> None:
        self.policy = NetworkPolicy(allow=[EgressRule(host=h) for h in allow], **kw)
        self.asked: list[str] = []
        static = {"web.test": "203.0.113.10", "inside.test": "10.0.0.5"}

        class Recording(Resolver):
            async def resolve(inner, name: str) -> list[str]:  # noqa: N805
                self.asked.append(name)
                return [f"203.0.113.{len(self.asked) % 200 + 1}"] if name not in static else [
                    static[name]]  # fmt: skip

        self.resolver = Recording(use_dns=False)
        self.findings: list[tuple[str, bool]] = []  # (rule, refused)
        self.records: list[dict[str, Any]] = []

    def observe(self, fact: dict[str, Any], p: ProcInfo, *, refused: bool) -> str:
        found = ENGINE.match_event(fact)
        self.findings += [(f.rule, refused) for f in found]
        blocking = [f for f in found if f.response != "alert"]
        return "block" if refused or blocking else "alert"

    def record(self, **fields: Any) -> None:
        self.records.append(fields)


def owner() -> ProcInfo:
    return ProcInfo(pid=4242, exe="/usr/bin/getent", argv=["getent", "hosts", "x"])


async def ask(a: DnsAnswerer, name: str, qtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, qtype)
    reply = await a.reply(q.to_wire(), owner, "udp", step=3)
    assert reply is not None
    return reply


async def test_allowed_name_is_answered_and_recorded() -> None:
    ctx = FakeContext("web.test")
    reply = await ask(DnsAnswerer(ctx), "web.test")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].to_text() == "203.0.113.10"
    [rec] = ctx.records
    assert rec["rule"] == "egress.dns_query" and rec["argv"][0] == "getent" and rec["step"] == 3
    assert ctx.findings == []


async def test_name_not_allowed_is_refused_unresolved() -> None:
    ctx = FakeContext("web.test")
    reply = await ask(DnsAnswerer(ctx), "other.test")
    assert reply.rcode() == dns.rcode.REFUSED and ctx.asked == []
    assert ctx.findings == [("egress.dns_blocked", True)]


async def test_allowed_name_resolving_inside_is_refused_as_a_probe() -> None:
    ctx = FakeContext("inside.test")
    reply = await ask(DnsAnswerer(ctx), "inside.test")
    assert reply.rcode() == dns.rcode.REFUSED
    assert {"probe_internal.address", "egress.dns_blocked"} <= {r for r, _ in ctx.findings}


@pytest.mark.parametrize("label", ["4f7dcc93a1052140d0c621eb8c561d50",
                                   "dGhpcyBpcyBzZWNyZXQgZGF0YQ",
                                   "a-very-long-label-that-goes-on-and-on-and-on"])  # fmt: skip
async def test_data_carrying_name_under_a_wildcard_is_exfiltration_never_resolved(label) -> None:
    ctx = FakeContext("*.exfil.test")
    reply = await ask(DnsAnswerer(ctx), f"{label}.exfil.test")
    assert reply.rcode() == dns.rcode.REFUSED
    assert ("exfiltration.dns_tunnel", False) in ctx.findings
    assert ctx.asked == []  # judged before anything left the host


async def test_ordinary_names_under_a_wildcard_pass() -> None:
    ctx = FakeContext("*.pythonhosted.org", "*.example.org")
    a = DnsAnswerer(ctx)
    for name in ("files.pythonhosted.org", "d1a2b3c4d5e6f7.example.org",
                 "my-loadbalancer-1234567890.example.org"):  # fmt: skip
        assert (await ask(a, name)).rcode() == dns.rcode.NOERROR, name
    assert ctx.findings == []


async def test_many_distinct_names_under_one_wildcard_are_exfiltration() -> None:
    now = [1000.0]
    ctx = FakeContext("*.exfil.test")
    a = DnsAnswerer(ctx, clock=lambda: now[0])
    for i in range(63):
        assert (await ask(a, f"w{i}.exfil.test")).rcode() == dns.rcode.NOERROR
    assert ctx.findings == []
    assert (await ask(a, "w63.exfil.test")).rcode() == dns.rcode.REFUSED
    assert ctx.findings == [("exfiltration.dns_tunnel", False)]
    now[0] += UNIQUE_WINDOW + 1  # an old burst is forgotten
    ctx.findings.clear()
    assert (await ask(a, "w64.exfil.test")).rcode() == dns.rcode.NOERROR and not ctx.findings


async def test_exactly_listed_names_are_not_under_a_wildcard() -> None:
    ctx = FakeContext("4f7dcc93a1052140d0c621eb8c561d50.exfil.test")
    assert (await ask(DnsAnswerer(ctx), "4f7dcc93a1052140d0c621eb8c561d50.exfil.test")).rcode() == 0


async def test_metadata_and_pool_names_are_judged_by_what_they_are() -> None:
    ctx = FakeContext("*")
    a = DnsAnswerer(ctx)
    assert (await ask(a, "metadata.google.internal")).rcode() == dns.rcode.REFUSED
    assert ("metadata.cloud_endpoint", True) in ctx.findings
    ctx.findings.clear()
    assert (await ask(a, "pool.supportxmr.com")).rcode() == dns.rcode.REFUSED
    assert ("mining.pool_destination", False) in ctx.findings


async def test_garbage_is_recorded_as_malformed_and_unanswered() -> None:
    ctx = FakeContext("web.test")
    assert await DnsAnswerer(ctx).reply(b"\x01\x02garbage", owner, "udp") is None
    assert ctx.findings == [("egress.malformed_request", True)]


async def test_an_oversized_udp_answer_is_truncated() -> None:
    q = dns.message.make_query("big.test", "A")
    reply = dns.message.make_response(q)
    ips = [f"203.0.113.{i}" for i in range(1, 61)]
    reply.answer.append(dns.rrset.from_text_list("big.test.", 60, "IN", "A", ips))
    assert len(to_wire(q.to_wire(), reply, "tcp")) > 512
    wire = to_wire(q.to_wire(), reply, "udp")
    assert len(wire) <= 512 and dns.message.from_wire(wire).flags & dns.flags.TC
