// Socket operations of the guest component: file->socket, socket->file, socket->socket.
//
// Per socket endpoint, before the request (docs/protocol.md "Socket endpoints"):
//   check: a connected, ESTABLISHED IPv4 TCP socket (else -EINVAL / -ENOTCONN; the socket is
//          not touched and stays usable);
//   drain: wait until the peer acknowledged everything the application sent (SIOCOUTQ == 0,
//          bounded: -ETIMEDOUT);
//   block: the flow's segments are dropped in the VM's own netns (GuestFlowBlock);
//   freeze + disconnect_silently: the state goes to dom0, the 4-tuple is free, the
//          application's descriptor stays open.
// Unread received bytes of a SOURCE are the first bytes of the stream: the guest delivers
// them itself; for a DESTINATION they are kept and put back in front of what dom0 returns.
// After the response the connection is restored from dom0's state (or from our own if dom0
// never took it over) and handed to the application in place of its descriptor.
#pragma once

#include <vpipe/abi/ioctl.h>

#include "file_ops.h"
#include "util/unique_fd.h"

namespace vpipe::agent {

// The restored sockets that replace the application's descriptors (invalid: unchanged).
struct SocketReplacements {
    UniqueFd in, out;
};

// op->op is one of VPIPE_IOC_FILE_TO_SOCKET / SOCKET_TO_FILE / SOCKET_TO_SOCKET. Returns 0
// (op->moved may be short: EOF of the file, FIN of the peer) or -errno.
int socket_op(AgentContext& ctx, int in_fd, int out_fd, vpipe_ioc_op* op, SocketReplacements* repl);

// Flows blocked in the VM's netns right now (tests, stats).
int blocked_flows();

}  // namespace vpipe::agent
