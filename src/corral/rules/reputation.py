"""Reputation data (mining pools, tunnel services, paste and file-drop hosts) shared by rules and the
egress gateway: one YAML file, `rules/data/reputation.yaml`, so a pool added there is seen by both."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ReputationError(ValueError):
    pass


class Reputation(BaseModel):
    """`domains`: category -> domain suffixes (a suffix matches itself and its subdomains);
    `ports`: category -> ports; `ips`: category -> addresses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: dict[str, list[str]] = {}
    ports: dict[str, list[int]] = {}
    ips: dict[str, list[str]] = {}

    def categories_of(self, host: str) -> set[str]:
        """Every category whose domain list holds `host` or a parent domain of it."""
        return set(_index(self).get_host(host))

    def may_name_listed_domain(self, text: str) -> bool:
        """False when no domain-like token in `text` can have a category: such a token ends in
        `.<last label of a listed suffix>`. One search instead of a lookup per token."""
        return _index(self).hint.search(text) is not None

    def domain_hint_pattern(self) -> str:
        """The regex behind `may_name_listed_domain`, to combine with others."""
        return _index(self).hint.pattern

    def port_categories(self, port: int | None) -> set[str]:
        if port is None:
            return set()
        return {c for c, ports in self.ports.items() if port in ports}


_TOKEN_CHARS = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")


class _Index:
    def __init__(self, rep: Reputation) -> None:
        self.by_suffix: dict[str, set[str]] = {}
        for cat, suffixes in rep.domains.items():
            for s in suffixes:
                self.by_suffix.setdefault(s.lower().strip(".").removeprefix("*."), set()).add(cat)
        for cat, ips in rep.ips.items():
            for ip in ips:
                self.by_suffix.setdefault(ip.lower(), set()).add(cat)
        self.cache: dict[str, frozenset[str]] = {}
        # a listed suffix can only be a token's suffix when the token ends in its last label (a
        # suffix holding other characters, e.g. a path, never matches a token at all)
        labels = sorted({k.rsplit(".", 1)[-1] for k in self.by_suffix
                         if _TOKEN_CHARS.fullmatch(k)}, key=lambda x: (-len(x), x))  # fmt: skip
        self.hint = re.compile(
            r"(?i:\.(?:" + "|".join(map(re.escape, labels)) + r")(?![A-Za-z0-9-]))"
            if labels
            else r"(?!)"
        )

    def get_host(self, host: str) -> frozenset[str]:
        h = host.lower().strip("[]").rstrip(".")
        hit = self.cache.get(h)
        if hit is not None:
            return hit
        cats: set[str] = set()
        parts = h.split(".")
        for i in range(len(parts)):
            cats |= self.by_suffix.get(".".join(parts[i:]), set())
        out = frozenset(cats)
        if len(self.cache) < 100_000:
            self.cache[h] = out
        return out


_INDEXES: dict[int, _Index] = {}


def _index(rep: Reputation) -> _Index:
    idx = _INDEXES.get(id(rep))
    if idx is None:
        idx = _INDEXES[id(rep)] = _Index(rep)
    return idx


def load(path: str | Path | None = None) -> Reputation:
    """The shipped reputation data, or a file of the same shape."""
    if path is None:
        return _default()
    return _parse(Path(path).read_text(), str(path))


@lru_cache(maxsize=1)
def _default() -> Reputation:
    """The shipped file, parsed once per content and kept on disk with the rule packs (the same
    object the default rule engine holds)."""
    from corral.rules.cache import load_default

    return load_default()[2]


def _parse(text: str, origin: str) -> Reputation:
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}  # noqa: S506
        return Reputation.model_validate(data)
    except yaml.YAMLError as err:
        raise ReputationError(f"{origin}: not valid YAML: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ReputationError(f"{origin}: {loc}: {first['msg']}") from None
