/* Path resolution inside a view; stat and xattr records (see fileops.h). */
#define _GNU_SOURCE
#include "fileops.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Where view roots are found: the guest's "/" (AT_FDCWD: a plain open); host-side tests and
 * the fuzzer give a directory, below which every root then stays. */
int views_fd = AT_FDCWD;

int open_root(const char *root) {
    int fd = views_fd == AT_FDCWD ? open(root, O_PATH | O_DIRECTORY | O_CLOEXEC)
                                  : open_in(views_fd, root, O_PATH | O_DIRECTORY, 0);
    if (fd < 0) return fail_errno(root);
    return fd;
}

/* A relative form of the host-normalised absolute path ("" for the root). */
const char *rel(const char *path) {
    while (*path == '/') path++;
    return path;
}

int open_in(int root, const char *path, int flags, mode_t mode) {
    struct open_how how = {0};
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    const char *r = rel(path);
    return (int)syscall(SYS_openat2, root, *r ? r : ".", &how, sizeof how);
}

/* The parent directory of path (an O_PATH fd) and its last component; for the root itself
 * the root and "". */
int parent_in(int root, const char *path, char *base, size_t basesz) {
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

/* st's mtime in nanoseconds, saturated at the int64 limits: the reply's field cannot say
 * more (past 2262), and wrapping around would name a time in 1677. */
static int64_t mtime_ns(const struct stat *st) {
    int64_t ns;
    if (__builtin_mul_overflow((int64_t)st->st_mtim.tv_sec, (int64_t)1000000000, &ns) ||
        __builtin_add_overflow(ns, (int64_t)st->st_mtim.tv_nsec, &ns))
        ns = st->st_mtim.tv_sec < 0 ? INT64_MIN : INT64_MAX;
    return ns;
}

void out_stat(struct outbuf *o, const struct stat *st) {
    out_u32(o, st->st_mode);
    out_u32(o, st->st_uid);
    out_u32(o, st->st_gid);
    out_u32(o, (uint32_t)st->st_nlink);
    out_u64(o, (uint64_t)st->st_size);
    out_u64(o, (uint64_t)mtime_ns(st));
    out_u32(o, major(st->st_rdev));
    out_u32(o, minor(st->st_rdev));
    out_u64(o, (uint64_t)st->st_ino);
    out_u64(o, (uint64_t)st->st_dev);
}

int lstat_at(int dfd, const char *base, struct stat *st) {
    return fstatat(dfd, *base ? base : "", st, AT_SYMLINK_NOFOLLOW | (*base ? 0 : AT_EMPTY_PATH));
}

/* xattrs of an inode without following it: an O_PATH fd opened without following, read
 * through its /proc link. The link is a magic link, so listxattr/getxattr must follow it to
 * reach the inode (a symlink stays itself); the l* calls would read the link's own, none. */
void out_xattrs(struct outbuf *o, int dfd, const char *base) {
    char names[XATTR_LIST_MAX], where[64];
    int fd = openat(dfd, *base ? base : ".", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        out_u32(o, 0);
        return;
    }
    snprintf(where, sizeof where, "/proc/self/fd/%d", fd);
    ssize_t n = listxattr(where, names, sizeof names);
    uint32_t count = 0;
    struct outbuf items = {0};
    for (ssize_t i = 0; n > 0 && i < n; i += (ssize_t)strlen(names + i) + 1) {
        char value[XATTR_SIZE_MAX];
        ssize_t v = getxattr(where, names + i, value, sizeof value);
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

/* A regular file opened in the view (final symlink followed); devices and FIFOs are refused
 * before they are opened. */
int open_regular(int root, const char *path, int flags, mode_t perm) {
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
