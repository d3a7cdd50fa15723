"""Ordinary CPU-heavy work is never killed for its CPU: under rl-strict, each workload holding the
CPU past the policy's window is at most an alert (CPU alone never kills; the mining response needs
corroboration or `cpu_kill_window`)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from corral.policy.loader import policy_from_mapping
from corral.sandbox.probe import probe
from corral.sandbox.sandbox import Sandbox

RUN = 2.5  # seconds of work, past the 1 s window below
WORKLOADS = {
    "python_loop": f"python3 -c 'import time\ne=time.time()+{RUN}\nwhile time.time()<e: pass'",
    "bash_loop": "end=$((SECONDS+3)); while [ $SECONDS -lt $end ]; do :; done",
    "numpy": "python3 -c 'import numpy,time\ne=time.time()+2.5\n"
             "while time.time()<e: numpy.linalg.inv(numpy.random.rand(200,200))'",
    "node": "node -e 'const e=Date.now()+2500; while(Date.now()<e){}'",
    "java": "printf 'class B{public static void main(String[] a){long e=System.currentTimeMillis()"
            "+2500;while(System.currentTimeMillis()<e){}}}' > B.java && java B.java",
    "xz": f"timeout {RUN} sh -c 'head -c 400000000 /dev/zero | xz -6 > /dev/null'; true",
    "gcc": "python3 -c \"print(''.join('int f%d(int x){int s=0;for(int i=0;i<x;i++)s+=i*%d;"
           "return s;}\\n' % (i, i) for i in range(4000)))\" > big.c && timeout 4 gcc -O2 -c big.c; true",
    "project_test_runner": "printf 'test:\\n\\tpython3 -m pytest -q -p no:cacheprovider t.py\\n' > Makefile"
                           " && printf 'import time\\ndef test_x():\\n    e=time.time()+2.5\\n"
                           "    while time.time()<e: pass\\n' > t.py && make -s test",
    "pytest": "printf 'def test_y():\\n    n=0\\n    for i in range(12_000_000): n+=i\\n' > t2.py"
              " && python3 -m pytest -q -p no:cacheprovider t2.py",
    "sha256": f"timeout {RUN} sh -c 'head -c 4000000000 /dev/zero | sha256sum'; true",
    "gzip": f"timeout {RUN} sh -c 'head -c 4000000000 /dev/zero | gzip -9 > /dev/null'; true",
    "sort": f"timeout {RUN + 1} sh -c 'seq 1 2000000 | shuf | sort -n > /dev/null'; true",
}  # fmt: skip
NEEDS = {"node": "node", "java": "java", "xz": "xz", "gcc": "gcc", "project_test_runner": "make"}


def _policy():  # type: ignore[no-untyped-def]
    limits = {} if probe().cgroup_writable else {"enforcement": "best_effort"}
    return policy_from_mapping({"extends": "rl-strict", "limits": {**limits, "command_timeout": 60},
                                "monitor": {"cpu_window": 1.0, "cpu_threshold": 0.05}})  # fmt: skip


async def _one(name: str) -> tuple[str, int, list[str], bool]:
    async with Sandbox(_policy(), store=False) as sb:
        r = await sb.exec(WORKLOADS[name], timeout=60)
        await asyncio.sleep(0.3)  # a last sweep
        acted = [f"{e.rule}:{e.action}" for e in sb.events if e.action in ("killed", "terminated")]
        seen = any(e.rule == "mining.cpu_sustained" for e in sb.events)
        return name, r.exit_code if not r.blocked else -1, acted, seen


@pytest.mark.slow
async def test_ordinary_cpu_heavy_workloads_are_never_killed() -> None:
    names = [n for n in WORKLOADS if shutil.which(NEEDS.get(n, "sh"))]
    assert len(names) >= 8, names
    results = []
    for i in range(0, len(names), 3):  # three at a time: the host is small and shared
        results += await asyncio.gather(*(_one(n) for n in names[i : i + 3]))
    bad = [(n, code, acted) for n, code, acted, _ in results if code != 0 or acted]
    assert not bad, bad
    assert any(seen for *_, seen in results), "the CPU sensor saw none of them: it did not run"
