"""`corral.rl.SandboxEnv`: a GEM/gym-style environment whose actions are shell commands.

The same env runs in-process (a sandbox on this host), over the HTTP service (`client=`), or on a
Ray pool (`SandboxPool.env()`); the backend is the only difference, the step logic is `Episode`'s.
`info["safety"]` holds the step's findings and penalty; a policy-driven end sets `terminated`.

GEM (`gem-llm`): when gem is imported, SandboxEnv is registered as a `gem.Env` (a virtual subclass:
importing gem costs seconds, so corral never imports it for you), and it has what GEM's `make`,
`make_vec` and wrappers use: a `seed` argument, `unwrapped`, `max_turns`, `spawn` and
`sample_random_action`. `corral.integrations.gem` registers `corral/shell` with `gem.make`.
"""

from __future__ import annotations

import random
import sys
import uuid
from typing import Any, Protocol

from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.rl.episode import Episode, EpisodeOver
from corral.rl.task import TaskSpec
from corral.sandbox.sync import SyncSandbox, run_sync
from corral.store.sqlite import EventStore

StepResult = tuple[str, float, bool, bool, dict[str, Any]]


class EnvBackend(Protocol):
    def reset(
        self, task: TaskSpec, seed: int | None, episode_id: str
    ) -> tuple[str, dict[str, Any]]: ...
    def step(self, action: str) -> StepResult: ...
    def close(self) -> None: ...


class LocalBackend:
    """A SyncSandbox on this host, driven on corral's background event loop."""

    def __init__(self, policy: Policy, store: EventStore | None = None) -> None:
        self.policy = policy
        self.store = store
        self.episode: Episode | None = None

    def reset(
        self, task: TaskSpec, seed: int | None, episode_id: str
    ) -> tuple[str, dict[str, Any]]:
        self.close()
        store = self.store if self.store is not None else True
        self.episode = Episode.new(self.policy, task, episode_id=episode_id, store=store,
                                   factory=lambda *a, **k: SyncSandbox(*a, **k).sandbox)  # fmt: skip
        return run_sync(self.episode.reset())

    def step(self, action: str) -> StepResult:
        if self.episode is None:
            raise EpisodeOver("call reset() before step()")
        return run_sync(self.episode.step(action))

    def close(self) -> None:
        if self.episode is not None:
            run_sync(self.episode.close())
            self.episode = None


class HttpBackend:
    """The env endpoints of a `corral serve`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.episode_id: str | None = None

    def reset(
        self, task: TaskSpec, seed: int | None, episode_id: str
    ) -> tuple[str, dict[str, Any]]:
        self.close()
        body = self.client.env_reset(task=task.model_dump(), seed=seed, episode_id=episode_id)
        self.episode_id = body["result"]["episode_id"]
        return body["result"]["observation"], body["result"]["info"]

    def step(self, action: str) -> StepResult:
        if self.episode_id is None:
            raise EpisodeOver("call reset() before step()")
        r = self.client.env_step(self.episode_id, action)["result"]
        return r["observation"], r["reward"], r["terminated"], r["truncated"], r["info"]

    def close(self) -> None:
        if self.episode_id is not None:
            self.client.env_close(self.episode_id)
            self.episode_id = None


# harmless commands for `sample_random_action` (GEM's random-policy baseline)
RANDOM_ACTIONS = ("ls", "pwd", "ls -la", "echo hello", "cat /etc/os-release", "date", "id",
                  "env | sort | head -5", "find . -maxdepth 2 -type f | head", "uname -a")  # fmt: skip


def _register_with_gem() -> None:
    """Make SandboxEnv a `gem.Env` once gem has been imported (a virtual subclass)."""
    core = sys.modules.get("gem.core")
    if core is not None and not issubclass(SandboxEnv, core.Env):
        core.Env.register(SandboxEnv)


class SandboxEnv:
    """reset(seed=None, options=None) -> (observation, info); step(action) -> 5-tuple.

    `seed`: the default seed of `reset` (GEM's `make(id, seed=...)`); `task`, `policy`, `client`
    and `store` are what `spawn()` copies into a new env."""

    def __init__(
        self,
        task: TaskSpec | dict[str, Any] | None = None,
        policy: Policy | str | None = None,
        *,
        client: Any = None,
        backend: EnvBackend | None = None,
        store: EventStore | None = None,
        seed: int | None = None,
    ) -> None:
        _register_with_gem()
        self._config = {
            "task": task,
            "policy": policy,
            "client": client,
            "store": store,
            "seed": seed,
        }
        self.seed = seed
        self._rng = random.Random(seed)
        self.task = TaskSpec.model_validate(task or {})
        if backend is None:
            if client is not None:
                if isinstance(client, str):
                    from corral.client import CorralClient

                    client = CorralClient(client)
                backend = HttpBackend(client)
            else:
                backend = LocalBackend(load_policy(policy), store)
        self.backend = backend
        self.episode_id: str | None = None
        self.steps = 0
        self.done = True

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        if seed is None:
            seed, self.seed = self.seed, None  # the constructor's seed serves the first reset
        if seed is not None:
            self._rng.seed(seed)
        options = dict(options or {})
        if "task" in options:
            self.task = TaskSpec.model_validate(options.pop("task"))
        self.episode_id = str(options.pop("episode_id", None) or "ep-" + uuid.uuid4().hex[:12])
        if options:
            raise ValueError(f"unknown reset option(s): {', '.join(sorted(options))} "
                             "(allowed: task, episode_id)")  # fmt: skip
        obs, info = self.backend.reset(self.task, seed, self.episode_id)
        self.steps = 0
        self.done = False
        return obs, info

    def step(self, action: str) -> StepResult:
        if self.done:
            raise EpisodeOver("the episode has ended (or never began): call reset()")
        out = self.backend.step(action)
        self.steps += 1
        self.done = out[2] or out[3]
        return out

    def close(self) -> None:
        self.backend.close()
        self.done = True

    # ---------------------------------------------------------------- GEM's Env interface
    @property
    def unwrapped(self) -> SandboxEnv:
        return self

    @property
    def max_turns(self) -> int:
        """Steps before the episode is truncated (the task's `max_steps`)."""
        return self.task.max_steps

    def spawn(self, same_state: bool = False, **kwargs: Any) -> SandboxEnv:
        """A new env with this one's task, policy and backend kind (kwargs override them). A
        sandbox's state cannot be copied, so `same_state=True` is refused."""
        if same_state:
            raise NotImplementedError("SandboxEnv.spawn(same_state=True): a running sandbox's "
                                      "processes and files cannot be copied; spawn a fresh env")  # fmt: skip
        return SandboxEnv(**{**self._config, "task": self.task, **kwargs})

    def sample_random_action(self) -> str:
        """A harmless shell command, drawn with the env's seeded generator."""
        return self._rng.choice(RANDOM_ACTIONS)

    def __enter__(self) -> SandboxEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
