/* SPDX-License-Identifier: MIT */
/*
 * vpipe/abi/ring.h -- the guest <-> dom0 request ring of vPipe, protocol version 2.
 *
 * This header is the protocol: it is shared verbatim by the guest kernel module, the userspace
 * guest agent and the dom0 engine. docs/protocol.md explains it in prose; where the two disagree,
 * this header wins and the document is the bug.
 *
 * Shape (borrowed from blkif with indirect descriptors):
 *
 *   ring page (one 4 KiB page, Xen's DEFINE_RING_TYPES layout)
 *     struct vpipe_request  { id, length, op, flags, nr_pages, desc_bytes, page[10] }   64 bytes
 *     struct vpipe_response { id, moved, status }                                       32 bytes
 *
 *   the request's AREA: area_pages pages (grant references on Xen, page indexes into the
 *   shared descriptor area on the shm transport). Direct requests name them in page[] (at most
 *   VPIPE_DESC_MAX_PAGES); indirect requests (VPIPE_REQF_INDIRECT, like blkif's indirect
 *   segments) name in page[] up to 10 indirect pages, each holding VPIPE_REFS_PER_PAGE page
 *   references of the area, in order. Concatenated, the area pages hold:
 *     struct vpipe_desc_header   magic, version, area_pages, two endpoints (src, dst)
 *     struct vpipe_segment[]     file extents of both endpoints, in stream order
 *     carry rooms                per socket endpoint: the connection's queued bytes, both ways
 *
 * A request moves `length` bytes from the source endpoint to the destination endpoint. A file
 * endpoint is a list of segments on one virtual disk of the requesting VM; concatenated in
 * order, the segments are exactly `length` bytes of the file's contents. A socket endpoint is a
 * frozen TCP connection of the requesting VM (struct vpipe_tcp_state).
 *
 * Who validates what:
 *   - dom0 validates EVERY field of every request and descriptor before use (the guest is
 *     untrusted): op, reserved fields, page count and references, magic/version, endpoint kinds
 *     against op, vdev against the VM's own disks, each segment against that disk's size
 *     (no overflow), segment lengths summing to `length`, alignment (below), and for sockets the
 *     addresses against the VM's own identity. dom0 copies the request and the descriptor
 *     stream out of shared memory once, then validates and uses only its private copy.
 *   - the guest validates the response's id (must be one it has outstanding) and clamps `moved`
 *     to the request's length.
 *
 * Alignment rule: inside a DESTINATION file endpoint every segment boundary is a multiple of
 * VPIPE_SECTOR_SIZE, except the start of the first segment and the end of the last one.
 * (Extents are block-granular; only the ends of a byte range can fall inside a block. dom0
 * writes a partial sector by read-modify-write, so this bounds that work to two sectors per
 * request.) Source segments may start and end anywhere: dom0 reads the enclosing sectors.
 */
#ifndef VPIPE_ABI_RING_H
#define VPIPE_ABI_RING_H

#ifdef __KERNEL__
#include <linux/stddef.h>
#include <linux/types.h>
#include <xen/interface/io/ring.h>
#else
#include <stddef.h>
#include <stdint.h>
#include <string.h>
/* Xen's ring.h expects the includer to provide its barriers; these are the C11 equivalents of
 * what xenctrl.h defines for tools: full fence, acquire (read) fence, release (write) fence. */
#ifndef xen_mb
#define xen_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif
#ifndef __XEN_INTERFACE_VERSION__
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#endif
#include <xen/io/ring.h>
#endif

#define VPIPE_PROTOCOL_VERSION 2u

#define VPIPE_PAGE_SIZE 4096u
#define VPIPE_SECTOR_SIZE 512u
/* page references in vpipe_request.page[]: area pages (direct) or indirect pages */
#define VPIPE_DESC_MAX_PAGES 10u
#define VPIPE_DESC_MAX_BYTES (VPIPE_DESC_MAX_PAGES * VPIPE_PAGE_SIZE)
/* an indirect page is an array of this many uint32_t page references */
#define VPIPE_REFS_PER_PAGE (VPIPE_PAGE_SIZE / 4u)
/* pages of one request's area (40 MiB) */
#define VPIPE_AREA_MAX_PAGES (VPIPE_DESC_MAX_PAGES * VPIPE_REFS_PER_PAGE)
#define VPIPE_AREA_MAX_BYTES ((uint64_t)VPIPE_AREA_MAX_PAGES * VPIPE_PAGE_SIZE)
/* a single request moves at most this much; larger operations are split by the guest */
#define VPIPE_MAX_REQUEST_LENGTH (1ull << 40)

/* ---- operations ------------------------------------------------------------------------- */

enum vpipe_op {
	VPIPE_OP_NOP = 0,              /* round trip only: no descriptor, length 0 */
	VPIPE_OP_FILE_TO_FILE = 1,
	VPIPE_OP_FILE_TO_SOCKET = 2,
	VPIPE_OP_SOCKET_TO_FILE = 3,
	VPIPE_OP_SOCKET_TO_SOCKET = 4,
	VPIPE_OP_MAX_ = 5
};

/* ---- ring entries ------------------------------------------------------------------------ */

/* vpipe_request.flags */
#define VPIPE_REQF_INDIRECT 0x01u  /* page[] names indirect pages, not area pages */
#define VPIPE_REQF_PREPARING 0x02u /* socket -> file only: the destination's blocks are still being
                                    * readied by the guest; see "Preparing while dom0 works" */

struct vpipe_request {
	uint64_t id;          /* chosen by the guest, echoed in the response */
	uint64_t length;      /* bytes to move; 0 < length <= VPIPE_MAX_REQUEST_LENGTH (0 for NOP) */
	uint8_t op;           /* enum vpipe_op */
	uint8_t flags;        /* VPIPE_REQF_*; 0 for NOP */
	uint8_t nr_pages;     /* references used in page[] (0 for NOP) */
	uint8_t reserved0;    /* must be 0 */
	uint32_t desc_bytes;  /* bytes of the descriptor stream (header + segments) at the start of
	                       * the area, <= area_pages * PAGE_SIZE */
	uint32_t page[VPIPE_DESC_MAX_PAGES]; /* grant refs (xen) / area page index (shm) */
};

/*
 * Status codes: 0, or a negative Linux errno from this list. dom0 never returns others.
 *   -EINVAL     malformed request (a field failed validation); nothing was moved
 *   -EPERM      the request names something the VM does not own (disk, address)
 *   -EROFS      write to a disk the VM may only read
 *   -ERANGE     a segment lies outside its disk
 *   -EIO        the disk image failed a read or write; `moved` says how far it got
 *   -ENOSPC     dom0 could not get buffers; retry later
 *   -ECONNRESET the peer of a socket endpoint reset the connection
 *   -EPIPE      the peer of a socket endpoint closed its receiving side
 *   -ETIMEDOUT  a socket endpoint made no progress for the engine's socket timeout
 *   -ECANCELED  the engine shut the channel down while the request was in progress, or the
 *               guest reported VPIPE_PREPARED_FAILED
 *   -EOPNOTSUPP the operation is valid but this engine does not implement it
 * On socket requests `moved` counts bytes of `length` only: carried queues, a destination's
 * unsent head and its tail are not part of it (docs/protocol.md 2a).
 */
struct vpipe_response {
	uint64_t id;          /* the request's id */
	uint64_t moved;       /* bytes moved to the destination, <= length; durable on files */
	int32_t status;
	uint32_t reserved0;
	uint64_t reserved1;
};

DEFINE_RING_TYPES(vpipe, struct vpipe_request, struct vpipe_response);

#define VPIPE_RING_SIZE __CONST_RING_SIZE(vpipe, VPIPE_PAGE_SIZE)

/* ---- descriptor stream ------------------------------------------------------------------ */

#define VPIPE_DESC_MAGIC 0x31445056u /* "VPD1" little-endian */

enum vpipe_endpoint_kind {
	VPIPE_EP_FILE = 1,
	VPIPE_EP_SOCKET = 2
};

#define VPIPE_AF_INET 4
#define VPIPE_AF_INET6 6

/* option bits of struct vpipe_tcp_state.options */
#define VPIPE_TCPOPT_SACK 0x01
#define VPIPE_TCPOPT_TIMESTAMP 0x02
#define VPIPE_TCPOPT_WSCALE 0x04

/*
 * A frozen TCP connection (TCP_REPAIR vocabulary). Addresses and ports in network byte order.
 * On completion dom0 writes the connection's final state back into the same descriptor
 * (the guest restores its socket from it).
 */
struct vpipe_tcp_state {
	uint8_t family;            /* VPIPE_AF_INET / VPIPE_AF_INET6 */
	uint8_t options;           /* VPIPE_TCPOPT_* */
	uint8_t snd_wscale;
	uint8_t rcv_wscale;
	uint16_t local_port;
	uint16_t remote_port;
	uint8_t local_addr[16];    /* IPv4 in the first 4 bytes */
	uint8_t remote_addr[16];
	uint32_t snd_seq;          /* TCP_QUEUE_SEQ of the send queue (next byte to send) */
	uint32_t rcv_seq;          /* TCP_QUEUE_SEQ of the receive queue (next byte expected) */
	uint32_t mss;
	uint32_t timestamp;        /* TCP_TIMESTAMP */
	uint32_t snd_wl1;          /* struct tcp_repair_window */
	uint32_t snd_wnd;
	uint32_t max_window;
	uint32_t rcv_wnd;
	uint32_t rcv_wup;
	/* bytes carried along in the area at carry_offset, both ways: first the send queue
	 * (sndq_len bytes written by the application and not acknowledged by the peer; the last
	 * sndq_unsent of them were never transmitted), then the receive queue (rcvq_len bytes
	 * received and acknowledged, not yet read). snd_seq is the sequence number after the
	 * send queue, rcv_seq the one after the receive queue. */
	uint32_t sndq_len;
	uint32_t rcvq_len;
	uint32_t carry_offset;
	uint32_t sndq_unsent;      /* <= sndq_len */
	uint32_t reserved0;        /* must be 0 */
};

struct vpipe_endpoint {
	uint32_t kind;             /* enum vpipe_endpoint_kind */
	uint32_t vdev;             /* file: the VM's virtual disk (Xen virtual-device number) */
	uint32_t first_segment;    /* file: index of its first segment in the segment array */
	uint32_t nr_segments;      /* file: number of segments, >= 1 */
	uint32_t result_flags;     /* 0 in a request; dom0's VPIPE_EPF_* in the response */
	uint32_t tail_len;         /* socket destination: bytes carried after the queues that dom0
	                            * sends once the operation's data is sent (0 in a response) */
	uint64_t prepared;         /* destination file of a VPIPE_REQF_PREPARING request: the
	                            * guest's watermark, live (below); otherwise must be 0 */
	struct vpipe_tcp_state tcp;/* socket */
};

/*
 * Preparing while dom0 works (VPIPE_REQF_PREPARING, socket -> file). A destination's blocks
 * must be WRITTEN blocks of the guest's filesystem before dom0 may write data into them, and
 * making them so (zero-filling freshly allocated, unwritten extents) costs the guest as much
 * disk bandwidth as the data. With this flag the guest submits as soon as the blocks are
 * ALLOCATED (the segments name them; none is VPIPE_SEG_ZERO) and readies them in stream order
 * while dom0 receives, publishing its progress in dst.prepared of the request's area -- a
 * naturally aligned 64-bit word the guest stores with release ordering and dom0 re-reads
 * (never from its private copy) for as long as it works on the request:
 *   - the low 63 bits: bytes of the stream, from its start, whose destination blocks are ready.
 *     dom0 takes a byte from the connection only once it lies below the watermark, so every
 *     byte it acknowledged to the peer has a ready block (nothing acknowledged is ever lost
 *     to a preparation that fails: the rest stays queued in the connection).
 *   - VPIPE_PREPARED_FAILED: the guest could not ready the rest. dom0 stops taking bytes,
 *     writes what it took, and answers -ECANCELED with `moved` as far as it got.
 * The watermark only grows; dom0 treats a value beyond `length` as `length`, and a watermark
 * that stays still for its socket timeout as a stalled peer (-ETIMEDOUT).
 */
#define VPIPE_PREPARED_FAILED (1ull << 63)
#define VPIPE_PREPARED_OFFSET (offsetof(struct vpipe_desc_header, dst) + \
			       offsetof(struct vpipe_endpoint, prepared))

/*
 * Socket endpoints and their carry rooms (docs/protocol.md 2a):
 *  - request: the connection as frozen, with its queues: at tcp.carry_offset the send queue
 *    (tcp.sndq_len bytes, the last tcp.sndq_unsent never transmitted -- a head the application
 *    wants sent before the data is appended there), then the receive queue (tcp.rcvq_len; for
 *    a source these are the first bytes of the operation's stream), then, for a destination,
 *    tail_len bytes dom0 sends after the data. carry_offset is 8-aligned, at or after
 *    desc_bytes; the room ends at the next socket endpoint's carry_offset (the source's room
 *    comes first) or at the end of the area, and is at least VPIPE_CARRY_MIN bytes.
 *  - response: dom0 writes the connection's final state into the endpoint's tcp (same
 *    carry_offset), its queues into the room (sndq_len bytes written and not acknowledged, the
 *    last sndq_unsent never transmitted, then rcvq_len bytes received and not consumed),
 *    tail_len 0, and VPIPE_EPF_* into result_flags. dom0 sizes the shadow socket's buffers so
 *    that what it hands back always fits the room.
 */
#define VPIPE_CARRY_MIN 4096u
/* In a VALID socket result, the endpoint's `prepared` word carries the operation's `moved`, the
 * same number as the response's: written with the state, before the flags. A guest whose
 * response never came (dom0 died after handing the connection back) takes it from there, so
 * bytes that moved are never reported as not moved (and sent twice by the application). */
#define VPIPE_EP_RESULT_MOVED(ep) ((ep)->prepared)
#define VPIPE_EP_RESULT_FLAGS(ep) ((ep)->result_flags)
#define VPIPE_EPF_VALID 0x1u       /* dom0 wrote a restorable final state */
#define VPIPE_EPF_PEER_FIN 0x2u    /* the peer closed its sending side (FIN consumed by dom0) */
#define VPIPE_EPF_RESET 0x4u       /* the connection is dead (RST): nothing to restore */
#define VPIPE_EPF_TAIL_SENT 0x8u   /* the tail was written to the connection */
/* Live, not a result: dom0 stores it (only this word) into the request's endpoint just before it
 * takes the connection over, and every answer replaces it by the final flags. A guest that finds
 * it still set when it reads the results -- the transport failed the request because dom0 went
 * away (engine killed, backend gone) -- knows the frozen state is stale: dom0 may have sent and
 * acknowledged bytes, and its dying process closed the connection. Nothing is restored; the
 * socket comes back reset and the operation fails with ECONNABORTED (never a fallback). */
#define VPIPE_EPF_TAKEN 0x10u
/* Guest-written, not a result: the guest gave up on the request (it declared the engine
 * unresponsive and tears the channel down) and is about to cut the destination back to the
 * answered prefix and give blocks back. Stored (only this word, release ordering, a full barrier
 * after it) into the result_flags of a FILE destination -- a word dom0 never writes -- before the
 * guest releases anything. dom0 re-reads it from the live area (never its private copy) before
 * every batch of writes into the destination (file -> file, socket -> file) and, once set,
 * writes no further byte of the request. Untrusted like every guest word: it stops only the
 * request it is in. VPIPE_ABANDON_OFFSET is the naturally aligned 64-bit word that holds it. */
#define VPIPE_EPF_ABANDONED 0x80000000u

struct vpipe_desc_header {
	uint32_t magic;            /* VPIPE_DESC_MAGIC */
	uint16_t version;          /* VPIPE_PROTOCOL_VERSION */
	uint16_t header_bytes;     /* sizeof(struct vpipe_desc_header); segments start here */
	uint32_t nr_segments;      /* size of the segment array */
	uint32_t area_pages;       /* pages of the request's area: nr_pages when direct, at most
	                            * nr_pages * VPIPE_REFS_PER_PAGE when indirect */
	struct vpipe_endpoint src;
	struct vpipe_endpoint dst;
};

/* the 64-bit word of the request's area that holds dst.result_flags (VPIPE_EPF_ABANDONED) */
#define VPIPE_ABANDON_OFFSET (offsetof(struct vpipe_desc_header, dst) + \
			      offsetof(struct vpipe_endpoint, result_flags))

#define VPIPE_SEG_ZERO 0x0001      /* reads as zeros (hole / unwritten extent): source only */

struct vpipe_segment {
	uint64_t disk_offset;      /* byte offset on the virtual disk; 0 for VPIPE_SEG_ZERO */
	uint32_t length;           /* bytes, > 0 */
	uint16_t flags;            /* VPIPE_SEG_* */
	uint16_t reserved0;        /* must be 0 */
};

/* segments of a direct request's area, and of the largest area */
#define VPIPE_DESC_MAX_SEGMENTS \
	((VPIPE_DESC_MAX_BYTES - sizeof(struct vpipe_desc_header)) / sizeof(struct vpipe_segment))
#define VPIPE_AREA_MAX_SEGMENTS \
	((VPIPE_AREA_MAX_BYTES - sizeof(struct vpipe_desc_header)) / sizeof(struct vpipe_segment))

#ifndef __cplusplus
#define VPIPE_STATIC_ASSERT(c, m) _Static_assert(c, m)
#else
#define VPIPE_STATIC_ASSERT(c, m) static_assert(c, m)
#endif
VPIPE_STATIC_ASSERT(sizeof(struct vpipe_request) == 64, "request layout is ABI");
VPIPE_STATIC_ASSERT(sizeof(struct vpipe_response) == 32, "response layout is ABI");
VPIPE_STATIC_ASSERT(sizeof(struct vpipe_tcp_state) == 96, "tcp state layout is ABI");
VPIPE_STATIC_ASSERT(sizeof(struct vpipe_endpoint) == 128, "endpoint layout is ABI");
VPIPE_STATIC_ASSERT(sizeof(struct vpipe_desc_header) == 272, "descriptor header is ABI");
VPIPE_STATIC_ASSERT(sizeof(struct vpipe_segment) == 16, "segment layout is ABI");
VPIPE_STATIC_ASSERT(VPIPE_PREPARED_OFFSET % 8 == 0, "the watermark is a naturally aligned word");
VPIPE_STATIC_ASSERT(VPIPE_ABANDON_OFFSET % 8 == 0, "the abandonment mark lies in a naturally aligned word");

#endif /* VPIPE_ABI_RING_H */
