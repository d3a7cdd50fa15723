"""Acceptance: from inside a sandbox a command cannot reach what it must not."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from corral import Sandbox
from tests.sandbox.helpers import INSIDE_CHECK, new_dir, sandbox_policy

pytestmark = pytest.mark.unprivileged


async def test_really_inside_a_sandbox() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        r = await sb.exec(INSIDE_CHECK)
        assert r.stdout.strip() == "INSIDE", r.stderr
        r = await sb.exec("cat /proc/1/cmdline | tr '\\0' ' '")
        # the sandbox's own pid 1: corral-init (or the launcher, or bwrap's init), never the host's
        assert r.stdout.split()[0] in ("corral-init", "bwrap") or r.stdout.startswith("/bin/bash")


async def test_cannot_write_outside_workspace(tmp_path) -> None:
    async with Sandbox(sandbox_policy(), workspace=new_dir(tmp_path / "ws")) as sb:
        for target in ("/etc/corral-test", "/usr/corral-test", "/corral-test", "/bin/corral-test"):
            r = await sb.exec(f"echo x > {target}")
            assert r.exit_code != 0, target
            assert not os.path.exists(target)
        r = await sb.exec("echo ok > /workspace/inside.txt && cat /workspace/inside.txt")
        assert r.exit_code == 0 and r.stdout == "ok\n"
        assert (tmp_path / "ws" / "inside.txt").read_text() == "ok\n"
        denied = [e for e in sb.events if e.rule == "file.write_denied"]
        assert {e.path for e in denied} >= {"/etc/corral-test"}


async def test_cannot_write_protected_path(tmp_path) -> None:
    ws = tmp_path / "ws"
    (ws / "tests").mkdir(parents=True)
    (ws / "tests" / "test_task.py").write_text("def test_ok():\n    assert False\n")
    async with Sandbox(sandbox_policy(), workspace=ws) as sb:
        r = await sb.exec("echo 'def test_ok(): pass' > tests/test_task.py")
        assert r.exit_code != 0
        r = await sb.exec("rm -f tests/test_task.py; touch tests/new.py")
        assert r.exit_code != 0
        assert (ws / "tests" / "test_task.py").read_text().endswith("assert False\n")
        assert not (ws / "tests" / "new.py").exists()
        tamper = [e for e in sb.events if e.rule == "file.protected_write"]
        assert tamper and tamper[0].category == "reward_tampering"
        assert tamper[0].step == 1


async def test_cannot_see_another_sandbox(tmp_path) -> None:
    async with Sandbox(sandbox_policy()) as a, Sandbox(sandbox_policy()) as b:
        secret = "corral-secret-" + a.id
        await a.exec(f"echo {secret} > /workspace/secret.txt; echo {secret} > /tmp/secret.txt")
        assert a.workspace is not None
        r = await b.exec(
            f"ls {a.workspace} 2>&1; grep -rs {secret} /workspace /tmp /etc /opt 2>/dev/null; "
            "ls /workspace /tmp"
        )
        assert secret not in r.stdout
        assert "secret.txt" not in r.stdout
        r = await b.exec("ls /proc | grep -c '^[0-9]'")
        assert int(r.stdout) < 10  # its own pid namespace: only its own few processes


async def test_cannot_signal_outside() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        async with Sandbox(sandbox_policy()) as sb:
            r = await sb.exec(f"kill -9 {victim.pid}; echo rc=$?")
            assert "rc=0" not in r.stdout
            r = await sb.exec("kill -9 -1; echo done")
        await asyncio.sleep(0.1)
        assert victim.poll() is None, "a process outside the sandbox was killed from inside"
    finally:
        victim.kill()
        victim.wait()


async def test_cannot_connect_to_outside_address() -> None:
    async with Sandbox(sandbox_policy()) as sb:
        r = await sb.exec(INSIDE_CHECK)
        assert r.stdout.strip() == "INSIDE"  # isolation checked before the outside address is tried
        r = await sb.exec(
            "python3 -c \"import socket; socket.create_connection(('203.0.113.7', 8443), timeout=2)\""
        )
        assert r.exit_code != 0
        assert "Network is unreachable" in r.stderr or "Errno" in r.stderr


async def test_no_gpu_devices_no_docker_socket_no_supervisor_files(corral_home) -> None:
    async with Sandbox(sandbox_policy()) as sb:
        r = await sb.exec(
            "ls /dev; ls /run /var/run/docker.sock 2>&1; ls /root 2>&1; "
            f"ls {corral_home} 2>&1; cat /etc/shadow 2>&1 | head -c 20"
        )
        assert "nvidia" not in r.stdout and "dri" not in r.stdout
        assert "docker.sock\n" not in r.stdout
        assert "events.db" not in r.stdout
        assert "root:" not in r.stdout
