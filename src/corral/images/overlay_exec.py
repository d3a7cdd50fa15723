"""The Python twin of overlay_exec.c, for hosts without a C compiler (slower to start).

    python3 -I -S overlay_exec.py [--idmap UID] [--layer-size BYTES[:INODES]] LOWER UPPER WORK
        MERGED -- COMMAND...
    python3 -I -S overlay_exec.py --join PID LOWER UPPER WORK MERGED -- COMMAND...

Same steps: a private mount namespace (in an identity-mapped user namespace when not root), the
image mounted idmapped to UID first when asked (root only), the layer on a sized tmpfs when
asked, the kernel overlay (or fuse-overlayfs) mounted there
nosuid,nodev, then exec COMMAND in place with every fd inherited.
"""

import ctypes
import os
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18


def _die(what: str) -> None:
    err = ctypes.get_errno()
    sys.stderr.write(f"corral-overlay-exec: {what}: {os.strerror(err)}\n")
    os._exit(125)


SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every arch
AT_FDCWD, AT_EMPTY_PATH, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = -100, 0x1000, 1, 4
MOUNT_ATTR_IDMAP = 0x00100000


def _userns_of(uid: int) -> int:
    """A user namespace whose 0 is host `uid`, as an fd (made by a child that waits)."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        os.close(ready_r)
        os.close(hold_w)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(1)
        os.write(ready_w, b"r")
        os.read(hold_r, 1)
        os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    if os.read(ready_r, 1) != b"r":
        _die("idmap helper")
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(f"0 {uid} 1\n")
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    os.close(hold_w)
    os.waitpid(pid, 0)
    return fd


def _idmapped_bind(libc, src: str, dst: str, userns: int) -> None:  # type: ignore[no-untyped-def]
    tree = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, src.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC)
    if tree < 0:
        _die("open_tree (idmapped image)")
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_IDMAP, 0, 0, userns)
    if libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, attr, ctypes.sizeof(attr)):
        _die("mount_setattr idmap (idmapped image)")
    if libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, dst.encode(), MOVE_MOUNT_F_EMPTY_PATH):
        _die("move_mount (idmapped image)")
    os.close(tree)


def _fuse_overlay(libc, opts: str, merged: str) -> bool:  # type: ignore[no-untyped-def]
    """fuse-overlayfs in the foreground, as a child that dies with us (and so with bwrap)."""
    before = os.stat(merged).st_dev
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        if libc.prctl(1, 9) != 0 or os.getppid() != parent:  # PR_SET_PDEATHSIG, SIGKILL
            os._exit(125)
        try:
            os.execvp("fuse-overlayfs", ["fuse-overlayfs", "-f", "-o", opts, merged])
        finally:
            os._exit(125)
    for _ in range(2000):
        if os.stat(merged).st_dev != before:
            return True
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
        time.sleep(0.005)
    os.kill(pid, 9)
    return False


def main() -> None:
    a = sys.argv
    idmap = 0
    size = inodes = join = 0
    want_fuse = False
    while len(a) > 2 and a[1] in ("--idmap", "--layer-size", "--join", "--fuse"):
        if a[1] == "--fuse":
            want_fuse = True
            a = [a[0], *a[2:]]
            continue
        if a[1] == "--idmap":
            idmap = int(a[2])
        elif a[1] == "--join":
            join = int(a[2])
        else:
            size_s, _, inodes_s = a[2].partition(":")
            size, inodes = int(size_s), int(inodes_s or 0)
        a = [a[0], *a[3:]]
    if len(a) < 7 or a[5] != "--":
        sys.stderr.write("usage: overlay_exec.py LOWER UPPER WORK MERGED -- COMMAND...\n")
        os._exit(125)
    lower, upper, work, merged = a[1:5]
    libc = ctypes.CDLL(None, use_errno=True)
    if join:  # the harness's sandbox: the agent sandbox's namespaces, its mounted root
        fds = []
        if os.geteuid() != 0:
            fds.append((os.open(f"/proc/{join}/ns/user", os.O_RDONLY), CLONE_NEWUSER))
        fds.append((os.open(f"/proc/{join}/ns/mnt", os.O_RDONLY), CLONE_NEWNS))
        for fd, kind in fds:
            if libc.setns(fd, kind) != 0:
                _die("join the sandbox's namespaces")
        os.chdir("/")
        os.stat(merged)
        os.execvp(a[6], a[6:])
    uid, gid = os.getuid(), os.getgid()
    rootless = os.geteuid() != 0
    if rootless:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            _die("unshare(user, mount)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"),
                           ("gid_map", f"{gid} {gid} 1\n")):  # fmt: skip
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    elif libc.unshare(CLONE_NEWNS) != 0:
        _die("unshare(mount)")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        _die("make / private")
    if idmap:
        if rootless:
            sys.stderr.write("corral-overlay-exec: --idmap needs root\n")
            os._exit(125)
        userns = _userns_of(idmap)
        _idmapped_bind(libc, lower, merged + ".lower", userns)
        os.close(userns)
        lower = merged + ".lower"
    if size:
        layer = os.path.dirname(upper)
        topts = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
        if libc.mount(b"tmpfs", layer.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, topts.encode()):
            _die("mount layer tmpfs")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
        if idmap:
            os.chown(layer, idmap, idmap)
            os.chown(upper, idmap, idmap)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (",userxattr" if rootless else "")
    if want_fuse or libc.mount(b"overlay", merged.encode(), b"overlay", MS_NOSUID | MS_NODEV,
                               opts.encode()):  # fmt: skip
        saved = 0 if want_fuse else ctypes.get_errno()
        if not want_fuse and (not rootless or saved not in (1, 22, 19)):  # EPERM EINVAL ENODEV
            _die("mount overlay")
        fopts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (
            "" if rootless else ",allow_other")  # fmt: skip
        if not _fuse_overlay(libc, fopts, merged):
            why = "fuse asked" if want_fuse else f"kernel: {os.strerror(saved)}"
            sys.stderr.write(f"corral-overlay-exec: mount overlay: {why}; fuse-overlayfs failed"
                             " too\n")  # fmt: skip
            os._exit(125)
    try:
        os.execvp(a[6], a[6:])
    except OSError as err:
        sys.stderr.write(f"corral-overlay-exec: exec: {err}\n")
        os._exit(125)


main()
