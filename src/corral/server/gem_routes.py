"""ROCK's GEM env routes (`rock.sdk.envs.RockEnv` calls `POST /apis/v1/envs/gem/{make,reset,step,
close}`), on corral episodes: `rock.sdk.envs.make("corral/shell")` gives a GEM env whose every
step is a contained, recorded shell command.

The bodies are ROCK's (`rock/actions/envs`): make `{env_id}` -> `{sandbox_id}`, reset
`{sandbox_id, seed}` -> `{observation, info}`, step `{sandbox_id, action}` -> `{observation,
reward, terminated, truncated, info}`, close `{sandbox_id}` -> `{sandbox_id}`, answered without an
envelope as ROCK does. `info["safety"]` carries the step's findings; a policy end sets
`terminated`. `env_id` is `corral/shell`, optionally with a task (`{"env_id": "corral/shell",
"task": {...}}`, a `corral.rl.TaskSpec`). Errors are HTTP 4xx with `detail` naming the field.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, ValidationError

from corral.rl.episode import Episode, EpisodeOver
from corral.rl.task import TaskSpec
from corral.server.manager import SandboxManager

PREFIX = "/apis/v1/envs/gem"
ENV_IDS = ("corral/shell",)


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MakeRequest(_In):
    env_id: str
    task: dict[str, Any] = {}


class ResetRequest(_In):
    sandbox_id: str
    seed: int | None = None


class StepRequest(_In):
    sandbox_id: str
    action: str


class CloseRequest(_In):
    sandbox_id: str


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter()
    tasks: dict[str, TaskSpec] = {}
    live: dict[str, Episode] = {}

    def known(sandbox_id: str) -> TaskSpec:
        task = tasks.get(sandbox_id)
        if task is None:
            raise HTTPException(404, f"sandbox_id: no env {sandbox_id!r}: call make first")
        return task

    @r.post("/make")
    async def make(req: MakeRequest) -> dict:
        if req.env_id not in ENV_IDS:
            raise HTTPException(404, f"env_id: {req.env_id!r} is not served here "
                                f"(known: {', '.join(ENV_IDS)})")  # fmt: skip
        try:
            task = TaskSpec.model_validate(req.task)
        except ValidationError as err:
            e = err.errors()[0]
            raise HTTPException(422, f"task.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        env_id = "env-" + uuid.uuid4().hex[:12]
        tasks[env_id] = task
        return {"sandbox_id": env_id}

    @r.post("/reset")
    async def reset(req: ResetRequest) -> dict:
        task = known(req.sandbox_id)
        old = live.pop(req.sandbox_id, None)
        if old is not None:
            await old.close()
        ep = Episode.new(m.policy, task, store=m.store)
        obs, info = await ep.reset()
        live[req.sandbox_id] = ep
        return {"observation": obs, "info": info}

    @r.post("/step")
    async def step(req: StepRequest) -> dict:
        known(req.sandbox_id)
        ep = live.get(req.sandbox_id)
        if ep is None:
            raise HTTPException(409, f"sandbox_id: env {req.sandbox_id!r} has no episode: reset it")
        try:
            obs, reward, term, trunc, info = await ep.step(req.action)
        except EpisodeOver as err:
            raise HTTPException(409, str(err)) from None
        return {"observation": obs, "reward": reward, "terminated": term, "truncated": trunc,
                "info": info}  # fmt: skip

    @r.post("/close")
    async def close(req: CloseRequest) -> dict:
        tasks.pop(req.sandbox_id, None)
        ep = live.pop(req.sandbox_id, None)
        if ep is not None:
            await ep.close()
        return {"sandbox_id": req.sandbox_id}

    return r
