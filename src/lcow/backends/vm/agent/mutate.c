/* File operations that change a view: one path each, its last component not followed. */
#define _GNU_SOURCE
#include "fileops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* Whether a view path fits a buffer of n bytes (else the failure is ENAMETOOLONG): a copy cut
 * short would name another file. */
static int fits(const char *path, size_t n) {
    if (strlen(rel(path)) < n) return 1;
    errno = ENAMETOOLONG;
    return 0;
}

static int mkdir_all_at(int root, const char *path, mode_t mode) {
    char buf[4096];
    if (!fits(path, sizeof buf)) return fail_errno(path);
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
            if (check < 0 && errno == ENOENT) errno = EEXIST; /* a dangling symlink (Go) */
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

/* A decimal count of nanoseconds since the epoch as a timespec. The seconds are the digits
 * before the last nine, so times past 2262 (beyond 64 bits of nanoseconds) stay exact. */
static int parse_ns(const char *text, struct timespec *ts) {
    const char *s = text + (*text == '-' || *text == '+');
    size_t n = strlen(s);
    if (n == 0 || strspn(s, "0123456789") != n) return errno = EINVAL, -1;
    size_t split = n > 9 ? n - 9 : 0;
    long long sec = 0, nsec = 0;
    for (size_t i = 0; i < split; i++) {
        int digit = s[i] - '0';
        if (sec > (LLONG_MAX - digit) / 10) return errno = ERANGE, -1;
        sec = sec * 10 + digit;
    }
    for (size_t i = split; i < n; i++) nsec = nsec * 10 + (s[i] - '0');
    if (*text == '-') {
        sec = -sec;
        if (nsec) sec--, nsec = 1000000000LL - nsec;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)nsec;
    return 0;
}

/* One-path operations that act on the final component without following it. */
int op_simple(const char *cmd, char **argv, int argc, int root_override) {
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
        else if (setxattr(where, argv[3], value, vlen, 0) < 0 && /* through the magic link */
                 errno != EOPNOTSUPP && errno != EPERM)
            rc = fail_errno(path);
        free(value);
        if (fd >= 0) close(fd);
    } else if (!strcmp(cmd, "utimens")) {
        struct timespec ts[2];
        if (parse_ns(argv[3], &ts[0]) < 0 || parse_ns(argv[4], &ts[1]) < 0 ||
            utimensat(dfd, *base ? base : ".", ts, AT_SYMLINK_NOFOLLOW) < 0)
            rc = fail_errno(path);
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
int op_prepdirs(int root, const char *path) {
    char dir[4096];
    if (!fits(path, sizeof dir)) return fail_errno(path);
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
