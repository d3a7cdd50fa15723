"""Real client packages of other RL stacks driving a real `corral serve` on loopback.

Each stack's tests skip when its package (the `clients` extra) or its vendored sources
(`../shared/thirdparty`) are absent.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import serve

# where `corral serve` asks for a token (corral.server.auth), these clients' servers run with
# --no-auth, as an operator runs one for clients that cannot send a token (verl's SandboxFusion
# calls, the sandbox-fusion client); test_auth.py drives the ones that can with a token
HAS_AUTH = importlib.util.find_spec("corral.server.auth") is not None

_REPO = Path(__file__).resolve().parents[2]
THIRDPARTY = next(
    (p for p in (_REPO / "shared" / "thirdparty", _REPO.parent / "shared" / "thirdparty")
     if p.exists()),
    _REPO.parent / "shared" / "thirdparty",
)  # fmt: skip


def open_serve(home: Path) -> object:
    """`corral serve` that asks no token (see HAS_AUTH)."""
    if not HAS_AUTH:
        return serve(home)
    kwargs = {}
    params = inspect.signature(serve).parameters
    if "token" in params:
        kwargs["token"] = None
    if "ready_token" in params:
        kwargs["ready_token"] = None
    return serve(home, "--no-auth", **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    with open_serve(tmp_path_factory.mktemp("serve-home")) as s:
        yield s


@pytest.fixture(scope="module")
def url(server: dict[str, object]) -> str:
    return str(server["url"])


def thirdparty(*parts: str) -> Path:
    """A vendored third-party source path, or skip the test when the checkout has none."""
    path = THIRDPARTY.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"vendored third-party code not present: {path}")
    return path


def on_path(path: Path) -> None:
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
