/* corral-init: the sandbox's pid 1, as small as a process can be (no libc; a few KiB resident).
 *
 *   corral-init PID
 *
 * The launcher (launcher.c --init) forks the shell, then execs this in its own place. It holds no
 * fd, reaps every process the sandbox orphans, and exits with the status of PID (the shell) when
 * that ends; the kernel then ends the rest of the pid namespace, and the outer bwrap (its parent)
 * reaps it, so no process is left to the host's PID 1. bwrap's own init does the same job in ~130
 * KiB of an idle sandbox's ~600; this one is a page or two. Built static with -nostdlib by
 * `make install`; where it cannot be built, the launcher stays as the init itself.
 */
#if defined(__x86_64__)
#define NR_CLOSE 3
#define NR_PRCTL 157
#define NR_WAIT4 61
#define NR_EXIT_GROUP 231
static long sys4(long n, long a, long b, long c, long d) {
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;
}
__asm__(".global _start\n_start:\n xor %rbp,%rbp\n mov %rsp,%rdi\n and $-16,%rsp\n call init_main\n hlt\n");
#elif defined(__aarch64__)
#define NR_CLOSE 57
#define NR_PRCTL 167
#define NR_WAIT4 260
#define NR_EXIT_GROUP 94
static long sys4(long n, long a, long b, long c, long d) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}
__asm__(".global _start\n_start:\n mov x0, sp\n bl init_main\n");
#else
#error "corral-init: unsupported architecture"
#endif

#define ECHILD 10
#define PR_SET_DUMPABLE 4

__attribute__((noreturn)) static void leave(int code) {
    for (;;) sys4(NR_EXIT_GROUP, code, 0, 0, 0);
}

__attribute__((noreturn, used)) void init_main(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 2) leave(125);
    long command = 0;
    for (const char *p = argv[1]; *p; p++) {
        if (*p < '0' || *p > '9') leave(125);
        command = command * 10 + (*p - '0');
    }
    /* not dumpable: no ptrace attach or /proc/1/mem from the agent, which has the same id but no
     * capability (pid 1 forked before the launcher's seccomp listener existed, so code run in it
     * would not be on the record) */
    sys4(NR_PRCTL, PR_SET_DUMPABLE, 0, 0, 0);
    for (int fd = 0; fd < 3; fd++) sys4(NR_CLOSE, fd, 0, 0, 0); /* none of the shell's pipes */
    for (;;) {
        int status = 0;
        long pid = sys4(NR_WAIT4, -1, (long)&status, 0, 0);
        if (pid == command) {
            int sig = status & 0x7f;
            leave(sig == 0 ? (status >> 8) & 0xff : 128 + sig);
        }
        if (pid == -ECHILD) leave(125);
    }
}
