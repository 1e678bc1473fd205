// tcp_repair: freeze a live TCP connection into a struct vpipe_tcp_state (+ its queued bytes)
// and recreate it in another socket -- possibly in another network namespace -- with Linux's
// TCP_REPAIR (the mechanism CRIU's soccr uses). This is the mechanism core of vPipe's shadow
// sockets; policy (when to hand over, steering, validation of a guest-supplied state) lives in
// the callers.
//
// All functions return 0 (or a non-negative value where stated) on success and a negative errno
// on failure. They need CAP_NET_ADMIN in the socket's network namespace (TCP_REPAIR).
//
// Hand-over recipe (see docs/design.md, "Shadow sockets without kernel patches"):
//   source:  [block the 4-tuple] freeze(fd) -> ship state+queues -> close_silently(fd)
//            (or disconnect_silently(fd) to keep the descriptor number occupied)
//   target:  restore(state, queues) -> [steer / unblock]
//   guest taking a connection back into the application's descriptor:
//            disconnect_silently(app_fd) (frees the 4-tuple, keeps the number) ->
//            restore(..., &fresh) -> copy_socket_options(app_fd, fresh) ->
//            replace_fd(app_fd, fresh) -> close(fresh)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "util/unique_fd.h"
#include "vpipe/abi/ring.h"

namespace vpipe::tcp {

// Puts the ESTABLISHED TCP socket `fd` (IPv4 or IPv6) into repair mode and reads everything
// needed to recreate it into *st (addresses/ports in network byte order, queue sequence numbers,
// window, MSS, timestamp, negotiated options) and the queued bytes: *sndq receives the send
// queue (written by the application, not yet acknowledged by the peer: sent and unsent bytes),
// *rcvq the receive queue (acknowledged to the peer, not yet read by the application).
// st->sndq_len / st->rcvq_len are set to their sizes, st->sndq_unsent to the part of the send
// queue never transmitted (SIOCOUTQNSD); st->carry_offset is left 0.
// st->snd_seq is the sequence number after the last queued byte (the kernel's write_seq),
// st->rcv_seq the next byte expected from the peer (rcv_nxt).
// On success the socket stays in repair mode until unfreeze(), close_silently() or
// disconnect_silently(); a retransmission timer may still fire, so block the flow's output too.
// The caller must keep the flow's packets away from the socket while it is frozen (block the
// 4-tuple first): a socket in repair mode still accepts incoming data AND acknowledges it
// (verified on 6.18), so bytes arriving after freeze() would be acked and lost.
// Errors: -ENOTSOCK (not a socket), -EPROTONOSUPPORT (not a TCP stream socket of AF_INET/
// AF_INET6), -ENOTCONN (not ESTABLISHED: listener, unconnected, closing), -EPERM (no
// CAP_NET_ADMIN), -EAGAIN (the queues changed while being read: retry), other -errno.
// On failure the socket is out of repair mode and usable as before.
int freeze(int fd, vpipe_tcp_state* st, std::vector<uint8_t>* sndq, std::vector<uint8_t>* rcvq);

// Leaves repair mode without closing: the abort path, the connection continues in place.
// Sends one window probe so that the peer re-announces its window.
int unfreeze(int fd);

// Closes `fd` in repair mode: neither FIN nor RST is sent, the connection disappears from this
// stack silently. Puts the socket into repair mode first if needed; if that is impossible
// (listener, state other than ESTABLISHED/CLOSE) returns the -errno and does NOT close `fd`.
int close_silently(int fd);

// Drops the connection of `fd` silently (repair-mode disconnect: no FIN/RST) but keeps the
// descriptor: it becomes an unconnected TCP socket still holding the application's options,
// and the connection's 4-tuple is free for restore() in the same namespace. Same preconditions
// as close_silently().
int disconnect_silently(int fd);

struct RestoreOptions {
    // IP_TRANSPARENT / IPV6_TRANSPARENT before bind, so that dom0 can bind the VM's address,
    // which is not one of its own.
    bool transparent = false;
    // SO_MARK of the restored socket (0: leave unset).
    uint32_t mark = 0;
    // Leave repair mode with TCP_REPAIR_OFF_NO_WP: no window probe to the peer.
    bool no_window_probe = false;
};

// Creates a new TCP socket holding the connection described by `st`, with the first
// st.sndq_len - st.sndq_unsent bytes of `sndq` refilled as sent-but-unacknowledged data
// (retransmitted by the kernel as needed) and `rcvq` as received data waiting for the
// application. The last st.sndq_unsent bytes of `sndq` (never transmitted) are NOT queued:
// the caller sends them with send_unsent() once the flow's segments reach the socket (a send
// while the flow is still blocked would be dropped and wait for a retransmission timeout).
// The socket is out of repair mode, blocking, O_CLOEXEC, and owned by *out on success. It is
// created in the calling thread's network namespace.
// sndq.size()/rcvq.size() must equal st.sndq_len/st.rcvq_len (-EINVAL otherwise).
// Errors: -EINVAL (malformed state), -EADDRINUSE / -EADDRNOTAVAIL (the 4-tuple is still in use
// in this namespace, or the local address is not local and opt.transparent is false),
// -EPERM (no CAP_NET_ADMIN), -ENOMEM/-ENOBUFS (queues could not be refilled), other -errno.
int restore(const vpipe_tcp_state& st, std::span<const uint8_t> sndq, std::span<const uint8_t> rcvq,
            const RestoreOptions& opt, UniqueFd* out);

// Queues `bytes` on a restored connection as ordinary unsent data (the unsent tail of a
// carried send queue), without blocking: the send buffer is raised when it is full.
// 0 or -errno.
int send_unsent(int fd, std::span<const uint8_t> bytes);

// Makes descriptor number `target_fd` refer to the socket behind `new_fd` (dup3), keeping
// target's FD_CLOEXEC flag. Whatever target_fd referred to loses this reference (if it was the
// last one and the socket is in repair mode, it vanishes silently). If target_fd is not open
// (e.g. after close_silently()) that number is taken, with new_fd's FD_CLOEXEC -- racy in a
// multi-threaded process, prefer disconnect_silently(). `new_fd` stays open: close it after.
// -EINVAL if both are the same number or target_fd < 0, -EBADF if new_fd is not open.
int replace_fd(int target_fd, int new_fd);

// Copies the socket options an application typically sets from `from_fd` to `to_fd`:
// O_NONBLOCK, SO_KEEPALIVE (+ TCP_KEEPIDLE/INTVL/CNT), TCP_NODELAY, SO_SNDBUF/SO_RCVBUF,
// SO_LINGER, SO_RCVTIMEO/SO_SNDTIMEO, TCP_USER_TIMEOUT, SO_PRIORITY, IP_TOS / IPV6_TCLASS,
// TCP_CONGESTION, TCP_NOTSENT_LOWAT, SO_RCVLOWAT, SO_MARK. Call it before replace_fd().
// Only values that differ are written. The kernel does not reveal whether the application set
// SO_SNDBUF/SO_RCVBUF itself (SOCK_*BUF_LOCK) or the value came from autotuning: with
// kCopyBuffers (default) a differing value is copied, which pins that buffer size on the new
// socket (autotuning off for it). Pass flags without kCopyBuffers to leave buffers autotuned.
// Returns 0, or the -errno of the first option that could not be copied (the others are
// still attempted).
inline constexpr unsigned kCopyBuffers = 1u;
inline constexpr unsigned kCopyDefault = kCopyBuffers;
int copy_socket_options(int from_fd, int to_fd, unsigned flags = kCopyDefault);

}  // namespace vpipe::tcp
