// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/* link.c -- see link.h */
#include "link.h"

uint32_t vpipe_link_pages_needed(uint64_t area_bytes)
{
	struct vpipe_area_layout l;

	if (vpipe_area_plan(area_bytes, &l))
		return 0;
	return l.data_pages + l.ind_pages;
}

int vpipe_link_reserve(struct vpipe_area *a, const struct vpipe_submit *s, struct vpipe_link_pages *p)
{
	int r = vpipe_area_plan(s->area_bytes, &p->layout);

	if (r)
		return r;
	return vpipe_area_alloc(a, p->layout.data_pages + p->layout.ind_pages, p->idx);
}

void vpipe_link_release(struct vpipe_area *a, const struct vpipe_link_pages *p)
{
	vpipe_area_free(a, p->idx, p->layout.data_pages + p->layout.ind_pages);
}

void vpipe_link_fill(vpipe_page_mem_fn mem, vpipe_page_ref_fn ref, void *t, const struct vpipe_link_pages *p,
		     const struct vpipe_submit *s)
{
	uint32_t i;

	for (i = 0; i < s->npieces; i++)
		vpipe_area_write(mem, t, p->idx, s->piece[i].off, s->piece[i].src, s->piece[i].len);
	/* the indirect pages list the data pages' references, in order; unused slots are 0 */
	for (i = 0; i < p->layout.ind_pages; i++) {
		uint8_t *page = mem(t, p->idx[p->layout.data_pages + i]);
		uint32_t first = i * VPIPE_REFS_PER_PAGE, j;
		uint32_t n = VC_MIN(p->layout.data_pages - first, VPIPE_REFS_PER_PAGE);

		for (j = 0; j < n; j++) {
			uint32_t r = ref(t, p->idx[first + j]);

			memcpy(page + (size_t)j * sizeof(r), &r, sizeof(r));
		}
		if (n < VPIPE_REFS_PER_PAGE)
			memset(page + (size_t)n * sizeof(uint32_t), 0,
			       (size_t)(VPIPE_REFS_PER_PAGE - n) * sizeof(uint32_t));
	}
}

int vpipe_link_post(struct vpipe_ring *f, vpipe_page_ref_fn ref, void *t, const struct vpipe_link_pages *p,
		    const struct vpipe_submit *s, void *owner, uint64_t *id)
{
	uint32_t refs[VPIPE_DESC_MAX_PAGES];
	struct vpipe_post post;
	uint32_t i, n;

	memset(&post, 0, sizeof(post));
	post.op = s->op;
	post.length = s->length;
	post.desc_bytes = s->desc_bytes;
	post.flags = s->flags & VPIPE_REQF_PREPARING;
	if (p->layout.ind_pages) {
		post.flags |= VPIPE_REQF_INDIRECT;
		n = p->layout.ind_pages;
		for (i = 0; i < n; i++)
			refs[i] = ref(t, p->idx[p->layout.data_pages + i]);
	} else {
		n = p->layout.data_pages;
		for (i = 0; i < n; i++)
			refs[i] = ref(t, p->idx[i]);
	}
	post.nr_refs = n;
	post.refs = refs;
	return vpipe_ring_post(f, &post, owner, id);
}
