/*
 * The frame protocol on one virtio-serial port (README "Agent protocol"):
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
 * This module owns the port, the last frame read, reply buffers, the current command's
 * failure and console logging; everything else builds on it.
 */
#ifndef LCOW_AGENT_FRAMES_H
#define LCOW_AGENT_FRAMES_H

#include <stddef.h>
#include <stdint.h>

#define VERSION "lcow-agent 1"
#define CHUNK (256 * 1024)
#define MAX_FRAME (16u * 1024 * 1024)
#define MAX_ARGS 64

/* This worker's port: frames are read from port_in and written to port_out (the same
 * virtio-serial port in the guest; host-side tests may give two descriptors). */
extern int port_in, port_out;
extern unsigned char *inbuf; /* payload of the last frame read, NUL-terminated */
extern size_t inlen;

void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int write_full(const void *buf, size_t n);
int send_frame(char kind, const void *data, size_t n);
int read_frame(void);

/* A reply under construction. */
struct outbuf {
    unsigned char *data;
    size_t len, cap;
};

void out_put(struct outbuf *o, const void *p, size_t n);
void out_u16(struct outbuf *o, uint32_t v);
void out_u32(struct outbuf *o, uint32_t v);
void out_u64(struct outbuf *o, uint64_t v);

/* The failure of the current command: class, errno, text. */
struct failure {
    char cls;
    int err;
    char text[480];
};

extern struct failure fail_state;

int fail(char cls, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int fail_errno(const char *what);
int send_failure(void);

long parse_long(const char *s);

#endif
