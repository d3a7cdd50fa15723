"""No connect or send reaches the kernel unrecorded: the seccomp listener performs checked calls
itself instead of letting the kernel continue a call whose memory the agent can still rewrite."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.sandbox.sandbox import Sandbox
from tests.egress.conftest import assert_isolated

SOURCE = Path(__file__).parent / "data" / "netrace.c"
pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


@pytest.fixture(scope="module")
def netrace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("netrace") / "netrace"
    subprocess.run(["cc", "-O2", "-pthread", "-o", str(out), str(SOURCE)], check=True)
    out.chmod(0o755)
    return out


async def _sandbox(netrace: Path) -> Sandbox:
    sb = Sandbox("observe", store=False)  # observe: record everything, kill nothing mid-race
    await sb.start()
    await assert_isolated(sb)  # before any outside address is named
    await sb.upload(str(netrace), "netrace")
    await sb.exec("chmod +x netrace")
    return sb


@pytest.mark.unprivileged
async def test_racing_thread_rewriting_the_connect_address_is_never_unrecorded(netrace) -> None:
    sb = await _sandbox(netrace)
    try:
        r = await sb.exec("./netrace race 3000", timeout=120)
        counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", r.stdout)}
        assert counts, r.output
        assert counts["ok"] > 0 and counts["refused"] > 0, "the race did flip the address"
        assert counts["unreach"] == 0, "a connect reached the kernel with an unchecked address"
        assert counts["other"] == 0

        def recorded() -> int:  # one by one, then (past the rate limit) summarised with a count
            one = [e for e in sb.events if e.rule == "egress.raw_connect"
                   and e.dst and e.dst.ip == "192.0.2.1"]  # fmt: skip
            summed = sum(e.evidence.get("count", 0) for e in sb.events
                         if e.rule == "egress.attempts_summarised"
                         and e.evidence.get("for_rule") == "egress.raw_connect")  # fmt: skip
            return len(one) + summed

        for _ in range(100):  # a summary is written when its window closes
            if recorded() >= counts["refused"]:
                break
            await asyncio.sleep(0.1)
        assert recorded() == counts["refused"]
    finally:
        await sb.close()


@pytest.mark.unprivileged
async def test_every_message_of_sendmmsg_is_inspected(netrace) -> None:
    sb = await _sandbox(netrace)
    try:
        r = await sb.exec("./netrace mmsg")
        m = re.search(r"mixed=(-?\d+)/(\d+) local=(-?\d+) lens=(\d+),(\d+) got=(\d+)", r.stdout)
        assert m, r.output
        mixed, mixed_errno, local, len0, len1, got = map(int, m.groups())
        assert mixed == -1 and mixed_errno == 111, "a batch naming an outside address is refused"
        assert local == 2 and (len0, len1) == (5, 6), "a local batch is sent whole, lengths set"
        assert got == 2, "only the local batch arrived"
        [ev] = [e for e in sb.events if e.rule == "egress.raw_udp"]
        assert ev.dst.ip == "192.0.2.1" and ev.dst.port == 9
    finally:
        await sb.close()
