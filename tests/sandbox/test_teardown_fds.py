"""Ending a sandbox never touches an fd number it no longer owns.

Under load, a sandbox ended by the responder (`terminate`) while its caller closed it, or while a
command was running, closed its channel's fd numbers twice and drained them after the close. By
then those numbers belonged to other sandboxes' pipes and sockets: one sandbox's teardown broke
another's gateway ("Bad file descriptor" at its close), and a drain of a reused blocking pipe
hung the event loop. Each test here opens pipes in the window where the freed numbers get
re-used (inside the teardown, as another sandbox starting on the same loop would), then checks
that they are still open and still hold what was written to them.
"""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from corral import Sandbox
from corral.monitor import Monitor
from corral.sandbox import sandbox as sandbox_mod
from corral.sandbox.shell import ShellChannel
from tests.sandbox.helpers import sandbox_policy

pytestmark = pytest.mark.unprivileged


class Bystander:
    """Pipes that take the lowest free fd numbers, each holding one byte, non-blocking (so a
    wrong read takes the byte rather than hanging the test)."""

    def __init__(self, pairs: int = 24) -> None:
        self.pipes = [os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) for _ in range(pairs)]
        for _, w in self.pipes:
            os.write(w, b"x")
        self.identity = {fd: os.fstat(fd).st_ino for pair in self.pipes for fd in pair}

    def damage(self) -> list[str]:
        """What happened to them: closed (or re-used again), or their byte taken."""
        out = []
        for fd, ino in self.identity.items():
            try:
                st = os.fstat(fd)
            except OSError:
                out.append(f"fd {fd} was closed")
                continue
            if not stat.S_ISFIFO(st.st_mode) or st.st_ino != ino:
                out.append(f"fd {fd} was closed and taken by another file")
        for r, _ in self.pipes:
            try:
                if os.read(r, 16) != b"x":
                    out.append(f"fd {r}: its byte was changed")
            except BlockingIOError:
                out.append(f"fd {r}: its byte was read by someone else")
            except OSError as err:
                out.append(f"fd {r}: {err}")
        return out

    def close(self) -> None:
        for fd in self.identity:
            try:
                os.close(fd)
            except OSError:
                continue


@pytest.fixture
def reuse_inside_teardown(monkeypatch: pytest.MonkeyPatch) -> list[Bystander]:
    """While the first teardown waits for the init to die (after it has closed the channel and
    the gateway), bystander pipes take the freed numbers and the loop runs other tasks."""
    made: list[Bystander] = []
    original = sandbox_mod.finish

    async def finish(*a: object, **k: object) -> None:
        if not made:
            made.append(Bystander())
            await asyncio.sleep(0.1)
        await original(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(sandbox_mod, "finish", finish)
    yield made
    for b in made:
        b.close()


async def test_terminate_and_close_at_once_close_nothing_twice(
    reuse_inside_teardown: list[Bystander],
) -> None:
    sb = Sandbox(sandbox_policy())
    await sb.start()
    await asyncio.gather(sb.terminate("a finding"), sb.close())
    assert reuse_inside_teardown, "the teardown never waited for the init"
    assert reuse_inside_teardown[0].damage() == []
    assert sb.closed_reason == "terminated: a finding"


async def test_a_command_ended_under_it_reads_no_reused_fd(
    reuse_inside_teardown: list[Bystander],
) -> None:
    sb = Sandbox(sandbox_policy())
    await sb.start()
    try:
        running = asyncio.ensure_future(sb.exec("echo started; sleep 30"))
        for _ in range(200):  # until the command runs (its output is in the channel)
            await asyncio.sleep(0.01)
            if sb.step:
                break
        await sb.terminate("a finding")
        result = await asyncio.wait_for(running, 10)
        assert result.exit_code != 0
        assert reuse_inside_teardown[0].damage() == []
    finally:
        await sb.close()


async def test_a_closed_channel_forgets_its_fds() -> None:
    fds = [os.pipe() for _ in range(2)]
    loop = asyncio.get_running_loop()
    chan = ShellChannel(loop, fds[0][1], fds[0][0], fds[1][0], fds[1][1])
    waiting = chan.expect("1-key")
    chan.close()
    with pytest.raises(EOFError):
        await waiting
    other = Bystander(4)  # the numbers the channel had
    try:
        chan.close()
        chan.drain()
        with pytest.raises(BrokenPipeError):
            chan.send(b"echo into a reused fd\n")
        with pytest.raises(EOFError):
            await chan.expect("2-key")
        assert other.damage() == []
    finally:
        other.close()


def test_a_closed_monitor_writes_and_closes_no_reused_fd() -> None:
    m = Monitor(mode="poll", gpu=False)
    m.start()
    m.close()
    other = Bystander(4)
    try:
        m._wake()  # a sandbox that still holds the monitor queues an event
        m.close()
        assert other.damage() == []
    finally:
        other.close()
