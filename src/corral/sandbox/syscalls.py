"""The sandbox's seccomp deny list: what an agent never needs and an escape usually does.

bubblewrap loads it (`--seccomp FD`) just before it execs the sandbox's first process, so it holds for
every process in the sandbox, with or without the egress gateway's own filter stacked on top. The
program is built once per supervisor with libseccomp (python3-seccomp, a Debian package), which also
refuses every other syscall ABI (i386 `int 0x80`, x32): a filter on x86-64 numbers alone could be
walked around through the 32-bit numbers of the same calls.

Refused with EPERM: io_uring (its ring performs connects and opens no later filter sees), bpf,
perf_event_open, userfaultfd (the usual race primitive), pidfd_getfd, the keyring, kexec, module loading, the
whole mount family, namespace changes (unshare, setns), open_by_handle_at and friends, and clock,
swap, reboot and accounting calls. `socket`/`socketpair` are refused with EAFNOSUPPORT for every
family but unix, inet, inet6 and netlink-route: no vsock (the hypervisor), packet, alg, bluetooth...

Where the sandbox has the gateway's (or the exec sensor's) launcher, the calls in NOTIFIED are left
to its user-notify filter instead: the supervisor refuses them and records each attempt with pid,
exe and argv (`escape.syscall_refused`, at most 10 per call and sandbox). LIMITATION: the other
refusals here are returned by the kernel without telling the supervisor.
"""

from __future__ import annotations

import errno
import functools
import os
import sys

DENIED = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr", "unshare", "setns",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "lookup_dcookie",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "syslog", "vhangup", "iopl", "ioperm",
    "pidfd_getfd",  # copying another process's fds (the shell's own control pipe)
)  # fmt: skip
# Left to the gateway's user-notify listener when the sandbox has one (egress/launcher.c): there
# the supervisor refuses them (EPERM) and records who tried (`escape.syscall_refused`). This list
# must match the launcher's.
NOTIFIED = (
    "io_uring_setup", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "unshare",
    "setns", "mount", "pivot_root", "open_by_handle_at", "init_module", "finit_module",
    "kexec_load", "kexec_file_load", "pidfd_getfd", "fsopen", "open_tree",
)  # fmt: skip
ALLOWED_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (route only)
NETLINK_ROUTE = 0
_MAX_FAMILY = 64


class SeccompUnavailable(RuntimeError):
    """The deny list cannot be built on this host (python3-seccomp missing)."""


def _seccomp():  # noqa: ANN202 - the libseccomp module
    # the system's dist-packages only for this import: left on sys.path, a later import of a module
    # the venv lacks (pyOpenSSL, under the rl-rock SDK) would load the system's, built for other libs
    added = "/usr/lib/python3/dist-packages" not in sys.path
    if added:
        sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import seccomp
    except ImportError as err:
        raise SeccompUnavailable(f"python3-seccomp (libseccomp) is not importable: {err}") from None
    finally:
        if added:
            sys.path.remove("/usr/lib/python3/dist-packages")
    return seccomp


@functools.lru_cache(maxsize=2)
def program(notified: bool = False) -> bytes:
    """The BPF program, built once per supervisor. `notified`: the sandbox's launcher installs a
    user-notify filter that refuses and records the NOTIFIED calls, so they are left out here
    (an ERRNO here would win over the notification, and nothing would be recorded)."""
    sc = _seccomp()
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    for name in DENIED:
        if notified and name in NOTIFIED:
            continue
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError):  # a syscall this libseccomp/arch does not know
            continue
    for call in ("socket", "socketpair"):
        for family in range(_MAX_FAMILY):
            if family not in ALLOWED_FAMILIES:
                f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.EQ, family))
        f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.GE, _MAX_FAMILY))
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.EQ, 16),
               sc.Arg(2, sc.NE, NETLINK_ROUTE))  # fmt: skip
    fd = os.memfd_create("corral-seccomp-build", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        f.export_bpf(out)
        out.flush()
        out.seek(0)
        return out.read()


def program_fd(notified: bool = False) -> int:
    """A fresh readable fd holding the program, for one bwrap (`--seccomp FD` reads it to EOF)."""
    data = program(notified)
    fd = os.memfd_create("corral-seccomp", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


__all__ = ["ALLOWED_FAMILIES", "DENIED", "SeccompUnavailable", "program", "program_fd"]
