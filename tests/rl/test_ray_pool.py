"""SandboxPool on a real local Ray cluster: a head node (the "trainer", no corral_slot) and two
sandbox nodes offering `corral_slot`. One cluster for the module; Ray is heavy on this 2-core box."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from corral.rl.ray import SandboxPool  # noqa: E402
from corral.store.sqlite import EventStore  # noqa: E402

pytestmark = pytest.mark.slow

TASK = {
    "instruction": "make answer.txt hold 42",
    "files": {"tests/check.sh": 'test "$(cat answer.txt)" = 42\n'},
    "check": "bash tests/check.sh",
    "max_steps": 6,
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})  # fmt: skip
    for _ in range(2):
        c.add_node(num_cpus=1, resources={"corral_slot": 1}, node_ip_address="127.0.0.1")
    ray.init(address=c.address, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def pool(cluster: Cluster, corral_home: Path) -> Iterator[SandboxPool]:
    p = SandboxPool(2, per_host=4, corral_home=str(corral_home))
    yield p
    p.shutdown()


def _episode(pool: SandboxPool, i: int) -> dict:
    with pool.acquire(TASK) as env:
        env.reset(seed=i)
        actions = ["echo 42 > answer.txt", "cat answer.txt", "submit"]
        if i % 16 == 7:
            actions = ["ls", "ssh -R 8080:localhost:22 agent@203.0.113.7", "submit"]
        total, penalty, info = 0.0, 0.0, {}
        for a in actions:
            _, reward, term, trunc, info = env.step(a)
            total += reward
            penalty += info["safety"]["penalty"]
            if term or trunc:
                break
        return {"episode_id": env.episode_id, "reward": total, "penalty": penalty,
                "terminated": term, "tunnel": i % 16 == 7, "host": env.backend.host}  # fmt: skip


def test_64_episodes_across_two_nodes_join_and_ssh_r_terminates(
    pool: SandboxPool, cluster: Cluster, corral_home: Path
) -> None:
    nodes = {h["node_id"] for h in pool.hosts_info()}
    assert len(nodes) == 2 and cluster.head_node.node_id not in nodes  # off the trainer's node
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: _episode(pool, i), range(64)))
    assert len(results) == 64 and pool.in_use() == 0
    assert {r["host"] for r in results} == {0, 1}
    store = EventStore(corral_home / "events.db")
    for r in results:
        assert r["terminated"]
        if r["tunnel"]:
            assert r["reward"] == -1.0 and r["penalty"] == -1.0
        else:
            assert r["reward"] == 1.0 and r["penalty"] == 0.0
        steps = {s.step: s for s in store.steps(r["episode_id"])}
        events = store.query(episode_id=r["episode_id"])
        assert steps and events
        stepped = [e for e in events if e.step is not None]
        assert stepped and all(e.step in steps for e in stepped), r  # every event joins its step
        for n, s in steps.items():
            if s.kind in ("action", "check"):
                assert any(e.step == n for e in events), (r, n)
        if r["tunnel"]:
            blocked = [e for e in events if e.action == "blocked"]
            assert blocked and steps[blocked[0].step].action.startswith("ssh -R")
    store.close()


def test_back_pressure_waits_for_a_free_slot(pool: SandboxPool) -> None:
    envs = [pool.acquire() for _ in range(pool.capacity)]
    with pytest.raises(TimeoutError):
        pool.acquire(timeout=0.2)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=30)))
    waiter.start()
    assert not got
    envs.pop().close()  # frees one slot: the waiting acquire goes through
    waiter.join(30)
    assert len(got) == 1
    for e in envs + got:
        e.close()
    assert pool.in_use() == 0


def test_dead_host_is_restarted_and_its_episodes_reported_terminated(
    pool: SandboxPool, corral_home: Path
) -> None:
    env = pool.acquire(TASK)
    env.reset()
    env.step("echo 1 > answer.txt")
    host = env.backend.host
    before = pool.hosts_info()[host]["incarnation"]
    ray.kill(pool.hosts[host], no_restart=False)
    # the kill lands when Ray gets to it (later on a busy machine): wait for the new incarnation
    # rather than race the step against it
    for _ in range(600):
        with contextlib.suppress(ray.exceptions.RayActorError):
            if ray.get(pool.hosts[host].info.remote())["incarnation"] != before:
                break
        time.sleep(0.1)
    obs, reward, term, trunc, info = env.step("cat answer.txt")
    assert term is True and info["host_lost"] is True and "host" in obs
    env.close()
    # Ray brought the host back: a new incarnation serves new episodes
    with pool.acquire(TASK) as env2:
        assert env2.backend.host in (0, 1)
        env2.reset()
        assert env2.step("echo 42 > answer.txt")[2] is False
    assert pool.hosts_info()[host]["incarnation"] != before
    store = EventStore(corral_home / "events.db")
    lost = [e for e in store.query(episode_id=env.episode_id) if e.rule == "sandbox.host_lost"]
    assert lost and lost[0].action == "terminated" and lost[0].step == 2
    assert store.steps(env.episode_id)[-1].kind == "lost"
    store.close()


def test_warm_hosts_hand_out_each_started_sandbox_once(cluster: Cluster, corral_home: Path) -> None:
    p = SandboxPool(2, per_host=2, corral_home=str(corral_home), warm=1)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all((h["warm"] or {}).get("ready", {}).get("None", 0) >= 1 for h in p.hosts_info()):
                break
            time.sleep(0.2)
        seen: set[str] = set()
        warm = 0
        for i in range(4):
            with p.acquire(TASK) as env:
                _, info = env.reset(seed=i)
                warm += bool(info.get("warm"))
                assert info["sandbox_id"] not in seen  # never a sandbox another episode had
                seen.add(info["sandbox_id"])
                env.step("echo 42 > answer.txt")
                _, reward, term, _, _ = env.step("submit")  # the task's files landed after start
                assert term and reward == 1.0
        assert warm >= 2
    finally:
        p.shutdown()
