/* corral-overlay-exec: mount a sandbox's writable image root, then exec bubblewrap on it.
 *
 *   corral-overlay-exec LOWER UPPER WORK MERGED -- bwrap ARGS...
 *
 * Why a helper: bubblewrap 0.8 (Debian 12) has no overlay support, and the mount must live in a
 * mount namespace of its own so that it vanishes with the sandbox (no mount is ever left on the
 * host, even when the supervisor is killed). As root it unshares the mount namespace only; as an
 * ordinary user it first enters a user namespace that maps its own uid and gid to themselves (so
 * bubblewrap, exec'd next, sees the same ids and makes its own namespaces as usual) and mounts the
 * kernel overlay there (allowed in a user namespace since Linux 5.11; `userxattr` keeps overlay's
 * bookkeeping in user.* xattrs). It execs bwrap in place: same pid, every fd inherited (--info-fd,
 * --block-fd and the egress pipes pass through untouched).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void die(const char *what) {
    fprintf(stderr, "corral-overlay-exec: %s: %s\n", what, strerror(errno));
    exit(125);
}

int main(int argc, char **argv) {
    if (argc < 7 || strcmp(argv[5], "--") != 0) {
        fprintf(stderr, "usage: corral-overlay-exec LOWER UPPER WORK MERGED -- COMMAND...\n");
        return 125;
    }
    const char *lower = argv[1], *upper = argv[2], *work = argv[3], *merged = argv[4];
    uid_t uid = getuid();
    gid_t gid = getgid();
    int rootless = geteuid() != 0;
    if (rootless) {
        char map[64];
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) die("unshare(user, mount)");
        if (write_file("/proc/self/setgroups", "deny") != 0) die("setgroups");
        snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
        if (write_file("/proc/self/uid_map", map) != 0) die("uid_map");
        snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
        if (write_file("/proc/self/gid_map", map) != 0) die("gid_map");
    } else if (unshare(CLONE_NEWNS) != 0) {
        die("unshare(mount)");
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die("make / private");
    size_t len = strlen(lower) + strlen(upper) + strlen(work) + 64;
    char *opts = malloc(len);
    if (!opts) die("malloc");
    snprintf(opts, len, "lowerdir=%s,upperdir=%s,workdir=%s%s", lower, upper, work,
             rootless ? ",userxattr" : "");
    if (mount("overlay", merged, "overlay", MS_NOSUID | MS_NODEV, opts) != 0) die("mount overlay");
    free(opts);
    execvp(argv[6], &argv[6]);
    die("exec");
    return 125;
}
