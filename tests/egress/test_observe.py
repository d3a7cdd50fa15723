"""The gateway's one path without bwrap: facts through the packs to the responder, with a small fake
episode (policy, emit, penalty); no process is ever signalled (no pid is given)."""

from __future__ import annotations

from typing import Any

import pytest

from corral.egress import facts
from corral.egress.gateway import Egress
from corral.egress.procinfo import ProcInfo
from corral.policy.loader import load_policy

pytestmark = pytest.mark.unprivileged


class FakeEpisode:
    def __init__(self, **responses: str) -> None:
        self.policy = load_policy("dev").model_copy(deep=True)
        for k, v in responses.items():
            setattr(self.policy.responses, k, v)
        self.events: list[dict[str, Any]] = []
        self.penalty = 0.0
        self.step = 3

    def emit(self, **fields: Any) -> dict[str, Any]:
        self.events.append(fields)
        return fields

    def host_pids(self) -> list[int]:
        return []


def attempt(host: str, port: int, **kw: Any) -> dict[str, Any]:
    p = ProcInfo(argv=["python3", "client.py"], parents=[["bash", "run.sh"], ["bwrap", "--x"]])
    return facts.base("egress_attempt", p, facts.dst(host, "203.0.113.9", port, "connect"),
                      step=3, via="connect", message=f"{host}:{port}", **kw)  # fmt: skip


def gateway(**responses: str) -> tuple[Egress, FakeEpisode]:
    eg = Egress()
    ep = FakeEpisode(**responses)
    eg.sandbox = ep  # type: ignore[assignment]
    return eg, ep


def test_an_ordinary_connection_fires_nothing_and_is_remembered_so() -> None:
    eg, ep = gateway(mining="block")
    for _ in range(3):
        assert eg.observe(attempt("web.test", 443, outcome="allowed"), ProcInfo(),
                          refused=False) == "alert"  # fmt: skip
    assert ep.events == [] and len(eg._clean) == 1
    # a field a rule reads differs: judged again, and here it fires
    assert eg.observe(attempt("web.test", 3333, outcome="allowed"), ProcInfo(),
                      refused=False) == "block"  # fmt: skip
    [finding, penalty] = ep.events
    assert finding["rule"] == "mining.pool_destination" and finding["dst"]["port"] == 3333
    assert penalty["rule"] == "respond.penalty" and ep.penalty == penalty["evidence"]["penalty"]


def test_a_refusal_is_recorded_blocked_with_the_other_findings_riding_along() -> None:
    eg, ep = gateway(mining="alert")
    fact = attempt("pool.supportxmr.com", 443, outcome="refused", refusal="not_allowed")
    assert eg.observe(fact, ProcInfo(), refused=True) == "block"  # alert, but it was refused
    finding = ep.events[0]
    assert finding["rule"] == "mining.pool_destination" and finding["action"] == "blocked"
    assert {f["rule"] for f in finding["evidence"]["findings"]} == {
        "mining.pool_destination", "egress.not_allowed"}  # fmt: skip
    assert finding["evidence"]["parents"] == [["bash", "run.sh"]]  # bwrap's line never
    assert len([e for e in ep.events if e["rule"] == "respond.penalty"]) == 1  # one act, one charge


def test_a_flood_is_judged_each_time_and_recorded_in_a_burst() -> None:
    eg, ep = gateway()
    for i in range(50):
        eg.observe(attempt(f"h{i}.example", 443, outcome="refused", refusal="not_allowed"),
                   ProcInfo(), refused=True)  # fmt: skip
    recorded = [e for e in ep.events if e["rule"] == "egress.not_allowed"]
    assert len(recorded) == eg.summary.burst
    eg.summary.flush()
    assert ep.events[-1]["rule"] == "egress.attempts_summarised"
    assert ep.events[-1]["evidence"]["count"] == 50 - eg.summary.burst
