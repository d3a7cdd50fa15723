"""Small task images built from this host's own files (no registry is reachable here).

`swe_image()` is SWE-bench-shaped: a tiny Python repo at /testbed (a bug in `calc.add`), python3
with pytest, bash and coreutils, an empty /tests for the harness to fill. It is assembled from the
host's binaries and their libraries, packed as one layer into an OCI layout with umoci, and also
exported as a `docker save` archive with skopeo and as a bare rootfs tarball. Everything is cached
under $CORRAL_TEST_CACHE (default /var/tmp/corral-test-images/<uid>), keyed by this file's content,
so the suite builds it once per machine; the benchmarks use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PY = "/usr/bin/python3.11"
BINARIES = ["bash", "sh", "dash", "ls", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "touch", "echo",
            "env", "id", "sleep", "chmod", "grep", "sed", "head", "tail", "wc", "true", "false",
            "test", "stat", "du", "find", "dirname", "basename", "pwd", "uname", "printf",
            "readlink", "ln", "sort", "tr", "cut", "date", "whoami", "dd", "sync", "df",
            "timeout", "kill", "ps", "nohup", "ssh", "curl", "xargs", "seq", "truncate"]  # fmt: skip
PY_PACKAGES = ["pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py.py", "pygments"]
PY_SKIP = {"test", "__pycache__", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo",
           "pydoc_data", "config-3.11-x86_64-linux-gnu"}  # fmt: skip

CALC = "def add(a, b):\n    return a - b  # the bug the agent must fix\n"
TEST_X = (
    "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_add_negative():\n    assert add(-1, -1) == -2\n"
)
ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1", "TASK=swe-tiny"]


def cache_dir() -> Path:
    base = os.environ.get("CORRAL_TEST_CACHE") or f"/var/tmp/corral-test-images/{os.getuid()}"
    return Path(base)


def _key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _libs(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    found = set(re.findall(r"(/[^\s]+\.so[^\s]*)", out))
    return {p for p in found if os.path.exists(p)}


def _copy(src: str, root: Path) -> None:
    """Copy a host path into the rootfs at the same place (its real file, links followed)."""
    real = os.path.realpath(src)
    for path in {src, real}:
        dest = root / path.lstrip("/")
        if dest.exists() or dest.is_symlink():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path == src and os.path.islink(src) and real != src:
            os.symlink(os.readlink(src), dest)
        elif os.path.isfile(path):
            shutil.copy2(path, dest)


def build_rootfs(root: Path, site_packages: Path) -> None:
    root.mkdir(parents=True)
    for d in (
        "usr/bin",
        "usr/lib",
        "usr/lib64",
        "usr/sbin",
        "etc",
        "tmp",
        "root",
        "testbed",
        "tests",
        "workspace",
        "proc",
        "dev",
        "var/tmp",
        "usr/lib/python3/dist-packages",
        "usr/local/bin",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)  # fmt: skip
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                         ("sbin", "usr/sbin")):  # fmt: skip
        os.symlink(target, root / link)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    exes = [shutil.which(b, path="/usr/bin:/bin") for b in BINARIES] + [PY]
    for exe in [e for e in exes if e]:
        dest = root / "usr/bin" / os.path.basename(exe)
        if not dest.exists():
            shutil.copy2(os.path.realpath(exe), dest)
        for lib in _libs(exe):
            _copy(lib, root)
    os.symlink("python3.11", root / "usr/bin/python3")
    os.symlink("python3", root / "usr/bin/python")
    std = Path("/usr/lib/python3.11")
    shutil.copytree(std, root / "usr/lib/python3.11", symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in PY_SKIP])  # fmt: skip
    for so in (std / "lib-dynload").glob("*.so"):
        for lib in _libs(str(so)):
            _copy(lib, root)
    dist = root / "usr/lib/python3/dist-packages"
    for name in PY_PACKAGES:
        src = site_packages / name
        if src.is_dir():
            shutil.copytree(src, dist / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy2(src, dist / name)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
        "agent:x:1000:1000:agent:/testbed:/bin/bash\n"
    )
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\nagent:x:1000:\n")
    (root / "etc/hostname").write_text("task\n")
    (root / "testbed/calc.py").write_text(CALC)
    (root / "testbed/README").write_text("tiny task repo: make tests/test_x.py pass\n")
    (root / "etc/image-marker").write_text("from-the-image\n")


def _layer_tar(rootfs: Path, out: Path) -> None:
    """One layer, owned by root whoever builds it (as an image built by root would be)."""
    subprocess.run(["tar", "-c", "--sort=name", "--numeric-owner", "--owner=0", "--group=0",
                    "--mtime=@1700000000", "-f", str(out), "-C", str(rootfs), "."],
                   check=True)  # fmt: skip


def _oci_layout(layer: Path, layout: Path, arch: str = "amd64", workdir: str = "/testbed",
                user: str = "") -> None:  # fmt: skip
    umoci = shutil.which("umoci")
    assert umoci, "umoci is needed to build the test images (make install)"
    img = f"{layout}:latest"
    subprocess.run([umoci, "init", "--layout", str(layout)], check=True)
    subprocess.run([umoci, "new", "--image", img], check=True)
    subprocess.run([umoci, "raw", "add-layer", "--no-history", "--image", img, str(layer)], stderr=subprocess.DEVNULL,
                   check=True)  # fmt: skip
    cfg = [umoci, "config", "--no-history", "--image", img, "--config.workingdir", workdir,
           "--config.cmd", "/bin/bash", "--architecture", arch, "--created",
           "2024-01-01T00:00:00Z"]  # fmt: skip
    for e in ENV:
        cfg += ["--config.env", e]
    if user:
        cfg += ["--config.user", user]
    subprocess.run(cfg, check=True)
    subprocess.run([umoci, "gc", "--layout", str(layout)], check=True)


def swe_image() -> dict[str, Path]:
    """Paths of the SWE-shaped test image in each form: oci (layout dir), docker (docker save
    archive), rootfs (tar), arm64 (an OCI layout claiming another architecture), rome (the same
    files working in /workspace, where the ROME demo's acts expect their workspace), user (the
    same, run as its user `agent`)."""
    base = cache_dir() / _key()
    forms = {"oci": base / "oci", "docker": base / "docker.tar", "rootfs": base / "rootfs.tar",
             "arm64": base / "arm64", "rome": base / "rome", "user": base / "user"}  # fmt: skip
    if all(p.exists() for p in forms.values()):
        return forms
    top = base.parent.parent
    if not top.exists():  # shared by every uid's suite run (the unprivileged pass included)
        top.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(top, 0o1777)
    base.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(base.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(p.exists() for p in forms.values()):
            return forms
        with tempfile.TemporaryDirectory(dir=base.parent) as tmp:
            work = Path(tmp) / "out"
            work.mkdir()
            site = Path(sys.prefix) / "lib" / "python3.11" / "site-packages"
            build_rootfs(Path(tmp) / "rootfs", site)
            _layer_tar(Path(tmp) / "rootfs", work / "rootfs.tar")
            _oci_layout(work / "rootfs.tar", work / "oci")
            skopeo = shutil.which("skopeo")
            assert skopeo, "skopeo is needed to build the test images (make install)"
            subprocess.run([skopeo, "copy", "--quiet", f"oci:{work / 'oci'}:latest",
                            f"docker-archive:{work / 'docker.tar'}:corral/swe-tiny:latest"],
                           check=True)  # fmt: skip
            _oci_layout(work / "rootfs.tar", work / "arm64", arch="arm64")
            _oci_layout(work / "rootfs.tar", work / "rome", workdir="/workspace")
            _oci_layout(work / "rootfs.tar", work / "user", user="agent")
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(base)
            os.rename(work, base)
        for old in base.parent.iterdir():  # images an earlier version of this file built
            if old.is_dir() and old != base and not old.name.startswith("tmp"):
                shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(lock)
    return forms


if __name__ == "__main__":
    for k, v in swe_image().items():
        print(k, v)
