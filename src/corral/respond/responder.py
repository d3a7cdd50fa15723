"""Responses to findings: alert, block, kill the process tree, end the episode, and a reward penalty.

The policy picks the response per category (`policy.responses`); `observe_only` turns every one into
an alert. A finding becomes one event carrying the action taken; a kill or an episode's end is a
second event saying what was killed; the penalty is a third, so reward shaping can be audited from
the log alone.

One act costs its penalty once, whichever sensors saw it: a renamed miner is seen at its exec (a
pool in its config), on its socket (a stratum port), by the gateway (stratum on the wire) and by
its CPU, and each is a finding of the same act. An act is a category and the step that started
the process (`origin_step`, else the running step): `act_key`. Each finding's event carries its
act; the act is charged its worst finding's penalty, once (a later, worse finding of it charges
the difference), and `rl.reward.RewardShaper` counts the events the same way.

The killing itself happens here, on the caller's thread, before anything is awaited: a miner must
not get another second of CPU while an event loop gets round to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from corral.events.model import Event
from corral.policy.model import ResponsePolicy

if TYPE_CHECKING:
    from corral.contracts import EpisodeContext as Sandbox  # a Sandbox is one too

ACTION_OF = {"alert": "alerted", "block": "blocked", "kill": "killed", "terminate": "terminated"}
RANK = {"alert": 0, "block": 1, "kill": 2, "terminate": 3}
_penalty_lock = threading.Lock()
# (sandbox id, episode id) -> act -> the penalty charged for it so far; shared by every responder
# (the gateway and the monitor each hold one), oldest episodes forgotten first
_charged: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()
_MAX_EPISODES = 4096
_charged_by_object: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()


def act_key(category: str, origin: int | None) -> str | None:
    """What one act is, for charging it once: its category and the step that started it. None
    outside any step: nothing then ties two findings to one act, and each is charged."""
    return None if origin is None else f"{category}@{origin}"


def _acts_of(sandbox: Any) -> dict[str, float]:
    """The episode's charged acts: by its ids (the gateway holds the Sandbox, the monitor its
    episode context: the same ids), else, for a stand-in without ids, by the object itself."""
    sid, eid = getattr(sandbox, "id", None), getattr(sandbox, "episode_id", None)
    if sid is None and eid is None:
        try:
            return _charged_by_object.setdefault(sandbox, {})
        except TypeError:  # not weakly referable: nothing to tie its findings together
            return {}
    key = (str(sid), str(eid))
    acts = _charged.get(key)
    if acts is None:
        acts = _charged[key] = {}
        while len(_charged) > _MAX_EPISODES:
            _charged.popitem(last=False)
    else:
        _charged.move_to_end(key)
    return acts


def _origin_of(sandbox: Any, pid: int) -> int | None:
    """The step that started pid, from the episode's monitor (a Sandbox holds its context)."""
    ask = getattr(sandbox, "origin_of", None) or getattr(getattr(sandbox, "ctx", None), "origin_of",
                                                         None)  # fmt: skip
    if ask is None:
        return None
    try:
        got = ask(pid)
    except Exception:  # noqa: BLE001 - a vanished process: the running step is blamed
        return None
    return got if isinstance(got, int) else None


def _attr(finding: Any, name: str, default: Any = None) -> Any:
    if isinstance(finding, dict):
        return finding.get(name, default)
    return getattr(finding, name, default)


def decide(sandbox: Sandbox, finding: Any) -> str:
    """The response for a finding: the policy's for its category, else the rule's own default."""
    policy = sandbox.policy
    if policy.observe_only:
        return "alert"
    category = _attr(finding, "category", "")
    if category in ResponsePolicy.model_fields:
        return policy.responses.for_category(category)
    response = _attr(finding, "response") or "alert"
    return response if response in RANK else "alert"


def strongest(responses: Iterable[str]) -> str:
    return max(responses, key=lambda r: RANK.get(r, 0), default="alert")


def kill_pids(pids: Iterable[int]) -> list[int]:
    """SIGKILL each pid; returns those the signal reached."""
    hit = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            hit.append(pid)
    return hit


class Responder:
    """Carries out responses for one supervisor; thread-safe (the monitor calls it from its thread)."""

    def respond(
        self,
        sandbox: Sandbox,
        finding: Any,
        *,
        source: str,
        loop: asyncio.AbstractEventLoop | None = None,
        pid: int | None = None,
        exe: str | None = None,
        argv: list[str] | None = None,
        step: int | None = None,
        evidence: dict[str, Any] | None = None,
        kill_tree: Callable[[], list[int]] | None = None,
        response: str | None = None,
        act: bool = True,
        origin_step: int | None = None,
        dst: dict[str, Any] | None = None,
        action: str | None = None,
    ) -> list[Event]:
        """Record the finding, act on it (unless `act` is False: another finding on the same
        process already did), charge the penalty to the step that started the process
        (`origin_step`, else asked of the monitor for `pid`, else `step`), once per act; returns
        the events written. `action`: what happened to the act where that is not the response's
        own (a command the gate refused never ran: `blocked`, whatever the response)."""
        response = response or decide(sandbox, finding)
        category = _attr(finding, "category", "policy")
        severity = _attr(finding, "severity", "medium")
        rule = _attr(finding, "rule", "unknown")
        if origin_step is None and pid:
            origin_step = _origin_of(sandbox, pid)
        origin = origin_step if origin_step is not None else step
        the_act = act_key(category, origin)
        ev = dict(_attr(finding, "evidence") or {})
        ev.update(evidence or {})
        ev["response"] = response
        if the_act is not None:
            ev["act"] = the_act
        out = [
            sandbox.emit(
                source=source,
                rule=rule,
                category=category,
                severity=severity,
                action=action or ACTION_OF[response],
                attack=_attr(finding, "attack"),
                pid=pid,
                exe=exe,
                argv=argv,
                step=step,
                origin_step=origin_step,
                message=_attr(finding, "message") or rule,
                evidence=ev,
                **({"dst": dst} if dst is not None else {}),  # the destination of a network act
            )
        ]
        if act and response in ("block", "kill", "terminate"):
            pids = kill_pids(kill_tree() if kill_tree is not None else ([pid] if pid else []))
            if response != "terminate" or pids:
                out.append(
                    sandbox.emit(
                        source="policy",
                        rule="respond.kill" if response == "terminate" else f"respond.{response}",
                        category="lifecycle",  # a consequence, not a second finding
                        action=ACTION_OF[response] if response != "terminate" else "killed",
                        pid=pid,
                        step=step,
                        message=f"killed {len(pids)} process(es) for {rule}"
                        if pids
                        else f"{rule}: its process had already exited",
                        evidence={"pids": pids, "for_rule": rule, "for_category": category},
                    )
                )
        # charged before the end is asked for: the end may run at once on the episode's loop
        # (another thread), and closing writes the step records from the events it holds then
        out.extend(self.penalize(sandbox, finding, step=origin, act=the_act))
        if act and response == "terminate":
            self._terminate(sandbox, loop, f"{category}: {rule}")
        return out

    def penalize(self, sandbox: Sandbox, finding: Any, *, step: int | None,
                 act: str | None = None) -> list[Event]:  # fmt: skip
        """Charge the episode's reward as the RL reward shaper does (per-category penalty, else by
        severity, never below the floor); none when observing. With `act`, the act is charged
        its worst finding once: a finding no worse than one already charged for it costs
        nothing, a worse one the difference."""
        if sandbox.policy.observe_only:
            return []
        severity = _attr(finding, "severity", "medium")
        category = _attr(finding, "category", "policy")
        r = sandbox.policy.responses
        per_category = getattr(r, "category_penalties", {}) or {}
        amount = float(per_category.get(category, r.penalties.get(severity, 0.0)))
        if not amount:
            return []
        floor = getattr(r, "penalty_floor", None)
        with _penalty_lock:
            act_total = amount
            if act is not None:
                acts = _acts_of(sandbox)
                prior = acts.get(act, 0.0)
                if amount >= prior:
                    return []  # this act was charged as much already (another sensor saw it)
                acts[act] = amount
                amount -= prior
            before = sandbox.penalty
            sandbox.penalty = max(before + amount, floor) if floor is not None else before + amount
            amount, total = sandbox.penalty - before, sandbox.penalty
        rule = _attr(finding, "rule", "unknown")
        return [
            sandbox.emit(
                source="policy",
                rule="respond.penalty",
                category="lifecycle",  # the finding's own event is what the shaper counts
                action="alerted",
                step=step,
                message=f"reward penalty {amount:+g} for {rule} (episode total {total:+g})",
                evidence={
                    "penalty": amount,
                    "total": total,
                    "for_rule": rule,
                    "for_category": category,
                    "severity": severity,
                    **({"act": act, "act_penalty": act_total} if act is not None else {}),
                },
            )
        ]

    @staticmethod
    def _terminate(sandbox: Sandbox, loop: asyncio.AbstractEventLoop | None, reason: str) -> None:
        coro = sandbox.terminate(reason, rule="respond.terminate")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (loop is None or loop is running):
            running.create_task(coro)
        elif loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(coro, loop)
        else:
            coro.close()
            pids = sandbox.host_pids()
            kill_pids(pids)
