/*
 * libFuzzer target for the guest agent's frame parser and file operations.
 *
 * One input is the byte stream a host sends to one port. It is served as the guest serves a
 * port (dispatch.c's loop over the host build's commands: hello, batch and the file
 * operations; never mount, mkfs or sync), until the stream ends. View roots resolve below a
 * private, size-limited tmpfs (a mount namespace of this process; a temporary directory when
 * that cannot be made), refilled with a small tree before every input.
 *
 * Beyond the sanitizers, each input must leave: well-formed output (R, X, D, E frames of at
 * most 16 MiB, X with a class and an errno), no more replies than commands, and no descriptor
 * left open.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dispatch.h"
#include "fileops.h"

static const struct command *const tables[] = {file_commands, NULL};
static char jail[4096];
static int in_fd = -1, out_fd = -1;

static void leave_jail(void) {
    umount2(jail, MNT_DETACH);
    rmdir(jail);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(jail, sizeof jail, "%s/lcow-agent-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(jail)) {
        perror("mkdtemp");
        abort();
    }
    if (unshare(CLONE_NEWNS) == 0 && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
        mount("lcow-agent-fuzz", jail, "tmpfs", MS_NODEV | MS_NOSUID, "size=64m,nr_inodes=20000") ==
            0)
        fprintf(stderr, "fuzz_agent_frames: views on a private tmpfs at %s\n", jail);
    else
        fprintf(stderr, "fuzz_agent_frames: views in %s (no private tmpfs: %s)\n", jail,
                strerror(errno));
    atexit(leave_jail);
    views_fd = open(jail, O_PATH | O_DIRECTORY | O_CLOEXEC);
    in_fd = memfd_create("frames-in", MFD_CLOEXEC);
    out_fd = memfd_create("frames-out", MFD_CLOEXEC);
    if (views_fd < 0 || in_fd < 0 || out_fd < 0) {
        perror("fuzz_agent_frames: setup");
        abort();
    }
    return 0;
}

static void empty_dir(int dfd) {
    DIR *d = fdopendir(dup(dfd));
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (unlinkat(dfd, e->d_name, 0) == 0) continue;
        int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
            empty_dir(sub);
            close(sub);
        }
        unlinkat(dfd, e->d_name, AT_REMOVEDIR);
    }
    if (d) closedir(d);
}

/* The tree every input starts from: /v (a view) with a file, a directory, symlinks. */
static void refill(void) {
    int root = open(jail, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    empty_dir(root);
    mkdirat(root, "v", 0755);
    mkdirat(root, "v/d", 0755);
    int f = openat(root, "v/f", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f >= 0) {
        ssize_t w = write(f, "content\n", 8);
        (void)w;
        close(f);
    }
    symlinkat("/f", root, "v/abs");
    symlinkat("../../..", root, "v/up");
    close(root);
}

static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    while (d && readdir(d)) n++;
    if (d) closedir(d);
    return n;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Frames in the input the agent may answer: C frames (a generous bound: the agent may
 * stop reading earlier). */
static size_t commands_in(const uint8_t *data, size_t size) {
    size_t n = 0;
    for (size_t at = 0; at + 5 <= size;) {
        uint32_t len = be32(data + at + 1);
        if (data[at] == 'C') n++;
        if (len > size - at - 5) break;
        at += 5 + len;
    }
    return n;
}

static void check_output(size_t commands) {
    off_t size = lseek(out_fd, 0, SEEK_CUR);
    unsigned char *out = size > 0 ? malloc((size_t)size) : NULL;
    if (size > 0 && pread(out_fd, out, (size_t)size, 0) != size) abort();
    size_t replies = 0;
    for (off_t at = 0; at < size;) {
        if (size - at < 5) abort(); /* a cut frame header */
        unsigned char kind = out[at];
        uint32_t len = be32(out + at + 1);
        if (len > MAX_FRAME || len > size - at - 5) abort(); /* a cut or oversized frame */
        if (kind == 'R') replies++;
        else if (kind == 'X') {
            if (len < 5 || !strchr("OIA", out[at + 5])) abort(); /* a malformed failure */
            replies++;
        } else if (kind != 'D' && kind != 'E') {
            abort(); /* a kind the host does not accept */
        }
        at += 5 + (off_t)len;
    }
    if (replies > commands) abort(); /* a reply nobody asked for */
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    refill();
    if (ftruncate(in_fd, 0) < 0 || ftruncate(out_fd, 0) < 0) abort();
    if (pwrite(in_fd, data, size, 0) != (ssize_t)size) abort();
    lseek(in_fd, 0, SEEK_SET);
    lseek(out_fd, 0, SEEK_SET);
    int fds = open_fds();
    port_in = in_fd;
    port_out = out_fd;
    serve(tables, 1);
    if (open_fds() != fds) {
        fprintf(stderr, "fuzz_agent_frames: %d descriptors before, %d after\n", fds, open_fds());
        abort(); /* a descriptor leaked: a worker would run out */
    }
    check_output(commands_in(data, size));
    return 0;
}
