"""The sandbox's seccomp user-notification listener: every exec and every direct network attempt.

The launcher inside the sandbox installs one filter (one listener per filter chain, so exec and
network share it) that turns execve/execveat, exit_group/exit, connect(), sendto() with an address, sendmsg() and
sendmmsg() into notifications on a listener fd the supervisor holds. Each one names the calling
thread (host pid); its arguments are read from its memory.

**Exec** is observation: the path, argv, parent and working directory are read while the caller is
held, handed to `on_exec` (the monitor queues it), then the kernel continues the call. LIMITATION:
another thread of the caller can rewrite argv (or the path) between our read and the kernel's
copy; the record is then what the program was *asked* to run, not necessarily what ran. Exec is
observed, not enforced, here (the gate and the responder act), so this costs the record's accuracy
against a racing agent, never a path out; the process's sockets, CPU and children are still judged
from /proc as the kernel holds them. Re-reading /proc/PID/cmdline after the exec is not done (a
shebang script's kernel argv differs from the asked one, so a compare would need care).

**Exit** (exit_group, and exit: a single-threaded process may leave through it) is observation too:
`on_exit` (the monitor) reads the leaving process's children while it is held, to give each the step
that started their parent before they are re-parented to the sandbox's init; then the kernel
continues. It is never refused (an exit that failed would leave glibc spinning in `_exit`).

**Network** never lets the kernel continue a call whose memory the agent can still rewrite, when the
call could carry an address: a check-then-continue would let a racing thread swap the address (or a
later message of `sendmmsg`) after the check. Instead:

- the socket itself is copied (`pidfd_getfd`) and its family and type read from the kernel, not
  from the agent's memory;
- an AF_INET/AF_INET6 `connect()` to an address the sandbox may reach (its own loopback, the
  gateway's proxy) is *performed by the supervisor* on that copy, with the bytes it read and
  checked, and its result returned to the caller: what the kernel connects is what was recorded;
- a datagram `sendto`/`sendmsg`/`sendmmsg` is inspected message by message (every message of
  `sendmmsg`); if any names an address outside, the whole call is refused and every such address
  recorded; otherwise the supervisor sends the checked copies itself and writes each `msg_len` back;
- everything else with an outside address is refused with ECONNREFUSED and recorded.

The kernel continues only calls that cannot reach an address: sends on a TCP/MPTCP stream (the
kernel ignores their address; the destination was fixed, and recorded, at connect; MSG_FASTOPEN,
a register flag, is treated as a connect) and calls on non-IP sockets (unix, netlink: no route off
the sandbox's namespace). LIMITATION: a thread can swap the *fd* behind such a continued call (dup2 an
IP socket over it); the kernel then sees an IP call we did not inspect. The namespace has no route
off the host, so such a call reaches only the sandbox's own loopback and the gateway's listeners
(which record what they receive). Checking the fd again after the call cannot tell a swap from an
fd number reused by the next socket, so it is not tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from corral.contracts import ExecNote
from corral.egress.addresses import parse_ip
from corral.egress.procinfo import ProcInfo, info, pidfd_getfd

NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)      (80 bytes)
NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp) (24 bytes)
NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
FLAG_CONTINUE = 1
_NOTIF = struct.Struct("=QII iIQ6Q")
_RESP = struct.Struct("=QqiI")
NR = {42: "connect", 44: "sendto", 46: "sendmsg", 307: "sendmmsg"}  # x86_64
EXEC_NR = {59: "execve", 322: "execveat"}
EXIT_NR = {231: "exit_group", 60: "exit"}
# escape syscalls the launcher's filter sends here (sandbox/syscalls.py NOTIFIED): refused, recorded
REFUSED_NR = {425: "io_uring_setup", 321: "bpf", 298: "perf_event_open", 323: "userfaultfd",
              250: "keyctl", 248: "add_key", 272: "unshare", 308: "setns", 165: "mount",
              155: "pivot_root", 304: "open_by_handle_at", 175: "init_module",
              313: "finit_module", 246: "kexec_load", 320: "kexec_file_load", 438: "pidfd_getfd",
              430: "fsopen", 428: "open_tree"}  # fmt: skip
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MSG_FASTOPEN = 0x20000000
IPPROTO_MPTCP = 262
_MMSGHDR = 64  # struct mmsghdr: msghdr (56) + msg_len (4) + padding
_MAX_ARGS = 4096
_MAX_ARGV_BYTES = 64 * 1024
_MAX_DGRAM = 256 * 1024
_MAX_BATCH = 1024 * 1024  # bytes of one sendmmsg the supervisor copies at once
_PAGE = 4096
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Attempt:
    """One refused try to reach an address directly."""

    pid: int
    syscall: str
    family: int
    ip: str
    port: int
    proto: str  # tcp | udp
    payload: bytes = b""
    proc: ProcInfo | None = None


def _sockaddr(raw: bytes) -> tuple[int, str, int] | None:
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from("!H", raw, 2)[0]
        return family, socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from("!H", raw, 2)[0]
        return family, socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return family, "", 0


def _local(ip: str) -> bool:
    addr = parse_ip(ip)
    if addr is not None and getattr(addr, "ipv4_mapped", None) is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too; ::ffff:192.0.2.1 is not
    return addr is not None and (addr.is_loopback or addr.is_unspecified)


class _Mem:
    """Reads (and, for sendmmsg's msg_len, writes) a held caller's memory through /proc/PID/mem."""

    def __init__(self, pid: int, write: bool = False) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if write else os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, n: int) -> bytes:
        if not addr or n <= 0:
            return b""
        out = bytearray()
        while n > 0:  # page by page: a buffer may end just before an unmapped page
            chunk = min(n, _PAGE - (addr % _PAGE)) if len(out) == 0 else min(n, 65536)
            try:
                got = os.pread(self.fd, chunk, addr)
            except OSError:
                break
            if not got:
                break
            out += got
            addr += len(got)
            n -= len(got)
        return bytes(out)

    def string(self, addr: int, limit: int = 4096) -> str:
        out = bytearray()
        while addr and len(out) < limit:
            chunk = min(limit - len(out), _PAGE - (addr % _PAGE))
            try:
                got = os.pread(self.fd, chunk, addr)
            except OSError:
                break
            if not got:
                break
            end = got.find(b"\0")
            if end >= 0:
                out += got[:end]
                break
            out += got
            addr += len(got)
        return out.decode(errors="replace")

    def strings(self, array: int) -> list[str]:
        """A NULL-terminated array of C strings (argv), bounded."""
        out: list[str] = []
        total = 0
        while array and len(out) < _MAX_ARGS and total < _MAX_ARGV_BYTES:
            n = (_PAGE - (array % _PAGE)) // 8 or 1
            raw = self.read(array, 8 * n)
            if len(raw) < 8:
                break
            for (ptr,) in struct.iter_unpack("=Q", raw[: len(raw) // 8 * 8]):
                if ptr == 0:
                    return out
                s = self.string(ptr)
                out.append(s)
                total += len(s) + 1
                if len(out) >= _MAX_ARGS or total >= _MAX_ARGV_BYTES:
                    return out
            array += len(raw) // 8 * 8
        return out

    def write_u32(self, addr: int, value: int) -> None:
        with contextlib.suppress(OSError):
            os.pwrite(self.fd, struct.pack("=I", value), addr)


SYS_OPENAT2 = 437
RESOLVE_IN_ROOT = 0x10
O_PATH = 0o10000000


def _exists_in_root(pid: int, path: str) -> bool:
    """Whether path names something from pid's own root (openat2 RESOLVE_IN_ROOT: its symlinks
    resolve inside its root, as the kernel's exec will). Only ENOENT/ENOTDIR say no."""
    try:
        root = os.open(f"/proc/{pid}/root", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        how = struct.pack("=QQQ", O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT)
        fd = _libc.syscall(SYS_OPENAT2, root, path.encode(), how, len(how))
        if fd >= 0:
            os.close(fd)
            return True
        return ctypes.get_errno() not in (errno.ENOENT, errno.ENOTDIR)
    finally:
        os.close(root)


def _stat(pid: int) -> tuple[str, int, int]:
    """(comm, ppid, starttime ticks) of a held caller."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(4096).decode(errors="replace")
        lp, rp = raw.find("("), raw.rfind(")")
        rest = raw[rp + 2 :].split()
        return raw[lp + 1 : rp], int(rest[1]), int(rest[19])
    except (OSError, ValueError, IndexError):
        return "", 0, 0


@dataclass
class _Sock:
    """What the kernel says of a caller's socket (from a copy of it, not from the caller's memory)."""

    fd: int  # our copy; closed by the notifier
    family: int
    type: int
    proto: int


def _sock_of(pid: int, fd: int) -> _Sock | None:
    try:
        dup = pidfd_getfd(pid, fd)
    except OSError:
        return None
    try:
        s = socket.socket(fileno=dup)
    except OSError:  # not a socket: the call will fail with ENOTSOCK however it goes
        return _Sock(dup, -1, -1, -1)
    try:
        family, kind = s.family, s.type
        proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    except OSError:
        family, kind, proto = -1, -1, -1
    finally:
        s.detach()
    return _Sock(dup, int(family), int(kind) & 0xF, proto)


def _libc_errno(rc: int) -> int:
    return 0 if rc >= 0 else -(ctypes.get_errno() or errno.EIO)


# (level, type) of ancillary data that any sender may use: packet info, TTL/hop limit, TOS/class
_SAFE_CMSGS = {(0, 8), (0, 2), (0, 1), (41, 50), (41, 52), (41, 67)}


def _safe_cmsgs(ctl: bytes) -> bool:
    off = 0
    while off + 16 <= len(ctl):
        length, level, kind = struct.unpack_from("=Qii", ctl, off)
        if length < 16 or (level, kind) not in _SAFE_CMSGS:
            return False
        off += (length + 7) & ~7
    return True


class Notifier:
    """Serve one sandbox's listener fd on the event loop."""

    def __init__(self, fd: int, on_attempt: Callable[[Attempt], None] | None,
                 local_trap: set[int] | None = None,
                 on_proxy_connect: Callable[[int, int], None] | None = None,
                 proxy_port: int | None = None,
                 on_exec: Callable[[ExecNote], None] | None = None) -> None:  # fmt: skip
        self.fd = fd
        # connects to the gateway's own port: which pid owns the socket (by inode), for the record
        self.on_proxy_connect = on_proxy_connect
        self.proxy_port = proxy_port
        self.local_trap = local_trap or set()  # loopback ports to refuse too (DNS when unserved)
        self.on_attempt = on_attempt
        # the exec sensor: set by the monitor when it watches this sandbox (None: continue at once)
        self.on_exec = on_exec
        # an IP connect() seen (its host tid): the monitor judges a fan-out as it happens
        self.on_connect: Callable[[int], None] | None = None
        # a process (thread) leaving: its host tid, while it is held, its children still its own;
        # set by the monitor (None: continue at once)
        self.on_exit: Callable[[int], None] | None = None
        # an escape syscall refused here: (pid, name), set with the episode's context
        self.on_refused: Callable[[int, str], None] | None = None
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(fd, self._ready)
        self.handled = 0
        self.execs = 0
        self.execs_let_go = 0  # every exec continued, seen by a sensor or not
        # called once, right after the next exec is let go: at start that is the shell's own, and
        # the sandbox attaches the monitor while the shell loads (not before: that exec is the
        # launcher's, not the agent's)
        self.after_exec: Callable[[], None] | None = None
        self.performed = 0  # network calls the supervisor carried out on the caller's behalf
        # (monotonic time, pid) of the latest IP connect() calls, allowed or refused: who made a
        # burst that the namespace's TCP counters alone would see without a process
        self.connects: deque[tuple[float, int]] = deque(maxlen=256)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1

    def _ready(self) -> None:
        buf = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.fd, NOTIF_RECV, buf, True)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                return
            self.close()  # the filter's processes are gone (EBADF, ENOTCONN...)
            return
        nid, pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
        self.handled += 1
        if nr in EXIT_NR:  # first: the most frequent, and the cheapest to answer
            cb = self.on_exit
            if cb is not None:
                with contextlib.suppress(Exception):  # a sensor fault must never hold the sandbox
                    cb(pid)
            self._respond(nid, 0, FLAG_CONTINUE)
            return
        if nr in EXEC_NR:
            self._exec(nid, pid, EXEC_NR[nr], args)
            return
        if nr in REFUSED_NR:  # never continued: refused, then recorded
            self._respond(nid, -errno.EPERM, 0)
            cb = self.on_refused
            if cb is not None:
                with contextlib.suppress(Exception):
                    cb(pid, REFUSED_NR[nr])
            return
        name = NR.get(nr)
        if name is None:
            self._respond(nid, 0, FLAG_CONTINUE)
            return
        try:
            self._network(nid, pid, name, args)
        except Exception as err:  # noqa: BLE001 - an unanswered notification would hang the caller
            # the caller vanished mid-read, or its memory is unreadable: refuse (never continue a
            # call we could not inspect); a dead caller's refusal is simply dropped by the kernel
            code = err.errno if isinstance(err, OSError) and err.errno else errno.EFAULT
            self._respond(nid, -code, 0)

    # ------------------------------------------------------------ exec
    def _exec(self, nid: int, pid: int, name: str, args: list[int]) -> None:
        cb = self.on_exec
        if cb is not None:
            with contextlib.suppress(Exception):  # a sensor fault must never hold the sandbox
                note = self._read_exec(pid, name, args)
                if note is not None and self._valid(nid):
                    self.execs += 1
                    cb(note)
        self._respond(nid, 0, FLAG_CONTINUE)
        self.execs_let_go += 1
        then, self.after_exec = self.after_exec, None
        if then is not None:
            then()  # (the sandbox's own callback: it keeps any error for its start to raise)

    @staticmethod
    def _read_exec(pid: int, name: str, args: list[int]) -> ExecNote | None:
        mem = _Mem(pid)
        try:
            if name == "execve":
                path, argv = mem.string(args[0]), mem.strings(args[1])
            else:  # execveat(dirfd, path, argv, envp, flags)
                path, argv = mem.string(args[1]), mem.strings(args[2])
                dirfd = ctypes.c_int(args[0] & 0xFFFFFFFF).value
                if (not path and args[4] & AT_EMPTY_PATH) or (path and not path.startswith("/")):
                    base = None
                    if dirfd != AT_FDCWD:
                        with contextlib.suppress(OSError):
                            base = os.readlink(f"/proc/{pid}/fd/{dirfd}")
                    if base is not None:
                        path = f"{base}/{path}" if path else base
        finally:
            mem.close()
        comm, ppid, start = _stat(pid)
        cwd = None
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
        full = path if path.startswith("/") else f"{cwd or ''}/{path}"
        return ExecNote(pid=pid, ppid=ppid, path=path, argv=argv or [path], cwd=cwd,
                        start_ticks=start, comm=comm, syscall=name,
                        exists=_exists_in_root(pid, full))  # fmt: skip

    # ------------------------------------------------------------ network
    def _network(self, nid: int, pid: int, name: str, args: list[int]) -> None:
        sock = _sock_of(pid, args[0])
        if sock is None:  # no such fd: the kernel will say EBADF itself
            self._respond(nid, -errno.EBADF, 0)
            return
        keep = False
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                # unix, netlink (or not a socket): no route off the namespace. Continued; see the
                # module's LIMITATION on a swapped fd, checked afterwards.
                self._continue(nid)
                return
            if name == "connect":
                keep = self._connect(nid, pid, args, sock)
                return
            flags = ctypes.c_int((args[2] if name == "sendmsg" else args[3]) & 0xFFFFFFFF).value
            stream = sock.type == socket.SOCK_STREAM and sock.proto in (
                socket.IPPROTO_TCP, IPPROTO_MPTCP)  # fmt: skip
            if stream and not flags & MSG_FASTOPEN:
                self._continue(nid)  # the address is ignored
                return
            self._send(nid, pid, name, args, sock, flags)
        finally:
            if not keep:
                os.close(sock.fd)

    def _refuse(self, nid: int, attempts: list[Attempt], pid: int) -> None:
        if not self._valid(nid):  # the process died or exec'd: what we read may not be its
            return
        proc = info(pid)
        self._respond(nid, -errno.ECONNREFUSED, 0)
        for a in attempts:
            a.proc = proc
            if self.on_attempt is not None:
                with contextlib.suppress(Exception):
                    self.on_attempt(a)

    def _allowed(self, family: int, ip: str, port: int) -> bool:
        if family not in (socket.AF_INET, socket.AF_INET6):
            # AF_UNSPEC dissolves a UDP association; any other family on an IP socket is refused
            # by the kernel itself when we pass it on: neither reaches an address
            return True
        return _local(ip) and port not in self.local_trap

    def _connect(self, nid: int, pid: int, args: list[int], sock: _Sock) -> bool:
        """Returns True when the copy of the socket was handed on (a blocking connect's thread)."""
        mem = _Mem(pid)
        try:
            raw = mem.read(args[1], min(args[2], 128))
        finally:
            mem.close()
        addr = _sockaddr(raw)
        if addr is None:
            self._respond(nid, -errno.EINVAL, 0)
            return False
        family, ip, port = addr
        self.connects.append((time.monotonic(), pid))
        on_connect = self.on_connect
        if on_connect is not None:
            with contextlib.suppress(Exception):  # a sensor fault must never hold the sandbox
                on_connect(pid)
        if not self._allowed(family, ip, port):
            proto = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
            self._refuse(nid, [Attempt(pid=pid, syscall="connect", family=family, ip=ip,
                                       port=port, proto=proto)], pid)  # fmt: skip
            return False
        if port == self.proxy_port and self.on_proxy_connect and family != socket.AF_UNSPEC:
            with contextlib.suppress(OSError):  # the callback owns this second copy
                self.on_proxy_connect(os.dup(sock.fd), pid)
        if not self._valid(nid):
            return False
        buf = ctypes.create_string_buffer(raw, len(raw))

        def perform() -> None:
            rc = _libc.connect(sock.fd, buf, len(raw))
            self._respond(nid, _libc_errno(rc), 0)
            self.performed += 1

        if fcntl.fcntl(sock.fd, fcntl.F_GETFL) & os.O_NONBLOCK:
            perform()  # returns at once (EINPROGRESS at worst), as it would have for the caller
            return False

        def blocking() -> None:  # a loopback connect with a full backlog may wait: not on the loop
            try:
                perform()
            finally:
                os.close(sock.fd)

        threading.Thread(target=blocking, name="corral-connect", daemon=True).start()
        return True

    def _messages(self, mem: _Mem, name: str, args: list[int]) -> list[tuple[bytes, bytes, bytes]]:
        """(address, data, control) of every message of the call, read once."""
        if name == "sendto":
            return [
                (
                    mem.read(args[4], min(args[5], 128)),
                    mem.read(args[1], min(args[2], _MAX_DGRAM)),
                    b"",
                )
            ]
        if name == "sendmsg":
            heads = [mem.read(args[1], 56)]
        else:
            vlen = min(args[2] & 0xFFFFFFFF, 1024)  # UIO_MAXIOV: the kernel caps it the same way
            table = mem.read(args[1], vlen * _MMSGHDR)
            heads = [table[i : i + 56] for i in range(0, len(table) - 55, _MMSGHDR)]
        out = []
        total = 0
        for hdr in heads:
            if out and total > _MAX_BATCH:  # sendmmsg may send fewer: the caller sends the rest
                break
            if len(hdr) < 56:
                raise OSError(errno.EFAULT, "short msghdr")
            name_ptr, namelen, iov_ptr, iovlen, ctl_ptr, ctl_len = struct.unpack_from(
                "=QI4xQQQQ", hdr
            )
            addr = mem.read(name_ptr, min(namelen, 128)) if name_ptr else b""
            data = bytearray()
            iovs = mem.read(iov_ptr, 16 * min(iovlen, 1024))
            for base, ln in struct.iter_unpack("=QQ", iovs[: len(iovs) // 16 * 16]):
                if len(data) + ln > _MAX_DGRAM:
                    raise OSError(errno.EMSGSIZE, "datagram too large")
                data += mem.read(base, ln)
            ctl = mem.read(ctl_ptr, min(ctl_len, 4096)) if ctl_ptr else b""
            out.append((addr, bytes(data), ctl))
            total += len(data)
        return out

    def _send(
        self, nid: int, pid: int, name: str, args: list[int], sock: _Sock, flags: int
    ) -> None:
        mem = _Mem(pid, write=name == "sendmmsg")
        try:
            msgs = self._messages(mem, name, args)
            proto = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
            refused = []
            for addr_raw, data, _ctl in msgs:
                if not addr_raw:
                    continue  # a connected socket: its destination was judged at connect
                addr = _sockaddr(addr_raw)
                if addr is None:
                    continue  # the kernel refuses a malformed address itself (we send it as read)
                family, ip, port = addr
                if not self._allowed(family, ip, port):
                    refused.append(Attempt(pid=pid, syscall=name, family=family, ip=ip, port=port,
                                           proto=proto, payload=data[:512]))  # fmt: skip
            if refused:
                self._refuse(nid, refused, pid)
                return
            if not self._valid(nid):
                return
            sent = 0
            result = 0
            for i, (addr_raw, data, ctl) in enumerate(msgs):
                rc = self._sendmsg(sock.fd, addr_raw, data, ctl, flags)
                if rc < 0:
                    result = rc if i == 0 else sent
                    break
                if name == "sendmmsg":
                    mem.write_u32(args[1] + i * _MMSGHDR + 56, rc)
                    sent += 1
                    result = sent
                else:
                    result = rc
            self.performed += 1
            if result < 0:
                self._respond(nid, result, 0)
            else:
                self._respond_val(nid, result)
        finally:
            mem.close()

    @staticmethod
    def _sendmsg(fd: int, addr: bytes, data: bytes, ctl: bytes, flags: int) -> int:
        """sendmsg(2) on our copy of the socket with the bytes we read and checked. The call runs
        with the supervisor's privileges, so only control messages that need none pass (a
        confused deputy must not set SO_MARK or a priority for the agent)."""
        if ctl and not _safe_cmsgs(ctl):
            return -errno.EPERM
        abuf = ctypes.create_string_buffer(addr, len(addr)) if addr else None
        dbuf = ctypes.create_string_buffer(data, len(data))
        cbuf = ctypes.create_string_buffer(ctl, len(ctl)) if ctl else None
        iov = (ctypes.c_uint64 * 2)(ctypes.addressof(dbuf), len(data))
        hdr = struct.pack("=QI4xQQQQi4x", ctypes.addressof(abuf) if abuf else 0, len(addr),
                          ctypes.addressof(iov), 1, ctypes.addressof(cbuf) if cbuf else 0,
                          len(ctl), 0)  # fmt: skip
        hbuf = ctypes.create_string_buffer(hdr, len(hdr))
        rc = _libc.sendmsg(fd, hbuf, flags & ~MSG_FASTOPEN)
        return int(rc) if rc >= 0 else _libc_errno(rc)

    def _continue(self, nid: int) -> None:
        """Continue a call that cannot reach an address (see the module's LIMITATION)."""
        self._respond(nid, 0, FLAG_CONTINUE)

    # ------------------------------------------------------------ responses
    def _valid(self, nid: int) -> bool:
        try:
            fcntl.ioctl(self.fd, NOTIF_ID_VALID, struct.pack("=Q", nid))
            return True
        except OSError:
            return False

    def _respond(self, nid: int, error: int, flags: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.fd, NOTIF_SEND, bytearray(_RESP.pack(nid, 0, error, flags)), True)

    def _respond_val(self, nid: int, value: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.fd, NOTIF_SEND, bytearray(_RESP.pack(nid, value, 0, 0)), True)
