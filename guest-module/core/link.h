/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * link.h -- posting one request on a transport, the steps both transports share: reserve the
 * area's pages, copy the request's bytes into them (and the indirect pages' references), post
 * it on the ring. The transport adds what is its own: its lock, waiting for pages or a slot,
 * the memory and the reference of an area page, the notification.
 *
 *   lock; vpipe_link_reserve()  (-ENOSPC: wait for pages and try again); unlock
 *   vpipe_link_fill()           (the pages are ours: no lock)
 *   lock; wait for vpipe_ring_has_room(); vpipe_link_post(); unlock; notify if it says so
 *   ... the response ...
 *   read results with vpipe_area_read(); lock; vpipe_link_release(); unlock
 */
#ifndef VPIPE_CORE_LINK_H
#define VPIPE_CORE_LINK_H

#include "area.h"
#include "desc.h"
#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One request as the state machines hand it to the transport. */
struct vpipe_submit {
	uint8_t op;
	uint8_t flags;                  /* VPIPE_REQF_PREPARING (INDIRECT is the link's to set) */
	uint64_t length;
	uint32_t desc_bytes;
	uint64_t area_bytes;            /* the stream and the rooms (>= desc_bytes) */
	const struct vpipe_piece *piece; /* what goes where in the area; piece 0 is the stream */
	uint32_t npieces;
};

struct vpipe_link_pages {
	struct vpipe_area_layout layout;
	uint32_t *idx;          /* data pages, then indirect pages: the caller's storage,
	                         * vpipe_link_pages_needed() entries */
};

/* entries the idx storage needs for `area_bytes`, or 0 when it exceeds the largest area */
uint32_t vpipe_link_pages_needed(uint64_t area_bytes);
int vpipe_link_reserve(struct vpipe_area *a, const struct vpipe_submit *s, struct vpipe_link_pages *p);
void vpipe_link_release(struct vpipe_area *a, const struct vpipe_link_pages *p);

typedef uint32_t (*vpipe_page_ref_fn)(void *t, uint32_t idx);
void vpipe_link_fill(vpipe_page_mem_fn mem, vpipe_page_ref_fn ref, void *t, const struct vpipe_link_pages *p,
		     const struct vpipe_submit *s);
/* vpipe_ring_post() for the reserved pages: 1 when dom0 must be notified */
int vpipe_link_post(struct vpipe_ring *f, vpipe_page_ref_fn ref, void *t, const struct vpipe_link_pages *p,
		    const struct vpipe_submit *s, void *owner, uint64_t *id);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_CORE_LINK_H */
