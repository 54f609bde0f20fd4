/*
 * lcow guest agent: PID 1 of the service utility VM (SPEC §4, §4.8).
 *
 * Boots the guest (proc, sys, devtmpfs, tmpfs /tmp, kernel modules listed in
 * /lib/modules/load), then serves every virtio-serial port named "lcow.*" in its own
 * worker process, with the framed protocol of frames.h: the file operations of fileops.h
 * and the guest's own commands below (disks, mounts, mkfs: disks.h).
 *
 * "mkfs" formats a hot-added, unmounted disk with the initramfs's /sbin/mke2fs (the host's
 * e2fsprogs and its libraries, added by `lcow uvm build`): sandboxes of other sizes (§4.5).
 *
 * Only libc and kernel headers; every .c file here is built with gcc -static by
 * `lcow uvm build` into the initramfs's /init.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "disks.h"
#include "dispatch.h"

/* ---------------------------------------------------------------------------------------- */
/* the commands only the guest serves */

static int cmd_mount(char **argv, int argc, struct outbuf *o) { return op_mount(argv, argc, o); }

static int cmd_umount(char **argv, int argc, struct outbuf *o) {
    (void)o;
    return op_umount(argv, argc);
}

static int cmd_overlay(char **argv, int argc, struct outbuf *o) {
    (void)o;
    return op_overlay(argv, argc);
}

static int cmd_freeze(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return op_freeze(argv[1], 1);
}

static int cmd_thaw(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return op_freeze(argv[1], 0);
}

static int cmd_mkfs(char **argv, int argc, struct outbuf *o) { return op_mkfs(argv, argc, o); }

static int cmd_mkdirp(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return mkdir_p(argv[1]);
}

static int cmd_rmdir(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return rmdir(argv[1]) < 0 && errno != ENOENT ? fail_errno(argv[1]) : 0;
}

static int cmd_sync(char **argv, int argc, struct outbuf *o) {
    (void)argv, (void)argc, (void)o;
    sync();
    return 0;
}

static const struct command guest_commands[] = {
    {"mount", 4, cmd_mount}, {"umount", 2, cmd_umount}, {"overlay", 3, cmd_overlay},
    {"freeze", 2, cmd_freeze}, {"thaw", 2, cmd_thaw}, {"mkfs", 2, cmd_mkfs},
    {"mkdirp", 2, cmd_mkdirp}, {"rmdir", 2, cmd_rmdir}, {"sync", 1, cmd_sync},
    {NULL, 0, NULL},
};

static const struct command *const guest_tables[] = {file_commands, guest_commands, NULL};

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
    port_in = port_out = fd;
    serve(guest_tables, 0);
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
