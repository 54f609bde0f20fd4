/*
 * File operations inside a view (SPEC §4.8). Each takes the view's guest directory as its
 * first argument and resolves paths with openat2(RESOLVE_IN_ROOT): symlinks and ".." stay
 * inside the view as in a chroot. Tar parsing and Docker's archive semantics stay on the host
 * (Python); the guest only executes simple file operations, in "batch" mode pipelined without
 * per-operation replies (dispatch.c).
 *
 *   paths.c     resolution inside a view, stat and xattr records, regular files only
 *   query.c     stat, lstat, readlink, readdir(x), xattrs
 *   filedata.c  readfile/writefile streams and the open-file session (remotefs openfile)
 *   mutate.c    mkdir(all), remove(all), link, symlink, lchmod, lchown, mknod, ... and the
 *               per-entry preparation of archive extraction (prep, prepdirs)
 */
#ifndef LCOW_AGENT_FILEOPS_H
#define LCOW_AGENT_FILEOPS_H

#include <sys/stat.h>
#include <sys/types.h>

#include "frames.h"

/* paths.c */
extern int views_fd;
int open_root(const char *root);
const char *rel(const char *path);
int open_in(int root, const char *path, int flags, mode_t mode);
int parent_in(int root, const char *path, char *base, size_t basesz);
void out_stat(struct outbuf *o, const struct stat *st);
int lstat_at(int dfd, const char *base, struct stat *st);
void out_xattrs(struct outbuf *o, int dfd, const char *base);
int open_regular(int root, const char *path, int flags, mode_t perm);

/* query.c */
int op_stat(char **argv, struct outbuf *o, int follow);
int op_readlink(char **argv, struct outbuf *o);
int op_readdir(char **argv, struct outbuf *o, int extended);
int op_xattrs(char **argv, struct outbuf *o);

/* filedata.c */
int op_readfile(char **argv);
int receive_into(int fd, const char *path);
int op_writefile(char **argv, int root_override);
int op_open(char **argv);
int op_fread(char **argv, struct outbuf *o);
int op_fwrite(void);
int op_fseek(char **argv, struct outbuf *o);
int op_fclose(void);
int op_ftruncate(char **argv);
void session_reset(void);

/* mutate.c */
int op_simple(const char *cmd, char **argv, int argc, int root_override);
int op_prepdirs(int root, const char *path);

#endif
