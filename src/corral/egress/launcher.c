/* corral egress launcher: the sandbox's first process, before the shell (C twin of launcher_main.py).
 *
 * Opens the gateway's listeners inside the sandbox's loopback-only network namespace, installs a
 * seccomp filter that turns connect(), sendto() with an address, sendmsg(), sendmmsg(), execve(),
 * execveat(), exit_group() and exit() into user notifications (one listener per filter chain, so
 * exec, exit and network share it),
 * reports the fds on OUT_FD ("ok pid=N [proxy=F] [dns_udp=F dns_tcp=F] notify=F"), waits
 * for "go\n" on IN_FD (the supervisor has copied them with pidfd_getfd), closes everything and
 * execs the command. Built by `make install`; the Python twin is used where no compiler is.
 *
 * argv: [--init] OUT_FD IN_FD PROXY_PORT DNS(0|1) COMMAND...   (PROXY_PORT 0: no listeners, the
 * exec sensor and the record of network attempts only: a sandbox without a gateway)
 *
 * --init=FD: bwrap runs with --as-pid-1 and this process is the sandbox's pid 1. Before anything
 * else it forks: the child goes on as the launcher (and becomes the shell); pid 1 closes every fd
 * and execs corral-init (init.c, through FD; -1: none built, then it stays as that init itself),
 * which reaps every process the sandbox orphans and exits with the shell's status. pid 1 forks
 * before the seccomp filter exists, so neither it nor corral-init is ever on the listener. Why:
 * bwrap's outer process exits as soon as its own init reports the command's exit, without reaping
 * that init, which is re-parented to the host's PID 1 -- one zombie per sandbox whose shell ended
 * (`exit`) in a container whose PID 1 does not reap. corral-init is the outer bwrap's direct
 * child, so the outer one reaps it; and it is a page or two where bwrap's init is ~130 KiB of an
 * idle sandbox's memory.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/nsfs.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "corral launcher: unsupported architecture"
#endif

#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n))
#define ARG_HI(n) (offsetof(struct seccomp_data, args) + 8 * (n) + 4)

static int out_fd = -1;

static void fail(const char *what) {
    char buf[256];
    int n = snprintf(buf, sizeof buf, "error %s: %s\n", what, strerror(errno));
    if (out_fd >= 0 && n > 0) (void)!write(out_fd, buf, (size_t)n);
    _exit(125);
}

static int listen_on(int type, int port) {
    int s = socket(AF_INET, type, 0);
    if (s < 0) return -1;
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* --bind-dns runs as soon as bwrap reports its clone, maybe before bwrap has brought the
     * namespace's loopback up (127.0.0.1 exists from then on): bind it regardless */
    setsockopt(s, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || (type == SOCK_STREAM && listen(s, 4096) < 0)) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

/* `--bind-dns PID FD`: run by the supervisor, not in the sandbox. Enter the user namespace that owns
 * PID's network namespace (NS_GET_USERNS) (the supervisor's own user created it, so it holds every capability
 * there), then that network namespace, bind 127.0.0.1:53 over UDP and TCP (a resolver retries a
 * truncated answer over TCP) and send both sockets back over FD, UDP first.
 * This is how an ordinary user's gateway answers DNS; root does it with setns from a thread. */
static int bind_dns(const char *pid, int back) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/net", pid);
    int net = open(path, O_RDONLY | O_CLOEXEC);
    if (net < 0) return 1;
    int owner = ioctl(net, NS_GET_USERNS); /* the user namespace that owns that netns */
    if (owner < 0 || setns(owner, CLONE_NEWUSER) < 0 || setns(net, CLONE_NEWNET) < 0) return 1;
    close(owner);
    close(net);
    int s[2] = {listen_on(SOCK_DGRAM, 53), listen_on(SOCK_STREAM, 53)};
    if (s[0] < 0 || s[1] < 0) return 1;
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union { char buf[CMSG_SPACE(sizeof s)]; struct cmsghdr align; } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof s);
    memcpy(CMSG_DATA(c), s, sizeof s);
    return sendmsg(back, &msg, 0) == 1 ? 0 : 1;
}

/* The sandbox's pid 1 (--init=FD): no fd held, corral-init exec'd, else reap here; end with the shell. */
static void be_init(pid_t command, int init_fd) {
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* no ptrace from the agent (same id, no capability) */
    if (init_fd >= 0) {
        fcntl(init_fd, F_SETFD, FD_CLOEXEC);
        if (init_fd > 0) syscall(SYS_close_range, 0U, (unsigned)init_fd - 1, 0U);
        syscall(SYS_close_range, (unsigned)init_fd + 1, ~0U, 0U);
        char pid[24];
        snprintf(pid, sizeof pid, "%d", (int)command);
        char *args[] = {"corral-init", pid, NULL};
        char *env[] = {NULL};
        syscall(SYS_execveat, init_fd, "", args, env, AT_EMPTY_PATH);
    }
    for (int fd = 0; fd < 1024; fd++) close(fd); /* (no corral-init: stay as the init) */
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid == command)
            _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        if (pid < 0 && errno == ECHILD) _exit(125);
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--bind-dns") == 0) return bind_dns(argv[2], atoi(argv[3]));
    if (argc > 1 && strncmp(argv[1], "--init=", 7) == 0) {
        int init_fd = atoi(argv[1] + 7);
        argv[1] = argv[0]; /* drop the flag: the rest is the usual argv */
        argv++;
        argc--;
        pid_t child = fork(); /* before the filter: pid 1 is never on the listener */
        if (child < 0) return 125;
        if (child > 0) be_init(child, init_fd);
        if (init_fd >= 0) close(init_fd);
    }
    if (argc < 6) return 125;
    out_fd = atoi(argv[1]);
    int in_fd = atoi(argv[2]), port = atoi(argv[3]), want_dns = argv[4][0] == '1';
    int proxy = port ? listen_on(SOCK_STREAM, port) : -1;
    if (port && proxy < 0) fail("proxy listener");
    int dns = want_dns && port ? listen_on(SOCK_DGRAM, 53) : -1; /* EACCES without privilege: fine */
    int dns_tcp = dns >= 0 ? listen_on(SOCK_STREAM, 53) : -1;
    if (dns >= 0 && dns_tcp < 0) { close(dns); dns = -1; } /* both or neither: bound from outside */

    /* Escape syscalls that corral's own deny list (sandbox/syscalls.py) leaves to this listener
     * when it is present: the supervisor refuses each with EPERM and records who tried. */
    static const int refused[] = {
        __NR_io_uring_setup, __NR_bpf, __NR_perf_event_open, __NR_userfaultfd, __NR_keyctl,
        __NR_add_key, __NR_unshare, __NR_setns, __NR_mount, __NR_pivot_root,
        __NR_open_by_handle_at, __NR_init_module, __NR_finit_module, __NR_kexec_load,
        __NR_kexec_file_load, __NR_pidfd_getfd, __NR_fsopen, __NR_open_tree,
    };
    enum { NREF = sizeof refused / sizeof refused[0] };
    struct sock_filter head[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1), /* x32 ABI: refuse */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
#else
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),
#endif
    };
    /* the tail's jumps are relative to itself: its USER_NOTIF return is tail[12].
     * exit_group and exit are notified so that the monitor, while the exiting process is held,
     * can record the step that started each of its children before they are re-parented to the
     * sandbox's init (an orphan's forking ancestors are otherwise gone when it execs) */
    struct sock_filter tail[] = {
        /* 0 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit_group, 11, 0),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit, 10, 0),
        /* 2 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execve, 9, 0),
        /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execveat, 8, 0),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 7, 0),
        /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmsg, 6, 0),
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmmsg, 5, 0),
        /* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendto, 0, 5),
        /* 8: sendto's address argument: notify only when it is set */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(4)),
        /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2),
        /* 10 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_HI(4)),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        /* 12 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        /* 13 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    enum { NHEAD = sizeof head / sizeof head[0], NTAIL = sizeof tail / sizeof tail[0] };
    struct sock_filter f[NHEAD + NREF + NTAIL];
    memcpy(f, head, sizeof head);
    for (int j = 0; j < NREF; j++) /* each jumps to the tail's USER_NOTIF when it matches */
        f[NHEAD + j] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)refused[j],
                                                    (unsigned char)(NREF - 1 - j + 12), 0);
    memcpy(f + NHEAD + NREF, tail, sizeof tail);
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail("no_new_privs");
    int notify = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (notify < 0) fail("seccomp user notification");

    char line[160];
    int n = dns >= 0 ? snprintf(line, sizeof line, "ok pid=%d proxy=%d dns_udp=%d dns_tcp=%d notify=%d\n", getpid(), proxy, dns, dns_tcp, notify)
          : proxy >= 0 ? snprintf(line, sizeof line, "ok pid=%d proxy=%d notify=%d\n", getpid(), proxy, notify)
                       : snprintf(line, sizeof line, "ok pid=%d notify=%d\n", getpid(), notify);
    if (write(out_fd, line, (size_t)n) != n) fail("report");
    char go[3];
    if (read(in_fd, go, 3) != 3 || memcmp(go, "go\n", 3) != 0) _exit(125);
    if (proxy >= 0) close(proxy);
    if (dns >= 0) close(dns);
    if (dns_tcp >= 0) close(dns_tcp);
    close(notify);
    close(out_fd);
    close(in_fd);
    if (strncmp(argv[0], "/proc/self/fd/", 14) == 0) close(atoi(argv[0] + 14)); /* our own binary */
    execv(argv[5], argv + 5);
    fail("exec");
    return 125;
}
