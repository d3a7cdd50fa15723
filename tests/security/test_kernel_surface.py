"""The kernel surface an escape needs is read-only, hidden or refused (issue: Hold, item 2)."""

from __future__ import annotations

import os

import pytest

from tests.security.helpers import open_box, py

WRITABLE_PROC = r"""
import os
found = []
for top in ('/proc/sys', '/proc/irq', '/proc/bus', '/proc/fs'):
    for root, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(root, n)
            if not os.path.islink(p) and os.access(p, os.W_OK):
                found.append(p)
for p in ('/proc/sysrq-trigger', '/proc/kcore', '/proc/sys/kernel/core_pattern',
          '/proc/sys/vm/panic_on_oom', '/sys/kernel/uevent_helper', '/sys/fs/cgroup'):
    if os.path.exists(p) and os.access(p, os.W_OK):
        found.append(p)
print(len(found), found[:10])
"""


@pytest.mark.unprivileged
async def test_no_file_under_proc_sys_or_sys_is_writable() -> None:
    """/proc/sys, /proc/irq, /proc/bus, /proc/fs and the kernel files named: none writable."""
    async with open_box() as sb:
        r = await sb.exec(py(WRITABLE_PROC))
        assert r.stdout.startswith("0 "), r.stdout + r.stderr
        # and a write is refused by the kernel, without touching the host's value
        r = await sb.exec("echo x 2>&1 >> /proc/sys/kernel/core_pattern; echo rc=$?")
        assert "rc=1" in r.stdout


SECRETS = r"""
import os, glob
paths = ['/etc/shadow', '/etc/shadow-', '/etc/gshadow', '/etc/gshadow-', '/root/.bashrc',
         '/root/.ssh', '/etc/sudoers'] + glob.glob('/etc/ssh/ssh_host_*') + glob.glob('/home/*/.ssh')
readable = []
for p in paths:
    try:
        with open(p, 'rb') as f:
            if f.read(1):
                readable.append(p)
    except OSError:
        pass
print('READABLE', readable)
print('ENV', sorted(k for k in os.environ if 'SECRET' in k))
"""


@pytest.mark.unprivileged
async def test_host_secrets_and_supervisor_environment_are_not_readable(monkeypatch) -> None:
    monkeypatch.setenv("CORRAL_TEST_SECRET", "hunter2")
    async with open_box() as sb:
        r = await sb.exec(py(SECRETS) + "; grep -l hunter2 /proc/*/environ 2>/dev/null | head -3")
        assert "READABLE []" in r.stdout, r.stdout
        assert "ENV []" in r.stdout
        assert "environ" not in r.stdout.split("ENV []", 1)[1]


SYSCALLS = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
calls = {'io_uring_setup': (425, 8, 0), 'bpf': (321, 0, 0, 0), 'perf_event_open': (298, 0, 0, -1, -1, 0),
         'userfaultfd': (323, 0), 'keyctl': (250, 0, 0), 'add_key': (248, 0, 0, 0, 0, 0),
         'unshare': (272, 0x10000000), 'setns': (308, 0, 0), 'mount': (165, 0, 0, 0, 0, 0),
         'open_by_handle_at': (304, 0, 0, 0), 'init_module': (175, 0, 0, 0),
         'kexec_load': (246, 0, 0, 0, 0)}
bad = []
for name, (nr, *args) in calls.items():
    rc = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    e = ctypes.get_errno()
    if not (rc == -1 and e == errno.EPERM):
        bad.append((name, rc, errno.errorcode.get(e)))
import socket
for fam, typ, proto in ((40, 1, 0), (17, 3, 0), (38, 5, 0), (16, 3, 9), (31, 1, 1), (5, 2, 0)):
    try:
        socket.socket(fam, typ, proto).close()
        bad.append(('socket', fam, 'opened'))
    except OSError as err:
        if err.errno != errno.EAFNOSUPPORT:
            bad.append(('socket', fam, errno.errorcode.get(err.errno)))
for fam, typ in ((1, 1), (2, 1), (10, 2), (16, 3)):
    socket.socket(fam, typ).close()
print('BAD', bad)
"""


@pytest.mark.unprivileged
async def test_escape_syscalls_and_socket_families_are_refused() -> None:
    async with open_box() as sb:
        r = await sb.exec(py(SYSCALLS))
        assert "BAD []" in r.stdout, r.stdout + r.stderr


@pytest.mark.unprivileged
async def test_32_bit_syscall_abi_is_refused() -> None:
    # the same calls through int 0x80 would walk around a filter of x86-64 numbers
    prog = r"""
import ctypes, mmap
code = bytes([0xb8, 0x14, 0, 0, 0,  # mov eax, 20 (getpid, i386)
              0xcd, 0x80,           # int 0x80
              0xc3])                # ret
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
f = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
print('RC', f())
"""
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 only")
    async with open_box() as sb:
        r = await sb.exec(py(prog))
        # refused: ENOSYS from corral's list, or SIGSYS from the gateway's stacked filter
        refused = "RC -38" in r.stdout or "RC 4294967258" in r.stdout or r.exit_code == 159
        assert refused and "RC 1" not in r.stdout, r.stdout + r.stderr


@pytest.mark.unprivileged
@pytest.mark.parametrize("egress", [True, False])
async def test_escape_syscalls_are_recorded_with_who_tried(egress: bool) -> None:
    async with open_box(egress=egress) as sb:
        r = await sb.exec(py(SYSCALLS))
        assert "BAD []" in r.stdout, r.stdout + r.stderr  # refused all the same
        refused = [e for e in sb.events if e.rule == "escape.syscall_refused"]
        names = {e.evidence["syscall"] for e in refused}
        if sb.egress is None:  # no launcher at all (exec sensor off): the kernel's list alone
            assert not refused
            return
        assert {"io_uring_setup", "bpf", "unshare", "mount", "keyctl"} <= names, names
        first = refused[0]
        assert first.pid and first.argv and "python3" in first.argv[0]
        assert first.category == "escape" and first.step == 1
