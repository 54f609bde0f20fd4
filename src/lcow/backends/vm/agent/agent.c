/*
 * lcow guest agent: PID 1 of the service utility VM (SPEC §4, §4.8).
 *
 * Boots the guest (proc, sys, devtmpfs, tmpfs /tmp, kernel modules listed in
 * /lib/modules/load), then serves every virtio-serial port named "lcow.*" in its own
 * worker process. Each port carries a framed, length-prefixed protocol:
 *
 *   frame = kind (1 byte) | length (u32 big-endian) | payload
 *   'C' command: NUL-terminated argument vector        (host -> guest)
 *   'D' data chunk, 'E' end of data                    (both ways)
 *   'R' success + result bytes                          (guest -> host)
 *   'X' failure: class byte ('O' errno, 'I' invalid, 'A' exists) | errno u32 BE | text
 *
 * Lengths make every reply self-delimiting, so the host knows when a reply is complete and
 * never closes a socket with reply bytes in flight (QEMU drops unread data on close).
 *
 * File operations take the view's guest directory as their first argument and resolve paths
 * with openat2(RESOLVE_IN_ROOT): symlinks and ".." stay inside the view as in a chroot. Tar
 * parsing and Docker's archive semantics stay on the host (Python); the guest only executes
 * simple file operations, in "batch" mode pipelined without per-operation replies.
 *
 * "mkfs" formats a hot-added, unmounted disk with the initramfs's /sbin/mke2fs (the host's
 * e2fsprogs and its libraries, added by `lcow uvm build`): sandboxes of other sizes (§4.5).
 *
 * Only libc and kernel headers; built with gcc -static by `lcow uvm build`.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define VERSION "lcow-agent 1"
#define CHUNK (256 * 1024)
#define MAX_FRAME (16u * 1024 * 1024)
#define MAX_ARGS 64

static int port = -1;           /* this worker's virtio-serial port */
static int open_fd = -1;        /* the file of an "open" session */
static unsigned char *inbuf;    /* payload of the last frame read */
static size_t inlen;
static unsigned char *iobuf;    /* file data buffer */

/* ---------------------------------------------------------------------------------------- */
/* console logging */

static void logmsg(const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof text - 2) n = sizeof text - 2;
    text[n++] = '\n';
    ssize_t w = write(2, text, (size_t)n);
    (void)w;
}

/* ---------------------------------------------------------------------------------------- */
/* port I/O */

/* Read exactly n bytes; returns 0, or -1 when the host is not connected (read gives 0)
 * or went away mid-frame: the worker then forgets the session. */
static int read_full(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n) {
        ssize_t r = read(port, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

static int write_full(const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(port, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

static int send_frame(char kind, const void *data, size_t n) {
    unsigned char head[5 + 4096];
    head[0] = (unsigned char)kind;
    head[1] = (unsigned char)(n >> 24);
    head[2] = (unsigned char)(n >> 16);
    head[3] = (unsigned char)(n >> 8);
    head[4] = (unsigned char)n;
    if (n <= 4096) { /* one write for small frames */
        if (n) memcpy(head + 5, data, n);
        return write_full(head, 5 + n);
    }
    if (write_full(head, 5) < 0) return -1;
    return write_full(data, n);
}

/* Read one frame into inbuf; returns its kind, or -1 when the host went away. */
static int read_frame(void) {
    unsigned char head[5];
    if (read_full(head, 5) < 0) return -1;
    uint32_t n = ((uint32_t)head[1] << 24) | ((uint32_t)head[2] << 16) |
                 ((uint32_t)head[3] << 8) | head[4];
    if (n > MAX_FRAME) return -1;
    unsigned char *grown = realloc(inbuf, n + 1);
    if (!grown) return -1;
    inbuf = grown;
    if (n && read_full(inbuf, n) < 0) return -1;
    inbuf[n] = 0;
    inlen = n;
    return head[0];
}

/* ---------------------------------------------------------------------------------------- */
/* replies */

struct outbuf {
    unsigned char *data;
    size_t len, cap;
};

static void out_put(struct outbuf *o, const void *p, size_t n) {
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->len + n) cap *= 2;
        o->data = realloc(o->data, cap);
        if (!o->data) abort();
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static void out_u16(struct outbuf *o, uint32_t v) {
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    out_put(o, b, 2);
}

static void out_u32(struct outbuf *o, uint32_t v) {
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    out_put(o, b, 4);
}

static void out_u64(struct outbuf *o, uint64_t v) {
    out_u32(o, (uint32_t)(v >> 32));
    out_u32(o, (uint32_t)v);
}

/* The failure of the current command: class, errno, text. */
struct failure {
    char cls;
    int err;
    char text[480];
};

static struct failure fail_state;

static int fail(char cls, int err, const char *fmt, ...) {
    fail_state.cls = cls;
    fail_state.err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fail_state.text, sizeof fail_state.text, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_errno(const char *what) {
    int e = errno;
    return fail('O', e, "%s: %s", what, strerror(e));
}

static int send_failure(void) {
    struct outbuf o = {0};
    out_put(&o, &fail_state.cls, 1);
    out_u32(&o, (uint32_t)fail_state.err);
    out_put(&o, fail_state.text, strlen(fail_state.text));
    int r = send_frame('X', o.data, o.len);
    free(o.data);
    return r;
}

/* ---------------------------------------------------------------------------------------- */
/* path resolution inside a view */

static long parse_long(const char *s) { return strtol(s, NULL, 0); }

static int open_root(const char *root) {
    int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_errno(root);
    return fd;
}

/* A relative form of the host-normalised absolute path ("" for the root). */
static const char *rel(const char *path) {
    while (*path == '/') path++;
    return path;
}

static int open_in(int root, const char *path, int flags, mode_t mode) {
    struct open_how how = {0};
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    const char *r = rel(path);
    return (int)syscall(SYS_openat2, root, *r ? r : ".", &how, sizeof how);
}

/* The parent directory of path (an O_PATH fd) and its last component; for the root itself
 * the root and "". */
static int parent_in(int root, const char *path, char *base, size_t basesz) {
    const char *r = rel(path);
    const char *slash = strrchr(r, '/');
    char dir[4096];
    if (!*r) {
        base[0] = 0;
        return dup(root);
    }
    if (slash) {
        size_t n = (size_t)(slash - r);
        if (n >= sizeof dir) return errno = ENAMETOOLONG, -1;
        memcpy(dir, r, n);
        dir[n] = 0;
        snprintf(base, basesz, "%s", slash + 1);
    } else {
        dir[0] = 0;
        snprintf(base, basesz, "%s", r);
    }
    return open_in(root, dir, O_PATH | O_DIRECTORY, 0);
}

static void out_stat(struct outbuf *o, const struct stat *st) {
    out_u32(o, st->st_mode);
    out_u32(o, st->st_uid);
    out_u32(o, st->st_gid);
    out_u32(o, (uint32_t)st->st_nlink);
    out_u64(o, (uint64_t)st->st_size);
    out_u64(o, (uint64_t)((int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec));
    out_u32(o, major(st->st_rdev));
    out_u32(o, minor(st->st_rdev));
    out_u64(o, (uint64_t)st->st_ino);
    out_u64(o, (uint64_t)st->st_dev);
}

static int lstat_at(int dfd, const char *base, struct stat *st) {
    return fstatat(dfd, *base ? base : "", st, AT_SYMLINK_NOFOLLOW | (*base ? 0 : AT_EMPTY_PATH));
}

/* xattrs of an inode without following it (through its O_PATH fd's /proc link). */
static void out_xattrs(struct outbuf *o, int dfd, const char *base) {
    char names[8192], where[64];
    int fd = openat(dfd, *base ? base : ".", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        out_u32(o, 0);
        return;
    }
    snprintf(where, sizeof where, "/proc/self/fd/%d", fd);
    ssize_t n = llistxattr(where, names, sizeof names);
    uint32_t count = 0;
    struct outbuf items = {0};
    for (ssize_t i = 0; n > 0 && i < n; i += (ssize_t)strlen(names + i) + 1) {
        char value[65536];
        ssize_t v = lgetxattr(where, names + i, value, sizeof value);
        if (v < 0) continue;
        out_u16(&items, (uint32_t)strlen(names + i));
        out_put(&items, names + i, strlen(names + i));
        out_u32(&items, (uint32_t)v);
        out_put(&items, value, (size_t)v);
        count++;
    }
    close(fd);
    out_u32(o, count);
    if (items.len) out_put(o, items.data, items.len);
    free(items.data);
}

/* ---------------------------------------------------------------------------------------- */
/* file operations (argv[1] = view root) */

static int op_stat(char **argv, struct outbuf *o, int follow) {
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    struct stat st;
    int rc = 0;
    if (follow) {
        int fd = open_in(root, argv[2], O_PATH, 0);
        if (fd < 0 || fstat(fd, &st) < 0) rc = fail_errno(argv[2]);
        if (fd >= 0) close(fd);
    } else {
        char base[4096];
        int dfd = parent_in(root, argv[2], base, sizeof base);
        if (dfd < 0 || lstat_at(dfd, base, &st) < 0) rc = fail_errno(argv[2]);
        if (dfd >= 0) close(dfd);
    }
    close(root);
    if (rc == 0) out_stat(o, &st);
    return rc;
}

static int op_readlink(char **argv, struct outbuf *o) {
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    char base[4096], target[4096];
    int rc = 0;
    int dfd = parent_in(root, argv[2], base, sizeof base);
    ssize_t n = dfd < 0 ? -1 : readlinkat(dfd, *base ? base : ".", target, sizeof target);
    if (n < 0) rc = fail_errno(argv[2]);
    else out_put(o, target, (size_t)n);
    if (dfd >= 0) close(dfd);
    close(root);
    return rc;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* readdir root path n extended: entries sorted by name; extended adds link targets and
 * xattrs (what archiving needs, in one round trip). */
static int op_readdir(char **argv, struct outbuf *o, int extended) {
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    long limit = parse_long(argv[3]);
    int fd = open_in(root, argv[2], O_RDONLY | O_DIRECTORY, 0);
    close(root);
    if (fd < 0) return fail_errno(argv[2]);
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return fail_errno(argv[2]);
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof *names);
            if (!names) abort();
        }
        names[count++] = strdup(e->d_name);
    }
    qsort(names, count, sizeof *names, cmp_names);
    if (limit > 0 && (size_t)limit < count) {
        for (size_t i = (size_t)limit; i < count; i++) free(names[i]);
        count = (size_t)limit;
    }
    int dfd = dirfd(d);
    for (size_t i = 0; i < count; i++) {
        struct stat st;
        if (fstatat(dfd, names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
            free(names[i]);
            continue; /* removed while listing */
        }
        out_u16(o, (uint32_t)strlen(names[i]));
        out_put(o, names[i], strlen(names[i]));
        out_stat(o, &st);
        if (extended) {
            char target[4096];
            ssize_t n = S_ISLNK(st.st_mode) ? readlinkat(dfd, names[i], target, sizeof target) : 0;
            if (n < 0) n = 0;
            out_u32(o, (uint32_t)n);
            out_put(o, target, (size_t)n);
            out_xattrs(o, dfd, names[i]);
        }
        free(names[i]);
    }
    free(names);
    closedir(d);
    return 0;
}

/* xattrs root path: the xattrs of path itself. */
static int op_xattrs(char **argv, struct outbuf *o) {
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    char base[4096];
    int dfd = parent_in(root, argv[2], base, sizeof base);
    close(root);
    if (dfd < 0) return fail_errno(argv[2]);
    struct stat st;
    if (lstat_at(dfd, base, &st) < 0) {
        close(dfd);
        return fail_errno(argv[2]);
    }
    out_xattrs(o, dfd, base);
    close(dfd);
    return 0;
}

/* A regular file opened in the view (final symlink followed); devices and FIFOs are refused
 * before they are opened. */
static int open_regular(int root, const char *path, int flags, mode_t perm) {
    int probe = open_in(root, path, O_PATH, 0);
    struct stat st;
    if (probe >= 0) {
        int r = fstat(probe, &st);
        close(probe);
        if (r == 0 && S_ISDIR(st.st_mode)) return fail('O', EISDIR, "%s: %s", path, strerror(EISDIR));
        if (r == 0 && !S_ISREG(st.st_mode)) return fail('I', EINVAL, "%s: not a regular file", path);
    } else if (!(flags & O_CREAT) || errno != ENOENT) {
        return fail_errno(path);
    }
    int fd = open_in(root, path, flags | O_NONBLOCK | O_NOCTTY, perm);
    if (fd < 0) return fail_errno(path);
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail('I', EINVAL, "%s: not a regular file", path);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

/* Move exactly n bytes from pipe rd to the port (splice: the port takes the pipe's pages as
 * one scatter list, no copy in the guest and one virtqueue kick per buffer). */
static int splice_out(int rd, size_t n) {
    while (n) {
        ssize_t m = splice(rd, NULL, port, NULL, n, SPLICE_F_MOVE | SPLICE_F_MORE);
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
    for (;;) {
        ssize_t n = read(fd, iobuf, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno(path);
        if (n == 0) break;
        if (send_frame('D', iobuf, (size_t)n) < 0) return -2;
    }
    return send_frame('E', NULL, 0) < 0 ? -2 : 0;
}

static int op_readfile(char **argv) {
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
static int receive_into(int fd, const char *path) {
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
static int op_writefile(char **argv, int root_override) {
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

static int mkdir_all_at(int root, const char *path, mode_t mode) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", rel(path));
    size_t len = strlen(buf);
    for (size_t i = 0; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char saved = buf[i];
        buf[i] = 0;
        if (*buf) {
            char base[4096];
            int dfd = parent_in(root, buf, base, sizeof base);
            if (dfd < 0) return fail_errno(path);
            if (mkdirat(dfd, base, mode) < 0 && errno != EEXIST) {
                close(dfd);
                return fail_errno(path);
            }
            close(dfd);
            int check = open_in(root, buf, O_PATH | O_DIRECTORY, 0);
            if (check < 0) return fail_errno(path);
            close(check);
        }
        buf[i] = saved;
    }
    return 0;
}

static int remove_all_at(int dfd, const char *name) {
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlinkat(dfd, name, 0) < 0 && errno != ENOENT ? -1 : 0;
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (remove_all_at(dirfd(d), e->d_name) < 0) rc = -1;
    }
    closedir(d);
    if (rc < 0) return -1;
    return unlinkat(dfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT ? -1 : 0;
}

/* One-path operations that act on the final component without following it. */
static int op_simple(const char *cmd, char **argv, int argc, int root_override) {
    (void)argc;
    int root = root_override >= 0 ? dup(root_override) : open_root(argv[1]);
    if (root < 0) return -1;
    const char *path = argv[2];
    char base[4096];
    int rc = 0, dfd = -1;
    if (!strcmp(cmd, "mkdirall")) {
        rc = mkdir_all_at(root, path, (mode_t)parse_long(argv[3]));
        close(root);
        return rc;
    }
    if (!strcmp(cmd, "link")) { /* link root old new */
        char base2[4096];
        int odfd = parent_in(root, argv[2], base, sizeof base);
        int ndfd = odfd < 0 ? -1 : parent_in(root, argv[3], base2, sizeof base2);
        if (odfd < 0 || ndfd < 0 || linkat(odfd, base, ndfd, base2, 0) < 0)
            rc = fail_errno(argv[3]);
        if (odfd >= 0) close(odfd);
        if (ndfd >= 0) close(ndfd);
        close(root);
        return rc;
    }
    if (!strcmp(cmd, "symlink")) { /* symlink root target new */
        dfd = parent_in(root, argv[3], base, sizeof base);
        if (dfd < 0 || symlinkat(argv[2], dfd, base) < 0) rc = fail_errno(argv[3]);
        goto done;
    }
    dfd = parent_in(root, path, base, sizeof base);
    if (dfd < 0) {
        rc = fail_errno(path);
        goto done;
    }
    if (!strcmp(cmd, "mkdir")) {
        if (mkdirat(dfd, base, (mode_t)parse_long(argv[3])) < 0) rc = fail_errno(path);
    } else if (!strcmp(cmd, "mkdirm")) { /* mkdir, an existing directory is fine (merge) */
        struct stat st;
        if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
        } else if (mkdirat(dfd, base, (mode_t)parse_long(argv[3])) < 0) {
            rc = fail_errno(path);
        }
    } else if (!strcmp(cmd, "remove")) {
        if (!*base) rc = fail('O', EBUSY, "%s: the root of a view cannot be removed", path);
        else if (unlinkat(dfd, base, 0) < 0) {
            if (errno != EISDIR || unlinkat(dfd, base, AT_REMOVEDIR) < 0) rc = fail_errno(path);
        }
    } else if (!strcmp(cmd, "removeall")) {
        if (!*base) rc = fail('O', EBUSY, "%s: the root of a view cannot be removed", path);
        else if (remove_all_at(dfd, base) < 0) rc = fail_errno(path);
    } else if (!strcmp(cmd, "lchmod")) {
        int fd = openat(dfd, *base ? base : ".", O_PATH | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        char where[64];
        if (fd < 0 || fstat(fd, &st) < 0) rc = fail_errno(path);
        else if (!S_ISLNK(st.st_mode)) {
            snprintf(where, sizeof where, "/proc/self/fd/%d", fd);
            if (chmod(where, (mode_t)parse_long(argv[3]) & 07777) < 0) rc = fail_errno(path);
        }
        if (fd >= 0) close(fd);
    } else if (!strcmp(cmd, "lchown")) {
        if (fchownat(dfd, base, (uid_t)parse_long(argv[3]), (gid_t)parse_long(argv[4]),
                     AT_SYMLINK_NOFOLLOW | (*base ? 0 : AT_EMPTY_PATH)) < 0)
            rc = fail_errno(path);
    } else if (!strcmp(cmd, "mknod")) {
        dev_t dev = makedev((unsigned)parse_long(argv[4]), (unsigned)parse_long(argv[5]));
        if (mknodat(dfd, base, (mode_t)parse_long(argv[3]), dev) < 0) rc = fail_errno(path);
    } else if (!strcmp(cmd, "mkfifo")) {
        if (mkfifoat(dfd, base, (mode_t)parse_long(argv[3])) < 0) rc = fail_errno(path);
    } else if (!strcmp(cmd, "setxattr")) { /* setxattr root path name hex-value */
        int fd = openat(dfd, *base ? base : ".", O_PATH | O_NOFOLLOW | O_CLOEXEC);
        char where[64];
        size_t vlen = strlen(argv[4]) / 2;
        unsigned char *value = malloc(vlen + 1);
        for (size_t i = 0; i < vlen; i++) {
            unsigned int byte = 0;
            sscanf(argv[4] + 2 * i, "%2x", &byte);
            value[i] = (unsigned char)byte;
        }
        snprintf(where, sizeof where, "/proc/self/fd/%d", fd);
        if (fd < 0) rc = fail_errno(path);
        else if (lsetxattr(where, argv[3], value, vlen, 0) < 0 &&
                 errno != EOPNOTSUPP && errno != EPERM)
            rc = fail_errno(path);
        free(value);
        if (fd >= 0) close(fd);
    } else if (!strcmp(cmd, "utimens")) {
        long long a = strtoll(argv[3], NULL, 10), m = strtoll(argv[4], NULL, 10);
        struct timespec ts[2] = {{a / 1000000000LL, a % 1000000000LL},
                                 {m / 1000000000LL, m % 1000000000LL}};
        if (ts[0].tv_nsec < 0) ts[0].tv_sec--, ts[0].tv_nsec += 1000000000LL;
        if (ts[1].tv_nsec < 0) ts[1].tv_sec--, ts[1].tv_nsec += 1000000000LL;
        if (utimensat(dfd, *base ? base : ".", ts, AT_SYMLINK_NOFOLLOW) < 0) rc = fail_errno(path);
    } else if (!strcmp(cmd, "prep")) {
        /* prep root path isdir nooverwrite: before an archive entry is written — create
         * missing parents, clear what is in the way unless both are directories. */
        int isdir = argv[3][0] == '1', keep = argv[4][0] == '1';
        struct stat st;
        if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            int was_dir = S_ISDIR(st.st_mode);
            if (keep && was_dir != isdir)
                rc = fail('A', EEXIST, "%s: cannot overwrite %s", path,
                          was_dir ? "directory with non-directory" : "non-directory with directory");
            else if (!(was_dir && isdir) && remove_all_at(dfd, base) < 0)
                rc = fail_errno(path);
        }
    } else {
        rc = fail('I', EINVAL, "unknown command %s", cmd);
    }
done:
    if (dfd >= 0) close(dfd);
    close(root);
    return rc;
}

/* prepdirs root path: the parents of path exist (0755), as Docker's untar creates them. */
static int op_prepdirs(int root, const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", rel(path));
    char *slash = strrchr(dir, '/');
    if (!slash) return 0;
    *slash = 0;
    int fd = open_in(root, dir, O_PATH | O_NOFOLLOW, 0);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return mkdir_all_at(root, dir, 0755);
}

/* ---------------------------------------------------------------------------------------- */
/* open-file sessions (remotefs openfile) */

static int op_open(char **argv) {
    if (open_fd >= 0) close(open_fd);
    open_fd = -1;
    int root = open_root(argv[1]);
    if (root < 0) return -1;
    open_fd = open_regular(root, argv[2], (int)parse_long(argv[3]), (mode_t)parse_long(argv[4]));
    close(root);
    return open_fd < 0 ? -1 : 0;
}

static int op_fread(char **argv, struct outbuf *o) {
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

static int op_fwrite(void) {
    if (open_fd < 0) {
        receive_into(-1, "write");
        return fail('O', EBADF, "no open file");
    }
    int rc = receive_into(open_fd, "write");
    return rc;
}

static int op_fseek(char **argv, struct outbuf *o) {
    if (open_fd < 0) return fail('O', EBADF, "no open file");
    off_t at = lseek(open_fd, (off_t)strtoll(argv[1], NULL, 10), (int)parse_long(argv[2]));
    if (at < 0) return fail_errno("seek");
    out_u64(o, (uint64_t)at);
    return 0;
}

static int op_fclose(void) {
    if (open_fd < 0) return 0;
    int rc = close(open_fd) < 0 ? fail_errno("close") : 0;
    open_fd = -1;
    return rc;
}

static int op_ftruncate(char **argv) {
    if (open_fd < 0) return fail('O', EBADF, "no open file");
    return ftruncate(open_fd, (off_t)strtoll(argv[1], NULL, 10)) < 0 ? fail_errno("truncate") : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* disks and mounts (SPEC §4.4, §4.7) */

/* The block device of SCSI LUN `lun` (hot-added: wait for the guest's scan). */
static int find_disk(const char *lun, char *dev, size_t devsz, int wait_ms) {
    for (int waited = 0;; waited++) {
        DIR *d = opendir("/sys/bus/scsi/devices");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            const char *last = strrchr(e->d_name, ':');
            if (!last || strcmp(last + 1, lun) || strchr(e->d_name, ':') == last) continue;
            char blockdir[512];
            snprintf(blockdir, sizeof blockdir, "/sys/bus/scsi/devices/%s/block", e->d_name);
            DIR *b = opendir(blockdir);
            struct dirent *be;
            while (b && (be = readdir(b))) {
                if (be->d_name[0] == '.') continue;
                char sizepath[512], text[32] = "";
                snprintf(sizepath, sizeof sizepath, "/sys/class/block/%s/size", be->d_name);
                snprintf(dev, devsz, "/dev/%s", be->d_name);
                closedir(b);
                closedir(d);
                FILE *f = fopen(sizepath, "r");
                if (f) {
                    if (!fgets(text, sizeof text, f)) text[0] = 0;
                    fclose(f);
                }
                /* ready once the node exists and the capacity has been read */
                if (access(dev, F_OK) == 0 && atoll(text) > 0) return 0;
                goto retry;
            }
            if (b) closedir(b);
        }
        if (d) closedir(d);
    retry:
        if (waited >= wait_ms) return fail('O', ENODEV, "SCSI LUN %s: no block device", lun);
        usleep(1000);
    }
}

static int mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(buf, 0755);
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return fail_errno(path);
    return 0;
}

static void write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t w = write(fd, text, strlen(text));
    (void)w;
    close(fd);
}

/* Whether a layer's lost+found is content (not the empty directory every ext4 has). */
static int lost_found_is_content(const char *content, int writable) {
    char path[4096];
    snprintf(path, sizeof path, "%s/lost+found", content);
    struct stat st;
    if (lstat(path, &st) < 0) return 0;
    if (writable || !S_ISDIR(st.st_mode)) return 1;
    DIR *d = opendir(path);
    if (!d) return 1;
    struct dirent *e;
    int any = 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) any = 1;
    closedir(d);
    return any;
}

static int dm_ioctl(int ctl, unsigned long req, struct dm_ioctl *io, const char *name,
                    size_t size, uint32_t flags) {
    memset(io, 0, sizeof *io);
    io->version[0] = DM_VERSION_MAJOR;
    io->version[1] = 0;
    io->version[2] = 0;
    io->data_size = (uint32_t)size;
    io->data_start = sizeof *io;
    io->flags = flags;
    snprintf(io->name, sizeof io->name, "%s", name);
    return ioctl(ctl, req, io);
}

/* A read-only dm-verity device over `dev` (data and hash tree on the same disk). */
static int verity_create(const char *name, const char *dev, const char *root_hash,
                         unsigned long long data_blocks, unsigned long long hash_start,
                         char *out, size_t outsz) {
    int ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return fail_errno("/dev/mapper/control");
    size_t size = 16384;
    struct dm_ioctl *io = calloc(1, size);
    int rc = 0;
    if (dm_ioctl(ctl, DM_DEV_CREATE, io, name, size, 0) < 0) {
        rc = fail_errno("dm create");
        goto out;
    }
    dev_t devno = (dev_t)io->dev;
    dm_ioctl(ctl, DM_TABLE_LOAD, io, name, size, DM_READONLY_FLAG);
    io->target_count = 1;
    struct dm_target_spec *spec = (struct dm_target_spec *)((char *)io + sizeof *io);
    spec->sector_start = 0;
    spec->length = data_blocks * 8;
    snprintf(spec->target_type, sizeof spec->target_type, "verity");
    char *params = (char *)(spec + 1);
    snprintf(params, size - sizeof *io - sizeof *spec,
             "1 %s %s 4096 4096 %llu %llu sha256 %s "
             "0000000000000000000000000000000000000000000000000000000000000000",
             dev, dev, data_blocks, hash_start, root_hash);
    spec->next = 0;
    if (ioctl(ctl, DM_TABLE_LOAD, io) < 0) {
        rc = fail_errno("dm table load (verity)");
        dm_ioctl(ctl, DM_DEV_REMOVE, io, name, size, 0);
        goto out;
    }
    if (dm_ioctl(ctl, DM_DEV_SUSPEND, io, name, size, 0) < 0) { /* resume */
        rc = fail_errno("dm resume");
        dm_ioctl(ctl, DM_DEV_REMOVE, io, name, size, 0);
        goto out;
    }
    snprintf(out, outsz, "/dev/lcow-%s", name);
    unlink(out);
    if (mknod(out, S_IFBLK | 0600, devno) < 0) rc = fail_errno(out);
out:
    free(io);
    close(ctl);
    return rc;
}

static void verity_remove(const char *name) {
    int ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) return;
    struct dm_ioctl *io = calloc(1, 16384);
    dm_ioctl(ctl, DM_DEV_REMOVE, io, name, 16384, 0);
    free(io);
    close(ctl);
    char node[128];
    snprintf(node, sizeof node, "/dev/lcow-%s", name);
    unlink(node);
}

/* mount lun target ro|rw [roothash datablocks hashstart]: mount a hot-added disk's ext4.
 * Replies "1" when its lost+found is content, else "0". */
static int op_mount(char **argv, int argc, struct outbuf *o) {
    char dev[128];
    int writable = !strcmp(argv[3], "rw");
    if (find_disk(argv[1], dev, sizeof dev, 10000) < 0) return -1;
    if (mkdir_p(argv[2]) < 0) return -1;
    char name[64] = "";
    if (argc > 6 && argv[4][0]) {
        snprintf(name, sizeof name, "v%s", argv[1]);
        verity_remove(name); /* a stale one from an earlier attach at this LUN */
        char mapped[128];
        if (verity_create(name, dev, argv[4], strtoull(argv[5], NULL, 10),
                          strtoull(argv[6], NULL, 10), mapped, sizeof mapped) < 0)
            return -1;
        snprintf(dev, sizeof dev, "%s", mapped);
    }
    /* large sequential reads: every request costs an emulated round trip under TCG */
    char ra[128];
    snprintf(ra, sizeof ra, "/sys/class/block/%s/queue/read_ahead_kb", strrchr(dev, '/') + 1);
    write_text(ra, "4096");
    unsigned long flags = writable ? 0 : MS_RDONLY;
    const char *data = writable ? "" : "noload";
    int tries = 0, mounted;
    while ((mounted = mount(dev, argv[2], "ext4", flags, data)) < 0 &&
           (errno == ENXIO || errno == ENOENT) && tries++ < 2000)
        usleep(1000); /* the disk is still being probed */
    if (mounted < 0) {
        int e = errno;
        if (name[0]) verity_remove(name);
        return fail('O', e, "mounting %s (LUN %s) at %s: %s", dev, argv[1], argv[2], strerror(e));
    }
    char content[4096];
    snprintf(content, sizeof content, "%s%s", argv[2], writable ? "/upper" : "");
    if (writable) {
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/upper", argv[2]);
        mkdir(sub, 0755);
        snprintf(sub, sizeof sub, "%s/work", argv[2]);
        mkdir(sub, 0755);
    }
    out_put(o, lost_found_is_content(content, writable) ? "1" : "0", 1);
    return 0;
}

/* umount target [lun-of-verity]: unmount, remove a verity device, remove the directory. */
static int op_umount(char **argv, int argc) {
    int rc = 0;
    if (umount2(argv[1], 0) < 0 && errno != EINVAL && errno != ENOENT) {
        if (errno == EBUSY && umount2(argv[1], MNT_DETACH) == 0) {
        } else rc = fail_errno(argv[1]);
    }
    if (rc == 0) rmdir(argv[1]);
    if (argc > 2 && argv[2][0]) {
        char name[64];
        snprintf(name, sizeof name, "v%s", argv[2]);
        verity_remove(name);
    }
    return rc;
}

/* overlay target lowers [upper work]: lowers ":"-joined, nearest first. */
static int op_overlay(char **argv, int argc) {
    if (mkdir_p(argv[1]) < 0) return -1;
    char opts[8192];
    if (argc > 4)
        snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", argv[2], argv[3], argv[4]);
    else
        snprintf(opts, sizeof opts, "lowerdir=%s", argv[2]);
    unsigned long flags = argc > 4 ? 0 : MS_RDONLY;
    if (mount("overlay", argv[1], "overlay", flags, opts) < 0) return fail_errno(argv[1]);
    return 0;
}

static int op_freeze(const char *path, int freeze) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_errno(path);
    sync();
    int rc = ioctl(fd, freeze ? FIFREEZE : FITHAW, 0);
    int e = errno;
    close(fd);
    if (rc < 0 && !(freeze == 0 && e == EINVAL)) {
        errno = e;
        return fail_errno(path);
    }
    return 0;
}

/* mkfs lun option...: format the whole disk at SCSI LUN `lun` (attached, not mounted) with the
 * initramfs's mke2fs (SPEC §4.5). The host gives the options (its sandbox module's, so host and
 * guest formatting cannot drift apart); the device is always the last operand. mke2fs runs from
 * an argument vector (no shell) with a private mke2fs.conf; its output is the failure text.
 * The device is flushed before the reply, so detaching right after loses nothing. Replies the
 * device's path. */
#define MKE2FS "/sbin/mke2fs"

static int op_mkfs(char **argv, int argc, struct outbuf *o) {
    char dev[128];
    if (find_disk(argv[1], dev, sizeof dev, 10000) < 0) return -1;
    char *args[MAX_ARGS + 2];
    int n = 0;
    args[n++] = "mke2fs";
    for (int i = 2; i < argc; i++) args[n++] = argv[i];
    args[n++] = dev;
    args[n] = NULL;
    char *env[] = {"MKE2FS_CONFIG=/etc/mke2fs.conf", "LC_ALL=C", "PATH=/sbin:/bin", NULL};
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) return fail_errno("pipe");
    logmsg("lcow-agent: mkfs %s (LUN %s)", dev, argv[1]);
    pid_t pid = fork();
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        return fail_errno("fork");
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close_range(3, ~0U, 0); /* the ports and anything else the worker holds */
        execve(MKE2FS, args, env);
        dprintf(2, "cannot run %s: %s", MKE2FS, strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    char text[400];
    size_t len = 0;
    for (;;) { /* keep the first bytes, drain the rest */
        char chunk[1024];
        ssize_t r = read(pipefd[0], chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        size_t take = (size_t)r < sizeof text - 1 - len ? (size_t)r : sizeof text - 1 - len;
        memcpy(text + len, chunk, take);
        len += take;
    }
    close(pipefd[0]);
    text[len] = 0;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '\n') text[i] = i + 1 < len ? ' ' : 0;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status);
        const char *how = WIFEXITED(status) ? "exit code" : "signal";
        logmsg("lcow-agent: mkfs %s failed (%s %d)", dev, how, code);
        return fail('O', code == 127 ? ENOENT : EIO, "mke2fs on %s (LUN %s) failed with %s %d: %s",
                    dev, argv[1], how, code, text);
    }
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno(dev);
    int rc = fsync(fd) < 0 ? fail_errno(dev) : 0;
    close(fd);
    if (rc == 0) {
        logmsg("lcow-agent: mkfs %s done", dev);
        out_put(o, dev, strlen(dev));
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* dispatch */

static int split_args(char **argv) {
    int argc = 0;
    size_t i = 0;
    while (i < inlen && argc < MAX_ARGS - 1) {
        argv[argc++] = (char *)inbuf + i;
        i += strlen((char *)inbuf + i) + 1;
    }
    argv[argc] = NULL;
    return argc;
}

static const struct {
    const char *name;
    int argc;
} arity[] = {
    {"stat", 3}, {"lstat", 3}, {"readlink", 3}, {"readdir", 4}, {"readdirx", 4},
    {"xattrs", 3}, {"readfile", 3}, {"writefile", 4}, {"mkdir", 4}, {"mkdirall", 4},
    {"remove", 3}, {"removeall", 3}, {"link", 4}, {"symlink", 4}, {"lchmod", 4},
    {"lchown", 5}, {"mknod", 6}, {"mkfifo", 4}, {"setxattr", 5}, {"utimens", 5},
    {"open", 5}, {"fread", 2}, {"fseek", 3}, {"ftruncate", 2}, {"mount", 4},
    {"umount", 2}, {"overlay", 3}, {"freeze", 2}, {"thaw", 2}, {"mkdirp", 2},
    {"rmdir", 2}, {"batch", 3}, {"hello", 1}, {"sync", 1}, {"fclose", 1}, {"fwrite", 1},
    {"mkdirm", 4}, {"prep", 5}, {"mkfs", 2}, {NULL, 0},
};

/* Batch: the frames after "batch root" are file operations relative to root, executed in
 * order without replies until E; the first failure stops execution (data still drained)
 * and is the reply, prefixed with the failing operation's index. */
static int op_batch(char **argv, struct outbuf *o) {
    int root = open_root(argv[1]);
    if (root >= 0 && argv[2] && argv[2][0]) { /* the destination, resolved inside the view */
        int dest = open_in(root, argv[2], O_PATH | O_DIRECTORY, 0);
        if (dest < 0) fail_errno(argv[2]);
        close(root);
        root = dest;
    }
    long index = 0, failed = -1;
    for (;; index++) {
        int kind = read_frame();
        if (kind < 0) {
            if (root >= 0) close(root);
            return -2;
        }
        if (kind == 'E') break;
        if (kind != 'C') continue;
        char *args[MAX_ARGS];
        int argc = split_args(args);
        if (argc < 2) continue;
        /* args: cmd path ... — the root comes from the batch. */
        char *full[MAX_ARGS + 1];
        full[0] = args[0];
        full[1] = argv[1];
        for (int i = 1; i <= argc; i++) full[i + 1] = args[i];
        int skip = failed >= 0 || root < 0;
        int rc = 0;
        if (!strcmp(args[0], "writefile")) {
            if (skip) receive_into(-1, args[1]);
            else rc = op_writefile(full, root);
        } else if (skip) {
            continue;
        } else if (!strcmp(args[0], "prepdirs")) {
            rc = op_prepdirs(root, args[1]);
        } else {
            rc = op_simple(args[0], full, argc + 1, root);
        }
        if (rc == -2) {
            close(root);
            return -2;
        }
        if (rc < 0 && failed < 0) failed = index;
    }
    if (root < 0) return -1;
    close(root);
    if (failed >= 0) {
        char text[sizeof fail_state.text];
        snprintf(text, sizeof text, "%ld:%s", failed, fail_state.text);
        snprintf(fail_state.text, sizeof fail_state.text, "%s", text);
        return -1;
    }
    out_u32(o, (uint32_t)index);
    return 0;
}

static void serve(void) {
    iobuf = malloc(CHUNK);
    for (;;) {
        int kind = read_frame();
        if (kind < 0) { /* host disconnected: forget the session */
            if (open_fd >= 0) close(open_fd);
            open_fd = -1;
            usleep(2000);
            continue;
        }
        if (kind != 'C') continue; /* stray data from a dead session */
        char *argv[MAX_ARGS];
        int argc = split_args(argv);
        if (argc == 0) continue;
        const char *cmd = argv[0];
        int known = 0;
        for (int i = 0; arity[i].name; i++) {
            if (!strcmp(arity[i].name, cmd)) {
                known = 1;
                if (argc < arity[i].argc) {
                    fail('I', EINVAL, "%s: expected %d arguments", cmd, arity[i].argc - 1);
                    send_failure();
                    known = 2;
                }
                break;
            }
        }
        if (known == 2) continue;
        struct outbuf o = {0};
        int rc;
        if (!known) rc = fail('I', EINVAL, "unknown command %s", cmd);
        else if (!strcmp(cmd, "hello")) {
            out_put(&o, VERSION, strlen(VERSION));
            if (argc > 1) {
                out_put(&o, " ", 1);
                out_put(&o, argv[1], strlen(argv[1]));
            }
            rc = 0;
        } else if (!strcmp(cmd, "stat")) rc = op_stat(argv, &o, 1);
        else if (!strcmp(cmd, "lstat")) rc = op_stat(argv, &o, 0);
        else if (!strcmp(cmd, "readlink")) rc = op_readlink(argv, &o);
        else if (!strcmp(cmd, "readdir")) rc = op_readdir(argv, &o, 0);
        else if (!strcmp(cmd, "readdirx")) rc = op_readdir(argv, &o, 1);
        else if (!strcmp(cmd, "xattrs")) rc = op_xattrs(argv, &o);
        else if (!strcmp(cmd, "readfile")) rc = op_readfile(argv);
        else if (!strcmp(cmd, "writefile")) rc = op_writefile(argv, -1);
        else if (!strcmp(cmd, "open")) rc = op_open(argv);
        else if (!strcmp(cmd, "fread")) rc = op_fread(argv, &o);
        else if (!strcmp(cmd, "fwrite")) rc = op_fwrite();
        else if (!strcmp(cmd, "fseek")) rc = op_fseek(argv, &o);
        else if (!strcmp(cmd, "ftruncate")) rc = op_ftruncate(argv);
        else if (!strcmp(cmd, "fclose")) rc = op_fclose();
        else if (!strcmp(cmd, "mount")) rc = op_mount(argv, argc, &o);
        else if (!strcmp(cmd, "umount")) rc = op_umount(argv, argc);
        else if (!strcmp(cmd, "overlay")) rc = op_overlay(argv, argc);
        else if (!strcmp(cmd, "freeze")) rc = op_freeze(argv[1], 1);
        else if (!strcmp(cmd, "thaw")) rc = op_freeze(argv[1], 0);
        else if (!strcmp(cmd, "mkfs")) rc = op_mkfs(argv, argc, &o);
        else if (!strcmp(cmd, "mkdirp")) rc = mkdir_p(argv[1]);
        else if (!strcmp(cmd, "rmdir")) rc = rmdir(argv[1]) < 0 && errno != ENOENT ? fail_errno(argv[1]) : 0;
        else if (!strcmp(cmd, "sync")) {
            sync();
            rc = 0;
        } else if (!strcmp(cmd, "batch")) rc = op_batch(argv, &o);
        else rc = op_simple(cmd, argv, argc, -1);
        if (rc == -2) { /* the host went away mid-stream */
            free(o.data);
            continue;
        }
        if (rc < 0) send_failure();
        else send_frame('R', o.data, o.len);
        free(o.data);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* boot (PID 1) */

static void load_modules(void) {
    FILE *list = fopen("/lib/modules/load", "r");
    char line[256];
    while (list && fgets(line, sizeof line, list)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        char path[300];
        snprintf(path, sizeof path, "/lib/modules/%s", line);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) < 0) {
            if (errno != EEXIST) logmsg("lcow-agent: module %s: %s", line, strerror(errno));
        }
        if (fd >= 0) close(fd);
    }
    if (list) fclose(list);
}

/* The lcow.* virtio-serial ports: their /dev names, once the driver has made them. */
static int find_ports(char ports[][64], int max, int want) {
    for (int tries = 0; tries < 5000; tries++) {
        int n = 0;
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d)) && n < max) {
            if (e->d_name[0] == '.') continue;
            char path[512], name[64] = "";
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
            fclose(f);
            if (strncmp(name, "lcow.", 5)) continue;
            snprintf(ports[n], 64, "/dev/%s", e->d_name);
            if (access(ports[n], F_OK) == 0) n++;
        }
        if (d) closedir(d);
        if (n >= want) return n;
        usleep(1000);
    }
    return 0;
}

static int cmdline_int(const char *key, int fallback) {
    char buf[4096] = "";
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0) return fallback;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return fallback;
    buf[n] = 0;
    char *at = strstr(buf, key);
    return at ? atoi(at + strlen(key)) : fallback;
}

/* A worker serving one port; the port is opened by PID 1 before "ready" is printed, so the
 * guest side is connected when the host first writes (QEMU does not notice a port opened
 * after the host has written to it). */
static pid_t spawn_worker(int fd) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    port = fd;
    serve();
    _exit(0);
}

int main(void) {
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
    int con = open("/dev/console", O_RDWR);
    if (con >= 0) {
        dup2(con, 1);
        dup2(con, 2);
        if (con > 2) close(con);
    }
    load_modules();
    /* Write dirty pages back within about a second: what a killed VM can lose is bounded
     * (Put, Diff and Changes sync explicitly). */
    write_text("/proc/sys/vm/dirty_expire_centisecs", "100");
    write_text("/proc/sys/vm/dirty_writeback_centisecs", "50");
    /* the whiteout that hides lost+found (see the host side's view builder) */
    mkdir("/tmp/mask", 0755);
    mknod("/tmp/mask/lost+found", S_IFCHR | 0600, makedev(0, 0));
    int want = cmdline_int("lcow.ports=", 1);
    char ports[16][64];
    int n = find_ports(ports, 16, want);
    if (n == 0) {
        logmsg("lcow-agent: no lcow.* virtio-serial port");
        return 1;
    }
    /* the scratch disk (LUN 0), if any, at /tmp/scratch (SPEC §1.1) */
    if (cmdline_int("lcow.scratch=", 0)) {
        char *margv[] = {"mount", "0", "/tmp/scratch", "rw", NULL};
        struct outbuf o = {0};
        if (op_mount(margv, 4, &o) < 0) logmsg("lcow-agent: scratch: %s", fail_state.text);
        free(o.data);
    }
    pid_t workers[16];
    int fds[16];
    for (int i = 0; i < n; i++) {
        fds[i] = open(ports[i], O_RDWR);
        if (fds[i] < 0) logmsg("lcow-agent: %s: %s", ports[i], strerror(errno));
    }
    for (int i = 0; i < n; i++) workers[i] = fds[i] < 0 ? -1 : spawn_worker(fds[i]);
    logmsg("lcow-agent: ready (%d ports)", n);
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == ECHILD) pause();
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (workers[i] == pid) {
                logmsg("lcow-agent: worker %s exited; restarting", ports[i]);
                workers[i] = spawn_worker(fds[i]);
            }
        }
    }
}
