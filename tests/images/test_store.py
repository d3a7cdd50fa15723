"""The image store: every import form, content addressing, and each error naming image and cause."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.images import ImageError, ImageStore
from tests.sandbox.helpers import is_root

pytestmark = pytest.mark.unprivileged


def _left(store: ImageStore) -> tuple[list[str], list[str]]:
    st = sorted(p.name for p in store.store.iterdir()) if store.store.exists() else []
    tmp = sorted(p.name for p in store.tmp.iterdir()) if store.tmp.exists() else []
    return st, tmp


def test_oci_layout_is_unpacked_once_with_its_config(corral_home: Path, swe) -> None:
    store = ImageStore()
    img = store.add(str(swe["oci"]), name="swe")
    assert img.kind == "oci-dir"
    assert img.id.startswith("sha256:") and len(img.id) == 71
    assert img.config.working_dir == "/testbed"
    assert img.config.env["TASK"] == "swe-tiny"
    assert (img.rootfs / "testbed" / "calc.py").read_text().startswith("def add")
    assert (img.rootfs / "etc" / "image-marker").is_file()
    again = store.add(str(swe["oci"]))
    assert again.id == img.id
    assert _left(store) == ([img.id.split(":")[1]], [])
    assert store.get("swe").id == img.id
    assert store.get(img.short_id).id == img.id
    assert {str(swe["oci"]), "swe"} <= set(store.get("swe").names)


def test_docker_archive_and_rootfs_tarball(corral_home: Path, swe) -> None:
    store = ImageStore()
    docker = store.add(str(swe["docker"]))
    assert docker.kind == "docker-archive"
    assert docker.config.working_dir == "/testbed"
    assert (docker.rootfs / "usr" / "bin" / "bash").exists()
    tar = store.add(str(swe["rootfs"]))
    assert tar.kind == "rootfs-tar"
    assert tar.config.working_dir == "/" and tar.config.architecture == "amd64"
    assert (tar.rootfs / "testbed" / "calc.py").exists()
    assert len({docker.id, tar.id}) == 2


def test_rootfs_directory(corral_home: Path, tmp_path: Path, swe) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(swe["rootfs"]), "-C", str(root)], check=True)
    store = ImageStore()
    a = store.add(str(root))
    b = store.add(str(root))
    assert a.kind == "rootfs-dir" and a.id == b.id
    (root / "testbed" / "calc.py").write_text("changed\n")
    c = store.add(str(root), name="changed")
    assert c.id != a.id and (c.rootfs / "testbed" / "calc.py").read_text() == "changed\n"


def test_other_architecture_is_refused_and_nothing_kept(corral_home: Path, swe) -> None:
    store = ImageStore()
    with pytest.raises(ImageError) as exc:
        store.add(str(swe["arm64"]))
    assert exc.value.kind == "architecture"
    assert str(swe["arm64"]) in str(exc.value) and "arm64" in str(exc.value)
    assert _left(store) == ([], [])


def test_corrupt_archive_names_image_and_cause(corral_home: Path, tmp_path: Path, swe) -> None:
    bad = tmp_path / "bad.tar"
    data = swe["docker"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a truncated `docker save`
    store = ImageStore()
    with pytest.raises(ImageError) as exc:
        store.add(str(bad))
    assert exc.value.kind == "corrupt", exc.value
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all" * 100)
    with pytest.raises(ImageError, match="corrupt archive") as exc:
        store.add(str(junk))
    assert _left(store) == ([], [])


def test_unknown_image_and_unreachable_registry(corral_home: Path) -> None:
    store = ImageStore()
    with pytest.raises(ImageError, match="unknown image") as exc:
        store.add("/no/such/image")
    assert exc.value.kind == "unknown"
    # loopback only (the suite's namespace has no route anywhere): refused at once
    with pytest.raises(ImageError, match="registry not reachable") as exc:
        store.pull("127.0.0.1:1/corral/none:latest")
    assert "127.0.0.1:1/corral/none:latest" in str(exc.value)
    with pytest.raises(ImageError, match="unknown image: not in the cache"):
        store.resolve("corral-no-such-image:latest")


def test_half_unpacked_staging_is_never_used_and_pruned(corral_home: Path, swe) -> None:
    store = ImageStore()
    img = store.add(str(swe["oci"]))
    # what an import killed mid-unpack leaves: staging of a dead process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    half = store.tmp / f"{dead.pid}-crashed" / "bundle" / "rootfs"
    half.mkdir(parents=True)
    (half / "partial").write_text("x")
    assert store.get(str(swe["oci"])).path == img.path
    assert all(i.path.parent == store.store for i in store.list())
    assert any("crashed" in g for g in store.prune())
    assert _left(store)[1] == []


def test_rm_refused_while_in_use_and_prune(corral_home: Path, swe) -> None:
    store = ImageStore()
    img = store.add(str(swe["oci"]), name="swe")
    fd = store.hold(img)
    try:
        with pytest.raises(ImageError, match="in use"):
            store.rm("swe")
        assert store.prune(everything=True) == []
    finally:
        os.close(fd)
    assert store.rm("swe").id == img.id
    assert store.get("swe") is None and _left(store) == ([], [])
    with pytest.raises(ImageError, match="unknown image"):
        store.rm("swe")


@pytest.mark.skipif(not is_root() or not shutil.which("unshare"), reason="mounts a small tmpfs")
def test_full_cache_disk_is_a_clear_error(tmp_path: Path, swe) -> None:
    """The cache on a 4 MiB filesystem (a private mount namespace: nothing left on the host)."""
    home = tmp_path / "home"
    (home / "images").mkdir(parents=True)
    corral = Path(sys.executable).with_name("corral")
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {home / 'images'} && "
        f"CORRAL_HOME={home} {corral} images import {swe['oci']}"
    )
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip()
    assert "full" in line and str(swe["oci"]) in line and "\n" not in line, line
