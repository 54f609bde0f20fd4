/* Command dispatch and the serving loop of one port (see dispatch.h). */
#define _GNU_SOURCE
#include "dispatch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileops.h"

/* The arguments of the C frame just read, in a copy of it: a command may read more frames
 * (its data, a batch's operations) and each read reuses inbuf, so argv must not point there.
 * Returns the copy (the caller frees it); *argc gets the count. */
static char *split_args(char **argv, int *argc) {
    char *copy = malloc(inlen + 1);
    if (!copy) abort();
    memcpy(copy, inbuf, inlen + 1);
    int n = 0;
    size_t i = 0;
    while (i < inlen && n < MAX_ARGS - 1) {
        argv[n++] = copy + i;
        i += strlen(copy + i) + 1;
    }
    argv[n] = NULL;
    *argc = n;
    return copy;
}

static const struct command *find_command(const struct command *const tables[], const char *name);

/* Batch: the frames after "batch root" are file operations relative to root, executed in
 * order without replies until E; the first failure stops execution (data still drained)
 * and is the reply, prefixed with the failing operation's index. */
static int op_batch(char **argv, struct outbuf *o) {
    int root = open_root(argv[1]);
    if (root >= 0 && argv[2] && argv[2][0]) { /* the destination, resolved inside the view */
        int dest = open_in(root, argv[2], O_PATH | O_DIRECTORY, 0);
        if (dest < 0) fail_errno(argv[2]);
        close(root);
        root = dest;
    }
    long index = 0, failed = -1;
    for (;; index++) {
        int kind = read_frame();
        if (kind < 0) {
            if (root >= 0) close(root);
            return -2;
        }
        if (kind == 'E') break;
        if (kind != 'C') continue;
        char *args[MAX_ARGS];
        int argc;
        char *held = split_args(args, &argc);
        if (argc < 2) {
            free(held);
            continue;
        }
        /* args: cmd path ... — the root comes from the batch. */
        char *full[MAX_ARGS + 1];
        full[0] = args[0];
        full[1] = argv[1];
        for (int i = 1; i <= argc; i++) full[i + 1] = args[i];
        int skip = failed >= 0 || root < 0;
        /* the operation's arguments are there (the root is the batch's) */
        static const struct command *const ops[] = {file_commands, NULL};
        const struct command *known = find_command(ops, args[0]);
        int missing = known && argc + 1 < known->argc;
        if (missing && !skip)
            fail('I', EINVAL, "%s: expected %d arguments", args[0], known->argc - 2);
        int rc = missing ? -1 : 0;
        if (!strcmp(args[0], "writefile")) {
            if (!skip && !missing) rc = op_writefile(full, root);
            else if (receive_into(-1, args[1]) == -2) rc = -2; /* its data, drained */
        } else if (skip || missing) {
        } else if (!strcmp(args[0], "prepdirs")) {
            rc = op_prepdirs(root, args[1]);
        } else {
            rc = op_simple(args[0], full, argc + 1, root);
        }
        free(held);
        if (rc == -2) {
            close(root);
            return -2;
        }
        if (rc < 0 && failed < 0) failed = index;
    }
    if (root < 0) return -1;
    close(root);
    if (failed >= 0) {
        char text[sizeof fail_state.text];
        snprintf(text, sizeof text, "%ld:%s", failed, fail_state.text);
        snprintf(fail_state.text, sizeof fail_state.text, "%s", text);
        return -1;
    }
    out_u32(o, (uint32_t)index);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the commands every build serves */

static int cmd_hello(char **argv, int argc, struct outbuf *o) {
    out_put(o, VERSION, strlen(VERSION));
    if (argc > 1) {
        out_put(o, " ", 1);
        out_put(o, argv[1], strlen(argv[1]));
    }
    return 0;
}

static int cmd_batch(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_batch(argv, o);
}

static int cmd_stat(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_stat(argv, o, 1);
}

static int cmd_lstat(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_stat(argv, o, 0);
}

static int cmd_readlink(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_readlink(argv, o);
}

static int cmd_readdir(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_readdir(argv, o, 0);
}

static int cmd_readdirx(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_readdir(argv, o, 1);
}

static int cmd_xattrs(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_xattrs(argv, o);
}

static int cmd_readfile(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return op_readfile(argv);
}

static int cmd_writefile(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return op_writefile(argv, -1);
}

static int cmd_open(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return op_open(argv);
}

static int cmd_fread(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_fread(argv, o);
}

static int cmd_fwrite(char **argv, int argc, struct outbuf *o) {
    (void)argv, (void)argc, (void)o;
    return op_fwrite();
}

static int cmd_fseek(char **argv, int argc, struct outbuf *o) {
    (void)argc;
    return op_fseek(argv, o);
}

static int cmd_ftruncate(char **argv, int argc, struct outbuf *o) {
    (void)argc, (void)o;
    return op_ftruncate(argv);
}

static int cmd_fclose(char **argv, int argc, struct outbuf *o) {
    (void)argv, (void)argc, (void)o;
    return op_fclose();
}

static int cmd_simple(char **argv, int argc, struct outbuf *o) {
    (void)o;
    return op_simple(argv[0], argv, argc, -1);
}

const struct command file_commands[] = {
    {"hello", 1, cmd_hello},       {"batch", 3, cmd_batch},
    {"stat", 3, cmd_stat},         {"lstat", 3, cmd_lstat},
    {"readlink", 3, cmd_readlink}, {"readdir", 4, cmd_readdir},
    {"readdirx", 4, cmd_readdirx}, {"xattrs", 3, cmd_xattrs},
    {"readfile", 3, cmd_readfile}, {"writefile", 4, cmd_writefile},
    {"open", 5, cmd_open},         {"fread", 2, cmd_fread},
    {"fwrite", 1, cmd_fwrite},     {"fseek", 3, cmd_fseek},
    {"ftruncate", 2, cmd_ftruncate}, {"fclose", 1, cmd_fclose},
    {"mkdir", 4, cmd_simple},      {"mkdirall", 4, cmd_simple},
    {"mkdirm", 4, cmd_simple},     {"remove", 3, cmd_simple},
    {"removeall", 3, cmd_simple},  {"link", 4, cmd_simple},
    {"symlink", 4, cmd_simple},    {"lchmod", 4, cmd_simple},
    {"lchown", 5, cmd_simple},     {"mknod", 6, cmd_simple},
    {"mkfifo", 4, cmd_simple},     {"setxattr", 5, cmd_simple},
    {"utimens", 5, cmd_simple},    {"prep", 5, cmd_simple},
    {NULL, 0, NULL},
};

static const struct command *find_command(const struct command *const tables[], const char *name) {
    for (int t = 0; tables[t]; t++)
        for (const struct command *c = tables[t]; c->name; c++)
            if (!strcmp(c->name, name)) return c;
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* the serving loop */

void serve(const struct command *const tables[], int until_eof) {
    for (;;) {
        int kind = read_frame();
        if (kind < 0) { /* host disconnected: forget the session */
            session_reset();
            if (until_eof) return;
            usleep(2000);
            continue;
        }
        if (kind != 'C') continue; /* stray data from a dead session */
        char *argv[MAX_ARGS];
        int argc;
        char *held = split_args(argv, &argc);
        if (argc == 0) { /* nothing to answer */
            free(held);
            continue;
        }
        const struct command *found = find_command(tables, argv[0]);
        struct outbuf o = {0};
        int rc;
        if (!found) rc = fail('I', EINVAL, "unknown command %s", argv[0]);
        else if (argc < found->argc)
            rc = fail('I', EINVAL, "%s: expected %d arguments", argv[0], found->argc - 1);
        else rc = found->run(argv, argc, &o);
        free(held);
        if (rc == -1) send_failure();
        else if (rc == 0) send_frame('R', o.data, o.len);
        free(o.data);
        if (rc == -2 && until_eof) { /* the host went away mid-stream (or sent a frame
                                      * that cannot be read): what follows is not its */
            session_reset();
            return;
        }
    }
}
