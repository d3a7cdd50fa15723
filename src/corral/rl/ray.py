"""`corral.rl.ray.SandboxPool`: sandboxes on Ray, away from the trainer's GPUs.

Each host actor holds up to `per_host` episodes and asks for one unit of the `corral_slot` custom
resource, so only nodes that offer it (CPU nodes, by the operator's choice) ever run sandboxes.
`acquire()` blocks while every slot is in use (back-pressure) and gives back a `SandboxEnv`. A host
actor that dies is restarted by Ray (`max_restarts=-1`); the episodes it held are reported as
terminated (`info["host_lost"]`) and recorded as such in the store, never silently retried.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from corral.events.model import Event
from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.rl.env import SandboxEnv, StepResult
from corral.rl.episode import Episode, EpisodeOver, ensure_gate
from corral.rl.reward import EMPTY_SAFETY
from corral.rl.task import TaskSpec
from corral.sandbox.sandbox import Sandbox
from corral.sandbox.warm import WarmPool
from corral.store.sqlite import EventStore
from corral.store.steps import StepRecord

RESOURCE = "corral_slot"


class UnknownEpisode(KeyError):
    """The host does not hold this episode (it was restarted, or the episode closed)."""


@ray.remote
class SandboxHost:
    """An async actor: its sandboxes' shells are driven on the actor's one event loop."""

    def __init__(self, policy: dict[str, Any], corral_home: str | None, warm: int = 0) -> None:
        if corral_home:
            os.environ["CORRAL_HOME"] = corral_home
        self.policy = Policy.model_validate(policy)
        self.store = EventStore()
        self.episodes: dict[str, Episode] = {}
        self.incarnation = uuid.uuid4().hex[:8]
        self.warm = WarmPool(self._pooled, warm) if warm > 0 else None

    def _pooled(self, image: object, episode_id: str) -> Sandbox:
        return ensure_gate(Sandbox(self.policy, episode_id=episode_id, store=self.store))

    async def warm_up(self) -> None:
        """Start filling the warm pool now rather than at the first reset."""
        if self.warm is not None:
            self.warm.start()

    async def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "incarnation": self.incarnation,
                "episodes": len(self.episodes),
                "warm": self.warm.stats() if self.warm is not None else None}  # fmt: skip

    async def reset(self, task: dict[str, Any], episode_id: str) -> tuple[str, dict[str, Any]]:
        spec = TaskSpec.model_validate(task)
        sb = await self.warm.take(None, episode_id=episode_id) if self.warm else None
        if sb is not None:  # started ahead; the task's files land after (protected ones too:
            # their placeholders were bound read-only at the start)
            ep = Episode(sb, spec, store=self.store)
        else:
            ep = Episode.new(self.policy, spec, episode_id=episode_id, store=self.store)
        obs, info = await ep.reset()
        info["warm"] = sb is not None
        info["host"] = self.incarnation
        self.episodes[episode_id] = ep
        return obs, info

    async def step(self, episode_id: str, action: str) -> StepResult:
        ep = self.episodes.get(episode_id)
        if ep is None:
            raise UnknownEpisode(episode_id)
        out = await ep.step(action)
        if ep.done:
            self.episodes.pop(episode_id, None)
        return out

    async def close(self, episode_id: str) -> None:
        ep = self.episodes.pop(episode_id, None)
        if ep is not None:
            await ep.close()


RESTART_WAIT_S = 60.0  # how long a reset waits for a restarting host


class RayBackend:
    """One lease on one host: the env's backend while the episode lasts."""

    def __init__(self, pool: SandboxPool, host: int) -> None:
        self.pool = pool
        self.host = host
        self.episode_id: str | None = None
        self.step_no = 0
        self.released = False

    def _actor(self) -> Any:
        return self.pool.hosts[self.host]

    def reset(
        self, task: TaskSpec, seed: int | None, episode_id: str
    ) -> tuple[str, dict[str, Any]]:
        self.close_episode()
        self.episode_id = episode_id
        self.step_no = 0
        # a host Ray is restarting (it died; the pool's actors restart) answers once it is back:
        # a new episode waits for it, bounded, rather than failing on a busy machine
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                obs, info = ray.get(self._actor().reset.remote(task.model_dump(), episode_id))
                break
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        info["host_index"] = self.host
        return obs, info

    def step(self, action: str) -> StepResult:
        if self.episode_id is None:
            raise EpisodeOver("call reset() before step()")
        self.step_no += 1
        try:
            return ray.get(self._actor().step.remote(self.episode_id, action))
        except RayActorError as err:
            return self._lost(action, f"sandbox host died: {type(err).__name__}")
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, UnknownEpisode):
                return self._lost(
                    action, "sandbox host was restarted; the episode's sandbox is gone"
                )
            if isinstance(err.cause, EpisodeOver):
                raise err.cause from None
            raise

    def _lost(self, action: str, reason: str) -> StepResult:
        episode_id = self.episode_id or ""
        self.pool.record_lost(episode_id, self.step_no, action, reason)
        self.episode_id = None
        safety = {"events": [], "penalty": 0.0, "worst": None, "terminated": True,
                  "episode": {**EMPTY_SAFETY, "terminated": True}}  # fmt: skip
        info = {"episode_id": episode_id, "step": self.step_no, "host_lost": True,
                "host_index": self.host, "reason": reason, "safety": safety}  # fmt: skip
        return f"corral: {reason}", 0.0, True, False, info

    def close_episode(self) -> None:
        if self.episode_id is not None:
            with contextlib.suppress(RayActorError, ray.exceptions.RayTaskError):
                ray.get(self._actor().close.remote(self.episode_id))
            self.episode_id = None

    def close(self) -> None:
        self.close_episode()
        if not self.released:
            self.released = True
            self.pool._release(self.host)


class SandboxPool:
    """`with pool.acquire(task) as env: env.reset(); env.step("ls")` — blocks while the pool is full."""

    def __init__(
        self,
        num_hosts: int | None = None,
        *,
        per_host: int = 4,
        policy: Policy | str | None = None,
        corral_home: str | None = None,
        resource: str = RESOURCE,
        warm: int = 0,
    ) -> None:
        """`warm`: sandboxes each host keeps started, ready for the next reset (never reused)."""
        if not ray.is_initialized():
            raise RuntimeError("ray is not initialized: call ray.init(address=...) first")
        offered = int(ray.cluster_resources().get(resource, 0))
        if offered < 1:
            raise RuntimeError(
                f"no node offers the {resource!r} resource, so there is nowhere to place sandboxes:"
                f" start sandbox nodes with `ray start --resources='{{\"{resource}\": N}}'`"
            )
        self.num_hosts = num_hosts or offered
        self.per_host = per_host
        self.policy = load_policy(policy)
        self.corral_home = corral_home or os.environ.get("CORRAL_HOME")
        self.resource = resource
        self.warm = warm
        self.hosts = [self._spawn() for _ in range(self.num_hosts)]
        self._active = [0] * self.num_hosts
        self._cond = threading.Condition()
        self._store: EventStore | None = None

    def _spawn(self) -> Any:
        host = SandboxHost.options(
            num_cpus=0,
            resources={self.resource: 1},
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        ).remote(self.policy.model_dump(), self.corral_home, self.warm)
        if self.warm:
            host.warm_up.remote()
        return host

    @property
    def capacity(self) -> int:
        return self.num_hosts * self.per_host

    def hosts_info(self) -> list[dict[str, Any]]:
        return ray.get([h.info.remote() for h in self.hosts])

    def acquire(self, task: TaskSpec | dict[str, Any] | None = None,
                timeout: float | None = None) -> SandboxEnv:  # fmt: skip
        """A SandboxEnv on the least-loaded host; waits while all `capacity` slots are taken."""
        with self._cond:
            ok = self._cond.wait_for(lambda: min(self._active) < self.per_host, timeout)
            if not ok:
                raise TimeoutError(f"no sandbox slot free within {timeout}s "
                                   f"({self.capacity} in use)")  # fmt: skip
            host = min(range(self.num_hosts), key=lambda i: self._active[i])
            self._active[host] += 1
        return SandboxEnv(task, backend=RayBackend(self, host))

    def _release(self, host: int) -> None:
        with self._cond:
            self._active[host] -= 1
            self._cond.notify()

    def in_use(self) -> int:
        with self._cond:
            return sum(self._active)

    def record_lost(self, episode_id: str, step: int, action: str, reason: str) -> None:
        """The host died with the episode: the store says so, joined to the step it died in."""
        if self._store is None:
            if self.corral_home:
                os.environ.setdefault("CORRAL_HOME", self.corral_home)
            self._store = EventStore()
        self._store.add(Event(source="sandbox", rule="sandbox.host_lost", category="lifecycle",
                              severity="medium", action="terminated", episode_id=episode_id,
                              step=step, message=reason))  # fmt: skip
        self._store.add_step(StepRecord(episode_id=episode_id, step=step, kind="lost",
                                        action=action, observation=reason, terminated=True,
                                        info={"host_lost": True}))  # fmt: skip

    def shutdown(self) -> None:
        for h in self.hosts:
            ray.kill(h, no_restart=True)
        self.hosts = []
