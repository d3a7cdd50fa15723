"""Sandbox errors; each says what went wrong and what to do about it."""

from __future__ import annotations


class SandboxError(RuntimeError):
    pass


class SandboxRefused(SandboxError):
    """Enforcement could not be established: nothing was run."""

    def __init__(self, cause: str, fix: str) -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(f"corral refused to start the sandbox: {cause}\n  fix: {fix}")


class SandboxClosed(SandboxError):
    """The sandbox was closed or terminated; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"sandbox is closed ({reason})")


class PathOutsideWorkspace(SandboxError):
    pass


class ProtectedPath(SandboxError, PermissionError):
    """An agent's write to a protected path (the task's tests, the grader) was refused."""
