"""Policy decisions for one destination: default deny, the denylist wins, then what it resolves to.

A decision is made on the name the client asked for and again on every address the name resolves
to, so that an allowlisted name cannot be pointed at the metadata service or the internal network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from corral.egress import addresses, reputation
from corral.egress.addresses import IPAddress, parse_ip
from corral.egress.resolve import Resolver
from corral.policy.model import EgressRule, NetworkPolicy


@dataclass
class Verdict:
    """Whether a destination may be reached, and the facts of why not (`refusal`, the address
    class); what a refusal is (its rule, category, severity) is the rule packs' to say."""

    allowed: bool
    host: str
    port: int | None
    refusal: str | None = None  # denylisted | metadata_name | address_class | ip_literal | ...
    reason: str = ""
    ips: list[str] = field(default_factory=list)
    matched: EgressRule | None = None
    reputation: list[reputation.Match] = field(default_factory=list)
    dst_class: str | None = None  # the special class of the address refused (private, metadata)
    ip: str | None = None  # the address refused, where an address was the reason
    embedded: str | None = None  # "nat64 169.254.169.254": the address it embeds


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


def _rule_ip_net(rule: EgressRule) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(rule.host.strip("[]"), strict=False)
    except ValueError:
        return None


def _port_ok(rule: EgressRule, port: int | None) -> bool:
    return rule.ports is None or port is None or port in rule.ports


def name_matches(rule: EgressRule, host: str) -> bool:
    pattern = normalize_host(rule.host)
    if _rule_ip_net(rule) is not None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def ip_matches(rule: EgressRule, ip: IPAddress) -> bool:
    """A rule's network holds the address, or the address it embeds (NAT64, 6to4, Teredo)."""
    net = _rule_ip_net(rule)
    if net is None:
        return False
    return any(a.version == net.version and a in net for a in {ip, addresses.judged(ip)})


def first_match(rules: list[EgressRule], host: str, port: int | None) -> EgressRule | None:
    ip = parse_ip(host)
    for rule in rules:
        if not _port_ok(rule, port):
            continue
        if (ip is not None and ip_matches(rule, ip)) or (ip is None and name_matches(rule, host)):
            return rule
    return None


def wildcard_base(policy: NetworkPolicy, host: str) -> str | None:
    """The domain of the allow rule that lets `host` through by a wildcard (`*.example.org` ->
    example.org; `*` -> the name's last two labels), or None when it is listed exactly."""
    rule = first_match(policy.allow, normalize_host(host), None)
    if rule is None:
        if policy.egress != "allow":
            return None
        pattern = "*"
    else:
        pattern = normalize_host(rule.host)
    if pattern == "*":
        return ".".join(normalize_host(host).split(".")[-2:])
    if pattern.startswith("*."):
        return pattern[2:]
    return None


def name_allowed(policy: NetworkPolicy, host: str) -> bool:
    """For DNS: may this name be looked up at all (any port)?"""
    host = normalize_host(host)
    if first_match(policy.deny, host, None):
        return False
    if host in addresses.METADATA_NAMES:
        return any(normalize_host(r.host) == host for r in policy.allow)
    return policy.egress == "allow" or first_match(policy.allow, host, None) is not None


def _refuse(v: Verdict, refusal: str, reason: str, *, ip: IPAddress | None = None,
            cls: str | None = None) -> Verdict:  # fmt: skip
    v.allowed = False
    v.refusal, v.reason, v.dst_class = refusal, reason, cls
    if ip is not None:
        v.ip = str(ip)
        inner = addresses.embedded(ip)
        if inner is not None and inner[1] != "ipv4_mapped":
            v.embedded = f"{inner[1]} {inner[0]}"
            v.reason += f" (it embeds {inner[0]}, {inner[1]})"
    return v


async def decide(policy: NetworkPolicy, resolver: Resolver, host: str, port: int | None
                 ) -> Verdict:  # fmt: skip
    host = normalize_host(host)
    v = Verdict(allowed=False, host=host, port=port, reputation=reputation.lookup(host, port))
    literal = parse_ip(host)
    if first_match(policy.deny, host, port):
        return _refuse(v, "denylisted", f"{host}:{port} is on the denylist", ip=literal)
    listed = any(normalize_host(r.host) == host for r in policy.allow)
    if literal is None and host in addresses.METADATA_NAMES and not listed:
        return _refuse(v, "address_class", f"{host} is a cloud metadata endpoint", cls="metadata")
    matched = first_match(policy.allow, host, port)
    if literal is not None:
        if matched is None:
            cls = addresses.special_class(literal)
            if cls:
                return _refuse(v, "address_class", f"{host} is a {cls} address", ip=literal,
                               cls=cls)  # fmt: skip
            return _refuse(v, "ip_literal", f"{host}:{port} is an address not listed in the "
                           "allowlist", ip=literal)  # fmt: skip
        v.allowed, v.matched, v.ips = True, matched, [str(literal)]
        v.reason = f"{host}:{port} is listed"
        return v
    if matched is None and policy.egress != "allow":
        return _refuse(v, "not_allowed", f"{host}:{port} is not in the allowlist")
    ips = await resolver.resolve(host)
    if not ips:
        return _refuse(v, "unresolved", f"{host} does not resolve")
    good: list[str] = []
    refused: list[tuple[IPAddress, str]] = []
    for text in ips:
        ip = parse_ip(text)
        if ip is None:
            continue
        if first_match(policy.deny, str(ip), port):
            refused.append((ip, "denylisted"))
            continue
        cls = addresses.special_class(ip)
        if cls and first_match(policy.allow, str(ip), port) is None:
            refused.append((ip, cls))
            continue
        good.append(str(ip))
    if not good:
        if not refused:
            return _refuse(v, "unresolved", f"{host} resolves to nothing usable")
        ip, cls = refused[0]
        if cls == "denylisted":
            return _refuse(v, "denylisted", f"{host} resolves to {ip}, on the denylist", ip=ip)
        return _refuse(v, "address_class", f"{host} resolves to {ip} ({cls}), refused", ip=ip,
                       cls=cls)  # fmt: skip
    v.allowed, v.matched, v.ips = True, matched, good
    v.reason = f"{host}:{port} allowed"
    return v
