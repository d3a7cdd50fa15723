"""What actually holds inside a sandbox on this host, checked from inside one (`corral doctor`).

Each check is what an attacker would try first, done harmlessly: look at ids and capabilities,
test writability (never write), try a refused syscall or socket family, look for the store.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from typing import Any

INSIDE = r"""
import ctypes, errno, json, os, socket
out = {}
st = dict(l.split(':', 1) for l in open('/proc/self/status'))
out['capabilities'] = int(st['CapEff'].strip(), 16) == 0 and int(st['CapBnd'].strip(), 16) == 0
w = []
for root, dirs, files in os.walk('/proc/sys'):
    w += [os.path.join(root, f) for f in files if os.access(os.path.join(root, f), os.W_OK)]
out['proc_sys_read_only'] = not w
def readable(p):
    try:
        if os.path.isdir(p):
            return bool(os.listdir(p))
        with open(p, 'rb') as f:
            return bool(f.read(1))
    except OSError:
        return False
out['secrets_hidden'] = not any(readable(p) for p in ('/etc/shadow', '/etc/shadow-',
    '/etc/gshadow', '/root', '/home', '/etc/ssh', '/etc/sudoers'))
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.syscall(425, 8, 0)
out['seccomp_deny_list'] = rc == -1 and ctypes.get_errno() == errno.EPERM
try:
    socket.socket(40, 1).close(); out['socket_families'] = False
except OSError as e:
    out['socket_families'] = e.errno == errno.EAFNOSUPPORT
m = [l.split() for l in open('/proc/self/mountinfo')]
out['nosuid_mounts'] = all('nosuid' in l[5] for l in m if 'rw' in l[5].split(',') and l[4] not in ('/proc', '/dev'))
tmp = os.statvfs('/tmp')
out['tmp_size'] = tmp.f_blocks * tmp.f_frsize
print(json.dumps(out))
"""


async def _check() -> dict[str, Any]:
    from corral.policy.loader import load_policy
    from corral.sandbox.sandbox import Sandbox
    from corral.store.paths import corral_home

    pol = load_policy("rl-strict").model_copy(deep=True)
    pol.gate.enabled = False
    pol.limits.enforcement = "best_effort"
    result: dict[str, Any] = {}
    async with Sandbox(pol, store=False, egress=False) as sb:
        r = await sb.exec(f"python3 -c {shlex.quote(INSIDE)}", timeout=60)
        try:
            result = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": (r.stderr or r.stdout)[-300:]}
        home = str(corral_home())
        r = await sb.exec(f"test -e {shlex.quote(home)} && echo visible || echo hidden")
        result["store_unreachable"] = r.stdout.strip() == "hidden"
        uids = set()
        for pid in sb.host_pids():
            if sb._proc is not None and pid == sb._proc.pid:
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            uids |= {int(x) for x in line.split()[1:]}
            except OSError:
                continue
        result["agent_host_uids"] = sorted(uids)
        result["agent_not_host_root"] = bool(uids) and 0 not in uids
        result["own_host_id_per_sandbox"] = sb.identity is not None
    return result


def check_hold() -> dict[str, Any]:
    """Start one sandbox and report each Hold item as seen from inside it."""
    try:
        return asyncio.run(_check())
    except Exception as err:  # noqa: BLE001 - doctor reports, never crashes
        return {"error": f"{type(err).__name__}: {err}"}


__all__ = ["check_hold"]
