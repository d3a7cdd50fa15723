"""The pure parts of the ROCK face: job lines, docker-style sizes, resources within the ceiling."""

from __future__ import annotations

import subprocess

import pytest

from corral.policy.loader import load_policy
from corral.server.manager import ApiError
from corral.server.rock import announce_jobs, format_memory, parse_memory, sized_policy


@pytest.mark.parametrize(
    ("command", "lines"),
    [
        ("sleep 0.01 &", 1),
        ("nohup sleep 0.01 > /dev/null 2>&1 &", 1),
        ("sleep 0.01 & sleep 0.01 & echo x", 2),
        ("echo '&' \"a & b\"", 0),  # quoted: no job
        ("(sleep 0.01 &)", 0),  # in a subshell ROCK's bash prints nothing either
        ("a &&", 0),  # a syntax error is left to bash
    ],
)
def test_announce_jobs_prints_one_line_per_top_level_job(command: str, lines: int) -> None:
    out = subprocess.run(["bash", "--noprofile", "--norc", "-c", announce_jobs(command)],
                         capture_output=True, text=True, timeout=10)  # fmt: skip
    jobs = [ln for ln in out.stderr.splitlines() if ln.startswith("[")]
    assert len(jobs) == lines, (announce_jobs(command), out.stderr)
    for i, ln in enumerate(jobs, 1):
        n, pid = ln.split()
        assert n == f"[{i}]" and pid.isdigit()
    if lines == 0:
        assert announce_jobs(command) == command


def test_memory_sizes_are_dockers() -> None:
    assert parse_memory("8g") == 8 * 1024**3 and parse_memory("512m") == 512 * 1024**2
    assert parse_memory("2Gi") == 2 * 1024**3 and parse_memory(1000) == 1000
    assert format_memory(2 * 1024**3) == "2g" and format_memory(512 * 1024**2) == "512m"
    with pytest.raises(ApiError, match="memory"):
        parse_memory("lots")


def test_resources_never_exceed_the_policy() -> None:
    pol = load_policy("rl-strict")
    assert sized_policy(pol, "64g", 64).limits.memory == pol.limits.memory
    assert sized_policy(pol, "64g", 64).limits.cpus == pol.limits.cpus
    small = sized_policy(pol, "256m", 0.25)
    assert (small.limits.memory, small.limits.cpus) == (256 * 1024**2, 0.25)
    assert sized_policy(pol, None, None) is pol


def test_a_request_may_lower_the_command_timeout_only() -> None:
    from corral.server.manager import capped

    assert capped(5, 600) == 5 and capped(10_000, 600) == 600
    assert capped(None, 600) == 600 and capped(7, None) == 7 and capped(None, None) is None
