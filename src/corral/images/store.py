"""The image store: images unpacked once under `$CORRAL_HOME/images`, shared read-only.

    images/
      store/<id>/rootfs      the unpacked root filesystem (the lower layer of every sandbox on it)
      store/<id>/image.json  source, config (env, working dir, user), size, when
      names.json             name -> id (a source path, a registry reference, or a name given)
      tmp/<pid>-*            staging: an image is unpacked here, then renamed into store/ at once

An id is content: the image config's digest for OCI and docker images (the id `docker images` and
`podman images` show), the sha256 of the tar stream for a bare root filesystem. Nothing half
unpacked is ever used: unpacking happens in a staging directory of the importing process and only a
finished tree is renamed into place; a crashed import leaves staging that `prune` (or the next
import) removes. A sandbox holds a shared lock on its image while it runs, so `rm`/`prune` never
pull a lower layer from under a running sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.images import tools
from corral.images.config import ImageConfig, elf_arch, host_arch
from corral.images.errors import ImageError
from corral.store.paths import corral_home

TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:")
PULL_TIMEOUT = 600.0


@dataclass
class Image:
    id: str  # "sha256:<hex>"
    names: list[str]
    source: str
    kind: str  # oci-dir | docker-archive | oci-archive | registry | rootfs-dir | rootfs-tar
    config: ImageConfig
    size: int
    created: float
    path: Path  # store/<hex>

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[-1][:12]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


def _rmtree(path: Path) -> None:
    """Remove a tree even where an image made directories read-only (a rootless unpack keeps the
    image's modes) or overlayfs left its mode-0 work directory."""

    def fix(func, p, _exc):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            parent = os.path.dirname(p)
            os.chmod(parent, stat.S_IRWXU | os.stat(parent).st_mode)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
                shutil.rmtree(p, onerror=fix)
            else:
                func(p)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=fix)


def _du(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                total += st.st_blocks * 512
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ImageStore:
    """The content-addressed cache of unpacked images (one per `$CORRAL_HOME`)."""

    def __init__(self, home: Path | None = None) -> None:
        self.root = (home or corral_home()) / "images"
        self.store = self.root / "store"
        self.tmp = self.root / "tmp"
        self.names_file = self.root / "names.json"

    # ------------------------------------------------------------ bookkeeping
    def _ensure(self) -> None:
        for d in (self.root, self.store, self.tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _names(self) -> dict[str, str]:
        try:
            data = json.loads(self.names_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save_names(self, names: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".names-", dir=self.root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(names, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.names_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self, hexid: str, names: dict[str, str] | None = None) -> Image | None:
        path = self.store / hexid
        try:
            meta = json.loads((path / "image.json").read_text())
        except (OSError, ValueError):
            return None
        names = self._names() if names is None else names
        full = "sha256:" + hexid
        return Image(
            id=full,
            names=sorted(n for n, i in names.items() if i == full),
            source=meta.get("source", ""),
            kind=meta.get("kind", ""),
            config=ImageConfig.model_validate(meta.get("config") or {}),
            size=int(meta.get("size", 0)),
            created=float(meta.get("created", 0.0)),
            path=path,
        )

    def list(self) -> list[Image]:
        if not self.store.is_dir():
            return []
        names = self._names()
        out = [img for d in sorted(self.store.iterdir()) if (img := self._load(d.name, names))]
        return sorted(out, key=lambda i: i.created, reverse=True)

    def get(self, ref: str) -> Image | None:
        """An image by name, by id (`sha256:...`) or by an id prefix of at least 12 digits."""
        names = self._names()
        key = _name_key(ref)
        if key in names:
            return self._load(names[key].split(":", 1)[-1], names)
        hexid = ref.split(":", 1)[1] if ref.startswith("sha256:") else ref
        if len(hexid) >= 12 and all(c in "0123456789abcdef" for c in hexid) and self.store.is_dir():
            hits = [d.name for d in self.store.iterdir() if d.name.startswith(hexid)]
            if len(hits) == 1:
                return self._load(hits[0], names)
        return None

    # ------------------------------------------------------------ adding
    def resolve(self, ref: str, *, fetch: bool = True) -> Image:
        """The image a sandbox asked for: from the cache, else imported (a path) or pulled."""
        img = self.get(ref)
        if img is not None:
            return img
        if not fetch:
            raise ImageError(ref, "unknown image (not in the cache; `corral images list`)",
                             "unknown")  # fmt: skip
        try:
            return self.add(ref)
        except ImageError as err:
            if err.kind != "network":
                raise
            raise ImageError(ref, "unknown image: not in the cache, and its registry is not "
                             f"reachable to pull it ({err.cause})", "network") from None  # fmt: skip

    def add(self, source: str, name: str | None = None) -> Image:
        """Import a path (OCI layout, docker/OCI archive, rootfs directory or tarball) or pull a
        registry reference."""
        path = Path(source).expanduser()
        if source.startswith(TRANSPORTS):
            return self.pull(source, name)
        if path.exists():
            return self.import_path(path, name, label=source)
        if "/" in source and Path(source.rsplit(":", 1)[0]).exists():
            return self.import_path(path, name, label=source)  # "layout:tag"
        if source.startswith(("/", "./", "../", "~")):
            raise ImageError(source, "unknown image: no such file or directory", "unknown")
        return self.pull(source, name)

    def import_path(self, path: Path, name: str | None = None, label: str | None = None) -> Image:
        label = label or str(path)
        tag = None
        if not path.exists() and ":" in path.name:
            base, tag = str(path).rsplit(":", 1)
            path = Path(base)
        if not path.exists():
            raise ImageError(label, "unknown image: no such file or directory", "unknown")
        path = path.resolve()
        names = [str(path) if tag is None else f"{path}:{tag}"] + ([name] if name else [])
        if path.is_dir():
            if (path / "oci-layout").is_file():
                src = f"oci:{path}" + (f":{tag}" if tag else "")
                return self._via_skopeo(label, src, "oci-dir", names)
            return self._rootfs(label, path, "rootfs-dir", names)
        kind = _archive_kind(path, label)
        if kind == "docker-archive":
            return self._via_skopeo(label, f"docker-archive:{path}", kind, names)
        if kind == "oci-archive":
            return self._via_skopeo(label, f"oci-archive:{path}" + (f":{tag}" if tag else ""),
                                    kind, names)  # fmt: skip
        return self._rootfs(label, path, "rootfs-tar", names)

    def pull(self, ref: str, name: str | None = None) -> Image:
        src = ref if ref.startswith(TRANSPORTS) else f"docker://{ref}"
        names = [ref] + ([name] if name else [])
        return self._via_skopeo(ref, src, "registry" if src.startswith("docker://") else "oci",
                                names)  # fmt: skip

    def _staging(self) -> Path:
        self._ensure()
        self._sweep_staging()
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.tmp))

    def _sweep_staging(self) -> list[str]:
        gone = []
        with contextlib.suppress(OSError):
            for d in self.tmp.iterdir():
                head = d.name.split("-", 1)[0]
                dead = head.isdigit() and int(head) != os.getpid() and not _pid_alive(int(head))
                if dead or d.name.startswith("del-"):  # a dead import's staging, a half removal
                    _rmtree(d)
                    gone.append(d.name)
        return gone

    def _fail(self, label: str, stage: str, proc: subprocess.CompletedProcess[str]) -> ImageError:
        kind = tools.classify(proc.stderr)
        detail = tools.last_line(proc.stderr)
        cause = {
            "full": f"the image cache disk is full ({self.root}): {detail}",
            "network": f"registry not reachable (no network route to it from this host): {detail}",
            "unknown": f"unknown image: {detail}",
            "corrupt": f"corrupt or unreadable image ({stage}): {detail}",
        }.get(kind, f"{stage} failed: {detail}")
        return ImageError(label, cause, kind)

    def _via_skopeo(self, label: str, src: str, kind: str, names: list[str]) -> Image:
        skopeo = tools.require("skopeo")
        umoci = tools.require("umoci")
        staging = self._staging()
        try:
            layout = staging / "layout"
            argv = [skopeo, "copy", "--quiet", "--retry-times", "0"]
            if src.startswith("docker://"):
                argv += ["--command-timeout", f"{int(PULL_TIMEOUT)}s"]
            argv += [src, f"oci:{layout}:image"]
            try:
                proc = tools.run(argv, timeout=PULL_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                raise ImageError(label, "registry not reachable: skopeo timed out",
                                 "network") from None  # fmt: skip
            if proc.returncode != 0:
                raise self._fail(label, "skopeo copy", proc)
            doc, digest = _layout_config(layout, label)
            config = ImageConfig.from_oci(doc)
            _check_arch(label, config.architecture)
            hexid = digest.split(":", 1)[1]
            existing = self._load(hexid)
            if existing is not None:
                return self._name(existing, names)
            bundle = staging / "bundle"
            bundle.mkdir()
            # `raw unpack`: the root filesystem alone (no runtime bundle, no mtree manifest, which
            # would hash every file again: ~40% of the time)
            argv = [umoci, "raw", "unpack"]
            if os.geteuid() != 0:
                argv.append("--rootless")
            argv += ["--image", f"{layout}:image", str(bundle / "rootfs")]
            proc = tools.run(argv)
            if proc.returncode != 0:
                raise self._fail(label, "umoci unpack", proc)
            _rmtree(layout)
            for extra in bundle.iterdir():  # keep the root filesystem only
                if extra.name != "rootfs":
                    _rmtree(extra) if extra.is_dir() else extra.unlink()
            return self._commit(label, bundle, hexid, src, kind, config, names)
        except OSError as err:
            raise self._os_error(label, err) from None
        finally:
            _rmtree(staging)

    def _rootfs(self, label: str, path: Path, kind: str, names: list[str]) -> Image:
        tar = tools.require("tar")
        staging = self._staging()
        try:
            bundle = staging / "bundle"
            rootfs = bundle / "rootfs"
            rootfs.mkdir(parents=True)
            rootless = os.geteuid() != 0
            extract = [tar, "-x", "--numeric-owner", "-C", str(rootfs)]
            if rootless:  # device nodes cannot be made; the sandbox has its own /dev anyway
                extract += ["--no-same-owner", "--exclude=./dev/*", "--exclude=dev/*"]
            else:
                extract += ["--same-owner", "-p"]
            h = hashlib.sha256()
            if kind == "rootfs-dir":
                create = subprocess.Popen(
                    [tar, "-c", "--sort=name", "--numeric-owner", "-C", str(path), "."],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                ext = subprocess.Popen([*extract, "-f", "-"], stdin=subprocess.PIPE,
                                       stderr=subprocess.PIPE)  # fmt: skip
                assert create.stdout and ext.stdin
                try:
                    while chunk := create.stdout.read(1 << 20):
                        h.update(chunk)
                        ext.stdin.write(chunk)
                finally:
                    ext.stdin.close()
                    create.wait()
                    ext.wait()
                err = (ext.stderr.read() if ext.stderr else b"").decode(errors="replace")
                cerr = (create.stderr.read() if create.stderr else b"").decode(errors="replace")
                if ext.returncode != 0 or create.returncode not in (0, 1):
                    raise self._fail(label, "copying the root filesystem",
                                     subprocess.CompletedProcess([], 1, "", err + cerr))  # fmt: skip
            else:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                proc = tools.run([*extract, "-f", str(path)])
                if proc.returncode != 0:
                    if tools.classify(proc.stderr) == "full":
                        raise self._fail(label, "unpacking the tarball", proc)
                    raise ImageError(label, "corrupt archive: " + tools.last_line(proc.stderr),
                                     "corrupt")  # fmt: skip
            hexid = h.hexdigest()
            arch = elf_arch(rootfs / "bin" / "sh") or elf_arch(rootfs / "usr" / "bin" / "sh")
            config = ImageConfig(architecture=arch or "")
            _check_arch(label, config.architecture)
            existing = self._load(hexid)
            if existing is not None:
                return self._name(existing, names)
            return self._commit(label, bundle, hexid, str(path), kind, config, names)
        except OSError as err:
            raise self._os_error(label, err) from None
        finally:
            _rmtree(staging)

    def _os_error(self, label: str, err: OSError) -> ImageError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return ImageError(label, f"the image cache disk is full ({self.root}): {err}", "full")
        return ImageError(label, f"could not store the image: {err}")

    def _commit(self, label: str, bundle: Path, hexid: str, source: str, kind: str,
                config: ImageConfig, names: list[str]) -> Image:  # fmt: skip
        """Write image.json and rename the finished tree into the store: the only way in."""
        if not (bundle / "rootfs").is_dir():
            raise ImageError(label, "corrupt image: unpacking produced no root filesystem",
                             "corrupt")  # fmt: skip
        sh = bundle / "rootfs" / "bin" / "sh"
        arch = elf_arch(sh) if sh.exists() else None
        if arch:
            _check_arch(label, arch)
        meta = {
            "id": "sha256:" + hexid,
            "source": source,
            "kind": kind,
            "config": config.model_dump(),
            "size": _du(bundle / "rootfs"),
            "created": time.time(),
        }
        (bundle / "image.json").write_text(json.dumps(meta, indent=1))
        with self._locked():
            target = self.store / hexid
            if not target.exists():
                os.rename(bundle, target)
            img = self._load(hexid)
            assert img is not None
            return self._name(img, names, locked=True)

    def _name(self, img: Image, names: list[str], locked: bool = False) -> Image:
        ctx = contextlib.nullcontext() if locked else self._locked()
        with ctx:
            table = self._names()
            for n in names:
                table[_name_key(n)] = img.id
            self._save_names(table)
        img.names = sorted({*img.names, *(_name_key(n) for n in names)})
        return img

    # ------------------------------------------------------------ use and removal
    def hold(self, img: Image) -> int:
        """A shared lock a running sandbox keeps on its image (an fd to close when it ends)."""
        fd = os.open(img.path / "image.json", os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not (img.path / "image.json").exists():  # removed between lookup and lock
            os.close(fd)
            raise ImageError(img.names[0] if img.names else img.short_id,
                             "unknown image: it was removed", "unknown")  # fmt: skip
        return fd

    def _in_use(self, img: Image) -> bool:
        try:
            fd = os.open(img.path / "image.json", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _delete(self, img: Image) -> None:
        self._ensure()
        grave = Path(tempfile.mkdtemp(prefix="del-", dir=self.tmp))
        os.rename(img.path, grave / "img")
        _rmtree(grave)

    def rm(self, ref: str, force: bool = False) -> Image:
        """Remove an image (by name or id) and every name it has; refused while a sandbox runs
        on it."""
        img = self.get(ref)
        if img is None:
            raise ImageError(ref, "unknown image (not in the cache; `corral images list`)",
                             "unknown")  # fmt: skip
        with self._locked():
            if self._in_use(img):
                raise ImageError(ref, "in use by a running sandbox", "busy")
            table = {k: v for k, v in self._names().items() if v != img.id}
            self._save_names(table)
            self._delete(img)
        return img

    def prune(self, everything: bool = False) -> list[str]:
        """Remove unnamed images (all images not in use, with `everything`) and leftover
        staging of dead imports; returns what went."""
        gone = [f"staging {n}" for n in self._sweep_staging()]
        if not self.store.is_dir():
            return gone
        with self._locked():
            table = self._names()
            named = set(table.values())
            for img in self.list():
                if (everything or img.id not in named) and not self._in_use(img):
                    self._delete(img)
                    table = {k: v for k, v in table.items() if v != img.id}
                    gone.append(img.id)
            self._save_names(table)
        return gone


def _name_key(ref: str) -> str:
    """Names of local paths are their absolute form, so `./img` and `/abs/img` are one."""
    if ref.startswith(("/", "./", "../", "~")):
        base, sep, tag = ref.rpartition(":") if ":" in Path(ref).name else (ref, "", "")
        p = Path(base).expanduser()
        with contextlib.suppress(OSError):
            p = p.resolve()
        return str(p) + (sep + tag if sep else "")
    return ref


def _archive_kind(path: Path, label: str) -> str:
    """docker-archive (`docker save`: manifest.json), oci-archive (oci-layout) or rootfs-tar."""
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:
                name = member.name.lstrip("./")
                if name == "manifest.json":
                    return "docker-archive"
                if name == "oci-layout":
                    return "oci-archive"
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        detail = " ".join(str(err).split())[:200]
        raise ImageError(label, f"corrupt archive: not a readable tar file ({detail})",
                         "corrupt") from None  # fmt: skip
    return "rootfs-tar"


def _layout_config(layout: Path, label: str) -> tuple[dict, str]:  # type: ignore[type-arg]
    """The image config document and its digest, from the OCI layout skopeo wrote."""

    def blob(digest: str) -> bytes:
        algo, _, hexd = digest.partition(":")
        data = (layout / "blobs" / algo / hexd).read_bytes()
        if algo == "sha256" and hashlib.sha256(data).hexdigest() != hexd:
            raise ImageError(label, f"corrupt image: blob {digest} does not match its digest",
                             "corrupt")  # fmt: skip
        return data

    try:
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        digest = manifest["config"]["digest"]
        return json.loads(blob(digest)), digest
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ImageError(label, f"corrupt image: unreadable manifest or config ({err})",
                         "corrupt") from None  # fmt: skip


def _check_arch(label: str, arch: str) -> None:
    if arch and arch != host_arch():
        raise ImageError(label, f"the image is for {arch}, this host runs {host_arch()}",
                         "architecture")  # fmt: skip
