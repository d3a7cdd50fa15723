"""`Egress`: the gateway attached to one sandbox, its only way off the host.

Inside the sandbox a launcher opens a proxy listener (HTTP, CONNECT and SOCKS5 on one port) and a DNS
listener in the sandbox's loopback-only network namespace and installs a seccomp user-notification
filter; the supervisor takes those fds and serves them here. So there is no bridge process inside to
kill, and traffic that ignores the proxy still reaches the supervisor as a notification.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from corral.egress import addresses, procinfo, reputation
from corral.egress.decide import Verdict, decide, name_allowed, normalize_host
from corral.egress.notify import Attempt, Notifier
from corral.egress.relay import Relay
from corral.egress.resolve import Resolver
from corral.egress.sniff import Sniff, sniff
from corral.policy.model import NetworkPolicy
from corral.sandbox.errors import SandboxRefused
from corral.store.paths import corral_home

if TYPE_CHECKING:
    from corral.sandbox.bwrap import BwrapSpec
    from corral.sandbox.sandbox import Sandbox

PROXY_PORT = 3128
_HEAD_MAX = 64 * 1024
_SOCKS_REFUSED = 0x02


LAUNCHER_NAME = "corral-egress-launcher"


def launcher_binary() -> Path | None:
    """The compiled launcher (`make install` builds it next to this module; ~1 ms to start where
    the Python twin takes ~10-20 ms), or None to use the Python one."""
    env = os.environ.get("CORRAL_EGRESS_LAUNCHER")  # a path, or "python" for the Python twin
    if env == "python":
        return None
    for cand in ([Path(env)] if env else []) + [Path(__file__).with_name(LAUNCHER_NAME)]:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@functools.lru_cache(maxsize=1)
def _python_launcher() -> str:
    return resources.files("corral.egress").joinpath("launcher_main.py").read_text()


def proxy_env(port: int = PROXY_PORT) -> dict[str, str]:
    http = f"http://127.0.0.1:{port}"
    env = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": f"socks5h://127.0.0.1:{port}",
           "NO_PROXY": "localhost,127.0.0.1,::1"}  # fmt: skip
    env |= {k.lower(): v for k, v in env.items()}
    env |= {"npm_config_proxy": http, "npm_config_https_proxy": http}
    return env


class _Conn:
    """Book-keeping for one proxied connection, for its end record and for live policy changes."""

    def __init__(self, host: str, port: int, via: str, step: int | None,
                 owner: Callable[[], procinfo.ProcInfo]) -> None:  # fmt: skip
        self.host, self.port, self.via, self.step = host, port, via, step
        self._owner = owner
        self._proc: procinfo.ProcInfo | None = None
        self.ip: str | None = None
        self.verdict: Verdict | None = None
        self.relay: Relay | None = None
        self.sniff: Sniff | None = None
        self.flagged: dict[str, Any] | None = None

    def proc(self) -> procinfo.ProcInfo:
        """The client process, looked up once while its socket is open (first bytes or refusal)."""
        if self._proc is None:
            try:
                self._proc = self._owner()
            except Exception:  # noqa: BLE001 - a vanished process must not break the record
                self._proc = procinfo.ProcInfo()
        return self._proc


class Egress:
    """Attach to a Sandbox: `Sandbox(policy, egress=Egress())`; `await sb.egress.update(network)`."""

    def __init__(self, policy: NetworkPolicy | None = None, *, resolver: Resolver | None = None,
                 proxy_port: int = PROXY_PORT, dns: bool = True) -> None:  # fmt: skip
        self._policy_arg = policy
        self.policy: NetworkPolicy = policy or NetworkPolicy()
        self.resolver = resolver or Resolver()
        self.proxy_port = proxy_port
        self.dns = dns
        reputation.load()  # parse the data file now, not on the first connection
        raise_fd_limit()
        self.sandbox: Sandbox | None = None
        self.netns_pid: int | None = None
        self.total_bytes = 0
        self.conns: set[_Conn] = set()
        self.notifier: Notifier | None = None
        self.dns_mode = "none"
        self._lock = threading.Lock()
        self._fds: list[int] = []
        self._socks: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._responses: set[asyncio.Future[Any]] = set()
        self._handshakes = 0
        self._overflow_logged = 0.0
        self._pipes: tuple[int, ...] | None = None
        self._bytes_flagged = False
        self._verdicts: dict[tuple[str, int], tuple[float, Verdict]] = {}
        self._info_cache: dict[tuple[int, int | None], procinfo.ProcInfo] = {}
        # copies of clients' sockets taken at their connect() to the proxy, with pid and time
        self._pending: collections.deque[tuple[socket.socket, int, float]] = collections.deque()
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ the Attachment protocol
    def prepare(self, sandbox: Sandbox, spec: BwrapSpec, command: list[str]
                ) -> tuple[list[str], tuple[int, ...]]:  # fmt: skip
        self.sandbox = sandbox
        if self._policy_arg is None:
            self.policy = sandbox.policy.network
        out_r, out_w = os.pipe()
        in_r, in_w = os.pipe()
        self._pipes = (out_r, out_w, in_r, in_w)
        spec.extra_env = {**proxy_env(self.proxy_port), **spec.extra_env}
        private = corral_home() / "egress" / sandbox.id
        private.mkdir(parents=True, exist_ok=True)
        resolv = private / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        spec.extra_args = [*spec.extra_args, "--ro-bind", str(resolv), "/etc/resolv.conf"]
        args = [str(out_w), str(in_r), str(self.proxy_port), "1" if self.dns else "0", *command]
        native = launcher_binary()
        if native is not None:  # exec'd through an inherited fd: nothing to mount inside
            exe = os.open(native, os.O_RDONLY)
            self._pipes = (*self._pipes, exe)
            return [f"/proc/self/fd/{exe}", *args], (out_w, in_r, exe)
        return ["/usr/bin/python3", "-I", "-S", "-c", _python_launcher(), *args], (out_w, in_r)

    async def started(self, sandbox: Sandbox, bwrap_pid: int) -> None:
        assert self._pipes is not None
        out_r, out_w, in_r, in_w, *exe = self._pipes
        for fd in (out_w, in_r, *exe):
            os.close(fd)
        self.loop = asyncio.get_running_loop()
        try:
            line = await _read_line(out_r, 10.0)
            if not line.startswith("ok "):
                raise SandboxRefused(
                    f"the egress gateway could not be set up inside the sandbox: {line or 'no reply'}",
                    "install python3-seccomp and check `corral doctor` (seccomp user notification)",
                )
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            launcher = await asyncio.to_thread(
                procinfo.find_by_ns_pid, bwrap_pid, int(fields.pop("pid"))
            )
            if launcher is None:
                raise SandboxRefused("the egress launcher vanished", "run `corral doctor`")
            taken = {k: procinfo.pidfd_getfd(launcher, int(v)) for k, v in fields.items()}
            self._fds = list(taken.values())
            os.write(in_w, b"go\n")
        except OSError as err:
            raise SandboxRefused(f"could not take the egress gateway's sockets: {err}",
                                 "run as root or as the same user as the supervisor") from err  # fmt: skip
        finally:
            os.close(out_r)
            os.close(in_w)
            self._pipes = None
        self.netns_pid = launcher
        self._fds = []
        if self.dns and "dns_udp" not in taken:
            # Port 53 inside needs privilege over the sandbox's namespace, which the supervisor has
            # from outside: root directly, an ordinary user through the user namespace it owns.
            # Failing that, lookups are still recorded by the seccomp listener and refused.
            helper = launcher_binary()
            pair: tuple[socket.socket, socket.socket] | None = None
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if os.geteuid() == 0:
                    pair = procinfo.dns_sockets_in_netns(launcher)
                elif helper is not None:
                    owner = sandbox._init_pid or launcher
                    pair = await asyncio.to_thread(procinfo.dns_sockets_via_helper, str(helper),
                                                   owner)  # fmt: skip
            if pair is not None:
                taken["dns_udp"], taken["dns_tcp"] = pair[0].detach(), pair[1].detach()
        self.notifier = Notifier(taken["notify"], self._on_attempt,
                                 local_trap=set() if "dns_udp" in taken else {53},
                                 on_proxy_connect=self._on_proxy_connect,
                                 proxy_port=self.proxy_port)  # fmt: skip
        lsock = socket.socket(fileno=taken["proxy"])
        lsock.setblocking(False)
        self._socks.append(lsock)
        self._spawn(self._accept_loop(lsock, self._handle, "proxy requests"))
        if "dns_udp" in taken:
            self.dns_mode = "gateway"
            usock = socket.socket(fileno=taken["dns_udp"])
            usock.setblocking(False)
            self._socks.append(usock)
            self.loop.add_reader(usock.fileno(), self._on_dns, usock)
        else:
            self.dns_mode = "record"
        if "dns_tcp" in taken:
            tsock = socket.socket(fileno=taken["dns_tcp"])
            tsock.setblocking(False)
            self._socks.append(tsock)
            self._spawn(self._accept_loop(tsock, self._dns_tcp, "DNS-over-TCP connections"))
        self.emit(rule="egress.gateway_started",
                  message=f"egress gateway on 127.0.0.1:{self.proxy_port} in the sandbox; "
                  f"dns {self.dns_mode}; default {self.policy.egress}",
                  evidence={"proxy_port": self.proxy_port, "dns": self.dns_mode,
                            "allow": [r.host for r in self.policy.allow]})  # fmt: skip

    async def stopped(self, sandbox: Sandbox) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()
        for s in self._socks:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                if self.loop is not None:
                    self.loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        for c in list(self.conns):
            if c.relay is not None:
                c.relay.cut("sandbox stopped")
        while self._pending:
            self._pending.popleft()[0].close()
        if self._pipes is not None:
            for fd in self._pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipes = None
        shutil.rmtree(corral_home() / "egress" / sandbox.id, ignore_errors=True)  # its resolv.conf

    async def _decide(self, host: str, port: int) -> Verdict:
        """Decisions are cached for a few seconds (names re-resolve after that), per policy."""
        key = (host, port)
        now = time.monotonic()
        hit = self._verdicts.get(key)
        if hit is not None and now - hit[0] < 5.0:
            return hit[1]
        v = await decide(self.policy, self.resolver, host, port)
        if len(self._verdicts) > 4096:
            self._verdicts.clear()
        self._verdicts[key] = (now, v)
        return v

    # ------------------------------------------------------------ live policy
    async def update(self, policy: NetworkPolicy) -> list[str]:
        """Change the network policy now; open connections it no longer allows are cut."""
        self.policy = policy
        self._verdicts.clear()
        cut: list[str] = []
        for c in list(self.conns):
            if c.relay is None or c.relay.ended:
                continue
            v = await decide(policy, self.resolver, c.host, c.port)
            if not v.allowed or (c.ip and c.ip not in v.ips):
                c.relay.cut("policy changed")
                cut.append(f"{c.host}:{c.port}")
        self.emit(rule="egress.policy_updated", category="policy",
                  message=f"network policy changed; {len(cut)} open connection(s) cut",
                  evidence={"allow": [r.host for r in policy.allow],
                            "deny": [r.host for r in policy.deny], "cut": cut})  # fmt: skip
        return cut

    # ------------------------------------------------------------ events and responses
    def emit(self, **fields: Any) -> None:
        """Record an egress event; callable from any thread."""
        if self.sandbox is None:
            return
        fields.setdefault("source", "egress")
        sb = self.sandbox
        try:
            in_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            in_loop = False
        if in_loop or self.loop is None:
            sb.emit(**fields)
        else:
            self.loop.call_soon_threadsafe(lambda: sb.emit(**fields))

    def _response(self, category: str) -> str:
        sb = self.sandbox
        if sb is None or sb.policy.observe_only:
            return "alert"
        return sb.policy.responses.for_category(category)

    def _enforce(self, response: str, category: str, pid: int | None, why: str) -> str:
        """Carry out kill/terminate (from any thread); returns the event action."""
        if response == "alert":
            return "alerted"
        if response == "kill" and pid:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
            return "killed"
        if response == "terminate" and self.sandbox is not None and self.loop is not None:
            sb = self.sandbox

            def _end() -> None:  # its own task: stopped() must not cancel the teardown it runs
                task = asyncio.ensure_future(
                    sb.terminate(f"{category}: {why}", rule=f"{category}.terminated")
                )
                self._responses.add(task)
                task.add_done_callback(self._responses.discard)

            self.loop.call_soon_threadsafe(_end)
            return "terminated"
        return "blocked"

    def _spawn(self, coro: Any) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_proxy_connect(self, fd: int, pid: int) -> None:
        """A copy of a client's socket as it connects to the proxy: its port, once connected,
        names the pid (far cheaper than scanning /proc/<pid>/net/tcp for every connection)."""
        now = time.monotonic()
        while self._pending and (now - self._pending[0][2] > 10 or len(self._pending) > 256):
            self._pending.popleft()[0].close()
        self._pending.append((socket.socket(fileno=fd), pid, now))

    def _pending_pid(self, client_port: int) -> int | None:
        for i, (s, pid, _) in enumerate(self._pending):
            try:
                port = s.getsockname()[1]
            except OSError:
                continue
            if port == client_port:
                del self._pending[i]
                s.close()
                return pid
        return None

    def _owner(self, proto: str, local_port: int, remote_port: int | None) -> procinfo.ProcInfo:
        if not self.netns_pid or self.sandbox is None:
            return procinfo.ProcInfo()
        if proto == "tcp" and remote_port == self.proxy_port:
            pid = self._pending_pid(local_port)
            if pid is not None:
                return self._info(pid)
        inode = procinfo.socket_inode(self.netns_pid, proto, local_port, remote_port)
        if inode is None:
            return procinfo.ProcInfo()
        pids = self.sandbox.host_pids() or procinfo.descendants(self.netns_pid)
        return self._info(procinfo.owner_of_inode(inode, pids))

    def _info(self, pid: int | None) -> procinfo.ProcInfo:
        """ProcInfo cached per process (pid and start time): pip opens many connections."""
        if not pid:
            return procinfo.ProcInfo()
        key = (pid, procinfo.start_time(pid))
        hit = self._info_cache.get(key)
        if hit is None:
            if len(self._info_cache) > 1024:
                self._info_cache.clear()
            hit = self._info_cache[key] = procinfo.info(pid)
        return hit

    @staticmethod
    def _proc_fields(p: procinfo.ProcInfo) -> dict[str, Any]:
        return {"pid": p.pid, "exe": p.exe, "argv": p.argv}

    # ------------------------------------------------------------ raw traffic (seccomp)
    def _on_attempt(self, a: Attempt) -> None:
        sb = self.sandbox
        ip = addresses.parse_ip(a.ip)
        cls = addresses.special_class(ip) if ip is not None else None
        if a.port == 53 and a.ip in ("127.0.0.1", "::1"):
            cls = None  # the sandbox's own resolv.conf: a lookup, not a probe
        category = addresses.category_for(cls)
        p = a.proc or procinfo.ProcInfo(pid=a.pid)
        qname = _dns_name(a.payload) if a.port == 53 else None
        rep = reputation.lookup(qname, a.port)
        if qname:
            for m in rep:
                if m.kind == "domain":
                    category = m.category
        severity = {"metadata": "high", "probe_internal": "medium"}.get(category, "low")
        severity = reputation.raise_severity(severity, rep)
        if a.port == 53 and a.proto == "udp":
            rule = "egress.dns_blocked"
            msg = (f"DNS query for {qname} sent straight to {a.ip}:53 refused" if qname
                   else f"DNS query to {a.ip}:53 outside the gateway refused")  # fmt: skip
        else:
            rule = "egress.raw_connect" if a.proto == "tcp" else "egress.raw_udp"
            msg = f"{a.proto.upper()} {a.syscall}() to {a.ip}:{a.port} bypassing the proxy refused"
        if cls:
            msg += f" ({cls} address)"
        action = self._enforce(self._response(category), category, p.pid, msg)
        if action == "alerted":
            action = "blocked"  # the namespace has no route: a raw attempt never gets through
        self.emit(rule=rule, category=category, severity=severity, action=action,
                  attack="T1552.005" if category == "metadata" else None,
                  step=sb.step or None if sb else None, **self._proc_fields(p),
                  dst={"host": qname, "ip": a.ip, "port": a.port,
                       "proto": "dns" if rule == "egress.dns_blocked" else a.proto},
                  message=msg,
                  evidence={"syscall": a.syscall, "parents": p.parents[:2],
                            "reputation": [m.reason for m in rep]})  # fmt: skip

    # ------------------------------------------------------------ DNS
    def _on_dns(self, usock: socket.socket) -> None:
        try:
            data, peer = usock.recvfrom(4096)
        except OSError:
            return
        self._spawn(self._answer_dns(usock, data, peer))

    async def _answer_dns(self, usock: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
        reply = await self._dns_reply(data, lambda: self._owner("udp", peer[1], None), "udp")
        if reply is None:
            return
        query = dns.message.from_wire(data)
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            wire = reply.to_wire(max_size=limit)
        except dns.exception.TooBig:  # the resolver retries over TCP, where it fits
            reply.answer.clear()
            reply.flags |= dns.flags.TC
            wire = reply.to_wire()
        with contextlib.suppress(OSError):
            usock.sendto(wire, peer)

    async def _dns_tcp(self, conn: socket.socket) -> None:
        """DNS over TCP (RFC 7766): two-byte length, message; several queries per connection."""
        assert self.loop is not None
        loop = self.loop
        conn.setblocking(False)
        self._handshakes += 1
        try:
            cport = conn.getpeername()[1]
            reader = _Reader(loop, conn)
            p: procinfo.ProcInfo | None = None

            def owner() -> procinfo.ProcInfo:
                nonlocal p
                if p is None:
                    p = self._owner("tcp", cport, 53)
                return p

            while True:
                try:
                    size = int.from_bytes(await asyncio.wait_for(reader.exactly(2), 10), "big")
                    data = await asyncio.wait_for(reader.exactly(size), 10)
                except (TimeoutError, ValueError):
                    return
                reply = await self._dns_reply(data, owner, "tcp")
                if reply is None:
                    return
                wire = reply.to_wire()
                await loop.sock_sendall(conn, len(wire).to_bytes(2, "big") + wire)
        except OSError:
            return
        finally:
            self._handshakes -= 1
            conn.close()

    async def _dns_reply(self, data: bytes, owner: Callable[[], procinfo.ProcInfo], transport: str
                         ) -> dns.message.Message | None:  # fmt: skip
        """The answer to one query, by the policy, recorded with the name asked (UDP or TCP)."""
        try:
            query = dns.message.from_wire(data)
            q = query.question[0]
        except (dns.exception.DNSException, IndexError):
            return None
        name = q.name.to_text().rstrip(".")
        qtype = dns.rdatatype.to_text(q.rdtype)
        p = owner()
        sb = self.sandbox
        reply = dns.message.make_response(query)
        verdict: Verdict | None = None
        if self.policy.dns != "none" and name_allowed(self.policy, name):
            verdict = await decide(self.policy, self.resolver, name, None)
        if verdict is not None and verdict.allowed:
            want = {"A": 4, "AAAA": 6}.get(qtype)
            ips = [i for i in verdict.ips if (addresses.parse_ip(i) or 0) and
                   addresses.parse_ip(i).version == want]  # type: ignore[union-attr]  # fmt: skip
            if ips:
                reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", qtype, ips))
            self.emit(rule="egress.dns_query", category="policy", severity="info",
                      action="allowed", step=sb.step or None if sb else None,
                      **self._proc_fields(p), dst={"host": name, "port": 53, "proto": "dns"},
                      message=f"DNS {qtype} {name} answered: {', '.join(ips) or 'no records'}",
                      evidence={"qtype": qtype, "answer": ips, "transport": transport})  # fmt: skip
        else:
            reply.set_rcode(dns.rcode.REFUSED)
            rep = reputation.lookup(name)
            category = next((m.category for m in rep if m.kind == "domain"), "policy")
            reason = verdict.reason if verdict is not None else (
                "the policy answers no DNS" if self.policy.dns == "none"
                else f"{name} is not in the allowlist")  # fmt: skip
            if verdict is not None and not verdict.allowed:
                category = verdict.category
            if name in addresses.METADATA_NAMES:
                category = "metadata"
            severity = reputation.raise_severity("low", rep)
            self.emit(rule="egress.dns_blocked", category=category, severity=severity,
                      action="blocked", step=sb.step or None if sb else None,
                      **self._proc_fields(p), dst={"host": name, "port": 53, "proto": "dns"},
                      message=f"DNS {qtype} {name} refused: {reason}",
                      evidence={"qtype": qtype, "parents": p.parents[:2], "transport": transport,
                                "reputation": [m.reason for m in rep]})  # fmt: skip
        return reply

    # ------------------------------------------------------------ the proxy
    async def _accept_loop(self, lsock: socket.socket,
                           handler: Callable[[socket.socket], Awaitable[None]], what: str) -> None:  # fmt: skip
        """Accept for the proxy or DNS over TCP: a flood of idle connections is closed (once a
        second recorded), never allowed to exhaust the supervisor."""
        assert self.loop is not None
        while True:
            try:
                conn, _ = await self.loop.sock_accept(lsock)
            except OSError as err:
                if await self._accept_failed(err):
                    continue
                return
            if self._handshakes >= max(64, 2 * self.policy.max_connections):
                conn.close()
                if time.monotonic() - self._overflow_logged > 1.0:
                    self._overflow_logged = time.monotonic()
                    self.emit(rule="egress.max_connections", category="policy",
                              severity="medium", action="blocked",
                              message=f"{self._handshakes} {what} pending; new ones closed")  # fmt: skip
                continue
            self._spawn(handler(conn))

    async def _accept_failed(self, err: OSError) -> bool:
        """True to go on accepting: running out of fds or memory passes (the client waits in the
        backlog), and the gateway must not stop serving the sandbox for good because of it."""
        if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            return False
        if time.monotonic() - self._overflow_logged > 1.0:
            self._overflow_logged = time.monotonic()
            self.emit(rule="egress.gateway_overloaded", category="policy", severity="medium",
                      action="alerted", message=f"the supervisor could not accept a connection "
                      f"({err.strerror}); retrying", evidence={"errno": err.errno})  # fmt: skip
        await asyncio.sleep(0.05)
        return True

    async def _handle(self, client: socket.socket) -> None:
        assert self.loop is not None
        loop = self.loop
        client.setblocking(False)
        cport = client.getpeername()[1]
        owner = functools.partial(self._owner, "tcp", cport, self.proxy_port)
        step = self.sandbox.step or None if self.sandbox else None
        reader = _Reader(loop, client)
        handed_off = False
        self._handshakes += 1
        try:
            head = await asyncio.wait_for(reader.peek(), 30)
            if not head:
                return
            if head[0] == 5:
                req = await asyncio.wait_for(_socks_request(reader, client, loop), 30)
                if req is None:
                    return
                host, port = req
                via = "socks5"
            else:
                raw = await asyncio.wait_for(reader.until(b"\r\n\r\n"), 30)
                parsed = _http_request(raw)
                if parsed is None:
                    await loop.sock_sendall(client, _http_status(400, "bad proxy request"))
                    return
                via, host, port, rewritten = parsed
            conn = _Conn(normalize_host(host), port, via, step, owner)
            handed_off = await self._open(conn, client, reader, rewritten if via == "http" else b"")
        except (TimeoutError, OSError, ValueError):
            return
        finally:
            self._handshakes -= 1
            if not handed_off:
                client.close()

    async def _refuse(self, c: _Conn, client: socket.socket, status: int, *, rule: str,
                      message: str, category: str = "policy", severity: str = "low",
                      attack: str | None = None, evidence: dict[str, Any] | None = None) -> None:  # fmt: skip
        assert self.loop is not None
        p = c.proc()
        action = self._enforce(self._response(category), category, p.pid, message)
        if action == "alerted":
            action = "blocked"  # a policy refusal is a refusal; the response only adds to it
        self.emit(rule=rule, category=category, severity=severity, action=action, attack=attack,
                  step=c.step, **self._proc_fields(p),
                  dst={"host": c.host, "ip": c.ip, "port": c.port, "proto": c.via},
                  message=message,
                  evidence={"via": c.via, "parents": p.parents[:2], **(evidence or {})})  # fmt: skip
        with contextlib.suppress(OSError):
            if c.via == "socks5":
                await self.loop.sock_sendall(
                    client, bytes([5, _SOCKS_REFUSED, 0, 1, 0, 0, 0, 0, 0, 0])
                )
            else:
                await self.loop.sock_sendall(client, _http_status(status, message))

    async def _open(self, c: _Conn, client: socket.socket, reader: _Reader, first: bytes) -> bool:
        assert self.loop is not None
        loop = self.loop
        if len(self.conns) >= self.policy.max_connections:
            await self._refuse(c, client, 503, rule="egress.max_connections", severity="medium",
                               message=f"{self.policy.max_connections} connections already open")  # fmt: skip
            return False
        if self.policy.max_bytes is not None and self.total_bytes >= self.policy.max_bytes:
            await self._refuse(c, client, 503, rule="egress.max_bytes", severity="medium",
                               message=f"byte cap of {self.policy.max_bytes} reached")  # fmt: skip
            return False
        v = await self._decide(c.host, c.port)
        c.verdict = v
        if not v.allowed:
            await self._refuse(c, client, 403, rule=v.rule, message=v.reason, category=v.category,
                               severity=v.severity, attack=v.attack,
                               evidence={"reputation": [m.reason for m in v.reputation]})  # fmt: skip
            return False
        self.conns.add(c)
        upstream: socket.socket | None = None
        err: Exception | None = None
        for ip in v.ips:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(s, (ip, c.port)), 10)
                upstream, c.ip = s, ip
                break
            except (OSError, TimeoutError) as e:
                s.close()
                err = e
        if upstream is None:
            self.conns.discard(c)
            await self._refuse(c, client, 502, rule="egress.upstream_failed", severity="info",
                               message=f"{c.host}:{c.port} unreachable: {err}")  # fmt: skip
            return False
        for s in (upstream, client):  # forwarded writes are whole messages: no Nagle delay
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if c.via == "connect":
            await loop.sock_sendall(client, b"HTTP/1.1 200 Connection established\r\n\r\n")
        elif c.via == "socks5":
            await loop.sock_sendall(client, bytes([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]))
        relay = Relay(client, upstream, first=first + reader.rest(),
                      on_first=lambda data: self._on_first(c, data),
                      on_done=lambda r: self._on_done(c, r), on_bytes=self._on_bytes)  # fmt: skip
        c.relay = relay
        relay.start()
        return True

    # ------------------------------------------------------------ relay callbacks (threads)
    def _on_bytes(self, n: int) -> bool:
        cap = self.policy.max_bytes
        with self._lock:
            self.total_bytes += n
            over = cap is not None and self.total_bytes > cap
            first = over and not self._bytes_flagged
            if first:
                self._bytes_flagged = True
        if first:
            self.emit(rule="egress.max_bytes", category="policy", severity="medium",
                      action="blocked", message=f"byte cap of {cap} passed; connections cut",
                      evidence={"total_bytes": self.total_bytes})  # fmt: skip
            for c in list(self.conns):
                if c.relay is not None:
                    c.relay.cut("max_bytes")
        return not over

    def _on_first(self, c: _Conn, data: bytes) -> bool:
        c.proc()  # now, while the client's socket surely exists
        s = c.sniff = sniff(data)
        rule_protocols = c.verdict.matched.protocols if c.verdict and c.verdict.matched else None
        finding: dict[str, Any] | None = None
        if s.protocol == "stratum":
            finding = {"rule": "mining.stratum", "category": "mining", "severity": "high",
                       "attack": "T1496", "message": f"stratum mining protocol to {c.host}:{c.port}"
                       f" ({s.evidence.get('method', 'json-rpc')})"}  # fmt: skip
        elif s.protocol == "ssh" and "ssh" not in (rule_protocols or []):
            finding = {"rule": "tunnel.ssh_via_proxy", "category": "tunnel", "severity": "high",
                       "attack": "T1572", "message": f"SSH session to {c.host}:{c.port} through "
                       "the proxy, not allowed by policy"}  # fmt: skip
        elif (s.protocol == "tls" and s.sni and addresses.parse_ip(c.host) is None
              and normalize_host(s.sni) != c.host):  # fmt: skip
            finding = {"rule": "tunnel.domain_fronting", "category": "tunnel", "severity": "high",
                       "attack": "T1090.004", "message": f"TLS SNI {s.sni} differs from the "
                       f"requested host {c.host} (domain fronting)"}  # fmt: skip
        elif rule_protocols and "tcp" not in rule_protocols:
            proto = {"tls": "https"}.get(s.protocol, s.protocol)
            if proto not in rule_protocols:
                finding = {"rule": "egress.protocol_not_allowed", "category": "policy",
                           "severity": "medium", "message": f"{proto} to {c.host}:{c.port}; "
                           f"the policy allows {', '.join(rule_protocols)}"}  # fmt: skip
        if finding is None:
            return True
        p = c.proc()
        cat = finding["category"]
        response = self._response(cat)
        if cat == "policy":
            response = "block"
        action = self._enforce(response, cat, p.pid, finding["message"])
        rep = reputation.lookup(c.host, c.port)
        c.flagged = {**finding, "action": action}
        self.emit(rule=finding["rule"], category=cat,
                  severity=reputation.raise_severity(finding["severity"], rep),
                  action=action, attack=finding.get("attack"), step=c.step,
                  **self._proc_fields(p),
                  dst={"host": c.host, "ip": c.ip, "port": c.port, "proto": s.protocol},
                  message=finding["message"],
                  evidence={**s.evidence, "sni": s.sni, "via": c.via, "parents": p.parents[:2],
                            "first_bytes": data[:120].decode("latin-1"),
                            "reputation": [m.reason for m in rep]})  # fmt: skip
        if action == "alerted":
            return True
        c.relay.cut(finding["rule"]) if c.relay else None  # type: ignore[func-returns-value]
        return False

    def _on_done(self, c: _Conn, r: Relay) -> None:
        self.conns.discard(c)
        p = c.proc()
        cut = r.cut_reason
        self.emit(rule="egress.connection", category="policy", severity="info",
                  action="blocked" if cut else "allowed", step=c.step, **self._proc_fields(p),
                  dst={"host": c.host, "ip": c.ip, "port": c.port,
                       "proto": c.sniff.protocol if c.sniff else c.via},
                  message=f"{c.via} {c.host}:{c.port} closed: {r.bytes_up} B up, "
                  f"{r.bytes_down} B down in {r.duration:.3f}s" + (f" (cut: {cut})" if cut else ""),
                  evidence={"via": c.via, "bytes_up": r.bytes_up, "bytes_down": r.bytes_down,
                            "duration_s": round(r.duration, 6), "cut": cut,
                            "sni": c.sniff.sni if c.sniff else None})  # fmt: skip


# ---------------------------------------------------------------- helpers
async def _read_line(fd: int, timeout: float) -> str:
    """The launcher's one-line report, read on the event loop: fifty sandboxes starting at once
    must not each hold one of the default executor's few threads while they wait."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or buf.endswith(b"\n")) and not done.done():
            done.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
    return bytes(buf).decode(errors="replace").strip()


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit and return it. Each sandbox
    with a gateway holds about fifteen fds in the supervisor, two more per open connection, so the
    usual soft 1024 ends near sixty sandboxes; the hard limit is there to be used."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft


def _dns_name(payload: bytes) -> str | None:
    try:
        return dns.message.from_wire(payload).question[0].name.to_text().rstrip(".")
    except Exception:  # noqa: BLE001 - anything sent to port 53 may be garbage
        return None


def _http_status(code: int, reason: str) -> bytes:
    text = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}
    body = f"corral egress: {reason}\n".encode()
    return (f"HTTP/1.1 {code} {text.get(code, 'Error')}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body  # fmt: skip


def _split_hostport(text: str, default: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default


def _http_request(raw: bytes) -> tuple[str, str, int, bytes] | None:
    """(via, host, port, request to forward) from a proxy request head."""
    try:
        head = raw.decode("latin-1")
        line, _, rest = head.partition("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        return None
    if method == "CONNECT":
        host, port = _split_hostport(target, 443)
        return "connect", host, port, b""
    if not target.lower().startswith("http://"):
        return None
    hostport, _, path = target[7:].partition("/")
    host, port = _split_hostport(hostport, 80)
    keep = [h for h in rest.split("\r\n") if h and not h.lower().startswith(
        ("proxy-connection:", "proxy-authorization:", "connection:", "keep-alive:"))]  # fmt: skip
    out = f"{method} /{path} {version}\r\n" + "".join(f"{h}\r\n" for h in keep)
    out += "Connection: close\r\n\r\n"
    return "http", host, port, out.encode("latin-1")


class _Reader:
    """Buffered reads on a non-blocking socket, leaving what follows the head for the relay."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.sock, self.buf = loop, sock, b""

    async def _more(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 65536)
        self.buf += data
        return bool(data)

    async def peek(self) -> bytes:
        if not self.buf:
            await self._more()
        return self.buf

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._more():
                raise ValueError("client closed")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if len(self.buf) > _HEAD_MAX or not await self._more():
                raise ValueError("no request head")
        out, _, self.buf = self.buf.partition(sep)
        return out + sep

    def rest(self) -> bytes:
        out, self.buf = self.buf, b""
        return out


async def _socks_request(r: _Reader, client: socket.socket, loop: asyncio.AbstractEventLoop
                         ) -> tuple[str, int] | None:  # fmt: skip
    ver, n = await r.exactly(2)
    methods = await r.exactly(n)
    if ver != 5 or 0 not in methods:
        await loop.sock_sendall(client, b"\x05\xff")
        return None
    await loop.sock_sendall(client, b"\x05\x00")
    ver, cmd, _, atyp = await r.exactly(4)
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, await r.exactly(4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, await r.exactly(16))
    elif atyp == 3:
        host = (await r.exactly((await r.exactly(1))[0])).decode("idna")
    else:
        return None
    port = int.from_bytes(await r.exactly(2), "big")
    if cmd != 1:  # CONNECT only: no BIND (an inbound port) and no UDP ASSOCIATE
        await loop.sock_sendall(client, bytes([5, 7, 0, 1, 0, 0, 0, 0, 0, 0]))
        return None
    return host, port


def default_private_dir(sandbox_id: str) -> Path:
    return corral_home() / "egress" / sandbox_id
