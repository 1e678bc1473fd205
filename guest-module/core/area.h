/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * area.h -- the guest's descriptor area and how a request's area is laid out in it.
 *
 * Both transports share a fixed set of pages with dom0 for the life of the channel: the shm
 * transport's memfd pages (dom0 names them by index), the Xen frontend's persistently granted
 * pages (dom0 names them by grant reference). A request takes as many pages as its area needs
 * (the descriptor stream, then the socket rooms), plus indirect pages when it needs more than
 * the ring entry can name (protocol: VPIPE_REQF_INDIRECT), and gives them back after dom0
 * answered and the guest read the results.
 *
 * The allocator is a stack of free page indexes; the caller provides its storage and holds a
 * lock around every call.
 */
#ifndef VPIPE_CORE_AREA_H
#define VPIPE_CORE_AREA_H

#include "compat.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vpipe_area {
	uint32_t nr_pages;      /* pages in the area */
	uint32_t nr_free;
	uint32_t *free;         /* nr_pages slots: free[0 .. nr_free) are free page indexes */
};

void vpipe_area_init(struct vpipe_area *a, uint32_t *storage, uint32_t nr_pages);
/* n pages into out[]: 0, -ENOSPC (not now: fewer are free), -E2BIG (never: the area is smaller) */
int vpipe_area_alloc(struct vpipe_area *a, uint32_t n, uint32_t *out);
void vpipe_area_free(struct vpipe_area *a, const uint32_t *pages, uint32_t n);

/* How a request of `bytes` area bytes is encoded: data pages, and indirect pages when there are
 * more data pages than vpipe_request.page[] holds. -E2BIG beyond VPIPE_AREA_MAX_BYTES. */
struct vpipe_area_layout {
	uint32_t data_pages;
	uint32_t ind_pages;
};
int vpipe_area_plan(uint64_t bytes, struct vpipe_area_layout *out);

/* Copying into / out of a request's area: `idx` lists its data pages in order, mem() gives a
 * page's memory (the transport's mapping of area page idx). */
typedef uint8_t *(*vpipe_page_mem_fn)(void *t, uint32_t idx);
void vpipe_area_write(vpipe_page_mem_fn mem, void *t, const uint32_t *idx, uint64_t off,
		      const void *src, uint64_t len);
void vpipe_area_read(vpipe_page_mem_fn mem, void *t, const uint32_t *idx, uint64_t off, void *dst,
		     uint64_t len);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_CORE_AREA_H */
