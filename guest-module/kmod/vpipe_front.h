/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_front.h -- the guest end of the ring to the dom0 engine on Xen (docs/protocol.md §5).
 *
 * A request's descriptor stream is copied into freshly allocated pages granted read-write to
 * the backend for that request only. The caller gets a request object back, waits for it, may
 * read the pages back (dom0's results of socket endpoints), and puts it. Requests are
 * reference counted: a caller that stops caring (a process killed while waiting) drops its
 * reference and the transport keeps the grants and pages until the response (or until the
 * backend went away), then releases them.
 */
#ifndef VPIPE_KMOD_FRONT_H
#define VPIPE_KMOD_FRONT_H

#include <linux/types.h>

struct vpipe_req;

int vpipe_front_init(void);     /* registers the xenbus driver (nothing without Xen) */
void vpipe_front_exit(void);

/* 1 when the ring is Connected */
bool vpipe_front_connected(void);

/* Posts one request. `desc`/`desc_bytes` the descriptor stream, `nr_pages` the pages it names
 * (>= pages the stream needs; 0 for NOP). Waits (killable) for a free slot.
 * 0 and *out, or -EHOSTDOWN (no engine), -ENOMEM, -EINTR (fatal signal), -ENOSPC (grants). */
int vpipe_front_submit(u8 op, u64 length, const void *desc, u32 desc_bytes, u32 nr_pages,
		       struct vpipe_req **out);

/* Waits for the response: 0 or the response's negative status; *moved <= length.
 * -ECANCELED when the backend left Connected with the request in flight. A fatal signal does
 * not cut the wait short: the operation's resources (holds, frozen sockets) stay valid until
 * dom0 answered, so the caller continues in TASK_IDLE once killed (*killed is set). */
int vpipe_front_wait(struct vpipe_req *r, u64 *moved, bool *killed);

/* After wait: copies the request's pages (what dom0 wrote back) into buf (len <= pages).
 * -EIO when a page could not be taken back from the backend (its contents are not ours). */
int vpipe_front_readback(struct vpipe_req *r, void *buf, size_t len);

void vpipe_front_put(struct vpipe_req *r);

/* counters for the stats ioctl / debugging */
u64 vpipe_front_bad_responses(void);

#endif
