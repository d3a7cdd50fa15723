/* corral-setid: a root supervisor's last step before bubblewrap, in one exec.
 *
 *   corral-setid UID GID [--rlimit=RESOURCE:SOFT:HARD]... -- PROGRAM ARGS...
 *
 * Sets the rlimits (RESOURCE is the kernel's RLIMIT_* number), drops every supplementary group,
 * sets the real, effective and saved gid and uid to GID/UID, clears the inheritable and ambient
 * capability sets, sets no_new_privs, checks that root cannot be regained, and execs PROGRAM.
 *
 * Why not `prlimit ... -- setpriv ... -- bwrap`: that is two more execs of dynamically linked
 * programs on every sandbox start (~1 ms of a ~15 ms cold start on a small VM). Why not Python's
 * Popen(user=...): it cannot set rlimits, and asking for a uid makes CPython fork instead of vfork
 * a large supervisor. Why rlimits here and not on the running bwrap: a container's root may lack
 * CAP_SYS_RESOURCE over another id's processes. Built by `make install` (static where libc.a is
 * installed); without it corral falls back to prlimit + setpriv (sandbox/bwrap.py).
 *
 * Exit 126 with one line on stderr if any step fails: nothing runs with a partial identity.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "corral-setid: %s: %s\n", what, strerror(errno));
    _exit(126);
}

/* A decimal number (digits only: strtoull would wrap "-5" into a huge value), up to ':' or the end. */
static unsigned long long number(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || errno || end == s || (*end && *end != ':')) {
        errno = EINVAL;
        die(what);
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: corral-setid UID GID [--rlimit=R:SOFT:HARD]... -- PROGRAM ARGS...\n");
        return 126;
    }
    unsigned long long u = number(argv[1], "uid"), g = number(argv[2], "gid");
    uid_t uid = (uid_t)u;
    gid_t gid = (gid_t)g;
    /* (uid_t)-1 would mean "leave it unchanged" to setresuid */
    if (u == 0 || g == 0 || u >= 0xFFFFFFFFULL || g >= 0xFFFFFFFFULL) {
        errno = EINVAL;
        die("refusing uid or gid 0 or out of range");
    }
    int i = 3;
    for (; i < argc && strncmp(argv[i], "--rlimit=", 9) == 0; i++) {
        const char *p = argv[i] + 9;
        unsigned long long which = number(p, "rlimit resource");
        const char *soft = strchr(p, ':');
        const char *hard = soft ? strchr(soft + 1, ':') : NULL;
        if (!soft || !hard) {
            errno = EINVAL;
            die(argv[i]);
        }
        struct rlimit rl = {.rlim_cur = number(soft + 1, "rlimit soft"),
                            .rlim_max = number(hard + 1, "rlimit hard")};
        if (setrlimit((int)which, &rl) < 0) die(argv[i]);
    }
    if (i >= argc - 1 || strcmp(argv[i], "--") != 0) {
        errno = EINVAL;
        die("expected -- PROGRAM");
    }
    char **prog = argv + i + 1;
    if (setgroups(0, NULL) < 0) die("setgroups");
    if (setresgid(gid, gid, gid) < 0) die("setresgid");
    if (setresuid(uid, uid, uid) < 0) die("setresuid");
    /* setresuid away from 0 already cleared the permitted, effective and ambient sets */
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) < 0) die("capset");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die("ambient");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no_new_privs");
    if (setresuid(0, 0, 0) == 0 || getuid() != uid || geteuid() != uid) {
        errno = EPERM;
        die("root could be regained");
    }
    if (prog[0][0] == '/')
        execv(prog[0], prog);
    else
        execvp(prog[0], prog);
    die(prog[0]);
    return 126;
}
