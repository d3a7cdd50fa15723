"""One contained shell for the adapters: a corral sandbox run from synchronous code, with the
policy's responses applied after every command (`enforce`: a terminate finding ends the episode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.policy.loader import load_policy
from corral.policy.model import Policy
from corral.rl.episode import ensure_gate
from corral.rl.reward import RewardShaper, enforce, safety_state
from corral.sandbox.errors import SandboxClosed
from corral.sandbox.sync import SyncSandbox, run_sync


class EpisodeTerminated(RuntimeError):
    """corral's policy ended the episode (a ROME act): the message says which finding."""


@dataclass
class Outcome:
    output: str
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    blocked: bool = False
    terminated: bool = False
    reason: str = ""
    penalty: float = 0.0
    safety: dict[str, Any] = field(default_factory=dict)


class ContainedShell:
    """A started sandbox; `run()` executes one command as one recorded, policed step."""

    def __init__(self, policy: Policy | str | None = None, *, episode_id: str | None = None,
                 env: dict[str, str] | None = None, store: Any = True) -> None:  # fmt: skip
        self.policy = load_policy(policy)
        self.shaper = RewardShaper(self.policy)
        self.sandbox = SyncSandbox(self.policy, episode_id=episode_id, extra_env=env,
                                   store=store)  # fmt: skip
        ensure_gate(self.sandbox.sandbox)
        self.sandbox.start()
        self._seen = 0

    @property
    def alive(self) -> bool:
        return self.sandbox.sandbox.closed_reason is None

    def ended_reason(self) -> str:
        sb = self.sandbox.sandbox
        if sb.terminated:
            reason = (sb.closed_reason or "").removeprefix("terminated: ")
            return f"episode ended by corral's policy: {reason}"
        return f"the sandbox is closed ({sb.closed_reason})" if sb.closed_reason else ""

    def safety(self) -> dict[str, Any]:
        return safety_state(self.sandbox.sandbox, self.shaper)

    def run(self, command: str, timeout: float | None = None, cwd: str | None = None) -> Outcome:
        """Run a command; raises EpisodeTerminated when the episode is already over."""
        sb = self.sandbox.sandbox
        if not self.alive:
            raise EpisodeTerminated(self.ended_reason())
        if cwd:
            command = f"cd {_q(cwd)} && {command}"
        try:
            res = self.sandbox.exec(command, timeout=timeout)
        except SandboxClosed:
            raise EpisodeTerminated(self.ended_reason()) from None
        events = sb.events[self._seen :]
        run_sync(enforce(sb, self.shaper, events))
        start, self._seen = self._seen, len(sb.events)
        reason = self.ended_reason() if sb.terminated else ""
        if not reason and res.blocked:
            reason = res.stderr.strip()
        return Outcome(output=res.output, stdout=res.stdout, stderr=res.stderr,
                       exit_code=res.exit_code, timed_out=res.timed_out, blocked=res.blocked,
                       terminated=sb.terminated, reason=reason,
                       penalty=self.shaper.penalty_since(sb.events[: self._seen], start),
                       safety=self.safety())  # fmt: skip

    def write(self, path: str, data: bytes | str) -> str:
        from corral.sandbox import paths

        return run_sync(paths.write(self.sandbox.sandbox, path, data))

    def read(self, path: str) -> bytes:
        from corral.sandbox import paths

        return run_sync(paths.read(self.sandbox.sandbox, path))

    def upload(self, local: str | Path, path: str) -> str:
        return self.sandbox.upload(local, path)

    def close(self) -> None:
        self.sandbox.close()


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)
