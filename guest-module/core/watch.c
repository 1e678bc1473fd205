// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/* watch.c -- see watch.h */
#include "watch.h"

uint32_t vpipe_watch_clamp_ms(uint32_t ms)
{
	return VC_MIN(VC_MAX(ms, VPIPE_REQUEST_TIMEOUT_MS_MIN), VPIPE_REQUEST_TIMEOUT_MS_MAX);
}

void vpipe_watch_posted(struct vpipe_watch *w, uint64_t now, uint8_t op, uint32_t in_flight)
{
	if (!in_flight)
		w->last_heard = now;   /* silence counts while something is outstanding */
	if (op == VPIPE_OP_FILE_TO_FILE && !w->f2f_in_flight++)
		w->last_f2f = now;
}

void vpipe_watch_answered(struct vpipe_watch *w, uint64_t now, uint8_t op)
{
	w->last_heard = now;
	if (op == VPIPE_OP_FILE_TO_FILE) {
		if (w->f2f_in_flight)
			w->f2f_in_flight--;
		w->last_f2f = now;
	}
}

enum vpipe_watch_verdict vpipe_watch_check(const struct vpipe_watch *w, uint64_t now, uint64_t timeout,
					   uint32_t in_flight, const char **why)
{
	if (!in_flight)
		return VPIPE_WATCH_QUIET;
	if (now - w->last_heard >= timeout) {
		*why = "no answer at all";
		return VPIPE_WATCH_HUNG;
	}
	if (w->f2f_in_flight && now - w->last_f2f >= timeout) {
		*why = "no file -> file request answered";
		return VPIPE_WATCH_HUNG;
	}
	return now - w->last_heard >= timeout / 2 ? VPIPE_WATCH_PROBE : VPIPE_WATCH_QUIET;
}

bool vpipe_watch_room_for_request(const struct vpipe_ring *f)
{
	return vpipe_ring_has_room(f) && f->in_flight + 1 < VPIPE_RING_SLOTS;
}

void vpipe_watch_lost_header(struct vpipe_desc_header *h)
{
	/* An engine that stopped answering may still be alive: a connection it has not handed
	 * back (no VALID/RESET result) may be taken over right after the guest read the header,
	 * so its state is unknown -- lost like one dom0 died holding (ECONNABORTED, a reset
	 * socket), never restored as frozen. A dead or stopped engine never takes one (vpiped
	 * writes TAKEN first and gives up when that write fails). */
	if (h->src.kind == VPIPE_EP_SOCKET && !h->src.result_flags)
		h->src.result_flags = VPIPE_EPF_TAKEN;
	if (h->dst.kind == VPIPE_EP_SOCKET && !h->dst.result_flags)
		h->dst.result_flags = VPIPE_EPF_TAKEN;
}

void vpipe_watch_abandon(vpipe_page_mem_fn mem, void *t, const uint32_t *idx)
{
	struct vpipe_desc_header *h = (struct vpipe_desc_header *)mem(t, idx[0]);

	/* the guest wrote kind itself and dom0 never writes it; a socket destination's
	 * result_flags are dom0's (TAKEN, results), and dom0 writes nothing into a file */
	if (h->dst.kind != VPIPE_EP_FILE)
		return;
	VC_STORE_MB(h->dst.result_flags, VPIPE_EPF_ABANDONED);
}
