"""One trajectory in, one verdict out: every step's commands through the rule engine.

This is what a worker runs. Its results are plain dicts (the `--json` record, see
`corral.cli.audit`) plus private keys the driver strips: `_raw` (original records, for
--keep/--drop), `_context` (the offending steps and their neighbours, for the HTML report) and
`_json` (the record already encoded, so that work is spread over the workers too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.audit import checker
from corral.audit.context import PROVENANCE_RULES, Provenance
from corral.audit.model import SEVERITY_RANK, Malformed, Step, Trajectory
from corral.audit.sources import Chunk, load, trajectories
from corral.policy import Policy
from corral.rules import Finding

CONTEXT_STEPS = 5  # offending steps shown with neighbours per trajectory
CONTEXT_CHARS = 1200


@dataclass(frozen=True, slots=True)
class AuditOptions:
    policy: Policy
    format: str | None = None
    keep_raw: bool = False
    context: bool = True
    json_lines: bool = False  # encode the --json line in the worker (the driver only writes it)
    keep_unreadable: bool = False  # --keep-unreadable: unreadable trajectories pass


def passes(verdict: str, policy: Policy, keep_unreadable: bool = False) -> bool:
    """What --keep takes: allow, ask only where the policy says ask means allow, and unreadable
    only when asked (--keep-unreadable): nothing in it was checked."""
    return (
        verdict == "allow"
        or (verdict == "ask" and policy.gate.ask == "allow")
        or (verdict == "unreadable" and keep_unreadable)
    )


def _finding_dict(f: Any, step: Step, command: str, synthetic: bool) -> dict[str, Any]:
    return {
        "step": step.index,
        "ref": step.ref,
        "rule": f.rule,
        "category": f.category,
        "severity": f.severity,
        "attack": f.attack,
        "message": f.message,
        "command": command if len(command) <= CONTEXT_CHARS else command[:CONTEXT_CHARS] + "…",
        "synthetic": synthetic,
    }


def _clip(text: str) -> str:
    return text if len(text) <= CONTEXT_CHARS else text[:CONTEXT_CHARS] + "…"


def _context(traj: Trajectory, flagged: dict[int, list[str]]) -> list[dict[str, Any]]:
    wanted: set[int] = set()
    for pos in sorted(flagged)[:CONTEXT_STEPS]:
        wanted.update((pos - 1, pos, pos + 1))
    out = []
    for pos in sorted(p for p in wanted if 0 <= p < len(traj.steps)):
        s = traj.steps[pos]
        out.append({
            "step": s.index, "role": s.role, "ref": s.ref, "text": _clip(s.text),
            "observation": _clip(s.observation), "flagged": flagged.get(pos, []),
            "commands": [{"command": _clip(c.command), "synthetic": c.synthetic} for c in s.commands],
        })  # fmt: skip
    return out


def _recorded(ev: dict[str, Any]) -> Finding | None:
    """An event the live run recorded at this step (`corral export`), as a finding of its own."""
    severity, rule = ev.get("severity"), ev.get("rule")
    if severity not in SEVERITY_RANK or severity == "info" or not isinstance(rule, str):
        return None
    what = f"{ev.get('source', '?')} {ev.get('action', '')}".strip()
    return Finding(rule=rule, category=str(ev.get("category") or "policy"), severity=severity,
                   attack=ev.get("attack"), message=f"recorded live ({what}): {ev.get('message', '')}",
                   evidence={"recorded": True})  # fmt: skip


def _unreadable(traj: Trajectory, commands: int) -> str | None:
    """Why a trajectory's actions were not read, or None: steps, no command, no tool call seen."""
    if commands or not traj.steps or any(s.calls for s in traj.steps):
        return None
    roles = {s.role for s in traj.steps}
    return (f"{len(traj.steps)} steps ({', '.join(sorted(r for r in roles if r)) or 'no roles'}) "
            f"but no tool call or command the {traj.format} reader recognises")  # fmt: skip


class _Step:
    """Findings of one step, deduplicated by rule."""

    __slots__ = ("rules", "items")

    def __init__(self) -> None:
        self.rules: set[str] = set()
        self.items: list[tuple[Any, dict[str, Any]]] = []

    def add(self, f: Any, d: dict[str, Any]) -> bool:
        if f.rule in self.rules:
            return False
        self.rules.add(f.rule)
        self.items.append((f, d))
        return True


def audit_trajectory(traj: Trajectory, options: AuditOptions) -> dict[str, Any]:
    policy = options.policy
    prov = Provenance(list(policy.filesystem.protected), policy.filesystem.workspace.path,
                      traj.cwd)  # fmt: skip
    per_step: dict[int, _Step] = {}
    commands = 0
    for pos, step in enumerate(traj.steps):
        here = per_step.setdefault(pos, _Step())
        for cmd in step.commands:
            commands += 1
            found = checker.analyse(cmd.command)
            effs = prov.effects_of(cmd.command, cmd.synthetic)
            if cmd.mode == "replace":
                for e in effs:
                    e.kind = "edit" if e.kind == "append" else e.kind
            for f in found:
                if f.rule in PROVENANCE_RULES:
                    judged = prov.judge(effs, f.rule)
                    if judged == "drop":
                        continue
                    if judged == "ask" and SEVERITY_RANK[f.severity] > SEVERITY_RANK["medium"]:
                        f = f.model_copy(update={
                            "severity": "medium",
                            "message": f"{f.message} (an existing test file outside the "
                                       "policy's protected paths)",
                        })  # fmt: skip
                here.add(f, _finding_dict(f, step, cmd.command, cmd.synthetic))
            for path, as_command, written in prov.scripts_run(effs):
                inner = None
                for f in checker.analyse(as_command):
                    if f.category == "policy":
                        continue
                    if f.rule in PROVENANCE_RULES:
                        inner = prov.effects_of(as_command, True) if inner is None else inner
                        if prov.judge(inner, f.rule) != "keep":
                            continue
                    wrote = sorted({traj.steps[w].index for w in written.steps})
                    ran = f.model_copy(
                        update={
                            "message": f"{f.message} (in {path}, written at "
                            f"step {', '.join(map(str, wrote))})"
                        }
                    )
                    d = _finding_dict(ran, step, cmd.command, cmd.synthetic)
                    d["via"] = {"path": path, "written_at": wrote, "run_at": step.index}
                    here.add(ran, d)
                    for w in written.steps:
                        src = traj.steps[w]
                        wf = f.model_copy(
                            update={
                                "message": f"{f.message} (written to {path}, "
                                f"run at step {step.index})"
                            }
                        )
                        wd = _finding_dict(wf, src, as_command, True)
                        wd["via"] = {"path": path, "written_at": wrote, "run_at": step.index}
                        per_step.setdefault(w, _Step()).add(wf, wd)
            prov.record(pos, effs)
            prov.remember(cmd.command)
        for ev in step.recorded:
            f = _recorded(ev)
            if f is not None:
                d = _finding_dict(f, step, " ".join(map(str, ev.get("argv") or [])) or "", False)
                d["recorded"] = True
                here.add(f, d)
        prov.remember(step.observation)
    raw_findings: list[Any] = []
    findings: list[dict[str, Any]] = []
    flagged: dict[int, list[str]] = {}
    for pos in sorted(per_step):
        for f, d in per_step[pos].items:
            raw_findings.append(f)
            findings.append(d)
            flagged.setdefault(pos, []).append(f.rule)
    why = _unreadable(traj, commands)
    verdict = "unreadable" if why and not raw_findings else checker.verdict(raw_findings, policy)
    worst = None
    if findings:
        top = max(findings, key=lambda d: (SEVERITY_RANK.get(d["severity"], 0), -d["step"]))
        worst = {k: top[k] for k in ("rule", "category", "severity", "attack", "message")}
        worst["steps"] = sorted({d["step"] for d in findings if d["rule"] == top["rule"]})
    result: dict[str, Any] = {
        "kind": "trajectory",
        "file": traj.file,
        "line": traj.line,
        "item": traj.item,
        "format": traj.format,
        "id": traj.id,
        "steps": len(traj.steps),
        "commands": commands,
        "actions": sum(s.calls for s in traj.steps),
        "verdict": verdict,
        "passed": passes(verdict, policy, options.keep_unreadable),
        "worst": worst,
        "findings": findings,
    }
    if why:
        result["unreadable"] = why
    if options.json_lines:
        result["_json"] = json.dumps(result, ensure_ascii=False)
    if options.keep_raw:
        result["_raw"] = traj.raw
    if options.context and findings:
        result["_context"] = _context(traj, flagged)
    return result


def audit_chunk(chunk: Chunk, options: AuditOptions, data: bytes | None = None) -> dict[str, Any]:
    """A worker's whole job for one chunk; `data` is given when the bytes were shipped (Ray)."""
    if chunk.oversize:
        what = "line" if chunk.lines else "JSON document"
        bad = Malformed(chunk.path, chunk.first_line if chunk.lines else None, None,
                        f"{what} of {chunk.size:,} bytes is over the record size limit "
                        f"(--max-record-mb); skipped unread")  # fmt: skip
        return {"results": [], "malformed": [bad.to_dict()], "bytes": chunk.size}
    if data is None:
        try:
            data = load(chunk)
        except OSError as err:
            bad = Malformed(chunk.path, None, None, f"cannot read: {err}")
            return {"results": [], "malformed": [bad.to_dict()], "bytes": chunk.size}
    results: list[dict[str, Any]] = []
    malformed: list[dict[str, Any]] = [
        Malformed(chunk.path, line, None, f"line of {size:,} bytes is over the record size limit "
                  "(--max-record-mb); skipped unread").to_dict()
        for line, size in chunk.skipped
    ]  # fmt: skip
    for t in trajectories(chunk, data, options.format, options.keep_raw):
        if isinstance(t, Malformed):
            malformed.append(t.to_dict())
        else:
            results.append(audit_trajectory(t, options))
    return {"results": results, "malformed": malformed, "bytes": chunk.size}
