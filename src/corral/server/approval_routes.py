"""Pending approvals of the gate's ask verdicts: list them, decide one, read its outcome.

`GET /apis/corral/v1/approvals` lists (pending by default), `GET .../approvals/{id}` shows one
(`?wait=S` waits up to S seconds for its command to finish), `POST .../approvals/{id}` with
`{"decision": "approve"|"deny"}` decides it. The command ran in the original call's session and
step; its outcome (what that call would have answered) is `outcome` once `done` is true.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from corral.rl.reward import EMPTY_SAFETY
from corral.server import auth
from corral.server.approvals import Approval
from corral.server.manager import ApiError, SandboxManager
from corral.server.models import ApprovalDecision, ApprovalInfo, Envelope

MAX_WAIT = 600.0
ListStatus = Literal["pending", "approved", "denied", "expired", "cancelled", "all"]


def router(m: SandboxManager) -> APIRouter:
    r = APIRouter()
    book = m.approvals

    def find(approval_id: str) -> Approval:
        ap = book.items.get(approval_id)
        if ap is None:
            raise ApiError(404, f"approval_id: no approval {approval_id!r} on this server "
                           "(GET /apis/corral/v1/approvals lists the pending ones)")  # fmt: skip
        auth.check_owner(owner(ap), f"approval {approval_id!r}")
        return ap

    def owner(ap: Approval) -> str | None:
        entry = m.live.get(ap.sandbox.id) or m.gone.get(ap.sandbox.id)
        return entry.owner if entry is not None else None

    def safety(ap: Approval) -> dict:
        entry = m.live.get(ap.sandbox.id) or m.gone.get(ap.sandbox.id)
        return m.safety(entry) if entry is not None else dict(EMPTY_SAFETY)

    @r.get("", response_model=Envelope[list[ApprovalInfo]])
    async def list_approvals(
        status: Annotated[ListStatus, Query()] = "pending",
        sandbox_id: Annotated[str | None, Query()] = None,
    ) -> dict:
        """Approvals, oldest first: the pending ones unless `status` says otherwise."""
        items = [ap.view() for ap in book.items.values()
                 if (status == "all" or ap.status == status)
                 and (sandbox_id is None or ap.sandbox.id == sandbox_id)
                 and auth.may_use(owner(ap))]  # fmt: skip
        return {"status": "Success", "result": items, "safety": dict(EMPTY_SAFETY)}

    @r.get("/{approval_id}", response_model=Envelope[ApprovalInfo])
    async def get_approval(
        approval_id: str,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT, description="seconds to wait for the command to finish")
        ] = 0,  # fmt: skip
    ) -> dict:
        ap = find(approval_id)
        if wait and not ap.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ap.finished.wait(), wait)
        return {"status": "Success", "result": ap.view(), "safety": safety(ap)}

    @r.post("/{approval_id}", response_model=Envelope[ApprovalInfo])
    async def decide(approval_id: str, req: ApprovalDecision) -> dict:
        """Approve (the command runs now, in its session and step) or deny (recorded as blocked)."""
        ap = find(approval_id)
        if ap.status != "pending":
            raise ApiError(409, f"approval {approval_id!r} is already {ap.status}"
                           + (f" by {ap.decided_by}" if ap.decided_by else ""),
                           safety=safety(ap), result=ApprovalInfo.model_validate(ap.view()).model_dump(mode="json"))  # fmt: skip
        book.decide(ap, req.decision == "approve", req.by, req.reason)
        return {"status": "Success", "result": ap.view(), "safety": safety(ap)}

    return r
