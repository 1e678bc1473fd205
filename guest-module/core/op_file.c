// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * op_file.c -- file -> file (docs/design.md: "Files: rules that keep data safe").
 *
 * The source is held (its blocks and size stay still), flushed (the disk holds what the page
 * cache holds) and mapped; the destination is held, its blocks made written before dom0 writes
 * them (docs/append.md), mapped, and afterwards its cached pages dropped and its size set. The
 * operation is cut into stages; the guest prepares the destination of stage k+1 while dom0
 * copies stage k. Runs of the source that the page cache holds clean can be copied by the
 * guest instead (the paper's cache rule, off by default for file -> file).
 */
#include "vpipe_core.h"

#define STAGES_IN_FLIGHT 2
#define MAX_CACHED_RUNS 64

/* a piece of the operation's stream: offloaded, or copied by the guest (cache rule) */
struct piece {
	uint64_t off, len;
	int from_cache;
	int broken;
	uint64_t done;
};

struct stage {
	uint64_t off, len;          /* in the operation's stream */
	uint32_t piece;
	uint32_t n, cap;            /* requests posted */
	void **tickets;
	uint64_t *lens;
	int status;
};

/* maps and indexes [off, off + len) of f (the index's storage is the core's) */
static int map_with(const struct vpipe_core *c,
		    int (*map)(void *env, vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_extents *out),
		    vpipe_fh f, uint64_t off, uint64_t len, struct vpipe_extents *x)
{
	uint64_t *ends;
	int r;

	memset(x, 0, sizeof(*x));
	if (!map)
		return -EOPNOTSUPP;
	r = map(c->env, f, off, len, x);
	if (r)
		return r;
	ends = c->ops->alloc(c->env, (size_t)VC_MAX(x->nr, 1u) * sizeof(uint64_t));
	if (!ends) {
		c->ops->unmap(c->env, x);
		memset(x, 0, sizeof(*x));
		return -ENOMEM;
	}
	vpipe_ext_index(x, ends);
	if (vpipe_ext_total(x) != len) {
		vpipe_core_unmap(c, x);
		return -EIO;   /* the mapper must describe exactly the range */
	}
	c->ops->count(c->env, VPIPE_CNT_EXTENTS, x->nr);
	return 0;
}

int vpipe_core_map(const struct vpipe_core *c, vpipe_fh f, uint64_t off, uint64_t len,
		   struct vpipe_extents *x)
{
	return map_with(c, c->ops->map, f, off, len, x);
}

int vpipe_core_map_allocated(const struct vpipe_core *c, vpipe_fh f, uint64_t off, uint64_t len,
			     struct vpipe_extents *x)
{
	return map_with(c, c->ops->map_allocated, f, off, len, x);
}

void vpipe_core_unmap(const struct vpipe_core *c, struct vpipe_extents *x)
{
	if (x->ends)
		c->ops->free(c->env, x->ends);
	x->ends = NULL;
	if (x->segs || x->os)
		c->ops->unmap(c->env, x);
	memset(x, 0, sizeof(*x));
}

static int stage_push(const struct vpipe_core *c, struct stage *st, void *t, uint64_t len)
{
	if (st->n == st->cap) {
		uint32_t cap = st->cap ? st->cap * 2 : 8;
		void **nt = c->ops->alloc(c->env, cap * sizeof(*nt));
		uint64_t *nl = c->ops->alloc(c->env, cap * sizeof(*nl));

		if (!nt || !nl) {
			if (nt)
				c->ops->free(c->env, nt);
			if (nl)
				c->ops->free(c->env, nl);
			return -ENOMEM;
		}
		if (st->n) {
			memcpy(nt, st->tickets, st->n * sizeof(*nt));
			memcpy(nl, st->lens, st->n * sizeof(*nl));
		}
		if (st->tickets)
			c->ops->free(c->env, st->tickets);
		if (st->lens)
			c->ops->free(c->env, st->lens);
		st->tickets = nt;
		st->lens = nl;
		st->cap = cap;
	}
	st->tickets[st->n] = t;
	st->lens[st->n] = len;
	st->n++;
	return 0;
}

static void stage_free(const struct vpipe_core *c, struct stage *st)
{
	uint32_t i;

	for (i = 0; i < st->n; i++)
		c->ops->put(c->env, st->tickets[i]);
	if (st->tickets)
		c->ops->free(c->env, st->tickets);
	if (st->lens)
		c->ops->free(c->env, st->lens);
	st->tickets = NULL;
	st->lens = NULL;
	st->n = st->cap = 0;
}

/* Posts the requests of one stage: src and dst cover st->len bytes each. */
static void submit_stage(const struct vpipe_core *c, struct stage *st, const struct vpipe_extents *src,
			 const struct vpipe_extents *dst, void *buf, struct vpipe_ioc_op *op)
{
	const uint64_t chunk = (uint64_t)VC_MIN(VC_MAX(c->cfg.chunk_mib, 1u), 1024u) << 20;
	uint64_t p, q;

	for (p = 0; p < st->len; p = q) {
		struct vpipe_area_layout l;
		struct vpipe_piece piece;
		struct vpipe_submit s;
		uint64_t bytes;
		void *t;
		int r;

		q = vpipe_f2f_cut(src, dst, p, st->len, chunk, VPIPE_DESC_MAX_SEGMENTS);
		bytes = sizeof(struct vpipe_desc_header) +
			(vpipe_ext_count(src, p, q) + vpipe_ext_count(dst, p, q)) * sizeof(struct vpipe_segment);
		if (vpipe_area_plan(bytes, &l) || l.ind_pages) {
			st->status = -EIO;   /* the cut keeps a request inside the direct pages */
			return;
		}
		memset(&s, 0, sizeof(s));
		s.op = VPIPE_OP_FILE_TO_FILE;
		s.length = q - p;
		s.desc_bytes = vpipe_desc_f2f(src, dst, p, q, l.data_pages, buf);
		s.area_bytes = s.desc_bytes;
		piece.off = 0;
		piece.src = buf;
		piece.len = s.desc_bytes;
		s.piece = &piece;
		s.npieces = 1;
		r = c->ops->submit(c->env, &s, &t);
		if (r) {
			st->status = r;
			return;
		}
		c->ops->count(c->env, VPIPE_CNT_REQUESTS, 1);
		op->requests++;
		r = stage_push(c, st, t, q - p);
		if (r) {
			/* cannot track it: wait for it here, it must not outlive its holds */
			uint64_t m;
			int killed = 0;

			c->ops->wait(c->env, t, &m, &killed);
			c->ops->put(c->env, t);
			st->status = r;
			return;
		}
	}
}

/* Waits for a stage; returns the bytes of its leading run of fully completed requests. */
static uint64_t wait_stage(const struct vpipe_core *c, struct stage *st, int *killed)
{
	uint64_t moved = 0, total = 0;
	int intact = 1;
	uint32_t i;

	for (i = 0; i < st->n; i++) {
		uint64_t m = 0;
		int r = c->ops->wait(c->env, st->tickets[i], &m, killed);

		total += m;
		if (intact) {
			moved += m;
			if (r < 0 || m < st->lens[i])
				intact = 0;
		}
		if (r < 0 && st->status == 0)
			st->status = r;
	}
	if (st->status == 0 && moved < st->len)
		st->status = -EIO;
	c->ops->count(c->env, VPIPE_CNT_OFFLOADED, total);
	return moved;
}

static void retire(const struct vpipe_core *c, struct stage *st, struct piece *pieces, int *status,
		   int *killed, struct vpipe_ioc_op *op)
{
	uint64_t m = wait_stage(c, st, killed);

	op->offloaded += m;
	if (!pieces[st->piece].broken)
		pieces[st->piece].done += m;
	if (st->status < 0) {
		pieces[st->piece].broken = 1;
		if (*status == 0)
			*status = st->status;
	}
}

int vpipe_core_file_to_file(const struct vpipe_core *c, struct vpipe_core_call *call)
{
	const struct vpipe_core_ops *ops = c->ops;
	void *env = c->env;
	struct vpipe_ioc_op *op = call->op;
	struct vpipe_extents sm, dm;
	struct vpipe_dprep total;
	struct stage *stages = NULL;
	struct piece *pieces = NULL;
	struct vpipe_range *cached = NULL;
	void *src_hold = NULL, *dst_hold = NULL, *buf = NULL;
	uint64_t size = 0, len, stage_bytes, written = 0, pos, o;
	uint32_t nstages = 0, npieces = 0, k, waited = 0, i;
	int same, killed = 0, status = 0, ncached = 0, r;

	memset(&sm, 0, sizeof(sm));
	memset(&dm, 0, sizeof(dm));
	memset(&total, 0, sizeof(total));
	if ((r = ops->file_regular(env, call->in)) || (r = ops->file_regular(env, call->out)))
		return r;
	if ((r = ops->file_access(env, call->in, 0)) || (r = ops->file_access(env, call->out, 1)))
		return r;
	if (op->in_offset > VC_INT64_MAX || op->out_offset > VC_INT64_MAX || op->head_len || op->tail_len)
		return -EINVAL;
	/* "everything that is left" is a normal request: clamp to what a file can address */
	op->length = VC_MIN(op->length, VC_INT64_MAX - op->out_offset);
	if (ops->file_disk(env, call->in) || ops->file_disk(env, call->out))
		return -ENXIO;
	if (!ops->connected(env))
		return -EHOSTDOWN;

	/* the source is held first: from here its size and blocks are stable */
	if ((r = ops->hold(env, call->in, 0, &src_hold)))
		return r;
	if ((status = ops->file_size(env, call->in, &size)))
		goto out;
	if (op->in_offset >= size || op->length == 0)
		goto out;
	len = VC_MIN(op->length, size - op->in_offset);
	same = ops->file_same(env, call->in, call->out);
	if (same && op->in_offset < op->out_offset + len && op->out_offset < op->in_offset + len) {
		status = -EINVAL;
		goto out;
	}
	pieces = ops->alloc(env, (2 * MAX_CACHED_RUNS + 1) * sizeof(*pieces));
	cached = ops->alloc(env, MAX_CACHED_RUNS * sizeof(*cached));
	buf = ops->alloc(env, VPIPE_DESC_MAX_BYTES);
	if (!pieces || !cached || !buf) {
		status = -ENOMEM;
		goto out;
	}
	/* The cache rule looks at the page cache as the application left it: runs that are
	 * cached and clean are served by the guest; dirty data is flushed and offloaded (after
	 * the flush every page would look clean, so the rule must be applied first). */
	if (c->cfg.cache_rule_f2f && !(op->flags & VPIPE_OPF_NO_CACHE_RULE))
		ncached = ops->cached_runs(env, call->in, op->in_offset, len, size, cached, MAX_CACHED_RUNS);
	if (ncached < 0)
		ncached = 0;
	/* the disk must hold what the page cache holds before dom0 reads it */
	if ((status = ops->flush(env, call->in, op->in_offset, len)))
		goto out;
	for (pos = 0, i = 0; i < (uint32_t)ncached; i++) {
		uint64_t start = cached[i].offset - op->in_offset;

		if (start > pos) {
			memset(&pieces[npieces], 0, sizeof(pieces[0]));
			pieces[npieces].off = pos;
			pieces[npieces++].len = start - pos;
		}
		memset(&pieces[npieces], 0, sizeof(pieces[0]));
		pieces[npieces].off = start;
		pieces[npieces].len = cached[i].length;
		pieces[npieces++].from_cache = 1;
		pos = start + cached[i].length;
	}
	if (pos < len) {
		memset(&pieces[npieces], 0, sizeof(pieces[0]));
		pieces[npieces].off = pos;
		pieces[npieces++].len = len - pos;
	}

	/* The destination is held for the whole operation; preparing and finishing it lift the
	 * hold briefly for their own fallocate / zero-fill / truncate. */
	if (!same && (status = ops->hold(env, call->out, 1, &dst_hold)))
		goto out;
	/* finishing sets the size from the original one: taken before anything grows the file */
	if ((status = ops->file_size(env, call->out, &total.old_size)))
		goto out;
	stage_bytes = VC_MAX((uint64_t)VC_MIN(VC_MAX(c->cfg.chunk_mib, 1u), 1024u) << 20, 16ull << 20);
	for (i = 0; i < npieces; i++)
		if (!pieces[i].from_cache)
			nstages += (uint32_t)((pieces[i].len + stage_bytes - 1) / stage_bytes);
	stages = ops->alloc(env, (size_t)VC_MAX(nstages, 1u) * sizeof(*stages));
	if (!stages) {
		status = -ENOMEM;
		goto out;
	}
	memset(stages, 0, (size_t)VC_MAX(nstages, 1u) * sizeof(*stages));
	for (k = 0, i = 0; i < npieces; i++) {
		if (pieces[i].from_cache)
			continue;
		for (o = 0; o < pieces[i].len; o += stage_bytes, k++) {
			stages[k].off = pieces[i].off + o;
			stages[k].len = VC_MIN(stage_bytes, pieces[i].len - o);
			stages[k].piece = i;
		}
	}

	/* the guest prepares stage k+1 (zero-fill costs guest disk writes) while dom0 copies k */
	for (k = 0; k < nstages && status == 0; k++) {
		struct stage *st = &stages[k];
		struct vpipe_dprep p;
		uint32_t j;

		if (ops->fatal_signal(env)) {
			status = -EINTR;
			break;
		}
		memset(&p, 0, sizeof(p));
		status = ops->dest_prepare(env, call->out, op->out_offset + st->off, st->len, &p);
		total.zero_filled += p.zero_filled;
		total.write_zeroes += p.write_zeroes;
		total.paths |= p.paths;
		ops->count(env, VPIPE_CNT_ZERO_FILLED, p.zero_filled);
		ops->count(env, VPIPE_CNT_WRITE_ZEROES, p.write_zeroes);
		vpipe_core_unmap(c, &sm);
		vpipe_core_unmap(c, &dm);
		if (!status)
			status = vpipe_core_map(c, call->in, op->in_offset + st->off, st->len, &sm);
		if (!status)
			status = vpipe_core_map(c, call->out, op->out_offset + st->off, st->len, &dm);
		/* preparation promised written blocks: never let dom0 write into a hole */
		for (j = 0; !status && j < dm.nr; j++)
			if (dm.segs[j].zero)
				status = -EIO;
		if (status)
			break;
		op->paths |= VPIPE_PATH_OFFLOAD;
		submit_stage(c, st, &sm, &dm, buf, op);
		/* keep one stage with dom0 while the guest prepares the next */
		while (k + 1 - waited >= STAGES_IN_FLIGHT) {
			retire(c, &stages[waited], pieces, &status, &killed, op);
			waited++;
		}
		if (st->status < 0 && status == 0)
			status = st->status;
	}
	for (; waited < nstages; waited++)
		if (stages[waited].n || stages[waited].status)
			retire(c, &stages[waited], pieces, &status, &killed, op);
	op->zero_filled = total.zero_filled;
	op->paths |= total.paths;

	/* then the cached runs, copied by the guest through its page cache */
	for (i = 0; i < npieces && status == 0; i++) {
		if (!pieces[i].from_cache)
			continue;
		r = ops->guest_copy(env, call->in, op->in_offset + pieces[i].off, call->out,
				    op->out_offset + pieces[i].off, pieces[i].len, &pieces[i].done);
		op->guest_copied += pieces[i].done;
		ops->count(env, VPIPE_CNT_GUEST_CACHE, pieces[i].done);
		op->paths |= VPIPE_PATH_GUEST_CACHE;
		if (r)
			status = r;
	}
	/* make the guest-copied pages clean, so finishing can drop every cached page */
	if (op->guest_copied && (r = ops->sync(env, call->out)) && status == 0)
		status = r;
	for (i = 0; i < npieces; i++) {
		written += pieces[i].done;
		if (pieces[i].done < pieces[i].len)
			break;
	}
	r = ops->dest_finish(env, call->out, op->out_offset, len, written, &total);
	if (r && r != -EBUSY && status == 0)
		status = r;
	op->moved = written;
	if (written)
		status = 0;   /* a short count; the next call reports the error */
out:
	if (stages) {
		for (k = 0; k < nstages; k++)
			stage_free(c, &stages[k]);
		ops->free(env, stages);
	}
	vpipe_core_unmap(c, &sm);
	vpipe_core_unmap(c, &dm);
	if (pieces)
		ops->free(env, pieces);
	if (cached)
		ops->free(env, cached);
	if (buf)
		ops->free(env, buf);
	if (dst_hold)
		ops->unhold(env, dst_hold);
	if (src_hold)
		ops->unhold(env, src_hold);
	return killed && status == 0 ? 0 : status;
}
