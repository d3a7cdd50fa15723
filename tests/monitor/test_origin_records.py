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


def test_one_act_seen_by_two_sensors_is_charged_once_on_its_step(store: EventStore) -> None:
    """A scripted `curl` to the metadata host that makes its lookup before the monitor's kill is
    seen at its exec and by the gateway: two findings of one act. SandboxEnv charged the step
    once (by act); the close's recharge must not make it twice (it summed findings: -2.0)."""
    ep = "ep-two-sensors"
    pol = load_policy("rl-strict")
    store.add_step(StepRecord(episode_id=ep, step=1, action="true", penalty=0.0, reward=0.0))
    store.add_step(StepRecord(episode_id=ep, step=2, action="bash act.sh", penalty=-1.0,
                              reward=-1.0))  # fmt: skip
    store.add_step(StepRecord(episode_id=ep, step=3, action="sleep 0.5", penalty=0.0, reward=0.0))
    at_exec = Event(source="process", rule="metadata.gcp_metadata_header", category="metadata",
                    severity="critical", action="killed", episode_id=ep, step=2, origin_step=2,
                    evidence={"act": "metadata@2"})  # fmt: skip
    # the gateway's, judged as the next step began (the responder named the act; an older record
    # without the name is grouped the same way, by category and origin step)
    on_wire = Event(source="egress", rule="metadata.cloud_endpoint", category="metadata",
                    severity="critical", action="blocked", episode_id=ep, step=3, origin_step=2,
                    evidence={"act": "metadata@2"})  # fmt: skip
    unnamed = Event(source="egress", rule="metadata.cloud_endpoint", category="metadata",
                    severity="critical", action="blocked", episode_id=ep, step=3, origin_step=2)  # fmt: skip
    ctx = SimpleNamespace(episode_id=ep, id="sb-z", policy=pol, sink=SimpleNamespace(store=store),
                          events=[at_exec, on_wire, unnamed])  # fmt: skip
    record_missing_steps(ctx)
    got = {s.step: s.penalty for s in store.steps(ep) if s.kind == "action"}
    assert got == {1: 0.0, 2: -1.0, 3: 0.0}
