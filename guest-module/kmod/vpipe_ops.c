// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_ops.c -- the kernel's OS steps for the guest core (struct vpipe_core_ops,
 * guest-module/core/vpipe_core.h): files through vpipe_file.c, sockets through vpipe_tcp.c,
 * requests through vpipe_front.c. The operations themselves -- which check comes first, how a
 * request is built, what a broken answer means -- are the core's, the same code the userspace
 * agent runs.
 */
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/moduleparam.h>
#include <linux/net.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "vpipe.h"
#include "vpipe_file.h"
#include "vpipe_front.h"
#include "vpipe_tcp.h"

unsigned int vpipe_chunk_mib = 64;
module_param_named(chunk_mib, vpipe_chunk_mib, uint, 0644);
MODULE_PARM_DESC(chunk_mib, "file -> file: MiB per ring request and per stage (1..1024)");

unsigned int vpipe_room_kib = 2048;
module_param_named(room_kib, vpipe_room_kib, uint, 0644);
MODULE_PARM_DESC(room_kib, "largest carry room of a socket endpoint, KiB: what dom0 may hand back");

unsigned int vpipe_area_pages = 4096;
module_param_named(area_pages, vpipe_area_pages, uint, 0444);
MODULE_PARM_DESC(area_pages, "pages granted to dom0 for the life of the channel (requests' areas)");

static bool cache_rule_f2f;
module_param(cache_rule_f2f, bool, 0644);
MODULE_PARM_DESC(cache_rule_f2f,
		 "file->file: serve clean cached source runs longer than max(1 MiB, size/10) from the guest page cache (paper 3.2; the agent's cache_rule_file_to_file, off by default)");

static bool cache_rule_f2s = true;
module_param(cache_rule_f2s, bool, 0644);
MODULE_PARM_DESC(cache_rule_f2s,
		 "file->socket: a range wholly in the guest page cache (clean) is answered EALREADY, the caller's own sendfile is cheaper (the agent's cache_rule_file_to_socket, on by default)");

#define LOCAL_BUF (1u << 20)
#define MAX_ADOPTED 8

/* what one call keeps besides the core's state */
struct kenv {
	struct file *adopted[MAX_ADOPTED];   /* restored sockets a later pass worked on */
	int nadopted;
	struct vpipe_op_async *async;        /* an asynchronous operation's, else NULL */
};

static struct file *F(vpipe_fh f)
{
	return f;
}

static void *k_alloc(void *env, size_t n)
{
	return kvmalloc(n ? n : 1, GFP_KERNEL);
}

static void k_free(void *env, void *p)
{
	kvfree(p);
}

static int k_file_regular(void *env, vpipe_fh f)
{
	return S_ISREG(file_inode(F(f))->i_mode) ? 0 : -EINVAL;
}

static int k_file_access(void *env, vpipe_fh f, int write)
{
	struct file *file = F(f);

	if (!write && !(file->f_mode & FMODE_READ))
		return -EBADF;
	if (write && !(file->f_mode & FMODE_WRITE))
		return -EBADF;
	if (write && (file->f_flags & O_APPEND))
		return -EINVAL;  /* explicit offsets only */
	return 0;
}

static int k_file_disk(void *env, vpipe_fh f)
{
	u64 part;
	u32 vdev;

	return vpipe_file_disk(F(f), &vdev, &part) ? -ENXIO : 0;
}

static int k_file_same(void *env, vpipe_fh a, vpipe_fh b)
{
	return file_inode(F(a)) == file_inode(F(b));
}

static int k_file_size(void *env, vpipe_fh f, uint64_t *size)
{
	*size = i_size_read(file_inode(F(f)));
	return 0;
}

static int k_hold(void *env, vpipe_fh f, int destination, void **hold)
{
	struct vpipe_hold *h;
	int r = vpipe_hold_acquire(F(f), destination, &h);

	if (!r)
		*hold = h;
	return r;
}

static void k_unhold(void *env, void *hold)
{
	vpipe_hold_release(hold);
}

static int k_flush(void *env, vpipe_fh f, uint64_t off, uint64_t len)
{
	return vpipe_file_writeback(F(f), off, len);
}

static int k_map(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_extents *out)
{
	struct vpipe_fmap m = {};
	int r = vpipe_file_map(F(f), off, len, &m);

	if (r)
		return r;
	out->vdev = m.vdev;
	out->nr = m.nr;
	out->segs = m.segs;   /* kvmalloc'd: k_unmap frees it */
	return 0;
}

static void k_unmap(void *env, struct vpipe_extents *x)
{
	kvfree(x->segs);
	x->segs = NULL;
}

static int k_cached_runs(void *env, vpipe_fh f, uint64_t off, uint64_t len, uint64_t size,
			 struct vpipe_range *out, int max)
{
	return vpipe_file_cached_runs(F(f), off, len, size, out, max);
}

static int k_range_cached(void *env, vpipe_fh f, uint64_t off, uint64_t len)
{
	return vpipe_file_range_cached(F(f), off, len);
}

static int k_guest_copy(void *env, vpipe_fh in, uint64_t in_off, vpipe_fh out, uint64_t out_off,
			uint64_t len, uint64_t *copied)
{
	return vpipe_file_guest_copy(F(in), in_off, F(out), out_off, len, copied);
}

static int k_sync(void *env, vpipe_fh f)
{
	return vfs_fsync(F(f), 1);
}

static int k_dest_prepare(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_dprep *p)
{
	return vpipe_dest_prepare(F(f), off, len, p);
}

static int k_dest_finish(void *env, vpipe_fh f, uint64_t off, uint64_t len, uint64_t written,
			 const struct vpipe_dprep *p)
{
	return vpipe_dest_finish(F(f), off, len, written, p);
}

static int k_sock_check(void *env, vpipe_fh s, int *peer_fin)
{
	bool fin = false;
	int r = vpipe_tcp_check(F(s), &fin);

	*peer_fin = fin;
	return r;
}

static int k_sock_freeze(void *env, vpipe_fh s, struct vpipe_frozen *fz)
{
	struct vpipe_frozen_sock *k = kzalloc(sizeof(*k), GFP_KERNEL);
	int r;

	if (!k)
		return -ENOMEM;
	r = vpipe_tcp_freeze(F(s), k);
	if (r) {
		kfree(k);
		return r;
	}
	fz->st = k->st;
	fz->sndq = k->sndq;
	fz->rcvq = k->unread;
	fz->peer_fin = k->peer_fin;
	fz->os = k;
	return 0;
}

/* A restored socket becomes a "descriptor" of the operation. A blocking call installs it in the
 * calling process's table. An asynchronous operation runs in a kworker, whose table is not the
 * application's: its restored sockets wait in the operation's own slots, the slot index standing
 * for the descriptor, and the process that reads the completion installs them (vpipe_async.c). */
static int k_place(struct kenv *e, struct file *f, int *fd)
{
	int i;

	if (!e->async) {
		int n = get_unused_fd_flags(O_CLOEXEC);

		if (n < 0) {
			fput(f);
			return n;
		}
		fd_install(n, f);
		*fd = n;
		return 0;
	}
	for (i = 0; i < VPIPE_ASYNC_FILES; i++)
		if (!e->async->files[i]) {
			e->async->files[i] = f;
			*fd = i;
			return 0;
		}
	fput(f);
	return -EMFILE;
}

static int k_sock_restore(void *env, struct vpipe_frozen *fz, const struct vpipe_restore *res,
			  int *new_fd)
{
	struct vpipe_frozen_sock *k = fz->os;
	struct file *f = NULL;
	int r;

	*new_fd = -1;
	if (!k)
		return 0;
	r = vpipe_tcp_restore(k, res, &f);   /* releases k's socket and queues */
	kfree(k);
	fz->os = NULL;
	if (f) {
		int p = k_place(env, f, new_fd);

		if (!r)
			r = p;
	}
	return r;
}

static int k_sock_adopt(void *env, vpipe_fh *s, int new_fd)
{
	struct kenv *e = env;
	struct file *f;

	if (e->nadopted == MAX_ADOPTED)
		return -EMFILE;
	if (e->async)
		f = new_fd >= 0 && new_fd < VPIPE_ASYNC_FILES && e->async->files[new_fd] ?
			    get_file(e->async->files[new_fd]) : NULL;
	else
		f = fget(new_fd);
	if (!f)
		return -EBADF;
	e->adopted[e->nadopted++] = f;   /* put after the call */
	*s = f;
	return 0;
}

static void k_fd_close(void *env, int fd)
{
	struct kenv *e = env;

	if (!e->async) {
		close_fd(fd);
		return;
	}
	if (fd >= 0 && fd < VPIPE_ASYNC_FILES && e->async->files[fd]) {
		fput(e->async->files[fd]);
		e->async->files[fd] = NULL;
	}
}

/* writes to a held destination go through a lift of its hold */
struct sink_write {
	struct file *file;
	const void *buf;
	size_t n;
	u64 off;
};

static int sink_write_lifted(void *arg)
{
	struct sink_write *w = arg;
	loff_t pos = w->off;
	ssize_t r = kernel_write(w->file, w->buf, w->n, &pos);

	if (r < 0)
		return r;
	return (size_t)r == w->n ? 0 : -EIO;
}

static int k_local_drain(void *env, vpipe_fh src, vpipe_fh dst, int dst_is_file, uint64_t out_off,
			 uint64_t length, uint64_t *moved)
{
	void *buf = kvmalloc(LOCAL_BUF, GFP_KERNEL);
	int r = 0;

	*moved = 0;
	if (!buf)
		return -ENOMEM;
	while (*moved < length) {
		ssize_t n = vpipe_tcp_take_unread(F(src), buf, min_t(u64, LOCAL_BUF, length - *moved));

		if (n <= 0) {
			r = n;   /* 0: EOF or nothing more queued */
			break;
		}
		if (dst_is_file) {
			struct sink_write w = { F(dst), buf, n, out_off + *moved };

			r = vpipe_hold_lift(F(dst), sink_write_lifted, &w);
		} else {
			r = vpipe_tcp_send_all(F(dst), buf, n);
		}
		if (r)
			break;
		*moved += n;
	}
	kvfree(buf);
	/* socket -> file counts bytes durably written */
	if (!r && dst_is_file && *moved)
		r = vfs_fsync_range(F(dst), out_off, out_off + *moved - 1, 1);
	return r;
}

static int k_connected(void *env)
{
	return vpipe_front_connected();
}

static int k_submit(void *env, const struct vpipe_submit *s, void **ticket)
{
	struct vpipe_req *r;
	int err = vpipe_front_submit(s, &r);

	if (!err)
		*ticket = r;
	return err;
}

static int k_wait(void *env, void *ticket, uint64_t *moved, int *killed)
{
	bool k = false;
	u64 m = 0;
	int r = vpipe_front_wait(ticket, &m, &k);

	*moved = m;
	if (k)
		*killed = 1;
	return r;
}

static int k_readback(void *env, void *ticket, uint64_t off, void *buf, uint64_t len)
{
	return vpipe_front_readback(ticket, off, buf, len);
}

static void k_put(void *env, void *ticket)
{
	vpipe_front_put(ticket);
}

static void k_count(void *env, enum vpipe_counter c, uint64_t n)
{
	switch (c) {
	case VPIPE_CNT_OFFLOADED:
		atomic64_add(n, &vpipe_stats.bytes_offloaded);
		break;
	case VPIPE_CNT_GUEST_CACHE:
		atomic64_add(n, &vpipe_stats.bytes_guest_cache);
		break;
	case VPIPE_CNT_ZERO_FILLED:
		atomic64_add(n, &vpipe_stats.bytes_zero_filled);
		break;
	case VPIPE_CNT_WRITE_ZEROES:
		atomic64_add(n, &vpipe_stats.bytes_write_zeroes);
		break;
	case VPIPE_CNT_EXTENTS:
		atomic64_add(n, &vpipe_stats.extents_mapped);
		break;
	case VPIPE_CNT_REQUESTS:
		break;   /* the frontend counts what it posts */
	}
}

/* "Is the caller dying?": a blocking call's process killed, or an asynchronous operation
 * cancelled (VPIPE_IOC_CANCEL, or its queue closed): both stop at the core's next safe point. */
static int k_fatal_signal(void *env)
{
	struct kenv *e = env;

	if (e->async)
		return READ_ONCE(e->async->cancel);
	return fatal_signal_pending(current);
}

static const struct vpipe_core_ops kops = {
	.alloc = k_alloc,
	.free = k_free,
	.file_regular = k_file_regular,
	.file_access = k_file_access,
	.file_disk = k_file_disk,
	.file_same = k_file_same,
	.file_size = k_file_size,
	.hold = k_hold,
	.unhold = k_unhold,
	.flush = k_flush,
	.map = k_map,
	.unmap = k_unmap,
	.cached_runs = k_cached_runs,
	.range_cached = k_range_cached,
	.guest_copy = k_guest_copy,
	.sync = k_sync,
	.dest_prepare = k_dest_prepare,
	.dest_finish = k_dest_finish,
	.sock_check = k_sock_check,
	.sock_freeze = k_sock_freeze,
	.sock_restore = k_sock_restore,
	.sock_adopt = k_sock_adopt,
	.fd_close = k_fd_close,
	.local_drain = k_local_drain,
	.connected = k_connected,
	.submit = k_submit,
	.wait = k_wait,
	.readback = k_readback,
	.put = k_put,
	.count = k_count,
	.fatal_signal = k_fatal_signal,
};

int vpipe_run_op(struct file *in, struct file *out, struct vpipe_ioc_op *op, const u8 *head,
		 const u8 *tail, struct vpipe_op_async *async, int *new_in, int *new_out)
{
	struct kenv env = { .async = async };
	struct vpipe_core core = {
		.ops = &kops,
		.env = &env,
		.cfg = {
			.chunk_mib = clamp_t(unsigned int, READ_ONCE(vpipe_chunk_mib), 1, 1024),
			.room_max = clamp_t(unsigned int, READ_ONCE(vpipe_room_kib), 16, 16384) << 10,
			.cache_rule_f2f = READ_ONCE(cache_rule_f2f),
			.cache_rule_f2s = READ_ONCE(cache_rule_f2s),
		},
	};
	struct vpipe_core_call call = {
		.in = in,
		.out = out,
		.op = op,
		.head = head,
		.tail = tail,
	};
	int r, i;

	r = vpipe_core_op(&core, &call);
	*new_in = call.new_in;
	*new_out = call.new_out;
	for (i = 0; i < env.nadopted; i++)
		fput(env.adopted[i]);
	return r;
}
