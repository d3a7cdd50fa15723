"""The ROME acts of `corral demo rome` in an image root: seen and answered as on the host root.

The same acts, sensors and responses as tests/demo/test_rome_acts.py; only the sandbox's root is a
task image (this host's python3, ssh and curl packed into an OCI layout, workspace /workspace).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli.demo import latency_ms, play_act, wait_listening
from corral.cli.rome import ACTS, SETUP_POOL
from corral.images import ImageStore
from corral.monitor import Monitor
from corral.respond import ACTION_OF
from corral.sandbox.sandbox import Sandbox

ROGUE = [a for a in ACTS if a.category]


@pytest.fixture
def rome_image(image_home: Path, swe) -> str:  # type: ignore[no-untyped-def]
    ImageStore(image_home).add(str(swe["rome"]), name="rome")
    return "rome"


@pytest.mark.parametrize("act", ROGUE, ids=[a.category for a in ROGUE])
async def test_each_act_in_an_image_root(act, rome_image: str, monitor: Monitor, wait_event,
                                         behind_the_gate) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    pol = behind_the_gate("rl-strict")
    async with Sandbox(pol, store=False, image=rome_image) as sb:
        r = await sb.exec("cat /etc/image-marker; pwd")
        assert r.stdout == "from-the-image\n/workspace\n"  # really on the image
        monitor.watch(sb)
        if act.category == "mining":
            await play_act(sb, SETUP_POOL, 0, wait=0)
            assert await wait_listening(sb, 3333)
        await play_act(sb, act, 5, wait=0)
        finding = await wait_event(
            sb, lambda e: e.category == act.category and e.severity != "info"
        )
        assert finding.step == 5
        ms = latency_ms(sb.events, finding)
        assert ms is not None and ms < 1000, f"{act.category} seen {ms} ms after its exec"
        assert finding.action == ACTION_OF[pol.responses.for_category(act.category)]
        if finding.action == "terminated":
            await wait_event(sb, lambda e: e.rule == "respond.terminate")
            assert sb.terminated
        await wait_event(sb, lambda e: e.rule == "respond.penalty")
        assert sb.penalty < 0
