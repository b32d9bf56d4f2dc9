#ifndef PLUGBOARD_CSPAWN_H
#define PLUGBOARD_CSPAWN_H
#include <spawn.h>

/// glibc's GNU extensions that Swift's Glibc module does not show (they need _GNU_SOURCE).
int cspawn_file_actions_addclosefrom(posix_spawn_file_actions_t *actions, int from);
int cspawn_file_actions_addchdir(posix_spawn_file_actions_t *actions, const char *path);
int cspawn_pipe_cloexec(int fds[2]);
/// A pidfd for any process (Linux 5.3+): readable when it exits. -1 and errno on failure.
int cspawn_pidfd_open(int pid);
#endif
