/* Frames, replies and failures on this worker's port (see frames.h). */
#define _GNU_SOURCE
#include "frames.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int port_in = -1, port_out = -1;
unsigned char *inbuf;
size_t inlen;

/* console logging */

void logmsg(const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof text - 2) n = sizeof text - 2;
    text[n++] = '\n';
    ssize_t w = write(2, text, (size_t)n);
    (void)w;
}

/* ---------------------------------------------------------------------------------------- */
/* port I/O */

/* Read exactly n bytes; returns 0, or -1 when the host is not connected (read gives 0)
 * or went away mid-frame: the worker then forgets the session. */
static int read_full(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n) {
        ssize_t r = read(port_in, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

int write_full(const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(port_out, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

int send_frame(char kind, const void *data, size_t n) {
    unsigned char head[5 + 4096];
    head[0] = (unsigned char)kind;
    head[1] = (unsigned char)(n >> 24);
    head[2] = (unsigned char)(n >> 16);
    head[3] = (unsigned char)(n >> 8);
    head[4] = (unsigned char)n;
    if (n <= 4096) { /* one write for small frames */
        if (n) memcpy(head + 5, data, n);
        return write_full(head, 5 + n);
    }
    if (write_full(head, 5) < 0) return -1;
    return write_full(data, n);
}

/* Read one frame into inbuf; returns its kind, or -1 when the host went away. */
int read_frame(void) {
    unsigned char head[5];
    if (read_full(head, 5) < 0) return -1;
    uint32_t n = ((uint32_t)head[1] << 24) | ((uint32_t)head[2] << 16) |
                 ((uint32_t)head[3] << 8) | head[4];
    if (n > MAX_FRAME) return -1;
    unsigned char *grown = realloc(inbuf, n + 1);
    if (!grown) return -1;
    inbuf = grown;
    if (n && read_full(inbuf, n) < 0) return -1;
    inbuf[n] = 0;
    inlen = n;
    return head[0];
}

/* ---------------------------------------------------------------------------------------- */
/* replies */

void out_put(struct outbuf *o, const void *p, size_t n) {
    if (!n) return; /* (o->data may still be NULL: no arithmetic on it) */
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->len + n) cap *= 2;
        o->data = realloc(o->data, cap);
        if (!o->data) abort();
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

void out_u16(struct outbuf *o, uint32_t v) {
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    out_put(o, b, 2);
}

void out_u32(struct outbuf *o, uint32_t v) {
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    out_put(o, b, 4);
}

void out_u64(struct outbuf *o, uint64_t v) {
    out_u32(o, (uint32_t)(v >> 32));
    out_u32(o, (uint32_t)v);
}

struct failure fail_state;

int fail(char cls, int err, const char *fmt, ...) {
    fail_state.cls = cls;
    fail_state.err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fail_state.text, sizeof fail_state.text, fmt, ap);
    va_end(ap);
    return -1;
}

int fail_errno(const char *what) {
    int e = errno;
    return fail('O', e, "%s: %s", what, strerror(e));
}

int send_failure(void) {
    struct outbuf o = {0};
    out_put(&o, &fail_state.cls, 1);
    out_u32(&o, (uint32_t)fail_state.err);
    out_put(&o, fail_state.text, strlen(fail_state.text));
    int r = send_frame('X', o.data, o.len);
    free(o.data);
    return r;
}

long parse_long(const char *s) { return strtol(s, NULL, 0); }
