"""Fixtures for image tests: the SWE-shaped test image (built once per machine, see imagekit) and
a corral home that already holds it, so each test does not unpack it again."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.images import ImageStore
from tests.images.imagekit import swe_image


@pytest.fixture(scope="session")
def swe() -> dict[str, Path]:
    return swe_image()


@pytest.fixture(scope="session")
def _cached_home(tmp_path_factory: pytest.TempPathFactory, swe: dict[str, Path]) -> Path:
    home = tmp_path_factory.mktemp("image-home")
    ImageStore(home).add(str(swe["oci"]), name="swe")
    return home


@pytest.fixture
def image_home(corral_home: Path, _cached_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CORRAL_HOME with the SWE image imported as `swe` (shared by the tests of this run)."""
    monkeypatch.setenv("CORRAL_HOME", str(_cached_home))
    return _cached_home
