/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * desc.h -- descriptor streams (vpipe/abi/ring.h): file extents sliced into segments, the
 * stream of a file -> file request, the layout of a socket request's area (stream, rooms, the
 * bytes each room carries in), and reading dom0's results back.
 */
#ifndef VPIPE_CORE_DESC_H
#define VPIPE_CORE_DESC_H

#include "compat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A file range on a virtual disk, as the OS mapper returns it (stream order). */
struct vpipe_seg {
	uint64_t disk_offset;   /* on the whole virtual disk (partition included); 0 if zero */
	uint64_t length;
	uint32_t zero;          /* hole / unwritten extent: reads as zeros */
	uint32_t pad;
};

struct vpipe_extents {
	uint32_t vdev;
	uint32_t nr;
	struct vpipe_seg *segs; /* the mapper's memory */
	uint64_t *ends;         /* prefix sums: end of segment i in the stream (vpipe_ext_index) */
	void *os;               /* the mapper's private data */
};

/* Merges physically contiguous neighbours (and neighbouring holes) in place, so that no
 * boundary survives that the filesystem did not put there, and fills ends[] (nr entries,
 * the caller's storage). */
void vpipe_ext_index(struct vpipe_extents *x, uint64_t *ends);
uint64_t vpipe_ext_total(const struct vpipe_extents *x);

/* A ring segment is at most this long (its length is 32 bits): longer runs are cut at 4 KiB
 * boundaries of the disk, so a destination's inner boundaries stay sector-aligned. */
#define VPIPE_SEG_MAX_LEN (1ull << 30)

/* Segments stream bytes [from, to) take on the ring. */
uint64_t vpipe_ext_count(const struct vpipe_extents *x, uint64_t from, uint64_t to);
/* Writes those segments to out[] (room for vpipe_ext_count()); returns how many. */
uint32_t vpipe_ext_slice(const struct vpipe_extents *x, uint64_t from, uint64_t to,
			 struct vpipe_segment *out);

/* file -> file: where the request starting at stream byte p ends: at most `chunk` bytes and at
 * most max_segments segments of both ends together (cut where neither side needs more than
 * half of them). */
uint64_t vpipe_f2f_cut(const struct vpipe_extents *src, const struct vpipe_extents *dst,
		       uint64_t p, uint64_t length, uint64_t chunk, uint32_t max_segments);
/* The stream of a file -> file request for stream bytes [p, q) into buf (room for
 * sizeof(header) + vpipe_ext_count() of both); returns desc_bytes. area_pages: the request's. */
uint32_t vpipe_desc_f2f(const struct vpipe_extents *src, const struct vpipe_extents *dst, uint64_t p,
			uint64_t q, uint32_t area_pages, void *buf);

void vpipe_desc_header_init(struct vpipe_desc_header *h, uint32_t nr_segments, uint32_t area_pages);

/* ---- socket requests ------------------------------------------------------------------------ */

/* One socket endpoint going into a request: the connection as frozen, with its queues, and for
 * a destination the head (sent first, appended to the send queue as never transmitted) and the
 * tail (sent after the data). */
struct vpipe_sock_in {
	const struct vpipe_tcp_state *st;  /* sndq_len / rcvq_len / sndq_unsent as frozen */
	const uint8_t *sndq, *rcvq;
	const uint8_t *head, *tail;
	uint32_t head_len, tail_len;
};

/* bytes to place into the area: `len` bytes from `src` at area offset `off` */
struct vpipe_piece {
	uint64_t off;
	const void *src;
	uint64_t len;
};
#define VPIPE_SOCK_MAX_PIECES 8

/* The smallest room of a socket endpoint and how the guest sizes one: what it carries in, plus
 * room for what dom0 may hand back -- a source's receive window, a destination's send queue
 * and the small window its peer gets -- sized to the operation, at most room_max. */
#define VPIPE_ROOM_MIN 16384u
uint64_t vpipe_room_for(const struct vpipe_sock_in *ep, uint64_t length, int source, uint32_t room_max);

struct vpipe_sock_layout {
	uint32_t desc_bytes;        /* the stream: header + the file endpoint's segments */
	uint64_t area_bytes;        /* the whole area, rounded up to pages */
	uint64_t room_off[2];       /* src, dst carry_offset (0: not a socket) */
	uint32_t room[2];
	struct vpipe_piece piece[VPIPE_SOCK_MAX_PIECES];
	uint32_t npieces;
};

/*
 * Lays a socket request out: the descriptor stream (header + the file endpoint's segments for
 * stream bytes [file_off, file_off + len)) into `stream` (sizeof(header) + 16 *
 * vpipe_ext_count() bytes), the rooms after it (8-aligned; the last one extends to the end of
 * the last page), the carried bytes as pieces. 0, or -E2BIG when it exceeds the largest area.
 */
int vpipe_desc_socket(uint8_t op, const struct vpipe_extents *file, uint64_t file_off, uint64_t len,
		      const struct vpipe_sock_in *src, const struct vpipe_sock_in *dst, uint32_t room_max,
		      void *stream, struct vpipe_sock_layout *out);

/* dom0's result for one socket endpoint, read from the header it wrote back */
struct vpipe_sock_result {
	uint32_t flags;                 /* VPIPE_EPF_*; 0: dom0 never took the connection over */
	struct vpipe_tcp_state st;      /* the final state (VPIPE_EPF_VALID) */
	uint64_t carry_off;             /* area offset of its queues: sndq_len, then rcvq_len bytes */
	uint64_t moved;                 /* VALID: the operation's `moved` as dom0 recorded it with the
	                                 * state (what counts when its response never came) */
};

/* Reads one endpoint's result. A VALID result that cannot be right -- another 4-tuple than the
 * frozen one, another carry_offset, bad options / window scales / MSS, queues that do not fit
 * the room -- is dom0 breaking the protocol: the result becomes flags 0 (the guest restores
 * its own state) and -EPROTO is returned. */
int vpipe_desc_result(const struct vpipe_desc_header *h, int source, const struct vpipe_tcp_state *frozen,
		      uint64_t room_off, uint32_t room, struct vpipe_sock_result *out);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_CORE_DESC_H */
