"""Address classes the gateway refuses after resolution unless a policy lists them by address.

An allowed name is only as safe as what it resolves to: a name pointing at 10.0.0.5 or at the cloud
metadata service is how an agent reaches the internal network through an allowlist.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_IPS = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "metadata.azure.internal"})
_NETS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link_local"),
    ("fc00::/7", "ula"),
    ("ff00::/8", "multicast"),
)
NETWORKS = tuple((ipaddress.ip_network(n), c) for n, c in _NETS)


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded(ip: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 one carries, and how: NAT64 (64:ff9b::/96, RFC 6052; and the
    local-use 64:ff9b:1::/48, RFC 8215), 6to4 (2002::/16) or Teredo (2001::/32, the client's
    address). Traffic to such an address ends at that IPv4 host, so it is judged as that host."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "ipv4_mapped"
    for net in _NAT64:
        if ip in net:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "nat64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip.teredo is not None:
        return ip.teredo[1], "teredo"
    return None


def judged(ip: IPAddress) -> IPAddress:
    """The address a decision is about: the embedded IPv4 one where there is one."""
    inner = embedded(ip)
    return inner[0] if inner is not None else ip


def parse_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=1)
def host_addresses() -> frozenset[IPAddress]:
    """The host's own addresses: read once; a sandbox reaching the host is reaching the supervisor."""
    out: set[IPAddress] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            ip = parse_ip(a.address.split("%")[0])
            if ip is not None:
                out.add(ip)
    return frozenset(out)


def special_class(ip: IPAddress) -> str | None:
    """Why this address is off limits by default (None: an ordinary public address). An address
    that embeds another is judged by the one it embeds (and by itself: a Teredo server too)."""
    inner = embedded(ip)
    if inner is not None:
        cls = special_class(inner[0])
        if cls is not None:
            return cls
        if inner[1] == "teredo" and ip.teredo is not None:  # type: ignore[union-attr]
            return special_class(ip.teredo[0])  # type: ignore[union-attr]
        return None
    if ip in METADATA_IPS:
        return "metadata"
    for net, cls in NETWORKS:
        if ip.version == net.version and ip in net:
            return cls
    if ip in host_addresses():
        return "host"
    return None


def category_for(cls: str | None) -> str:
    if cls == "metadata":
        return "metadata"
    return "probe_internal" if cls else "policy"
