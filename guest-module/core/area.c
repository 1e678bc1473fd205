// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/* area.c -- see area.h */
#include "area.h"

void vpipe_area_init(struct vpipe_area *a, uint32_t *storage, uint32_t nr_pages)
{
	uint32_t i;

	a->nr_pages = nr_pages;
	a->free = storage;
	/* lowest indexes on top: a quiet channel keeps reusing the same few pages */
	for (i = 0; i < nr_pages; i++)
		storage[i] = nr_pages - 1 - i;
	a->nr_free = nr_pages;
}

int vpipe_area_alloc(struct vpipe_area *a, uint32_t n, uint32_t *out)
{
	uint32_t i;

	if (n > a->nr_pages)
		return -E2BIG;
	if (n > a->nr_free)
		return -ENOSPC;
	for (i = 0; i < n; i++)
		out[i] = a->free[--a->nr_free];
	return 0;
}

void vpipe_area_free(struct vpipe_area *a, const uint32_t *pages, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n && a->nr_free < a->nr_pages; i++)
		a->free[a->nr_free++] = pages[i];
}

int vpipe_area_plan(uint64_t bytes, struct vpipe_area_layout *out)
{
	uint64_t pages = (bytes + VPIPE_PAGE_SIZE - 1) / VPIPE_PAGE_SIZE;

	if (pages == 0)
		pages = 1;
	if (pages > VPIPE_AREA_MAX_PAGES)
		return -E2BIG;
	out->data_pages = (uint32_t)pages;
	out->ind_pages = pages <= VPIPE_DESC_MAX_PAGES ?
		0 : (uint32_t)((pages + VPIPE_REFS_PER_PAGE - 1) / VPIPE_REFS_PER_PAGE);
	return 0;
}

void vpipe_area_write(vpipe_page_mem_fn mem, void *t, const uint32_t *idx, uint64_t off,
		      const void *src, uint64_t len)
{
	const uint8_t *p = (const uint8_t *)src;

	while (len) {
		uint32_t in = (uint32_t)(off % VPIPE_PAGE_SIZE);
		uint64_t n = VC_MIN(len, (uint64_t)(VPIPE_PAGE_SIZE - in));

		memcpy(mem(t, idx[off / VPIPE_PAGE_SIZE]) + in, p, (size_t)n);
		p += n;
		off += n;
		len -= n;
	}
}

void vpipe_area_read(vpipe_page_mem_fn mem, void *t, const uint32_t *idx, uint64_t off, void *dst,
		     uint64_t len)
{
	uint8_t *p = (uint8_t *)dst;

	while (len) {
		uint32_t in = (uint32_t)(off % VPIPE_PAGE_SIZE);
		uint64_t n = VC_MIN(len, (uint64_t)(VPIPE_PAGE_SIZE - in));

		memcpy(p, mem(t, idx[off / VPIPE_PAGE_SIZE]) + in, (size_t)n);
		p += n;
		off += n;
		len -= n;
	}
}
