"""Step records follow the origin step: a finding that landed after its step's record was written
(a background job's act, a sensor's sweep) is charged to the step that started it, by the same
reward shaper, when the episode closes. Real SQLite store; the episode context is a plain object
(no sandbox needed: this is the record-keeping alone)."""

from __future__ import annotations

from types import SimpleNamespace

from corral.events.model import Event
from corral.monitor.attach import record_missing_steps
from corral.policy.loader import load_policy
from corral.store.sqlite import EventStore
from corral.store.steps import StepRecord


def test_a_late_finding_moves_to_its_origin_step(store: EventStore) -> None:
    ep = "ep-late"
    for step, pen in ((1, 0.0), (2, 0.0), (3, -0.5)):  # as SandboxEnv wrote them: by time window
        store.add_step(StepRecord(episode_id=ep, step=step, action=f"a{step}", penalty=pen,
                                  reward=pen))  # fmt: skip
    store.add_step(StepRecord(episode_id=ep, step=0, kind="reset"))
    finding = Event(source="process", rule="probe_internal.connect_fanout", category="probe_internal",
                    severity="high", action="blocked", episode_id=ep, step=3, origin_step=1)  # fmt: skip
    ctx = SimpleNamespace(episode_id=ep, id="sb-x", policy=load_policy("rl-strict"),
                          sink=SimpleNamespace(store=store), events=[finding])  # fmt: skip
    record_missing_steps(ctx)
    got = {s.step: (s.penalty, s.reward) for s in store.steps(ep) if s.kind == "action"}
    assert got == {1: (-0.5, -0.5), 2: (0.0, 0.0), 3: (0.0, 0.0)}


def test_records_already_right_are_left_alone(store: EventStore) -> None:
    ep = "ep-right"
    store.add_step(StepRecord(episode_id=ep, step=1, action="a", penalty=-0.5, reward=0.5))
    finding = Event(source="process", rule="probe_internal.connect_fanout", category="probe_internal",
                    severity="high", action="blocked", episode_id=ep, step=1, origin_step=1)  # fmt: skip
    ctx = SimpleNamespace(episode_id=ep, id="sb-y", policy=load_policy("rl-strict"),
                          sink=SimpleNamespace(store=store), events=[finding])  # fmt: skip
    record_missing_steps(ctx)
    [s] = store.steps(ep)
    assert (s.penalty, s.reward) == (-0.5, 0.5)
