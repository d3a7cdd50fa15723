"""A connection fan-out is judged as the connects arrive, not at the monitor's next sweep: under
load the sweep (a thread sharing the GIL with the process's other sandboxes) came 1-2.5 s after a
probe that took a tenth of a second (the matrix's SLOW_FANOUT cells). Here the sweep is every
60 s, so only the seccomp notifier's connect records can bring the finding in time. The probe is
the ROME demo's own, sweeping the sandbox's own loopback (nothing leaves it)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from corral.cli.rome import ACTS
from corral.monitor import procfs
from corral.policy.loader import policy_from_mapping
from corral.sandbox.sandbox import Sandbox

PROBE = next(a for a in ACTS if a.category == "probe_internal")
ONE_CONNECT = "python3 -c \"import socket; socket.socket().connect_ex(('127.0.0.1', 9))\""


@pytest.mark.unprivileged
async def test_a_fanout_is_found_before_the_next_sweep(wait_event) -> None:
    pol = policy_from_mapping({"extends": "rl-strict", "gate": {"enabled": False},
                               "limits": {"enforcement": "best_effort"},
                               "monitor": {"sweep_interval": 60}})  # fmt: skip
    async with Sandbox(pol, store=False) as sb:
        for path, (content, mode) in PROBE.files.items():
            await sb.write_file(path, content, mode)
        await sb.exec("true", step=1)
        await sb.exec("sleep 0.3", step=2)  # the monitor's first sweep is long done
        await sb.exec(PROBE.command, step=3)
        f = await wait_event(sb, lambda e: e.rule == "probe_internal.connect_fanout", timeout=10)
        assert f.origin_step == 3 and f.evidence["net"]["attempts"] >= 20, f.evidence


@pytest.mark.unprivileged
async def test_a_slow_tcp_table_read_does_not_hold_the_fanout(wait_event, monkeypatch) -> None:
    """Reading /proc/PID/net/tcp walks the host's whole TCP hash: 250-320 ms a read under load,
    and the monitor's thread, blocked in it, judged a probe's fan-out 0.6-1 s after its exec (the
    matrix's `pool-probe_internal-*` cells). Here that read does not return until the finding is
    in: the fan-out must be judged while a table read is still under way."""
    entered, release = threading.Event(), threading.Event()
    real = procfs.tcp_table

    def stuck(pid: int) -> dict:
        entered.set()
        release.wait(30)
        return real(pid)

    monkeypatch.setattr(procfs, "tcp_table", stuck)
    pol = policy_from_mapping({"extends": "rl-strict", "gate": {"enabled": False},
                               "limits": {"enforcement": "best_effort"},
                               "monitor": {"sweep_interval": 0.05}})  # fmt: skip
    try:
        async with Sandbox(pol, store=False) as sb:
            for path, (content, mode) in PROBE.files.items():
                await sb.write_file(path, content, mode)
            await sb.exec(ONE_CONNECT, step=1)  # the netns's counters move: a sweep reads the table
            assert await asyncio.to_thread(entered.wait, 10), "no sweep read the TCP table"
            await sb.exec(PROBE.command, step=2)
            f = await wait_event(sb, lambda e: e.rule == "probe_internal.connect_fanout",
                                 timeout=10)  # fmt: skip
            assert not release.is_set()
            assert f.origin_step == 2 and f.evidence["net"]["attempts"] >= 20, f.evidence
    finally:
        release.set()
