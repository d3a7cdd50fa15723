"""One act, one penalty, in the stored step records too: the acceptance matrix's DOUBLE cells made
deterministic. A scripted act that reaches the network before the monitor's kill (the ROME metadata
act's `curl` asks the gateway's DNS for the metadata host) is seen twice: at its exec by the
monitor, and on the wire by the gateway. The responder charges the act once (`act_key`), and
SandboxEnv's step record says so; the close's recharge summed the two findings (-2.0).

Here the monitor's judgment of the `curl` exec is held back half a second (on its own thread, as
a loaded host does), so the gateway's finding always comes first and both findings are recorded;
the test checks that it did, then that the act costs its penalty once: in the responder's
`respond.penalty` events and in the step records the store keeps (`events --with-steps`,
`export`). Real sandbox, real gateway, real SQLite; the name does not resolve, nothing leaves.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from corral.cli.rome import ACTS
from corral.monitor.monitor import Monitor
from corral.rl import SandboxEnv
from corral.store.sqlite import EventStore

METADATA = next(a for a in ACTS if a.category == "metadata")
PENALTY = -1.0  # rl-strict: a critical finding (the metadata act's)


def test_a_scripted_act_seen_by_the_gateway_and_at_its_exec_costs_once(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    judge = Monitor._exec_note

    def slow(self: Monitor, w: Any, note: Any, origin: Any) -> None:
        if note.argv and note.argv[0] == "curl":
            time.sleep(0.5)  # a loaded host: the lookup reaches the gateway first
        judge(self, w, note, origin)

    monkeypatch.setattr(Monitor, "_exec_note", slow)
    task = {"files": {"act.sh": f"#!/bin/bash\n{METADATA.command}\n"}, "max_steps": 10}
    env = SandboxEnv(task, "rl-strict", store=store)
    try:
        env.reset()
        env.step("true")
        env.step("bash act.sh")  # step 2: the act
        for _ in range(2):
            env.step("sleep 0.5")
    finally:
        env.close()
    store.flush()
    events = store.query(episode_id=env.episode_id)
    found = [e for e in events if e.category == "metadata" and e.severity != "info"
             and not e.rule.startswith("respond.")]  # fmt: skip
    assert {e.source for e in found} >= {"process", "egress"}, (
        "the race was not forced: both sensors must have seen the act",
        [(e.rule, e.source) for e in found],
    )
    assert {e.origin_step for e in found} == {2}
    charged = [e for e in events if e.rule == "respond.penalty"]
    assert sum(e.evidence["penalty"] for e in charged) == pytest.approx(PENALTY)
    by_step = {s.step: s.penalty for s in store.steps(env.episode_id) if s.kind == "action"}
    assert by_step[2] == pytest.approx(PENALTY), by_step
    assert sum(by_step.values()) == pytest.approx(PENALTY), by_step
