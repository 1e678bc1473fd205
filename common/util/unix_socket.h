// Unix stream sockets with descriptor passing (SCM_RIGHTS) and peer credentials.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "util/unique_fd.h"

namespace vpipe {

// Creates a listening unix stream socket at `path` (an existing socket file is replaced).
// `mode` is applied to the socket file. Throws std::system_error.
UniqueFd listen_unix(const std::string& path, int mode = 0600, int backlog = 64);

// Connects to the unix stream socket at `path`. Returns an invalid fd and sets errno on failure.
UniqueFd connect_unix(const std::string& path);

// Sends all `len` bytes with `fds` attached to the first byte. 0 or -errno.
int send_msg_fds(int sock, const void* buf, size_t len, const int* fds, size_t nfds);

// Receives exactly `len` bytes; descriptors attached to them are appended to `fds` (at most
// `max_fds`; extra descriptors are closed and the call fails with -EBADMSG).
// 0, -errno, or -ECONNRESET on EOF before `len` bytes.
int recv_msg_fds(int sock, void* buf, size_t len, std::vector<UniqueFd>* fds, size_t max_fds);

struct PeerCred {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};
// SO_PEERCRED of a connected unix socket. 0 or -errno.
int peer_cred(int sock, PeerCred* out);

}  // namespace vpipe
