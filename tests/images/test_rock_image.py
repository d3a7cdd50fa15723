"""ROCK's `image` field: an image corral's store holds is the sandbox's root; others are echoed."""

from __future__ import annotations

from pathlib import Path

from corral.policy.loader import load_policy
from corral.server.manager import SandboxManager, local_image


def _policy():  # type: ignore[no-untyped-def]
    pol = load_policy("rl-strict").model_copy(deep=True)
    pol.gate.enabled = False
    pol.limits.enforcement = "best_effort"
    return pol


async def test_rock_image_in_the_store_is_the_sandbox_root(image_home: Path) -> None:
    assert local_image("swe") == "swe" and local_image("python:3.11-no-such") is None
    m = SandboxManager(_policy())
    entry = await m.start(image="swe")
    try:
        r = await entry.sandbox.exec("pwd; echo $TASK")
        assert r.stdout.splitlines() == ["/testbed", "swe-tiny"], r.stderr
    finally:
        await entry.sandbox.close()
    other = await m.start(image="python:3.11-no-such")
    try:
        assert other.sandbox.image is None and other.image == "python:3.11-no-such"
    finally:
        await other.sandbox.close()
