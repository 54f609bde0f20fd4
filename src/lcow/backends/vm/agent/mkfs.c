/* mkfs: format a hot-added sandbox disk with the initramfs's mke2fs (SPEC §4.5). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "disks.h"

/* mkfs lun option...: format the whole disk at SCSI LUN `lun` (attached, not mounted) with the
 * initramfs's mke2fs (SPEC §4.5). The host gives the options (its sandbox module's, so host and
 * guest formatting cannot drift apart); the device is always the last operand. mke2fs runs from
 * an argument vector (no shell) with a private mke2fs.conf; its output is the failure text.
 * The device is flushed before the reply, so detaching right after loses nothing. Replies the
 * device's path. */
#define MKE2FS "/sbin/mke2fs"

int op_mkfs(char **argv, int argc, struct outbuf *o) {
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
