/* File contents: readfile/writefile streams and the open-file session (remotefs openfile). */
#define _GNU_SOURCE
#include "fileops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int open_fd = -1;     /* the file of an "open" session */
static unsigned char *iobuf; /* file data buffer */

/* Move exactly n bytes from pipe rd to the port (splice: the port takes the pipe's pages as
 * one scatter list, no copy in the guest and one virtqueue kick per buffer). */
static int splice_out(int rd, size_t n) {
    while (n) {
        ssize_t m = splice(rd, NULL, port_out, NULL, n, SPLICE_F_MOVE | SPLICE_F_MORE);
        if (m < 0 && errno == EINTR) continue;
        if (m <= 0) return -1;
        n -= (size_t)m;
    }
    return 0;
}

static int splice_ok = 1;

/* Stream a file as D frames then E; a failure mid-way is the reply (X). */
static int stream_fd(int fd, const char *path) {
    int pipefd[2] = {-1, -1};
    if (splice_ok && pipe2(pipefd, O_CLOEXEC) == 0) {
        fcntl(pipefd[1], F_SETPIPE_SZ, CHUNK);
        for (;;) {
            ssize_t n = splice(fd, NULL, pipefd[1], NULL, CHUNK, SPLICE_F_MOVE);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EINVAL || errno == ENOSYS) ) { /* no splice here: copy */
                splice_ok = 0;
                break;
            }
            if (n < 0) {
                close(pipefd[0]);
                close(pipefd[1]);
                return fail_errno(path);
            }
            if (n == 0) {
                close(pipefd[0]);
                close(pipefd[1]);
                return send_frame('E', NULL, 0) < 0 ? -2 : 0;
            }
            unsigned char head[5] = {'D', (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                                     (unsigned char)(n >> 8), (unsigned char)n};
            if (write_full(head, 5) < 0 || splice_out(pipefd[0], (size_t)n) < 0) {
                if (errno == EINVAL) splice_ok = 0; /* the next stream copies */
                close(pipefd[0]);
                close(pipefd[1]);
                return -2; /* the frame is cut: the host sees a broken channel */
            }
        }
        close(pipefd[0]);
        close(pipefd[1]);
    }
    if (!iobuf && !(iobuf = malloc(CHUNK))) return fail('O', ENOMEM, "%s: no memory", path);
    for (;;) {
        ssize_t n = read(fd, iobuf, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno(path);
        if (n == 0) break;
        if (send_frame('D', iobuf, (size_t)n) < 0) return -2;
    }
    return send_frame('E', NULL, 0) < 0 ? -2 : 0;
}

int op_readfile(char **argv) {
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    int fd = open_regular(root, argv[2], O_RDONLY, 0);
    close(root);
    if (fd < 0) return -1;
    int rc = stream_fd(fd, argv[2]);
    close(fd);
    return rc;
}

/* Receive D frames until E into fd (fd < 0: drain only). -2: the host went away. */
int receive_into(int fd, const char *path) {
    int rc = 0;
    for (;;) {
        int kind = read_frame();
        if (kind < 0) return -2;
        if (kind == 'E') return rc;
        if (kind != 'D') {
            if (rc == 0) rc = fail('I', EPROTO, "%s: expected data", path);
            continue;
        }
        size_t off = 0;
        while (fd >= 0 && rc == 0 && off < inlen) {
            ssize_t w = write(fd, inbuf + off, inlen - off);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) rc = fail_errno(path);
            else off += (size_t)w;
        }
    }
}

/* writefile root path perm flags: data frames follow. */
int op_writefile(char **argv, int root_override) {
    int root = root_override >= 0 ? dup(root_override) : open_root(argv[1]);
    int flags = O_WRONLY | O_CREAT | O_TRUNC;
    if (argv[4] && argv[4][0]) flags = (int)parse_long(argv[4]);
    int fd = root < 0 ? -1 : open_regular(root, argv[2], flags, (mode_t)parse_long(argv[3]));
    if (root >= 0) close(root);
    int rc = receive_into(fd, argv[2]);
    if (fd >= 0 && close(fd) < 0 && rc == 0) rc = fail_errno(argv[2]);
    if (fd < 0 && rc == 0) rc = -1;
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* open-file sessions (remotefs openfile) */

int op_open(char **argv) {
    if (open_fd >= 0) close(open_fd);
    open_fd = -1;
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    open_fd = open_regular(root, argv[2], (int)parse_long(argv[3]), (mode_t)parse_long(argv[4]));
    close(root);
    return open_fd < 0 ? -1 : 0;
}

int op_fread(char **argv, struct outbuf *o) {
    if (open_fd < 0) return fail('O', EBADF, "no open file");
    size_t want = (size_t)parse_long(argv[1]);
    if (want > MAX_FRAME - 64) want = MAX_FRAME - 64;
    unsigned char *buf = malloc(want + 1);
    ssize_t n;
    do n = read(open_fd, buf, want); while (n < 0 && errno == EINTR);
    if (n < 0) {
        free(buf);
        return fail_errno("read");
    }
    out_put(o, buf, (size_t)n);
    free(buf);
    return 0;
}

int op_fwrite(void) {
    if (open_fd < 0) { /* drain the data; a host gone meanwhile gets no reply */
        if (receive_into(-1, "write") == -2) return -2;
        return fail('O', EBADF, "no open file");
    }
    int rc = receive_into(open_fd, "write");
    return rc;
}

int op_fseek(char **argv, struct outbuf *o) {
    if (open_fd < 0) return fail('O', EBADF, "no open file");
    off_t at = lseek(open_fd, (off_t)strtoll(argv[1], NULL, 10), (int)parse_long(argv[2]));
    if (at < 0) return fail_errno("seek");
    out_u64(o, (uint64_t)at);
    return 0;
}

int op_fclose(void) {
    if (open_fd < 0) return 0;
    int rc = close(open_fd) < 0 ? fail_errno("close") : 0;
    open_fd = -1;
    return rc;
}

int op_ftruncate(char **argv) {
    if (open_fd < 0) return fail('O', EBADF, "no open file");
    return ftruncate(open_fd, (off_t)strtoll(argv[1], NULL, 10)) < 0 ? fail_errno("truncate") : 0;
}

/* The host went away: forget its open file. */
void session_reset(void) {
    if (open_fd >= 0) close(open_fd);
    open_fd = -1;
}
