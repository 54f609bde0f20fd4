/*
 * The guest's own state (SPEC §4.4, §4.5, §4.7): hot-added disks mounted by SCSI LUN (through
 * dm-verity when asked), overlay unions, freeze/thaw, and mkfs of a sandbox disk. Only the
 * guest build links these: host-side tests and the fuzzer must not mount or format anything.
 */
#ifndef LCOW_AGENT_DISKS_H
#define LCOW_AGENT_DISKS_H

#include <stddef.h>

#include "frames.h"

/* disks.c */
int find_disk(const char *lun, char *dev, size_t devsz, int wait_ms);
int mkdir_p(const char *path);
void write_text(const char *path, const char *text);
int op_mount(char **argv, int argc, struct outbuf *o);
int op_umount(char **argv, int argc);
int op_overlay(char **argv, int argc);
int op_freeze(const char *path, int freeze);

/* mkfs.c */
int op_mkfs(char **argv, int argc, struct outbuf *o);

#endif
