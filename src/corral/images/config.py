"""What an image says about how to run in it: working directory, environment, user, PATH.

Read from the OCI image config (`config.Env`, `config.WorkingDir`, `config.User`); a bare root
filesystem has none, so it gets the defaults a container runtime would use.
"""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# platform.machine() -> the OCI / Go architecture name
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip
# ELF e_machine -> OCI architecture name
_ELF = {62: "amd64", 183: "arm64", 40: "arm", 3: "386", 21: "ppc64le", 22: "s390x",
        243: "riscv64"}  # fmt: skip


def host_arch() -> str:
    m = platform.machine()
    return _ARCH.get(m, m)


def elf_arch(path: Path) -> str | None:
    """The architecture of an ELF binary (a rootfs's /bin/sh), or None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    endian = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(endian + "H", head[18:20])
    return _ELF.get(machine, f"elf-{machine}")


class ImageConfig(BaseModel):
    """The parts of an OCI image config corral applies to a sandbox."""

    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str = "/"
    user: str = ""
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    architecture: str = ""
    os: str = "linux"

    @classmethod
    def from_oci(cls, doc: dict) -> ImageConfig:  # type: ignore[type-arg]
        cfg = doc.get("config") or {}
        env: dict[str, str] = {}
        for item in cfg.get("Env") or []:
            k, _, v = str(item).partition("=")
            if k:
                env[k] = v
        return cls(
            env=env,
            working_dir=cfg.get("WorkingDir") or "/",
            user=cfg.get("User") or "",
            entrypoint=list(cfg.get("Entrypoint") or []),
            cmd=list(cfg.get("Cmd") or []),
            architecture=doc.get("architecture") or "",
            os=doc.get("os") or "linux",
        )

    @property
    def path(self) -> str:
        return self.env.get("PATH") or DEFAULT_PATH


def _lookup(file: Path, name: str, id_field: int) -> tuple[int, int, str] | None:
    """(id, primary gid, home) for `name` in an image's /etc/passwd (or the id in /etc/group)."""
    try:
        lines = file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) > id_field and parts[0] == name and parts[id_field].isdigit():
            gid = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
            home = parts[5] if len(parts) > 5 else "/"
            return int(parts[id_field]), gid, home
    return None


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, str]:
    """The image's `User` ("name", "uid", "name:group", "uid:gid") as (uid, gid, home), read
    from the image's own /etc/passwd and /etc/group; root when it names nobody."""
    if not user:
        return 0, 0, "/root"
    name, _, group = user.partition(":")
    passwd = rootfs / "etc" / "passwd"
    if name.isdigit():
        uid, gid, home = int(name), int(name), "/"
        found = None
        try:
            for line in passwd.read_text(errors="replace").splitlines():
                parts = line.split(":")
                if len(parts) > 5 and parts[2] == name:
                    found = (int(parts[3]) if parts[3].isdigit() else uid, parts[5])
                    break
        except OSError:
            pass
        if found:
            gid, home = found
    else:
        hit = _lookup(passwd, name, 2)
        if hit is None:
            raise ValueError(f"the image's user {name!r} is not in its /etc/passwd")
        uid, gid, home = hit
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            ghit = _lookup(rootfs / "etc" / "group", group, 2)
            if ghit is None:
                raise ValueError(f"the image's group {group!r} is not in its /etc/group")
            gid = ghit[0]
    return uid, gid, home or "/"


def safe_in_root(path: str) -> str:
    """An absolute, normalised path inside the image (no '..' escaping its root)."""
    norm = os.path.normpath("/" + path.lstrip("/"))
    return norm
