/* Disks and mounts in the guest (SPEC §4.4, §4.7): LUN lookup, dm-verity, ext4 and overlay
 * mounts, freeze/thaw. */
#define _GNU_SOURCE
#include "disks.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

/* The block device of SCSI LUN `lun` (hot-added: wait for the guest's scan). */
int find_disk(const char *lun, char *dev, size_t devsz, int wait_ms) {
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

int mkdir_p(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) return errno = ENAMETOOLONG, fail_errno(path);
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

void write_text(const char *path, const char *text) {
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
int op_mount(char **argv, int argc, struct outbuf *o) {
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
int op_umount(char **argv, int argc) {
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
int op_overlay(char **argv, int argc) {
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

int op_freeze(const char *path, int freeze) {
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
