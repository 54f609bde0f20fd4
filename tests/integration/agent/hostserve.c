/*
 * The guest agent's protocol and file operations as a host process, for tests: the agent's
 * sources minus the guest-only ones (init.c, disks.c, mkfs.c) plus this main.
 *
 *   hostserve VIEWS serve FD    serve the frames on descriptor FD until the peer closes it
 *   hostserve VIEWS accept FD   accept connections on the listening socket FD and serve each
 *                               until it closes, as a virtio-serial port serves host after host
 *
 * View roots (the first argument of every file operation) are resolved below the directory
 * VIEWS as below the guest's "/": nothing outside it can be named.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dispatch.h"
#include "fileops.h"

static const struct command *const tables[] = {file_commands, NULL};

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[2], "serve") && strcmp(argv[2], "accept"))) {
        fprintf(stderr, "usage: %s VIEWS serve|accept FD\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a host that went away is a failed write, as on the port */
    views_fd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (views_fd < 0) {
        perror(argv[1]);
        return 2;
    }
    int fd = atoi(argv[3]);
    if (!strcmp(argv[2], "serve")) {
        port_in = port_out = fd;
        serve(tables, 1);
        return 0;
    }
    for (;;) {
        int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0 && errno == EINTR) continue;
        if (conn < 0) {
            perror("accept");
            return 1;
        }
        port_in = port_out = conn;
        serve(tables, 1);
        close(conn);
    }
}
