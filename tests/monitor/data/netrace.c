/* Attacks on the network record from inside a sandbox (built by the tests with the host's cc).
 *
 *   netrace race N   N connects while a second thread flips the address in memory between the
 *                    sandbox's own listener (127.0.0.1) and a TEST-NET address (192.0.2.1).
 *                    Prints "ok=A refused=B unreach=C other=D": `unreach` counts connects the
 *                    kernel itself judged against 192.0.2.1 (ENETUNREACH), i.e. unrecorded.
 *   netrace mmsg     sendmmsg of two datagrams, the second to 192.0.2.1; then of two local ones.
 *                    Prints "mixed=R/errno local=R lens=L0,L1 got=N".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in target;
static volatile int stop;

static void *flipper(void *arg) {
    (void)arg;
    in_addr_t local = htonl(INADDR_LOOPBACK), outside = inet_addr("192.0.2.1");
    volatile in_addr_t *addr = &target.sin_addr.s_addr; /* every store really happens */
    while (!stop) {
        for (int i = 0; i < 64 && !stop; i++) *addr = local;
        for (int i = 0; i < 64 && !stop; i++) *addr = outside;
    }
    return NULL;
}

static void *acceptor(void *arg) {
    int l = *(int *)arg;
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c >= 0) close(c);
    }
    return NULL;
}

static int race(int n) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4096) || getsockname(l, (struct sockaddr *)&a, &al)) {
        perror("listener");
        return 2;
    }
    target = a;
    pthread_t f, acc;
    pthread_create(&acc, NULL, acceptor, &l);
    pthread_create(&f, NULL, flipper, NULL);
    int ok = 0, refused = 0, unreach = 0, other = 0;
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&target, sizeof target) == 0) ok++;
        else if (errno == ECONNREFUSED) refused++;
        else if (errno == ENETUNREACH || errno == EHOSTUNREACH) unreach++;
        else other++;
        close(s);
    }
    stop = 1;
    pthread_join(f, NULL);
    printf("ok=%d refused=%d unreach=%d other=%d\n", ok, refused, unreach, other);
    return 0;
}

static int mmsg(void) {
    int r = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(r, (struct sockaddr *)&a, sizeof a) || getsockname(r, (struct sockaddr *)&a, &al)) return 2;
    struct sockaddr_in outside = {.sin_family = AF_INET, .sin_port = htons(9)};
    outside.sin_addr.s_addr = inet_addr("192.0.2.1");
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    char b0[] = "first", b1[] = "second";
    struct iovec v[2] = {{b0, 5}, {b1, 6}};
    struct mmsghdr m[2];
    memset(m, 0, sizeof m);
    m[0].msg_hdr = (struct msghdr){.msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &v[0], .msg_iovlen = 1};
    m[1].msg_hdr = (struct msghdr){.msg_name = &outside, .msg_namelen = sizeof outside, .msg_iov = &v[1], .msg_iovlen = 1};
    int mixed = sendmmsg(s, m, 2, 0), mixed_errno = mixed < 0 ? errno : 0;
    m[1].msg_hdr.msg_name = &a;
    m[0].msg_len = m[1].msg_len = 0;
    int local = sendmmsg(s, m, 2, 0);
    char buf[64];
    int got = 0;
    struct timeval tv = {.tv_sec = 1};
    setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (recv(r, buf, sizeof buf, 0) > 0) got++;
    printf("mixed=%d/%d local=%d lens=%u,%u got=%d\n", mixed, mixed_errno, local, m[0].msg_len, m[1].msg_len, got);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "race") == 0) return race(atoi(argv[2]));
    if (argc >= 2 && strcmp(argv[1], "mmsg") == 0) return mmsg();
    return 2;
}
