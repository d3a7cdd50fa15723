"""Which sandbox process owns a socket, read from the host's /proc.

The gateway sees a connection arrive on a listener inside the sandbox's network namespace; the
namespace's own /proc/<pid>/net tables map the client's port to a socket inode, and the sandbox's
processes' fd tables map the inode to a pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

_libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438


@dataclass
class ProcInfo:
    pid: int | None = None
    exe: str | None = None
    argv: list[str] | None = None
    parents: list[list[str]] = field(default_factory=list)


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of another process's fd (same uid, or root): how the launcher hands over its sockets."""
    pidfd = os.pidfd_open(pid)
    try:
        new = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if new < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return int(new)
    finally:
        os.close(pidfd)


def ns_last_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        return None
    return None


def find_by_ns_pid(root: int, ns_pid: int) -> int | None:
    """Host pid of the descendant of `root` whose pid inside its namespace is `ns_pid`."""
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid != root and ns_last_pid(pid) == ns_pid:
            return pid
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
            todo += [int(x) for x in f.read().split()]
    return None


def descendants(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
            todo += [int(x) for x in f.read().split()]
    return out


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else None


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def info(pid: int | None, depth: int = 3) -> ProcInfo:
    if not pid:
        return ProcInfo()
    out = ProcInfo(pid=pid, argv=_cmdline(pid))
    with contextlib.suppress(OSError):
        out.exe = os.readlink(f"/proc/{pid}/exe")
    ppid = pid
    for _ in range(depth):
        try:
            with open(f"/proc/{ppid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        argv = _cmdline(ppid)
        if not argv or ppid <= 1:
            break
        out.parents.append(argv)
    return out


def socket_inode(
    netns_pid: int, proto: str, local_port: int, remote_port: int | None
) -> int | None:
    """Inode of the socket bound to local_port (and talking to remote_port) in that netns."""
    for table in (proto, proto + "6"):
        try:
            with open(f"/proc/{netns_pid}/net/{table}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    lport = int(parts[1].rsplit(":", 1)[1], 16)
                    rport = int(parts[2].rsplit(":", 1)[1], 16)
                    if lport == local_port and (remote_port is None or rport == remote_port):
                        return int(parts[9])
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return None


def owner_of_inode(inode: int, pids: Iterable[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{base}/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


CLONE_NEWNET = 0x40000000


IP_FREEBIND = 15  # <linux/in.h>; not exported by Python's socket module


def dns_sockets_in_netns(pid: int, port: int = 53) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on 127.0.0.1:port inside pid's network namespace (root only), the TCP
    one listening: a resolver retries a truncated answer over TCP.

    setns() moves only the calling thread, so a throwaway thread does it; the sockets keep the
    namespace they were made in.
    """
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as err:  # the sandbox is already gone
            os.close(own)
            result.append(err)
            return
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
            try:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    result.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    # bound as soon as bwrap reports its clone, maybe before bwrap has brought the
                    # namespace's loopback up (127.0.0.1 exists from then on): bind it regardless
                    s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                    s.bind(("127.0.0.1", port))
                    if kind == socket.SOCK_STREAM:
                        s.listen(256)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    os._exit(70)  # a thread stuck in the sandbox's namespace must not live on
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            result.append(err)
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=work, name="corral-netns")
    t.start()
    t.join()
    socks = [s for s in result if isinstance(s, socket.socket)]
    errors = [e for e in result if isinstance(e, BaseException)]
    if errors or len(socks) != 2:
        for s in socks:
            s.close()
        raise errors[0] if errors else OSError("no DNS sockets")
    return socks[0], socks[1]


def dns_sockets_via_helper(helper: str, pid: int) -> tuple[socket.socket, socket.socket]:
    """The same for an ordinary user: the compiled launcher's `--bind-dns` mode enters the user
    namespace that owns pid's network namespace (ours, so we hold its capabilities), binds there
    and hands the sockets back (UDP, then TCP). A separate process because setns into a user
    namespace needs a single-threaded caller."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        done = subprocess.run([helper, "--bind-dns", str(pid), str(theirs.fileno())],
                              pass_fds=(theirs.fileno(),), timeout=5, capture_output=True)  # fmt: skip
        if done.returncode != 0:
            raise OSError(f"{helper} --bind-dns exited {done.returncode}")
        _, fds, _, _ = socket.recv_fds(mine, 1, 2)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise OSError(f"{len(fds)} of 2 DNS sockets came back")
        return socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
    finally:
        mine.close()
        theirs.close()
