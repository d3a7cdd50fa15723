"""Recording under a flood: the first of each kind one by one, the rest counted and reported."""

from __future__ import annotations

import pytest

from corral.egress.ratelimit import Summariser

pytestmark = pytest.mark.unprivileged


def test_burst_then_counted_then_reported_when_the_window_closes() -> None:
    now = [0.0]
    reports: list[tuple[str, int, list[str], float]] = []
    s = Summariser(lambda *a: reports.append(a), burst=3, window=1.0, clock=lambda: now[0])
    admitted = [s.admit("egress.max_connections", f"h:{i}") for i in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert s.admit("egress.raw_connect", "x:1")  # each kind has its own budget
    assert reports == []
    now[0] = 1.5
    assert s.admit("egress.max_connections", "h:99")  # a new window: recorded again
    [(kind, count, samples, window)] = reports
    assert (kind, count, window) == ("egress.max_connections", 7, 1.5)
    assert samples == [f"h:{i}" for i in range(3, 10)]


def test_flush_and_timer_report_what_is_pending() -> None:
    now = [0.0]
    timers: list[tuple[float, object]] = []
    reports: list[tuple[str, int]] = []
    s = Summariser(lambda k, c, *_: reports.append((k, c)), burst=1, window=1.0,
                   clock=lambda: now[0], schedule=lambda d, f: timers.append((d, f)))  # fmt: skip
    s.admit("a")
    s.admit("a")
    s.admit("a")
    assert len(timers) == 1 and reports == []
    now[0] = 1.0
    timers[0][1]()  # the timer fires: nothing waits for another admit
    assert reports == [("a", 2)]
    s.admit("b")
    s.admit("b")
    s.flush()
    assert reports == [("a", 2), ("b", 1)]
