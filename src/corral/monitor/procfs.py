"""Small, fast readers of /proc.

The monitor reads these for every exec and on every sweep, so each is one syscall or a few and never
raises for a process that has already gone: a vanished process is the common case, not an error.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "0A": "LISTEN"}


def read_text(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode(errors="replace")
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    raw = read_text(f"/proc/{pid}/cmdline", 32768)
    if not raw:
        return []
    return raw.rstrip("\0").split("\0")


def readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def exe(pid: int) -> str | None:
    return readlink(f"/proc/{pid}/exe")


def cwd(pid: int) -> str | None:
    return readlink(f"/proc/{pid}/cwd")


def stat(pid: int) -> tuple[str, int, int, int] | None:
    """(comm, ppid, cpu ticks utime+stime, starttime ticks) from /proc/PID/stat, or None."""
    raw = read_text(f"/proc/{pid}/stat", 4096)
    if not raw:
        return None
    lp, rp = raw.find("("), raw.rfind(")")
    if lp < 0 or rp < 0:
        return None
    rest = raw[rp + 2 :].split()
    try:
        return raw[lp + 1 : rp], int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[19])
    except (IndexError, ValueError):
        return None


def cpu_all(pid: int) -> int | None:
    """utime + stime + cutime + cstime of pid, in clock ticks (its own and its reaped children's)."""
    raw = read_text(f"/proc/{pid}/stat", 4096)
    if not raw:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    except (IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    raw = read_text(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in raw.split()] if raw else []


def process_children(tid: int) -> tuple[int, list[int]]:
    """(thread group id, children of every thread) of the process that thread `tid` belongs to;
    (tid, []) once it has gone. The common case, a single-threaded process, is two reads."""
    try:
        tasks = os.listdir(f"/proc/{tid}/task")
    except OSError:
        return tid, []
    tgid = tid
    if len(tasks) > 1:
        for line in (read_text(f"/proc/{tid}/status", 4096) or "").splitlines():
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
                break
    out: list[int] = []
    for t in tasks:
        raw = read_text(f"/proc/{tid}/task/{t}/children")
        if raw:
            out.extend(int(x) for x in raw.split())
    return tgid, out


def descendants(pid: int) -> list[int]:
    """pid and every descendant, via the kernel's children lists (cheap: one read per process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def fd_targets(pid: int, fds: tuple[int, ...] | None = None) -> dict[int, str]:
    """fd -> link target ('socket:[123]', '/path', 'pipe:[..]'); all fds when `fds` is None."""
    base = f"/proc/{pid}/fd"
    if fds is None:
        try:
            names = os.listdir(base)
        except OSError:
            return {}
        fds = tuple(int(n) for n in names if n.isdigit())
    out = {}
    for fd in fds:
        target = readlink(f"{base}/{fd}")
        if target is not None:
            out[fd] = target
    return out


def socket_inodes(targets: dict[int, str]) -> dict[int, int]:
    """fd -> socket inode, for the fds that are sockets."""
    out = {}
    for fd, t in targets.items():
        if t.startswith("socket:["):
            out[fd] = int(t[8:-1])
    return out


def _hex_addr(text: str) -> tuple[str, int]:
    addr, _, port = text.partition(":")
    if len(addr) == 8:
        b = bytes.fromhex(addr)[::-1]
        ip = ".".join(str(x) for x in b)
    else:
        words = [bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
        raw = b"".join(words)
        import ipaddress

        ip = str(ipaddress.IPv6Address(raw))
        if ip.startswith("::ffff:"):
            ip = ip[7:]
    return ip, int(port, 16)


def tcp_table(pid: int) -> dict[int, dict[str, object]]:
    """inode -> {state, local, remote} for the TCP sockets of PID's network namespace."""
    out: dict[int, dict[str, object]] = {}
    for name in ("tcp", "tcp6"):
        raw = read_text(f"/proc/{pid}/net/{name}", 1 << 20)
        if not raw:
            continue
        for line in raw.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 10:
                continue
            inode = int(parts[9])
            if not inode:
                continue
            lip, lport = _hex_addr(parts[1])
            rip, rport = _hex_addr(parts[2])
            out[inode] = {
                "state": TCP_STATES.get(parts[3], parts[3]),
                "local": {"ip": lip, "port": lport},
                "remote": {"ip": rip, "port": rport},
            }
    return out


def tcp_counters(pid: int) -> dict[str, int]:
    """The Tcp: line of PID's netns /proc/net/snmp: ActiveOpens, AttemptFails, OutRsts..."""
    raw = read_text(f"/proc/{pid}/net/snmp", 16384)
    if not raw:
        return {}
    lines = [ln for ln in raw.splitlines() if ln.startswith("Tcp:")]
    if len(lines) < 2:
        return {}
    keys, vals = lines[0].split()[1:], lines[1].split()[1:]
    out = {}
    for k, v in zip(keys, vals, strict=False):
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out


def netns(pid: int) -> str | None:
    return readlink(f"/proc/{pid}/ns/net")
