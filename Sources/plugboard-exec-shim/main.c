// plugboard-exec-shim [--cgroup-procs FILE]... PARENT_PID COMMAND [ARGS...]
//
// Runs COMMAND so that it is killed when plugboardd dies, even by SIGKILL: the kernel's
// parent-death signal survives exec, but posix_spawn cannot set it in the child, so this
// shim sets it and then execs. If the parent is already gone, it exits at once.
//
// Each --cgroup-procs FILE (a cgroup's cgroup.procs) is joined first, by writing "0" into
// it: the plugin then starts inside its cgroups, so nothing it forks can be outside them
// (joining from the daemon after the spawn would race with the plugin's first fork).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int join_cgroup(const char *procs) {
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, "0", 1);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    int i = 1;
    while (i + 1 < argc && strcmp(argv[i], "--cgroup-procs") == 0) {
        if (join_cgroup(argv[i + 1]) != 0) {
            fprintf(stderr, "plugboard-exec-shim: cannot join cgroup %s: %s\n", argv[i + 1], strerror(errno));
            return 127;
        }
        i += 2;
    }
    if (argc - i < 2) {
        fprintf(stderr, "usage: plugboard-exec-shim [--cgroup-procs FILE]... PARENT_PID COMMAND [ARGS...]\n");
        return 127;
    }
    pid_t expected = (pid_t)strtol(argv[i], NULL, 10);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fprintf(stderr, "plugboard-exec-shim: prctl: %s\n", strerror(errno));
        return 127;
    }
    // The parent may have died between fork and prctl: then nobody would signal us.
    if (getppid() != expected) return 127;
    execvp(argv[i + 1], argv + i + 1);
    fprintf(stderr, "plugboard-exec-shim: cannot run %s: %s\n", argv[i + 1], strerror(errno));
    return 127;
}
