"""The facts the gateway puts through the rule engine, in one shape for every observation.

Every fact has `source: egress` and a `kind`:

- `egress_attempt`: a connection asked for (`via` connect | http | socks5 | raw), with `outcome`
  allowed | refused and, when refused, `refusal` (not_allowed, denylisted, ip_literal, unresolved,
  address_class, max_connections, max_bytes, upstream_failed, bypass);
- `egress_evidence`: what the stream sniffer read (`evidence.protocol`, `evidence.finding`: ssh,
  stratum, tls_no_sni, sni_fronting, host_fronting), with `protocol_allowed` / `protocol_listed`;
- `dns_query`: a lookup (`dns.*`: name, qtype, base, under_wildcard, longest_label, label_entropy,
  data_chars, unique_names);
- `egress_malformed`: a request the proxy or DNS server could not read.

`dst` is {host, ip, port, proto, class, embedded}; `proc` is the client process, summarised, and
`chain` its parents as one short line, so a rule can read `ssh -R` above a ProxyCommand. Which rule
a fact fires, and so its category and severity, is the rule packs' to say (rules/packs/*.yaml).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

from corral.egress.procinfo import ProcInfo

KINDS = ("egress_attempt", "egress_evidence", "dns_query", "egress_malformed")
ARGV_MAX = 16  # arguments kept of a process's argv in an event
ARG_MAX = 200  # characters kept of each
PARENT_ARGS = 24
PARENT_ARG = 80
_SKIP_PARENTS = ("bwrap", "corral-egress-launcher")


def short_argv(argv: list[str] | None, n: int = ARGV_MAX, width: int = ARG_MAX) -> list[str] | None:
    """An argv cut to what an event needs: a few arguments, each of bounded length."""
    if argv is None:
        return None
    out = [a if len(a) <= width else a[: width - 3] + "..." for a in argv[:n]]
    if len(argv) > n:
        out.append(f"... (+{len(argv) - n})")
    return out


def _supervisor_side(argv: list[str]) -> bool:
    """bwrap, the launcher (exec'd as /proc/self/fd/N) or the sandbox's own Python launcher."""
    exe = os.path.basename(argv[0]) if argv else ""
    return (
        exe in _SKIP_PARENTS
        or argv[0].startswith("/proc/self/fd/")
        or (exe.startswith("python") and "-c" in argv[:4] and any("seccomp" in a for a in argv[:6]))
    )


def parents_summary(parents: list[list[str]]) -> list[list[str]]:
    """The client's parents, nearest first, up to the sandbox's own processes (never bwrap's whole
    command line), each argv shortened."""
    out: list[list[str]] = []
    for argv in parents:
        if not argv or _supervisor_side(argv):
            break
        out.append(short_argv(argv, PARENT_ARGS, PARENT_ARG) or [])
    return out


def chain(p: ProcInfo) -> str:
    """`python3 connect.py x 22 < ssh -R 2222:localhost:22 u@h`: the process, then its parents."""
    parts = [p.argv or []] + parents_summary(p.parents)
    return " < ".join(" ".join(a[:PARENT_ARGS]) for a in parts if a)[:600]


def _comm(p: ProcInfo) -> str | None:
    return os.path.basename(p.argv[0]) if p.argv else (os.path.basename(p.exe) if p.exe else None)


def proc(p: ProcInfo) -> dict[str, Any]:
    return {"pid": p.pid, "comm": _comm(p), "exe": p.exe, "argv": short_argv(p.argv)}


def dst(host: str | None, ip: str | None, port: int | None, proto: str, *,
        cls: str | None = None, embedded: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {"host": host, "ip": ip, "port": port, "proto": proto, "class": cls,
            "embedded": embedded}  # fmt: skip


def base(kind: str, p: ProcInfo, destination: dict[str, Any], *, step: int | None,
         message: str, **more: Any) -> dict[str, Any]:  # fmt: skip
    """The fields every gateway fact has."""
    parents = parents_summary(p.parents)
    argv = short_argv(p.argv)
    line = " < ".join(" ".join(a[:PARENT_ARGS]) for a in [argv or [], *parents] if a)[:600]
    return {"source": "egress", "kind": kind, "step": step, "dst": destination, "pid": p.pid,
            "exe": p.exe, "argv": argv, "proc": {"pid": p.pid, "comm": _comm(p), "exe": p.exe},
            "parents": parents, "chain": line, "message": message, **more}  # fmt: skip


# ------------------------------------------------------------------------ DNS names
def entropy(text: str) -> float:
    """Shannon entropy in bits per character: random data is high, words and hostnames low."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def encoded(label: str) -> bool:
    """A label that looks like encoded data (hex, base32, base64url): long, no dashes, letters and
    digits (or both cases) mixed, and high entropy. Hostnames are words joined by dashes."""
    if len(label) < 16 or "-" in label or not label.isalnum():
        return False
    digits = sum(ch.isdigit() for ch in label)
    mixed = (0 < digits < len(label)) or (label.lower() != label and label.upper() != label)
    return mixed and entropy(label) >= 3.3


def name_facts(name: str, base_domain: str | None) -> dict[str, Any]:
    """What a looked-up name carries to the left of the domain it is allowed under."""
    name = name.rstrip(".")
    low = name.lower()
    left = name[: -len(base_domain) - 1] if base_domain and low.endswith("." + base_domain) else ""
    labels = [x for x in left.split(".") if x] if left else []
    longest = max(labels, key=len, default="")
    return {"base": base_domain, "under_wildcard": base_domain is not None,
            "labels": len(labels), "longest_label": len(longest),
            "label_entropy": round(entropy(longest), 3), "data_chars": len(left),
            "encoded": any(encoded(x) for x in labels)}  # fmt: skip
