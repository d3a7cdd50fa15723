/* corral-overlay-exec: mount a sandbox's writable image root, then exec bubblewrap on it.
 *
 *   corral-overlay-exec [--idmap UID] [--layer-size BYTES:INODES] [--fuse] LOWER UPPER WORK MERGED --
 *       bwrap ARGS...
 *   corral-overlay-exec --join PID LOWER UPPER WORK MERGED -- bwrap ARGS...
 *
 * Why a helper: bubblewrap 0.8 (Debian 12) has no overlay support, and the mount must live in a
 * mount namespace of its own so that it vanishes with the sandbox (no mount is ever left on the
 * host, even when the supervisor is killed). As root it unshares the mount namespace only; as an
 * ordinary user it first enters a user namespace that maps its own uid and gid to themselves (so
 * bubblewrap, exec'd next, sees the same ids and makes its own namespaces as usual) and mounts the
 * kernel overlay there (allowed in a user namespace since Linux 5.11; `userxattr` keeps overlay's
 * bookkeeping in user.* xattrs). It execs bwrap in place: same pid, every fd inherited (--info-fd,
 * --block-fd and the egress pipes pass through untouched).
 *
 * --layer-size: the writable layer is a tmpfs of that size and inode count, mounted on the parent
 * directory of UPPER and WORK (both made in it): a hard quota on what the sandbox may add to its
 * root (ENOSPC inside), gone with the namespace like the overlay.
 *
 * --join PID: mount nothing; enter the mount namespace (and, as an ordinary user, the user
 * namespace) of PID, an earlier helper's bwrap, where MERGED is already mounted: the harness's own
 * sandbox then runs on the very root the agent changes (Sandbox.harness_exec).
 *
 * Where the kernel refuses an unprivileged overlay (older kernels, some distributions), an
 * ordinary user's overlay is fuse-overlayfs instead (--fuse asks for it outright, root included):
 * run in the foreground as a child that dies with this process (PR_SET_PDEATHSIG survives our
 * exec into bwrap), so it ends with the sandbox like the kernel mount does.
 *
 * --idmap UID (root only): the sandbox runs as the unprivileged host id UID (the supervisor's
 * setpriv), so the image's root-owned files must look like UID's or the agent could not change
 * them. The shared image is not chowned: it is mounted idmapped (uid/gid 0 of the image shown as
 * UID, Linux 5.12+; overlay over idmapped layers, 5.19+) at `MERGED.lower`, and that is
 * the overlay's lower layer. Files of other ids in the image show as nobody.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define C_OPEN_TREE_CLONE 1
#define C_AT_RECURSIVE 0x8000
#define C_MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#define C_MOUNT_ATTR_IDMAP 0x00100000

struct c_mount_attr {
    unsigned long long attr_set, attr_clr, propagation, userns_fd;
};

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

/* A user namespace whose 0 is host `id` (one id), as an fd: made by a child that waits. */
static int userns_of(unsigned id) {
    int ready[2], hold[2];
    if (pipe(ready) != 0 || pipe(hold) != 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        char c = 0;
        close(ready[0]);
        close(hold[1]);
        if (unshare(CLONE_NEWUSER) != 0) _exit(1);
        if (write(ready[1], &c, 1) != 1) _exit(1);
        if (read(hold[0], &c, 1) < 0) _exit(1);
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    char c, path[64], map[64];
    if (read(ready[0], &c, 1) != 1) die("idmap helper");
    snprintf(map, sizeof map, "0 %u 1\n", id);
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    if (write_file(path, map) != 0) die("idmap uid_map");
    snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
    if (write_file(path, map) != 0) die("idmap gid_map");
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("idmap userns");
    close(hold[1]);
    close(ready[0]);
    waitpid(pid, NULL, 0);
    return fd;
}

/* Mount `src` at `dst` with the ids of user namespace `userns` (an idmapped bind mount). */
static void idmapped_bind(const char *src, const char *dst, int userns) {
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, C_OPEN_TREE_CLONE | O_CLOEXEC);
    if (tree < 0) die("open_tree (idmapped image)");
    struct c_mount_attr attr = {0};
    attr.attr_set = C_MOUNT_ATTR_IDMAP;
    attr.userns_fd = (unsigned long long)userns;
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0)
        die("mount_setattr idmap (idmapped image)");
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, C_MOVE_MOUNT_F_EMPTY_PATH) != 0)
        die("move_mount (idmapped image)");
    close(tree);
}

/* fuse-overlayfs on `merged`, a child that lives exactly as long as this process (then bwrap). */
static int fuse_overlay(const char *opts, const char *merged) {
    struct stat before, now;
    if (stat(merged, &before) != 0) return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(125);
        execlp("fuse-overlayfs", "fuse-overlayfs", "-f", "-o", opts, merged, (char *)NULL);
        fprintf(stderr, "corral-overlay-exec: fuse-overlayfs: %s\n", strerror(errno));
        _exit(125);
    }
    for (int i = 0; i < 2000; i++) { /* up to 10 s for the mount to appear */
        if (stat(merged, &now) == 0 && now.st_dev != before.st_dev) return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) return -1;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    return -1;
}

int main(int argc, char **argv) {
    long idmap = -1, join = -1;
    int want_fuse = 0;
    unsigned long long layer_size = 0, layer_inodes = 0;
    while (argc > 2 && strncmp(argv[1], "--", 2) == 0 && strcmp(argv[1], "--") != 0) {
        char *end;
        if (strcmp(argv[1], "--fuse") == 0) {
            want_fuse = 1;
            argv += 1;
            argc -= 1;
            continue;
        }
        if (strcmp(argv[1], "--idmap") == 0) {
            idmap = strtol(argv[2], &end, 10);
            if (*end || idmap <= 0) {
                fprintf(stderr, "corral-overlay-exec: --idmap needs a host uid\n");
                return 125;
            }
        } else if (strcmp(argv[1], "--join") == 0) {
            join = strtol(argv[2], &end, 10);
            if (*end || join <= 0) {
                fprintf(stderr, "corral-overlay-exec: --join needs a pid\n");
                return 125;
            }
        } else if (strcmp(argv[1], "--layer-size") == 0) {
            layer_size = strtoull(argv[2], &end, 10);
            if (*end == ':') layer_inodes = strtoull(end + 1, &end, 10);
            if (*end || layer_size == 0) {
                fprintf(stderr, "corral-overlay-exec: --layer-size needs BYTES[:INODES]\n");
                return 125;
            }
        } else {
            fprintf(stderr, "corral-overlay-exec: unknown option %s\n", argv[1]);
            return 125;
        }
        argv += 2;
        argc -= 2;
    }
    if (argc < 7 || strcmp(argv[5], "--") != 0) {
        fprintf(stderr, "usage: corral-overlay-exec [--idmap UID] [--layer-size BYTES[:INODES]] "
                        "LOWER UPPER WORK MERGED -- COMMAND...\n");
        return 125;
    }
    const char *lower = argv[1], *upper = argv[2], *work = argv[3], *merged = argv[4];
    if (join > 0) {
        char path[64];
        int userns = -1, mntns;
        if (geteuid() != 0) {
            snprintf(path, sizeof path, "/proc/%ld/ns/user", join);
            if ((userns = open(path, O_RDONLY | O_CLOEXEC)) < 0) die("open the sandbox's userns");
        }
        snprintf(path, sizeof path, "/proc/%ld/ns/mnt", join);
        if ((mntns = open(path, O_RDONLY | O_CLOEXEC)) < 0) die("open the sandbox's mount ns");
        if (userns >= 0 && setns(userns, CLONE_NEWUSER) != 0) die("join the sandbox's userns");
        if (setns(mntns, CLONE_NEWNS) != 0) die("join the sandbox's mount ns");
        if (chdir("/") != 0) die("chdir");
        struct stat st;
        if (stat(merged, &st) != 0) die("the sandbox's root");
        execvp(argv[6], &argv[6]);
        die("exec");
    }
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
    char idmapped[4096];
    if (idmap > 0) {
        if (rootless) {
            fprintf(stderr, "corral-overlay-exec: --idmap needs root\n");
            return 125;
        }
        /* <merged>.lower: a mount point next to the overlay's, in this namespace only */
        snprintf(idmapped, sizeof idmapped, "%s.lower", merged);
        int userns = userns_of((unsigned)idmap);
        idmapped_bind(lower, idmapped, userns);
        close(userns);
        lower = idmapped;
    }
    if (layer_size) {
        char layer[4096], topts[160];
        snprintf(layer, sizeof layer, "%s", upper);
        char *slash = strrchr(layer, '/');
        if (!slash || slash == layer) die("layer directory");
        *slash = 0;
        int n = snprintf(topts, sizeof topts, "size=%llu,mode=0755", layer_size);
        if (layer_inodes) n += snprintf(topts + n, sizeof topts - n, ",nr_inodes=%llu", layer_inodes);
        if (mount("tmpfs", layer, "tmpfs", MS_NOSUID | MS_NODEV, topts) != 0) die("mount layer tmpfs");
        if (mkdir(upper, 0755) != 0 || mkdir(work, 0700) != 0) die("layer directories");
        if (idmap > 0 && (chown(layer, idmap, idmap) != 0 || chown(upper, idmap, idmap) != 0))
            die("chown layer");
    }
    size_t len = strlen(lower) + strlen(upper) + strlen(work) + 64;
    char *opts = malloc(len);
    if (!opts) die("malloc");
    snprintf(opts, len, "lowerdir=%s,upperdir=%s,workdir=%s%s", lower, upper, work,
             rootless ? ",userxattr" : "");
    if (want_fuse || mount("overlay", merged, "overlay", MS_NOSUID | MS_NODEV, opts) != 0) {
        int saved = want_fuse ? 0 : errno;
        if (!want_fuse && (!rootless || (saved != EPERM && saved != EINVAL && saved != ENODEV)))
            die("mount overlay");
        /* fuse-overlayfs takes the same options, less the kernel's userxattr; as root the
         * sandbox's own host id (setpriv) must be let in */
        snprintf(opts, len, "lowerdir=%s,upperdir=%s,workdir=%s%s", lower, upper, work,
                 rootless ? "" : ",allow_other");
        if (fuse_overlay(opts, merged) != 0) {
            fprintf(stderr, "corral-overlay-exec: mount overlay: %s%s; fuse-overlayfs failed too\n",
                    want_fuse ? "" : "kernel: ", want_fuse ? "fuse asked" : strerror(saved));
            exit(125);
        }
    }
    free(opts);
    execvp(argv[6], &argv[6]);
    die("exec");
    return 125;
}
