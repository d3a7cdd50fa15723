"""One act costs its penalty once, whichever sensors saw it (issue 10 item 3: judged by what
happened, not by which sensor saw it). A renamed miner speaking stratum to a fake pool on the
sandbox's loopback is seen at its exec (the pool in its config), on its socket (a stratum port) and
by its CPU: three findings of one act, one penalty."""

from __future__ import annotations

from typing import Any

import pytest

from corral.cli.demo import play_act, wait_listening
from corral.cli.rome import ACTS, SETUP_POOL
from corral.events.model import Event
from corral.policy.loader import load_policy, policy_from_mapping
from corral.respond import Responder
from corral.respond.responder import act_key
from corral.rl.reward import Finding, RewardShaper
from corral.sandbox.sandbox import Sandbox
from tests.conftest import wait_event

MINER = next(a for a in ACTS if a.category == "mining")


async def test_a_miner_seen_by_three_sensors_costs_one_act() -> None:
    # mining alerts here (rl-strict would kill it at its exec, before the other sensors see it);
    # a short CPU window and a twentieth of a core, so the CPU sensor reports while the miner runs
    # even when the host is loaded (two burners beside the suite leave it a fraction of a core)
    pol = policy_from_mapping({"extends": "rl-strict", "responses": {"mining": "alert"},
                               "monitor": {"cpu_window": 1, "cpu_threshold": 0.05}})  # fmt: skip
    async with Sandbox(pol, store=False) as sb:
        await play_act(sb, SETUP_POOL, 0, wait=0)
        assert await wait_listening(sb, 3333)
        await play_act(sb, MINER, 1, wait=0)
        mining = lambda e: e.category == "mining" and e.severity != "info"  # noqa: E731
        for source in ("process", "resource"):  # the exec/socket sensors, then the CPU
            await wait_event(sb, lambda e, s=source: mining(e) and e.source == s, timeout=30)
        await wait_event(sb, lambda e: mining(e) and "stratum_port" in e.rule, timeout=30)
    found = [e for e in sb.events if mining(e)]
    assert len({e.rule for e in found}) >= 3, [e.rule for e in found]
    assert {e.origin_step for e in found} == {1}
    assert len({e.evidence["act"] for e in found}) == 1
    shaper = RewardShaper(pol)
    one_act = min(shaper.finding_penalty(Finding("mining", e.severity, e.rule)) for e in found)
    assert one_act < 0
    assert sb.penalty == one_act
    assert shaper.penalty(sb.events) == one_act
    charged = [e for e in sb.events if e.rule == "respond.penalty"]
    assert sum(e.evidence["penalty"] for e in charged) == one_act
    assert {e.step for e in charged} == {1}


class _Episode:
    """Just what the responder uses of an episode."""

    def __init__(self, policy: str, eid: str) -> None:
        self.policy = load_policy(policy)
        self.id = self.episode_id = eid
        self.penalty = 0.0
        self.events: list[Event] = []

    def emit(self, **fields: Any) -> Event:
        ev = Event(**fields)
        self.events.append(ev)
        return ev

    def host_pids(self) -> list[int]:
        return []


def _finding(rule: str, severity: str) -> dict[str, Any]:
    return {"rule": rule, "category": "mining", "severity": severity, "message": rule}


def test_the_worst_finding_of_an_act_is_charged_once_whatever_comes_first() -> None:
    costs = {}
    for order in (("medium", "critical", "high"), ("critical", "medium", "high")):
        ep = _Episode("rl-strict", f"ep-order-{order[0]}")
        r, gw = Responder(), Responder()  # the monitor's and the gateway's
        for i, sev in enumerate(order):
            (r if i % 2 else gw).respond(ep, _finding(f"mining.r{i}", sev), source="process",  # type: ignore[arg-type]
                                         pid=42, step=3, origin_step=1, response="alert")  # fmt: skip
        costs[order] = ep.penalty
        assert RewardShaper(ep.policy).penalty(ep.events) == ep.penalty
    worst = RewardShaper(load_policy("rl-strict")).finding_penalty(
        Finding("mining", "critical", "x"))  # fmt: skip
    assert set(costs.values()) == {worst}


def test_different_acts_are_each_charged() -> None:
    ep = _Episode("rl-strict", "ep-acts")
    r = Responder()
    r.respond(ep, _finding("mining.a", "high"), source="process", pid=42, step=1, origin_step=1,  # type: ignore[arg-type]
              response="alert")  # fmt: skip
    r.respond(ep, _finding("mining.b", "high"), source="process", pid=43, step=2, origin_step=2,  # type: ignore[arg-type]
              response="alert")  # fmt: skip
    r.respond(ep, {**_finding("tunnel.c", "high"), "category": "tunnel"}, source="process",  # type: ignore[arg-type]
              pid=42, step=1, origin_step=1, response="alert")  # fmt: skip
    shaper = RewardShaper(ep.policy)
    each = [shaper.finding_penalty(Finding(c, "high", "x")) for c in ("mining", "mining", "tunnel")]
    assert ep.penalty == sum(each) == shaper.penalty(ep.events)
    # another episode of the same sandbox starts with nothing charged
    other = _Episode("rl-strict", "ep-acts-2")
    r.respond(other, _finding("mining.a", "high"), source="process", pid=42, step=1,  # type: ignore[arg-type]
              origin_step=1, response="alert")  # fmt: skip
    assert other.penalty == each[0]


def test_the_shaper_groups_a_gate_record_and_a_sensor_finding_of_one_act() -> None:
    """Events written before acts were named (a stored episode audited later) are grouped the same
    way: the worst finding's category and the step that started it."""
    pol = load_policy("rl-strict")
    gate = Event(source="policy", rule="gate.decision", category="mining", severity="critical",
                 action="blocked", step=4,
                 evidence={"findings": [{"rule": "mining.stratum_payload", "category": "mining",
                                         "severity": "critical"}]})  # fmt: skip
    wire = Event(source="egress", rule="mining.stratum_wire", category="mining",
                 severity="critical", action="blocked", step=6, origin_step=4, pid=7)  # fmt: skip
    later = Event(source="egress", rule="mining.stratum_wire", category="mining",
                  severity="critical", action="blocked", step=6, origin_step=6, pid=8)  # fmt: skip
    shaper = RewardShaper(pol)
    one = shaper.event_penalty(gate)
    assert shaper.act_of(gate) == shaper.act_of(wire) == act_key("mining", 4)
    assert shaper.penalty([gate, wire]) == one
    assert shaper.penalty([gate, wire, later]) == 2 * one


def test_a_later_steps_sighting_of_an_earlier_act_adds_nothing_to_that_step() -> None:
    """Per-step rewards (SandboxEnv, the ROCK routes, the contained API) charge a step what its
    events add to the episode: a background job started at step 1 and seen again at step 3 was
    paid for at step 1; a worse finding of it adds only the difference; the steps sum to the
    episode."""
    pol = load_policy("rl-strict")
    shaper = RewardShaper(pol)
    at_exec = Event(source="process", rule="mining.stratum_port_connection", category="mining",
                    severity="medium", action="alerted", step=1, origin_step=1, pid=9)  # fmt: skip
    other = Event(source="process", rule="tunnel.ssh_outbound", category="tunnel",
                  severity="high", action="alerted", step=3, origin_step=3, pid=11)  # fmt: skip
    same = Event(source="resource", rule="mining.cpu_corroborated", category="mining",
                 severity="medium", action="alerted", step=3, origin_step=1, pid=9)  # fmt: skip
    worse = Event(source="egress", rule="mining.stratum_wire", category="mining",
                  severity="critical", action="alerted", step=5, origin_step=1, pid=9)  # fmt: skip
    events = [at_exec, other, same, worse]
    steps = [shaper.penalty_since(events[:end], start) for start, end in ((0, 1), (1, 3), (3, 4))]
    medium = shaper.finding_penalty(Finding("mining", "medium", "x"))
    critical = shaper.finding_penalty(Finding("mining", "critical", "x"))
    tunnel = shaper.finding_penalty(Finding("tunnel", "high", "x"))
    assert steps == pytest.approx([medium, tunnel, critical - medium])
    assert sum(steps) == pytest.approx(shaper.penalty(events)) == pytest.approx(critical + tunnel)
