/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * vpipe_core.h -- the guest side of vPipe, written once.
 *
 * The guest component exists in two forms -- vpipe.ko (/dev/vpipe, the Xen frontend) and the
 * userspace agent vpipe-guestd (the lab) -- and both compile these same C11 sources: what an
 * operation does, in which order, with which errors. Each form implements only the steps that
 * are bound to its OS in a small ops table (struct vpipe_core_ops): descriptors' types and
 * access modes, extents of a file, holds, flushes, destination blocks, freezing / restoring /
 * blocking a TCP connection, submitting a request and waiting for dom0's answer.
 *
 *   ring.c     the ring: slots, ids, posting, consuming untrusted responses
 *   area.c     the descriptor area's pages and where a request's bytes go in them
 *   link.c     posting one request: reserve pages, fill them, post (both transports)
 *   desc.c     descriptor streams: segments, file -> file requests, socket request layout
 *              (rooms, carried queues, head and tail), dom0's results
 *   op_file.c  file -> file: checks, holds, cache rule, stages of requests in flight
 *   op_sock.c  file -> socket, socket -> file, socket -> socket: one hand-over each
 *   watch.c    the engine must answer (request_timeout_ms): when to probe it with a NOP, when
 *              to declare it unresponsive; what is left of a request it did not answer
 *
 * The protocol is docs/protocol.md; its behaviour, checked against both forms, is the
 * conformance corpus in tests/conformance.
 */
#ifndef VPIPE_CORE_H
#define VPIPE_CORE_H

#include "compat.h"
#include "desc.h"
#include "link.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A caller's file or socket, opaque to the core: a struct file * in the kernel, a descriptor
 * (cast from intptr_t) in the agent. */
typedef void *vpipe_fh;

struct vpipe_range {
	uint64_t offset;
	uint64_t length;
};

/* destination preparation (docs/append.md): what finishing needs, what it cost */
struct vpipe_dprep {
	uint64_t old_size;
	uint64_t zero_filled;
	uint64_t write_zeroes;
	uint32_t paths;         /* VPIPE_PATH_ZERO_FILL / VPIPE_PATH_WRITE_ZEROES */
};

/* A connection frozen for a hand-over, as the OS's freeze captured it. */
struct vpipe_frozen {
	struct vpipe_tcp_state st;  /* sndq_len, rcvq_len, sndq_unsent as captured; carry 0 */
	uint8_t *sndq, *rcvq;       /* the OS's memory, valid until restore */
	int peer_fin;               /* the peer's FIN had arrived (restores read EOF after rcvq) */
	void *os;
};

/* How to restore a frozen connection: from dom0's final state, or from the frozen one. */
struct vpipe_restore {
	uint32_t flags;                     /* VPIPE_EPF_*: 0 restores the frozen state */
	const struct vpipe_tcp_state *st;   /* VALID: dom0's final state */
	const uint8_t *sndq, *rcvq;         /* VALID: st->sndq_len, st->rcvq_len bytes */
};

enum vpipe_counter {
	VPIPE_CNT_OFFLOADED,      /* bytes dom0 moved */
	VPIPE_CNT_GUEST_CACHE,    /* bytes the guest copied (cache rule, local paths) */
	VPIPE_CNT_ZERO_FILLED,
	VPIPE_CNT_WRITE_ZEROES,
	VPIPE_CNT_EXTENTS,        /* extents mapped */
	VPIPE_CNT_REQUESTS,       /* ring requests */
};

struct vpipe_core_ops {
	void *(*alloc)(void *env, size_t bytes);            /* NULL when out of memory */
	void (*free)(void *env, void *p);

	/* ---- files ---- */
	int (*file_regular)(void *env, vpipe_fh f);          /* 0, -EINVAL not a regular file, -EBADF */
	/* 0; -EBADF the access mode forbids the direction; -EINVAL an O_APPEND destination */
	int (*file_access)(void *env, vpipe_fh f, int write);
	int (*file_disk)(void *env, vpipe_fh f);             /* 0 on one of the VM's disks, else -ENXIO */
	int (*file_same)(void *env, vpipe_fh a, vpipe_fh b); /* 1 when both are one inode */
	int (*file_size)(void *env, vpipe_fh f, uint64_t *size);
	/* keeps the file's blocks and size still (refcounted per inode); a destination must not
	 * be immutable or append-only by itself (-EPERM) */
	int (*hold)(void *env, vpipe_fh f, int destination, void **hold);
	void (*unhold)(void *env, void *hold);
	/* the disk holds what the page cache holds for the range */
	int (*flush)(void *env, vpipe_fh f, uint64_t off, uint64_t len);
	/* [off, off + len) (inside the file) as segments of its virtual disk */
	int (*map)(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_extents *out);
	void (*unmap)(void *env, struct vpipe_extents *x);
	/* the paper's cache rule: clean cached runs worth serving from the guest */
	int (*cached_runs)(void *env, vpipe_fh f, uint64_t off, uint64_t len, uint64_t size,
			   struct vpipe_range *out, int max);
	/* the file -> socket cache rule (abi/ioctl.h VPIPE_CACHE_RULE_EIGHTHS): 1 when the range is
	 * clean and cached enough to be sent by the guest, else 0 */
	int (*range_cached)(void *env, vpipe_fh f, uint64_t off, uint64_t len);
	/* a guest copy of a cached range (the destination's hold lifted); *copied grows */
	int (*guest_copy)(void *env, vpipe_fh in, uint64_t in_off, vpipe_fh out, uint64_t out_off,
			  uint64_t len, uint64_t *copied);
	int (*sync)(void *env, vpipe_fh f);
	int (*dest_prepare)(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_dprep *p);
	int (*dest_finish)(void *env, vpipe_fh f, uint64_t off, uint64_t len, uint64_t written,
			   const struct vpipe_dprep *p);

	/* ---- sockets ---- */
	/* 0 (ESTABLISHED, or CLOSE_WAIT with *peer_fin), -EINVAL not TCP, -ENOTCONN, -EOPNOTSUPP
	 * (IPv6, loopback, ULP), -E<pending socket error> */
	int (*sock_check)(void *env, vpipe_fh s, int *peer_fin);
	/* block the 4-tuple in the guest, capture the connection with its queues, free the tuple
	 * without FIN/RST; the caller's descriptor stays open. On error the socket is as before. */
	int (*sock_freeze)(void *env, vpipe_fh s, struct vpipe_frozen *fz);
	/* a new socket for the caller from r (or the frozen state), the caller's options copied,
	 * the flow unblocked, the unsent bytes queued, a window probe: *new_fd (or -1). Always
	 * releases fz. VPIPE_EPF_RESET: a socket that reports ECONNRESET. */
	int (*sock_restore)(void *env, struct vpipe_frozen *fz, const struct vpipe_restore *r, int *new_fd);
	/* the next pass of an operation works on the restored socket new_fd */
	int (*sock_adopt)(void *env, vpipe_fh *s, int new_fd);
	/* a restored socket superseded by a later one before the caller saw it */
	void (*fd_close)(void *env, int fd);
	/* a source whose peer closed: what is queued is copied by the guest (file: written and
	 * made durable at out_off); *moved */
	int (*local_drain)(void *env, vpipe_fh src, vpipe_fh dst, int dst_is_file, uint64_t out_off,
			   uint64_t length, uint64_t *moved);

	/* ---- the ring ---- */
	int (*connected)(void *env);
	/* waits for pages and a slot; -EHOSTDOWN without an engine */
	int (*submit)(void *env, const struct vpipe_submit *s, void **ticket);
	/* dom0's answer: status, *moved <= length; *killed when the caller was killed meanwhile
	 * (the wait goes on: what the request names must live until dom0 answered) */
	int (*wait)(void *env, void *ticket, uint64_t *moved, int *killed);
	/* after wait: bytes of the request's area (dom0's results); -EIO if they are gone */
	int (*readback)(void *env, void *ticket, uint64_t off, void *buf, uint64_t len);
	void (*put)(void *env, void *ticket);

	void (*count)(void *env, enum vpipe_counter c, uint64_t n);
	int (*fatal_signal)(void *env);   /* 1: the caller is being killed */

	/* ---- socket -> file preparing while dom0 works (VPIPE_REQF_PREPARING) ----
	 * Optional: a component without them (NULL) readies the destination with dest_prepare
	 * before the hand-over. dest_allocate does what dest_prepare does except zero-filling:
	 * unwritten blocks stay unwritten (allocated, the size grown over the range);
	 * map_allocated maps such a range with unwritten extents named as data (holes stay zero);
	 * dest_fill zero-fills the unwritten blocks of a sub-range (p counts them); dest_commit
	 * makes the conversions durable and checks that no block of the range is left unwritten;
	 * publish stores a 64-bit word at `off` of a submitted request's area (release order). */
	int (*dest_allocate)(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_dprep *p);
	int (*map_allocated)(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_extents *out);
	int (*dest_fill)(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_dprep *p);
	int (*dest_commit)(void *env, vpipe_fh f, uint64_t off, uint64_t len);
	int (*publish)(void *env, void *ticket, uint64_t off, uint64_t value);
};

struct vpipe_core_cfg {
	uint32_t chunk_mib;       /* file -> file: MiB per ring request and per stage (1..1024) */
	uint32_t room_max;        /* largest carry room of a socket endpoint (bytes) */
	int cache_rule_f2f;       /* the paper's cache rule for file -> file (off by default) */
	int cache_rule_f2s;       /* file -> socket: a range wholly in the guest's page cache is
	                           * answered -EALREADY, the caller's classic path is cheaper */
	int prepare_ahead;        /* socket -> file: ready the destination while dom0 receives
	                           * (needs the optional ops dest_allocate ... publish) */
};

struct vpipe_core {
	const struct vpipe_core_ops *ops;
	void *env;
	struct vpipe_core_cfg cfg;
};

/* One application call (VPIPE_IOC_OP). */
struct vpipe_core_call {
	vpipe_fh in, out;
	struct vpipe_ioc_op *op;        /* in: op, offsets, length, flags, head/tail lengths;
	                                 * out: the result fields */
	const uint8_t *head, *tail;     /* op->head_len / op->tail_len bytes (kernel memory) */
	int new_in, new_out;            /* out: restored sockets for the caller, or -1 */
};

/* Runs one operation: 0 (op->moved may be short: EOF, FIN) or -errno, the errors of
 * docs/protocol.md section 1 in its order. */
int vpipe_core_op(const struct vpipe_core *c, struct vpipe_core_call *call);

/* the parts (op_file.c, op_sock.c) */
int vpipe_core_file_to_file(const struct vpipe_core *c, struct vpipe_core_call *call);
int vpipe_core_socket_op(const struct vpipe_core *c, struct vpipe_core_call *call);
/* maps and indexes [off, off + len) of a file (exactly that range, or -EIO); counts extents */
int vpipe_core_map(const struct vpipe_core *c, vpipe_fh f, uint64_t off, uint64_t len,
		   struct vpipe_extents *x);
/* the same with ops->map_allocated (a destination being prepared while dom0 works) */
int vpipe_core_map_allocated(const struct vpipe_core *c, vpipe_fh f, uint64_t off, uint64_t len,
			     struct vpipe_extents *x);
void vpipe_core_unmap(const struct vpipe_core *c, struct vpipe_extents *x);

/* socket -> file: destination blocks are prepared for at most this much per hand-over, so an
 * application asking for "everything until EOF" does not allocate its whole length first */
#define VPIPE_SOCK_FILE_WINDOW (1ull << 30)
/* a room the core gives socket endpoints unless configured otherwise */
#define VPIPE_ROOM_MAX_DEFAULT (2u << 20)

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_CORE_H */
