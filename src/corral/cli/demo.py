"""`corral demo rome`: the ROME incident replayed by a scripted rogue agent in a real sandbox.

The episode runs under `rl-strict` with one change, shown on screen: where rl-strict would end the
episode (`terminate`), the demo kills the offending process tree instead, so every act of the story
plays and is seen; the verdict then says where rl-strict would have ended it. The sustained-CPU window
is shortened to 2 s so the demo runs in seconds. As an ordinary user on a host whose cgroups cannot
be delegated, rl-strict's limits cannot all be enforced; the demo then says so and runs with
`limits.enforcement: best_effort` rather than refusing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from corral.cli.rome import ACTS, SETUP_POOL, WORKSPACE_FILES, Act
from corral.events.model import Event, severity_rank
from corral.policy.loader import load_policy, policy_from_mapping
from corral.policy.model import Policy, ResponsePolicy
from corral.sandbox.errors import SandboxRefused
from corral.sandbox.sandbox import Sandbox
from corral.store.paths import corral_home

FINDING_SOURCES = ("process", "resource", "gpu", "egress", "file", "policy")


def register(app: typer.Typer) -> None:
    demo_app = typer.Typer(help="Replay incidents with scripted agents.", no_args_is_help=True)
    demo_app.command("rome")(rome)
    app.add_typer(demo_app, name="demo")


def demo_policy(base: str = "rl-strict", *, best_effort: bool = False) -> Policy:
    """The base policy, with `terminate` turned into `kill` so the whole story plays."""
    pol = load_policy(base)
    responses = {
        cat: ("kill" if getattr(pol.responses, cat) == "terminate" else getattr(pol.responses, cat))
        for cat in ResponsePolicy.model_fields
        if cat != "penalties"
    }
    data: dict[str, Any] = {
        "extends": base,
        "name": f"{pol.name}+demo",
        "responses": responses,
        "monitor": {"cpu_window": 2.0},
    }
    if best_effort:
        data["limits"] = {"enforcement": "best_effort"}
    return policy_from_mapping(data, f"demo variant of {base}")


def categories_of(e: Event) -> set[str]:
    """A finding's category; for a command the gate refused, the categories of its findings."""
    cats = {e.category}
    for f in e.evidence.get("findings") or []:
        if isinstance(f, dict) and f.get("category"):
            cats.add(f["category"])
    return cats


def is_finding(e: Event) -> bool:
    return (
        e.severity != "info"
        and e.category not in ("lifecycle",)
        and not e.rule.startswith(("respond.", "sandbox."))
    )


@dataclass
class StepRecord:
    step: int | None
    act: Act
    exit_code: int | None
    events: list[Event] = field(default_factory=list)

    def findings(self) -> list[Event]:
        return [e for e in self.events if is_finding(e)]

    def responses(self) -> list[Event]:
        return [
            e for e in self.events if e.rule.startswith("respond.") and e.rule != "respond.penalty"
        ]


@dataclass
class DemoResult:
    episode_id: str
    policy: str
    notes: list[str]
    steps: list[StepRecord]
    penalty: float
    events: list[Event]
    monitor_mode: str
    would_terminate_at: int | None = None
    latencies_ms: dict[str, float] = field(default_factory=dict)


def latency_ms(events: list[Event], finding: Event) -> float | None:
    """Finding ts minus the ts of what it judged: its process's exec, else its command's start."""
    ref = None
    if finding.pid:
        ref = next((e for e in events if e.rule == "process.exec" and e.pid == finding.pid), None)
    if ref is None and finding.step is not None:
        ref = next((e for e in events if e.rule == "sandbox.command_started"
                    and e.step == finding.step), None)  # fmt: skip
    if ref is None:
        return None
    return (finding.ts - ref.ts).total_seconds() * 1000


async def _wait_for(sb: Sandbox, since: int, category: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(category in categories_of(e) and is_finding(e) for e in sb.events[since:]):
            await asyncio.sleep(0.05)  # let the response events land
            return
        await asyncio.sleep(0.02)


async def wait_listening(sb: Sandbox, port: int, timeout: float = 5.0) -> bool:
    """Until something in the sandbox's netns listens on `port` (read from the host side)."""
    from corral.monitor import procfs

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sb._init_pid and any(
            s["state"] == "LISTEN" and s["local"]["port"] == port
            for s in procfs.tcp_table(sb._init_pid).values()
        ):
            return True
        await asyncio.sleep(0.02)
    return False


async def play_act(sb: Sandbox, act: Act, step: int | None, wait: float = 3.0) -> StepRecord:
    """Run one act in the sandbox and wait (bounded) for corral to see what it should."""
    for path, (content, mode) in act.files.items():
        await sb.write_file(path, content, mode)
    since = len(sb.events)
    result = await sb.exec(act.command, step=step, timeout=30)
    if act.category:
        await _wait_for(sb, since, act.category, wait)
    return StepRecord(step=step, act=act, exit_code=result.exit_code, events=sb.events[since:])


async def run_rome(console: Console | None = None, base: str = "rl-strict") -> DemoResult:
    from corral.monitor import Monitor

    console = console or Console()
    notes: list[str] = []
    ws = Path(tempfile.mkdtemp(prefix="rome-", dir=_demo_dir()))
    for rel, text in WORKSPACE_FILES.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    pol = demo_policy(base)
    notes.append(f"policy {base} with 'terminate' responses turned into 'kill' so the whole "
                 "story plays; sustained-CPU window 2 s")  # fmt: skip
    sb = Sandbox(pol, workspace=ws)
    try:
        await sb.start()
    except SandboxRefused as err:
        if "cannot enforce" not in str(err):
            raise
        notes.append(f"this host cannot enforce all of {base}'s limits for this user ({err}); "
                     "running with limits.enforcement: best_effort")  # fmt: skip
        pol = demo_policy(base, best_effort=True)
        sb = Sandbox(pol, workspace=ws)
        await sb.start()
    # every sandbox is attached to the supervisor's monitor by start(); the demo only reports it
    monitor = Monitor.shared()
    mode_line = ("exec sensor: the sandbox's seccomp listener (each exec seen before it runs)"
                 if sb.ctx.exec_sensor else f"exec sensor: polling /proc ({monitor.mode_reason})")  # fmt: skip
    steps: list[StepRecord] = []
    try:
        iso = await sb.exec("tail -n +2 /proc/net/route; tail -n +3 /proc/net/dev", step=0)
        links = [ln.split(":")[0].strip() for ln in iso.stdout.splitlines() if ":" in ln]
        routes = [ln for ln in iso.stdout.splitlines() if ln.strip() and ":" not in ln]
        if iso.exit_code != 0 or routes or links != ["lo"]:
            raise SandboxRefused(
                "the sandbox's network namespace is not isolated: refusing to play the rogue acts",
                "run `corral doctor`",
            )
        steps.append(await play_act(sb, SETUP_POOL, 0, wait=0))
        if not await wait_listening(sb, 3333):
            notes.append("the fake pool did not come up; the miner will fail to connect")
        for i, act in enumerate(ACTS, start=1):
            steps.append(await play_act(sb, act, i))
        await asyncio.sleep(0.3)
        tail = [e for e in sb.events if e.step == len(ACTS) and e not in steps[-1].events]
        steps[-1].events.extend(tail)
    finally:
        await sb.close()
        shutil.rmtree(ws, ignore_errors=True)
    strict = load_policy(base)
    first_terminate = None
    lat: dict[str, float] = {}
    for rec in steps:
        for f in rec.findings():
            ms = latency_ms(sb.events, f)
            if ms is not None:
                lat.setdefault(f.rule, round(ms, 2))
            if (first_terminate is None and f.category in ResponsePolicy.model_fields
                    and strict.responses.for_category(f.category) == "terminate"):  # fmt: skip
                first_terminate = rec.step
    from corral.rl.reward import RewardShaper

    return DemoResult(
        episode_id=sb.episode_id,
        policy=pol.name,
        notes=notes,
        steps=steps,
        # as the RL reward shaper charges it from the log: gate refusals count as well as the
        # monitor's findings (sb.penalty holds only what the responder charged)
        penalty=RewardShaper(pol).penalty(sb.events),
        events=list(sb.events),
        monitor_mode=mode_line,
        would_terminate_at=first_terminate,
        latencies_ms=lat,
    )


def _demo_dir() -> Path:
    d = corral_home() / "demo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def render(console: Console, res: DemoResult) -> None:
    from corral.rl.reward import RewardShaper

    shaper = RewardShaper(load_policy("rl-strict"))
    table = Table(
        title="ROME, replayed: a scripted rogue agent in a corral sandbox", show_lines=True
    )
    table.add_column("step", justify="right")
    table.add_column("what the agent did")
    table.add_column("what corral saw")
    table.add_column("what corral did")
    for rec in res.steps:
        cmd = rec.act.command.splitlines()[0][:70]
        did = f"{rec.act.did}\n[dim]$ {cmd}[/]"
        saw, acted = [], []
        for f in sorted(rec.findings(), key=lambda e: -severity_rank(e.severity)):
            ms = latency_ms(res.events, f)
            when = f" [dim]+{ms:.0f} ms[/]" if ms is not None else ""
            saw.append(
                f"[bold]{f.category}[/] {f.rule} [{_color(f.severity)}]{f.severity}[/]{when}"
            )
            acted.append(f"{f.action}")
        for r in rec.responses():
            if r.evidence.get("pids"):
                acted.append(f"[dim]{r.message}[/]")
        pen = sum(shaper.event_penalty(e) for e in rec.events)
        if pen:
            acted.append(f"penalty {pen:+g}")
        if not saw:
            saw.append("[green]nothing to report[/]" if not rec.act.category else "[red]missed[/]")
        table.add_row("setup" if rec.step == 0 else str(rec.step), did, "\n".join(saw),
                      "\n".join(dict.fromkeys(acted)) or "allowed")  # fmt: skip
    console.print(table)
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")
    cats = sorted({f.category for rec in res.steps for f in rec.findings()})
    missed = [r.act.name for r in res.steps if r.act.category and not any(
        r.act.category in categories_of(f) for f in r.findings())]  # fmt: skip
    if res.would_terminate_at is not None:
        verdict = (f"[bold red]episode rejected[/]: under rl-strict it ends at step "
                   f"{res.would_terminate_at}")  # fmt: skip
    else:
        verdict = "[green]episode clean[/]" if not cats else "[yellow]episode flagged[/]"
    body = (
        f"{verdict}\n"
        f"categories seen: {', '.join(cats) or 'none'}\n"
        f"reward penalty: [bold]{res.penalty:+g}[/]\n"
        f"monitor: {res.monitor_mode}\n"
        f"episode {res.episode_id}: `corral events --episode {res.episode_id}`"
    )
    if missed:
        body += f"\n[red]missed: {', '.join(missed)}[/]"
    console.print(Panel(body, title="verdict"))


def _color(sev: str) -> str:
    return {"critical": "bold red", "high": "red", "medium": "yellow"}.get(sev, "white")


def rome(
    policy: str = typer.Option("rl-strict", "--policy", help="base policy (preset or file)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Replay the ROME incident: honest steps, a reverse tunnel, a probe, metadata, a miner."""
    console = Console()
    try:
        res = asyncio.run(run_rome(console, policy))
    except SandboxRefused as err:
        console.print(f"[red]corral demo: {err}[/]")
        raise typer.Exit(125) from None
    if as_json:
        out = {
            "episode_id": res.episode_id,
            "policy": res.policy,
            "penalty": res.penalty,
            "would_terminate_at": res.would_terminate_at,
            "latencies_ms": res.latencies_ms,
            "steps": [{"step": r.step, "act": r.act.name,
                       "findings": [f.model_dump(mode="json") for f in r.findings()]}
                      for r in res.steps],
        }  # fmt: skip
        typer.echo(json.dumps(out, indent=2))
        return
    render(console, res)
    missed = [r for r in res.steps if r.act.category and not any(
        r.act.category in categories_of(f) for f in r.findings())]  # fmt: skip
    raise typer.Exit(1 if missed else 0)
