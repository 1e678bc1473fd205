/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * ring.h -- the guest end of the request ring, for both transports (the Xen frontend in
 * vpipe.ko and the agent's shm link): slots and ids, posting a request, and consuming dom0's
 * responses without trusting them.
 *
 * Request ids are (sequence << 8) | slot: a response names its slot, and the sequence makes a
 * stale or forged id detectable. Responses are untrusted:
 *   - rsp_prod is read once, then a read barrier, then the entries it publishes;
 *   - there are never more responses than requests posted (rsp_prod - rsp_cons <=
 *     req_prod_pvt - rsp_cons);
 *   - each response is copied once (RING_COPY_RESPONSE) and must name a request in flight;
 *   - status is 0 or a negative errno (anything else becomes -EIO); moved <= the request's
 *     length.
 * A backend that breaks the first three rules has broken the channel: vpipe_ring_reap()
 * returns -EPROTO, and the transport fails every request in flight (vpipe_ring_cancel_all:
 * -ECANCELED), drops the channel and connects again -- the same in the kernel and the agent.
 *
 * No locks here: the transport holds its own around every call.
 */
#ifndef VPIPE_CORE_RING_H
#define VPIPE_CORE_RING_H

#include "compat.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VPIPE_RING_SLOTS VPIPE_RING_SIZE
#define VPIPE_RING_SLOT_MASK 0xffu

struct vpipe_ring_slot {
	uint64_t id;            /* 0: free */
	uint64_t length;
	void *owner;            /* the transport's request object */
};

struct vpipe_ring {
	struct vpipe_front_ring ring;
	struct vpipe_ring_slot slot[VPIPE_RING_SLOTS];
	uint64_t seq;
	uint32_t in_flight;
	uint64_t bad_responses; /* responses that broke a rule (counted, then the channel drops) */
};

/* `sring` is the shared ring page; the guest initialises it (SHARED_RING_INIT) */
void vpipe_ring_init(struct vpipe_ring *f, struct vpipe_sring *sring);

/* a free slot and a free ring entry */
bool vpipe_ring_has_room(const struct vpipe_ring *f);

struct vpipe_post {
	uint8_t op;
	uint64_t length;
	uint32_t desc_bytes;
	uint8_t flags;          /* VPIPE_REQF_INDIRECT when refs[] are indirect pages */
	uint32_t nr_refs;       /* <= VPIPE_DESC_MAX_PAGES */
	const uint32_t *refs;   /* what vpipe_request.page[] names */
};

/* Posts one request (requires has_room): takes a slot, writes and publishes the ring entry.
 * *id gets its id. Returns 1 when dom0 asked to be notified, 0 when not. */
int vpipe_ring_post(struct vpipe_ring *f, const struct vpipe_post *p, void *owner, uint64_t *id);

/* called for each request that ends: its owner, status (0 or -errno), moved (<= length) */
typedef void (*vpipe_ring_done_fn)(void *arg, void *owner, int status, uint64_t moved);

/* Consumes the responses dom0 published. 0, or -EPROTO when the backend broke the ring
 * protocol (the requests answered before that are completed; the caller cancels the rest). */
int vpipe_ring_reap(struct vpipe_ring *f, vpipe_ring_done_fn done, void *arg);

/* Ends every request in flight with -ECANCELED (channel gone). */
void vpipe_ring_cancel_all(struct vpipe_ring *f, vpipe_ring_done_fn done, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_CORE_RING_H */
