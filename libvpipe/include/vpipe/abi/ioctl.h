/* SPDX-License-Identifier: MIT */
/*
 * vpipe/abi/ioctl.h -- the application <-> guest component ABI of vPipe.
 *
 * The guest component comes in two interchangeable forms that speak this ABI:
 *   - the kernel module: ioctl(2) on /dev/vpipe with these structures;
 *   - the userspace guest agent (vpipe-guestd): the same structures in messages on a unix
 *     socket (struct vpipe_agent_msg), with the file descriptors passed as SCM_RIGHTS.
 * libvpipe hides which one it talks to.
 *
 * File descriptors in these structures are the CALLER's descriptor numbers. Over the agent
 * socket the descriptors named by an operation travel as SCM_RIGHTS in the order in_fd, out_fd.
 */
#ifndef VPIPE_ABI_IOCTL_H
#define VPIPE_ABI_IOCTL_H

#ifdef __KERNEL__
#include <linux/ioctl.h>
#include <linux/types.h>
#else
#include <stdint.h>
#include <sys/ioctl.h>
#endif

/* struct vpipe_ioc_op.op: the four pipe types (same numbers as enum vpipe_op) */
#define VPIPE_IOC_FILE_TO_FILE 1
#define VPIPE_IOC_FILE_TO_SOCKET 2
#define VPIPE_IOC_SOCKET_TO_FILE 3
#define VPIPE_IOC_SOCKET_TO_SOCKET 4

/* struct vpipe_ioc_op.flags */
#define VPIPE_OPF_NO_CACHE_RULE 0x1 /* never serve from the guest page cache (always offload) */

/* The file -> socket cache rule: a range with nothing dirty and at least this many eighths of
 * its pages in the guest's page cache is sent by the guest (EALREADY). Not all of them: an
 * offloaded read never fills the guest's cache, so a hot file that lost a few pages to reclaim
 * would otherwise stay on the offload path for good; the guest's own sendfile reads them back. */
#define VPIPE_CACHE_RULE_EIGHTHS 7

/* how (part of) an operation was carried out: bits of struct vpipe_ioc_op.paths */
#define VPIPE_PATH_OFFLOAD 0x1      /* dom0 moved bytes (the vPipe path) */
#define VPIPE_PATH_GUEST_CACHE 0x2  /* the guest copied a range its page cache held (paper 3.2) */
#define VPIPE_PATH_ZERO_FILL 0x4    /* destination blocks allocated by writing zeros in the guest */
#define VPIPE_PATH_WRITE_ZEROES 0x8 /* destination blocks allocated with FALLOC_FL_WRITE_ZEROES */

/* handle-less calls pass handle = VPIPE_NO_HANDLE and the descriptors directly */
#define VPIPE_NO_HANDLE (-1)

/* a head or a tail (struct vpipe_ioc_op.head_len / tail_len) is at most this long */
#define VPIPE_HDTR_MAX 65536u

struct vpipe_ioc_create {
	int32_t in_fd;
	int32_t out_fd;
	int32_t handle;   /* out: >= 0 */
	uint32_t flags;   /* must be 0 */
};

struct vpipe_ioc_op {
	/* in */
	uint32_t op;            /* VPIPE_IOC_* */
	int32_t handle;         /* from VPIPE_IOC_CREATE, or VPIPE_NO_HANDLE */
	int32_t in_fd;          /* with VPIPE_NO_HANDLE */
	int32_t out_fd;
	uint64_t in_offset;     /* file source: offset to read from */
	uint64_t out_offset;    /* file destination: offset to write at */
	uint64_t length;        /* bytes to move */
	uint32_t flags;         /* VPIPE_OPF_* */
	uint32_t reserved0;     /* must be 0 */
	/* socket destinations (file -> socket, socket -> socket): bytes that go out on the
	 * destination connection before the data (head, e.g. an HTTP response head) and after it
	 * (tail), in the same hand-over (BSD sendfile's hdtr). Module: user pointers; agent: 0,
	 * the bytes follow the structure in the message (head, then tail). */
	uint64_t head;
	uint64_t tail;
	uint32_t head_len;      /* <= VPIPE_HDTR_MAX */
	uint32_t tail_len;      /* <= VPIPE_HDTR_MAX; the tail goes out only if all data moved */
	/* out */
	uint64_t hdtr_moved;     /* head and tail bytes written to the destination connection */
	uint64_t moved;          /* bytes moved (also the return value) */
	uint64_t offloaded;      /* of which dom0 moved */
	uint64_t guest_copied;   /* of which the guest moved (cache rule) */
	uint64_t zero_filled;    /* bytes of zeros the guest wrote to allocate destination blocks */
	uint32_t paths;          /* VPIPE_PATH_* bits */
	uint32_t requests;       /* ring requests used */
	/* socket results (socket endpoints): a restored socket replaces the caller's descriptor */
	/* agent: index of the SCM_RIGHTS fd that replaces in_fd, or -1;
	 * module: a descriptor (O_CLOEXEC) the module installed in the caller's table, or -1.
	 * Either way libvpipe dup3()s it over in_fd and closes it. */
	int32_t new_in_fd;
	int32_t new_out_fd;      /* likewise for out_fd */
};

/* per guest-component counters since it started */
struct vpipe_ioc_stats {
	uint64_t ops[5];              /* indexed by VPIPE_IOC_*; [0] unused */
	uint64_t ops_failed;
	uint64_t bytes_offloaded;
	uint64_t bytes_guest_cache;
	uint64_t bytes_zero_filled;
	uint64_t bytes_write_zeroes;
	uint64_t ring_requests;
	uint64_t extents_mapped;
	uint64_t handles_open;
	uint64_t engine_connected;    /* 1 when the ring to dom0 is up */
	uint64_t engine_timeouts;     /* times the engine was declared unresponsive (vpipe.ko's or
	                               * vpipe-guestd's request_timeout_ms; the channel was torn down,
	                               * requests in flight failed) */
	uint64_t reserved[5];
};

#define VPIPE_IOC_MAGIC 'V'
#define VPIPE_IOC_CREATE _IOWR(VPIPE_IOC_MAGIC, 1, struct vpipe_ioc_create)
#define VPIPE_IOC_DESTROY _IOW(VPIPE_IOC_MAGIC, 2, int32_t)
#define VPIPE_IOC_OP _IOWR(VPIPE_IOC_MAGIC, 3, struct vpipe_ioc_op)
#define VPIPE_IOC_STATS _IOR(VPIPE_IOC_MAGIC, 4, struct vpipe_ioc_stats)

/*
 * Asynchronous operations (vpipe_submit_* in vpipe.h). An operation is submitted with a tag of
 * the caller's, accepted or refused at once, and completes later with a completion record that
 * names the tag. Only the checks that need no descriptor work are made at submit time (the
 * structure's reserved fields, flags, handle, the descriptors' presence); everything else
 * (docs/protocol.md section 1) comes back in the completion, with the sockets untouched when a
 * check failed. A cancel asks the component to stop the operation at its next safe point: not
 * started yet (0 bytes, sockets untouched), between the stages of a file -> file copy, while a
 * socket -> file destination is still being readied (dom0 stops taking bytes, the connection
 * comes back at the first byte it did not take), between windows of a socket -> file. The
 * completion's result is then -ECANCELED with op.moved the bytes moved before; an operation that
 * was past every safe point completes normally.
 */
struct vpipe_ioc_submit {
	uint64_t tag;               /* the caller's, echoed in the completion */
	struct vpipe_ioc_op op;     /* as for VPIPE_IOC_OP */
};

struct vpipe_ioc_completion {
	uint64_t tag;
	int32_t result;             /* 0 (op.moved may be short) or -errno; -ECANCELED: cancelled */
	uint32_t reserved;
	struct vpipe_ioc_op op;     /* the result fields, new_in_fd / new_out_fd as for VPIPE_IOC_OP */
};

/* at most this many operations in flight per agent connection / per open of /dev/vpipe */
#define VPIPE_ASYNC_MAX 1024u

/* Module: each open of /dev/vpipe is a queue. SUBMIT makes VPIPE_IOC_OP's checks that need no
 * descriptor work (-EINVAL, -EBADF, -EFAULT as there), copies the structure, head and tail,
 * references the descriptors' files and the caller's credentials, queues the operation to the
 * module's workqueue and returns at once (-EAGAIN: VPIPE_ASYNC_MAX in flight or unread on this
 * open; -EEXIST: the tag is in flight). poll() reports POLLIN while completions are waiting;
 * read() returns whole struct vpipe_ioc_completion records (a buffer shorter than one: EINVAL;
 * none waiting: EAGAIN with O_NONBLOCK, else it blocks) and installs the restored sockets as new
 * O_CLOEXEC descriptors of the reader (op.new_in_fd / new_out_fd; a reader without a free
 * descriptor gets result -EMFILE and that connection is closed). CANCEL takes the tag: 0, or
 * -ENOENT when no such operation is in flight. Closing the open cancels what is in flight and
 * drops unread completions (their restored sockets are closed). */
#define VPIPE_IOC_SUBMIT _IOW(VPIPE_IOC_MAGIC, 5, struct vpipe_ioc_submit)
#define VPIPE_IOC_CANCEL _IOW(VPIPE_IOC_MAGIC, 6, uint64_t)

/*
 * Agent framing of asynchronous operations, on the connection that submits them (libvpipe keeps
 * one per queue):
 *   VPIPE_AGENT_SUBMIT   request: struct vpipe_ioc_submit + head + tail, the two descriptors as
 *                        SCM_RIGHTS (in, out). Reply at once: header only, result 0 (accepted)
 *                        or -errno (refused: -EAGAIN when VPIPE_ASYNC_MAX are in flight,
 *                        -EEXIST for a tag in flight, -EINVAL/-EBADF as for VPIPE_IOC_OP).
 *   VPIPE_AGENT_CANCEL   request: uint64_t tag. Reply: header only, result 0 or -ENOENT.
 *   VPIPE_AGENT_COMPLETE unsolicited, agent -> caller, once per accepted operation: header
 *                        (result = the operation's) + struct vpipe_ioc_completion, restored
 *                        sockets as SCM_RIGHTS (new_in_fd / new_out_fd are their indexes).
 * Replies come in the order of the requests; completions may come between them.
 */
#define VPIPE_AGENT_SUBMIT 0x5601u
#define VPIPE_AGENT_CANCEL 0x5602u
#define VPIPE_AGENT_COMPLETE 0x5603u

/*
 * Agent socket framing. Request: header + the ioctl's structure (+ SCM_RIGHTS) (+ for
 * VPIPE_IOC_OP the head and tail bytes: length = sizeof(struct vpipe_ioc_op) + head_len +
 * tail_len). Reply: header with result (0 or -errno) + the structure as updated (+ SCM_RIGHTS
 * of restored sockets).
 */
#define VPIPE_AGENT_MAGIC 0x47415056u /* "VPAG" */

struct vpipe_agent_msg {
	uint32_t magic;     /* VPIPE_AGENT_MAGIC */
	uint32_t cmd;       /* VPIPE_IOC_* request number */
	int32_t result;     /* reply: 0 or -errno */
	uint32_t length;    /* bytes of payload that follow */
};

#endif /* VPIPE_ABI_IOCTL_H */
