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
from corral.sandbox.procs import children_of
from corral.sandbox.sandbox import ExecResult, Sandbox
from corral.sandbox.session import SessionEnded, ShellSession
from corral.sandbox.warm import WarmPool
from corral.server import auth
from corral.server.approvals import CURRENT, Approval, ApprovalBook, Ticket, shell_of
from corral.server.limits import Limits
from corral.store.recovery import recover
from corral.store.sqlite import EventStore, StoreWriteError
from corral.store.steps import StepRecord

KEEP_GONE = 10_000
# named sessions kept per sandbox: past this the least recently used idle one is closed, SDK
# per-call sessions (`bash-<ns>`) first, so clients that never close theirs cannot exhaust the pids
MAX_SESSIONS = 32


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
    owner: str | None = None  # the tenant whose token started it (corral.server.auth)
    # session name -> when it last ran a command (monotonic), for closing idle ones
    session_used: dict[str, float] = field(default_factory=dict)
    # what the start request asked for, to start it again on /restart
    start_args: dict[str, Any] = field(default_factory=dict)
    closing: asyncio.Task[None] | None = None  # its close, once retired


def local_image(name: str | None) -> str | None:
    """ROCK's `image`, as the sandbox's root when corral's image store holds it (`corral images
    import`); otherwise None: the host's read-only root, and the name is only echoed back (no
    registry is pulled from inside a request)."""
    if not name:
        return None
    try:
        from corral.images.store import ImageStore

        return name if ImageStore().get(name) is not None else None
    except Exception:  # noqa: BLE001 - an unreadable cache: the host root, as before
        return None


class SandboxManager:
    def __init__(self, policy: Policy, store: EventStore | None = None,
                 approval_timeout: float = 300.0, limits: Limits | None = None,
                 warm: int = 0) -> None:  # fmt: skip
        self.policy = policy
        self.limits = limits or Limits()
        self.approvals = ApprovalBook(approval_timeout)
        self.asks_people = (policy.gate.enabled and policy.gate.ask == "callback"
                            and not policy.observe_only)  # fmt: skip
        self.shaper = RewardShaper(policy)
        self.store = store if store is not None else EventStore()
        recover(self.store)  # episodes of a server that died are marked interrupted
        self.live: dict[str, Entry] = {}
        self.gone: OrderedDict[str, Entry] = OrderedDict()
        self.episodes: dict[str, Episode] = {}
        self.episode_owners: dict[str, str | None] = {}
        self.host_name = socket.gethostname()
        self._reaper: asyncio.Task[None] | None = None
        # `corral serve --warm N`: N sandboxes kept started per shape (image, scratch dirs) asked
        # for since the server started, each handed out once
        self.warm = WarmPool(self._pooled, warm, keys=[]) if warm > 0 else None

    # ---------------------------------------------------------------- lifecycle
    def _pooled(self, key: Any, episode_id: str) -> Sandbox:
        _image, scratch = key
        return Sandbox(self.policy, episode_id=episode_id, store=self.store,
                       scratch_dirs=list(scratch) or None)  # fmt: skip

    async def _from_pool(self, episode_id: str | None, image: str | None,
                         scratch_dirs: list[str] | None = None) -> Sandbox | None:  # fmt: skip
        """A started sandbox no command has run in, from the warm pool, or None (start one; the
        shape is kept warm from now on)."""
        if self.warm is None:
            return None
        key = (image, tuple(scratch_dirs or ()))
        sandbox = await self.warm.take(key, episode_id=episode_id)
        return ensure_gate(sandbox) if sandbox is not None else None

    def safety(self, entry: Entry) -> dict[str, Any]:
        return safety_state(entry.sandbox, self.shaper)

    async def start(self, *, episode_id: str | None = None, image: str | None = None,
                    idle_minutes: float | None = None, policy: Policy | None = None,
                    scratch_dirs: list[str] | None = None,
                    sandbox_id: str | None = None) -> Entry:  # fmt: skip
        """`policy`: this sandbox's own copy of the server's policy (a client's resource request
        within the policy's ceiling); `scratch_dirs`: empty private tmpfs directories."""
        root_image = local_image(image)
        plain = (policy is None or policy is self.policy) and sandbox_id is None
        plain = plain and root_image is None
        pooled = await self._from_pool(episode_id, image, scratch_dirs) if plain else None
        sandbox = pooled or Sandbox(policy or self.policy, episode_id=episode_id,
                                    store=self.store, scratch_dirs=scratch_dirs,
                                    sandbox_id=sandbox_id, image=root_image)  # fmt: skip
        if self.asks_people:  # ask becomes a pending approval instead of a refusal
            sandbox.gate = make_gate(self.policy, approve=self.approvals.approver(sandbox))
        ensure_gate(sandbox)
        if pooled is None:
            await start_sandbox(sandbox)
        entry = Entry(sandbox, image=image, idle_limit=idle_minutes * 60 if idle_minutes else None,
                      owner=auth.owner_name(),
                      start_args={"episode_id": episode_id, "image": image,
                                  "idle_minutes": idle_minutes, "policy": policy,
                                  "scratch_dirs": scratch_dirs})  # fmt: skip
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
        auth.check_owner(entry.owner, f"sandbox {sandbox_id!r}")
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
        """Gone from the live set, and closed: an episode the policy ended is closed too (the
        monitor detached, its steps written and charged by origin step, its workspace removed),
        not only forgotten."""
        entry.gone = reason
        self.live.pop(entry.sandbox.id, None)
        self.gone[entry.sandbox.id] = entry
        while len(self.gone) > KEEP_GONE:
            self.gone.popitem(last=False)
        if entry.closing is None:
            with contextlib.suppress(RuntimeError):  # no running loop: stop() closes it
                entry.closing = asyncio.get_running_loop().create_task(self._close(entry))

    @staticmethod
    async def _close(entry: Entry) -> None:
        sb = entry.sandbox
        for _ in range(100):  # a policy end tears the sandbox down on its own task: let it finish
            if not sb.terminated or sb._proc is None:
                break
            await asyncio.sleep(0.05)
        await sb.close()

    async def stop(self, sandbox_id: str, reason: str = "stopped") -> Entry:
        entry = self.lookup(sandbox_id)
        self.approvals.cancel_sandbox(sandbox_id, f"sandbox {reason}")
        if entry.gone is None:
            self._retire(entry, entry.sandbox.closed_reason or reason)
        if entry.closing is not None:
            # shielded: a request that goes away (its client disconnected) must not cancel the
            # close every other caller waits on, leaving the sandbox half torn down
            await asyncio.shield(entry.closing)
        else:
            await entry.sandbox.close()
        return entry

    def forget(self, sandbox_id: str) -> bool:
        """Drop an ended sandbox's record (ROCK's delete); False when it is still running."""
        if sandbox_id in self.live:
            return False
        self.gone.pop(sandbox_id, None)
        return True

    # ---------------------------------------------------------------- sessions
    async def make_room(self, entry: Entry) -> None:
        """Close idle sessions until a new one fits under MAX_SESSIONS: SDK per-call sessions
        first, then the least recently used. A session running a command is never closed."""
        named = [n for n, sh in entry.sessions.items() if sh is not None]
        while len(named) >= MAX_SESSIONS:
            idle = [n for n in named if not entry.sessions[n]._lock.locked()]  # type: ignore[union-attr]
            if not idle:
                raise ApiError(429, f"session: {len(named)} sessions are running commands in "
                               f"sandbox {entry.sandbox.id!r}; close one first",
                               safety=self.safety(entry))  # fmt: skip
            # a session with jobs still running (an SDK nohup job it polls) goes last
            idle.sort(key=lambda n: (_has_jobs(entry.sessions[n]), not _per_call(n),
                                     entry.session_used.get(n, 0.0)))  # fmt: skip
            victim = idle[0]
            shell = entry.sessions.pop(victim)
            entry.session_used.pop(victim, None)
            named.remove(victim)
            self.approvals.cancel_session(entry.sandbox.id, victim, "session closed")
            if shell is not None:
                await shell.close(f"closed to make room: more than {MAX_SESSIONS} sessions")

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
        auth.TENANT.set(None)  # the server's own task, not the request that happened to start it
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
        entry.session_used[name] = time.monotonic()
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
        shown: str | None = None,
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
            return finish(await self.run(entry, command, timeout, shell, shown))
        loop = asyncio.get_running_loop()
        ticket = Ticket(session=session, route=route, parked=loop.create_future())
        token = CURRENT.set(ticket)
        try:
            task = loop.create_task(self.run(entry, command, timeout, shell, shown))
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
                  shell: ShellSession | None = None, shown: str | None = None) -> ExecResult:  # fmt: skip
        """Run one command as one recorded step, then apply the policy's terminate response.
        `shown`: the command as the client sent it, for the record, when corral added to it."""
        sb = entry.sandbox
        if "\x00" in command and sb.gate is None:  # with a gate, it records the refusal itself
            raise ApiError(400, "command: holds a NUL byte, which bash cannot run",
                           safety=self.safety(entry))  # fmt: skip
        timeout = capped(timeout, sb.policy.limits.command_timeout)
        started = datetime.now(UTC)
        try:
            res = await (shell or sb).exec(command, timeout=timeout)
        except SessionEnded as err:
            entry.sessions.pop(err.name, None)
            raise ApiError(404, f"session: {err}; create it again with /create_session",
                           safety=self.safety(entry)) from None  # fmt: skip
        events = sb.events[entry.seen :]
        await enforce(sb, self.shaper, events)
        start, entry.seen = entry.seen, len(sb.events)
        events = sb.events[start : entry.seen]
        entry.last_used = time.monotonic()
        with contextlib.suppress(StoreWriteError):  # held in memory; the command's answer stands
            self.store.add_step(StepRecord(
                episode_id=sb.episode_id, sandbox_id=sb.id, step=res.step, action=shown or command,
                observation=res.output[:65536], exit_code=res.exit_code,
                penalty=self.shaper.penalty_since(sb.events[: entry.seen], start),
                terminated=sb.terminated, started=started,
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
                raise ApiError(422, f"env: {k[:80]!r} is not a valid variable name")
            if "\x00" in v:
                raise ApiError(422, f"env: the value of {k} holds a NUL byte")
            pre.append(f"export {k}={shlex.quote(v)}")
        return "(" + "; ".join([*pre, cmd]) + "\n)"


def _per_call(name: str) -> bool:
    """A session the rl-rock SDK opens for one call (`bash-<time_ns>`) and never closes."""
    return name.startswith("bash-") and name[5:].isdigit()


def _has_jobs(shell: ShellSession | None) -> bool:
    return shell is not None and bool(children_of(shell.bash_pid))


def capped(asked: float | None, ceiling: float | None) -> float | None:
    """A client's command timeout, never above the policy's: a request may lower it only."""
    if asked is None or ceiling is None:
        return asked if asked is not None else ceiling
    return min(asked, ceiling)
