"""Policy decisions and protocol sniffing, without a sandbox."""

from __future__ import annotations

import ssl

import pytest

from corral.egress import facts, reputation
from corral.egress.decide import Verdict, decide, name_allowed
from corral.egress.procinfo import ProcInfo
from corral.egress.resolve import Resolver
from corral.egress.sniff import sniff, tls_sni
from corral.policy.model import EgressRule, NetworkPolicy
from corral.rules import RuleEngine

pytestmark = pytest.mark.unprivileged
R = Resolver({"a.example.org": "203.0.113.34", "inside.example.org": "10.0.0.5",
              "meta.example.org": "169.254.169.254", "cg.example.org": "100.64.1.1",
              "ula.example.org": "fd12::1", "lo.example.org": "127.0.0.1",
              "pool.supportxmr.com": "203.0.113.35"}, use_dns=False)  # fmt: skip


ENGINE = RuleEngine.default()


def judged(v: Verdict, via: str = "connect") -> tuple[str, str, str]:
    """(rule, category, severity) of the worst finding the packs give a refused verdict."""
    dst = facts.dst(v.host, v.ip, v.port, via, cls=v.dst_class, embedded=v.embedded)
    fact = facts.base("egress_attempt", ProcInfo(), dst, step=None, via=via, outcome="refused",
                      refusal=v.refusal, message=v.reason)  # fmt: skip
    f = ENGINE.match_event(fact)[0]
    return f.rule, f.category, f.severity


def pol(*allow: EgressRule, deny: list[EgressRule] | None = None, **kw) -> NetworkPolicy:
    return NetworkPolicy(allow=list(allow), deny=deny or [], **kw)


async def test_default_deny():
    v = await decide(pol(), R, "a.example.org", 443)
    assert not v.allowed and v.refusal == "not_allowed"
    assert judged(v) == ("egress.not_allowed", "policy", "low")


async def test_exact_and_suffix_with_ports():
    p = pol(EgressRule(host="*.example.org", ports=[443]))
    assert (await decide(p, R, "a.example.org", 443)).allowed
    assert not (await decide(p, R, "a.example.org", 80)).allowed
    assert not (await decide(p, R, "example.org", 443)).allowed
    assert not (await decide(p, R, "a.example.org.evil.net", 443)).allowed


async def test_denylist_wins():
    p = pol(EgressRule(host="*.example.org"), deny=[EgressRule(host="a.example.org")])
    v = await decide(p, R, "a.example.org", 443)
    assert not v.allowed and judged(v)[0] == "egress.denylisted"


@pytest.mark.parametrize(("name", "category"), [
    ("inside.example.org", "probe_internal"), ("meta.example.org", "metadata"),
    ("cg.example.org", "probe_internal"), ("ula.example.org", "probe_internal"),
    ("lo.example.org", "probe_internal")])  # fmt: skip
async def test_allowed_name_resolving_to_a_special_address_is_refused(name, category):
    v = await decide(pol(EgressRule(host="*.example.org")), R, name, 443)
    assert not v.allowed and v.refusal == "address_class" and judged(v)[1] == category


async def test_special_address_listed_explicitly_is_allowed():
    p = pol(EgressRule(host="inside.example.org"), EgressRule(host="10.0.0.0/8"))
    v = await decide(p, R, "inside.example.org", 443)
    assert v.allowed and v.ips == ["10.0.0.5"]


async def test_ip_literals_need_listing():
    v = await decide(pol(EgressRule(host="*")), R, "203.0.113.34", 443)
    assert judged(v)[0] == "egress.ip_literal"
    assert (await decide(pol(EgressRule(host="203.0.113.0/24")), R, "203.0.113.34", 443)).allowed
    v = await decide(pol(), R, "169.254.169.254", 80)
    assert judged(v) == ("metadata.cloud_endpoint", "metadata", "critical")
    v = await decide(pol(), R, "[fd00:ec2::254]", 80)
    assert judged(v)[1] == "metadata"


async def test_metadata_names_refused_unless_listed_by_name():
    v = await decide(pol(EgressRule(host="*")), R, "metadata.google.internal", 80)
    assert not v.allowed and judged(v)[1] == "metadata"
    assert not name_allowed(pol(EgressRule(host="*")), "metadata.google.internal")


async def test_reputation_raises_severity_and_names_the_category():
    v = await decide(pol(), R, "pool.supportxmr.com", 3333)
    assert not v.allowed and judged(v) == ("mining.pool_destination", "mining", "critical")
    assert reputation.lookup("abc.trycloudflare.com")[0].category == "tunnel"
    assert reputation.lookup("paste.ee")[0].category == "exfiltration"
    assert reputation.lookup("example.org") == []


async def test_unresolvable_name_is_refused():
    v = await decide(pol(EgressRule(host="nowhere.test")), R, "nowhere.test", 80)
    assert not v.allowed and judged(v)[0] == "egress.unresolved"


def _client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_sniff_tls_sni_ssh_stratum_http():
    hello = _client_hello("front.example.com")
    assert tls_sni(hello) == "front.example.com"
    assert sniff(hello).protocol == "tls"
    assert sniff(b"SSH-2.0-OpenSSH_9.2\r\n").protocol == "ssh"
    s = sniff(b'{"id":1,"method":"mining.authorize","params":["w","x"]}\n')
    assert s.protocol == "stratum" and s.evidence["method"] == "mining.authorize"
    assert sniff(b'{"id":1,"method":"eth_submitLogin","params":[]}\n').protocol == "stratum"
    assert sniff(b'{"method":"login","params":{"login":"x"}}\n').protocol == "tcp"
    assert sniff(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").protocol == "http"
    assert sniff(b"\x00\x01binary").protocol == "tcp"


@pytest.mark.parametrize(("literal", "embeds", "category"), [
    ("64:ff9b::a9fe:a9fe", "nat64 169.254.169.254", "metadata"),
    ("64:ff9b::a00:5", "nat64 10.0.0.5", "probe_internal"),
    ("2002:a00:5::1", "6to4 10.0.0.5", "probe_internal"),
    ("2001:0:cb00:7105:0:0:f5ff:fffa", "teredo 10.0.0.5", "probe_internal"),
    ("::ffff:127.0.0.1", None, "probe_internal")])  # fmt: skip
async def test_an_address_embedding_another_is_judged_by_the_one_it_embeds(literal, embeds,
                                                                          category):  # fmt: skip
    v = await decide(pol(), R, literal, 80)
    assert not v.allowed and v.embedded == embeds and judged(v)[1] == category


async def test_an_embedded_address_matches_rules_for_the_address_it_embeds():
    deny = [EgressRule(host="203.0.113.0/24")]
    v = await decide(pol(EgressRule(host="*"), deny=deny), R, "64:ff9b::cb00:7105", 443)
    assert not v.allowed and v.refusal == "denylisted"
    v = await decide(pol(EgressRule(host="203.0.113.0/24")), R, "64:ff9b::cb00:7105", 443)
    assert v.allowed
    v = await decide(pol(), R, "64:ff9b::cb00:7105", 443)
    assert not v.allowed and judged(v)[0] == "egress.ip_literal"  # public: just not listed
