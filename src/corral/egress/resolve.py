"""Name resolution for the gateway: dnspython against the host's resolvers, or a fixed map.

The map exists because a test's network namespace has no DNS at all; a name mapped there resolves to
exactly what the map says, and to nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import dns.exception

if TYPE_CHECKING:
    import dns.asyncresolver


class Resolver:
    def __init__(self, static: Mapping[str, str | list[str]] | None = None, *,
                 use_dns: bool = True, timeout: float = 3.0) -> None:  # fmt: skip
        self.static = {
            k.lower().rstrip("."): ([v] if isinstance(v, str) else list(v))
            for k, v in (static or {}).items()
        }
        self.use_dns = use_dns
        self.timeout = timeout
        self._dns: dns.asyncresolver.Resolver | None = None

    async def resolve(self, name: str) -> list[str]:
        """Every address of `name` (A then AAAA); an empty list when it does not resolve."""
        name = name.lower().rstrip(".")
        if name in self.static:
            return list(self.static[name])
        if not self.use_dns:
            return []
        if self._dns is None:
            # imported on the first name to resolve: dnspython's resolver pulls in its DNS over
            # HTTPS client (httpx, h2) where those are installed, ~80 ms every sandbox process
            # would pay at start, `corral run` included
            import dns.asyncresolver
            import dns.resolver

            try:
                self._dns = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                return []
            self._dns.lifetime = self.timeout
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(name, rdtype)
            except (TimeoutError, dns.exception.DNSException, OSError):
                continue
            out += [r.to_text() for r in answer]
        return out
