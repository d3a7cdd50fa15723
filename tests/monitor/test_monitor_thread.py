"""The monitor's thread outlives any one bad moment: a thread that died would leave every sandbox
of the supervisor unwatched, silently.

Found by the suite: `_intervals` walked the watched sandboxes while a sandbox attached on its own
loop's thread ("dictionary changed size during iteration"), outside the loop's guard, and the
thread ended. Both are fixed; this holds the class: whatever `_intervals` raises is recorded and
the thread goes on.
"""

from __future__ import annotations

import time

import pytest

from corral.monitor import Monitor


@pytest.mark.unprivileged
def test_the_monitor_thread_lives_on_when_reading_its_intervals_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mon = Monitor(mode="poll")
    calls = {"n": 0}
    real = Monitor._intervals

    def flaky(self: Monitor) -> tuple[float, float, float]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return real(self)

    monkeypatch.setattr(Monitor, "_intervals", flaky)
    mon.start()
    try:
        deadline = time.monotonic() + 10
        while calls["n"] < 3 and time.monotonic() < deadline:
            mon._wake()
            time.sleep(0.01)
        assert calls["n"] >= 3, "the thread stopped after the first failure"
        assert mon._thread is not None and mon._thread.is_alive()
        assert any("dictionary changed size" in e for e in mon.errors), mon.errors
    finally:
        mon.stop()
