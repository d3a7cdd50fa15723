"""One RL episode on one sandbox: the step logic shared by the in-process env, the HTTP service and
the Ray host actors, so every path scores and records a step the same way.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.events.model import Event
from corral.policy.model import Policy
from corral.rl.reward import RewardShaper, enforce, safety_state
from corral.rl.task import TaskSpec
from corral.sandbox import files
from corral.sandbox.errors import SandboxClosed, SandboxRefused
from corral.sandbox.sandbox import Sandbox
from corral.store.paths import corral_home
from corral.store.sqlite import EventStore
from corral.store.steps import StepRecord


class EpisodeOver(RuntimeError):
    """step() after the episode ended: the caller must reset()."""


def _now() -> datetime:
    return datetime.now(UTC)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + f"\n[... {len(text) - limit} characters cut ...]\n" + text[-half:]


@functools.lru_cache(maxsize=16)
def _gate_for(policy_json: str) -> Any:
    try:
        from corral.rules.gate import make_gate
    except ImportError:  # the rules package is not installed: the sandbox runs without a gate
        return None
    return make_gate(Policy.model_validate_json(policy_json))


def ensure_gate(sandbox: Sandbox) -> Sandbox:
    """Give a sandbox the policy's command gate when it has none, so a denied command (an `ssh -R`
    under rl-strict) is blocked and recorded before it runs; a no-op once Sandbox installs it."""
    if sandbox.gate is None and sandbox.policy.gate.enabled:
        sandbox.gate = _gate_for(sandbox.policy.model_dump_json())
    return sandbox


async def start_sandbox(sandbox: Sandbox, attempts: int = 3) -> None:
    """Start, retrying when the child could not join its cgroup: on a shared host another
    supervisor's stale-cgroup sweep can remove a cgroup in the moment between its creation and the
    child joining it. Each retry makes the cgroup and applies the limits afresh; nothing runs
    without them."""
    for left in range(attempts - 1, -1, -1):
        try:
            await sandbox.start()
            return
        except SandboxRefused as err:
            if left == 0 or "preexec_fn" not in err.cause:
                raise
            if sandbox.cgroup is not None:
                await asyncio.to_thread(sandbox.cgroup.destroy)
                sandbox.cgroup = None


def prepare_workspace(policy: Policy, task: TaskSpec) -> Path:
    """Lay the task's files out before the sandbox starts, so protected paths (tests/, grader/)
    exist when bubblewrap binds them read-only; files written after the start would stay writable."""
    root = corral_home() / "sandboxes"
    root.mkdir(parents=True, exist_ok=True)
    ws = Path(tempfile.mkdtemp(prefix="ep-", dir=root))
    inside = policy.filesystem.workspace.path
    for path, text in task.files.items():
        files.write(ws, inside, path, text.encode())
    return ws


class Episode:
    """Owns its sandbox: reset() starts it, the last step closes it."""

    @classmethod
    def new(
        cls,
        policy: Policy,
        task: TaskSpec,
        *,
        episode_id: str | None = None,
        store: EventStore | bool | None = True,
        factory: Callable[..., Sandbox] = Sandbox,
    ) -> Episode:
        ws = prepare_workspace(policy, task)
        sandbox = ensure_gate(factory(policy, workspace=ws, episode_id=episode_id, store=store))
        return cls(sandbox, task, owned_workspace=ws)

    def __init__(self, sandbox: Sandbox, task: TaskSpec, *, store: EventStore | None = None,
                 owned_workspace: Path | None = None) -> None:  # fmt: skip
        self.owned_workspace = owned_workspace
        self.sandbox = sandbox
        self.task = task
        self.policy: Policy = sandbox.policy
        self.shaper = RewardShaper(self.policy)
        self.store = store if store is not None else sandbox.sink.store
        self.t = 0
        self.done = False
        self.total_reward = 0.0
        self._seen = 0

    @property
    def episode_id(self) -> str:
        return self.sandbox.episode_id

    def safety(self) -> dict[str, Any]:
        return safety_state(self.sandbox, self.shaper)

    def _record(self, rec: StepRecord) -> None:
        if self.store is not None:
            self.store.add_step(rec)

    def _new_events(self) -> list[Event]:
        events = self.sandbox.events[self._seen :]
        self._seen = len(self.sandbox.events)
        return events

    async def reset(self) -> tuple[str, dict[str, Any]]:
        started = _now()
        try:
            await start_sandbox(self.sandbox)
        except BaseException:
            self._drop_workspace()
            raise
        if self.owned_workspace is None:  # a caller-made sandbox: files land after the start
            for path, text in self.task.files.items():
                await self.sandbox.write_file(path, text)
        self._new_events()
        obs = self.task.instruction
        info = {"episode_id": self.episode_id, "sandbox_id": self.sandbox.id,
                "task": self.task.name, "safety": self.safety()}  # fmt: skip
        self._record(StepRecord(episode_id=self.episode_id, sandbox_id=self.sandbox.id, step=0,
                                kind="reset", observation=obs, started=started, ended=_now(),
                                info={"task": self.task.model_dump()}))  # fmt: skip
        return obs, info

    async def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.done:
            raise EpisodeOver(f"episode {self.episode_id} has ended; call reset() for a new one")
        if not isinstance(action, str):
            raise TypeError(f"action must be a shell command string, got {type(action).__name__}")
        self.t += 1
        step = self.t
        started = _now()
        t0 = time.monotonic()
        submitted = action.strip() == self.task.submit
        exit_code: int | None = None
        obs = ""
        kind = "check" if submitted else "action"
        task_reward = 0.0
        closed = False
        try:
            if submitted:
                if self.task.check is None:
                    exit_code, obs = 0, "submitted (this task has no check)"
                    task_reward = self.task.reward_pass
                else:
                    # the grade never runs in the agent's shell, and nothing of the agent runs
                    # while it does (see Sandbox.harness_exec, Sandbox.stop_agent)
                    await self.sandbox.stop_agent()
                    res = await self.sandbox.harness_exec(self.task.check, step=step,
                                                          timeout=self.task.check_timeout)  # fmt: skip
                    exit_code, obs = res.exit_code, res.output
                    passed = res.exit_code == 0 and not res.killed
                    task_reward = self.task.reward_pass if passed else self.task.reward_fail
            else:
                res = await self.sandbox.exec(action, step=step, timeout=self.task.step_timeout)
                exit_code, obs = res.exit_code, res.output
        except SandboxClosed as err:
            closed = True
            obs = f"corral: the sandbox is closed ({err.reason})"
        start = self._seen
        events = self._new_events()
        penalty = self.shaper.penalty_since(self.sandbox.events[: self._seen], start)
        if await enforce(self.sandbox, self.shaper, events) is not None:
            events += self._new_events()
        by_policy = self.sandbox.terminated or closed
        terminated = submitted or by_policy
        truncated = not terminated and step >= self.task.max_steps
        reward = task_reward + penalty
        self.total_reward += reward
        self.done = terminated or truncated
        step_safety = {
            "events": [e.model_dump(mode="json") for e in self.shaper.flagged(events)],
            "penalty": round(penalty, 6),
            "worst": self.shaper.worst(events),
            "terminated": by_policy,
            "episode": self.safety(),
        }
        info: dict[str, Any] = {
            "episode_id": self.episode_id,
            "sandbox_id": self.sandbox.id,
            "step": step,
            "exit_code": exit_code,
            "task_reward": task_reward,
            "duration": time.monotonic() - t0,
            "safety": step_safety,
        }
        if submitted:
            info["solved"] = task_reward == self.task.reward_pass and self.task.check is not None
        obs = _clip(obs, self.task.max_observation)
        self._record(StepRecord(
            episode_id=self.episode_id, sandbox_id=self.sandbox.id, step=step, kind=kind,
            action=action, observation=obs, exit_code=exit_code, reward=reward, penalty=penalty,
            terminated=terminated, truncated=truncated, started=started, ended=_now(),
            info={"task_reward": task_reward, "terminated_by_policy": by_policy,
                  "event_rules": [e.rule for e in events]},
        ))  # fmt: skip
        if self.done:
            await self.close()
        return obs, reward, terminated, truncated, info

    def _drop_workspace(self) -> None:
        if self.owned_workspace is not None:
            shutil.rmtree(self.owned_workspace, ignore_errors=True)
            self.owned_workspace = None

    async def close(self) -> None:
        self.done = True
        await self.sandbox.close()
        self._drop_workspace()
