"""The sandbox's DNS server: answers by the network policy, and judges what each lookup carries.

A name is answered only when the policy allows it and every address it resolves to is usable (not
internal, not metadata). A lookup is also a way out: under an allowed wildcard, a name whose labels
are long or encoded, or one of many distinct names in a short time, carries data to whoever serves
that domain. Each lookup becomes a fact for the rule packs (`exfiltration.dns_tunnel` reads
`dns.*`); one the packs object to is refused before it is ever resolved.

The gateway is the context here; tests give a small fake one (policy, resolver, observe, record).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from corral.egress import addresses, facts
from corral.egress.decide import Verdict, decide, name_allowed, wildcard_base
from corral.egress.procinfo import ProcInfo
from corral.egress.resolve import Resolver
from corral.policy.model import NetworkPolicy

if TYPE_CHECKING:
    import dns.message

# dnspython (~50 ms to import) loads on the first lookup a sandbox makes, not with the gateway

UNIQUE_WINDOW = 60.0  # seconds over which distinct names under one domain are counted
_NAMES_MAX = 4096


class DnsContext(Protocol):
    policy: NetworkPolicy
    resolver: Resolver

    def observe(self, fact: dict[str, Any], p: ProcInfo, *, refused: bool) -> str:
        """Put a fact through the rule engine and the responder; the response applied."""

    def record(self, **fields: Any) -> None:
        """Write a plain record (an answered lookup)."""


class DnsAnswerer:
    def __init__(self, ctx: DnsContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx, self.clock = ctx, clock
        self._names: dict[str, OrderedDict[str, float]] = {}  # base -> name -> last seen

    def unique_names(self, base: str, name: str) -> int:
        """Distinct names under `base` looked up in the last minute, this one included."""
        now = self.clock()
        seen = self._names.setdefault(base, OrderedDict())
        seen[name.lower()] = now
        seen.move_to_end(name.lower())
        while seen and (now - next(iter(seen.values())) > UNIQUE_WINDOW or len(seen) > _NAMES_MAX):
            seen.popitem(last=False)
        return len(seen)

    async def reply(self, data: bytes, owner: Callable[[], ProcInfo], transport: str,
                    step: int | None = None) -> dns.message.Message | None:  # fmt: skip
        """The answer to one query (None: not a DNS query, which is recorded as malformed)."""
        import dns.exception
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        try:
            query = dns.message.from_wire(data)
            q = query.question[0]
        except (dns.exception.DNSException, IndexError, ValueError):
            p = owner()
            self.ctx.observe(facts.base("egress_malformed", p, facts.dst(None, None, 53, "dns"),
                                        step=step, via="dns", reason="not a DNS query",
                                        message=f"{len(data)} bytes to the DNS server that are "
                                        "not a DNS query", head=data[:64].hex()),
                             p, refused=True)  # fmt: skip
            return None
        name = q.name.to_text().rstrip(".")
        qtype = dns.rdatatype.to_text(q.rdtype)
        p = owner()
        policy = self.ctx.policy
        reply = dns.message.make_response(query)
        allowed = policy.dns != "none" and name_allowed(policy, name)
        base = wildcard_base(policy, name) if allowed else None
        info = {"name": name[:255], "qtype": qtype, "transport": transport,
                **facts.name_facts(name, base)}  # fmt: skip
        if base is not None:
            info["unique_names"] = self.unique_names(base, name)
        cls = "metadata" if name.lower() in addresses.METADATA_NAMES else None
        dst = facts.dst(name, None, 53, "dns", cls=cls)
        if not allowed:
            why = ("the policy answers no DNS" if policy.dns == "none"
                   else f"{name} is not in the allowlist")  # fmt: skip
            self._refuse(reply, p, dst, info, step, "not_allowed", f"DNS {qtype} {name} refused: "
                         f"{why}")  # fmt: skip
            return reply
        fact = facts.base("dns_query", p, dst, step=step, via="dns", outcome="allowed",
                          dns=info, message=f"DNS {qtype} {name}")  # fmt: skip
        if self.ctx.observe(fact, p, refused=False) != "alert":
            reply.set_rcode(dns.rcode.REFUSED)  # judged before anything left: nothing resolved
            return reply
        verdict: Verdict = await decide(policy, self.ctx.resolver, name, None)
        if not verdict.allowed:
            dst = facts.dst(name, verdict.ip, 53, "dns", cls=verdict.dst_class,
                            embedded=verdict.embedded)  # fmt: skip
            self._refuse(reply, p, dst, info, step, verdict.refusal or "not_allowed",
                         f"DNS {qtype} {name} refused: {verdict.reason}")  # fmt: skip
            return reply
        want = {"A": 4, "AAAA": 6}.get(qtype)
        ips = [i for i in verdict.ips
               if (ip := addresses.parse_ip(i)) is not None and ip.version == want]  # fmt: skip
        if ips:
            reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", qtype, ips))
        self.ctx.record(rule="egress.dns_query", category="policy", severity="info",
                        action="allowed", step=step, **_proc_fields(p),
                        dst={"host": name, "port": 53, "proto": "dns"},
                        message=f"DNS {qtype} {name} answered: {', '.join(ips) or 'no records'}",
                        evidence={"qtype": qtype, "answer": ips, "transport": transport})  # fmt: skip
        return reply

    def _refuse(self, reply: dns.message.Message, p: ProcInfo, dst: dict[str, Any],
                info: dict[str, Any], step: int | None, refusal: str, message: str) -> None:  # fmt: skip
        import dns.rcode

        reply.set_rcode(dns.rcode.REFUSED)
        fact = facts.base("dns_query", p, dst, step=step, via="dns", outcome="refused",
                          refusal=refusal, dns=info, message=message)  # fmt: skip
        self.ctx.observe(fact, p, refused=True)


def _proc_fields(p: ProcInfo) -> dict[str, Any]:
    return {"pid": p.pid, "exe": p.exe, "argv": facts.short_argv(p.argv)}


def to_wire(query_wire: bytes, reply: dns.message.Message, transport: str) -> bytes:
    """The reply as sent: over UDP cut to the client's size with TC set, as RFC 1035 asks."""
    import dns.exception
    import dns.flags
    import dns.message

    if transport != "udp":
        return reply.to_wire()
    query = dns.message.from_wire(query_wire)
    limit = max(512, query.payload) if query.edns >= 0 else 512
    try:
        return reply.to_wire(max_size=limit)
    except dns.exception.TooBig:  # the resolver retries over TCP, where it fits
        reply.answer.clear()
        reply.flags |= dns.flags.TC
        return reply.to_wire()
