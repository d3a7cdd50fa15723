"""Runs inside the sandbox as its first process, before the shell (stdlib + python3-seccomp only).

It opens the gateway's listeners inside the sandbox's network namespace, installs the seccomp filter
whose listener fd reports every connect/send to an address, tells the supervisor which fds to take
(the supervisor copies them with pidfd_getfd), waits for its go, closes them all and execs the shell.
Nothing of it stays in the sandbox. It imports only C modules (`_socket`, not `socket`): every
millisecond here is added to the sandbox's start.

argv: OUT_FD IN_FD PROXY_PORT DNS(0|1) COMMAND...
"""

import _socket
import contextlib
import os
import sys


def main() -> None:
    out_fd, in_fd, port, want_dns = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        sys.argv[4],
    )
    command = sys.argv[5:]
    keep = []
    fds = {}

    def listen(kind, p):
        s = _socket.socket(_socket.AF_INET, kind)
        s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", p))
        if kind == _socket.SOCK_STREAM:
            s.listen(4096)
        keep.append(s)
        return s.fileno()

    try:
        if port:  # 0: no gateway, only the exec sensor and the record of attempts
            fds["proxy"] = listen(_socket.SOCK_STREAM, port)
        if want_dns == "1" and port:
            # usually out of reach here (no privilege over this namespace); then the supervisor
            # binds it from outside as root, or the seccomp listener records lookups
            with contextlib.suppress(PermissionError):
                udp = listen(_socket.SOCK_DGRAM, 53)
                fds["dns_tcp"] = listen(_socket.SOCK_STREAM, 53)  # truncated answers retry here
                fds["dns_udp"] = udp
        sys.path.append("/usr/lib/python3/dist-packages")
        import seccomp

        f = seccomp.SyscallFilter(seccomp.ALLOW)
        f.add_rule(seccomp.NOTIFY, "execve")  # the exec sensor shares the one listener
        f.add_rule(seccomp.NOTIFY, "execveat")
        # exits: the monitor records an exiting process's children's origin step while it is held
        f.add_rule(seccomp.NOTIFY, "exit_group")
        f.add_rule(seccomp.NOTIFY, "exit")
        f.add_rule(seccomp.NOTIFY, "connect")
        f.add_rule(seccomp.NOTIFY, "sendto", seccomp.Arg(4, seccomp.NE, 0))
        f.add_rule(seccomp.NOTIFY, "sendmsg")
        f.add_rule(seccomp.NOTIFY, "sendmmsg")
        for name in (
            "io_uring_setup",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "unshare",
            "setns",
            "mount",
            "pivot_root",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "kexec_load",
            "kexec_file_load",
            "pidfd_getfd",
            "fsopen",
            "open_tree",
        ):  # refused and recorded by the supervisor
            f.add_rule(seccomp.NOTIFY, name)
        f.load()
        fds["notify"] = f.get_notify_fd()
    except Exception as err:  # noqa: BLE001 - any failure must reach the supervisor
        os.write(out_fd, f"error {type(err).__name__}: {err}\n".encode())
        sys.exit(125)
    line = " ".join(f"{k}={v}" for k, v in fds.items())
    os.write(out_fd, f"ok pid={os.getpid()} {line}\n".encode())
    if os.read(in_fd, 3) != b"go\n":
        sys.exit(125)
    for s in keep:
        s.close()
    for fd in (fds["notify"], out_fd, in_fd):
        os.close(fd)
    os.execv(command[0], command)


main()
