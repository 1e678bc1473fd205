/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_tcp.h -- TCP endpoints inside the guest kernel: check, freeze, restore (the socket steps
 * of the guest core's ops table, guest-module/core/vpipe_core.h; the agent's twin is
 * guest-module/agent/sockets.cpp, both on TCP_REPAIR).
 *
 *   check   a connected (ESTABLISHED/CLOSE_WAIT) IPv4 TCP socket, else an exact errno;
 *           nothing touched.
 *   freeze  block the 4-tuple in the guest (vpipe_block.c: the peer's segments are held and
 *           re-injected at restore, the VM's own dropped, so the guest stack never answers
 *           them with RST), capture the connection
 *           into a struct vpipe_tcp_state WITH its queues -- the send queue (bytes the
 *           application wrote that the peer has not acknowledged, the never transmitted part
 *           marked) and the receive queue (bytes not read yet) -- and free the tuple without
 *           FIN/RST (repair-mode disconnect). Nothing waits for the peer. The application's
 *           descriptor stays open on the dead socket.
 *   restore build a new socket at dom0's final state (or at the frozen one when dom0 never
 *           took the connection over), queues included, copy the application's socket
 *           options, unblock, queue the never-transmitted bytes, and give it a file;
 *           vpipe_ops.c installs it as a new O_CLOEXEC descriptor of the calling process
 *           (libvpipe dup3()s it over the original, see abi/ioctl.h), or, for an
 *           asynchronous operation, of the process that reads its completion.
 *   release for a process that died with the operation in flight: unblock, drop everything.
 */
#ifndef VPIPE_KMOD_TCP_H
#define VPIPE_KMOD_TCP_H

#include <linux/fs.h>
#include <linux/types.h>

#include "vpipe_core.h"

struct vpipe_frozen_sock {
	struct file *file;          /* the application's socket file (a reference is held) */
	struct vpipe_tcp_state st;  /* state at freeze time, queue lengths included */
	u8 *sndq;                   /* st.sndq_len bytes (kvmalloc) */
	u8 *unread;                 /* st.rcvq_len bytes the application had not read (kvmalloc) */
	bool blocked;               /* the tuple is in the block table */
	bool peer_fin;              /* the peer had closed its side before the freeze (CLOSE_WAIT:
	                             * st.rcv_seq counts the FIN; a restore of the frozen state
	                             * gives EOF after the unread bytes) */
	u8 app_reuse;               /* the application's SO_REUSEADDR (repair mode clobbers it) */
};

int vpipe_tcp_init(void);       /* kernel credentials for TCP_REPAIR, the flow block */
void vpipe_tcp_exit(void);

/* 0, or -EINVAL (not a TCP socket: not a socket, UDP, unix, ...), -ENOTCONN (listening,
 * unconnected, closing), -EOPNOTSUPP (IPv6 socket, a loopback address: not on a vif, or a TCP
 * ULP such as kTLS), -E<sk_err> (a pending error, e.g. -ECONNRESET). ESTABLISHED and
 * CLOSE_WAIT pass; *peer_fin is set for CLOSE_WAIT. Lock-free snapshot: freeze re-checks. */
int vpipe_tcp_check(struct file *f, bool *peer_fin);

/* A source whose peer closed: receive up to max bytes the application has not read yet
 * (non-blocking). */
ssize_t vpipe_tcp_take_unread(struct file *f, void *buf, size_t max);

/* guest-side send (the local path of a source whose peer closed) */
int vpipe_tcp_send_all(struct file *f, const void *buf, size_t len);

/* freeze as described above; on error the socket is left usable as it was and fz is empty.
 * Errors: -EINVAL (not TCP), -EOPNOTSUPP (IPv6, ULP, urgent data pending), -ENOTCONN (not
 * ESTABLISHED/CLOSE_WAIT), -EIO (the queues could not be read consistently), -ENOMEM.
 * Needs process context (sleeps, one expedited RCU grace period). fz->peer_fin may be set
 * even if check said no FIN (it raced in). Another thread of the application using the socket
 * meanwhile gets -EINVAL/-EPERM (repair mode), then -ENOTCONN/-ECONNABORTED (the dead socket)
 * until the descriptor is replaced. */
int vpipe_tcp_freeze(struct file *f, struct vpipe_frozen_sock *fz);

/* restore from res (VPIPE_EPF_VALID: dom0's final state and queues, already checked against
 * the frozen state by the core; 0: the frozen state; VPIPE_EPF_RESET: a socket that reports
 * ECONNRESET). Always unblocks and releases fz; *new_file is the new socket's file (a
 * reference the caller owns) or NULL.
 * Errors: -EINVAL, -EADDRINUSE/-EADDRNOTAVAIL (the tuple is taken again), -ENOMEM, -ENFILE;
 * then the application's descriptor stays on the dead (unconnected) socket. */
int vpipe_tcp_restore(struct vpipe_frozen_sock *fz, const struct vpipe_restore *res,
		      struct file **new_file);

/* the process died: unblock and release without installing anything (no-op on an empty fz) */
void vpipe_tcp_release(struct vpipe_frozen_sock *fz);
void vpipe_tcp_free_queues(struct vpipe_frozen_sock *fz);

#endif
