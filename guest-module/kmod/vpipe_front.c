// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_front.c -- xenbus frontend of device type "vpipe" (docs/protocol.md §5).
 *
 * Handshake: vpiped creates device/vpipe/0 with the backend in InitWait. When the backend is
 * InitWait we allocate and grant the ring page, allocate an event channel, write ring-ref,
 * event-channel and protocol-version, and switch to Initialised; when the backend is Connected
 * so are we. When the backend leaves Connected (vpiped stopped or restarted) every request in
 * flight fails with -ECANCELED, the ring and port are freed, we go back to Initialising and
 * reconnect as soon as the backend is InitWait again.
 *
 * The backend is not trusted: responses are copied once, their ids must name a request in
 * flight, there are never more responses than requests, and `moved` is clamped to the
 * request's length. A backend that breaks these rules loses the channel.
 */
#include <linux/completion.h>
#include <linux/interrupt.h>
#include <linux/kref.h>
#include <linux/module.h>
#include <linux/mutex.h>
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
#ifdef VPIPE_TEST
#include "vpipe_testeng.h"
#endif

#define NR_SLOTS VPIPE_RING_SIZE

struct vpipe_req {
	struct kref ref;
	u64 id;
	u64 length;
	u32 nr_pages;
	bool granted;          /* the descriptor pages are granted to the backend */
	bool pages_lost;       /* a page stayed in use by the backend: handed to the grant table */
	struct page *pages[VPIPE_DESC_MAX_PAGES];
	grant_ref_t gref[VPIPE_DESC_MAX_PAGES];
	struct completion done;
	int status;
	u64 moved;
#ifdef VPIPE_TEST
	u8 op;
	u32 desc_bytes;
	struct work_struct test_work;   /* the stand-in engine's execution of this request */
#endif
};

struct vpipe_chan {
	struct mutex mu;                 /* connect / teardown */
	spinlock_t lock;                 /* ring, slots, connected */
	struct xenbus_device *dev;
	bool connected;
	bool ring_up;                    /* ring + evtchn allocated (Initialised or Connected) */
	struct vpipe_front_ring ring;
	struct vpipe_sring *sring;
	grant_ref_t ring_ref;
	evtchn_port_t evtchn;
	int irq;
	struct vpipe_req *slot[NR_SLOTS];
	u64 seq;
	wait_queue_head_t slot_wq;
	u64 bad_responses;
	struct work_struct broken_work;  /* protocol error seen in the interrupt handler */
};

static struct vpipe_chan chan;
static bool registered;

static void req_release(struct kref *ref)
{
	struct vpipe_req *r = container_of(ref, struct vpipe_req, ref);
	u32 i;

	/* granted pages are never freed here: grants end first (end_grants) */
	WARN_ON(r->granted);
	for (i = 0; i < r->nr_pages; i++)
		if (r->pages[i])
			__free_page(r->pages[i]);
	kfree(r);
}

void vpipe_front_put(struct vpipe_req *r)
{
	if (r)
		kref_put(&r->ref, req_release);
}

/* Takes the pages back from the backend. A page the backend still uses (it should only ever
 * grant-copy, never map) goes to the grant table's deferred list and is lost to us. */
static void end_grants(struct vpipe_req *r)
{
	u32 i;

	if (!r->granted)
		return;
	for (i = 0; i < r->nr_pages; i++) {
		if (gnttab_try_end_foreign_access(r->gref[i]))
			continue;
		gnttab_end_foreign_access(r->gref[i], r->pages[i]);
		r->pages[i] = NULL;
		r->pages_lost = true;
	}
	r->granted = false;
}

/* Called with chan.lock held: the request leaves its slot with `status`. */
static void finish_slot(u32 slot, int status, u64 moved)
{
	struct vpipe_req *r = chan.slot[slot];

	chan.slot[slot] = NULL;
	end_grants(r);
	r->status = status;
	r->moved = moved > r->length ? r->length : moved;
	complete_all(&r->done);
	kref_put(&r->ref, req_release);  /* the transport's reference */
}

static bool ring_has_room(void)
{
	u32 i;

	if (!chan.connected)
		return true;   /* the waiter sees -EHOSTDOWN */
	if (chan.ring_up && RING_FULL(&chan.ring))
		return false;
	for (i = 0; i < NR_SLOTS; i++)
		if (!chan.slot[i])
			return true;
	return false;
}

static bool ring_has_room_locked(void)
{
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&chan.lock, flags);
	ok = ring_has_room();
	spin_unlock_irqrestore(&chan.lock, flags);
	return ok;
}

bool vpipe_front_connected(void)
{
	return READ_ONCE(chan.connected);
}

u64 vpipe_front_bad_responses(void)
{
	return READ_ONCE(chan.bad_responses);
}

#ifdef VPIPE_TEST
static struct workqueue_struct *test_wq;

/* executes a request on the stand-in engine, then answers it like the interrupt handler */
static void testeng_work_fn(struct work_struct *w)
{
	struct vpipe_req *r = container_of(w, struct vpipe_req, test_work);
	void *stream = kvzalloc(VPIPE_DESC_MAX_BYTES, GFP_KERNEL);
	unsigned long flags;
	u64 moved = 0, slot = r->id & 0xff;
	int st = -ENOSPC;
	u32 i;

	if (stream) {
		for (i = 0; i < r->nr_pages; i++)
			memcpy((u8 *)stream + i * VPIPE_PAGE_SIZE, page_address(r->pages[i]),
			       VPIPE_PAGE_SIZE);
		st = vpipe_testeng_run(r->op, r->length, stream, r->desc_bytes, &moved);
		kvfree(stream);
	}
	spin_lock_irqsave(&chan.lock, flags);
	if (chan.slot[slot] == r && r->id == chan.slot[slot]->id)
		finish_slot(slot, st, moved);
	spin_unlock_irqrestore(&chan.lock, flags);
	wake_up_all(&chan.slot_wq);
	vpipe_front_put(r);
}
#endif

int vpipe_front_submit(u8 op, u64 length, const void *desc, u32 desc_bytes, u32 nr_pages,
		       struct vpipe_req **out)
{
	struct vpipe_request *rq;
	struct vpipe_req *r;
	unsigned long flags;
	bool notify;
	u32 i, slot;
	int err;

	*out = NULL;
	if (nr_pages > VPIPE_DESC_MAX_PAGES || desc_bytes > nr_pages * VPIPE_PAGE_SIZE)
		return -EINVAL;
	if (!vpipe_front_connected())
		return -EHOSTDOWN;
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	kref_init(&r->ref);
	init_completion(&r->done);
	r->length = length;
	r->nr_pages = nr_pages;
	for (i = 0; i < nr_pages; i++) {
		u32 off = i * VPIPE_PAGE_SIZE, n;

		r->pages[i] = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!r->pages[i]) {
			vpipe_front_put(r);
			return -ENOMEM;
		}
		if (off < desc_bytes) {
			n = min_t(u32, VPIPE_PAGE_SIZE, desc_bytes - off);
			memcpy(page_address(r->pages[i]), (const u8 *)desc + off, n);
		}
	}

	for (;;) {
		spin_lock_irqsave(&chan.lock, flags);
		if (!chan.connected) {
			spin_unlock_irqrestore(&chan.lock, flags);
			vpipe_front_put(r);
			return -EHOSTDOWN;
		}
		if (ring_has_room())
			break;
		spin_unlock_irqrestore(&chan.lock, flags);
		if (wait_event_killable(chan.slot_wq, ring_has_room_locked())) {
			vpipe_front_put(r);
			return -EINTR;
		}
	}
	/* chan.lock held, connected, a slot and a ring entry free */
	for (slot = 0; slot < NR_SLOTS && chan.slot[slot]; slot++)
		;
#ifdef VPIPE_TEST
	if (vpipe_testeng_active()) {
		/* the stand-in engine: same slots, ids and completion path, no ring or grants */
		r->op = op;
		r->desc_bytes = desc_bytes;
		r->id = (++chan.seq << 8) | slot;
		kref_get(&r->ref);      /* the transport's reference */
		kref_get(&r->ref);      /* the worker's */
		chan.slot[slot] = r;
		spin_unlock_irqrestore(&chan.lock, flags);
		INIT_WORK(&r->test_work, testeng_work_fn);
		queue_work(test_wq, &r->test_work);
		atomic64_inc(&vpipe_stats.ring_requests);
		*out = r;
		return 0;
	}
#endif
	for (i = 0; i < nr_pages; i++) {
		err = gnttab_grant_foreign_access(chan.dev->otherend_id,
						  xen_page_to_gfn(r->pages[i]), 0);
		if (err < 0) {
			r->nr_pages = i;
			r->granted = true;
			end_grants(r);
			r->nr_pages = nr_pages;
			spin_unlock_irqrestore(&chan.lock, flags);
			vpipe_front_put(r);
			return -ENOSPC;
		}
		r->gref[i] = err;
	}
	r->granted = nr_pages > 0;
	r->id = (++chan.seq << 8) | slot;
	kref_get(&r->ref);              /* the transport's reference, dropped at the response */
	chan.slot[slot] = r;

	rq = RING_GET_REQUEST(&chan.ring, chan.ring.req_prod_pvt);
	memset(rq, 0, sizeof(*rq));
	rq->id = r->id;
	rq->length = length;
	rq->op = op;
	rq->nr_pages = (u8)nr_pages;
	rq->desc_bytes = desc_bytes;
	for (i = 0; i < nr_pages; i++)
		rq->page[i] = r->gref[i];
	chan.ring.req_prod_pvt++;
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&chan.ring, notify);
	if (notify)
		notify_remote_via_irq(chan.irq);
	spin_unlock_irqrestore(&chan.lock, flags);
	atomic64_inc(&vpipe_stats.ring_requests);
	*out = r;
	return 0;
}

int vpipe_front_wait(struct vpipe_req *r, u64 *moved, bool *killed)
{
	if (wait_for_completion_killable(&r->done)) {
		/* killed: dom0 may still be using what the request names, so the caller's holds
		 * and frozen sockets must live until the answer; wait without a signal. */
		if (killed)
			*killed = true;
		wait_for_completion_state(&r->done, TASK_IDLE);
	}
	*moved = r->moved;
	return r->status;
}

int vpipe_front_readback(struct vpipe_req *r, void *buf, size_t len)
{
	size_t off = 0;
	u32 i;

	if (!completion_done(&r->done) || r->granted)
		return -EBUSY;
	if (r->pages_lost)
		return -EIO;
	if (len > (size_t)r->nr_pages * VPIPE_PAGE_SIZE)
		return -EINVAL;
	for (i = 0; off < len; i++) {
		size_t n = min_t(size_t, VPIPE_PAGE_SIZE, len - off);

		memcpy((u8 *)buf + off, page_address(r->pages[i]), n);
		off += n;
	}
	return 0;
}

/* ---- interrupt: responses ---------------------------------------------------------------- */

static irqreturn_t vpipe_interrupt(int irq, void *dev_id)
{
	unsigned long flags;
	bool broken = false;
	int more;

	spin_lock_irqsave(&chan.lock, flags);
	if (!chan.connected) {
		spin_unlock_irqrestore(&chan.lock, flags);
		return IRQ_HANDLED;
	}
	do {
		RING_IDX prod = READ_ONCE(chan.ring.sring->rsp_prod), cons;

		virt_rmb();  /* read the responses after the index */
		/* never more responses than requests posted */
		if (prod - chan.ring.rsp_cons > chan.ring.req_prod_pvt - chan.ring.rsp_cons) {
			broken = true;
			break;
		}
		for (cons = chan.ring.rsp_cons; cons != prod; cons++) {
			struct vpipe_response rsp;
			u64 slot;

			RING_COPY_RESPONSE(&chan.ring, cons, &rsp);
			slot = rsp.id & 0xff;
			if (slot >= NR_SLOTS || !chan.slot[slot] || chan.slot[slot]->id != rsp.id) {
				chan.bad_responses++;
				broken = true;
				continue;
			}
			if (rsp.status > 0 || rsp.status < -4095)
				rsp.status = -EIO;
			finish_slot(slot, rsp.status, rsp.moved);
		}
		chan.ring.rsp_cons = prod;
		if (broken)
			break;
		RING_FINAL_CHECK_FOR_RESPONSES(&chan.ring, more);
	} while (more);
	spin_unlock_irqrestore(&chan.lock, flags);
	wake_up_all(&chan.slot_wq);
	if (broken) {
		pr_warn_ratelimited("vpipe: the backend broke the ring protocol; reconnecting\n");
		schedule_work(&chan.broken_work);
	}
	return IRQ_HANDLED;
}

/* ---- connect / teardown (process context, chan.mu held) ----------------------------------- */

static void teardown_locked(void)
{
	unsigned long flags;
	u32 i;

	spin_lock_irqsave(&chan.lock, flags);
	chan.connected = false;
	for (i = 0; i < NR_SLOTS; i++)
		if (chan.slot[i])
			finish_slot(i, -ECANCELED, 0);
	spin_unlock_irqrestore(&chan.lock, flags);
	wake_up_all(&chan.slot_wq);
	if (!chan.ring_up)
		return;
	if (chan.irq > 0)
		unbind_from_irqhandler(chan.irq, &chan);  /* closes the port too */
	else if (chan.evtchn && chan.dev)
		xenbus_free_evtchn(chan.dev, chan.evtchn);
	chan.irq = 0;
	chan.evtchn = 0;
	xenbus_teardown_ring((void **)&chan.sring, 1, &chan.ring_ref);
	chan.ring_up = false;
}

static int setup_ring_locked(struct xenbus_device *dev)
{
	struct xenbus_transaction xbt;
	const char *what;
	int err;

	err = xenbus_setup_ring(dev, GFP_KERNEL, (void **)&chan.sring, 1, &chan.ring_ref);
	if (err)
		return err;
	SHARED_RING_INIT(chan.sring);
	FRONT_RING_INIT(&chan.ring, chan.sring, VPIPE_PAGE_SIZE);
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
	wake_up_all(&chan.slot_wq);
	dev_info(&dev->dev, "vpipe: connected to the engine (backend domain %d)\n",
		 dev->otherend_id);
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

static void broken_work_fn(struct work_struct *w)
{
	mutex_lock(&chan.mu);
	if (chan.dev && chan.ring_up) {
		teardown_locked();
		xenbus_switch_state(chan.dev, XenbusStateInitialising);
		/* reconnect when the backend, seeing us leave, is InitWait again */
		if (xenbus_read_driver_state(chan.dev->otherend) == XenbusStateInitWait)
			backend_initwait(chan.dev);
	}
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

int vpipe_front_init(void)
{
	int err;

	mutex_init(&chan.mu);
	spin_lock_init(&chan.lock);
	init_waitqueue_head(&chan.slot_wq);
	INIT_WORK(&chan.broken_work, broken_work_fn);
#ifdef VPIPE_TEST
	if (vpipe_testeng_active()) {
		test_wq = alloc_workqueue("vpipe_testeng", WQ_UNBOUND, 0);
		if (!test_wq)
			return -ENOMEM;
		chan.connected = true;
		pr_info("vpipe: TEST BUILD: the stand-in engine is connected\n");
		return 0;
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
#ifdef VPIPE_TEST
	if (test_wq)
		destroy_workqueue(test_wq);   /* drains what is queued */
	test_wq = NULL;
#endif
	if (registered)
		xenbus_unregister_driver(&vpipe_front_driver);
	registered = false;
	flush_work(&chan.broken_work);
	mutex_lock(&chan.mu);
	teardown_locked();
	mutex_unlock(&chan.mu);
}
