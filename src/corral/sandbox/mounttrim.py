"""Which host mounts a sandbox's bubblewrap never binds from: `corral-setid` detaches them from its
own copy of the mount table before it execs bwrap (`--trim=`, see setid.c).

Why: bwrap re-reads the whole mount table (`/proc/self/mountinfo`, its host mounts included) at
every bind, remount and device node it sets up, about twenty per sandbox. Each host mount is read
and parsed twenty times a start: -0.6 ms a start with this VM's 20 mounts (11 of them cgroup
hierarchies), several milliseconds on a docker or Kubernetes node, where every container and pod
volume is a mount of its own.

A mount is kept when a bind source lies at or under it, or it lies under a bind source (a recursive
bind carries it into the sandbox). Sources are compared by their real paths, so a source reached
through a symlink keeps the mount it really lies on. Keeping too much is only slower; detaching a
source's mount would make bwrap refuse to start (loudly: "Can't find source path"), never show
the sandbox something else.

The table is read once and again only when the kernel says it changed (poll() on an open
`/proc/self/mountinfo` flags every mount and unmount), so a start costs one poll, not a read.
A rename is no mount event, so a path read earlier may since lead elsewhere: each trim names the
device and inode of the mount's root as well, and setid detaches only a mount root that matches,
reached with no symlink followed, through the fd that found it (a red-team finding: a FUSE mount
of a user's own on the list, then its parent swapped for a symlink, made the detach land on any
mount the link pointed at).
"""

from __future__ import annotations

import functools
import os
import re
import select
import stat
import threading

# options whose next argument is a host path bwrap binds from
SOURCE_OPTIONS = frozenset({"--bind", "--bind-try", "--ro-bind", "--ro-bind-try", "--dev-bind",
                            "--dev-bind-try", "--overlay-src"})  # fmt: skip
# what bwrap itself reaches on the host whatever the sandbox: its program and libraries, the device
# nodes `--dev` binds (a terminal's pts too, as /dev/console), /proc (its own setup) and /tmp
# (where it mounts the new root)
ALWAYS = ("/usr", "/lib", "/lib64", "/etc", "/proc", "/tmp", "/dev/null", "/dev/zero", "/dev/full",
          "/dev/random", "/dev/urandom", "/dev/tty", "/dev/pts")  # fmt: skip

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mount_points(mountinfo: str) -> list[str]:
    """The mount points of a mountinfo text (field 5, the kernel's octal escapes undone)."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ", 5)
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points


def sources(argv: list[str]) -> set[str]:
    """Every host path the argv binds from, as real paths, with what bwrap always needs. Every
    position is looked at, so a real source is never missed; a value that merely looks like an
    option only adds a path, which keeps more mounts (safe). A relative source (bwrap resolves it
    from its own working directory) keeps everything: `/`."""
    found = set(_fixed(argv[0] if argv else "", _table.generation))
    for i, arg in enumerate(argv[:-1]):
        if arg in SOURCE_OPTIONS:
            src = argv[i + 1]
            found.add(os.path.realpath(src) if src.startswith("/") else "/")
    return found


@functools.lru_cache(maxsize=4)
def _fixed(program: str, generation: int) -> frozenset[str]:
    """ALWAYS and bwrap's own path, as real paths: system paths, resolved once per reading of
    the mount table (`generation`), not at every start (~85 us of realpath). The argv's other
    sources (the workspace's among them) are resolved at every call."""
    return frozenset(os.path.realpath(p) for p in (*ALWAYS, *([program] if program else [])))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def trims(points: list[str], used: set[str]) -> list[str]:
    """The mount points to detach: none at, above or below a used path, never `/`, and none
    inside one already listed (detaching a mount takes everything mounted below it)."""
    out: list[str] = []
    for p in sorted(set(points), key=lambda x: (x.count("/"), x)):
        if p == "/" or not p.startswith("/"):
            continue
        if any(_under(p, t) for t in out):
            continue
        if any(_under(s, p) or _under(p, s) for s in used):
            continue
        out.append(p)
    return out


class _MountTable:
    """This process's mount points, re-read only when the kernel flags a change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._points: list[str] = []
        self.generation = 0  # readings of the table so far

    def points(self) -> list[str]:
        with self._lock:
            if self._fd < 0:
                self._fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
                return self._read()
            poller = select.poll()
            poller.register(self._fd, select.POLLPRI)
            if poller.poll(0):  # POLLPRI|POLLERR: mounted or unmounted since the last read
                return self._read()
            return self._points

    def _read(self) -> list[str]:
        os.lseek(self._fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        self._points = parse_mount_points(b"".join(chunks).decode(errors="surrogateescape"))
        self.generation += 1
        return self._points


_table = _MountTable()


def trim_args(argv: list[str]) -> list[str]:
    """`--trim=` arguments for `corral-setid` before `argv` (bwrap's); none when the mount table
    cannot be read or `CORRAL_MOUNT_TRIM=off` (to compare, or to rule it out)."""
    if os.environ.get("CORRAL_MOUNT_TRIM") == "off":
        return []
    try:
        points = _table.points()
    except OSError:
        return []
    out = []
    for p in trims(points, sources(argv)):
        try:
            st = os.lstat(p)  # the mount's root, as setid must find it (a link: never)
        except OSError:
            continue
        if not stat.S_ISLNK(st.st_mode):
            out.append(f"--trim={st.st_dev}:{st.st_ino}:{p}")
    return out
