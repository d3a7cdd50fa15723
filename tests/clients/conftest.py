"""Real client packages of other RL stacks driving a real `corral serve` on loopback.

Each stack's tests skip when its package (the `clients` extra) or its vendored sources
(`../shared/thirdparty`) are absent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import serve

_REPO = Path(__file__).resolve().parents[2]
THIRDPARTY = next(
    (p for p in (_REPO / "shared" / "thirdparty", _REPO.parent / "shared" / "thirdparty")
     if p.exists()),
    _REPO.parent / "shared" / "thirdparty",
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    with serve(tmp_path_factory.mktemp("serve-home")) as s:
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
