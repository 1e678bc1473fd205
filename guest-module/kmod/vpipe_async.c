// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_async.c -- asynchronous operations: per-open queues, a workqueue, completions read by
 * the application (see vpipe_async.h).
 *
 * Lifetimes. A queue is referenced by its open file and by each of its operations until that
 * operation's worker is done with it, so a worker never touches a freed queue, whatever the
 * order of close and completion. Each operation also holds a reference to the module: rmmod
 * is refused while one runs, and vpipe_async_exit()'s destroy_workqueue() waits for the
 * instructions a worker runs after its module_put().
 */
#include <linux/cred.h>
#include <linux/file.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "vpipe_async.h"

struct vpipe_aq {
	struct kref ref;              /* the open file + one per operation in flight */
	spinlock_t lock;
	struct list_head inflight;    /* struct aop: submitted, not completed */
	struct list_head done;        /* struct aop: completed, not read */
	unsigned int count;           /* in flight + done: at most VPIPE_ASYNC_MAX */
	bool closed;                  /* the file is gone: completions are dropped */
	wait_queue_head_t wq;         /* readers and pollers: a completion arrived */
};

struct aop {
	struct list_head node;        /* on q->inflight, then q->done */
	struct work_struct work;
	struct vpipe_aq *q;
	u64 tag;
	struct vpipe_ioc_op op;       /* the request in, the result fields out */
	u8 *head, *tail;
	struct file *in, *out;
	const struct cred *cred;      /* the submitter's: file opens and checks run as it */
	struct vpipe_op_async a;      /* cancel flag, restored sockets */
	int result;
	int new_in, new_out;          /* indexes into a.files, or -1 */
};

static struct workqueue_struct *async_wq;

int vpipe_async_init(void)
{
	/* unbound: operations sleep for as long as dom0 and the peers take, on any CPU */
	async_wq = alloc_workqueue("vpipe_async", WQ_UNBOUND, 0);
	return async_wq ? 0 : -ENOMEM;
}

void vpipe_async_exit(void)
{
	destroy_workqueue(async_wq);
}

static void aq_free(struct kref *ref)
{
	kfree(container_of(ref, struct vpipe_aq, ref));
}

struct vpipe_aq *vpipe_aq_new(void)
{
	struct vpipe_aq *q = kzalloc(sizeof(*q), GFP_KERNEL);

	if (!q)
		return NULL;
	kref_init(&q->ref);
	spin_lock_init(&q->lock);
	INIT_LIST_HEAD(&q->inflight);
	INIT_LIST_HEAD(&q->done);
	init_waitqueue_head(&q->wq);
	return q;
}

/* a completion nobody reads: its restored sockets are closed (the connections end) */
static void aop_free(struct aop *a)
{
	int i;

	for (i = 0; i < VPIPE_ASYNC_FILES; i++)
		if (a->a.files[i])
			fput(a->a.files[i]);
	kfree(a);
}

static void aop_run(struct work_struct *w)
{
	struct aop *a = container_of(w, struct aop, work);
	struct vpipe_aq *q = a->q;
	bool drop;

	a->new_in = a->new_out = -1;
	if (READ_ONCE(a->a.cancel)) {
		/* cancelled before it started: nothing touched */
		a->result = -ECANCELED;
		a->op.moved = a->op.offloaded = a->op.guest_copied = a->op.zero_filled = 0;
		a->op.hdtr_moved = 0;
		a->op.paths = a->op.requests = 0;
	} else {
		const struct cred *old = override_creds(a->cred);

		a->result = vpipe_run_op(a->in, a->out, &a->op, a->head, a->tail, &a->a, &a->new_in,
					 &a->new_out);
		revert_creds(old);
		/* stopped at a safe point because of the cancel: say so, with what moved before */
		if (READ_ONCE(a->a.cancel) &&
		    (a->result == -EINTR || (a->result == 0 && a->op.moved < a->op.length)))
			a->result = -ECANCELED;
	}
	if (a->result == 0)
		atomic64_inc(&vpipe_stats.ops[a->op.op]);
	else
		atomic64_inc(&vpipe_stats.ops_failed);
	fput(a->in);
	fput(a->out);
	kfree(a->head);
	kfree(a->tail);
	put_cred(a->cred);
	a->in = a->out = NULL;
	a->head = a->tail = NULL;

	spin_lock(&q->lock);
	drop = q->closed;
	if (drop) {
		list_del(&a->node);
		q->count--;
	} else {
		list_move_tail(&a->node, &q->done);
	}
	spin_unlock(&q->lock);
	if (drop)
		aop_free(a);
	else
		wake_up_interruptible_poll(&q->wq, EPOLLIN | EPOLLRDNORM);
	kref_put(&q->ref, aq_free);
	module_put(THIS_MODULE);
}

int vpipe_aq_submit(struct vpipe_aq *q, u64 tag, const struct vpipe_ioc_op *op, u8 *head, u8 *tail,
		    struct file *in, struct file *out)
{
	struct aop *a = kzalloc(sizeof(*a), GFP_KERNEL), *it;
	int err = 0;

	if (!a)
		return -ENOMEM;
	spin_lock(&q->lock);
	if (q->count >= VPIPE_ASYNC_MAX)
		err = -EAGAIN;
	list_for_each_entry(it, &q->inflight, node)
		if (!err && it->tag == tag)
			err = -EEXIST;
	if (err) {
		spin_unlock(&q->lock);
		kfree(a);
		return err;
	}
	a->q = q;
	a->tag = tag;
	a->op = *op;
	a->head = head;
	a->tail = tail;
	a->in = in;
	a->out = out;
	a->cred = get_current_cred();
	INIT_WORK(&a->work, aop_run);
	list_add_tail(&a->node, &q->inflight);
	q->count++;
	kref_get(&q->ref);
	spin_unlock(&q->lock);
	__module_get(THIS_MODULE);
	queue_work(async_wq, &a->work);
	return 0;
}

int vpipe_aq_cancel(struct vpipe_aq *q, u64 tag)
{
	struct aop *a;
	int err = -ENOENT;

	spin_lock(&q->lock);
	list_for_each_entry(a, &q->inflight, node)
		if (a->tag == tag) {
			WRITE_ONCE(a->a.cancel, true);
			err = 0;
			break;
		}
	spin_unlock(&q->lock);
	return err;
}

void vpipe_aq_close(struct vpipe_aq *q)
{
	struct aop *a, *n;
	LIST_HEAD(done);

	spin_lock(&q->lock);
	q->closed = true;
	list_for_each_entry(a, &q->inflight, node)
		WRITE_ONCE(a->a.cancel, true);
	list_splice_init(&q->done, &done);
	spin_unlock(&q->lock);
	list_for_each_entry_safe(a, n, &done, node) {
		list_del(&a->node);
		aop_free(a);
	}
	kref_put(&q->ref, aq_free);
}

/* One completion into *rec, its restored sockets given descriptors reserved in the reader's
 * table (installed by the caller once the record reached user memory). */
static void reserve_fd(struct aop *a, int idx, int32_t *fd, int *result)
{
	*fd = -1;
	if (idx < 0 || idx >= VPIPE_ASYNC_FILES || !a->a.files[idx])
		return;
	*fd = get_unused_fd_flags(O_CLOEXEC);
	if (*fd < 0) {
		/* no room in the reader's table: the restored connection is lost (closed) */
		if (*result == 0)
			*result = *fd;
		*fd = -1;
		fput(a->a.files[idx]);
		a->a.files[idx] = NULL;
	}
}

ssize_t vpipe_aq_read(struct vpipe_aq *q, char __user *buf, size_t count, bool nonblock)
{
	const size_t rec_len = sizeof(struct vpipe_ioc_completion);
	size_t n = 0;

	if (count < rec_len)
		return -EINVAL;
	while (n + rec_len <= count) {
		struct vpipe_ioc_completion rec;
		struct aop *a;
		int i;

		spin_lock(&q->lock);
		a = list_first_entry_or_null(&q->done, struct aop, node);
		if (a)
			list_del_init(&a->node);
		spin_unlock(&q->lock);
		if (!a) {
			if (n)
				break;
			if (nonblock)
				return -EAGAIN;
			if (wait_event_interruptible(q->wq, !list_empty_careful(&q->done)))
				return -ERESTARTSYS;
			continue;
		}
		memset(&rec, 0, sizeof(rec));
		rec.tag = a->tag;
		rec.result = a->result;
		rec.op = a->op;
		reserve_fd(a, a->new_in, &rec.op.new_in_fd, &rec.result);
		reserve_fd(a, a->new_out, &rec.op.new_out_fd, &rec.result);
		if (copy_to_user(buf + n, &rec, rec_len)) {
			/* give the completion back, whole: nothing was installed */
			if (rec.op.new_in_fd >= 0)
				put_unused_fd(rec.op.new_in_fd);
			if (rec.op.new_out_fd >= 0)
				put_unused_fd(rec.op.new_out_fd);
			a->result = rec.result;
			spin_lock(&q->lock);
			list_add(&a->node, &q->done);
			spin_unlock(&q->lock);
			return n ? (ssize_t)n : -EFAULT;
		}
		if (rec.op.new_in_fd >= 0) {
			fd_install(rec.op.new_in_fd, a->a.files[a->new_in]);
			a->a.files[a->new_in] = NULL;
		}
		if (rec.op.new_out_fd >= 0) {
			fd_install(rec.op.new_out_fd, a->a.files[a->new_out]);
			a->a.files[a->new_out] = NULL;
		}
		for (i = 0; i < VPIPE_ASYNC_FILES; i++)
			if (a->a.files[i])
				fput(a->a.files[i]);
		kfree(a);
		spin_lock(&q->lock);
		q->count--;
		spin_unlock(&q->lock);
		n += rec_len;
	}
	return n;
}

__poll_t vpipe_aq_poll(struct vpipe_aq *q, struct file *f, poll_table *pt)
{
	poll_wait(f, &q->wq, pt);
	return list_empty_careful(&q->done) ? 0 : EPOLLIN | EPOLLRDNORM;
}
