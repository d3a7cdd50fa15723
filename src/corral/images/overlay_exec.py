"""The Python twin of overlay_exec.c, for hosts without a C compiler (slower to start).

    python3 -I -S overlay_exec.py LOWER UPPER WORK MERGED -- COMMAND...

Same steps: a private mount namespace (in an identity-mapped user namespace when not root), the
kernel overlay mounted there nosuid,nodev, then exec COMMAND in place with every fd inherited.
"""

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18


def _die(what: str) -> None:
    err = ctypes.get_errno()
    sys.stderr.write(f"corral-overlay-exec: {what}: {os.strerror(err)}\n")
    os._exit(125)


def main() -> None:
    a = sys.argv
    if len(a) < 7 or a[5] != "--":
        sys.stderr.write("usage: overlay_exec.py LOWER UPPER WORK MERGED -- COMMAND...\n")
        os._exit(125)
    lower, upper, work, merged = a[1:5]
    libc = ctypes.CDLL(None, use_errno=True)
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
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (",userxattr" if rootless else "")
    if libc.mount(b"overlay", merged.encode(), b"overlay", MS_NOSUID | MS_NODEV, opts.encode()):
        _die("mount overlay")
    try:
        os.execvp(a[6], a[6:])
    except OSError as err:
        sys.stderr.write(f"corral-overlay-exec: exec: {err}\n")
        os._exit(125)


main()
