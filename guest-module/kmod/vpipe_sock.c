// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_sock.c -- file -> socket, socket -> file, socket -> socket (docs/protocol.md §2a).
 * The kernel twin of guest-module/agent/socket_ops.cpp; the TCP mechanics (check, freeze,
 * restore, release) are vpipe_tcp.c's.
 *
 * Per hand-over: check both endpoints (the sockets are not touched when a check fails),
 * deliver a source's unread bytes ourselves (they are the stream's first bytes), freeze the
 * sockets (drained, blocked, captured, disconnected without FIN/RST), post one request naming
 * all 10 descriptor pages (the rooms after the stream are where dom0 writes the final states
 * and queues), then restore every socket from dom0's state -- or from our own if dom0 never
 * took it over -- as a new descriptor of the caller. Socket sources loop: one hand-over per
 * chunk until `length` bytes moved, the peer closed (short count) or something failed after
 * some bytes moved (short count; the next call reports the error).
 */
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/net.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <net/sock.h>

#include "vpipe.h"
#include "vpipe_file.h"
#include "vpipe_front.h"
#include "vpipe_tcp.h"

#define FREEZE_TRIES 20
#define LOCAL_BUF (1u << 20)

static int freeze_retry(struct file *f, struct vpipe_frozen_sock *fz)
{
	int i, r = -EAGAIN;

	for (i = 0; i < FREEZE_TRIES && r == -EAGAIN; i++)
		r = vpipe_tcp_freeze(f, fz);
	return r;
}

static int check_file(struct file *f, bool want_write)
{
	if (!S_ISREG(file_inode(f)->i_mode))
		return -EINVAL;
	if (!want_write && !(f->f_mode & FMODE_READ))
		return -EBADF;
	if (want_write && !(f->f_mode & FMODE_WRITE))
		return -EBADF;
	if (want_write && (f->f_flags & O_APPEND))
		return -EINVAL;
	return 0;
}

/* A descriptor the module installed earlier in this call and that a later hand-over
 * superseded: the caller never sees it. */
static void drop_fd(int *fd)
{
	if (*fd >= 0)
		close_fd(*fd);
	*fd = -1;
}

/* where the bytes of the local path go: a socket (send) or a file (write at an offset) */
struct sink {
	struct file *sock;      /* destination socket, or NULL */
	struct file *file;      /* destination file */
	u64 off;                /* next file offset */
	bool held;              /* the file is held: writes go through a lift */
};

struct sink_write {
	struct sink *s;
	const void *buf;
	size_t n;
};

static int sink_write_lifted(void *arg)
{
	struct sink_write *w = arg;
	loff_t pos = w->s->off;
	ssize_t r = kernel_write(w->s->file, w->buf, w->n, &pos);

	if (r < 0)
		return r;
	if ((size_t)r != w->n)
		return -EIO;
	return vfs_fsync_range(w->s->file, w->s->off, w->s->off + w->n - 1, 1);
}

static int sink_put(struct sink *s, const void *buf, size_t n)
{
	struct sink_write w = { s, buf, n };
	int r;

	if (n == 0)
		return 0;
	if (s->sock)
		return vpipe_tcp_send_all(s->sock, buf, n);
	r = s->held ? vpipe_hold_lift(s->file, sink_write_lifted, &w) : sink_write_lifted(&w);
	if (!r)
		s->off += n;
	return r;
}

/* Takes a source's unread bytes (at most max) and delivers them; *moved counts them.
 * once: a single read of what is queued now (at most LOCAL_BUF) -- a sender that keeps the
 * queue filled must not turn the offload into a guest copy; the rest goes to dom0. */
static int deliver_unread(struct file *src, struct sink *s, u64 max, void *buf, u64 *moved,
			  bool once)
{
	*moved = 0;
	while (*moved < max) {
		ssize_t n = vpipe_tcp_take_unread(src, buf, min_t(u64, LOCAL_BUF, max - *moved));
		int r;

		if (n < 0)
			return n;
		if (n == 0)
			break;
		r = sink_put(s, buf, n);
		if (r)
			return r;
		*moved += n;
		if (once)
			break;
	}
	return 0;
}

/* dom0's result for one endpoint, read from the pages of the request */
struct ep_result {
	u32 flags;
	struct vpipe_tcp_state st;
	const u8 *carry;
};

static void read_result(const u8 *pages, size_t size, bool source, struct ep_result *out)
{
	const struct vpipe_desc_header *h = (const void *)pages;
	const struct vpipe_endpoint *ep = source ? &h->src : &h->dst;
	u64 off, n;

	memset(out, 0, sizeof(*out));
	if (!pages)
		return;
	out->flags = VPIPE_EP_RESULT_FLAGS(ep);
	if (!(out->flags & VPIPE_EPF_VALID))
		return;
	out->st = ep->tcp;
	off = out->st.carry_offset;
	n = (u64)out->st.sndq_len + out->st.rcvq_len;
	if (off > size || n > size - off) {
		/* inconsistent: restore our own state (as if dom0 never took it over) */
		memset(out, 0, sizeof(*out));
		return;
	}
	out->carry = pages + off;
}

/*
 * One hand-over: the request, dom0's results, the restores. `src`/`dst` are the frozen
 * socket endpoints (NULL for a file endpoint); *new_src / *new_dst get the installed
 * descriptors. *dom0_moved from the response.
 */
static int run_request(u8 rop, u64 length, const struct vpipe_fmap *file, u64 file_off,
		       struct vpipe_frozen_sock *src, struct vpipe_frozen_sock *dst,
		       u64 *dom0_moved, int *new_src, int *new_dst, struct vpipe_ioc_op *op)
{
	struct vpipe_frozen_sock *eps[2] = { src, dst };
	int *fds[2] = { new_src, new_dst };
	struct vpipe_req *req = NULL;
	bool killed = false, have_pages = false;
	u8 *desc, *pages = NULL;
	u32 bytes = 0;
	int status, rs = 0, i;

	*dom0_moved = 0;
	desc = kvmalloc(VPIPE_DESC_MAX_BYTES, GFP_KERNEL);
	status = desc ? 0 : -ENOMEM;
	if (!status)
		status = vpipe_build_socket_desc(rop, file, file_off, length,
						 src ? &src->st : NULL, dst ? &dst->st : NULL,
						 desc, &bytes);
	if (!status)
		status = vpipe_front_submit(rop, length, desc, bytes, VPIPE_DESC_MAX_PAGES, &req);
	if (!status) {
		op->requests++;
		status = vpipe_front_wait(req, dom0_moved, &killed);
		/* the pages are copied back before they are freed (untouched: flags 0) */
		pages = desc;
		have_pages = vpipe_front_readback(req, pages, VPIPE_DESC_MAX_BYTES) == 0;
		vpipe_front_put(req);
	}
	for (i = 0; i < 2; i++) {
		struct vpipe_frozen_sock *fz = eps[i];
		struct ep_result res;
		int r;

		if (!fz)
			continue;
		/* A process killed meanwhile gets its sockets back too: dom0 is done with them, and
		 * the exit closes them like any other (the peer sees a FIN, not silence). */
		read_result(have_pages ? pages : NULL, VPIPE_DESC_MAX_BYTES, i == 0, &res);
		if (res.flags & VPIPE_EPF_RESET) {
			if (status == 0)
				status = -ECONNRESET;
			r = vpipe_tcp_restore(fz, NULL, NULL, VPIPE_EPF_RESET, fds[i]);
		} else if (res.flags & VPIPE_EPF_VALID) {
			r = vpipe_tcp_restore(fz, &res.st, res.carry, res.flags, fds[i]);
		} else {
			r = vpipe_tcp_restore(fz, NULL, NULL, 0, fds[i]);
		}
		if (r < 0) {
			pr_warn_ratelimited("vpipe: restoring a connection after the offload failed: %d\n",
					    r);
			if (rs == 0)
				rs = r;
		}
	}
	kvfree(desc);
	if (killed)
		return -EINTR;
	if (status == 0 && rs < 0)
		status = -EIO;
	return status;
}

/* The caller's socket for the next pass: the one restored last, or the original. */
static struct file *current_file(struct file *orig, int fd)
{
	return fd >= 0 ? fget(fd) : get_file(orig);
}

static int check_sock(struct file *f, bool *peer_fin)
{
	return vpipe_tcp_check(f, peer_fin);
}

/* file -> socket: one hand-over per chunk, each continuing on the socket the previous one
 * restored */
static int file_to_socket(struct file *in, struct file *out, struct vpipe_ioc_op *op,
			  int *new_out)
{
	struct vpipe_hold *hold = NULL;
	struct vpipe_fmap fm = {};
	u64 size, total, done = 0;
	int status;

	status = vpipe_hold_acquire(in, false, &hold);
	if (status)
		return status;
	size = i_size_read(file_inode(in));
	if (op->in_offset >= size)
		goto out;
	total = min(op->length, size - op->in_offset);
	status = vpipe_file_flush(in, op->in_offset, total);
	if (!status)
		status = vpipe_file_map(in, op->in_offset, total, &fm);
	if (status)
		goto out;
	atomic64_add(fm.nr, &vpipe_stats.extents_mapped);
	while (done < total && status == 0) {
		u64 len = min(total - done, vpipe_chunk_bytes()), m = 0;
		struct vpipe_frozen_sock d;
		struct file *cur = current_file(out, *new_out);
		int fd = -1, r;

		if (!cur) {
			status = -EBADF;
			break;
		}
		r = freeze_retry(cur, &d);
		fput(cur);
		if (r < 0) {
			status = r;
			break;
		}
		if (d.peer_fin) {
			/* the peer closed meanwhile: not ours to push into; give it back */
			vpipe_tcp_restore(&d, NULL, NULL, 0, &fd);
			if (fd >= 0) {
				drop_fd(new_out);
				*new_out = fd;
			}
			status = -EOPNOTSUPP;
			break;
		}
		r = run_request(VPIPE_OP_FILE_TO_SOCKET, len, &fm, done, NULL, &d, &m, NULL, &fd,
				op);
		if (fd >= 0) {
			drop_fd(new_out);
			*new_out = fd;
		}
		done += m;
		op->offloaded += m;
		op->paths |= VPIPE_PATH_OFFLOAD;
		if (r < 0)
			status = r;
		if (m < len)
			break;
	}
out:
	op->moved = done;
	vpipe_fmap_free(&fm);
	vpipe_hold_release(hold);
	atomic64_add(done, &vpipe_stats.bytes_offloaded);
	if (status < 0 && done == 0)
		return status;
	return 0;
}

/* socket -> file / socket -> socket, one pass (at most one chunk) */
static int socket_source_once(struct file *in, struct file *out, struct vpipe_ioc_op *op,
			      bool dst_sock, int *new_in, int *new_out)
{
	const u64 len = min(op->length, vpipe_chunk_bytes());
	struct vpipe_frozen_sock s, d;
	struct vpipe_hold *hold = NULL;
	struct vpipe_dprep prep = {};
	struct vpipe_fmap fm = {};
	struct sink sk = { .sock = dst_sock ? out : NULL, .file = dst_sock ? NULL : out,
			   .off = op->out_offset };
	u64 local = 0, more, m = 0;
	bool prepared = false;
	void *buf;
	int r, status = 0, fd;
	u32 i;

	buf = kvmalloc(LOCAL_BUF, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	if (!dst_sock) {
		/* the destination file first (it is slow), then the connection (frozen briefly) */
		status = vpipe_hold_acquire(out, true, &hold);
		if (!status) {
			sk.held = true;
			status = vpipe_dest_prepare(out, op->out_offset, len, &prep);
			prepared = true;
			op->zero_filled = prep.zero_filled;
			op->paths |= prep.paths;
		}
		if (!status)
			status = vpipe_file_map(out, op->out_offset, len, &fm);
		for (i = 0; !status && i < fm.nr; i++)
			if (fm.segs[i].zero)
				status = -EIO;
		if (status)
			goto finish;
		atomic64_add(fm.nr, &vpipe_stats.extents_mapped);
	}

	/* the unread bytes are the stream's first bytes: delivered by the guest */
	status = deliver_unread(in, &sk, len, buf, &local, true);
	if (status || local == len)
		goto finish;
	r = freeze_retry(in, &s);
	if (r < 0) {
		status = r;
		goto finish;
	}
	/* bytes that arrived between the read and the freeze, and a FIN that raced in */
	more = min_t(u64, s.unread_len, len - local);
	if (more) {
		r = sink_put(&sk, s.unread, more);
		if (r) {
			fd = -1;
			vpipe_tcp_restore(&s, NULL, NULL, 0, &fd);
			if (fd >= 0)
				*new_in = fd;
			status = r;
			goto finish;
		}
		vpipe_tcp_drop_unread(&s, more);
		local += more;
	}
	if (local == len || s.peer_fin) {
		/* nothing left for dom0 (or nothing more will come): the connection goes on here */
		fd = -1;
		r = vpipe_tcp_restore(&s, NULL, NULL, 0, &fd);
		if (fd >= 0)
			*new_in = fd;
		if (r && !status)
			status = r;
		goto finish;
	}
	if (dst_sock) {
		r = freeze_retry(out, &d);
		if (r == 0 && d.peer_fin) {
			fd = -1;
			vpipe_tcp_restore(&d, NULL, NULL, 0, &fd);
			if (fd >= 0)
				*new_out = fd;
			r = -EOPNOTSUPP;
		}
		if (r < 0) {
			fd = -1;
			vpipe_tcp_restore(&s, NULL, NULL, 0, &fd);
			if (fd >= 0)
				*new_in = fd;
			status = r;
			goto finish;
		}
	}
	{
		int fi = -1, fo = -1;

		status = run_request(dst_sock ? VPIPE_OP_SOCKET_TO_SOCKET : VPIPE_OP_SOCKET_TO_FILE,
				     len - local, dst_sock ? NULL : &fm, local, &s,
				     dst_sock ? &d : NULL, &m, &fi, &fo, op);
		if (fi >= 0)
			*new_in = fi;
		if (fo >= 0)
			*new_out = fo;
	}
	op->offloaded += m;
	op->paths |= VPIPE_PATH_OFFLOAD;
	atomic64_add(m, &vpipe_stats.bytes_offloaded);
finish:
	if (local) {
		op->guest_copied += local;
		op->paths |= VPIPE_PATH_GUEST_CACHE;
		atomic64_add(local, &vpipe_stats.bytes_guest_cache);
	}
	op->moved = local + m;
	if (prepared) {
		r = vpipe_dest_finish(out, op->out_offset, len, op->moved, &prep);
		if (r && r != -EBUSY && !status)
			status = r;
	}
	vpipe_fmap_free(&fm);
	vpipe_hold_release(hold);
	kvfree(buf);
	if (status < 0 && op->moved)
		pr_warn_ratelimited("vpipe: socket op short after %llu bytes: %d\n", op->moved,
				    status);
	return op->moved ? 0 : status;
}

/* validation and the local paths shared by every pass; 1 = go on with a hand-over */
static int socket_checks(struct file *in, struct file *out, struct vpipe_ioc_op *op,
			 bool *src_fin)
{
	const bool src_sock = op->op != VPIPE_IOC_FILE_TO_SOCKET;
	const bool dst_sock = op->op != VPIPE_IOC_SOCKET_TO_FILE;
	struct file *file = src_sock ? (dst_sock ? NULL : out) : in;
	bool dst_fin = false;
	u64 part;
	u32 vdev;
	int r;

	*src_fin = false;
	/* validation before anything is touched: exact errors, sockets stay usable */
	r = src_sock ? check_sock(in, src_fin) : check_file(in, false);
	if (r)
		return r;
	if (dst_sock) {
		r = check_sock(out, &dst_fin);
		if (r)
			return r;
		if (dst_fin)
			return -EOPNOTSUPP;   /* peer half-closed: the plain path handles it */
	} else {
		r = check_file(out, true);
		if (r)
			return r;
	}
	if (op->in_offset > LLONG_MAX || op->out_offset > LLONG_MAX)
		return -EINVAL;
	if (!dst_sock)
		op->length = min_t(u64, op->length, LLONG_MAX - op->out_offset);
	if (op->length == 0)
		return 0;
	if (file && vpipe_file_disk(file, &vdev, &part))
		return -ENXIO;
	if (!vpipe_front_connected())
		return -EHOSTDOWN;   /* before any socket is touched */
	return 1;
}

/* a source whose peer closed: what is queued is copied locally, no hand-over */
static int local_drain(struct file *in, struct file *out, struct vpipe_ioc_op *op, bool dst_sock)
{
	struct sink sk = { .sock = dst_sock ? out : NULL, .file = dst_sock ? NULL : out,
			   .off = op->out_offset };
	void *buf = kvmalloc(LOCAL_BUF, GFP_KERNEL);
	u64 moved = 0;
	int r;

	if (!buf)
		return -ENOMEM;
	r = deliver_unread(in, &sk, op->length, buf, &moved, false);
	kvfree(buf);
	op->moved = op->guest_copied = moved;
	op->paths |= VPIPE_PATH_GUEST_CACHE;
	atomic64_add(moved, &vpipe_stats.bytes_guest_cache);
	return moved ? 0 : r;
}

int vpipe_socket_op(struct file *in, struct file *out, struct vpipe_ioc_op *op,
		    int *new_in, int *new_out)
{
	const bool dst_sock = op->op != VPIPE_IOC_SOCKET_TO_FILE;
	const u64 total = op->length, chunk = vpipe_chunk_bytes();
	struct vpipe_ioc_op acc = *op;
	bool src_fin;
	int status = 0, r;

	*new_in = *new_out = -1;
	op->moved = op->offloaded = op->guest_copied = op->zero_filled = 0;
	op->paths = op->requests = 0;
	r = socket_checks(in, out, op, &src_fin);
	if (r <= 0)
		return r;
	if (op->op == VPIPE_IOC_FILE_TO_SOCKET)
		return file_to_socket(in, out, op, new_out);
	if (src_fin)
		return local_drain(in, out, op, dst_sock);

	/* socket -> file / socket -> socket: one chunk (hand-over) after the other until
	 * `length` bytes moved, the source really ended (FIN: short count) or the connection
	 * failed (short count; the next call reports the error) */
	acc.moved = acc.offloaded = acc.guest_copied = acc.zero_filled = 0;
	acc.paths = acc.requests = 0;
	while (acc.moved < op->length) {
		struct vpipe_ioc_op sub = *op;
		struct file *cin, *cout;
		int fi = -1, fo = -1;

		sub.length = op->length - acc.moved;
		sub.moved = sub.offloaded = sub.guest_copied = sub.zero_filled = 0;
		sub.paths = sub.requests = 0;
		if (op->op == VPIPE_IOC_SOCKET_TO_FILE)
			sub.out_offset = op->out_offset + acc.moved;
		cin = current_file(in, *new_in);
		cout = dst_sock ? current_file(out, *new_out) : get_file(out);
		if (!cin || !cout) {
			if (cin)
				fput(cin);
			if (cout)
				fput(cout);
			status = -EBADF;
			break;
		}
		if (acc.moved) {
			/* later passes: the restored sockets are checked again (a FIN may have come) */
			r = socket_checks(cin, cout, &sub, &src_fin);
			if (r <= 0 || src_fin) {
				if (r == 1 && src_fin)
					r = local_drain(cin, cout, &sub, dst_sock);
				fput(cin);
				fput(cout);
				acc.moved += sub.moved;
				acc.guest_copied += sub.guest_copied;
				acc.paths |= sub.paths;
				status = r < 0 ? r : 0;
				break;
			}
		}
		r = socket_source_once(cin, cout, &sub, dst_sock, &fi, &fo);
		fput(cin);
		fput(cout);
		if (fi >= 0) {
			drop_fd(new_in);
			*new_in = fi;
		}
		if (fo >= 0) {
			drop_fd(new_out);
			*new_out = fo;
		}
		acc.moved += sub.moved;
		acc.offloaded += sub.offloaded;
		acc.guest_copied += sub.guest_copied;
		acc.zero_filled += sub.zero_filled;
		acc.paths |= sub.paths;
		acc.requests += sub.requests;
		if (r < 0) {
			status = r;
			break;
		}
		if (sub.moved < min(sub.length, chunk) || sub.moved == 0)
			break;   /* EOF / peer gone */
		if (fatal_signal_pending(current))
			break;
	}
	op->moved = acc.moved;
	op->offloaded = acc.offloaded;
	op->guest_copied = acc.guest_copied;
	op->zero_filled = acc.zero_filled;
	op->paths = acc.paths;
	op->requests = acc.requests;
	op->length = total;
	if (status < 0 && acc.moved == 0)
		return status;
	if (status < 0)
		pr_warn_ratelimited("vpipe: socket op short after %llu bytes: %d\n", acc.moved,
				    status);
	return 0;
}
