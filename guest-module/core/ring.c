// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/* ring.c -- see ring.h */
#include "ring.h"

void vpipe_ring_init(struct vpipe_ring *f, struct vpipe_sring *sring)
{
	memset(f, 0, sizeof(*f));
	SHARED_RING_INIT(sring);
	FRONT_RING_INIT(&f->ring, sring, VPIPE_PAGE_SIZE);
}

static int free_slot(const struct vpipe_ring *f)
{
	int i;

	for (i = 0; i < (int)VPIPE_RING_SLOTS; i++)
		if (!f->slot[i].id)
			return i;
	return -1;
}

bool vpipe_ring_has_room(const struct vpipe_ring *f)
{
	return !RING_FULL(&f->ring) && free_slot(f) >= 0;
}

int vpipe_ring_post(struct vpipe_ring *f, const struct vpipe_post *p, void *owner, uint64_t *id)
{
	struct vpipe_request *rq;
	int slot = free_slot(f), notify = 0;
	uint32_t i;

	if (slot < 0 || RING_FULL(&f->ring) || p->nr_refs > VPIPE_DESC_MAX_PAGES)
		return -EBUSY;
	f->seq++;
	f->slot[slot].id = (f->seq << 8) | (uint64_t)slot;
	f->slot[slot].length = p->length;
	f->slot[slot].owner = owner;
	f->in_flight++;
	rq = RING_GET_REQUEST(&f->ring, f->ring.req_prod_pvt);
	memset(rq, 0, sizeof(*rq));
	rq->id = f->slot[slot].id;
	rq->length = p->length;
	rq->op = p->op;
	rq->flags = p->flags;
	rq->nr_pages = (uint8_t)p->nr_refs;
	rq->desc_bytes = p->desc_bytes;
	for (i = 0; i < p->nr_refs; i++)
		rq->page[i] = p->refs[i];
	f->ring.req_prod_pvt++;
	/* publishes the entry (write barrier inside) and tells whether dom0 asked for a kick */
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f->ring, notify);
	*id = f->slot[slot].id;
	return notify ? 1 : 0;
}

static void finish(struct vpipe_ring *f, uint32_t slot, int status, uint64_t moved,
		   vpipe_ring_done_fn done, void *arg)
{
	void *owner = f->slot[slot].owner;
	uint64_t length = f->slot[slot].length;

	f->slot[slot].id = 0;
	f->slot[slot].owner = NULL;
	f->in_flight--;
	done(arg, owner, status, moved > length ? length : moved);
}

int vpipe_ring_reap(struct vpipe_ring *f, vpipe_ring_done_fn done, void *arg)
{
	int more;

	do {
		RING_IDX prod = VC_READ_INDEX(f->ring.sring->rsp_prod), cons;

		VC_RMB();   /* read the responses after the index that publishes them */
		/* dom0 can only answer what we asked */
		if (prod - f->ring.rsp_cons > f->ring.req_prod_pvt - f->ring.rsp_cons) {
			f->bad_responses++;
			return -EPROTO;
		}
		for (cons = f->ring.rsp_cons; cons != prod; cons++) {
			struct vpipe_response rsp;
			uint64_t slot;

			RING_COPY_RESPONSE(&f->ring, cons, &rsp);
			slot = rsp.id & VPIPE_RING_SLOT_MASK;
			if (slot >= VPIPE_RING_SLOTS || !f->slot[slot].id || f->slot[slot].id != rsp.id) {
				f->bad_responses++;
				f->ring.rsp_cons = cons + 1;
				return -EPROTO;
			}
			/* the protocol's statuses are 0 or a negative errno */
			if (rsp.status > 0 || rsp.status < -4095)
				rsp.status = -EIO;
			finish(f, (uint32_t)slot, rsp.status, rsp.moved, done, arg);
		}
		f->ring.rsp_cons = prod;
		RING_FINAL_CHECK_FOR_RESPONSES(&f->ring, more);
	} while (more);
	return 0;
}

void vpipe_ring_cancel_all(struct vpipe_ring *f, vpipe_ring_done_fn done, void *arg)
{
	uint32_t i;

	for (i = 0; i < VPIPE_RING_SLOTS; i++)
		if (f->slot[i].id)
			finish(f, i, -ECANCELED, 0, done, arg);
}
