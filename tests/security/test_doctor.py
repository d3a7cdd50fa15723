"""`corral doctor` reports each Hold item as seen from inside a real sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.unprivileged
def test_doctor_reports_every_hold_item_in_force() -> None:
    out = subprocess.run([sys.executable, "-m", "corral.cli.main", "doctor", "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    hold = json.loads(out.stdout)["hold"]
    assert "error" not in hold, hold
    for item in ("capabilities", "proc_sys_read_only", "secrets_hidden", "seccomp_deny_list",
                 "socket_families", "nosuid_mounts", "store_unreachable",
                 "agent_not_host_root"):  # fmt: skip
        assert hold[item] is True, (item, hold)
    assert hold["own_host_id_per_sandbox"] is (os.geteuid() == 0)
    assert hold["tmp_size"] > 0
