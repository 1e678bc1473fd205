// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_testeng.c -- TEST BUILDS ONLY (VPIPE_TEST=1): a stand-in for dom0 inside the guest, so
 * that the module's whole request path -- the guest core building descriptor streams and
 * posting them on the ring, the area's pages, the response consumer -- runs byte-exact on
 * plain QEMU without Xen.
 *
 * With test_engine_disk=/dev/vda (the whole disk behind vdev_map) the "engine" is the back end
 * of the module's ring: it takes requests with the same checks as vpiped (RING_COPY_REQUEST,
 * producer index checked), copies the area out of the pages the request names, validates it
 * with the protocol's one validator (common/protocol/check.c, which vpiped runs too), executes
 * FILE_TO_FILE requests with reads and writes of the raw disk (what dom0 does to the image) and
 * flushes, then answers on the ring and "interrupts" the frontend. The disk's own page cache is
 * dropped before and after, so it never serves stale sectors. Socket requests are answered as
 * the conformance script says (by default VALID with the state unchanged and nothing moved; the
 * script can refuse them, reset them or break the protocol). The real engine is vpiped
 * on Xen (tests/xen).
 */
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/inet.h>
#include <linux/moduleparam.h>
#include <linux/pagemap.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#include "protocol/check.h"
#include "vpipe_debug.h"
#include "vpipe_front.h"
#include "vpipe_testeng.h"

static char *test_engine_disk;
module_param(test_engine_disk, charp, 0444);
MODULE_PARM_DESC(test_engine_disk, "TEST BUILD: execute file->file requests on this raw disk");

static char *test_engine_ip;
module_param(test_engine_ip, charp, 0444);
MODULE_PARM_DESC(test_engine_ip, "TEST BUILD: the VM's address, as the toolstack would tell vpiped");

static unsigned int test_engine_delay_ms;
module_param(test_engine_delay_ms, uint, 0644);
MODULE_PARM_DESC(test_engine_delay_ms, "TEST BUILD: the stand-in engine answers this much later (NOPs at once, as vpiped)");

static bool test_engine_withhold;
module_param(test_engine_withhold, bool, 0644);
MODULE_PARM_DESC(test_engine_withhold,
		 "TEST BUILD: the stand-in engine hangs: it takes requests (NOPs too) and never executes or answers them");

static struct workqueue_struct *test_wq;
static DEFINE_SPINLOCK(back_lock);
static struct vpipe_back_ring back;
static bool attached;
static struct work_struct take_work;

struct test_req {
	struct work_struct work;
	struct vpipe_request req;
};

/* the conformance corpus's script (enum vc_ans of tests/conformance/corpus.h) and what the
 * engine took since */
enum { ANS_OK, ANS_STATUS, ANS_SHORT, ANS_BOGUS_STATUS, ANS_BOGUS_MOVED, ANS_BOGUS_ID,
       ANS_BOGUS_PROD, ANS_ECHO, ANS_RESET, ANS_BAD_TUPLE, ANS_BIG_QUEUES, ANS_DOWN,
       ANS_TAKEN_LOST, ANS_VALID_LOST };
#define REC_BYTES (4u << 20)
static DEFINE_MUTEX(rec_lock);
static struct vpipe_dbg_script script;   /* all zero: ANS_OK */
static u8 *rec_buf;
static u32 rec_used, rec_count, rec_lost;

bool vpipe_testeng_active(void)
{
	return test_engine_disk && *test_engine_disk;
}

/* the disk's size, for the validator */
static int disk_cb(void *arg, uint32_t vdev, struct vpipe_check_disk *out)
{
	struct file *disk = arg;

	out->size = i_size_read(disk->f_mapping->host);
	out->writable = 1;
	return 0;
}

struct cursor {
	const u8 *desc;
	u32 first, n, i;
	u64 used;     /* bytes of segment i consumed */
};

static void seg_at(const struct cursor *c, struct vpipe_segment *s)
{
	vpipe_desc_segment(c->desc, c->first + c->i, s);
}

static int copy_stream(struct file *disk, const u8 *desc, const struct vpipe_checked *ck,
		       u64 length, u64 limit, u64 *moved)
{
	struct cursor s = { desc, ck->src.first_segment, ck->src.nr_segments, 0, 0 };
	struct cursor d = { desc, ck->dst.first_segment, ck->dst.nr_segments, 0, 0 };
	const size_t bufsz = 1u << 20;
	u8 *buf = kvmalloc(bufsz, GFP_KERNEL);
	int err = 0;

	if (!buf)
		return -ENOSPC;
	*moved = 0;
	length = min(length, limit);
	while (*moved < length) {
		struct vpipe_segment ss, ds;
		loff_t rp, wp;
		ssize_t r;
		u64 n;

		if (s.i >= s.n || d.i >= d.n) {
			err = -EINVAL;
			break;
		}
		seg_at(&s, &ss);
		seg_at(&d, &ds);
		n = min3((u64)bufsz, (u64)ss.length - s.used, (u64)ds.length - d.used);
		n = min(n, length - *moved);
		rp = ss.disk_offset + s.used;
		wp = ds.disk_offset + d.used;
		if (ss.flags & VPIPE_SEG_ZERO) {
			memset(buf, 0, n);
		} else {
			r = kernel_read(disk, buf, n, &rp);
			if (r != n) {
				err = -EIO;
				break;
			}
		}
		r = kernel_write(disk, buf, n, &wp);
		if (r != n) {
			err = -EIO;
			break;
		}
		*moved += n;
		s.used += n;
		d.used += n;
		if (s.used == ss.length) {
			s.i++;
			s.used = 0;
		}
		if (d.used == ds.length) {
			d.i++;
			d.used = 0;
		}
	}
	kvfree(buf);
	if (!err)
		err = vfs_fsync(disk, 0);
	if (err)
		*moved = 0;   /* durable bytes only: the test engine reports all or nothing */
	return err;
}

/* copies bytes [0, len) of the request's area (pages named by refs) into buf */
static int read_area(const u32 *refs, u32 nr_refs, u8 *buf, u32 len)
{
	u32 off = 0;

	while (off < len) {
		u32 idx = off / VPIPE_PAGE_SIZE, n = min_t(u32, VPIPE_PAGE_SIZE, len - off);
		u8 *p = idx < nr_refs ? vpipe_front_test_page(refs[idx]) : NULL;

		if (!p)
			return -EINVAL;
		memcpy(buf + off, p, n);
		off += n;
	}
	return 0;
}

/* appends one record for the probe (VPIPE_IOC_DBG_REQS) */
static void record(const struct vpipe_request *req, int verdict, const u8 *desc, u32 stream_len,
		   const u32 *refs, u32 nr_refs, const struct vpipe_checked *ck)
{
	const struct vpipe_desc_header *h = (const void *)desc;
	struct vpipe_dbg_rec r = { .ring = *req, .verdict = verdict, .stream_len = stream_len };
	const struct vpipe_checked_ep *eps[2];
	const struct vpipe_endpoint *hep[2];
	u64 need;
	u8 *area = NULL;
	u32 i, k, area_len = 0;

	if (!verdict && ck) {
		eps[0] = &ck->src;
		eps[1] = &ck->dst;
		hep[0] = &h->src;
		hep[1] = &h->dst;
		for (i = 0; i < 2; i++) {
			if (eps[i]->kind != VPIPE_EP_SOCKET)
				continue;
			r.carry_len[i][0] = hep[i]->tcp.sndq_len;
			r.carry_len[i][1] = hep[i]->tcp.rcvq_len;
			r.carry_len[i][2] = hep[i]->tail_len;
			area_len = max(area_len, eps[i]->carry_offset + r.carry_len[i][0] + r.carry_len[i][1] +
					 r.carry_len[i][2]);
		}
	}
	need = sizeof(r) + stream_len;
	for (i = 0; i < 2; i++)
		for (k = 0; k < 3; k++)
			need += r.carry_len[i][k];
	if (area_len) {
		area = kvmalloc(area_len, GFP_KERNEL);
		if (!area || read_area(refs, nr_refs, area, area_len)) {
			kvfree(area);
			area = NULL;
		}
	}
	mutex_lock(&rec_lock);
	if (!rec_buf || rec_used + need > REC_BYTES || (area_len && !area)) {
		rec_lost++;
	} else {
		memcpy(rec_buf + rec_used, &r, sizeof(r));
		rec_used += sizeof(r);
		memcpy(rec_buf + rec_used, desc, stream_len);
		rec_used += stream_len;
		/* a refused request (verdict != 0) comes without ck and carries nothing */
		for (i = 0; ck && i < 2; i++) {
			u32 off = i == 0 ? ck->src.carry_offset : ck->dst.carry_offset;

			for (k = 0; k < 3; k++) {
				memcpy(rec_buf + rec_used, area + off, r.carry_len[i][k]);
				rec_used += r.carry_len[i][k];
				off += r.carry_len[i][k];
			}
		}
		rec_count++;
	}
	mutex_unlock(&rec_lock);
	kvfree(area);
}

/* writes the result fields of one socket endpoint into the area's header (page 0) */
static void write_ep(const u32 *refs, int source, u32 flags, const struct vpipe_tcp_state *tcp,
		     u64 recorded)
{
	u8 *page = vpipe_front_test_page(refs[0]);
	struct vpipe_desc_header *h = (void *)page;
	struct vpipe_endpoint *ep = source ? &h->src : &h->dst;

	if (!page)
		return;
	if (recorded)
		VPIPE_EP_RESULT_MOVED(ep) = recorded;
	if (tcp)
		ep->tcp = *tcp;
	ep->tail_len = 0;
	ep->result_flags = flags;
}

/* the corpus's answers for socket requests: every socket endpoint gets the same treatment */
static int answer_sockets(const struct vpipe_request *req, const struct vpipe_dbg_script *sc,
			  const u8 *desc, const struct vpipe_checked *ck, const u32 *refs, u64 *moved)
{
	const struct vpipe_desc_header *h = (const void *)desc;
	const struct vpipe_checked_ep *eps[2] = { &ck->src, &ck->dst };
	const struct vpipe_endpoint *hep[2] = { &h->src, &h->dst };
	int i;

	for (i = 0; i < 2; i++) {
		struct vpipe_tcp_state t;

		if (eps[i]->kind != VPIPE_EP_SOCKET)
			continue;
		t = hep[i]->tcp;
		switch (sc->ans) {
		case ANS_OK:
		case ANS_ECHO:
			write_ep(refs, i == 0, VPIPE_EPF_VALID, &t, 0);
			break;
		case ANS_RESET:
			write_ep(refs, i == 0, VPIPE_EPF_RESET, NULL, 0);
			break;
		case ANS_BAD_TUPLE:
			t.remote_port ^= htons(1);
			write_ep(refs, i == 0, VPIPE_EPF_VALID, &t, 0);
			break;
		case ANS_BIG_QUEUES:
			t.rcvq_len = eps[i]->room + 1;
			write_ep(refs, i == 0, VPIPE_EPF_VALID, &t, 0);
			break;
		case ANS_TAKEN_LOST:
			write_ep(refs, i == 0, VPIPE_EPF_TAKEN, NULL, 0);
			break;
		case ANS_VALID_LOST:
			write_ep(refs, i == 0, VPIPE_EPF_VALID, &t, sc->moved);
			break;
		default:
			break;
		}
	}
	switch (sc->ans) {
	case ANS_OK:
		return 0;
	case ANS_ECHO:
		*moved = sc->moved;
		return 0;
	case ANS_RESET:
		return -ECONNRESET;
	case ANS_BAD_TUPLE:
	case ANS_BIG_QUEUES:
	case ANS_TAKEN_LOST:   /* execute() forges the id: the channel breaks */
	case ANS_VALID_LOST:
		return 0;
	default:
		return -EOPNOTSUPP;   /* no shadow sockets here: the guest restores its own */
	}
}

/* executes a request as the script says; *id may be forged (ANS_BOGUS_ID) */
static int execute(const struct vpipe_request *req, u64 *moved, u64 *id, int *extra_prod)
{
	struct vpipe_check_ctx ctx = { .disk = disk_cb };
	struct vpipe_dbg_script sc;
	struct vpipe_checked ck;
	u32 *refs = NULL, nr_refs = 0, i;
	u8 *desc = NULL;
	struct file *disk = NULL;
	int err;

	*moved = 0;
	mutex_lock(&rec_lock);
	sc = script;
	mutex_unlock(&rec_lock);
	err = vpipe_check_request(req);
	if (err || req->op == VPIPE_OP_NOP)
		return err;
	refs = kvmalloc_array(VPIPE_AREA_MAX_PAGES, sizeof(u32), GFP_KERNEL);
	desc = kvmalloc(req->desc_bytes, GFP_KERNEL);
	if (!refs || !desc) {
		err = -ENOSPC;
		goto out;
	}
	if (req->flags & VPIPE_REQF_INDIRECT) {
		u8 *ind = kvmalloc((size_t)req->nr_pages * VPIPE_PAGE_SIZE, GFP_KERNEL);

		err = ind ? read_area(req->page, req->nr_pages, ind, req->nr_pages * VPIPE_PAGE_SIZE) : -ENOSPC;
		if (!err)
			err = vpipe_check_indirect(req, ind, refs, &nr_refs);
		kvfree(ind);
	} else {
		for (i = 0; i < req->nr_pages; i++)
			refs[i] = req->page[i];
		nr_refs = req->nr_pages;
	}
	if (!err)
		err = read_area(refs, nr_refs, desc, req->desc_bytes);
	if (err)
		goto out;
	disk = filp_open(test_engine_disk, O_RDWR | O_LARGEFILE, 0);
	if (IS_ERR(disk)) {
		disk = NULL;
		err = -EIO;
		goto out;
	}
	ctx.arg = disk;
	if (test_engine_ip && in4_pton(test_engine_ip, -1, ctx.ipv4, -1, NULL))
		ctx.have_ipv4 = 1;
	err = vpipe_check_desc(req, desc, (req->flags & VPIPE_REQF_INDIRECT) ? refs : NULL, nr_refs,
			       &ctx, &ck);
	record(req, err, desc, req->desc_bytes, refs, nr_refs, err ? NULL : &ck);
	if (err)
		goto out;
	switch (sc.ans) {
	case ANS_STATUS:
		err = -sc.err;
		goto out;
	case ANS_BOGUS_STATUS:
		err = 5;
		goto out;
	case ANS_BOGUS_ID:
		*id ^= 1ull << 20;
		goto out;
	case ANS_BOGUS_PROD:
		*extra_prod = 5;
		err = -EIO;
		goto out;
	default:
		break;
	}
	if (req->op != VPIPE_OP_FILE_TO_FILE) {
		err = answer_sockets(req, &sc, desc, &ck, refs, moved);
		if (sc.ans == ANS_TAKEN_LOST || sc.ans == ANS_VALID_LOST)
			*id ^= 1ull << 20;   /* the results are written; the answer breaks the channel */
		goto out;
	}
	if (ck.src.vdev != ck.dst.vdev) {
		err = -EPERM;        /* one test disk */
		goto out;
	}
	invalidate_mapping_pages(disk->f_mapping, 0, -1);
	err = copy_stream(disk, desc, &ck, req->length, sc.ans == ANS_SHORT ? sc.moved : req->length, moved);
	invalidate_mapping_pages(disk->f_mapping, 0, -1);
	if (!err && sc.ans == ANS_SHORT)
		err = -EIO;
	if (!err && sc.ans == ANS_BOGUS_MOVED)
		*moved = 2 * req->length + 1;
out:
	if (disk)
		filp_close(disk, NULL);
	kvfree(refs);
	kvfree(desc);
	return err;
}

static void respond(u64 id, int status, u64 moved, int extra_prod)
{
	struct vpipe_response *rsp;
	unsigned long flags;
	int notify;

	spin_lock_irqsave(&back_lock, flags);
	if (!attached) {
		spin_unlock_irqrestore(&back_lock, flags);
		return;   /* the ring went away (a reconnect): nobody waits for this answer */
	}
	rsp = RING_GET_RESPONSE(&back, back.rsp_prod_pvt);
	memset(rsp, 0, sizeof(*rsp));
	rsp->id = id;
	rsp->moved = moved;
	rsp->status = status;
	back.rsp_prod_pvt++;
	RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
	if (extra_prod) {
		back.sring->rsp_prod += extra_prod;   /* more responses than requests: broken */
		notify = 1;
	}
	spin_unlock_irqrestore(&back_lock, flags);
	/* as an event channel would: only when the frontend asked to be told */
	if (notify)
		vpipe_front_test_interrupt();
}

static void req_work_fn(struct work_struct *w)
{
	struct test_req *t = container_of(w, struct test_req, work);
	u64 moved = 0, id = t->req.id;
	int st, extra = 0;

	if (READ_ONCE(test_engine_withhold)) {
		kfree(t);   /* a hung engine: the request stays in flight on the ring */
		return;
	}
	/* vpiped answers NOPs in its ring consumer, never behind a busy worker */
	if (t->req.op != VPIPE_OP_NOP && READ_ONCE(test_engine_delay_ms))
		msleep(READ_ONCE(test_engine_delay_ms));
	st = execute(&t->req, &moved, &id, &extra);
	respond(id, st, moved, extra);
	kfree(t);
}

/* takes every published request (each copied once) and hands it to a worker */
static void take_work_fn(struct work_struct *w)
{
	unsigned long flags;
	int more;

	do {
		RING_IDX rp, rc;

		spin_lock_irqsave(&back_lock, flags);
		rp = READ_ONCE(back.sring->req_prod);
		virt_rmb();
		if (RING_REQUEST_PROD_OVERFLOW(&back, rp)) {
			spin_unlock_irqrestore(&back_lock, flags);
			pr_err("vpipe testeng: req_prod past the ring\n");
			return;
		}
		for (rc = back.req_cons; rc != rp && !RING_REQUEST_CONS_OVERFLOW(&back, rc); rc++) {
			struct test_req *t = kzalloc(sizeof(*t), GFP_ATOMIC);

			if (!t)
				break;
			RING_COPY_REQUEST(&back, rc, &t->req);
			INIT_WORK(&t->work, req_work_fn);
			queue_work(test_wq, &t->work);
		}
		back.req_cons = rc;
		RING_FINAL_CHECK_FOR_REQUESTS(&back, more);
		spin_unlock_irqrestore(&back_lock, flags);
	} while (more);
}

void vpipe_testeng_attach(struct vpipe_sring *sring)
{
	unsigned long flags;

	spin_lock_irqsave(&back_lock, flags);
	BACK_RING_INIT(&back, sring, VPIPE_PAGE_SIZE);
	attached = true;
	spin_unlock_irqrestore(&back_lock, flags);
}

/* the ring is going away: let running requests end, answer nothing more */
void vpipe_testeng_quiesce(void)
{
	unsigned long flags;

	if (test_wq)
		flush_workqueue(test_wq);
	spin_lock_irqsave(&back_lock, flags);
	attached = false;
	spin_unlock_irqrestore(&back_lock, flags);
}

long vpipe_testeng_script(const struct vpipe_dbg_script *s)
{
	bool down = s->ans == ANS_DOWN;

	mutex_lock(&rec_lock);
	script = *s;
	rec_used = rec_count = rec_lost = 0;
	mutex_unlock(&rec_lock);
	vpipe_front_test_set_down(down);
	return 0;
}

long vpipe_testeng_requests(struct vpipe_dbg_reqs *q)
{
	long r = 0;

	mutex_lock(&rec_lock);
	q->count = rec_count;
	q->lost = rec_lost;
	q->used = min(rec_used, q->len);
	if (q->used && copy_to_user(u64_to_user_ptr(q->buf), rec_buf, q->used))
		r = -EFAULT;
	mutex_unlock(&rec_lock);
	return r;
}

void vpipe_testeng_kick(void)
{
	if (attached && test_wq)
		queue_work(test_wq, &take_work);
}

int vpipe_testeng_start(void)
{
	INIT_WORK(&take_work, take_work_fn);
	rec_buf = kvmalloc(REC_BYTES, GFP_KERNEL);
	test_wq = alloc_workqueue("vpipe_testeng", WQ_UNBOUND, 0);
	return test_wq && rec_buf ? 0 : -ENOMEM;
}

void vpipe_testeng_stop(void)
{
	if (test_wq)
		destroy_workqueue(test_wq);   /* drains what is queued */
	test_wq = NULL;
	attached = false;
	kvfree(rec_buf);
	rec_buf = NULL;
}
