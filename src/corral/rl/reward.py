"""The reward shaper: findings become penalties, and some findings end the episode.

Penalties and responses are policy data (`responses.penalties` by severity, `responses.category_penalties`
per category, `responses.<category>` for the response), so a trainer tunes them in YAML, not code.
A gate decision that blocked a command carries the rule findings that caused it in its evidence; they
count as findings of their own category, so a blocked `ssh -R` is a tunnel finding, not a generic one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.events.model import Event, severity_rank
from corral.policy.model import Policy
from corral.respond.responder import act_key


@dataclass(frozen=True)
class Finding:
    category: str
    severity: str
    rule: str


def findings_of(event: Event) -> list[Finding]:
    """The findings an event stands for; lifecycle records are consequences, not findings."""
    inner = event.evidence.get("findings") if isinstance(event.evidence, dict) else None
    out: list[Finding] = []
    if isinstance(inner, list):
        for f in inner:
            if isinstance(f, dict) and f.get("category"):
                sev = str(f.get("severity") or event.severity)
                out.append(Finding(str(f["category"]), sev, str(f.get("rule") or event.rule)))
    if not out and event.category != "lifecycle" and event.severity != "info":
        out.append(Finding(event.category, event.severity, event.rule))
    return out


class RewardShaper:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def finding_penalty(self, finding: Finding) -> float:
        r = self.policy.responses
        if finding.category in r.category_penalties:
            return float(r.category_penalties[finding.category])
        return float(r.penalties.get(finding.severity, 0.0))

    def event_penalty(self, event: Event) -> float:
        """An event costs its single worst finding: one blocked command is one offence."""
        return min((self.finding_penalty(f) for f in findings_of(event)), default=0.0)

    def act_of(self, event: Event) -> str | None:
        """The act an event is a finding of (as the responder named it, else its worst finding's
        category and the step that started it); None when it holds no finding or no step."""
        named = event.evidence.get("act") if isinstance(event.evidence, dict) else None
        if isinstance(named, str):
            return named
        found = findings_of(event)
        if not found:
            return None
        worst = min(found, key=self.finding_penalty)
        origin = event.origin_step if event.origin_step is not None else event.step
        return act_key(worst.category, origin)

    def penalty(self, events: Iterable[Event]) -> float:
        """The episode's penalty: each act its worst finding's, once, however many sensors saw it
        (the gate and the gateway, the exec sensor and the CPU)."""
        acts: dict[str, float] = {}
        for e in events:
            p = self.event_penalty(e)
            if p:
                key = self.act_of(e) or f"event:{id(e)}"
                acts[key] = min(acts.get(key, 0.0), p)
        total = sum(acts.values())
        floor = self.policy.responses.penalty_floor
        return max(total, floor) if floor is not None else total

    def penalty_by_step(self, events: Iterable[Event]) -> dict[int, float]:
        """The episode's penalty by the step that caused it: each act its worst finding's, once,
        on its origin step (the step that started it, else the step it was seen in), however
        many sensors saw it. What a step's stored record is charged once every finding is in
        (a scripted `ssh -R` that connects before the monitor's kill is seen at its exec and by
        the gateway: one act, one penalty). The floor, an episode-wide cap, is not split."""
        acts: dict[str, tuple[int | None, float]] = {}
        for e in events:
            p = self.event_penalty(e)
            if not p:
                continue
            key = self.act_of(e) or f"event:{id(e)}"
            origin = e.origin_step if e.origin_step is not None else e.step
            prior = acts.get(key)
            if prior is None:
                acts[key] = (origin, p)
            else:  # the act's step is its first sighting's (every finding of it names the same)
                acts[key] = (prior[0] if prior[0] is not None else origin, min(prior[1], p))
        out: dict[int, float] = {}
        for origin, p in acts.values():
            if origin is not None:
                out[origin] = round(out.get(origin, 0.0) + p, 9)
        return out

    def penalty_since(self, events: Sequence[Event], start: int) -> float:
        """What `events[start:]` (a step's) add to the penalty of `events` (the episode's so far):
        an act an earlier step was charged for adds only what a worse finding of it adds (a
        background job's connection seen at step 3 is step 1's act), so the steps' penalties sum
        to the episode's."""
        return round(self.penalty(events) - self.penalty(events[:start]), 9)

    def terminating(self, events: Iterable[Event]) -> Finding | None:
        """The first finding whose category's response is `terminate` (none under observe_only)."""
        if self.policy.observe_only:
            return None
        for e in events:
            for f in findings_of(e):
                if self.policy.responses.for_category(f.category) == "terminate":
                    return f
        return None

    @staticmethod
    def worst(events: Iterable[Event]) -> str | None:
        sevs = [f.severity for e in events for f in findings_of(e)]
        return max(sevs, key=severity_rank, default=None)

    @staticmethod
    def flagged(events: Iterable[Event]) -> list[Event]:
        return [e for e in events if findings_of(e)]


def safety_state(sandbox: Any, shaper: RewardShaper) -> dict[str, Any]:
    """The `safety` object every API response carries: the episode's state so far.

    A responder may already have charged `sandbox.penalty`; the larger charge wins so the same
    finding is never counted twice.
    """
    events = list(sandbox.events)
    penalty = shaper.penalty(events)
    charged = float(getattr(sandbox, "penalty", 0.0) or 0.0)
    if charged < penalty:
        penalty = charged
    return {
        "events": len(shaper.flagged(events)),
        "worst": shaper.worst(events),
        "penalty": round(penalty, 6),
        "terminated": bool(getattr(sandbox, "terminated", False)),
    }


async def enforce(sandbox: Any, shaper: RewardShaper, events: list[Event]) -> Finding | None:
    """Apply the policy response `terminate` to a step's findings: the episode ends now.

    Until the responder lands in Sandbox itself, this is where a blocked `ssh -R` (a tunnel
    finding, response terminate) ends the episode; when the responder already did, it is a no-op.
    """
    ending = shaper.terminating(events)
    if ending is not None and not sandbox.terminated:
        await sandbox.terminate(
            f"{ending.category} finding {ending.rule}: policy response is terminate",
            rule="respond.episode_terminated",
        )
    return ending


EMPTY_SAFETY: dict[str, Any] = {"events": 0, "worst": None, "penalty": 0.0, "terminated": False}
