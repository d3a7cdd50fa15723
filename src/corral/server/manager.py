"""The service's sandboxes: lookup with clear errors, sessions, recording, and the policy response.

A sandbox that ended stays known (with its safety state) so a late call gets 410 Gone naming the
reason instead of a 404 or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from corral.policy.model import Policy
from corral.rl.episode import Episode, ensure_gate, start_sandbox
from corral.rl.reward import EMPTY_SAFETY, RewardShaper, enforce, safety_state
from corral.rules.gate import make_gate
from corral.sandbox.sandbox import ExecResult, Sandbox
from corral.sandbox.session import SessionEnded, ShellSession
from corral.sandbox.warm import WarmPool
from corral.server.approvals import CURRENT, Approval, ApprovalBook, Ticket, shell_of
from corral.store.sqlite import EventStore
from corral.store.steps import StepRecord

KEEP_GONE = 10_000


class ApiError(Exception):
    """An error response: HTTP status, a message naming what to do, and the safety state."""

    def __init__(self, status: int, message: str, *, safety: dict[str, Any] | None = None,
                 result: Any = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.safety = safety or dict(EMPTY_SAFETY)
        self.result = result


@dataclass
class Entry:
    sandbox: Sandbox
    image: str | None = None
    # ROCK session name -> its own bash in the sandbox; "default" is the sandbox's main shell
    sessions: dict[str, ShellSession | None] = field(default_factory=lambda: {"default": None})
    last_used: float = field(default_factory=time.monotonic)
    idle_limit: float | None = None
    gone: str | None = None
    seen: int = 0


class SandboxManager:
    def __init__(self, policy: Policy, store: EventStore | None = None,
                 approval_timeout: float = 300.0, warm: int = 0) -> None:  # fmt: skip
        self.policy = policy
        self.approvals = ApprovalBook(approval_timeout)
        self.asks_people = (policy.gate.enabled and policy.gate.ask == "callback"
                            and not policy.observe_only)  # fmt: skip
        self.shaper = RewardShaper(policy)
        self.store = store if store is not None else EventStore()
        self.live: dict[str, Entry] = {}
        self.gone: OrderedDict[str, Entry] = OrderedDict()
        self.episodes: dict[str, Episode] = {}
        self.host_name = socket.gethostname()
        self._reaper: asyncio.Task[None] | None = None
        # `corral serve --warm N`: N sandboxes per image kept started, handed out once each
        self.warm = WarmPool(self._pooled, warm) if warm > 0 else None

    # ---------------------------------------------------------------- lifecycle
    def safety(self, entry: Entry) -> dict[str, Any]:
        return safety_state(entry.sandbox, self.shaper)

    def _pooled(self, image: object, episode_id: str) -> Sandbox:
        return Sandbox(self.policy, episode_id=episode_id, store=self.store)

    async def fresh_sandbox(self, policy: Policy | None = None, *, episode_id: str | None = None,
                            image: str | None = None) -> Sandbox:  # fmt: skip
        """A started sandbox no command has run in: from the warm pool when one is ready for this
        policy and image, else started now."""
        if self.warm is not None and (policy is None or policy is self.policy):
            sandbox = await self.warm.take(image, episode_id=episode_id)
            if sandbox is not None:
                return ensure_gate(sandbox)
        sandbox = ensure_gate(Sandbox(policy or self.policy, episode_id=episode_id,
                                      store=self.store))  # fmt: skip
        await start_sandbox(sandbox)
        return sandbox

    async def start(self, *, episode_id: str | None = None, image: str | None = None,
                    idle_minutes: float | None = None) -> Entry:  # fmt: skip
        sandbox = await self.fresh_sandbox(episode_id=episode_id, image=image)
        if self.asks_people:  # ask becomes a pending approval instead of a refusal
            sandbox.gate = make_gate(self.policy, approve=self.approvals.approver(sandbox))
        entry = Entry(sandbox, image=image, idle_limit=idle_minutes * 60 if idle_minutes else None)
        entry.seen = len(sandbox.events)
        self.live[sandbox.id] = entry
        if entry.idle_limit and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return entry

    def lookup(self, sandbox_id: str) -> Entry:
        entry = self.live.get(sandbox_id) or self.gone.get(sandbox_id)
        if entry is None:
            raise ApiError(404, f"no sandbox {sandbox_id!r} on this server: start one with "
                           "POST /apis/envs/sandbox/v1/start")  # fmt: skip
        return entry

    def get(self, sandbox_id: str) -> Entry:
        """A live sandbox, or a 404/410 that says why not."""
        entry = self.lookup(sandbox_id)
        if entry.gone is None and entry.sandbox.closed_reason:
            self._retire(entry, entry.sandbox.closed_reason)
        if entry.gone is not None:
            raise ApiError(410, f"sandbox {sandbox_id!r} is gone ({entry.gone}); start a new one",
                           safety=self.safety(entry))  # fmt: skip
        entry.last_used = time.monotonic()
        return entry

    def _retire(self, entry: Entry, reason: str) -> None:
        entry.gone = reason
        self.live.pop(entry.sandbox.id, None)
        self.gone[entry.sandbox.id] = entry
        while len(self.gone) > KEEP_GONE:
            self.gone.popitem(last=False)

    async def stop(self, sandbox_id: str, reason: str = "stopped") -> Entry:
        entry = self.lookup(sandbox_id)
        self.approvals.cancel_sandbox(sandbox_id, f"sandbox {reason}")
        if entry.gone is None:
            self._retire(entry, entry.sandbox.closed_reason or reason)
            await entry.sandbox.close()
        return entry

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self.warm is not None:
            await self.warm.close()
        for ep in list(self.episodes.values()):
            with contextlib.suppress(Exception):
                await ep.close()
        for sid in list(self.live):
            with contextlib.suppress(Exception):
                await self.stop(sid, "server shut down")

    async def _reap(self) -> None:
        """ROCK's auto_clear_time: stop sandboxes left idle."""
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for sid, e in list(self.live.items()):
                if e.idle_limit and now - e.last_used > e.idle_limit:
                    await self.stop(sid, f"idle for {e.idle_limit:g}s (auto_clear_time)")

    # ---------------------------------------------------------------- commands
    def session(self, entry: Entry, name: str) -> ShellSession | None:
        """The session's own shell (None: the main shell), or a 404 that says what to do."""
        if name not in entry.sessions:
            raise ApiError(404, f"session: no session {name!r} in sandbox {entry.sandbox.id!r}: "
                           "create it with /create_session", safety=self.safety(entry))  # fmt: skip
        shell = entry.sessions[name]
        if shell is not None and not shell.alive:
            del entry.sessions[name]
            raise ApiError(404, f"session: {name!r} ended ({shell.ended}); create it again with "
                           "/create_session", safety=self.safety(entry))  # fmt: skip
        return shell

    async def submit(
        self,
        entry: Entry,
        command: str,
        timeout: float | None,
        *,
        session: str,
        route: str,
        finish: Callable[[ExecResult], Any],
        shell: ShellSession | None = None,
    ) -> Any:
        """Run a command for a route: the route's result, or an `Approval` when the gate asked a
        person. `finish(res)` turns the run into the route's result; on a pending command it runs
        later, in the background, and its result (or error) becomes the approval's outcome."""
        held = self.approvals.pending_on(entry.sandbox.id, shell_of(session))
        if held is not None:
            raise ApiError(409, f"session {session!r} is waiting for approval {held.id} of "
                           f"{held.command[:80]!r}: decide it first (POST "
                           f"/apis/corral/v1/approvals/{held.id})", safety=self.safety(entry))  # fmt: skip
        if not self.asks_people:
            return finish(await self.run(entry, command, timeout, shell))
        loop = asyncio.get_running_loop()
        ticket = Ticket(session=session, route=route, parked=loop.create_future())
        token = CURRENT.set(ticket)
        try:
            task = loop.create_task(self.run(entry, command, timeout, shell))
        finally:
            CURRENT.reset(token)
        await asyncio.wait({task, ticket.parked}, return_when=asyncio.FIRST_COMPLETED)
        if not ticket.parked.done():
            ticket.parked.cancel()
            return finish(task.result())
        ap = ticket.parked.result()
        task.add_done_callback(lambda t: self._settled(entry, ap, t, finish))
        return ap

    def _settled(self, entry: Entry, ap: Approval, task: asyncio.Task[ExecResult],
                 finish: Callable[[ExecResult], Any]) -> None:  # fmt: skip
        try:
            result = finish(task.result())
            body = {"status": "Success", "message": None, "error": None,
                    "result": result.model_dump() if hasattr(result, "model_dump") else result}  # fmt: skip
            ap.outcome = {**body, "http_status": 200}
        except ApiError as err:
            ap.outcome = {"status": "Failed", "message": err.message, "error": err.message,
                          "result": err.result, "http_status": err.status}  # fmt: skip
        except BaseException as err:  # noqa: BLE001 - the outcome must say what happened
            msg = f"the command's run failed: {type(err).__name__}: {err}"
            ap.outcome = {"status": "Failed", "message": msg, "error": msg, "result": None,
                          "http_status": 500}  # fmt: skip
        ap.outcome["safety"] = self.safety(entry)
        ap.finished.set()

    async def run(self, entry: Entry, command: str, timeout: float | None,
                  shell: ShellSession | None = None) -> ExecResult:  # fmt: skip
        """Run one command as one recorded step, then apply the policy's terminate response."""
        sb = entry.sandbox
        started = datetime.now(UTC)
        try:
            res = await (shell or sb).exec(command, timeout=timeout)
        except SessionEnded as err:
            entry.sessions.pop(err.name, None)
            raise ApiError(404, f"session: {err}; create it again with /create_session",
                           safety=self.safety(entry)) from None  # fmt: skip
        events = sb.events[entry.seen :]
        await enforce(sb, self.shaper, events)
        events = sb.events[entry.seen :]
        entry.seen = len(sb.events)
        entry.last_used = time.monotonic()
        self.store.add_step(StepRecord(
            episode_id=sb.episode_id, sandbox_id=sb.id, step=res.step, action=command,
            observation=res.output[:65536], exit_code=res.exit_code,
            penalty=self.shaper.penalty(events), terminated=sb.terminated, started=started,
            ended=datetime.now(UTC), info={"event_rules": [e.rule for e in events],
                                          "timed_out": res.timed_out, "blocked": res.blocked},
        ))  # fmt: skip
        if entry.gone is None and sb.closed_reason:
            self._retire(entry, sb.closed_reason)
        return res

    @staticmethod
    def oneshot(command: str | list[str], cwd: str | None, env: dict[str, str] | None) -> str:
        """ROCK's `execute`: a subshell, so the session's cwd and variables stay untouched."""
        cmd = shlex.join(command) if isinstance(command, list) else command
        pre = []
        if cwd:
            pre.append(f"cd {shlex.quote(cwd)} || exit 1")
        for k, v in (env or {}).items():
            if not k.isidentifier():
                raise ApiError(422, f"env: {k!r} is not a valid variable name")
            pre.append(f"export {k}={shlex.quote(v)}")
        return "(" + "; ".join([*pre, cmd]) + "\n)"
