"""Whatever a command did not turn into its own message still reaches users as one line."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_damaged_store_under_the_demo_is_one_line_not_a_traceback(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "events.db").write_text("not a database\n")
    env = dict(os.environ, CORRAL_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "corral.cli.main", "demo", "rome"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert "events.db is damaged" in r.stderr and len(r.stderr.strip().splitlines()) == 1
