// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * op_sock.c -- file -> socket, socket -> file, socket -> socket (docs/protocol.md 2a).
 *
 * Per operation, one hand-over: check the endpoints (a socket is not touched when a check
 * fails and stays usable), freeze each socket endpoint (flow blocked in the guest, the
 * connection captured WITH its queues -- bytes the application sent that the peer has not
 * acknowledged, bytes received that the application has not read -- and the 4-tuple freed
 * without FIN/RST), post one request that carries the queues (and a destination's head and
 * tail) in the endpoints' rooms, and when dom0 answers, restore every socket from dom0's final
 * state -- or from the frozen one if dom0 never took it over -- as a new descriptor of the
 * caller. Nothing waits for the peer: no acknowledgement, no drain.
 *
 * Exceptions: a source whose peer already closed is not handed over (what is queued is
 * copied by the guest and counted); socket -> file prepares destination blocks for at most
 * VPIPE_SOCK_FILE_WINDOW bytes per hand-over, so a length beyond it takes several.
 */
#include "vpipe_core.h"

#define FREEZE_TRIES 20

/* one socket endpoint through a hand-over */
struct sock_end {
	vpipe_fh fh;
	struct vpipe_frozen fz;
	int frozen;
	int new_fd;
	/* destination: sent before / after the data */
	const uint8_t *head, *tail;
	uint32_t head_len, tail_len;
	/* what came back */
	uint32_t flags;
};

static int freeze(const struct vpipe_core *c, struct sock_end *e)
{
	int i, r = -EAGAIN;

	memset(&e->fz, 0, sizeof(e->fz));
	e->new_fd = -1;
	/* -EAGAIN: the connection moved while it was read (a segment or a timer): again */
	for (i = 0; i < FREEZE_TRIES && r == -EAGAIN; i++)
		r = c->ops->sock_freeze(c->env, e->fh, &e->fz);
	if (r == 0)
		e->frozen = 1;
	return r;
}

static int restore(const struct vpipe_core *c, struct sock_end *e, const struct vpipe_restore *rs)
{
	struct vpipe_restore own;
	int r;

	if (!e->frozen)
		return 0;
	if (!rs) {
		memset(&own, 0, sizeof(own));
		rs = &own;
	}
	r = c->ops->sock_restore(c->env, &e->fz, rs, &e->new_fd);
	e->frozen = 0;
	e->flags = rs->flags;
	return r;
}

static void sock_in(const struct sock_end *e, struct vpipe_sock_in *in)
{
	memset(in, 0, sizeof(*in));
	in->st = &e->fz.st;
	in->sndq = e->fz.sndq;
	in->rcvq = e->fz.rcvq;
	in->head = e->head;
	in->head_len = e->head_len;
	in->tail = e->tail;
	in->tail_len = e->tail_len;
}

/* Restores one endpoint from the results dom0 wrote into the request's area. */
static int restore_from(const struct vpipe_core *c, void *t, int have_pages,
			const struct vpipe_desc_header *h, int source, uint64_t room_off, uint32_t room,
			struct sock_end *e, int *status, uint64_t *recorded)
{
	struct vpipe_sock_result res;
	struct vpipe_restore rs;
	uint8_t *q = NULL;
	uint64_t qlen;
	int r;

	memset(&res, 0, sizeof(res));
	if (have_pages && vpipe_desc_result(h, source, &e->fz.st, room_off, room, &res) < 0 && *status == 0)
		*status = -EIO;   /* dom0 broke the protocol: the connection goes back as frozen */
	memset(&rs, 0, sizeof(rs));
	rs.flags = res.flags;
	if (res.flags & VPIPE_EPF_TAKEN) {
		/* dom0 died holding the connection (VPIPE_EPF_TAKEN): whatever the transport said */
		*status = -ECONNABORTED;
		return restore(c, e, &rs);
	}
	if (res.flags & VPIPE_EPF_RESET) {
		if (*status == 0)
			*status = -ECONNRESET;
		return restore(c, e, &rs);
	}
	if (res.flags & VPIPE_EPF_VALID) {
		qlen = (uint64_t)res.st.sndq_len + res.st.rcvq_len;
		if (qlen) {
			q = c->ops->alloc(c->env, (size_t)qlen);
			if (!q || c->ops->readback(c->env, t, res.carry_off, q, qlen)) {
				/* the final state without its queues cannot be restored */
				rs.flags = VPIPE_EPF_RESET;
				if (*status == 0)
					*status = q ? -EIO : -ENOMEM;
				r = restore(c, e, &rs);
				if (q)
					c->ops->free(c->env, q);
				return r;
			}
		}
		if (res.moved > *recorded)
			*recorded = res.moved;
		rs.st = &res.st;
		rs.sndq = q;
		rs.rcvq = q ? q + res.st.sndq_len : NULL;
	}
	r = restore(c, e, &rs);
	if (q)
		c->ops->free(c->env, q);
	return r;
}

/*
 * socket -> file with the destination readied while dom0 works (VPIPE_REQF_PREPARING): after
 * the request is posted the caller zero-fills the allocated range in stream order, publishing
 * how far it got; dom0 receives only below that watermark. Steps start small (dom0 waits for
 * the first) and grow to PREP_STEP_MAX (each a few ms of disk time).
 */
#define PREP_STEP_FIRST (1ull << 20)
#define PREP_STEP_MAX (8ull << 20)

struct prep_ahead {
	vpipe_fh f;
	uint64_t off, len;
	struct vpipe_dprep *p;
	int status;               /* out: how readying went (0, or the first error) */
};

static void prepare_ahead(const struct vpipe_core *c, void *t, struct prep_ahead *pa)
{
	const struct vpipe_core_ops *ops = c->ops;
	uint64_t done = 0, step = PREP_STEP_FIRST, n;
	int r = 0;

	while (done < pa->len) {
		n = VC_MIN(step, pa->len - done);
		/* end steps on a 1 MiB boundary of the file: a block is never split between two */
		if (done + n < pa->len && (pa->off + done + n) % PREP_STEP_FIRST > 0 &&
		    (pa->off + done + n) % PREP_STEP_FIRST < n)
			n -= (pa->off + done + n) % PREP_STEP_FIRST;
		r = ops->dest_fill(c->env, pa->f, pa->off + done, n, pa->p);
		if (!r && ops->fatal_signal(c->env))
			r = -EINTR;
		if (r)
			break;
		done += n;
		ops->publish(c->env, t, VPIPE_PREPARED_OFFSET, done);
		step = VC_MIN(step * 2, PREP_STEP_MAX);
	}
	if (!r)
		r = ops->dest_commit(c->env, pa->f, pa->off, pa->len);
	if (r) {
		/* dom0 stops taking bytes past `done`: what it took has ready blocks */
		ops->publish(c->env, t, VPIPE_PREPARED_OFFSET, done | VPIPE_PREPARED_FAILED);
		pa->status = r;
	}
}

/*
 * One hand-over: the request, dom0's results, the restores. `src` / `dst` are the frozen socket
 * endpoints (NULL for the file endpoint); every frozen endpoint is restored on return, also on
 * errors. *moved from the response (bytes of `length`). `pa`: a destination readied while dom0
 * works (socket -> file), NULL when it is ready already.
 */
static int hand_over(const struct vpipe_core *c, uint8_t rop, uint64_t length,
		     const struct vpipe_extents *file, uint64_t file_off, struct sock_end *src,
		     struct sock_end *dst, uint64_t *moved, struct vpipe_ioc_op *op,
		     struct prep_ahead *pa)
{
	struct vpipe_sock_in si, di;
	struct vpipe_sock_layout l;
	struct vpipe_desc_header h;
	struct vpipe_submit s;
	void *stream = NULL, *t = NULL;
	uint64_t nseg = file ? vpipe_ext_count(file, file_off, file_off + length) : 0;
	uint64_t recorded = 0;
	int status, killed = 0, have_pages = 0, rs = 0, r;

	*moved = 0;
	if (src)
		sock_in(src, &si);
	if (dst)
		sock_in(dst, &di);
	stream = c->ops->alloc(c->env, sizeof(h) + (size_t)nseg * sizeof(struct vpipe_segment));
	status = stream ? 0 : -ENOMEM;
	if (!status)
		status = vpipe_desc_socket(rop, file, file_off, length, src ? &si : NULL, dst ? &di : NULL,
					   c->cfg.room_max ? c->cfg.room_max : VPIPE_ROOM_MAX_DEFAULT,
					   stream, &l);
	if (status == -E2BIG)
		status = -EOPNOTSUPP;   /* too fragmented for one request: the classic path */
	if (!status) {
		memset(&s, 0, sizeof(s));
		s.op = rop;
		s.flags = pa ? VPIPE_REQF_PREPARING : 0;
		s.length = length;
		s.desc_bytes = l.desc_bytes;
		s.area_bytes = l.area_bytes;
		s.piece = l.piece;
		s.npieces = l.npieces;
		status = c->ops->submit(c->env, &s, &t);
	}
	if (!status) {
		c->ops->count(c->env, VPIPE_CNT_REQUESTS, 1);
		op->requests++;
		if (pa)
			prepare_ahead(c, t, pa);
		status = c->ops->wait(c->env, t, moved, &killed);
		if (pa && pa->status && (status == 0 || status == -ECANCELED))
			status = pa->status;   /* the guest's own reason, not dom0's echo of it */
		/* the results, read back before the pages go (untouched: flags 0) */
		have_pages = c->ops->readback(c->env, t, 0, &h, sizeof(h)) == 0;
	}
	/* A process killed meanwhile gets its sockets back too: dom0 is done with them, and the
	 * exit closes them like any other (the peer sees a FIN, not silence). */
	if (src) {
		r = t ? restore_from(c, t, have_pages, &h, 1, l.room_off[0], l.room[0], src, &status, &recorded)
		      : restore(c, src, NULL);
		if (r < 0 && rs == 0)
			rs = r;
	}
	if (dst) {
		r = t ? restore_from(c, t, have_pages, &h, 0, l.room_off[1], l.room[1], dst, &status, &recorded)
		      : restore(c, dst, NULL);
		if (r < 0 && rs == 0)
			rs = r;
	}
	/* No response (the transport failed it: -ECANCELED, nothing moved) but dom0 had handed
	 * the connections back with their final state and recorded what moved: that counts. */
	if (status == -ECANCELED && *moved == 0 && recorded) {
		*moved = VC_MIN(recorded, length);
		if (*moved == length)
			status = 0;
	}
	if (t)
		c->ops->put(c->env, t);
	if (stream)
		c->ops->free(c->env, stream);
	if (killed)
		return -EINTR;
	if (status == 0 && rs < 0)
		status = -EIO;
	return status;
}

/* a restored socket becomes the caller's; one restored earlier in this call is superseded */
static void take_fd(const struct vpipe_core *c, int *slot, int fd)
{
	if (fd < 0)
		return;
	if (*slot >= 0)
		c->ops->fd_close(c->env, *slot);
	*slot = fd;
}

static void note_offloaded(const struct vpipe_core *c, struct vpipe_ioc_op *op, uint64_t m)
{
	op->offloaded += m;
	op->paths |= VPIPE_PATH_OFFLOAD;
	c->ops->count(c->env, VPIPE_CNT_OFFLOADED, m);
}

/* the head went out if dom0 took the connection over; the tail if dom0 says so */
static void note_hdtr(struct vpipe_ioc_op *op, const struct sock_end *d)
{
	if (d->flags & VPIPE_EPF_VALID)
		op->hdtr_moved += d->head_len;
	if (d->flags & VPIPE_EPF_TAIL_SENT)
		op->hdtr_moved += d->tail_len;
}

static int local_drain(const struct vpipe_core *c, struct vpipe_core_call *call, vpipe_fh in,
		       uint64_t out_off, uint64_t length, uint64_t *moved)
{
	struct vpipe_ioc_op *op = call->op;
	const int dst_file = op->op == VPIPE_IOC_SOCKET_TO_FILE;
	int r = c->ops->local_drain(c->env, in, call->out, dst_file, out_off, length, moved);

	op->guest_copied += *moved;
	op->paths |= VPIPE_PATH_GUEST_CACHE;
	c->ops->count(c->env, VPIPE_CNT_GUEST_CACHE, *moved);
	return r;
}

static int file_to_socket(const struct vpipe_core *c, struct vpipe_core_call *call)
{
	struct vpipe_ioc_op *op = call->op;
	struct vpipe_extents fm;
	struct sock_end d;
	void *hold = NULL;
	uint64_t size = 0, total, m = 0;
	int status, r;

	memset(&fm, 0, sizeof(fm));
	memset(&d, 0, sizeof(d));
	status = c->ops->hold(c->env, call->in, 0, &hold);
	if (status)
		return status;
	if ((status = c->ops->file_size(c->env, call->in, &size)) || op->in_offset >= size)
		goto out;
	total = VC_MIN(op->length, size - op->in_offset);
	/* the paper's cache rule, whole ranges only: bytes the guest holds clean in its page
	 * cache leave faster through its own sendfile than through a hand-over and a disk read */
	if (c->cfg.cache_rule_f2s && !(op->flags & VPIPE_OPF_NO_CACHE_RULE) &&
	    c->ops->range_cached(c->env, call->in, op->in_offset, total) == 1) {
		status = -EALREADY;
		goto out;
	}
	status = c->ops->flush(c->env, call->in, op->in_offset, total);
	if (!status)
		status = vpipe_core_map(c, call->in, op->in_offset, total, &fm);
	if (status)
		goto out;
	d.fh = call->out;
	d.head = call->head;
	d.head_len = op->head_len;
	d.tail = call->tail;
	d.tail_len = op->tail_len;
	status = freeze(c, &d);
	if (status)
		goto out;
	if (d.fz.peer_fin) {
		/* the peer closed meanwhile: not ours to push into; give it back */
		restore(c, &d, NULL);
		take_fd(c, &call->new_out, d.new_fd);
		status = -EOPNOTSUPP;
		goto out;
	}
	r = hand_over(c, VPIPE_OP_FILE_TO_SOCKET, total, &fm, 0, NULL, &d, &m, op, NULL);
	take_fd(c, &call->new_out, d.new_fd);
	note_offloaded(c, op, m);
	note_hdtr(op, &d);
	op->moved = m;
	status = r;
out:
	vpipe_core_unmap(c, &fm);
	c->ops->unhold(c->env, hold);
	return status < 0 && op->moved == 0 ? status : 0;
}

/* socket -> file, one hand-over of at most VPIPE_SOCK_FILE_WINDOW bytes at out_off.
 * *src_fin when the peer had closed: the caller drains what is queued locally. */
static int socket_to_file_once(const struct vpipe_core *c, struct vpipe_core_call *call, vpipe_fh in,
			       uint64_t out_off, uint64_t len, uint64_t *moved, int *src_fin)
{
	const struct vpipe_core_ops *ops = c->ops;
	struct vpipe_ioc_op *op = call->op;
	/* ready the blocks while dom0 receives, where the component can */
	const int ahead = c->cfg.prepare_ahead && ops->dest_allocate && ops->map_allocated &&
			  ops->dest_fill && ops->dest_commit && ops->publish;
	struct prep_ahead pa;
	struct vpipe_extents fm;
	struct vpipe_dprep prep;
	struct sock_end s;
	uint32_t i;
	int status, r;

	*moved = 0;
	*src_fin = 0;
	memset(&fm, 0, sizeof(fm));
	memset(&prep, 0, sizeof(prep));
	memset(&s, 0, sizeof(s));
	memset(&pa, 0, sizeof(pa));
	/* the destination file first (it is slow), then the connection (frozen briefly) */
	if (ahead)
		status = ops->dest_allocate(c->env, call->out, out_off, len, &prep);
	else
		status = ops->dest_prepare(c->env, call->out, out_off, len, &prep);
	if (!status)
		status = ahead ? vpipe_core_map_allocated(c, call->out, out_off, len, &fm)
			       : vpipe_core_map(c, call->out, out_off, len, &fm);
	for (i = 0; !status && i < fm.nr; i++)
		if (fm.segs[i].zero)
			status = -EIO;   /* preparation promised (allocated or written) blocks */
	if (status)
		goto finish;
	s.fh = in;
	status = freeze(c, &s);
	if (status)
		goto finish;
	if (s.fz.peer_fin) {
		/* a FIN raced in: the connection goes on here, the queue is drained locally */
		restore(c, &s, NULL);
		take_fd(c, &call->new_in, s.new_fd);
		*src_fin = 1;
		goto finish;
	}
	pa.f = call->out;
	pa.off = out_off;
	pa.len = len;
	pa.p = &prep;
	status = hand_over(c, VPIPE_OP_SOCKET_TO_FILE, len, &fm, 0, &s, NULL, moved, op, ahead ? &pa : NULL);
	take_fd(c, &call->new_in, s.new_fd);
	note_offloaded(c, op, *moved);
finish:
	op->zero_filled += prep.zero_filled;
	op->paths |= prep.paths;
	ops->count(c->env, VPIPE_CNT_ZERO_FILLED, prep.zero_filled);
	ops->count(c->env, VPIPE_CNT_WRITE_ZEROES, prep.write_zeroes);
	vpipe_core_unmap(c, &fm);
	r = c->ops->dest_finish(c->env, call->out, out_off, len, *moved, &prep);
	if (r && r != -EBUSY && status == 0)
		status = r;
	return status;
}

static int socket_to_socket(const struct vpipe_core *c, struct vpipe_core_call *call)
{
	struct vpipe_ioc_op *op = call->op;
	struct sock_end s, d;
	uint64_t m = 0;
	int status;

	memset(&s, 0, sizeof(s));
	memset(&d, 0, sizeof(d));
	s.fh = call->in;
	status = freeze(c, &s);
	if (status)
		return status;
	if (s.fz.peer_fin) {
		/* a FIN raced in: the connection goes on here, the queue is drained locally */
		vpipe_fh in = call->in;

		restore(c, &s, NULL);
		take_fd(c, &call->new_in, s.new_fd);
		if (s.new_fd >= 0 && c->ops->sock_adopt(c->env, &in, s.new_fd) < 0)
			return -EIO;
		status = local_drain(c, call, in, 0, op->length, &op->moved);
		return status < 0 && op->moved == 0 ? status : 0;
	}
	d.fh = call->out;
	d.head = call->head;
	d.head_len = op->head_len;
	d.tail = call->tail;
	d.tail_len = op->tail_len;
	status = freeze(c, &d);
	if (!status && d.fz.peer_fin) {
		restore(c, &d, NULL);
		take_fd(c, &call->new_out, d.new_fd);
		status = -EOPNOTSUPP;
	}
	if (status) {
		restore(c, &s, NULL);
		take_fd(c, &call->new_in, s.new_fd);
		return status;
	}
	status = hand_over(c, VPIPE_OP_SOCKET_TO_SOCKET, op->length, NULL, 0, &s, &d, &m, op, NULL);
	take_fd(c, &call->new_in, s.new_fd);
	take_fd(c, &call->new_out, d.new_fd);
	note_offloaded(c, op, m);
	note_hdtr(op, &d);
	op->moved = m;
	return status < 0 && m == 0 ? status : 0;
}

int vpipe_core_socket_op(const struct vpipe_core *c, struct vpipe_core_call *call)
{
	const struct vpipe_core_ops *ops = c->ops;
	void *env = c->env;
	struct vpipe_ioc_op *op = call->op;
	const int src_sock = op->op != VPIPE_IOC_FILE_TO_SOCKET;
	const int dst_sock = op->op != VPIPE_IOC_SOCKET_TO_FILE;
	int src_fin = 0, dst_fin = 0, r, status = 0;
	vpipe_fh in;
	uint64_t done;

	/* validation before anything is touched: exact errors, sockets stay usable */
	r = src_sock ? ops->sock_check(env, call->in, &src_fin) : ops->file_regular(env, call->in);
	if (!r && !src_sock)
		r = ops->file_access(env, call->in, 0);
	if (r)
		return r;
	if (dst_sock) {
		if ((r = ops->sock_check(env, call->out, &dst_fin)))
			return r;
		if (dst_fin)
			return -EOPNOTSUPP;   /* peer half-closed: the plain path handles it */
	} else if ((r = ops->file_regular(env, call->out)) || (r = ops->file_access(env, call->out, 1))) {
		return r;
	}
	if (op->in_offset > VC_INT64_MAX || op->out_offset > VC_INT64_MAX)
		return -EINVAL;
	if ((op->head_len || op->tail_len) && !dst_sock)
		return -EINVAL;
	if (op->head_len > VPIPE_HDTR_MAX || op->tail_len > VPIPE_HDTR_MAX)
		return -EINVAL;
	if (!dst_sock)
		op->length = VC_MIN(op->length, VC_INT64_MAX - op->out_offset);
	if (op->length == 0)
		return 0;
	if ((!src_sock && ops->file_disk(env, call->in)) || (!dst_sock && ops->file_disk(env, call->out)))
		return -ENXIO;
	if (!ops->connected(env))
		return -EHOSTDOWN;   /* before any socket is touched */

	if (src_sock && src_fin) {
		/* a source whose peer closed: what is queued is copied here, no hand-over */
		r = local_drain(c, call, call->in, op->out_offset, op->length, &op->moved);
		return r < 0 && op->moved == 0 ? r : 0;
	}
	if (op->op == VPIPE_IOC_FILE_TO_SOCKET)
		return file_to_socket(c, call);
	if (op->op == VPIPE_IOC_SOCKET_TO_SOCKET)
		return socket_to_socket(c, call);

	/* socket -> file: one hand-over per window of destination blocks */
	in = call->in;
	{
		void *hold = NULL;

		status = ops->hold(env, call->out, 1, &hold);
		if (status)
			return status;
		for (done = 0; done < op->length;) {
			uint64_t len = VC_MIN(op->length - done, VPIPE_SOCK_FILE_WINDOW), m = 0;
			int fin = 0;

			r = socket_to_file_once(c, call, in, op->out_offset + done, len, &m, &fin);
			done += m;
			if (fin) {
				uint64_t more = 0;

				if (call->new_in >= 0 && ops->sock_adopt(env, &in, call->new_in) < 0)
					break;
				local_drain(c, call, in, op->out_offset + done, op->length - done, &more);
				done += more;
				break;
			}
			if (r < 0) {
				status = r;
				break;
			}
			if (m < len || ops->fatal_signal(env))
				break;   /* EOF (the peer's FIN consumed in dom0) or the caller dies */
			if (call->new_in >= 0 && ops->sock_adopt(env, &in, call->new_in) < 0)
				break;
		}
		ops->unhold(env, hold);
	}
	op->moved = done;
	return status < 0 && done == 0 ? status : 0;
}

int vpipe_core_op(const struct vpipe_core *c, struct vpipe_core_call *call)
{
	struct vpipe_ioc_op *op = call->op;

	op->moved = op->offloaded = op->guest_copied = op->zero_filled = 0;
	op->paths = op->requests = 0;
	op->hdtr_moved = 0;
	call->new_in = call->new_out = -1;
	if (op->op == VPIPE_IOC_FILE_TO_FILE)
		return vpipe_core_file_to_file(c, call);
	if (op->op >= VPIPE_IOC_FILE_TO_SOCKET && op->op <= VPIPE_IOC_SOCKET_TO_SOCKET)
		return vpipe_core_socket_op(c, call);
	return -EINVAL;
}
