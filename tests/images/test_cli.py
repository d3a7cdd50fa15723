"""`corral images ...` and `corral run --image`: exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unprivileged
CORRAL = str(Path(sys.executable).with_name("corral"))


def _corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, timeout=120)


def test_images_commands(corral_home: Path, swe) -> None:
    r = _corral("images", "import", str(swe["oci"]), "--name", "swe")
    assert r.returncode == 0, r.stderr
    r = _corral("images", "list", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and "swe" in rows[0]["names"] and rows[0]["working_dir"] == "/testbed"
    r = _corral("run", "--image", "swe", "--policy", "dev", "-q", "--", "bash", "-c",
                "pwd; cat /etc/image-marker")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/testbed\nfrom-the-image\n"
    r = _corral("images", "pull", "127.0.0.1:1/none:1")
    assert r.returncode == 1 and "registry not reachable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _corral("run", "--image", "/no/such/image", "-q", "--", "true")
    assert r.returncode == 125 and "unknown image" in r.stderr and "Traceback" not in r.stderr
    assert _corral("images", "rm", "swe").returncode == 0
    assert _corral("images", "rm", "swe").returncode == 1
    assert "no images" in _corral("images", "list").stdout
