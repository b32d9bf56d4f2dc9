// plugboard-exec-shim PARENT_PID COMMAND [ARGS...]
//
// Runs COMMAND so that it is killed when plugboardd dies, even by SIGKILL: the kernel's
// parent-death signal survives exec, but posix_spawn cannot set it in the child, so this
// shim sets it and then execs. If the parent is already gone, it exits at once.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: plugboard-exec-shim PARENT_PID COMMAND [ARGS...]\n");
        return 127;
    }
    pid_t expected = (pid_t)strtol(argv[1], NULL, 10);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fprintf(stderr, "plugboard-exec-shim: prctl: %s\n", strerror(errno));
        return 127;
    }
    // The parent may have died between fork and prctl: then nobody would signal us.
    if (getppid() != expected) return 127;
    execvp(argv[2], argv + 2);
    fprintf(stderr, "plugboard-exec-shim: cannot run %s: %s\n", argv[2], strerror(errno));
    return 127;
}
