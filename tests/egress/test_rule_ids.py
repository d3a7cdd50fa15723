"""Every rule id the gateway can write is declared in a pack, and every gateway rule in the packs
reads facts the gateway builds (so none is dead)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import corral.egress
from corral.rules import RuleEngine

pytestmark = pytest.mark.unprivileged
ENGINE = RuleEngine.default()
SOURCES = {p.name: p.read_text() for p in Path(corral.egress.__file__).parent.glob("*.py")}
FACT_KINDS = {"egress_attempt", "egress_evidence", "dns_query", "egress_malformed"}


def test_every_rule_id_written_by_the_gateway_is_declared() -> None:
    written = {m for src in SOURCES.values() for m in re.findall(r'rule="([a-z_.]+)"', src)}
    assert {"egress.connection", "egress.dns_query", "egress.gateway_started"} <= written
    assert not [m for src in SOURCES.values() for m in re.findall(r'rule=f"', src)], (
        "rule ids are literals, so they can be checked here"
    )
    declared = {r.id for r in ENGINE.rules}
    assert sorted(written - declared) == []


def test_every_gateway_rule_reads_facts_the_gateway_builds() -> None:
    kinds = {k for src in SOURCES.values() for k in re.findall(r'"(egress_[a-z]+|dns_query)"', src)}
    assert kinds >= FACT_KINDS
    gateway_rules = [r for r in ENGINE.rules if r.match == "event"
                     and r.when.get("source") == "egress"]  # fmt: skip
    assert len(gateway_rules) >= 20
    for r in gateway_rules:
        fired = [ex for ex in r.examples if r.id in [f.rule for f in ENGINE.match_event(ex)]]
        assert fired, r.id
        if "record" in r.when:
            continue  # a record, written as it is
        assert any(ex.get("kind") in FACT_KINDS for ex in fired), (r.id, "no example of a fact")


@pytest.mark.parametrize("rule", ["mining.stratum_wire", "mining.pool_destination",
                                  "tunnel.ssh_via_proxy", "tunnel.ssh_forward_on_wire",
                                  "tunnel.domain_fronting", "tunnel.tls_without_sni",
                                  "exfiltration.dns_tunnel", "metadata.cloud_endpoint",
                                  "probe_internal.address", "reverse_shell.shell_on_wire"])  # fmt: skip
def test_the_runtime_rules_of_the_issue_exist_and_share_categories_with_the_commands(rule) -> None:
    r = ENGINE.rule(rule)
    assert r is not None and r.match == "event"
    assert r.category == rule.split(".")[0]  # the same category as the command rules of the act
