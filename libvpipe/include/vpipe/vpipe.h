/* SPDX-License-Identifier: MIT */
/*
 * vpipe.h -- libvpipe, the application API of vPipe (SoCC'14, Table 1).
 *
 * vPipe moves bytes between a VM's files and TCP sockets without the bytes entering the VM:
 * the guest component turns descriptors into disk extents and TCP state, and the driver
 * domain (dom0) moves the data.
 *
 *   int h = vpipe_create(file_fd, sock_fd);
 *   ssize_t n = vpipe_file_to_socket(h, offset, length);   // blocking, like sendfile()
 *   vpipe_destroy(h);
 *
 * or without a handle: vpipe_file_to_socket_fd(file_fd, sock_fd, offset, length).
 *
 * Conventions
 *   - Every call is thread safe and blocking (also on non-blocking descriptors), except the
 *     queue calls at the end (vpipe_submit_*, vpipe_reap, vpipe_cancel): the non-blocking form,
 *     whose fallback copies run on the queue's worker threads. A blocking call's fallback runs
 *     on the caller's thread.
 *   - Errors: -1 with errno set. Operations return the number of bytes moved; a short count
 *     means the source ended (EOF) or the peer went away after some bytes moved; the next call
 *     then reports the error.
 *   - Fallback: when vPipe cannot offload (no guest component or engine, a file that is not on
 *     a VM disk), libvpipe moves the bytes itself the classic way, counts it (vpipe_get_stats)
 *     and records why (vpipe_last_result). Set VPIPE_NO_FALLBACK=1 in the environment, or call
 *     vpipe_set_fallback(0), to get an error instead (errno ENOTSUP / EHOSTDOWN / ENXIO).
 *   - Threshold: an operation shorter than the break-even size takes the classic path by itself
 *     (a hand-over costs a fixed time that a small transfer does not win back), reported like a
 *     fallback with the reason "below the offload threshold". The size comes from
 *     $VPIPE_MIN_OFFLOAD (bytes; K/M/G suffixes), else `min_offload` in /etc/vpipe/vpipe.conf
 *     (or $VPIPE_CONFIG), else the default below; 0 offloads everything. With fallbacks off
 *     (VPIPE_NO_FALLBACK=1, vpipe_set_fallback(0)) every operation is offloaded.
 *   - Cache rule (file -> socket; the paper's section 3.2): a range the guest holds wholly and
 *     clean in its page cache is sent by the guest's own sendfile (no hand-over, no disk read in
 *     dom0), reported like a fallback with the reason "the range is in the guest's page cache"
 *     and VPIPE_PATH_GUEST_CACHE, counted in ops_guest_cache. Off with fallbacks off.
 *   - Locating the guest component: /dev/vpipe if present, else the agent socket named by
 *     $VPIPE_AGENT_SOCKET, else /run/vpipe/agent.sock.
 */
#ifndef VPIPE_VPIPE_H
#define VPIPE_VPIPE_H

#include <stdint.h>
#include <sys/types.h>

#define VPIPE_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* ---- handles (Table 1) -------------------------------------------------------------------- */

/* Registers a (source, destination) pair. Returns a handle >= 0, or -1 (errno: EBADF if a
 * descriptor is not open, EINVAL if a descriptor is neither a regular file nor a TCP socket). */
VPIPE_API int vpipe_create(int in_fd, int out_fd);

/* Releases a handle. 0, or -1 with errno EBADF for an unknown handle. */
VPIPE_API int vpipe_destroy(int handle);

/* file -> socket: `length` bytes of the file from `offset` to the socket. */
VPIPE_API ssize_t vpipe_file_to_socket(int handle, off_t offset, size_t length);
/* socket -> file: `length` bytes from the socket into the file at `offset`. */
VPIPE_API ssize_t vpipe_socket_to_file(int handle, off_t offset, size_t length);
/* socket -> socket: `length` bytes from one connection to the other. */
VPIPE_API ssize_t vpipe_socket_to_socket(int handle, size_t length);
/* file -> file: `length` bytes of the source from `in_offset` to the destination at
 * `out_offset`. Copying past the source's end moves what exists (short count). Writing past
 * the destination's end extends it. */
VPIPE_API ssize_t vpipe_file_to_file(int handle, off_t in_offset, size_t length, off_t out_offset);

/* ---- handle-less variants ------------------------------------------------------------------ */

VPIPE_API ssize_t vpipe_file_to_socket_fd(int file_fd, int sock_fd, off_t offset, size_t length);
VPIPE_API ssize_t vpipe_socket_to_file_fd(int sock_fd, int file_fd, off_t offset, size_t length);
VPIPE_API ssize_t vpipe_socket_to_socket_fd(int in_fd, int out_fd, size_t length);
VPIPE_API ssize_t vpipe_file_to_file_fd(int in_fd, int out_fd, off_t in_offset, size_t length,
                              off_t out_offset);

/* ---- a head and a tail with the data (BSD sendfile's hdtr) ---------------------------------
 *
 * An HTTP response is a head, a body and perhaps a trailer. Sending the head with send() before
 * the offload would leave bytes the peer has not acknowledged yet in the socket; handing them
 * over with the connection works, but giving them to the operation lets the whole response leave
 * in one hand-over, the head first. Heads and tails are at most 64 KiB each (VPIPE_HDTR_MAX);
 * the tail goes out only when all `length` bytes moved.
 * These calls return the bytes written to the destination: head + data + tail (like BSD's
 * sbytes); vpipe_last_result() tells the data bytes (moved) and hdtr_moved apart.
 */
struct iovec;
struct vpipe_hdtr {
	const struct iovec *headers;
	int hdr_cnt;
	const struct iovec *trailers;
	int trl_cnt;
};

VPIPE_API ssize_t vpipe_file_to_socket_hdtr(int handle, off_t offset, size_t length,
                                            const struct vpipe_hdtr *hdtr);
VPIPE_API ssize_t vpipe_socket_to_socket_hdtr(int handle, size_t length, const struct vpipe_hdtr *hdtr);
VPIPE_API ssize_t vpipe_file_to_socket_fd_hdtr(int file_fd, int sock_fd, off_t offset, size_t length,
                                               const struct vpipe_hdtr *hdtr);
VPIPE_API ssize_t vpipe_socket_to_socket_fd_hdtr(int in_fd, int out_fd, size_t length,
                                                 const struct vpipe_hdtr *hdtr);

/* ---- how the last call on this thread went --------------------------------------------- */

enum vpipe_path {
	VPIPE_RESULT_OFFLOADED = 1,   /* dom0 moved the bytes (possibly with parts from the cache) */
	VPIPE_RESULT_FALLBACK = 2,    /* libvpipe moved the bytes in the guest: see reason */
	VPIPE_RESULT_FAILED = 3
};

struct vpipe_result {
	int path;                     /* enum vpipe_path */
	int error;                    /* errno of the failure or of the offload that fell back */
	const char *reason;           /* static text: why it fell back / failed, "" when offloaded */
	uint64_t moved;
	uint64_t offloaded;           /* bytes dom0 moved */
	uint64_t guest_copied;        /* bytes the guest moved (cache rule or fallback) */
	uint64_t zero_filled;         /* zeros the guest wrote to allocate destination blocks */
	uint32_t requests;            /* ring requests used */
	uint32_t paths;               /* VPIPE_PATH_* bits (vpipe/abi/ioctl.h): how the bytes moved */
	uint64_t hdtr_moved;          /* head and tail bytes written (the _hdtr calls) */
};

/* Fills *out with the outcome of this thread's last operation. 0, or -1 (EINVAL on NULL). */
VPIPE_API int vpipe_last_result(struct vpipe_result *out);

/* ---- library-wide control and counters ---------------------------------------------------- */

/* 1: fall back to a guest copy when offload is impossible (default unless VPIPE_NO_FALLBACK);
 * 0: fail instead. Returns the previous setting. */
VPIPE_API int vpipe_set_fallback(int enabled);

/* The offload threshold in bytes (see Threshold above): the current one, or set it (returns the
 * previous one). */
#define VPIPE_MIN_OFFLOAD_DEFAULT (256u * 1024u)
VPIPE_API uint64_t vpipe_min_offload(void);
VPIPE_API uint64_t vpipe_set_min_offload(uint64_t bytes);

struct vpipe_stats {
	uint64_t ops;                 /* operations called in this process */
	uint64_t ops_offloaded;
	uint64_t ops_fallback;
	uint64_t ops_failed;
	uint64_t ops_below_threshold; /* of ops_fallback: shorter than the offload threshold */
	uint64_t bytes_offloaded;
	uint64_t bytes_guest;         /* moved by the guest: fallback + cache rule */
	uint64_t bytes_zero_filled;
	uint64_t ops_guest_cache;     /* of ops_fallback: file -> socket ranges the guest held in its
	                               * page cache (the cache rule: its own sendfile is cheaper) */
};

/* Counters of this process since it loaded libvpipe. 0, or -1 (EINVAL on NULL). */
VPIPE_API int vpipe_get_stats(struct vpipe_stats *out);

/* ---- the non-blocking form: queues, submit, reap, cancel ------------------------------------
 *
 * For event loops (lighttpd, nginx, Pound): an operation is submitted and the call returns at
 * once; its completion is reaped later from the queue, whose descriptor (vpipe_queue_fd) is
 * readable -- poll/epoll/select -- while completions are waiting.
 *
 *   int q = vpipe_queue_create(0, 0);
 *   epoll_ctl(ep, EPOLL_CTL_ADD, vpipe_queue_fd(q), &(struct epoll_event){EPOLLIN, {.u64 = TAG}});
 *   epoll_ctl(ep, EPOLL_CTL_DEL, sock, NULL);           // the socket is the operation's now
 *   vpipe_submit_file_to_socket(q, file, sock, off, len, conn_ptr);
 *   ... on EPOLLIN of the queue:
 *   struct vpipe_completion c[16];
 *   int n = vpipe_reap(q, c, 16);                        // c[i].res: bytes, or -errno
 *   ... epoll_ctl(ep, EPOLL_CTL_ADD, sock, ...) again: the descriptor number is the same, the
 *       socket behind it is the connection restored after the offload
 *
 * Rules
 *   - A submit checks its arguments like the blocking call (same errno: EBADF, EINVAL, ...) and
 *     returns -1 with no completion when they are wrong. Otherwise it returns 0 and exactly one
 *     completion follows, with res = what the blocking call would have returned (bytes; for the
 *     _hdtr forms head + data + tail) or -errno, and result = what vpipe_last_result() would
 *     have said (path, fallback reason, offloaded bytes). Threshold, cache rule, fallback and the
 *     counters of vpipe_get_stats() apply as for the blocking calls.
 *   - Fallbacks run off the caller's thread: the classic copy of an operation that is not
 *     offloaded (threshold, cache rule, no component, or a completion saying the offload is
 *     impossible here) goes to the queue's own worker threads (created on demand, at most 8 per
 *     queue copying at once, more wait their turn; they block all signals). The submit, or the
 *     reap that learns it, returns at once; the copy's completion comes like an offload's, with
 *     path VPIPE_RESULT_FALLBACK and the reason. While it copies, the worker puts the sockets of
 *     the operation in O_NONBLOCK mode and restores their file status flags afterwards.
 *   - EAGAIN: the queue holds `depth` operations in flight or unreaped completions.
 *   - EBUSY: a descriptor of the operation is in another operation's hands (any queue, or a
 *     blocking call of another thread): a socket or a destination file belongs to one
 *     operation at a time; a source file may feed several. The blocking calls refuse such a
 *     descriptor with EBUSY too.
 *   - While an operation is in flight its sockets belong to the guest component: do not read,
 *     write or poll them. Once the connection is handed over (frozen), the application's socket
 *     is an unconnected TCP socket: read()/recv() fail with ENOTCONN, write()/send() with EPIPE
 *     (and SIGPIPE without MSG_NOSIGNAL), poll reports POLLHUP -- so take it out of epoll before
 *     submitting. libvpipe's own calls refuse it with EBUSY. After the completion the number is
 *     the restored connection, at the right byte, also after an error or a cancel.
 *   - vpipe_cancel asks the operation to stop at its next safe point; the completion then has
 *     res = -ECANCELED and result.moved the bytes moved before (exact: the destination holds
 *     exactly that prefix, a socket continues right after it). An operation past its last safe
 *     point (e.g. a file -> socket once dom0 sends) completes normally. A fallback copy stops
 *     at its next chunk boundary (at most 4 MiB) or while it waits for a socket, with the same
 *     contract (result.guest_copied = result.moved); one that finished copying completes
 *     normally.
 *   - A queue is used by one thread at a time (calls on one queue are serialised).
 */
struct vpipe_completion {
	uint64_t user_data;           /* as given to the submit */
	int64_t res;                  /* bytes moved, or -errno (-ECANCELED: cancelled) */
	struct vpipe_result result;   /* how it went (vpipe_last_result's structure) */
};

#define VPIPE_QUEUE_DEPTH_DEFAULT 64u

/* A queue for up to `depth` operations (0: VPIPE_QUEUE_DEPTH_DEFAULT; at most 1024). `flags`
 * must be 0. Returns a queue id >= 0, or -1 (EINVAL, EMFILE, ENOMEM). */
VPIPE_API int vpipe_queue_create(unsigned depth, unsigned flags);
/* The queue's completion descriptor (readable while completions wait; do not read it). */
VPIPE_API int vpipe_queue_fd(int queue);
/* Cancels what is in flight, waits for those completions (sockets are restored; fallback copies
 * stop at their next chunk boundary and the queue's workers are joined) and frees the queue;
 * unreaped completions are dropped. The application's descriptors are never closed. 0, or -1
 * (EBADF). */
VPIPE_API int vpipe_queue_destroy(int queue);

VPIPE_API int vpipe_submit_file_to_socket(int queue, int file_fd, int sock_fd, off_t offset, size_t length,
                                          uint64_t user_data);
VPIPE_API int vpipe_submit_socket_to_file(int queue, int sock_fd, int file_fd, off_t offset, size_t length,
                                          uint64_t user_data);
VPIPE_API int vpipe_submit_socket_to_socket(int queue, int in_fd, int out_fd, size_t length, uint64_t user_data);
VPIPE_API int vpipe_submit_file_to_file(int queue, int in_fd, int out_fd, off_t in_offset, size_t length,
                                        off_t out_offset, uint64_t user_data);
VPIPE_API int vpipe_submit_file_to_socket_hdtr(int queue, int file_fd, int sock_fd, off_t offset, size_t length,
                                               const struct vpipe_hdtr *hdtr, uint64_t user_data);
VPIPE_API int vpipe_submit_socket_to_socket_hdtr(int queue, int in_fd, int out_fd, size_t length,
                                                 const struct vpipe_hdtr *hdtr, uint64_t user_data);

/* Moves up to `max` completions into out[]; never blocks. The number (0: none yet), or -1
 * (EBADF unknown queue, EINVAL out NULL with max > 0). */
VPIPE_API int vpipe_reap(int queue, struct vpipe_completion *out, unsigned max);

/* Asks the in-flight operation submitted with `user_data` to stop (the first one, if several
 * share it). 0: asked (its completion tells how it ended), or -1: ENOENT none in flight,
 * EALREADY its completion is waiting to be reaped, EBADF unknown queue. */
VPIPE_API int vpipe_cancel(int queue, uint64_t user_data);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_VPIPE_H */
