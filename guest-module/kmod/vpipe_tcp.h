/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_tcp.h -- TCP endpoints inside the guest kernel: check, freeze, restore.
 *
 * The kernel twin of the agent's socket_ops (guest-module/agent/socket_ops.cpp) and of
 * common/tcp (TCP_REPAIR). Per socket endpoint of an offload:
 *   check   a connected (ESTABLISHED/CLOSE_WAIT) IPv4 TCP socket, else an exact errno;
 *           nothing touched.
 *   freeze  wait (bounded) until the peer acknowledged what the application sent; block the
 *           4-tuple in the guest (netfilter hook: segments of a blocked flow are dropped, so
 *           the guest stack never answers them with RST); capture the connection into a
 *           struct vpipe_tcp_state (abi/ring.h, carry fields 0); take the socket's unread
 *           receive queue; free the tuple without FIN/RST (repair-mode disconnect). The
 *           application's descriptor stays open on the dead socket.
 *   restore build a new socket at dom0's final state (or at our own frozen state when dom0
 *           never took the connection over), queues included, copy the application's socket
 *           options, unblock, and install it as a new O_CLOEXEC descriptor of the calling
 *           process (libvpipe dup3()s it over the original, see abi/ioctl.h).
 *   release for a process that died with the operation in flight: unblock, drop everything.
 */
#ifndef VPIPE_KMOD_TCP_H
#define VPIPE_KMOD_TCP_H

#include <linux/types.h>
#include <linux/fs.h>
#include "vpipe/abi/ring.h"

struct vpipe_frozen_sock {
	struct file *file;          /* the application's socket file (a reference is held) */
	struct vpipe_tcp_state st;  /* state at freeze time (sndq_len = rcvq_len = 0) */
	void *unread;               /* receive queue the application had not read (kvmalloc) */
	u32 unread_len;
	bool blocked;               /* the tuple is in the block table */
	bool peer_fin;              /* the peer had closed its side before the freeze (CLOSE_WAIT:
	                             * st.rcv_seq counts the FIN; restore(NULL) gives EOF after
	                             * the unread bytes) */
	u8 app_reuse;               /* the application's SO_REUSEADDR (repair mode clobbers it) */
};

int vpipe_tcp_init(void);       /* registers the netfilter hook (every netns, pernet) */
void vpipe_tcp_exit(void);

/* The errnos of docs/protocol.md §2a: 0, or -EINVAL (not a TCP socket: not a socket, UDP,
 * unix, ...), -ENOTCONN (listening, unconnected, closing), -EOPNOTSUPP (IPv6 socket, a
 * loopback address: not on a vif, or a TCP ULP such as kTLS), -E<sk_err> (a pending error,
 * e.g. -ECONNRESET). ESTABLISHED and CLOSE_WAIT pass; *peer_fin is set for CLOSE_WAIT (the
 * peer already sent FIN): the protocol refuses such a destination (-EOPNOTSUPP, the caller's
 * decision) and drains such a source locally. Lock-free snapshot: freeze re-checks. */
int vpipe_tcp_check(struct file *f, bool *peer_fin);

/* Source sockets: receive up to max bytes the application has not read yet (non-blocking).
 * They are the first bytes of the stream; the caller delivers them itself (counted). */
ssize_t vpipe_tcp_take_unread(struct file *f, void *buf, size_t max);

/* Destination sockets: guest-side send of a short prefix (the source's unread bytes). */
int vpipe_tcp_send_all(struct file *f, const void *buf, size_t len);

/* freeze as described above; on error the socket is left usable as it was and fz is empty.
 * Errors: -EINVAL (not TCP), -EOPNOTSUPP (IPv6, ULP, urgent data pending), -ENOTCONN (not
 * ESTABLISHED/CLOSE_WAIT), -ETIMEDOUT (the peer did not acknowledge within 5 s), -EINTR
 * (fatal signal), -ENOMEM. Needs process context (sleeps, one expedited RCU grace period).
 * Loopback is not refused here (vpipe_tcp_check does). fz->peer_fin may be set even if
 * check said no FIN (it raced in): look at it after freeze. Another thread of the
 * application using the socket meanwhile gets -EINVAL/-EPERM (repair mode), then
 * -ENOTCONN/-ECONNABORTED (the dead socket) until the descriptor is replaced. */
int vpipe_tcp_freeze(struct file *f, struct vpipe_frozen_sock *fz);

/* Drops the first n bytes of fz->unread (the caller delivered them itself, e.g. a source's
 * unread bytes written to the destination). Before restore. */
void vpipe_tcp_drop_unread(struct vpipe_frozen_sock *fz, u32 n);

/* restore from `final` (dom0's state; NULL = our frozen state) with `carry` holding
 * final->sndq_len + final->rcvq_len bytes (send queue, then receive queue); the frozen
 * unread bytes are put back in front of the received ones. result_flags: VPIPE_EPF_*;
 * `final`/`carry` are used only with VPIPE_EPF_VALID (PEER_FIN: shutdown(SHUT_RD) after).
 * VPIPE_EPF_RESET: build a socket that reports ECONNRESET. Always unblocks and releases
 * fz; *new_fd is the installed descriptor or -1. */
int vpipe_tcp_restore(struct vpipe_frozen_sock *fz, const struct vpipe_tcp_state *final,
		      const u8 *carry, u32 result_flags, int *new_fd);

/* Errors of restore: -EINVAL (final not valid: other 4-tuple, bad options/mss, carry NULL),
 * -EADDRINUSE/-EADDRNOTAVAIL (the tuple is taken again), -ENOMEM, -EMFILE; then *new_fd is
 * -1 and the application's descriptor stays on the dead (unconnected) socket.
 * Must run in the application's process context (the descriptor is installed there). */

/* the process died: unblock and release without installing anything (no-op on an empty fz) */
void vpipe_tcp_release(struct vpipe_frozen_sock *fz);

/* introspection (metrics, tests): blocked 4-tuples now, segments dropped since load */
unsigned int vpipe_tcp_blocked(void);
u64 vpipe_tcp_dropped(void);

#endif
