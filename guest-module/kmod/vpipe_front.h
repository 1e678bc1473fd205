/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_front.h -- the guest end of the ring to the dom0 engine on Xen (docs/protocol.md §5).
 *
 * The ring logic is the guest core's (guest-module/core: ring.c consumes responses without
 * trusting them, link.c lays a request into the area), the same code the agent runs; this is
 * the Xen part around it: the xenbus handshake, the granted ring page, the event channel, and
 * the AREA -- vpipe_area_pages pages granted to the backend once per connection (persistent
 * grants, as blkfront's) from which every request takes the pages of its descriptor stream
 * and socket rooms. A request object is reference counted: a caller that is killed keeps
 * waiting (what the request names must live until dom0 answered, or until the channel is
 * dropped: at most request_timeout_ms); its pages go back when the caller puts it.
 */
#ifndef VPIPE_KMOD_FRONT_H
#define VPIPE_KMOD_FRONT_H

#include <linux/types.h>

#include "vpipe_core.h"

struct vpipe_req;

int vpipe_front_init(void);     /* registers the xenbus driver (nothing without Xen) */
void vpipe_front_exit(void);

/* 1 when the ring is Connected */
bool vpipe_front_connected(void);

/* Posts one request: waits (killable, at most request_timeout_ms) for area pages and a ring
 * slot. 0 and *out, or -EHOSTDOWN (no engine), -E2BIG (larger than the area), -ENOMEM, -EINTR
 * (fatal signal), -EBUSY (pages or slots stayed taken for request_timeout_ms). */
int vpipe_front_submit(const struct vpipe_submit *s, struct vpipe_req **out);

/* Waits for the response: 0 or the response's negative status; *moved <= length.
 * -ECANCELED when the backend left Connected with the request in flight, or was declared
 * unresponsive (request_timeout_ms). A fatal signal does not cut the wait short: the
 * operation's resources (holds, frozen sockets) stay valid until dom0 answered, so the caller
 * continues in TASK_IDLE once killed (*killed is set) -- for at most request_timeout_ms, then
 * the engine is declared unresponsive and the channel dropped, which ends the request. */
int vpipe_front_wait(struct vpipe_req *r, u64 *moved, bool *killed);

/* After wait: bytes of the request's area (what dom0 wrote back). -EIO when the area went
 * away with the connection. */
int vpipe_front_readback(struct vpipe_req *r, u64 off, void *buf, u64 len);

/* The caller is done with the request: its pages go back to the area. */
void vpipe_front_put(struct vpipe_req *r);

/* counters for the stats ioctl / debugging */
u64 vpipe_front_bad_responses(void);

#ifdef VPIPE_TEST
/* test builds: the stand-in engine's side of the same ring and area (vpipe_testeng.c) */
struct vpipe_sring *vpipe_front_test_sring(void);
uint8_t *vpipe_front_test_page(uint32_t ref);     /* NULL for a reference outside the area */
void vpipe_front_test_interrupt(void);            /* "dom0 notified us" */
void vpipe_front_test_set_down(bool down);        /* the engine goes away / comes back */
#endif

#endif
