// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_front.c -- xenbus frontend of device type "vpipe" (docs/protocol.md §5).
 *
 * Handshake: vpiped creates device/vpipe/0 with the backend in InitWait. When the backend is
 * InitWait we allocate and grant the ring page and the area, allocate an event channel, write
 * ring-ref, event-channel and protocol-version, and switch to Initialised; when the backend is
 * Connected so are we. When the backend leaves Connected (vpiped stopped or restarted) every
 * request in flight fails with -ECANCELED, the ring, the area and the port are freed, we go
 * back to Initialising and reconnect as soon as the backend is InitWait again.
 *
 * The backend is not trusted: the guest core consumes its responses (ids must name a request
 * in flight, never more responses than requests, statuses clamped, `moved` clamped to the
 * request's length); a backend that breaks these rules loses the channel.
 *
 * Nor is it trusted to answer at all. A watchdog runs while requests are in flight: after half
 * of request_timeout_ms without any answer it posts a NOP (vpiped answers those in its ring
 * consumer, not behind the workers, so a long socket transfer does not look like a hang); the
 * backend is declared unresponsive when nothing at all was answered for request_timeout_ms, when
 * no file -> file request was answered for that long while some are outstanding (each is disk
 * work of at most chunk_mib: a lost answer or a stuck copy, also while socket transfers keep the
 * engine busy), or when a killed caller's request is not answered within it. Socket requests
 * have no age limit of their own: they take as long as their peers, and dom0 ends them after its
 * socket timeout without progress. Unresponsive = the same teardown
 * and reconnect as a protocol break (every request in flight fails with -ECANCELED, socket
 * endpoints dom0 had not handed back count as taken: see req_lost()).
 *
 * Locks: chan.mu (a mutex) serialises connect and teardown; chan.lock (a spinlock, also taken
 * in the interrupt) guards the ring, the area's free list, `connected` and `gen`; area_rw keeps
 * the area's pages from being freed while a request fills or reads them.
 */
#include <linux/completion.h>
#include <linux/interrupt.h>
#include <linux/kref.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/rwsem.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include <xen/events.h>
#include <xen/grant_table.h>
#include <xen/page.h>
#include <xen/xen.h>
#include <xen/xenbus.h>

#include "vpipe.h"
#include "vpipe_front.h"
#include "watch.h"
#ifdef VPIPE_TEST
#include "vpipe_testeng.h"
#endif

struct vpipe_req {
	struct kref ref;
	struct completion done;
	int status;
	u64 moved;
	u64 id;
	u64 gen;                 /* the connection its pages belong to */
	bool posted;
	u8 op;                   /* VPIPE_OP_* */
	u32 *idx;
	struct vpipe_link_pages pages;
	/* the descriptor header as the connection left it when it went away (the area goes with
	 * it): the core still reads the endpoints' result flags -- VPIPE_EPF_TAKEN says dom0 held
	 * a connection when it died, and that connection must not be restored as frozen */
	struct vpipe_desc_header lost_hdr;
	bool hdr_saved;
};

struct vpipe_chan {
	struct mutex mu;
	spinlock_t lock;
	struct rw_semaphore area_rw;
	struct xenbus_device *dev;
	bool connected;
	bool ring_up;            /* ring, area and evtchn allocated (Initialised or Connected) */
	struct vpipe_ring front;
	struct vpipe_sring *sring;
	grant_ref_t ring_ref;
	evtchn_port_t evtchn;
	int irq;
	/* the area: pages granted once per connection */
	u32 area_n;
	struct page **area_page;
	grant_ref_t *area_gref;  /* NULL in test builds: references are indexes */
	u32 *area_free;
	struct vpipe_area area;
	u64 gen;
	wait_queue_head_t wq;    /* pages, ring slots, connection changes */
	u64 bad_responses;
	struct work_struct broken_work;   /* protocol error seen in the interrupt handler */
	/* the engine answers (see the top, core/watch.h): under chan.lock, in jiffies64 */
	struct vpipe_watch watch;
	struct vpipe_req *probe;          /* the watchdog's NOP (its reference) */
	bool hung_pending;                /* declared unresponsive; hung_work tears down hung_gen */
	bool hung_teardown;               /* the teardown running is for a hang (req_lost) */
	u64 hung_gen;
	struct delayed_work watch_work;
	struct work_struct hung_work;
};

static struct vpipe_chan chan;
static bool registered;

unsigned int vpipe_request_timeout_ms = VPIPE_REQUEST_TIMEOUT_MS_DEFAULT;
module_param_named(request_timeout_ms, vpipe_request_timeout_ms, uint, 0644);
MODULE_PARM_DESC(request_timeout_ms,
		 "the engine is declared unresponsive (channel torn down and reconnected) after this long without an answer; also bounds a killed caller's wait and the wait for ring slots and area pages (100..3600000)");

static unsigned long timeout_jiffies(void)
{
	return msecs_to_jiffies(vpipe_watch_clamp_ms(READ_ONCE(vpipe_request_timeout_ms)));
}

static uint8_t *page_mem(void *t, uint32_t idx)
{
	return page_address(chan.area_page[idx]);
}

static uint32_t page_ref(void *t, uint32_t idx)
{
	return chan.area_gref ? chan.area_gref[idx] : idx;
}

static void req_release(struct kref *ref)
{
	struct vpipe_req *r = container_of(ref, struct vpipe_req, ref);

	kvfree(r->idx);
	kfree(r);
}

bool vpipe_front_connected(void)
{
	return READ_ONCE(chan.connected);
}

u64 vpipe_front_bad_responses(void)
{
	return READ_ONCE(chan.bad_responses);
}

/* the core ends a request (answered, or cancelled with the channel); chan.lock held */
static void req_done(void *arg, void *owner, int status, uint64_t moved)
{
	struct vpipe_req *r = owner;

	r->status = status;
	r->moved = moved;
	vpipe_watch_answered(&chan.watch, get_jiffies_64(), r->op);
	complete_all(&r->done);
	kref_put(&r->ref, req_release);  /* the transport's reference */
}

/* the connection is going away: keep what dom0 wrote into the header, then fail the request */
static void req_lost(void *arg, void *owner, int status, uint64_t moved)
{
	struct vpipe_req *r = owner;

	if (r->posted && r->pages.layout.data_pages && r->gen == chan.gen && chan.ring_up) {
		vpipe_area_read(page_mem, NULL, r->idx, 0, &r->lost_hdr, sizeof(r->lost_hdr));
		r->hdr_saved = true;
		/* An engine that stopped answering may still be alive: a connection it has not
		 * handed back (no VALID/RESET result) may be taken over right after this read, so
		 * its state is unknown -- lost like one dom0 died holding (ECONNABORTED, a reset
		 * socket), never restored as frozen. A dead or stopped engine never takes one
		 * (vpiped writes TAKEN first and gives up when that write fails). */
		if (chan.hung_teardown)
			vpipe_watch_lost_header(&r->lost_hdr);
		/* before the caller cuts the destination and gives its blocks back: a live
		 * engine writes no further byte of it (VPIPE_EPF_ABANDONED) */
		vpipe_watch_abandon(page_mem, NULL, r->idx);
	}
	req_done(arg, owner, status, moved);
}

void vpipe_front_put(struct vpipe_req *r)
{
	unsigned long flags;

	if (!r)
		return;
	/* the pages go back to the area they came from, unless that area is gone */
	spin_lock_irqsave(&chan.lock, flags);
	if (r->pages.layout.data_pages && r->gen == chan.gen && chan.ring_up)
		vpipe_link_release(&chan.area, &r->pages);
	r->pages.layout.data_pages = 0;
	spin_unlock_irqrestore(&chan.lock, flags);
	wake_up_all(&chan.wq);
	kref_put(&r->ref, req_release);
}

static bool has_pages(const struct vpipe_submit *s, struct vpipe_req *r)
{
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&chan.lock, flags);
	ok = !chan.connected ||
	     chan.area.nr_free >= vpipe_link_pages_needed(s->area_bytes);
	spin_unlock_irqrestore(&chan.lock, flags);
	return ok;
}

/* a slot for a request; the last one is the watchdog's (chan.lock held) */
static bool room_for_request(void)
{
	return vpipe_watch_room_for_request(&chan.front);
}

static bool has_slot(u64 gen)
{
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&chan.lock, flags);
	ok = !chan.connected || chan.gen != gen || room_for_request();
	spin_unlock_irqrestore(&chan.lock, flags);
	return ok;
}

static void notify_backend(void)
{
#ifdef VPIPE_TEST
	if (vpipe_testeng_active()) {
		vpipe_testeng_kick();
		return;
	}
#endif
	notify_remote_via_irq(chan.irq);
}

/* ---- the engine must answer (see the top) -------------------------------------------------- */

static unsigned long watch_period(void)
{
	return max(timeout_jiffies() / 4, 1ul);
}

/* the watchdog runs while requests are in flight; a post (re)arms it -- sooner when
 * request_timeout_ms was lowered since it was armed, never later (steady posts must not keep
 * pushing it away) */
static void watch_arm(void)
{
	const unsigned long p = watch_period();

	if (!schedule_delayed_work(&chan.watch_work, p) &&
	    time_after(READ_ONCE(chan.watch_work.timer.expires), jiffies + p))
		mod_delayed_work(system_wq, &chan.watch_work, p);
}

/* chan.lock held. The teardown itself runs in hung_work (it sleeps). */
static void declare_hung_locked(u64 gen, const char *why)
{
	if (!chan.connected || chan.gen != gen || chan.hung_pending)
		return;
	chan.hung_pending = true;
	chan.hung_gen = gen;
	atomic64_inc(&vpipe_stats.engine_timeouts);
	pr_warn("vpipe: the engine is unresponsive (%s within request_timeout_ms=%u); reconnecting\n",
		why, READ_ONCE(vpipe_request_timeout_ms));
	schedule_work(&chan.hung_work);
}

static void declare_hung(u64 gen, const char *why)
{
	unsigned long flags;

	spin_lock_irqsave(&chan.lock, flags);
	declare_hung_locked(gen, why);
	spin_unlock_irqrestore(&chan.lock, flags);
}

static void watch_fn(struct work_struct *w)
{
	const u64 t = timeout_jiffies(), now = get_jiffies_64();
	enum vpipe_watch_verdict v;
	struct vpipe_req *probe = NULL, *done_probe = NULL;
	const char *why = NULL;
	unsigned long flags;
	bool again = false;
	int notify = 0;

	if (!READ_ONCE(chan.connected))
		return;
	probe = kzalloc(sizeof(*probe), GFP_KERNEL);   /* used only when a probe is due */
	if (probe) {
		kref_init(&probe->ref);
		init_completion(&probe->done);
		probe->op = VPIPE_OP_NOP;
	}
	down_read(&chan.area_rw);   /* the port stays bound while we notify */
	spin_lock_irqsave(&chan.lock, flags);
	if (chan.probe && completion_done(&chan.probe->done)) {
		done_probe = chan.probe;
		chan.probe = NULL;
	}
	if (!chan.connected || !chan.front.in_flight || chan.hung_pending)
		goto out;
	again = true;
	v = vpipe_watch_check(&chan.watch, now, t, chan.front.in_flight, &why);
	if (v == VPIPE_WATCH_HUNG) {
		declare_hung_locked(chan.gen, why);
		again = false;
	} else if (v == VPIPE_WATCH_PROBE && !chan.probe && probe && vpipe_ring_has_room(&chan.front)) {
		struct vpipe_post post = { .op = VPIPE_OP_NOP };

		kref_get(&probe->ref);   /* the transport's */
		probe->gen = chan.gen;
		notify = vpipe_ring_post(&chan.front, &post, probe, &probe->id);
		if (notify >= 0) {
			chan.probe = probe;
			probe = NULL;
		} else {
			kref_put(&probe->ref, req_release);
			notify = 0;
		}
	}
out:
	spin_unlock_irqrestore(&chan.lock, flags);
	if (notify)
		notify_backend();
	up_read(&chan.area_rw);
	if (probe)
		kref_put(&probe->ref, req_release);
	if (done_probe)
		kref_put(&done_probe->ref, req_release);
	if (again)
		schedule_delayed_work(&chan.watch_work, watch_period());
}

int vpipe_front_submit(const struct vpipe_submit *s, struct vpipe_req **out)
{
	const u32 need = vpipe_link_pages_needed(s->area_bytes);
	const unsigned long deadline = jiffies + timeout_jiffies();
	struct vpipe_req *r;
	unsigned long flags;
	long left;
	int err, notify;

	*out = NULL;
	if (!need)
		return -E2BIG;
	if (!vpipe_front_connected())
		return -EHOSTDOWN;
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	kref_init(&r->ref);
	init_completion(&r->done);
	r->idx = kvmalloc_array(need, sizeof(u32), GFP_KERNEL);
	if (!r->idx) {
		kfree(r);
		return -ENOMEM;
	}
	r->pages.idx = r->idx;

	/* the area's pages: reserved under the lock, filled without it */
	for (;;) {
		down_read(&chan.area_rw);
		spin_lock_irqsave(&chan.lock, flags);
		if (!chan.connected) {
			err = -EHOSTDOWN;
		} else {
			err = vpipe_link_reserve(&chan.area, s, &r->pages);
			r->gen = chan.gen;
		}
		spin_unlock_irqrestore(&chan.lock, flags);
		if (err != -ENOSPC)
			break;
		up_read(&chan.area_rw);
		/* pages come back when other requests end: bounded, still killable */
		left = (long)(deadline - jiffies);
		if (left <= 0) {
			err = -EBUSY;
			goto fail_free;
		}
		if (wait_event_killable_timeout(chan.wq, has_pages(s, r), left) < 0) {
			err = -EINTR;
			goto fail_free;
		}
	}
	if (err) {
		r->pages.layout.data_pages = 0;
		up_read(&chan.area_rw);
		goto fail_free;
	}
	vpipe_link_fill(page_mem, page_ref, NULL, &r->pages, s);

	/* a ring slot; the area stays (area_rw held) unless the connection goes */
	for (;;) {
		spin_lock_irqsave(&chan.lock, flags);
		if (!chan.connected || chan.gen != r->gen) {
			spin_unlock_irqrestore(&chan.lock, flags);
			up_read(&chan.area_rw);
			err = -EHOSTDOWN;
			goto fail_put;
		}
		if (room_for_request())
			break;
		spin_unlock_irqrestore(&chan.lock, flags);
		up_read(&chan.area_rw);
		left = (long)(deadline - jiffies);
		if (left <= 0) {
			err = -EBUSY;
			goto fail_put;
		}
		if (wait_event_killable_timeout(chan.wq, has_slot(r->gen), left) < 0) {
			err = -EINTR;
			goto fail_put;
		}
		down_read(&chan.area_rw);
	}
	kref_get(&r->ref);  /* the transport's reference, dropped when the request ends */
	r->op = s->op;
	vpipe_watch_posted(&chan.watch, get_jiffies_64(), r->op, chan.front.in_flight);
	notify = vpipe_link_post(&chan.front, page_ref, NULL, &r->pages, s, r, &r->id);
	r->posted = true;
	spin_unlock_irqrestore(&chan.lock, flags);
	up_read(&chan.area_rw);
	if (notify)
		notify_backend();
	watch_arm();
	atomic64_inc(&vpipe_stats.ring_requests);
	*out = r;
	return 0;

fail_put:
	vpipe_front_put(r);   /* gives the pages back (to their area, if it still exists) */
	return err;
fail_free:
	kref_put(&r->ref, req_release);
	return err;
}

int vpipe_front_wait(struct vpipe_req *r, u64 *moved, bool *killed)
{
	if (wait_for_completion_killable(&r->done)) {
		/* killed: dom0 may still be using what the request names, so the caller's holds
		 * and frozen sockets must live until the answer; wait without a signal -- but
		 * not longer than request_timeout_ms: then the engine is declared unresponsive
		 * and the teardown ends the request (and every other in flight). */
		if (killed)
			*killed = true;
		while (!completion_done(&r->done))
			if (!wait_event_idle_timeout(chan.wq, completion_done(&r->done), timeout_jiffies()))
				declare_hung(r->gen, "a killed caller's request was not answered");
	}
	*moved = r->moved;
	return r->status;
}

int vpipe_front_readback(struct vpipe_req *r, u64 off, void *buf, u64 len)
{
	int err = 0;

	if (!completion_done(&r->done))
		return -EBUSY;
	if (off + len > (u64)r->pages.layout.data_pages * VPIPE_PAGE_SIZE)
		return -EINVAL;
	down_read(&chan.area_rw);
	if (r->gen != READ_ONCE(chan.gen) || !chan.ring_up) {
		/* the area went away with the connection: only the header it had is left */
		if (r->hdr_saved && off + len <= sizeof(r->lost_hdr))
			memcpy(buf, (const u8 *)&r->lost_hdr + off, len);
		else
			err = -EIO;
	} else
		vpipe_area_read(page_mem, NULL, r->idx, off, buf, len);
	up_read(&chan.area_rw);
	return err;
}

/* ---- interrupt: responses ---------------------------------------------------------------- */

static irqreturn_t vpipe_interrupt(int irq, void *dev_id)
{
	unsigned long flags;
	int r;

	spin_lock_irqsave(&chan.lock, flags);
	if (!chan.connected) {
		spin_unlock_irqrestore(&chan.lock, flags);
		return IRQ_HANDLED;
	}
	r = vpipe_ring_reap(&chan.front, req_done, NULL);
	chan.bad_responses = chan.front.bad_responses;
	spin_unlock_irqrestore(&chan.lock, flags);
	wake_up_all(&chan.wq);
	if (r == -EPROTO) {
		pr_warn_ratelimited("vpipe: the backend broke the ring protocol; reconnecting\n");
		schedule_work(&chan.broken_work);
	}
	return IRQ_HANDLED;
}

/* ---- the area ------------------------------------------------------------------------------ */

static void area_free_pages(void)
{
	u32 i;

	for (i = 0; i < chan.area_n; i++) {
		if (!chan.area_page[i])
			continue;
		if (chan.area_gref && chan.area_gref[i] != INVALID_GRANT_REF)
			/* frees the page once the backend no longer uses it (it should only ever
			 * grant-copy, never map) */
			gnttab_end_foreign_access(chan.area_gref[i], chan.area_page[i]);
		else
			__free_page(chan.area_page[i]);
	}
	kvfree(chan.area_page);
	kvfree(chan.area_gref);
	kvfree(chan.area_free);
	chan.area_page = NULL;
	chan.area_gref = NULL;
	chan.area_free = NULL;
	chan.area_n = 0;
}

/* allocates the area (granted to `otherend`, or plain pages when otherend < 0) */
static int area_alloc(int otherend)
{
	u32 n = clamp_t(u32, READ_ONCE(vpipe_area_pages), 64, VPIPE_AREA_MAX_PAGES), i;
	int err;

	chan.area_page = kvcalloc(n, sizeof(*chan.area_page), GFP_KERNEL);
	chan.area_free = kvmalloc_array(n, sizeof(u32), GFP_KERNEL);
	if (otherend >= 0)
		chan.area_gref = kvmalloc_array(n, sizeof(grant_ref_t), GFP_KERNEL);
	chan.area_n = n;
	if (!chan.area_page || !chan.area_free || (otherend >= 0 && !chan.area_gref))
		goto nomem;
	for (i = 0; i < n; i++) {
		if (chan.area_gref)
			chan.area_gref[i] = INVALID_GRANT_REF;
		chan.area_page[i] = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!chan.area_page[i])
			goto nomem;
		if (otherend < 0)
			continue;
		err = gnttab_grant_foreign_access(otherend, xen_page_to_gfn(chan.area_page[i]), 0);
		if (err < 0) {
			area_free_pages();
			return err;
		}
		chan.area_gref[i] = err;
	}
	vpipe_area_init(&chan.area, chan.area_free, n);
	return 0;
nomem:
	area_free_pages();
	return -ENOMEM;
}

/* ---- connect / teardown (process context, chan.mu held) ----------------------------------- */

/*
 * Ends the connection. Every request in flight completes (-ECANCELED) and its caller lets go of
 * what the request named: holds, frozen sockets, the request's pages. That is safe even when
 * dom0 is alive and may still be working (a hang): the area's grants end below, so dom0 can no
 * longer read or write the pages (gnttab_end_foreign_access frees a page only once dom0 has
 * let go of it; vpiped grant-copies and never maps area pages), and a socket it had not handed
 * back is never restored from its frozen state (req_lost). What the guest cannot stop is a dom0
 * that resumes a file -> file copy it had started: its writes land on the destination's blocks
 * after the guest cut the file back to the answered prefix (docs/faults.md, "engine hangs").
 */
static void teardown_locked(void)
{
	struct vpipe_req *probe;
	unsigned long flags;

	spin_lock_irqsave(&chan.lock, flags);
	chan.connected = false;
	vpipe_ring_cancel_all(&chan.front, req_lost, NULL);
	chan.gen++;
	chan.hung_teardown = false;
	chan.hung_pending = false;
	probe = chan.probe;
	chan.probe = NULL;
	spin_unlock_irqrestore(&chan.lock, flags);
	if (probe)
		kref_put(&probe->ref, req_release);
	wake_up_all(&chan.wq);
	if (!chan.ring_up)
		return;
#ifdef VPIPE_TEST
	if (vpipe_testeng_active())
		vpipe_testeng_quiesce();   /* its requests end before their pages go */
#endif
	/* submitters and readers see !connected / another gen and let go of the area */
	down_write(&chan.area_rw);
	spin_lock_irqsave(&chan.lock, flags);
	chan.ring_up = false;
	spin_unlock_irqrestore(&chan.lock, flags);
	area_free_pages();
	up_write(&chan.area_rw);
	if (chan.irq > 0)
		unbind_from_irqhandler(chan.irq, &chan);  /* closes the port too */
	else if (chan.evtchn && chan.dev)
		xenbus_free_evtchn(chan.dev, chan.evtchn);
	chan.irq = 0;
	chan.evtchn = 0;
#ifdef VPIPE_TEST
	if (vpipe_testeng_active()) {
		free_page((unsigned long)chan.sring);
		chan.sring = NULL;
		return;
	}
#endif
	xenbus_teardown_ring((void **)&chan.sring, 1, &chan.ring_ref);
}

static int setup_ring_locked(struct xenbus_device *dev)
{
	struct xenbus_transaction xbt;
	const char *what;
	int err;

	err = xenbus_setup_ring(dev, GFP_KERNEL, (void **)&chan.sring, 1, &chan.ring_ref);
	if (err)
		return err;
	vpipe_ring_init(&chan.front, chan.sring);
	err = area_alloc(dev->otherend_id);
	if (err) {
		xenbus_teardown_ring((void **)&chan.sring, 1, &chan.ring_ref);
		return err;
	}
	chan.ring_up = true;
	err = xenbus_alloc_evtchn(dev, &chan.evtchn);
	if (err)
		goto fail;
	err = bind_evtchn_to_irqhandler(chan.evtchn, vpipe_interrupt, 0, "vpipe", &chan);
	if (err < 0) {
		xenbus_dev_fatal(dev, err, "bind_evtchn_to_irqhandler");
		goto fail;
	}
	chan.irq = err;
again:
	err = xenbus_transaction_start(&xbt);
	if (err) {
		xenbus_dev_fatal(dev, err, "starting transaction");
		goto fail;
	}
	what = "ring-ref";
	err = xenbus_printf(xbt, dev->nodename, what, "%u", chan.ring_ref);
	if (!err) {
		what = "event-channel";
		err = xenbus_printf(xbt, dev->nodename, what, "%u", chan.evtchn);
	}
	if (!err) {
		what = "protocol-version";
		err = xenbus_printf(xbt, dev->nodename, what, "%u", VPIPE_PROTOCOL_VERSION);
	}
	if (err) {
		xenbus_transaction_end(xbt, 1);
		xenbus_dev_fatal(dev, err, "writing %s", what);
		goto fail;
	}
	err = xenbus_transaction_end(xbt, 0);
	if (err == -EAGAIN)
		goto again;
	if (err) {
		xenbus_dev_fatal(dev, err, "completing transaction");
		goto fail;
	}
	return 0;
fail:
	teardown_locked();
	return err;
}

/* the backend is InitWait (first time, or after it left Connected) */
static void backend_initwait(struct xenbus_device *dev)
{
	unsigned int version, pages;

	teardown_locked();
	version = xenbus_read_unsigned(dev->otherend, "protocol-version", 0);
	pages = xenbus_read_unsigned(dev->otherend, "max-desc-pages", 0);
	/* a mismatch is reported (error node) without leaving Initialising: switching to
	 * Closing would make the backend answer InitWait again, and so on forever */
	if (version != VPIPE_PROTOCOL_VERSION) {
		xenbus_dev_error(dev, -EPROTO, "backend protocol-version %u (want %u)", version,
				 VPIPE_PROTOCOL_VERSION);
		goto stay;
	}
	if (pages < VPIPE_DESC_MAX_PAGES) {
		xenbus_dev_error(dev, -EPROTO, "backend max-desc-pages %u (want %u)", pages,
				 VPIPE_DESC_MAX_PAGES);
		goto stay;
	}
	if (dev->state != XenbusStateInitialising)
		xenbus_switch_state(dev, XenbusStateInitialising);
	if (setup_ring_locked(dev))
		return;
	xenbus_switch_state(dev, XenbusStateInitialised);
	return;
stay:
	if (dev->state != XenbusStateInitialising)
		xenbus_switch_state(dev, XenbusStateInitialising);
}

static void backend_connected(struct xenbus_device *dev)
{
	unsigned long flags;

	if (!chan.ring_up || dev->state != XenbusStateInitialised)
		return;
	spin_lock_irqsave(&chan.lock, flags);
	chan.connected = true;
	spin_unlock_irqrestore(&chan.lock, flags);
	xenbus_switch_state(dev, XenbusStateConnected);
	wake_up_all(&chan.wq);
	dev_info(&dev->dev, "vpipe: connected to the engine (backend domain %d, %u area pages)\n",
		 dev->otherend_id, chan.area_n);
}

static void vpipe_backend_changed(struct xenbus_device *dev, enum xenbus_state backend_state)
{
	mutex_lock(&chan.mu);
	if (chan.dev != dev) {
		mutex_unlock(&chan.mu);
		return;
	}
	switch (backend_state) {
	case XenbusStateInitWait:
		backend_initwait(dev);
		break;
	case XenbusStateConnected:
		backend_connected(dev);
		break;
	case XenbusStateInitialised:
	case XenbusStateReconfiguring:
	case XenbusStateReconfigured:
		break;
	case XenbusStateInitialising:
	case XenbusStateUnknown:
	case XenbusStateClosing:
	case XenbusStateClosed:
	default:
		/* vpiped stopped or went away: fail what is in flight, wait for it to return */
		if (chan.ring_up || chan.connected) {
			dev_info(&dev->dev, "vpipe: the engine left (state %d)\n", backend_state);
			teardown_locked();
		}
		if (dev->state != XenbusStateInitialising)
			xenbus_switch_state(dev, XenbusStateInitialising);
		break;
	}
	mutex_unlock(&chan.mu);
}

#ifdef VPIPE_TEST
static int test_connect(void);
#endif

/* drops the connection and starts over (chan.mu held) */
static void restart_locked(void)
{
#ifdef VPIPE_TEST
	if (vpipe_testeng_active()) {
		/* the stand-in engine broke the ring on purpose: start over, as with a backend */
		teardown_locked();
		test_connect();
		return;
	}
#endif
	if (chan.dev && chan.ring_up) {
		teardown_locked();
		xenbus_switch_state(chan.dev, XenbusStateInitialising);
		/* reconnect when the backend, seeing us leave, is InitWait again */
		if (xenbus_read_driver_state(chan.dev->otherend) == XenbusStateInitWait)
			backend_initwait(chan.dev);
	}
}

static void broken_work_fn(struct work_struct *w)
{
	mutex_lock(&chan.mu);
	restart_locked();
	mutex_unlock(&chan.mu);
}

/* the engine was declared unresponsive: the same as a protocol break, for that connection only */
static void hung_work_fn(struct work_struct *w)
{
	unsigned long flags;
	bool go;

	mutex_lock(&chan.mu);
	spin_lock_irqsave(&chan.lock, flags);
	go = chan.hung_pending && chan.hung_gen == chan.gen && chan.connected;
	chan.hung_pending = go;
	chan.hung_teardown = go;
	spin_unlock_irqrestore(&chan.lock, flags);
	if (go)
		restart_locked();
	mutex_unlock(&chan.mu);
}

static int vpipe_front_probe(struct xenbus_device *dev, const struct xenbus_device_id *id)
{
	mutex_lock(&chan.mu);
	if (chan.dev) {
		mutex_unlock(&chan.mu);
		dev_warn(&dev->dev, "vpipe: a second vpipe device is ignored\n");
		return -EBUSY;
	}
	chan.dev = dev;
	mutex_unlock(&chan.mu);
	/* xenbus reports the backend's current state through otherend_changed */
	return 0;
}

static void vpipe_front_remove(struct xenbus_device *dev)
{
	mutex_lock(&chan.mu);
	if (chan.dev == dev) {
		teardown_locked();
		chan.dev = NULL;
	}
	mutex_unlock(&chan.mu);
	flush_work(&chan.broken_work);
	flush_work(&chan.hung_work);
}

static int vpipe_front_resume(struct xenbus_device *dev)
{
	/* after save/restore or migration the grants are gone: start over */
	mutex_lock(&chan.mu);
	teardown_locked();
	mutex_unlock(&chan.mu);
	return 0;
}

static const struct xenbus_device_id vpipe_front_ids[] = {
	{ "vpipe" },
	{ "" }
};

static struct xenbus_driver vpipe_front_driver = {
	.ids = vpipe_front_ids,
	.probe = vpipe_front_probe,
	.remove = vpipe_front_remove,
	.resume = vpipe_front_resume,
	.otherend_changed = vpipe_backend_changed,
	.not_essential = true,
};

#ifdef VPIPE_TEST
/* Test builds on plain QEMU: the same ring and area in ordinary pages, the stand-in engine
 * (vpipe_testeng.c) as the backend on them, its kicks delivered to vpipe_interrupt(). */
static int test_connect(void)
{
	int err;

	chan.sring = (struct vpipe_sring *)get_zeroed_page(GFP_KERNEL);
	if (!chan.sring)
		return -ENOMEM;
	vpipe_ring_init(&chan.front, chan.sring);
	err = area_alloc(-1);
	if (err) {
		free_page((unsigned long)chan.sring);
		chan.sring = NULL;
		return err;
	}
	chan.ring_up = true;
	chan.connected = true;
	vpipe_testeng_attach(chan.sring);
	pr_info("vpipe: TEST BUILD: the stand-in engine is connected (%u area pages)\n", chan.area_n);
	return 0;
}

struct vpipe_sring *vpipe_front_test_sring(void)
{
	return chan.sring;
}

uint8_t *vpipe_front_test_page(uint32_t ref)
{
	return ref < chan.area_n ? page_address(chan.area_page[ref]) : NULL;
}

void vpipe_front_test_interrupt(void)
{
	vpipe_interrupt(0, &chan);
}

void vpipe_front_test_set_down(bool down)
{
	mutex_lock(&chan.mu);
	if (down && chan.ring_up)
		teardown_locked();
	else if (!down && !chan.ring_up)
		test_connect();
	mutex_unlock(&chan.mu);
	flush_work(&chan.broken_work);   /* a reconnect after a broken ring is done too */
}
#endif

int vpipe_front_init(void)
{
	int err;

	mutex_init(&chan.mu);
	spin_lock_init(&chan.lock);
	init_rwsem(&chan.area_rw);
	init_waitqueue_head(&chan.wq);
	INIT_WORK(&chan.broken_work, broken_work_fn);
	INIT_WORK(&chan.hung_work, hung_work_fn);
	INIT_DELAYED_WORK(&chan.watch_work, watch_fn);
#ifdef VPIPE_TEST
	if (vpipe_testeng_active()) {
		err = vpipe_testeng_start();
		if (!err)
			err = test_connect();
		return err;
	}
#endif
	if (!xen_domain()) {
		pr_info("vpipe: not running on Xen: no engine (operations answer EHOSTDOWN)\n");
		return 0;
	}
	err = xenbus_register_frontend(&vpipe_front_driver);
	if (err)
		return err;
	registered = true;
	return 0;
}

void vpipe_front_exit(void)
{
	if (registered)
		xenbus_unregister_driver(&vpipe_front_driver);
	registered = false;
	cancel_delayed_work_sync(&chan.watch_work);
	flush_work(&chan.broken_work);
	flush_work(&chan.hung_work);
#ifdef VPIPE_TEST
	vpipe_testeng_stop();   /* drains what the stand-in engine is doing */
#endif
	mutex_lock(&chan.mu);
	teardown_locked();
	mutex_unlock(&chan.mu);
}
