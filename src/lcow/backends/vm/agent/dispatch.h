/*
 * Commands by name, and the loop serving one port: read a C frame, run its command, reply R
 * (or X, the failure); "batch" runs a pipelined stream of file operations with one reply.
 */
#ifndef LCOW_AGENT_DISPATCH_H
#define LCOW_AGENT_DISPATCH_H

#include "frames.h"

typedef int (*command_fn)(char **argv, int argc, struct outbuf *o);

/* A command: its argv needs at least argc entries (its name included). A run returns 0
 * (reply R with the outbuf), -1 (reply X with fail_state) or -2 (the host went away
 * mid-stream: no reply). */
struct command {
    const char *name;
    int argc;
    command_fn run;
};

/* hello, batch and the file operations: what any agent build serves (NULL-terminated). */
extern const struct command file_commands[];

/* Serve this worker's port with the commands of `tables` (a NULL-terminated list). When the
 * host goes away (or sends a frame that cannot be read) the session is forgotten; then, with
 * until_eof, serve returns (host-side tests, the fuzzer), else it waits for the next host (a
 * virtio-serial port reads 0 meanwhile). */
void serve(const struct command *const tables[], int until_eof);

#endif
