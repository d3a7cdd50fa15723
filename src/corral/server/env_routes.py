"""corral's gym-style env over HTTP: what `SandboxEnv(client=...)` speaks."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ValidationError

from corral.rl.episode import Episode, EpisodeOver
from corral.rl.reward import EMPTY_SAFETY
from corral.rl.task import TaskSpec
from corral.server import auth
from corral.server.manager import ApiError, SandboxManager
from corral.server.models import (
    EnvCloseRequest,
    Envelope,
    EnvResetRequest,
    EnvResetResult,
    EnvStepRequest,
    EnvStepResult,
)


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter()

    def episode(episode_id: str) -> Episode:
        ep = m.episodes.get(episode_id)
        if ep is None:
            raise ApiError(404, f"no episode {episode_id!r} on this server: call /env/reset")
        auth.check_owner(m.episode_owners.get(episode_id), f"episode {episode_id!r}")
        return ep

    @r.post("/reset", response_model=Envelope[EnvResetResult])
    async def reset(req: EnvResetRequest) -> dict:
        try:
            task = TaskSpec.model_validate(req.task)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in e["loc"])
            raise ApiError(422, f"task.{loc}: {e['msg']}") from None
        if req.episode_id and req.episode_id in m.episodes:
            auth.check_owner(m.episode_owners.get(req.episode_id), f"episode {req.episode_id!r}")
            raise ApiError(409, f"episode {req.episode_id!r} already exists")
        ep = Episode.new(m.policy, task, episode_id=req.episode_id, store=m.store)
        obs, info = await ep.reset()
        m.episodes[ep.episode_id] = ep
        m.episode_owners[ep.episode_id] = auth.owner_name()
        return {"status": "Success", "result": EnvResetResult(episode_id=ep.episode_id,
                observation=obs, info=info), "safety": ep.safety()}  # fmt: skip

    @r.post("/step", response_model=Envelope[EnvStepResult])
    async def step(req: EnvStepRequest) -> dict:
        ep = episode(req.episode_id)
        try:
            obs, reward, term, trunc, info = await ep.step(req.action)
        except EpisodeOver as err:
            raise ApiError(409, str(err), safety=ep.safety()) from None
        return {"status": "Success", "result": EnvStepResult(observation=obs, reward=reward,
                terminated=term, truncated=trunc, info=info), "safety": ep.safety()}  # fmt: skip

    @r.post("/close", response_model=Envelope[str])
    async def close(req: EnvCloseRequest) -> dict:
        if req.episode_id in m.episodes:
            auth.check_owner(m.episode_owners.get(req.episode_id), f"episode {req.episode_id!r}")
        ep = m.episodes.pop(req.episode_id, None)
        m.episode_owners.pop(req.episode_id, None)
        if ep is None:
            return {"status": "Success", "result": "unknown or already closed",
                    "safety": dict(EMPTY_SAFETY)}  # fmt: skip
        await ep.close()
        return {"status": "Success", "result": f"{req.episode_id} closed", "safety": ep.safety()}

    return r
