"""`Egress`: the gateway attached to one sandbox, its only way off the host.

Inside the sandbox a launcher opens a proxy listener (HTTP, CONNECT and SOCKS5 on one port) and a DNS
listener in the sandbox's loopback-only network namespace and installs a seccomp user-notification
filter; the supervisor takes those fds and serves them here. So there is no bridge process inside to
kill, and traffic that ignores the proxy still reaches the supervisor as a notification.

The parts: `proxy_protocol` reads requests (h11, SOCKS5), `dns_answer` answers lookups, `decide`
applies the network policy, `sniff` reads both directions of a connection, `relay` moves the bytes.
What any of it observed becomes a fact (`facts`) that `Egress.observe` puts through the rule packs;
the strongest finding goes to the responder, which records it, acts and charges the penalty. The
gateway itself only refuses or cuts connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import logging
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from corral.egress import addresses, facts, launch, procinfo, proxy_protocol, reputation
from corral.egress.decide import Verdict, decide, normalize_host
from corral.egress.dns_answer import DnsAnswerer, to_wire
from corral.egress.notify import Attempt, Notifier
from corral.egress.proxy_protocol import Malformed, Reader
from corral.egress.ratelimit import Summariser
from corral.egress.relay import Relay
from corral.egress.resolve import Resolver
from corral.egress.sniff import Evidence, StreamSniffer
from corral.policy.model import NetworkPolicy
from corral.respond.responder import RANK, Responder, kill_pids, strongest
from corral.respond.responder import decide as response_for
from corral.rules.finding import severity_rank

if TYPE_CHECKING:
    from corral.sandbox.bwrap import BwrapSpec
    from corral.sandbox.sandbox import Sandbox

log = logging.getLogger(__name__)
PROXY_PORT = 3128
SUMMARY_BURST = 20  # records of one kind per second before the rest are counted
# fact fields a rule usually tests for plain equality: the rules worth trying are picked by them
_INDEXED = ("source", "kind", "outcome", "via", "refusal")
# fact fields that are the event's own fields (or a summary of them), not its evidence
_NOT_EVIDENCE = frozenset({"source", "kind", "step", "dst", "proc", "pid", "exe", "argv",
                           "message", "evidence", "dns", "chain"})  # fmt: skip


# the launcher lives in egress/launch.py; these names stay importable from here
LAUNCHER_NAME = launch.LAUNCHER_NAME
launcher_binary = launch.launcher_binary


def proxy_env(port: int = PROXY_PORT) -> dict[str, str]:
    http = f"http://127.0.0.1:{port}"
    env = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": f"socks5h://127.0.0.1:{port}",
           "NO_PROXY": "localhost,127.0.0.1,::1"}  # fmt: skip
    env |= {k.lower(): v for k, v in env.items()}
    env |= {"npm_config_proxy": http, "npm_config_https_proxy": http}
    return env


class _Conn:
    """Book-keeping for one proxied connection: its end record, live policy changes, and the
    inspector the relay shows its first kilobytes to."""

    def __init__(self, gw: Egress, host: str, port: int, via: str, step: int | None,
                 owner: Callable[[], procinfo.ProcInfo],
                 host_header: str | None = None) -> None:  # fmt: skip
        self.gw = gw
        self.host, self.port, self.via, self.step = host, port, via, step
        self.host_header = host_header
        self._owner = owner
        self._proc: procinfo.ProcInfo | None = None
        self.ip: str | None = None
        self.verdict: Verdict | None = None
        self.relay: Relay | None = None
        self.sniffer = StreamSniffer(host)
        self.flagged: str | None = None  # the rule that cut it

    def proc(self) -> procinfo.ProcInfo:
        """The client process, looked up once while its socket is open (first bytes or refusal)."""
        if self._proc is None:
            try:
                self._proc = self._owner()
            except Exception:  # noqa: BLE001 - a vanished process must not break the record
                self._proc = procinfo.ProcInfo()
        return self._proc

    # the relay's Inspector
    def inspect(self, up: bool, data: bytes) -> str:
        try:
            found = self.sniffer.feed(up, data)
            if found and not self.gw.on_evidence(self, found):
                return "cut"
        except Exception:  # noqa: BLE001 - fail closed: what cannot be judged is not forwarded
            log.exception("egress: judging %s:%s failed; connection cut", self.host, self.port)
            return "cut"
        return "hold" if self.sniffer.hold(up) else "forward"

    def wants(self, up: bool) -> bool:
        return not self.sniffer.done(up)

    def closed(self, up: bool) -> str:
        try:
            found = self.sniffer.end(up)
            return "cut" if found and not self.gw.on_evidence(self, found) else "forward"
        except Exception:  # noqa: BLE001 - fail closed, as in inspect
            log.exception("egress: judging %s:%s failed; connection cut", self.host, self.port)
            return "cut"


class Egress:
    """Attach to a Sandbox: `Sandbox(policy, egress=Egress())`; `await sb.egress.update(network)`."""

    def __init__(self, policy: NetworkPolicy | None = None, *, resolver: Resolver | None = None,
                 proxy_port: int = PROXY_PORT, dns: bool = True, engine: Any = None,
                 responder: Responder | None = None) -> None:  # fmt: skip
        self._policy_arg = policy
        self.policy: NetworkPolicy = policy or NetworkPolicy()
        self.resolver = resolver or Resolver()
        self.proxy_port = proxy_port
        self.dns = dns
        self._engine = engine
        self.responder = responder or Responder()
        reputation.load()  # parse the data file now, not on the first connection
        raise_fd_limit()
        self.sandbox: Sandbox | None = None
        self.netns_pid: int | None = None
        self.total_bytes = 0
        self.conns: set[_Conn] = set()
        self.notifier: Notifier | None = None
        self.dns_mode = "none"
        self.dns_answerer = DnsAnswerer(self)
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handshakes = 0
        self._overloaded_logged = 0.0
        self._launch: launch.Launch | None = None
        self._dns_task: asyncio.Future[tuple[socket.socket, socket.socket] | None] | None = None
        self._bytes_flagged = False
        self._verdicts: dict[tuple[str, int], tuple[float, Verdict]] = {}
        self._info_cache: dict[tuple[int, int | None], procinfo.ProcInfo] = {}
        # copies of clients' sockets taken at their connect() to the proxy, with pid and time
        self._pending: collections.deque[tuple[socket.socket, int, float]] = collections.deque()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.summary = Summariser(self._summarised, burst=SUMMARY_BURST)
        self._views: dict[tuple[int, tuple[Any, ...]], Any] = {}
        self._clean: set[tuple[Any, ...]] = set()

    @property
    def engine(self) -> Any:
        """The rule engine every observation goes through: the one the sandbox's policy asks for
        (its `rules:` section: disabled rules, exceptions, macros), as for the gate and the
        monitor; the shipped packs before a sandbox is attached."""
        if self._engine is None:
            from corral.rules.engine import RuleEngine

            policy = getattr(self.sandbox, "policy", None)
            if policy is None:
                return RuleEngine.default()
            self._engine = RuleEngine.for_policy(policy)
        return self._engine

    @property
    def engine_ready(self) -> bool:
        """Whether `engine` answers without building the packs (then no thread hop for it)."""
        if self._engine is not None:
            return True
        from corral.rules.engine import default_built

        return default_built()

    def _engine_for(self, fact: dict[str, Any]) -> Any:
        """The engine's event rules that can fire on facts like this one: those whose plain
        equality tests on the fields below (`source`, `kind`, `outcome`, `via`, `refusal`) hold
        for it. The same rules and findings, without trying forty predicates per connection;
        rebuilt if the engine is replaced."""
        engine = self.engine
        sig = tuple(fact.get(k) for k in _INDEXED)
        key = (id(engine), sig)
        view = self._views.get(key)
        if view is None:
            from corral.rules.engine import RuleEngine

            def may_fire(when: dict[str, Any]) -> bool:
                for k, have in zip(_INDEXED, sig, strict=True):
                    want = when.get(k, have)
                    if isinstance(want, dict):
                        if not isinstance(want.get("in"), list) or set(want) != {"in"}:
                            continue  # another operator: left to the rule itself
                        if have not in want["in"]:
                            return False
                    elif want != have:
                        return False
                return True

            rules = [r for r in engine.rules if r.match == "event" and may_fire(r.when)]
            if len(self._views) > 256:
                self._views.clear()
            excs = getattr(engine, "exceptions", None) or {}  # the policy's, kept
            reads = sorted({f for r in rules for w in (r.when, *excs.get(r.id, ()))
                            for f in _fields_read(w)})  # fmt: skip
            view = self._views[key] = (
                RuleEngine(rules, engine.reputation, exceptions=excs),
                tuple(reads),
            )
        return view

    # ------------------------------------------------------------ the Attachment protocol
    def prepare(self, sandbox: Sandbox, spec: BwrapSpec, command: list[str]
                ) -> tuple[list[str], tuple[int, ...]]:  # fmt: skip
        self.sandbox = sandbox
        if self._policy_arg is None:
            self.policy = sandbox.policy.network
        spec.extra_env = {**proxy_env(self.proxy_port), **spec.extra_env}
        # the sandbox's resolv.conf, handed to bwrap as data through an fd (nothing on disk to
        # make at start and remove at close); bwrap gets spec.fds, the caller closes them
        resolv = os.memfd_create("corral-resolv.conf", os.MFD_CLOEXEC)
        os.write(resolv, b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        os.lseek(resolv, 0, os.SEEK_SET)
        spec.fds.append(resolv)
        spec.extra_args = [*spec.extra_args, "--ro-bind-data", str(resolv), "/etc/resolv.conf"]
        self._launch = launch.prepare(self.proxy_port, self.dns, command)
        spec.extra_args = [*spec.extra_args, *self._launch.bwrap_args]
        return self._launch.command, self._launch.child_fds

    def cloned(self, sandbox: Sandbox, init_pid: int) -> None:
        """bwrap reported the sandbox's init: its network namespace exists while bwrap still
        mounts the root, so the DNS sockets are bound now, off the start's critical path."""
        if self.dns and self._dns_task is None:
            self._dns_task = asyncio.ensure_future(self._bind_dns(init_pid))

    @staticmethod
    async def _bind_dns(netns_pid: int) -> tuple[socket.socket, socket.socket] | None:
        """127.0.0.1:53 inside the sandbox. Port 53 needs privilege over the sandbox's namespace,
        which the supervisor has from outside: root directly, an ordinary user through the user
        namespace it owns (the compiled launcher's --bind-dns). Failing that (None), lookups are
        still recorded by the seccomp listener and refused."""
        try:
            if os.geteuid() == 0:
                return await asyncio.to_thread(procinfo.dns_sockets_in_netns, netns_pid)
            helper = launcher_binary()
            if helper is not None:
                return await asyncio.to_thread(procinfo.dns_sockets_via_helper, str(helper),
                                               netns_pid)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return None

    async def _dns_pair(self, sandbox: Sandbox, launcher: int
                        ) -> tuple[socket.socket, socket.socket] | None:  # fmt: skip
        task, self._dns_task = self._dns_task, None
        pair = await task if task is not None else None
        if pair is None:  # no early bind (driven without `cloned`), or it failed: once more now
            pair = await self._bind_dns(sandbox._init_pid or launcher)
        return pair

    async def started(self, sandbox: Sandbox, bwrap_pid: int) -> None:
        assert self._launch is not None
        start, self._launch = self._launch, None
        self.loop = asyncio.get_running_loop()
        self.summary.schedule = self.loop.call_later
        launcher, taken = await launch.handshake(
            start,
            bwrap_pid,
            "egress gateway",
            "install python3-seccomp and check `corral doctor` (seccomp user notification)",
        )
        self.netns_pid = launcher
        if not self.engine_ready:  # the packs, compiled off the event loop (once per process)
            await asyncio.to_thread(lambda: self.engine)
        if self.dns and "dns_udp" not in taken:
            pair = await self._dns_pair(sandbox, launcher)
            if pair is not None:
                taken["dns_udp"], taken["dns_tcp"] = pair[0].detach(), pair[1].detach()
        self.notifier = Notifier(taken["notify"], self._on_attempt,
                                 local_trap=set() if "dns_udp" in taken else {53},
                                 on_proxy_connect=self._on_proxy_connect,
                                 proxy_port=self.proxy_port)  # fmt: skip
        ctx = getattr(sandbox, "ctx", None)  # the exec sensor shares this listener (the monitor)
        if ctx is not None:
            ctx.set_notifier(self.notifier)
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
        self.summary.flush()
        if self._launch is not None:  # started but never handed over
            launch.abandon(self._launch)
            self._launch = None
        task, self._dns_task = self._dns_task, None
        if task is not None:  # bound early, never taken: the start failed after the clone
            if task.done() and not task.cancelled() and task.result() is not None:
                for sock in task.result() or ():
                    sock.close()
            else:
                task.cancel()

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

    # ------------------------------------------------------------ events and judgement
    def emit(self, **fields: Any) -> None:
        """Write a plain record (no judgement: a connection's end, an answered lookup); callable
        from any thread."""
        if self.sandbox is None:
            return
        fields.setdefault("source", "egress")
        sb = self.sandbox
        ctx = getattr(sb, "ctx", None)  # blame on the step that started the process (monitor)
        if ctx is not None and fields.get("pid") and "origin_step" not in fields:
            fields["origin_step"] = ctx.origin_of(fields["pid"])
        try:
            in_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            in_loop = False
        if in_loop or self.loop is None:
            sb.emit(**fields)
        else:
            self.loop.call_soon_threadsafe(lambda: sb.emit(**fields))

    def record(self, **fields: Any) -> None:
        """The DNS answerer's plain records."""
        self.emit(**fields)

    def observe(self, fact: dict[str, Any], p: procinfo.ProcInfo, *, refused: bool) -> str:
        """One observation, one path: the fact goes through the rule packs; the strongest finding
        goes to the responder, which records it, acts (kill, terminate) and charges the penalty.
        Returns the response applied ("alert": the act may go on). `refused`: the gateway refused
        the act already, so a finding whose response is only an alert is recorded as blocked.
        Floods are summarised per rule id (`egress.attempts_summarised`), never dropped unjudged."""
        sb = self.sandbox
        view, reads = self._engine_for(fact)
        # the rules are pure functions of the fields they read: a fact that agrees with one that
        # fired nothing on all of them fires nothing either (pip's hundred connections to one host)
        clean = (id(view), tuple(_frozen(fact.get(f)) for f in reads))
        findings = [] if clean in self._clean else list(view.match_event(fact))
        if not findings and len(self._clean) < 4096:
            self._clean.add(clean)
        if sb is None or not findings:
            return "block" if refused else "alert"
        # the act is what its worst finding says (that one is recorded and charged); the
        # response is the strongest any of its findings asks for
        responses = {f.rule: response_for(sb, f) for f in findings}
        ranked = sorted(findings, key=lambda f: (severity_rank(f.severity),
                                                 RANK.get(responses[f.rule], 0)), reverse=True)  # fmt: skip
        top = ranked[0]
        response = strongest(responses.values())
        if refused and response == "alert":
            response = "block"  # what happened: the connection was refused
        dst = fact.get("dst") or {}
        sample = f"{dst.get('host') or dst.get('ip')}:{dst.get('port')}"
        if not self.summary.admit(top.rule, sample):
            if response == "kill" and p.pid:  # unrecorded one by one, never unanswered
                kill_pids([p.pid])
            return response
        evidence = {k: v for k, v in fact.items() if k not in _NOT_EVIDENCE}
        evidence.update(fact.get("evidence") or {})  # what the sniffer read, flat (sni, banner)
        evidence.update(fact.get("dns") or {})
        if len(ranked) > 1:  # one act, one charge: the others ride along for the record
            evidence["findings"] = [f.brief() for f in ranked]
        # the finding's own evidence repeats the event's fields (pid, exe, dst): left out; the
        # gateway refuses or cuts a connection itself, so only kill and terminate act here
        finding = top.model_copy(update={"evidence": {}})
        self.responder.respond(sb, finding, source="egress", loop=self.loop, pid=p.pid,
                               exe=p.exe, argv=facts.short_argv(p.argv), step=fact.get("step"),
                               evidence=evidence, kill_tree=lambda: [p.pid] if p.pid else [],
                               response=response, act=response in ("kill", "terminate"),
                               dst={k: dst.get(k) for k in ("host", "ip", "port", "proto")})  # fmt: skip
        return response

    def _summarised(self, rule: str, count: int, samples: list[str], window: float) -> None:
        self.emit(rule="egress.attempts_summarised", category="policy", severity="info",
                  action="blocked", message=f"{count} more {rule} event(s) in {window}s, "
                  f"summarised (e.g. {', '.join(samples[:3]) or 'no destination'})",
                  evidence={"for_rule": rule, "count": count, "samples": samples,
                            "window_s": window})  # fmt: skip

    def on_evidence(self, c: _Conn, found: list[Evidence]) -> bool:
        """What the stream sniffer read on a connection, judged; False: cut it."""
        p = c.proc()
        rule = c.verdict.matched if c.verdict else None
        listed = list(rule.protocols or []) if rule is not None and rule.protocols else []
        ok = True
        for ev in found:
            proto = {"tls": "https"}.get(ev.protocol, ev.protocol)
            allowed = not listed or "tcp" in listed or proto in listed
            if ev.finding is None and allowed:
                continue  # a plain protocol the rule allows: nothing for the packs to judge
            what = {"ssh": f"SSH ({ev.details.get('banner', '')})",
                    "stratum": f"stratum ({ev.details.get('method', 'json-rpc')})",
                    "shell": f"interactive shell output ({ev.details.get('line', '')[:40]})",
                    "tls_no_sni": "TLS without SNI",
                    "sni_fronting": f"TLS SNI {ev.details.get('sni')}",
                    "host_fronting": f"HTTP Host {ev.details.get('host_header')}",
                    "inflate_bomb": f"a compressed WebSocket message ({ev.details.get('compressed')}"
                                    f" bytes inflating past {ev.details.get('inflated')})"}.get(
                        ev.finding or "", proto)  # fmt: skip
            message = f"{what} {'from' if ev.direction == 'down' else 'to'} {c.host}:{c.port}"
            if ev.finding in ("tls_no_sni", "sni_fronting", "host_fronting"):
                message += f"; the client asked for {c.host}"
            if ev.websocket:
                message += " inside WebSocket frames"
            fact = facts.base("egress_evidence", p,
                              facts.dst(c.host, c.ip, c.port, ev.protocol), step=c.step,
                              via=c.via, evidence=ev.facts(), protocol_allowed=allowed,
                              protocol_listed=proto in listed, message=message)  # fmt: skip
            response = self.observe(fact, p, refused=False)
            if response != "alert":
                c.flagged = c.flagged or response
                ok = False
        return ok

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

    # ------------------------------------------------------------ raw traffic (seccomp)
    def _on_attempt(self, a: Attempt) -> None:
        """A connect/sendto that ignored the proxy: refused by the kernel (no route), judged here
        by the address it names, or the one that address embeds."""
        sb = self.sandbox
        ip = addresses.parse_ip(a.ip)
        cls = addresses.special_class(ip) if ip is not None else None
        inner = addresses.embedded(ip) if ip is not None else None
        if a.port == 53 and a.ip in ("127.0.0.1", "::1"):
            cls = None  # the sandbox's own resolv.conf: a lookup, not a probe
        p = a.proc or procinfo.ProcInfo(pid=a.pid)
        qname = _dns_name(a.payload) if a.port == 53 else None
        proto = "dns" if a.port == 53 and a.proto == "udp" else a.proto
        if proto == "dns":
            msg = (f"DNS query for {qname} sent straight to {a.ip}:53 refused" if qname
                   else f"DNS query to {a.ip}:53 outside the gateway refused")  # fmt: skip
        else:
            msg = f"{a.proto.upper()} {a.syscall}() to {a.ip}:{a.port} bypassing the proxy refused"
        if cls:
            msg += f" ({cls} address)"
        embedded = f"{inner[1]} {inner[0]}" if inner and inner[1] != "ipv4_mapped" else None
        if embedded:
            msg += f" (it embeds {inner[0]}, {inner[1]})"  # type: ignore[index]
        fact = facts.base("egress_attempt", p,
                          facts.dst(qname, a.ip, a.port, proto, cls=cls, embedded=embedded),
                          step=sb.step or None if sb else None, via="raw", outcome="refused",
                          refusal="bypass", syscall=a.syscall, message=msg)  # fmt: skip
        self.observe(fact, p, refused=True)

    # ------------------------------------------------------------ DNS
    def _on_dns(self, usock: socket.socket) -> None:
        try:
            data, peer = usock.recvfrom(4096)
        except OSError:
            return
        self._spawn(self._answer_dns(usock, data, peer))

    def _step(self) -> int | None:
        return self.sandbox.step or None if self.sandbox else None

    async def _answer_dns(self, usock: socket.socket, data: bytes, peer: tuple[str, int]) -> None:
        reply = await self.dns_answerer.reply(data, lambda: self._owner("udp", peer[1], None),
                                              "udp", self._step())  # fmt: skip
        if reply is None:
            return
        with contextlib.suppress(OSError):
            usock.sendto(to_wire(data, reply, "udp"), peer)

    async def _dns_tcp(self, conn: socket.socket) -> None:
        """DNS over TCP (RFC 7766): two-byte length, message; several queries per connection."""
        assert self.loop is not None
        loop = self.loop
        conn.setblocking(False)
        self._handshakes += 1
        try:
            cport = conn.getpeername()[1]
            reader = Reader(lambda: loop.sock_recv(conn, 65536))
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
                except (TimeoutError, EOFError):
                    return
                reply = await self.dns_answerer.reply(data, owner, "tcp", self._step())
                if reply is None:
                    return
                wire = reply.to_wire()
                await loop.sock_sendall(conn, len(wire).to_bytes(2, "big") + wire)
        except OSError:
            return
        finally:
            self._handshakes -= 1
            conn.close()

    # ------------------------------------------------------------ the proxy
    async def _accept_loop(self, lsock: socket.socket,
                           handler: Callable[[socket.socket], Awaitable[None]], what: str) -> None:  # fmt: skip
        """Accept for the proxy or DNS over TCP: past the cap on pending handshakes a new
        connection is closed at once, and still judged and recorded (summarised under a flood)."""
        assert self.loop is not None
        while True:
            try:
                conn, _ = await self.loop.sock_accept(lsock)
            except OSError as err:
                if await self._accept_failed(err):
                    continue
                return
            if self._handshakes >= max(64, 2 * self.policy.max_connections):
                p = procinfo.ProcInfo()
                with contextlib.suppress(OSError):
                    cport = conn.getpeername()[1]
                    p = self._owner("tcp", cport, self.proxy_port if "proxy" in what else 53)
                conn.close()
                fact = facts.base("egress_attempt", p, facts.dst(None, None, None, "tcp"),
                                  step=self._step(), via="accept", outcome="refused",
                                  refusal="max_connections",
                                  message=f"{self._handshakes} {what} pending; a new one was "
                                  "closed unread")  # fmt: skip
                self.observe(fact, p, refused=True)
                continue
            self._spawn(handler(conn))

    async def _accept_failed(self, err: OSError) -> bool:
        """True to go on accepting: running out of fds or memory passes (the client waits in the
        backlog), and the gateway must not stop serving the sandbox for good because of it."""
        if err.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            return False
        if time.monotonic() - self._overloaded_logged > 1.0:
            self._overloaded_logged = time.monotonic()
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
        # the client, named now while its socket surely exists (a refused client may be gone by
        # the time its request has been read)
        known = self._info_or(functools.partial(self._owner, "tcp", cport, self.proxy_port))

        def owner() -> procinfo.ProcInfo:
            return known

        step = self._step()
        reader = Reader(lambda: loop.sock_recv(client, 65536))
        handed_off = False
        self._handshakes += 1
        try:
            try:
                req = await asyncio.wait_for(
                    proxy_protocol.read_request(reader, lambda b: loop.sock_sendall(client, b)), 30
                )
            except Malformed as bad:
                p = self._info_or(owner)
                fact = facts.base("egress_malformed", p, facts.dst(None, None, None, bad.via),
                                  step=step, via=bad.via, reason=bad.reason,
                                  head=bad.head.decode("latin-1")[:200],
                                  message=f"malformed {bad.via} proxy request: {bad.reason}")  # fmt: skip
                self.observe(fact, p, refused=True)
                if bad.reply:
                    await loop.sock_sendall(client, bad.reply)
                return
            if req is None:
                return
            conn = _Conn(self, normalize_host(req.host), req.port, req.via, step, owner,
                         req.host_header)  # fmt: skip
            handed_off = await self._open(conn, client, reader, req.forward)
        except (TimeoutError, OSError, EOFError):
            return
        finally:
            self._handshakes -= 1
            if not handed_off:
                client.close()

    @staticmethod
    def _info_or(owner: Callable[[], procinfo.ProcInfo]) -> procinfo.ProcInfo:
        try:
            return owner()
        except Exception:  # noqa: BLE001 - a vanished process must not break the record
            return procinfo.ProcInfo()

    async def _refuse(self, c: _Conn, client: socket.socket, status: int, refusal: str,
                      message: str, v: Verdict | None = None) -> None:  # fmt: skip
        """A proxied connection refused: judged as a fact, answered as the protocol expects."""
        assert self.loop is not None
        p = c.proc()
        dst = facts.dst(c.host, c.ip or (v.ip if v else None), c.port, c.via,
                        cls=v.dst_class if v else None, embedded=v.embedded if v else None)  # fmt: skip
        fact = facts.base("egress_attempt", p, dst, step=c.step, via=c.via, outcome="refused",
                          refusal=refusal, message=message)  # fmt: skip
        self.observe(fact, p, refused=True)
        with contextlib.suppress(OSError):
            await self.loop.sock_sendall(client, proxy_protocol.refused(c.via, status, message))

    async def _open(self, c: _Conn, client: socket.socket, reader: Reader, first: bytes) -> bool:
        assert self.loop is not None
        loop = self.loop
        if len(self.conns) >= self.policy.max_connections:
            await self._refuse(c, client, 503, "max_connections",
                               f"{self.policy.max_connections} connections already open")  # fmt: skip
            return False
        if self.policy.max_bytes is not None and self.total_bytes >= self.policy.max_bytes:
            await self._refuse(c, client, 503, "max_bytes",
                               f"byte cap of {self.policy.max_bytes} reached")  # fmt: skip
            return False
        v = await self._decide(c.host, c.port)
        c.verdict = v
        if not v.allowed:
            await self._refuse(c, client, 403, v.refusal or "not_allowed", v.reason, v)
            return False
        # an allowed connection is an observation too: a pool's address or port says enough
        p = c.proc()
        fact = facts.base("egress_attempt", p, facts.dst(c.host, v.ips[0], c.port, c.via),
                          step=c.step, via=c.via, outcome="allowed",
                          message=f"{c.via} {c.host}:{c.port} allowed")  # fmt: skip
        if self.observe(fact, p, refused=False) != "alert":
            with contextlib.suppress(OSError):
                await loop.sock_sendall(client, proxy_protocol.refused(c.via, 403, "refused"))
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
            await self._refuse(c, client, 502, "upstream_failed",
                               f"{c.host}:{c.port} unreachable: {err}")  # fmt: skip
            return False
        for s in (upstream, client):  # forwarded writes are whole messages: no Nagle delay
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = proxy_protocol.granted(c.via)
        if reply:
            await loop.sock_sendall(client, reply)
        relay = Relay(client, upstream, first=first + reader.rest(), inspector=c,
                      on_done=lambda r: self._on_done(c, r), on_bytes=self._on_bytes)  # fmt: skip
        c.relay = relay
        relay.start()
        return True

    # ------------------------------------------------------------ relay callbacks
    def _on_bytes(self, n: int) -> bool:
        cap = self.policy.max_bytes
        with self._lock:
            self.total_bytes += n
            over = cap is not None and self.total_bytes > cap
            first = over and not self._bytes_flagged
            if first:
                self._bytes_flagged = True
        if first:
            fact = facts.base("egress_attempt", procinfo.ProcInfo(),
                              facts.dst(None, None, None, "tcp"), step=self._step(),
                              via="relay", outcome="refused", refusal="max_bytes",
                              total_bytes=self.total_bytes, message=f"byte cap of {cap} passed; connections cut")  # fmt: skip
            self.observe(fact, procinfo.ProcInfo(), refused=True)
            for c in list(self.conns):
                if c.relay is not None:
                    c.relay.cut("max_bytes")
        return not over

    def _on_done(self, c: _Conn, r: Relay) -> None:
        self.conns.discard(c)
        p = c.proc()
        cut = r.cut_reason
        s = c.sniffer
        self.emit(rule="egress.connection", category="policy", severity="info",
                  action="blocked" if cut else "allowed", step=c.step,
                  pid=p.pid, exe=p.exe, argv=facts.short_argv(p.argv),
                  dst={"host": c.host, "ip": c.ip, "port": c.port,
                       "proto": s.protocol if s.protocol != "tcp" else c.via},
                  message=f"{c.via} {c.host}:{c.port} closed: {r.bytes_up} B up, "
                  f"{r.bytes_down} B down in {r.duration:.3f}s" + (f" (cut: {cut})" if cut else ""),
                  evidence={"via": c.via, "bytes_up": r.bytes_up, "bytes_down": r.bytes_down,
                            "duration_s": round(r.duration, 6), "cut": cut, "sni": s.sni})  # fmt: skip


# ---------------------------------------------------------------- helpers
def _fields_read(when: Any) -> set[str]:
    """The fact fields an event condition reads: each path's first part, and the whole path (a
    fact may hold a dotted key as it is)."""
    out: set[str] = set()
    if isinstance(when, dict):
        for k, v in when.items():
            if k in ("any", "all"):
                for sub in v:
                    out |= _fields_read(sub)
            elif k == "not":
                out |= _fields_read(v)
            else:
                out |= {k, k.split(".", 1)[0]}
    return out


def _frozen(v: Any) -> Any:
    """A hashable copy of a fact's value, for remembering facts that fired nothing."""
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_frozen(x) for x in v)
    return v


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
    import dns.message  # on the first datagram to port 53: a sandbox that sends none never pays

    try:
        return dns.message.from_wire(payload).question[0].name.to_text().rstrip(".")
    except Exception:  # noqa: BLE001 - anything sent to port 53 may be garbage
        return None
