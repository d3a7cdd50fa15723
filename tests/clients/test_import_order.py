"""A supervisor that has built its seccomp filter can still import the clients' packages: the
system's dist-packages (for python3-seccomp) must not stay on sys.path, or the rl-rock SDK's
pyOpenSSL import loads the system's copy, built for other libraries, and fails."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip(
    "rock.sdk.sandbox.client", reason="the clients extra (rl-rock) is not installed"
)

SCRIPT = """
import sys
from corral.sandbox import syscalls
try:
    syscalls.program()
except syscalls.SeccompUnavailable:
    raise SystemExit(0)
assert "/usr/lib/python3/dist-packages" not in sys.path, sys.path
import rock.sdk.sandbox.client
print("imported")
"""


def test_rock_sdk_imports_after_the_seccomp_filter_is_built() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
