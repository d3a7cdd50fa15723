/* corral-setid: a root supervisor's last step before bubblewrap, in one exec.
 *
 *   corral-setid UID GID [--rlimit=RESOURCE:SOFT:HARD]... [--trim=DEV:INO:MOUNTPOINT]... -- PROGRAM ARGS...
 *
 * With --trim: first moves into a mount namespace of its own, a copy of the supervisor's made a
 * slave of it (so nothing done here reaches the host), and detaches there each mount whose root
 * is (DEV, INO) and is found at MOUNTPOINT without following any symlink: host mounts bubblewrap
 * will never bind from (the supervisor names them: sandbox/mounttrim.py). The mount is detached
 * through the fd that found it, so a user who renames a directory of the path or swaps one for a
 * symlink after the supervisor read its mount table detaches nothing else (a red-team finding:
 * a FUSE mount of one's own, then `ln -s /elsewhere`, made umount2 follow the link).
 * bwrap re-reads the whole mount table at every bind it makes, so each host mount costs every
 * sandbox start ~20 binds' worth of parsing: -0.6 ms a start with this VM's 20 mounts, far more on
 * a docker or Kubernetes node with hundreds. Trimming is only ever a saving: where the namespace
 * cannot be made (no CAP_SYS_ADMIN) or made a slave, nothing is detached and bwrap starts as
 * before; a mount point that is gone already is skipped.
 *
 * With --cgroup-fd=FD --pid-fd=OUT (cgroup v2): the rest runs in a child made by clone3 with
 * CLONE_INTO_CGROUP (born in the sandbox's cgroup, FD its directory) and CLONE_PARENT (the
 * supervisor's own child, as bwrap would have been); this process writes the child's pid to OUT
 * and exits. Why: moving a process into a v2 cgroup takes the kernel's cgroup_threadgroup_rwsem
 * for writing, whose first writer after an idle spell waits for an RCU grace period (a cold start
 * after 200 ms idle 30.6 ms against 9.7 ms back to back on a 16-core host); a process born there
 * moves nothing. Where clone3 refuses (an old kernel), its own pid goes to OUT and it goes on
 * itself: the supervisor then moves the processes as before.
 *
 * Then sets the rlimits (RESOURCE is the kernel's RLIMIT_* number), drops every supplementary group,
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
#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
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

/* Detach the mount whose root is (dev, ino), reached at `path` with no symlink followed (openat2
 * RESOLVE_NO_SYMLINKS), through /proc/self/fd: that very mount, whatever the path names by then.
 * Anything else (no such path, a link on the way, not a mount root, another mount) is left. */
static void trim(const char *path, unsigned long long dev, unsigned long long ino) {
    struct open_how how = {.flags = O_PATH | O_CLOEXEC | O_NOFOLLOW,
                           .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0) return;
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_INO, &sx) == 0 &&
        (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
        (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) &&
        makedev(sx.stx_dev_major, sx.stx_dev_minor) == dev && sx.stx_ino == ino) {
        char self[40];
        snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
        (void)umount2(self, MNT_DETACH);
    }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: corral-setid UID GID [--rlimit=R:SOFT:HARD]... [--trim=DEV:INO:PATH]... "
                        "[--cgroup-fd=FD --pid-fd=FD] -- PROGRAM ARGS...\n");
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
    int trims = 0;
    for (int j = 3; j < argc && strncmp(argv[j], "--", 2) == 0 && argv[j][2]; j++)
        if (strncmp(argv[j], "--trim=", 7) == 0) trims++;
    /* as root, before any id changes: a private copy of the mount table, a slave of the host's
     * (first: a copy of a shared mount would otherwise carry each detach back to the host) */
    int trimming = trims > 0 && unshare(CLONE_NEWNS) == 0 &&
                   mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) == 0;
    int cgroup_fd = -1, pid_fd = -1;
    for (; i < argc && (strncmp(argv[i], "--rlimit=", 9) == 0 || strncmp(argv[i], "--trim=", 7) == 0 ||
                        strncmp(argv[i], "--cgroup-fd=", 12) == 0 || strncmp(argv[i], "--pid-fd=", 9) == 0);
         i++) {
        if (strncmp(argv[i], "--cgroup-fd=", 12) == 0) {
            cgroup_fd = (int)number(argv[i] + 12, "cgroup fd");
            continue;
        }
        if (strncmp(argv[i], "--pid-fd=", 9) == 0) {
            pid_fd = (int)number(argv[i] + 9, "pid fd");
            continue;
        }
        if (argv[i][2] == 't') { /* --trim=DEV:INO:PATH */
            const char *p = argv[i] + 7;
            unsigned long long dev = number(p, "trim device");
            const char *q = strchr(p, ':');
            unsigned long long ino = q ? number(q + 1, "trim inode") : 0;
            const char *where = q ? strchr(q + 1, ':') : NULL;
            if (!where || where[1] != '/' || where[2] == 0) {
                errno = EINVAL;
                die(argv[i]); /* never "/" itself, never a relative path */
            }
            if (trimming) trim(where + 1, dev, ino);
            continue;
        }
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
    if (cgroup_fd >= 0 && pid_fd >= 0) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_INTO_CGROUP | CLONE_PARENT; /* exit_signal 0: with CLONE_PARENT the
                                                        * child takes this one's (SIGCHLD) */
        ca.cgroup = (unsigned long long)cgroup_fd;
        long child = syscall(SYS_clone3, &ca, sizeof ca);
        if (child > 0) { /* the supervisor's child now, in the cgroup: say which, and go */
            char line[32];
            int n = snprintf(line, sizeof line, "%ld\n", child);
            _exit(write(pid_fd, line, (size_t)n) == n ? 0 : 126);
        }
        if (child < 0) { /* no clone3 into a cgroup here: this process goes on, moved later */
            char line[32];
            int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
            if (write(pid_fd, line, (size_t)n) != n) die("pid fd");
        }
        close(cgroup_fd);
        close(pid_fd);
    } else if (cgroup_fd >= 0 || pid_fd >= 0) {
        errno = EINVAL;
        die("--cgroup-fd and --pid-fd go together");
    }
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
