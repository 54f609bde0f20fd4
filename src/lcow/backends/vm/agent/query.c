/* Read-only file operations: stat, readlink, listings, xattrs (argv[1] = view root). */
#define _GNU_SOURCE
#include "fileops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int op_stat(char **argv, struct outbuf *o, int follow) {
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

int op_readlink(char **argv, struct outbuf *o) {
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
int op_readdir(char **argv, struct outbuf *o, int extended) {
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
    if (count) qsort(names, count, sizeof *names, cmp_names); /* (names is NULL if empty) */
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
int op_xattrs(char **argv, struct outbuf *o) {
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
