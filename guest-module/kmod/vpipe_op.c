// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_op.c -- descriptor streams (abi/ring.h) and the file -> file operation.
 * The kernel twin of guest-module/agent/{request_builder,file_ops}.cpp: same checks in the
 * same order (same errno), same splitting of an operation into ring requests (at most
 * chunk_mb bytes and VPIPE_DESC_MAX_SEGMENTS segments each), same destination rules.
 */
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/pagemap.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "vpipe.h"
#include "vpipe_file.h"
#include "vpipe_front.h"

/* carry room kept free for dom0's results in every socket request (agent: kMinCarryRoom) */
#define VPIPE_MIN_CARRY_ROOM 16384u

/* ---- segment slices ------------------------------------------------------------------------ */

struct seg_index {
	const struct vpipe_fmap *m;
	u64 *ends;      /* stream end of each segment (prefix sums) */
};

static int index_build(struct seg_index *ix, const struct vpipe_fmap *m)
{
	u64 pos = 0;
	u32 i;

	ix->m = m;
	ix->ends = kvmalloc_array(max_t(u32, m->nr, 1), sizeof(u64), GFP_KERNEL);
	if (!ix->ends)
		return -ENOMEM;
	for (i = 0; i < m->nr; i++)
		ix->ends[i] = pos += m->segs[i].length;
	return 0;
}

static void index_free(struct seg_index *ix)
{
	kvfree(ix->ends);
	ix->ends = NULL;
}

static u64 index_total(const struct seg_index *ix)
{
	return ix->m->nr ? ix->ends[ix->m->nr - 1] : 0;
}

/* index of the segment holding stream byte pos (upper bound) */
static u32 index_find(const struct seg_index *ix, u64 pos)
{
	u32 lo = 0, hi = ix->m->nr;

	while (lo < hi) {
		u32 mid = lo + (hi - lo) / 2;

		if (ix->ends[mid] <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* writes the pieces of stream bytes [from, to) into out[]; returns how many (<= max) or
 * -E2BIG */
static int index_slice(const struct seg_index *ix, u64 from, u64 to, struct vpipe_segment *out,
		       u32 max)
{
	u32 i, n = 0;

	for (i = index_find(ix, from); i < ix->m->nr && from < to; i++) {
		const struct vpipe_kseg *s = &ix->m->segs[i];
		u64 seg_start = ix->ends[i] - s->length, piece_end = min(ix->ends[i], to);

		if (n == max)
			return -E2BIG;
		memset(&out[n], 0, sizeof(out[n]));
		out[n].length = (u32)(piece_end - from);
		if (s->zero)
			out[n].flags = VPIPE_SEG_ZERO;
		else
			out[n].disk_offset = s->disk_offset + (from - seg_start);
		n++;
		from = piece_end;
	}
	return n;
}

static void header_init(struct vpipe_desc_header *h, u32 nr_segments)
{
	memset(h, 0, sizeof(*h));
	h->magic = VPIPE_DESC_MAGIC;
	h->version = VPIPE_PROTOCOL_VERSION;
	h->header_bytes = sizeof(*h);
	h->nr_segments = nr_segments;
}

u32 vpipe_max_socket_segments(void)
{
	return (VPIPE_DESC_MAX_BYTES - 2 * VPIPE_MIN_CARRY_ROOM - sizeof(struct vpipe_desc_header)) /
	       sizeof(struct vpipe_segment);
}

int vpipe_build_socket_desc(u8 op, const struct vpipe_fmap *file, u64 file_off, u64 len,
			    const struct vpipe_tcp_state *src, const struct vpipe_tcp_state *dst,
			    void *buf, u32 *desc_bytes)
{
	struct vpipe_desc_header *h = buf;
	struct vpipe_segment *segs = (struct vpipe_segment *)(h + 1);
	u32 nseg = 0, stream, carry, half;
	struct seg_index ix;
	int n;

	memset(buf, 0, VPIPE_DESC_MAX_BYTES);
	if (file) {
		if (index_build(&ix, file))
			return -ENOMEM;
		if (index_total(&ix) < file_off + len) {
			index_free(&ix);
			return -EINVAL;
		}
		n = index_slice(&ix, file_off, file_off + len, segs, vpipe_max_socket_segments());
		index_free(&ix);
		if (n < 0)
			return -EOPNOTSUPP;   /* too fragmented for one hand-over */
		nseg = n;
	}
	header_init(h, nseg);
	stream = sizeof(*h) + nseg * sizeof(struct vpipe_segment);
	carry = round_up(stream, 8);

#define SOCK_EP(ep, st, off) do {                                                  \
		(ep).kind = VPIPE_EP_SOCKET;                                       \
		(ep).tcp = *(st);                                                  \
		(ep).tcp.sndq_len = (ep).tcp.rcvq_len = 0;                         \
		(ep).tcp.carry_offset = (off);                                     \
		(ep).tcp.reserved[0] = (ep).tcp.reserved[1] = 0;                   \
	} while (0)
#define FILE_EP(ep) do {                                                           \
		(ep).kind = VPIPE_EP_FILE;                                         \
		(ep).vdev = file->vdev;                                            \
		(ep).first_segment = 0;                                            \
		(ep).nr_segments = nseg;                                           \
	} while (0)

	switch (op) {
	case VPIPE_OP_FILE_TO_SOCKET:
		FILE_EP(h->src);
		SOCK_EP(h->dst, dst, carry);
		break;
	case VPIPE_OP_SOCKET_TO_FILE:
		SOCK_EP(h->src, src, carry);
		FILE_EP(h->dst);
		break;
	case VPIPE_OP_SOCKET_TO_SOCKET:
		half = round_up(carry + (VPIPE_DESC_MAX_BYTES - carry) / 2, 8);
		SOCK_EP(h->src, src, carry);
		SOCK_EP(h->dst, dst, half);
		break;
	default:
		return -EINVAL;
	}
#undef SOCK_EP
#undef FILE_EP
	*desc_bytes = stream;
	return 0;
}

/* ---- file -> file -------------------------------------------------------------------------- */

struct stage {
	u64 off, len;               /* in the operation's stream */
	u32 n, cap;
	struct vpipe_req **reqs;
	u64 *lens;
	int status;
};

static int stage_push(struct stage *st, struct vpipe_req *r, u64 len)
{
	if (st->n == st->cap) {
		u32 cap = st->cap ? st->cap * 2 : 4;
		struct vpipe_req **nr = krealloc_array(st->reqs, cap, sizeof(*nr), GFP_KERNEL);
		u64 *nl;

		if (!nr)
			return -ENOMEM;
		st->reqs = nr;
		nl = krealloc_array(st->lens, cap, sizeof(*nl), GFP_KERNEL);
		if (!nl)
			return -ENOMEM;
		st->lens = nl;
		st->cap = cap;
	}
	st->reqs[st->n] = r;
	st->lens[st->n] = len;
	st->n++;
	return 0;
}

static void stage_free(struct stage *st)
{
	u32 i;

	for (i = 0; i < st->n; i++)
		vpipe_front_put(st->reqs[i]);
	kfree(st->reqs);
	kfree(st->lens);
	memset(st, 0, sizeof(*st));
}

/* builds the requests of one stage (src and dst cover st->len bytes each) and posts them */
static int submit_stage(struct stage *st, const struct vpipe_fmap *src,
			const struct vpipe_fmap *dst, void *buf, struct vpipe_ioc_op *op)
{
	const u32 max = VPIPE_DESC_MAX_SEGMENTS;
	const u64 chunk = vpipe_chunk_bytes();
	struct seg_index si = {}, di = {};
	struct vpipe_desc_header *h = buf;
	struct vpipe_segment *segs = (struct vpipe_segment *)(h + 1);
	u64 p, q;
	int err;

	err = index_build(&si, src);
	if (!err)
		err = index_build(&di, dst);
	if (!err && (index_total(&si) != st->len || index_total(&di) != st->len))
		err = -EIO;
	for (p = 0; !err && p < st->len; p = q) {
		u32 s0 = index_find(&si, p), d0 = index_find(&di, p), half = max / 2;
		struct vpipe_req *r;
		int ns, nd;
		u32 bytes;

		q = min(st->len, p + chunk);
		if (index_find(&si, q - 1) - s0 + 1 + index_find(&di, q - 1) - d0 + 1 > max) {
			/* cut where neither side needs more than half the segments */
			if (s0 + half - 1 < src->nr)
				q = min(q, si.ends[s0 + half - 1]);
			if (d0 + half - 1 < dst->nr)
				q = min(q, di.ends[d0 + half - 1]);
		}
		ns = index_slice(&si, p, q, segs, max);
		nd = ns < 0 ? ns : index_slice(&di, p, q, segs + ns, max - ns);
		if (ns < 0 || nd < 0) {
			err = -EIO;
			break;
		}
		header_init(h, ns + nd);
		h->src.kind = VPIPE_EP_FILE;
		h->src.vdev = src->vdev;
		h->src.first_segment = 0;
		h->src.nr_segments = ns;
		h->dst.kind = VPIPE_EP_FILE;
		h->dst.vdev = dst->vdev;
		h->dst.first_segment = ns;
		h->dst.nr_segments = nd;
		bytes = sizeof(*h) + (ns + nd) * sizeof(struct vpipe_segment);
		err = vpipe_front_submit(VPIPE_OP_FILE_TO_FILE, q - p, buf, bytes,
					 DIV_ROUND_UP(bytes, VPIPE_PAGE_SIZE), &r);
		if (err)
			break;
		err = stage_push(st, r, q - p);
		if (err) {
			/* cannot track it: wait for it here, it must not outlive its holds */
			u64 m;

			vpipe_front_wait(r, &m, NULL);
			vpipe_front_put(r);
			break;
		}
		op->requests++;
	}
	index_free(&si);
	index_free(&di);
	if (err)
		st->status = err;
	return err;
}

/* waits for a stage; returns the bytes of its leading run of fully completed requests */
static u64 wait_stage(struct stage *st, bool *killed)
{
	bool intact = true;
	u64 moved = 0, total = 0;
	u32 i;

	for (i = 0; i < st->n; i++) {
		u64 m = 0;
		int r = vpipe_front_wait(st->reqs[i], &m, killed);

		total += m;
		if (intact) {
			moved += m;
			if (r < 0 || m < st->lens[i])
				intact = false;
		}
		if (r < 0 && st->status == 0)
			st->status = r;
	}
	if (st->status == 0 && moved < st->len)
		st->status = -EIO;
	atomic64_add(total, &vpipe_stats.bytes_offloaded);
	return moved;
}

static int check_access(struct file *f, bool want_read, bool want_write)
{
	if (want_read && !(f->f_mode & FMODE_READ))
		return -EBADF;
	if (want_write && !(f->f_mode & FMODE_WRITE))
		return -EBADF;
	if (want_write && (f->f_flags & O_APPEND))
		return -EINVAL;  /* explicit offsets only */
	return 0;
}

#define STAGES_IN_FLIGHT 2

static bool cache_rule_f2f;
module_param(cache_rule_f2f, bool, 0644);
MODULE_PARM_DESC(cache_rule_f2f,
		 "file->file: serve clean cached source runs longer than max(1 MiB, size/10) from the guest page cache (paper 3.2; the agent's cache_rule_file_to_file, off by default)");

/* a piece of the operation's stream: offloaded, or copied by the guest (cache rule) */
struct piece {
	u64 off, len;
	bool from_cache;
	bool broken;
	u64 done;
};

/* Runs of CLEAN resident pages of [off, off+len) longer than max(1 MiB, size / 10) (the
 * paper's cache rule, agent/files/cache_rule.h). Dirty data is flushed and offloaded instead. */
static int cached_runs(struct file *f, u64 off, u64 len, u64 size, struct piece *out, int max)
{
	struct address_space *mapping = f->f_mapping;
	const u64 threshold = max_t(u64, 1ull << 20, size / 10), end = off + len;
	u64 run = U64_MAX, idx, last;
	int n = 0;

	if (len <= threshold)
		return 0;
	idx = off >> PAGE_SHIFT;
	last = (end - 1) >> PAGE_SHIFT;
	while (idx <= last) {
		struct folio *folio = filemap_get_folio(mapping, idx);
		bool clean = false;
		u64 next = idx + 1;

		if (folio) {
			clean = folio_test_uptodate(folio) && !folio_test_dirty(folio) &&
				!folio_test_writeback(folio);
			next = folio->index + folio_nr_pages(folio);
			folio_put(folio);
		}
		if (clean && run == U64_MAX)
			run = max(off, idx << PAGE_SHIFT);
		if (!clean && run != U64_MAX) {
			u64 r_end = min(end, idx << PAGE_SHIFT);

			if (r_end - run > threshold && n < max)
				out[n++] = (struct piece){ run, r_end - run, true };
			run = U64_MAX;
		}
		idx = max(next, idx + 1);
		if ((idx & 4095) == 0)
			cond_resched();
	}
	if (run != U64_MAX && end - run > threshold && n < max)
		out[n++] = (struct piece){ run, end - run, true };
	return n;
}

struct gcopy {
	struct file *in, *out;
	u64 in_off, out_off, len;
	u64 *copied;
	void *buf;
};

/* copies a range inside the guest (cache rule): the bytes are in the page cache already */
static int guest_copy_lifted(void *arg)
{
	struct gcopy *g = arg;

	while (*g->copied < g->len) {
		size_t want = min_t(u64, 1u << 20, g->len - *g->copied);
		loff_t rp = g->in_off + *g->copied, wp = g->out_off + *g->copied;
		ssize_t n = kernel_read(g->in, g->buf, want, &rp), w;

		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;  /* the source shrank under a hold: should not happen */
		w = kernel_write(g->out, g->buf, n, &wp);
		if (w < 0)
			return w;
		if (w != n)
			return -EIO;
		*g->copied += n;
		if (fatal_signal_pending(current))
			return -EINTR;
	}
	return 0;
}

static void retire(struct stage *w, struct piece *pieces, u32 piece, int *status, bool *killed,
		   struct vpipe_ioc_op *op)
{
	u64 m = wait_stage(w, killed);

	op->offloaded += m;
	if (!pieces[piece].broken)
		pieces[piece].done += m;
	if (w->status < 0) {
		pieces[piece].broken = true;
		if (*status == 0)
			*status = w->status;
	}
}

#define MAX_PIECES 64

int vpipe_file_to_file(struct file *in, struct file *out, struct vpipe_ioc_op *op)
{
	struct inode *si = file_inode(in), *di = file_inode(out);
	struct vpipe_hold *src_hold = NULL, *dst_hold = NULL;
	struct vpipe_fmap sm = {}, dm = {};
	struct vpipe_dprep total = {};
	struct stage *stages = NULL;
	struct piece *pieces = NULL, *cached = NULL;
	u32 *stage_piece = NULL;
	u64 size, len, stage_bytes, written = 0, part, pos;
	u32 nstages = 0, npieces = 0, k, waited = 0, vdev, i;
	bool same_file, killed = false;
	void *buf = NULL;
	int status = 0, err, ncached = 0;

	op->moved = op->offloaded = op->guest_copied = op->zero_filled = 0;
	op->paths = op->requests = 0;
	if (!S_ISREG(si->i_mode) || !S_ISREG(di->i_mode))
		return -EINVAL;
	err = check_access(in, true, false);
	if (!err)
		err = check_access(out, false, true);
	if (err)
		return err;
	if (op->in_offset > LLONG_MAX || op->out_offset > LLONG_MAX)
		return -EINVAL;
	/* "everything that is left" is a normal request: clamp to what a file can address */
	op->length = min_t(u64, op->length, LLONG_MAX - op->out_offset);
	if (vpipe_file_disk(in, &vdev, &part) || vpipe_file_disk(out, &vdev, &part))
		return -ENXIO;
	if (!vpipe_front_connected())
		return -EHOSTDOWN;

	/* the source is held first: from here its size and blocks are stable */
	err = vpipe_hold_acquire(in, false, &src_hold);
	if (err)
		return err;
	size = i_size_read(si);
	if (op->in_offset >= size || op->length == 0)
		goto out;
	len = min(op->length, size - op->in_offset);
	same_file = si == di;
	if (same_file && op->in_offset < op->out_offset + len &&
	    op->out_offset < op->in_offset + len) {
		status = -EINVAL;
		goto out;
	}
	pieces = kcalloc(2 * MAX_PIECES + 1, sizeof(*pieces), GFP_KERNEL);
	cached = kcalloc(MAX_PIECES, sizeof(*cached), GFP_KERNEL);
	buf = kvmalloc(max_t(size_t, VPIPE_DESC_MAX_BYTES, 1u << 20), GFP_KERNEL);
	if (!pieces || !cached || !buf) {
		status = -ENOMEM;
		goto out;
	}
	/* the cache rule looks at the page cache as the application left it: runs that are
	 * cached and clean are served by the guest; dirty data is flushed and offloaded */
	if (READ_ONCE(cache_rule_f2f) && !(op->flags & VPIPE_OPF_NO_CACHE_RULE))
		ncached = cached_runs(in, op->in_offset, len, size, cached, MAX_PIECES);
	/* the disk must hold what the page cache holds before dom0 reads it */
	status = vpipe_file_flush(in, op->in_offset, len);
	if (status)
		goto out;
	for (pos = 0, i = 0; i < (u32)ncached; i++) {
		struct piece c = cached[i];
		u64 start = c.off - op->in_offset;

		if (start > pos)
			pieces[npieces++] = (struct piece){ pos, start - pos, false };
		pieces[npieces++] = (struct piece){ start, c.len, true };
		pos = start + c.len;
	}
	if (pos < len)
		pieces[npieces++] = (struct piece){ pos, len - pos, false };

	if (!same_file) {
		status = vpipe_hold_acquire(out, true, &dst_hold);
		if (status)
			goto out;
	}
	/* finishing sets the size from the original one: taken before anything grows the file */
	total.old_size = i_size_read(di);
	stage_bytes = max_t(u64, vpipe_chunk_bytes(), 16ull << 20);
	for (i = 0; i < npieces; i++)
		if (!pieces[i].from_cache)
			nstages += DIV_ROUND_UP_ULL(pieces[i].len, stage_bytes);
	stages = kvcalloc(max_t(u32, nstages, 1), sizeof(*stages), GFP_KERNEL);
	stage_piece = kvcalloc(max_t(u32, nstages, 1), sizeof(*stage_piece), GFP_KERNEL);
	if (!stages || !stage_piece) {
		status = -ENOMEM;
		goto out;
	}
	for (k = 0, i = 0; i < npieces; i++) {
		u64 o;

		if (pieces[i].from_cache)
			continue;
		for (o = 0; o < pieces[i].len; o += stage_bytes, k++) {
			stages[k].off = pieces[i].off + o;
			stages[k].len = min(stage_bytes, pieces[i].len - o);
			stage_piece[k] = i;
		}
	}

	/* the guest prepares stage k+1 (zero-fill costs guest disk writes, docs/append.md)
	 * while dom0 copies stage k */
	for (k = 0; k < nstages && status == 0; k++) {
		struct stage *st = &stages[k];
		struct vpipe_dprep p;

		if (fatal_signal_pending(current)) {
			status = -EINTR;
			break;
		}
		status = vpipe_dest_prepare(out, op->out_offset + st->off, st->len, &p);
		total.zero_filled += p.zero_filled;
		total.paths |= p.paths;
		if (!status)
			status = vpipe_file_map(in, op->in_offset + st->off, st->len, &sm);
		if (!status)
			status = vpipe_file_map(out, op->out_offset + st->off, st->len, &dm);
		/* prepare promised written blocks: never write into a hole */
		for (i = 0; !status && i < dm.nr; i++)
			if (dm.segs[i].zero)
				status = -EIO;
		if (status)
			break;
		atomic64_add(sm.nr + dm.nr, &vpipe_stats.extents_mapped);
		op->paths |= VPIPE_PATH_OFFLOAD;
		submit_stage(st, &sm, &dm, buf, op);
		/* keep one stage with dom0 while the guest prepares the next */
		while (k + 1 - waited >= STAGES_IN_FLIGHT) {
			retire(&stages[waited], pieces, stage_piece[waited], &status, &killed, op);
			waited++;
		}
		if (st->status < 0 && status == 0)
			status = st->status;
	}
	for (; waited < nstages; waited++)
		if (stages[waited].n || stages[waited].status)
			retire(&stages[waited], pieces, stage_piece[waited], &status, &killed, op);
	op->zero_filled = total.zero_filled;
	op->paths |= total.paths;

	/* then the cached runs, copied by the guest through its page cache */
	for (i = 0; i < npieces && status == 0; i++) {
		struct gcopy g = { in, out, op->in_offset + pieces[i].off,
				   op->out_offset + pieces[i].off, pieces[i].len, &pieces[i].done,
				   buf };

		if (!pieces[i].from_cache)
			continue;
		err = vpipe_hold_lift(out, guest_copy_lifted, &g);
		op->guest_copied += pieces[i].done;
		atomic64_add(pieces[i].done, &vpipe_stats.bytes_guest_cache);
		op->paths |= VPIPE_PATH_GUEST_CACHE;
		if (err)
			status = err;
	}
	/* make the guest-copied pages clean, so finishing can drop every cached page */
	if (op->guest_copied) {
		err = vfs_fsync(out, 1);
		if (err && status == 0)
			status = err;
	}
	for (i = 0; i < npieces; i++) {
		written += pieces[i].done;
		if (pieces[i].done < pieces[i].len)
			break;
	}
	err = vpipe_dest_finish(out, op->out_offset, len, written, &total);
	if (err && err != -EBUSY && status == 0)
		status = err;
	op->moved = written;
	if (status < 0 && written)
		pr_warn_ratelimited("vpipe: file_to_file short after %llu of %llu bytes: %d\n",
				    written, len, status);
	if (written)
		status = 0;
out:
	if (stages) {
		for (k = 0; k < nstages; k++)
			stage_free(&stages[k]);
	}
	kvfree(stages);
	kvfree(stage_piece);
	kfree(pieces);
	kfree(cached);
	kvfree(buf);
	vpipe_fmap_free(&sm);
	vpipe_fmap_free(&dm);
	vpipe_hold_release(dst_hold);
	vpipe_hold_release(src_hold);
	return status;
}
