"""Responses: chosen by the policy per category, carried out on real processes, each an event."""

from __future__ import annotations

import asyncio

import pytest

from corral.monitor import procfs
from corral.policy.loader import load_policy
from corral.respond import ACTION_OF, Responder, decide
from corral.rl.reward import RewardShaper
from corral.sandbox.sandbox import Sandbox


def finding(category: str, severity: str = "high", response: str = "alert") -> dict:
    return {"rule": f"{category}.test_rule", "category": category, "severity": severity,
            "attack": "T1496", "message": "test finding", "response": response,
            "evidence": {"why": "a test"}}  # fmt: skip


class _Sb:
    def __init__(self, policy: str) -> None:
        self.policy = load_policy(policy)


@pytest.mark.parametrize(
    ("policy", "category", "expected"),
    [
        ("rl-strict", "mining", "terminate"),
        ("rl-strict", "probe_internal", "block"),
        ("rl-strict", "resource", "kill"),
        ("dev", "tunnel", "block"),
        ("dev", "probe_internal", "alert"),
        ("observe", "mining", "alert"),
        ("observe", "resource", "alert"),  # observe_only: nothing enforced by rules
    ],
)
def test_policy_picks_the_response(policy: str, category: str, expected: str) -> None:
    assert decide(_Sb(policy), finding(category)) == expected  # type: ignore[arg-type]


def test_unknown_category_falls_back_to_the_rule_default() -> None:
    assert decide(_Sb("rl-strict"), finding("weird", response="kill")) == "kill"  # type: ignore[arg-type]
    assert decide(_Sb("rl-strict"), finding("weird", response="nonsense")) == "alert"  # type: ignore[arg-type]


async def test_kill_takes_the_process_tree_and_records_it() -> None:
    pol = load_policy("rl-strict")
    async with Sandbox(pol, store=False) as sb:
        task = asyncio.ensure_future(sb.exec("sh -c 'sleep 30 & sleep 30; true'", step=2))
        for _ in range(200):
            kids = [p for p in sb.host_pids() if procfs.cmdline(p)[:1] == ["sleep"]]
            sh = [p for p in sb.host_pids() if procfs.cmdline(p)[:1] == ["sh"]]
            if len(kids) == 2 and sh:
                break
            await asyncio.sleep(0.01)
        assert sh and len(kids) == 2

        def tree() -> list[int]:
            return [sh[0], *kids]

        events = Responder().respond(sb, finding("resource", "medium"), source="resource",
                                     pid=sh[0], step=2, kill_tree=tree)  # fmt: skip
        result = await asyncio.wait_for(task, 5)
        assert result.exit_code == 137

        def dead(p: int) -> bool:
            st = procfs.read_text(f"/proc/{p}/stat")
            return st is None or st.rsplit(")", 1)[1].split()[0] in ("Z", "X")

        for _ in range(200):  # SIGKILL is delivered; the exit itself may still be under way
            if all(dead(p) for p in [sh[0], *kids]):
                break
            await asyncio.sleep(0.01)
        assert all(dead(p) for p in [sh[0], *kids])
        rules = [e.rule for e in events]
        assert rules == ["resource.test_rule", "respond.kill", "respond.penalty"]
        assert events[0].action == "killed" and events[0].step == 2
        assert sorted(events[1].evidence["pids"]) == sorted([sh[0], *kids])
        assert sb.penalty == pytest.approx(pol.responses.penalties["medium"])


async def test_terminate_ends_the_episode() -> None:
    async with Sandbox("rl-strict", store=False) as sb:
        events = Responder().respond(sb, finding("tunnel", "critical"), source="process", step=1)
        assert events[0].action == ACTION_OF["terminate"] == "terminated"
        for _ in range(300):
            if sb.closed_reason:
                break
            await asyncio.sleep(0.01)
        assert sb.terminated and sb.closed_reason.startswith("terminated: tunnel")
        assert any(e.rule == "respond.terminate" and e.action == "terminated" for e in sb.events)
        assert sb.penalty == -1.0


async def test_penalties_accumulate_and_observe_charges_none() -> None:
    async with Sandbox("rl-strict", store=False) as sb:
        r = Responder()
        r.respond(sb, finding("policy", "low"), source="process", response="alert")
        r.respond(sb, finding("policy", "high"), source="process", response="alert")
        assert sb.penalty == pytest.approx(-0.55)
        pen = [e for e in sb.events if e.rule == "respond.penalty"]
        assert [e.evidence["total"] for e in pen] == pytest.approx([-0.05, -0.55])
        # the RL reward shaper, reading the log alone, charges the same (responses aren't findings)
        assert RewardShaper(sb.policy).penalty(sb.events) == pytest.approx(sb.penalty)
    async with Sandbox("observe", store=False) as sb:
        events = Responder().respond(sb, finding("mining", "critical"), source="process")
        assert [e.action for e in events] == ["alerted"]
        assert sb.penalty == 0.0 and not sb.terminated


def test_the_penalty_is_charged_before_the_episode_end_is_asked_for() -> None:
    """The monitor responds from its own thread; the end it asks for runs on the episode's loop at
    once, and closing writes the step records from the events held then. The penalty must already
    be among them (under load the close won: a terminated miner's step record said 0.0)."""
    from corral.events.model import Event

    class Episode:
        id = episode_id = "ep-order-of-end"
        penalty = 0.0

        def __init__(self) -> None:
            self.policy = load_policy("rl-strict")
            self.events: list[Event] = []
            self.seen_at_end: list[str] | None = None

        def emit(self, **fields: object) -> Event:
            ev = Event(**fields)  # type: ignore[arg-type]
            self.events.append(ev)
            return ev

        def host_pids(self) -> list[int]:
            return []

        def terminate(self, reason: str, *, emit: bool = True, rule: str | None = None):  # type: ignore[no-untyped-def]
            self.seen_at_end = [e.rule for e in self.events]  # what a close would record now

            async def end() -> None:
                return None

            return end()

    ep = Episode()
    Responder().respond(ep, finding("mining", "critical"), source="process", step=5,  # type: ignore[arg-type]
                        origin_step=5, response="terminate")  # fmt: skip
    assert ep.seen_at_end is not None, "the episode's end was asked for"
    assert "respond.penalty" in ep.seen_at_end, ep.seen_at_end
