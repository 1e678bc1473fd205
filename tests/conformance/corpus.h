/* SPDX-License-Identifier: MIT */
/*
 * corpus.h -- the conformance corpus of the guest component: one table of cases, run against
 * both forms of the component -- the agent (vpipe-guestd, through libvpipe, in a network
 * namespace with a loop-mounted ext4 disk: tests/conformance/test_conformance.cpp) and the
 * kernel module (vpipe.ko in a QEMU guest: tests/kmod/kmod_probe.c, mode "conformance") --
 * behind a scripted engine that validates every request with the protocol's one validator
 * (common/protocol/check.c) and answers as the case says, including answers that break the
 * protocol. A behaviour difference between the two components is a failing case.
 *
 * A case: the operation, its endpoints (kinds and modes), the source file's layout, offsets and
 * lengths, a head and a tail, the engine's answer -> the errno, the bytes moved, the path bits,
 * the requests posted, what the request said (its descriptor checked field by field against the
 * files' FIEMAP and the sockets' addresses and queues), and what holds afterwards (the
 * destination's size and bytes, the sockets still usable, queued bytes not lost).
 *
 * C11, userspace; the harnesses provide the environment (struct vc_env).
 */
#ifndef VPIPE_CONFORMANCE_CORPUS_H
#define VPIPE_CONFORMANCE_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include <vpipe/abi/ioctl.h>
#include <vpipe/abi/ring.h>

#ifdef __cplusplus
extern "C" {
#endif

/* endpoints */
enum vc_ep {
	VC_NOEP = 0,
	VC_FILE,          /* regular file on the VM disk: source O_RDONLY, destination O_RDWR */
	VC_FILE_WRONLY,   /* a source opened O_WRONLY */
	VC_FILE_RDONLY,   /* a destination opened O_RDONLY */
	VC_FILE_APPEND,   /* a destination opened O_RDWR | O_APPEND */
	VC_FILE_OFFDISK,  /* a file on a filesystem that is not the VM disk (tmpfs) */
	VC_FILE_SAME,     /* the destination is the source file (O_RDWR) */
	VC_SOCK,          /* a connected TCP socket on the VM's address */
	VC_SOCK_LOOP,     /* a connected TCP socket on loopback */
	VC_SOCK_UDP,      /* a UDP socket */
	VC_SOCK_LISTEN,   /* a listening TCP socket */
	VC_SOCK_UNCONN,   /* a TCP socket never connected */
	VC_SOCK_PEER_FIN, /* connected, the peer has shut down its sending side */
	VC_DIR,           /* a directory */
};

/* the source file's layout */
enum vc_layout {
	VC_DENSE = 0,     /* written bytes */
	VC_SPARSE,        /* written blocks with holes between them */
	VC_UNWRITTEN,     /* written blocks and a fallocated (unwritten) stretch */
	VC_FRAG,          /* many small extents (written interleaved with another file) */
};

/* the scripted engine's answer to each request of the case */
enum vc_ans {
	VC_ANS_OK = 0,        /* file -> file: copies, status 0; sockets: ECHO */
	VC_ANS_STATUS,        /* status -err (no socket result) */
	VC_ANS_SHORT,         /* file -> file: copies `moved` bytes, status -EIO */
	VC_ANS_BOGUS_STATUS,  /* status +5: not a status of the protocol */
	VC_ANS_BOGUS_MOVED,   /* status 0, moved = 2 * length + 1 */
	VC_ANS_BOGUS_ID,      /* a response with an id nobody asked for */
	VC_ANS_BOGUS_PROD,    /* rsp_prod beyond the requests posted */
	VC_ANS_ECHO,          /* sockets: VALID, the final state = the request's, queues back;
	                       * status 0, moved = `moved` */
	VC_ANS_RESET,         /* sockets: VPIPE_EPF_RESET on every socket endpoint, -ECONNRESET */
	VC_ANS_BAD_TUPLE,     /* sockets: VALID with another remote port */
	VC_ANS_BIG_QUEUES,    /* sockets: VALID with queues longer than the room */
	VC_ANS_DOWN,          /* no engine: the channel is down before the call */
	VC_ANS_TAKEN_LOST,    /* sockets: VPIPE_EPF_TAKEN left on every socket endpoint, then the
	                       * channel breaks (a forged id): dom0 died holding the connections */
	VC_ANS_VALID_LOST,    /* sockets: VALID (the request's state) with `moved` recorded in the
	                       * endpoint (VPIPE_EP_RESULT_MOVED), then the channel breaks: dom0 died
	                       * after the hand-back, before its response */
};

struct vc_script {
	int ans;
	int err;          /* VC_ANS_STATUS */
	uint64_t moved;   /* VC_ANS_SHORT, VC_ANS_ECHO */
};

/* post-conditions */
#define VC_POST_FILE_EXACT 0x01   /* the destination holds the source's bytes where written */
#define VC_POST_SOCK_USABLE 0x02  /* every socket endpoint still carries bytes both ways */
#define VC_POST_UNREAD_BACK 0x04  /* a socket's unread bytes are still readable, byte-exact */
#define VC_POST_HEAD_ONCE 0x08    /* the destination's peer receives the head exactly once */
#define VC_POST_RESET 0x10        /* the destination socket reports the connection dead */
#define VC_POST_DST_UNTOUCHED 0x20 /* the destination file's size and bytes did not change */

#define VC_ANY UINT64_MAX

struct vc_case {
	const char *name;
	uint32_t op;              /* VPIPE_IOC_* */
	int src, dst;             /* enum vc_ep */
	int layout;               /* enum vc_layout (file sources) */
	uint64_t src_size;        /* file sources */
	uint64_t dst_size;        /* file destinations: existing bytes (0: a new file) */
	uint64_t in_off, out_off, length;
	uint32_t flags;           /* VPIPE_OPF_* */
	uint32_t head_len, tail_len;
	uint32_t unread;          /* bytes the VM end of a socket has received and not read */
	struct vc_script script;
	/* expected */
	int err;                  /* 0 or errno */
	uint64_t moved;           /* VC_ANY: not checked */
	uint32_t paths;
	int requests;             /* ring requests the engine received */
	uint64_t guest;           /* bytes the guest copied */
	uint64_t hdtr;            /* head + tail bytes reported written */
	int64_t dst_size_after;   /* -1: not checked */
	uint32_t post;            /* VC_POST_* */
};

extern const struct vc_case vc_corpus[];
extern const size_t vc_corpus_len;

/* One request as the scripted engine received it (its private copy) and judged it. */
struct vc_req {
	struct vpipe_request ring;            /* the ring entry */
	int verdict;                          /* the validator's: 0 or -errno */
	struct vpipe_desc_header h;
	struct vpipe_segment *segs;           /* h.nr_segments */
	uint8_t *carry[2][3];                 /* [src/dst][sndq, rcvq, tail] */
	uint32_t carry_len[2][3];
};

struct vc_env {
	void *ctx;
	const char *dir;          /* a directory on the VM disk (ext4) */
	const char *offdisk;      /* a directory that is not on a VM disk */
	uint32_t vdev;            /* the VM disk's vdev */
	uint64_t part_off;        /* where the filesystem starts on that disk */
	int (*vm_pair)(void *ctx, int *vm_end, int *peer);   /* TCP pair, vm_end on the VM address */
	int (*lo_pair)(void *ctx, int *vm_end, int *peer);   /* TCP pair on loopback */
	/* the engine's answers from now on; forgets what it recorded */
	int (*script)(void *ctx, const struct vc_script *s);
	/* what the engine received since script(); the array stays valid until the next script() */
	int (*requests)(void *ctx, const struct vc_req **out, int *n);
	/* one operation: op (in: op, offsets, length, flags, head_len, tail_len) gets the result
	 * fields; restored sockets are put in place of *in / *out. 0 or -errno. */
	int (*call)(void *ctx, struct vpipe_ioc_op *op, int in, int out, const void *head,
		    const void *tail);
	void (*log)(void *ctx, const char *line);
};

/* Runs one case. 0 when it conforms; otherwise -1 and `why` says what differed. */
int vc_run(const struct vc_env *env, const struct vc_case *c, char *why, size_t why_len);

/* A line per case for the logs: what happened. */
const char *vc_describe(const struct vc_case *c);

#ifdef __cplusplus
}
#endif

#endif
