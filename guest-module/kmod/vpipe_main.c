// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_main.c -- vpipe.ko: the vPipe guest component in the kernel.
 *
 * /dev/vpipe speaks abi/ioctl.h exactly as the userspace agent (vpipe-guestd) does over its
 * socket, so libvpipe works unchanged on either: VPIPE_IOC_OP (one operation), VPIPE_IOC_STATS
 * (the counters), VPIPE_IOC_CREATE / DESTROY (handles kept per open file; everything a handle
 * references is released when the file is closed, e.g. when its process dies),
 * VPIPE_IOC_SUBMIT / CANCEL with read() and poll() (each open is a queue of asynchronous
 * operations, vpipe_async.c).
 */
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "vpipe.h"
#include "vpipe_async.h"
#include "vpipe_file.h"
#include "vpipe_front.h"
#include "vpipe_tcp.h"
#ifdef VPIPE_TEST
#include "vpipe_debug.h"
#include "vpipe_testeng.h"
#endif

struct vpipe_counters vpipe_stats;

#define VPIPE_MAX_HANDLES 4096

struct vpipe_handle {
	struct file *in, *out;
};

struct vpipe_client {
	struct mutex mu;
	struct idr handles;
	struct vpipe_aq *aq;   /* asynchronous operations of this open (vpipe_async.c) */
};

static int vpipe_open(struct inode *inode, struct file *f)
{
	struct vpipe_client *c = kzalloc(sizeof(*c), GFP_KERNEL);

	if (!c)
		return -ENOMEM;
	c->aq = vpipe_aq_new();
	if (!c->aq) {
		kfree(c);
		return -ENOMEM;
	}
	mutex_init(&c->mu);
	idr_init(&c->handles);
	f->private_data = c;
	return 0;
}

static void handle_free(struct vpipe_handle *h)
{
	fput(h->in);
	fput(h->out);
	kfree(h);
	atomic64_dec(&vpipe_stats.handles_open);
}

static int release_one(int id, void *p, void *data)
{
	handle_free(p);
	return 0;
}

static int vpipe_release(struct inode *inode, struct file *f)
{
	struct vpipe_client *c = f->private_data;

	vpipe_aq_close(c->aq);   /* what is in flight is cancelled; its workers end on their own */
	idr_for_each(&c->handles, release_one, NULL);
	idr_destroy(&c->handles);
	kfree(c);
	return 0;
}

static long do_create(struct vpipe_client *c, void __user *arg)
{
	struct vpipe_ioc_create cr;
	struct vpipe_handle *h;
	int id;

	if (copy_from_user(&cr, arg, sizeof(cr)))
		return -EFAULT;
	if (cr.flags)
		return -EINVAL;
	h = kzalloc(sizeof(*h), GFP_KERNEL);
	if (!h)
		return -ENOMEM;
	h->in = fget(cr.in_fd);
	h->out = fget(cr.out_fd);
	if (!h->in || !h->out) {
		if (h->in)
			fput(h->in);
		if (h->out)
			fput(h->out);
		kfree(h);
		return -EBADF;
	}
	mutex_lock(&c->mu);
	id = idr_alloc(&c->handles, h, 0, VPIPE_MAX_HANDLES, GFP_KERNEL);
	mutex_unlock(&c->mu);
	if (id < 0) {
		fput(h->in);
		fput(h->out);
		kfree(h);
		return id == -ENOSPC ? -EMFILE : id;
	}
	atomic64_inc(&vpipe_stats.handles_open);
	cr.handle = id;
	if (copy_to_user(arg, &cr, sizeof(cr))) {
		mutex_lock(&c->mu);
		idr_remove(&c->handles, id);
		mutex_unlock(&c->mu);
		handle_free(h);
		return -EFAULT;
	}
	return 0;
}

static long do_destroy(struct vpipe_client *c, void __user *arg)
{
	struct vpipe_handle *h;
	s32 id;

	if (copy_from_user(&id, arg, sizeof(id)))
		return -EFAULT;
	if (id < 0)
		return -EBADF;
	mutex_lock(&c->mu);
	h = idr_remove(&c->handles, id);
	mutex_unlock(&c->mu);
	if (!h)
		return -EBADF;
	handle_free(h);
	return 0;
}

/* What VPIPE_IOC_OP and VPIPE_IOC_SUBMIT check before any descriptor work, and the operation's
 * inputs: head and tail copied in, the files referenced (from the handle or the descriptors).
 * On error nothing is left to free. */
static long op_prepare(struct vpipe_client *c, struct vpipe_ioc_op *op, u8 **head, u8 **tail,
		       struct file **in, struct file **out)
{
	long ret = 0;

	*head = *tail = NULL;
	*in = *out = NULL;
	op->new_in_fd = op->new_out_fd = -1;
	if (op->reserved0 || (op->flags & ~(u32)VPIPE_OPF_NO_CACHE_RULE) ||
	    op->op < VPIPE_IOC_FILE_TO_FILE || op->op > VPIPE_IOC_SOCKET_TO_SOCKET ||
	    op->head_len > VPIPE_HDTR_MAX || op->tail_len > VPIPE_HDTR_MAX)
		return -EINVAL;
	/* a head and a tail for the destination connection: copied in once */
	if (op->head_len) {
		*head = memdup_user(u64_to_user_ptr(op->head), op->head_len);
		if (IS_ERR(*head)) {
			ret = PTR_ERR(*head);
			*head = NULL;
			goto fail;
		}
	}
	if (op->tail_len) {
		*tail = memdup_user(u64_to_user_ptr(op->tail), op->tail_len);
		if (IS_ERR(*tail)) {
			ret = PTR_ERR(*tail);
			*tail = NULL;
			goto fail;
		}
	}
	if (op->handle != VPIPE_NO_HANDLE) {
		struct vpipe_handle *h;

		mutex_lock(&c->mu);
		h = op->handle >= 0 ? idr_find(&c->handles, op->handle) : NULL;
		if (h) {
			*in = get_file(h->in);
			*out = get_file(h->out);
		}
		mutex_unlock(&c->mu);
		if (!h) {
			ret = -EBADF;
			goto fail;
		}
	} else {
		*in = fget(op->in_fd);
		*out = fget(op->out_fd);
		if (!*in || !*out) {
			ret = -EBADF;
			goto fail;
		}
	}
	return 0;
fail:
	kfree(*head);
	kfree(*tail);
	if (*in)
		fput(*in);
	if (*out)
		fput(*out);
	*head = *tail = NULL;
	*in = *out = NULL;
	return ret;
}

static long do_op(struct vpipe_client *c, void __user *arg)
{
	struct vpipe_ioc_op op;
	struct file *in, *out;
	int new_in = -1, new_out = -1;
	u8 *head, *tail;
	long ret;

	if (copy_from_user(&op, arg, sizeof(op)))
		return -EFAULT;
	ret = op_prepare(c, &op, &head, &tail, &in, &out);
	if (!ret) {
		ret = vpipe_run_op(in, out, &op, head, tail, NULL, &new_in, &new_out);
		op.new_in_fd = new_in;
		op.new_out_fd = new_out;
		kfree(head);
		kfree(tail);
		fput(in);
		fput(out);
	}
	if (ret == 0)
		atomic64_inc(&vpipe_stats.ops[op.op]);
	else
		atomic64_inc(&vpipe_stats.ops_failed);
	/* the structure goes back even on failure: it may name restored sockets */
	if (copy_to_user(arg, &op, sizeof(op)))
		return -EFAULT;
	return ret;
}

/* VPIPE_IOC_SUBMIT: checked as VPIPE_IOC_OP is before it runs, then queued (vpipe_async.c) */
static long do_submit(struct vpipe_client *c, void __user *arg)
{
	struct vpipe_ioc_submit s;
	struct file *in, *out;
	u8 *head, *tail;
	long ret;

	if (copy_from_user(&s, arg, sizeof(s)))
		return -EFAULT;
	ret = op_prepare(c, &s.op, &head, &tail, &in, &out);
	if (ret)
		return ret;
	ret = vpipe_aq_submit(c->aq, s.tag, &s.op, head, tail, in, out);
	if (ret) {
		kfree(head);
		kfree(tail);
		fput(in);
		fput(out);
	}
	return ret;
}

static long do_cancel(struct vpipe_client *c, void __user *arg)
{
	u64 tag;

	if (copy_from_user(&tag, arg, sizeof(tag)))
		return -EFAULT;
	return vpipe_aq_cancel(c->aq, tag);
}

static long do_stats(void __user *arg)
{
	struct vpipe_ioc_stats s;
	int i;

	memset(&s, 0, sizeof(s));
	for (i = 0; i < 5; i++)
		s.ops[i] = atomic64_read(&vpipe_stats.ops[i]);
	s.ops_failed = atomic64_read(&vpipe_stats.ops_failed);
	s.bytes_offloaded = atomic64_read(&vpipe_stats.bytes_offloaded);
	s.bytes_guest_cache = atomic64_read(&vpipe_stats.bytes_guest_cache);
	s.bytes_zero_filled = atomic64_read(&vpipe_stats.bytes_zero_filled);
	s.bytes_write_zeroes = atomic64_read(&vpipe_stats.bytes_write_zeroes);
	s.ring_requests = atomic64_read(&vpipe_stats.ring_requests);
	s.extents_mapped = atomic64_read(&vpipe_stats.extents_mapped);
	s.handles_open = atomic64_read(&vpipe_stats.handles_open);
	s.engine_connected = vpipe_front_connected() ? 1 : 0;
	s.engine_timeouts = atomic64_read(&vpipe_stats.engine_timeouts);
	return copy_to_user(arg, &s, sizeof(s)) ? -EFAULT : 0;
}

#ifdef VPIPE_TEST
static long do_dbg_map(void __user *arg)
{
	struct vpipe_dbg_map d;
	struct vpipe_fmap m = {};
	struct vpipe_hold *hold = NULL;
	struct vpipe_dprep p = {};
	struct file *f;
	u64 part;
	u32 i;
	long ret;

	if (copy_from_user(&d, arg, sizeof(d)))
		return -EFAULT;
	f = fget(d.fd);
	if (!f)
		return -EBADF;
	ret = vpipe_file_disk(f, &d.vdev, &part);
	if (ret)
		goto out;
	d.partition_offset = part;
	if (d.flags & 1) {
		ret = vpipe_hold_acquire(f, true, &hold);
		if (!ret)
			ret = vpipe_dest_prepare(f, d.offset, d.length, &p);
		d.zero_filled = p.zero_filled;
		if (ret)
			goto out;
	} else {
		ret = vpipe_file_flush(f, d.offset, d.length);
		if (ret)
			goto out;
	}
	ret = vpipe_file_map(f, d.offset, d.length, &m);
	if (d.flags & 1) {
		long fin = vpipe_dest_finish(f, d.offset, d.length, ret ? 0 : d.length, &p);

		if (!ret && fin && fin != -EBUSY)
			ret = fin;
	}
	if (ret)
		goto out;
	d.nr = m.nr;
	d.blocks = m.blocks;
	for (i = 0; i < m.nr && i < d.max; i++) {
		struct vpipe_dbg_seg s = { m.segs[i].disk_offset, m.segs[i].length,
					   m.segs[i].zero, 0 };

		if (copy_to_user((void __user *)(uintptr_t)(d.segs + i * sizeof(s)), &s,
				 sizeof(s))) {
			ret = -EFAULT;
			goto out;
		}
	}
	if (copy_to_user(arg, &d, sizeof(d)))
		ret = -EFAULT;
out:
	vpipe_hold_release(hold);
	vpipe_fmap_free(&m);
	fput(f);
	return ret;
}
#endif

static long vpipe_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct vpipe_client *c = f->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case VPIPE_IOC_OP:
		return do_op(c, uarg);
	case VPIPE_IOC_STATS:
		return do_stats(uarg);
	case VPIPE_IOC_CREATE:
		return do_create(c, uarg);
	case VPIPE_IOC_DESTROY:
		return do_destroy(c, uarg);
	case VPIPE_IOC_SUBMIT:
		return do_submit(c, uarg);
	case VPIPE_IOC_CANCEL:
		return do_cancel(c, uarg);
#ifdef VPIPE_TEST
	case VPIPE_IOC_DBG_MAP:
		return do_dbg_map(uarg);
	case VPIPE_IOC_DBG_SCRIPT: {
		struct vpipe_dbg_script sc;

		if (!vpipe_testeng_active())
			return -ENOTTY;
		if (copy_from_user(&sc, uarg, sizeof(sc)))
			return -EFAULT;
		return vpipe_testeng_script(&sc);
	}
	case VPIPE_IOC_DBG_REQS: {
		struct vpipe_dbg_reqs q;
		long r;

		if (!vpipe_testeng_active())
			return -ENOTTY;
		if (copy_from_user(&q, uarg, sizeof(q)))
			return -EFAULT;
		r = vpipe_testeng_requests(&q);
		if (!r && copy_to_user(uarg, &q, sizeof(q)))
			r = -EFAULT;
		return r;
	}
#endif
	default:
		return -ENOTTY;
	}
}

static ssize_t vpipe_read(struct file *f, char __user *buf, size_t count, loff_t *pos)
{
	struct vpipe_client *c = f->private_data;

	return vpipe_aq_read(c->aq, buf, count, f->f_flags & O_NONBLOCK);
}

static __poll_t vpipe_poll(struct file *f, poll_table *pt)
{
	struct vpipe_client *c = f->private_data;

	return vpipe_aq_poll(c->aq, f, pt);
}

static const struct file_operations vpipe_fops = {
	.owner = THIS_MODULE,
	.open = vpipe_open,
	.release = vpipe_release,
	.unlocked_ioctl = vpipe_ioctl,
	.read = vpipe_read,
	.poll = vpipe_poll,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice vpipe_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vpipe",
	.fops = &vpipe_fops,
	/* any local process may ask: what it may move is bounded by the descriptors it passes */
	.mode = 0666,
};

static int __init vpipe_init(void)
{
	int err;

	err = vpipe_tcp_init();
	if (err)
		return err;
	err = vpipe_front_init();
	if (err)
		goto fail_tcp;
	err = vpipe_async_init();
	if (err)
		goto fail_front;
	err = misc_register(&vpipe_misc);
	if (err)
		goto fail_async;
	pr_info("vpipe: /dev/vpipe ready (protocol %u%s)\n", VPIPE_PROTOCOL_VERSION,
#ifdef VPIPE_TEST
		", test build"
#else
		""
#endif
		);
	return 0;
fail_async:
	vpipe_async_exit();
fail_front:
	vpipe_front_exit();
fail_tcp:
	vpipe_tcp_exit();
	return err;
}

static void __exit vpipe_exit(void)
{
	misc_deregister(&vpipe_misc);
	vpipe_async_exit();   /* no operation runs (each holds the module); their last steps end */
	vpipe_front_exit();
	vpipe_tcp_exit();
	if (vpipe_holds_active())
		pr_warn("vpipe: %d inode hold(s) still active at unload\n", vpipe_holds_active());
}

module_init(vpipe_init);
module_exit(vpipe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vPipe guest component: /dev/vpipe and the Xen frontend (device type vpipe)");
MODULE_AUTHOR("vPipe project");
MODULE_VERSION("1.0");
