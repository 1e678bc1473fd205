/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * watch.h -- the engine must answer (request_timeout_ms), the rule both transports apply: the
 * Xen frontend of vpipe.ko (a delayed work) and the agent's shm link (its reaper thread).
 *
 * While requests are in flight the transport calls vpipe_watch_check() every quarter of the
 * timeout or so. After half of it without any answer it posts a NOP (vpiped answers those in
 * its ring reader, not behind its workers, so a long socket transfer does not look like a
 * hang). The engine is declared unresponsive when nothing at all was answered for the timeout,
 * when no file -> file request was answered for that long while some are outstanding (each is
 * disk work of at most chunk_mib: a lost answer or a stuck copy, also while socket transfers
 * keep the engine busy), or -- the transport's own wait -- when a killed caller's request is not
 * answered within it. Socket requests have no age limit of their own: they take as long as their
 * peers. Unresponsive = the teardown and reconnect of a protocol break; every request in flight
 * fails with -ECANCELED, and a socket endpoint dom0 had not handed back counts as taken
 * (vpipe_watch_lost_header): a live engine may take it over right after the guest looked.
 *
 * Times are the transport's clock (jiffies64, steady milliseconds): only differences count.
 * No locks here: the transport holds its own around every call.
 */
#ifndef VPIPE_CORE_WATCH_H
#define VPIPE_CORE_WATCH_H

#include "area.h"
#include "compat.h"
#include "desc.h"
#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VPIPE_REQUEST_TIMEOUT_MS_DEFAULT 60000u
#define VPIPE_REQUEST_TIMEOUT_MS_MIN 100u
#define VPIPE_REQUEST_TIMEOUT_MS_MAX 3600000u

struct vpipe_watch {
	uint64_t last_heard;    /* the last answer, or the first post while none was outstanding */
	uint64_t last_f2f;      /* the same for file -> file requests */
	uint32_t f2f_in_flight;
};

enum vpipe_watch_verdict {
	VPIPE_WATCH_QUIET,      /* nothing to do (keep watching while requests are in flight) */
	VPIPE_WATCH_PROBE,      /* post a NOP (unless one is out already) */
	VPIPE_WATCH_HUNG,       /* declare the engine unresponsive */
};

uint32_t vpipe_watch_clamp_ms(uint32_t ms);
/* a request of type `op` is posted; `in_flight` requests were outstanding before it */
void vpipe_watch_posted(struct vpipe_watch *w, uint64_t now, uint8_t op, uint32_t in_flight);
/* a request of type `op` ended (answered, or failed with the channel) */
void vpipe_watch_answered(struct vpipe_watch *w, uint64_t now, uint8_t op);
/* what the transport must do now; *why (HUNG) says which rule */
enum vpipe_watch_verdict vpipe_watch_check(const struct vpipe_watch *w, uint64_t now, uint64_t timeout,
					   uint32_t in_flight, const char **why);
/* a slot for a request: the last one is kept for the watchdog's NOP */
bool vpipe_watch_room_for_request(const struct vpipe_ring *f);
/* a request's header as an unresponsive engine left it: endpoints not handed back are taken */
void vpipe_watch_lost_header(struct vpipe_desc_header *h);
/* a request given up on with its channel (the engine may still be alive, e.g. stopped and
 * continued later): marks its FILE destination VPIPE_EPF_ABANDONED in the live area, so that the
 * engine writes no further byte of it. Call it before the destination is cut or anything the
 * request names is released; `idx` are the request's area pages (the header is in the first). */
void vpipe_watch_abandon(vpipe_page_mem_fn mem, void *t, const uint32_t *idx);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_CORE_WATCH_H */
