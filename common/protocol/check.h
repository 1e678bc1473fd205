/* SPDX-License-Identifier: MIT */
/*
 * check.h -- validation of ring requests (docs/protocol.md "Who validates what"), written once
 * in freestanding C11 for every party that receives requests: the dom0 engine (vpiped wraps it
 * in parse_request, dom0-engine/src/request.h) and the kernel module's test engine (test builds
 * of vpipe.ko on plain QEMU). An ABI change is made here and nowhere else.
 *
 * The guest is untrusted. The caller copies the ring entry out of shared memory once, then the
 * area pages it needs (indirect pages first, when VPIPE_REQF_INDIRECT), and passes only private
 * copies here. Nothing in this file touches shared memory, allocates, or keeps state.
 *
 *   vpipe_check_request()   the ring entry alone, before any page is looked at
 *   vpipe_check_indirect()  the copied indirect pages: which area pages the request names
 *   vpipe_check_desc()      the copied descriptor stream: header, segments, endpoints, rooms
 */
#ifndef VPIPE_PROTOCOL_CHECK_H
#define VPIPE_PROTOCOL_CHECK_H

#include "vpipe/abi/ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The ring entry: op, flags, reserved fields, length, page count, desc_bytes bound, unused
 * page[] slots 0 (NOP: everything 0). 0 or -EINVAL. */
int vpipe_check_request(const struct vpipe_request *req);

/* Area pages of a request: direct requests name them in page[]; indirect ones in the indirect
 * pages (`ind`: nr_pages copies of VPIPE_PAGE_SIZE bytes, each VPIPE_REFS_PER_PAGE uint32_t
 * references). Fills refs[0 .. *nr_refs) with every slot the indirect pages offer (at most
 * VPIPE_AREA_MAX_PAGES); the header's area_pages later says how many are used
 * (vpipe_check_desc checks that the rest are 0). 0 or -EINVAL. */
int vpipe_check_indirect(const struct vpipe_request *req, const void *ind, uint32_t *refs,
			 uint32_t *nr_refs);

/* One of the requesting VM's disks, as the toolstack configured it. */
struct vpipe_check_disk {
	uint64_t size;
	int writable;
};

struct vpipe_check_ctx {
	/* 0 and *out for a disk of the VM, -EPERM for any other vdev */
	int (*disk)(void *arg, uint32_t vdev, struct vpipe_check_disk *out);
	void *arg;
	int have_ipv4;          /* the VM has an IPv4 identity (socket endpoints need one) */
	uint8_t ipv4[4];
};

/* What validation established about one endpoint (the rest is in the caller's header copy). */
struct vpipe_checked_ep {
	uint32_t kind;          /* VPIPE_EP_FILE / VPIPE_EP_SOCKET */
	uint32_t vdev;          /* file */
	uint32_t first_segment; /* file: slice of the segment array */
	uint32_t nr_segments;
	uint32_t carry_offset;  /* socket: the room [carry_offset, carry_offset + room) */
	uint32_t room;
};

struct vpipe_checked {
	uint32_t area_pages;
	uint32_t nr_segments;
	struct vpipe_checked_ep src, dst;
};

/*
 * The descriptor stream: `desc` holds req->desc_bytes bytes (the start of the area, a private
 * copy). `refs`/`nr_refs` as vpipe_check_indirect() returned them (NULL/0 for a direct
 * request). Checks the header (magic, version, header_bytes, area_pages against the request,
 * nr_segments inside desc_bytes), endpoint kinds against the op, the segment slices (inside the
 * array, disjoint), every file segment (length > 0, known flags, reserved 0, ZERO only in a
 * source and at offset 0, inside its disk without overflow, the alignment rule inside a
 * destination, the sum equal to the request's length), and every socket endpoint (the VM's
 * own IPv4 address towards a unicast remote, ports, options, window scales, MSS, queue
 * lengths, the room inside the area and big enough for what it carries). 0 or the status the
 * engine answers: -EINVAL malformed, -EPERM not the VM's (disk, address), -EROFS a write to a
 * read-only disk, -ERANGE a segment outside its disk.
 */
int vpipe_check_desc(const struct vpipe_request *req, const void *desc, const uint32_t *refs,
		     uint32_t nr_refs, const struct vpipe_check_ctx *ctx, struct vpipe_checked *out);

/* The segment array of a checked stream (unaligned in the stream: copy one at a time). */
static inline void vpipe_desc_segment(const void *desc, uint32_t i, struct vpipe_segment *out)
{
	memcpy(out, (const uint8_t *)desc + sizeof(struct vpipe_desc_header) +
			    (uint64_t)i * sizeof(struct vpipe_segment),
	       sizeof(*out));
}

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_PROTOCOL_CHECK_H */
