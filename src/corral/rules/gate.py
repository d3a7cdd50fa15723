"""The gate: the policy's verdict on a command before the sandbox runs it.

deny: not run (the sandbox records `source=policy, action=blocked`). ask: the `approve` callback
decides (sync or async); without a person in the loop the policy's `gate.ask` says what ask means:
`deny` (the RL presets), `allow`, or `callback` (no callback given: deny, failing closed).
A command the gate cannot analyse within its time and memory bounds (`corral.rules.bounded`) is
denied as `gate.unanalysable` whatever the thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from corral.policy.model import Policy
from corral.rules import bounded
from corral.rules.finding import Finding, severity_rank
from corral.rules.verdict import effective_severity, verdict

if TYPE_CHECKING:
    from corral.rules.engine import RuleEngine
    from corral.sandbox.sandbox import GateDecision, Sandbox

Approve = Callable[[str, list[Finding]], "bool | Awaitable[bool]"]


def _brief(f: Finding, policy: Policy) -> dict[str, Any]:
    d = f.brief()
    eff = effective_severity(f, policy)
    if eff != f.severity:
        d["effective_severity"] = eff
    d["response"] = f.response
    return d


def make_gate(policy: Policy, approve: Approve | None = None,
              engine: RuleEngine | None = None) -> Callable[[str, Sandbox, int], Any]:  # fmt: skip
    """A hook for `Sandbox(gate=...)`: (command, sandbox, step) -> GateDecision (awaitable when the
    approve callback is async). `approve(command, findings) -> bool` is asked on `ask` verdicts."""
    if engine is None and not _default_ready():
        # import and build the shipped engine on a thread while the caller starts its sandbox
        # (tens of ms spent waiting on bubblewrap and the shell), not before: the first command
        # waits for it if need be
        threading.Thread(target=_prefetch, name="corral-rules", daemon=True).start()
    mode = policy.gate.ask

    def decide(command: str, sandbox: Sandbox, step: int) -> GateDecision | Awaitable[GateDecision]:
        """Small commands are judged at once; a larger one is analysed by the bounded worker
        (`corral.rules.bounded`) without holding the event loop."""
        pre = bounded.precheck(command)
        if pre is not None:
            return judge(command, [pre], sandbox, step)
        eng = engine or _policy_engine(policy)  # the shipped engine unless the policy tunes it
        if bounded.inline(command):
            return judge(command, eng.check_command(command), sandbox, step)

        async def later() -> GateDecision:
            findings = await asyncio.to_thread(bounded.bounded_findings, command, eng)
            out = judge(command, findings, sandbox, step)
            return await out if inspect.isawaitable(out) else out

        return later()

    def judge(command: str, findings: list[Finding], sandbox: Any = None, step: int = 0
              ) -> GateDecision | Awaitable[GateDecision]:  # fmt: skip
        from corral.sandbox.sandbox import GateDecision

        v = verdict(findings, policy)
        briefs = [_brief(f, policy) for f in findings]
        top = max(
            findings, key=lambda f: severity_rank(effective_severity(f, policy)), default=None
        )
        why = f"{top.rule} ({top.severity}): {top.message}" if top else ""
        unanalysable = any(f.rule == bounded.UNANALYSABLE for f in findings)
        if unanalysable and ("\x00" in command or not policy.observe_only):  # NUL: bash cannot
            return GateDecision(verdict="deny", findings=briefs, reason=why)
        if policy.observe_only and v != "allow":
            return GateDecision(verdict="allow", findings=briefs, reason=f"observe only; {why}")
        if v == "allow":
            return GateDecision(verdict="allow", findings=briefs)
        if v == "deny":
            return GateDecision(verdict="deny", findings=briefs, reason=why)
        # ask
        if mode == "allow":
            _approved(sandbox, step, findings)
            return GateDecision(
                verdict="allow", findings=briefs, reason=f"ask allowed by policy; {why}"
            )
        if approve is None or mode == "deny":
            how = "policy gate.ask is deny" if mode == "deny" else "no approval callback"
            return GateDecision(
                verdict="deny", findings=briefs, reason=f"{why} [ask -> deny: {how}]"
            )
        answer = approve(command, findings)
        if inspect.isawaitable(answer):

            async def wait() -> GateDecision:
                ok = bool(await answer)
                if ok:
                    _approved(sandbox, step, findings)
                return _asked(ok, briefs, why)

            return wait()
        if answer:
            _approved(sandbox, step, findings)
        return _asked(bool(answer), briefs, why)

    return decide


def _approved(sandbox: Any, step: int, findings: list[Finding]) -> None:
    """Tell the episode's watchers that these rules were approved for this step's command."""
    ctx = getattr(sandbox, "ctx", None)
    if ctx is not None and hasattr(ctx, "approve"):
        ctx.approve(step, [f.rule for f in findings])


def _default_engine() -> RuleEngine:
    from corral.rules.engine import RuleEngine

    return RuleEngine.default()


def _policy_engine(policy: Policy) -> RuleEngine:
    from corral.rules.engine import RuleEngine

    return RuleEngine.for_policy(policy)


def _prefetch() -> None:
    """A failed build here is raised again, by the first command that needs the engine."""
    with contextlib.suppress(Exception):
        _default_engine()


def _default_ready() -> bool:
    mod = sys.modules.get("corral.rules.engine")
    return mod is not None and mod.default_built()


def _asked(ok: bool, briefs: list[dict[str, Any]], why: str) -> GateDecision:
    from corral.sandbox.sandbox import GateDecision

    if ok:
        return GateDecision(verdict="allow", findings=briefs, reason=f"approved: {why}")
    return GateDecision(verdict="deny", findings=briefs, reason=f"refused by approver: {why}")
