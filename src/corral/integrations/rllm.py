"""An rLLM sandbox backend (rllm-org/rllm `rllm/sandbox/protocol.py`'s `Sandbox`) on corral.

`create_corral_sandbox(name, policy=...)` is the factory rLLM's backends export. `exec` returns
stdout and raises `subprocess.CalledProcessError` on a non-zero exit, as rLLM's local backend does;
when corral's policy ends the episode it raises `EpisodeTerminated` (a `RuntimeError`, which rLLM's
`_safe_exec` turns into the observation) naming the reason, and `is_alive()` is False after.
Relative paths and `/app/...` are workspace paths; `/tmp/...` is the sandbox's own /tmp.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from corral.integrations._contained import ContainedShell, EpisodeTerminated

__all__ = ["CorralSandbox", "EpisodeTerminated", "create_corral_sandbox"]


class CorralSandbox:
    def __init__(self, name: str, policy: str = "rl-strict", **kwargs: object) -> None:
        self.name = name
        self.shell = ContainedShell(policy, episode_id=str(kwargs.get("episode_id") or "") or None)

    def exec(self, command: str, timeout: float | None = None, user: str | None = None) -> str:  # noqa: ARG002
        """`user` is accepted for the protocol; the sandbox has one user."""
        out = self.shell.run(command.replace("/app/", "/workspace/app/"), timeout=timeout or 300.0)
        if out.terminated:
            raise EpisodeTerminated(out.reason)
        if out.exit_code != 0:
            raise subprocess.CalledProcessError(out.exit_code, command, out.stdout,
                                                out.stderr or out.reason)  # fmt: skip
        return out.stdout

    def _path(self, remote: str) -> str:
        if remote.startswith("/app/") or remote == "/app":
            return "/workspace/app" + remote[4:]
        return remote

    def upload_file(self, local_path: str, remote_path: str) -> None:
        self.shell.write(self._path(remote_path), Path(local_path).read_bytes())

    def upload_dir(self, local_path: str, remote_path: str) -> None:
        for root, _dirs, names in os.walk(local_path):
            for n in names:
                src = Path(root, n)
                rel = src.relative_to(local_path).as_posix()
                self.shell.write(f"{self._path(remote_path).rstrip('/')}/{rel}", src.read_bytes())

    def download_file(self, remote_path: str) -> bytes:
        return self.shell.read(self._path(remote_path))

    def is_alive(self) -> bool:
        try:
            return self.shell.alive
        except Exception:  # noqa: BLE001 - the protocol says: any error means False
            return False

    def close(self) -> None:
        self.shell.close()


def create_corral_sandbox(name: str, **kwargs: object) -> CorralSandbox:
    return CorralSandbox(name=name, **kwargs)  # type: ignore[arg-type]
