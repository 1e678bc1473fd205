// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_file.c -- files -> extents of the VM's virtual disks, holds, destination blocks.
 * The kernel twin of guest-module/agent/files/ (same rules, see vpipe_file.h and
 * docs/append.md).
 *
 * Mapping is in-kernel end to end: FIEMAP's extents would pass through a user buffer that
 * another thread of the caller could rewrite before we read it back, and a forged extent would
 * let dom0 read or write another file's blocks. Two in-kernel answers are trusted instead:
 * bmap() of one block (its physical block; 0 for holes and unwritten extents alike: both read
 * as zeros, which is what a source needs; a destination must have no such block after
 * preparation), and the filesystem's own fiemap asked only to *count* the extents of a range
 * (fi_extents_max = 0: nothing is copied anywhere). A range with one extent whose first and last
 * blocks bmap() places exactly (last - first) blocks apart lies inside that extent, so it is one
 * contiguous run (see walk_runs); a range with none is a hole. Runs are found by halving, so a
 * file of E extents costs O(E log n) lookups instead of one bmap per block (16384 for 64 MiB,
 * each an emulated extent lookup on a guest whose vCPU is shared: the hand-over's largest cost
 * in the guest). Only the ext4 driver is accepted: its bmap is exact (XFS answers 0 for
 * reflinked and realtime files, which would read as zeros).
 */
#include <linux/blkdev.h>
#include <linux/bvec.h>
#include <linux/falloc.h>
#include <linux/file.h>
#include <linux/fiemap.h>
#include <linux/fileattr.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/moduleparam.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/pagemap.h>
#include <linux/pagevec.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uio.h>

#include "vpipe_file.h"

char *vpipe_vdev_map;
module_param_named(vdev_map, vpipe_vdev_map, charp, 0444);
MODULE_PARM_DESC(vdev_map,
		 "extra disks that are the VM's virtual disks, \"name=vdev,...\" (e.g. vda=51712; tests)");

/* ---- which disk ------------------------------------------------------------------------- */

static bool vdev_from_map(const char *disk, u32 *vdev)
{
	const char *p = vpipe_vdev_map;
	size_t dl = strlen(disk);

	while (p && *p) {
		const char *eq = strchr(p, '='), *end = strchrnul(p, ',');
		unsigned long v;
		char num[16];
		size_t nl;

		if (eq && eq < end && (size_t)(eq - p) == dl && !strncmp(p, disk, dl)) {
			nl = end - eq - 1;
			if (nl > 0 && nl < sizeof(num)) {
				memcpy(num, eq + 1, nl);
				num[nl] = '\0';
				if (!kstrtoul(num, 10, &v) && v <= U32_MAX) {
					*vdev = (u32)v;
					return true;
				}
			}
		}
		p = *end ? end + 1 : end;
	}
	return false;
}

int vpipe_file_disk(struct file *f, u32 *vdev, u64 *partition_offset)
{
	struct super_block *sb = file_inode(f)->i_sb;
	struct block_device *bdev = sb->s_bdev;
	struct device *parent;
	unsigned int v;
	int n = 0;

	if (!bdev || !(sb->s_type->fs_flags & FS_REQUIRES_DEV) || !bdev->bd_disk)
		return -ENXIO;
	/* xen-blkfront's disks hang below their xenbus device "vbd-<vdev>" */
	parent = disk_to_dev(bdev->bd_disk)->parent;
	if (parent && sscanf(dev_name(parent), "vbd-%u%n", &v, &n) == 1 &&
	    dev_name(parent)[n] == '\0') {
		*vdev = v;
	} else if (!vdev_from_map(bdev->bd_disk->disk_name, vdev)) {
		return -ENXIO;
	}
	*partition_offset = (u64)bdev->bd_start_sect << SECTOR_SHIFT;
	return 0;
}

int vpipe_file_mappable(struct file *f)
{
	struct inode *inode = file_inode(f);
	struct fileattr fa = {};
	int err;

	if (!S_ISREG(inode->i_mode))
		return -EINVAL;
	if (inode->i_sb->s_magic != EXT4_SUPER_MAGIC || IS_DAX(inode))
		return -EOPNOTSUPP;
	err = vfs_fileattr_get(f->f_path.dentry, &fa);
	if (err)
		return -EOPNOTSUPP;
	/* inline data lives in the inode (bmap says 0), the others are not plain bytes on disk */
	if (fa.flags & (FS_INLINE_DATA_FL | FS_ENCRYPT_FL | FS_COMPR_FL | FS_VERITY_FL))
		return -EOPNOTSUPP;
	return 0;
}

int vpipe_file_writeback(struct file *f, u64 off, u64 len)
{
	if (len == 0)
		return 0;
	if (off > LLONG_MAX || len > (u64)LLONG_MAX - off)
		return -EINVAL;
	/* Only the data: a source's dirty pages written back and waited for (delayed allocations
	 * resolved, unwritten extents converted: ext4 ends a page's writeback after the
	 * conversion). dom0 reads the same disk, so no journal commit and no cache flush are
	 * needed -- an fsync would add both to every GET (a flush crosses blkfront, blkback and
	 * the host's disk), as the agent's sync_file_range does not. */
	return filemap_write_and_wait_range(f->f_mapping, off, off + len - 1);
}

int vpipe_file_flush(struct file *f, u64 off, u64 len)
{
	if (len == 0)
		return 0;
	if (off > LLONG_MAX || len > (u64)LLONG_MAX - off)
		return -EINVAL;
	/* writes the range back (delalloc resolved) and commits the extent metadata */
	return vfs_fsync_range(f, off, off + len - 1, 1);
}

/* ---- mapping ------------------------------------------------------------------------------ */

void vpipe_fmap_free(struct vpipe_fmap *m)
{
	kvfree(m->segs);
	m->segs = NULL;
	m->nr = m->cap = 0;
}

/* room for one more segment */
static int seg_grow(struct vpipe_fmap *m)
{
	struct vpipe_seg *n;
	u32 cap;

	if (m->nr < m->cap)
		return 0;
	if (m->cap >= (1u << 26))
		return -ENOMEM;
	cap = m->cap ? m->cap * 2 : 64;
	n = kvmalloc_array(cap, sizeof(*n), GFP_KERNEL);
	if (!n)
		return -ENOMEM;
	if (m->nr)
		memcpy(n, m->segs, m->nr * sizeof(*n));
	kvfree(m->segs);
	m->segs = n;
	m->cap = cap;
	return 0;
}

static int seg_push(struct vpipe_fmap *m, u64 disk, u64 len, bool zero)
{
	if (len == 0)
		return 0;
	if (m->nr) {
		struct vpipe_seg *last = &m->segs[m->nr - 1];

		if ((last->zero && zero) ||
		    (!last->zero && !zero && last->disk_offset + last->length == disk)) {
			last->length += len;
			return 0;
		}
	}
	if (seg_grow(m))
		return -ENOMEM;
	m->segs[m->nr++] = (struct vpipe_seg){ zero ? 0 : disk, len, zero, 0 };
	return 0;
}

/* disk offsets on the whole virtual disk (the core cuts segments to the ring's length) */
static void add_partition(struct vpipe_fmap *m, u64 part)
{
	u32 i;

	for (i = 0; i < m->nr; i++)
		if (!m->segs[i].zero)
			m->segs[i].disk_offset += part;
}

/* bmap of one block: 0 and *phys (0 = hole or unwritten), or -EOPNOTSUPP */
static int block_phys(struct inode *inode, u64 blk, u64 *phys)
{
	sector_t b = blk;
	int err = bmap(inode, &b);

	if (err)
		return err == -EINVAL ? -EOPNOTSUPP : err;
	*phys = b;
	return 0;
}

/* the extents the filesystem has in [blk, blk + n): counted by its fiemap, nothing copied */
static int count_extents(struct inode *inode, u64 blk, u64 n, unsigned int *count)
{
	const unsigned int bits = inode->i_blkbits;
	struct fiemap_extent_info fi = { .fi_flags = 0, .fi_extents_max = 0, .fi_extents_start = NULL };
	int err;

	if (!inode->i_op->fiemap)
		return -EOPNOTSUPP;
	err = inode->i_op->fiemap(inode, &fi, blk << bits, n << bits);
	if (err)
		return err;
	*count = fi.fi_extents_mapped;
	return 0;
}

/* below this many blocks, bmap each one: cheaper than counting */
#define MAP_BLOCKWISE 16

/*
 * walk_runs(f, first, last, fn, arg): calls fn(arg, blk, n, phys, zero) for consecutive runs
 * covering blocks [first, last], each proven uniform: zero (reads as zeros: a hole or an
 * unwritten extent; phys 0) or mapped contiguously from physical block phys. The proofs, all
 * from the filesystem's own in-kernel answers:
 *  - no extent in the range: a hole;
 *  - exactly one extent, and bmap() places the first and last block P and P + n - 1: both
 *    blocks lie in that one extent, and an extent maps its logical range onto physical blocks
 *    contiguously, so every block between is at P + i (bmap answers 0 for unwritten blocks, so
 *    the run is written data);
 *  - the first block reads as zeros (bmap 0) and SEEK_DATA finds no data before block d: no
 *    written extent overlaps [blk, d) (seeking skips holes, and unwritten extents without cached
 *    pages), so it all reads as zeros;
 *  - otherwise the range is halved, and a short one is looked up block by block.
 * The caller keeps the file's mapping still (a hold, or its own preparation) and has flushed
 * delayed allocations. The walk seeks on a private open of the file (never the caller's file
 * position), opened on first need.
 */
struct run_walk {
	struct file *f, *seek;
	struct inode *inode;
	int (*fn)(void *arg, u64 blk, u64 n, u64 phys, bool zero);
	void *arg;
};

/* the first block at or after blk that may hold written data (U64_MAX: none) */
static int data_from(struct run_walk *w, u64 blk, u64 *data_blk)
{
	const unsigned int bits = w->inode->i_blkbits;
	loff_t pos;

	if (!w->seek) {
		w->seek = dentry_open(&w->f->f_path, O_RDONLY | O_LARGEFILE, current_cred());
		if (IS_ERR(w->seek)) {
			int err = PTR_ERR(w->seek);

			w->seek = NULL;
			return err;
		}
	}
	pos = vfs_llseek(w->seek, (loff_t)(blk << bits), SEEK_DATA);
	if (pos == -ENXIO) {
		*data_blk = U64_MAX;
		return 0;
	}
	if (pos < 0)
		return (int)pos;
	*data_blk = (u64)pos >> bits;
	return 0;
}

/* the longest run at blk of at most *n blocks that can be proven uniform, given to w->fn;
 * *n becomes its length */
static int walk_one(struct run_walk *w, u64 blk, u64 *n)
{
	u64 len = *n, p0, p1, d;
	unsigned int count;
	int err;

	for (;;) {
		if (len <= MAP_BLOCKWISE) {
			u64 i;

			for (i = 0; i < len; i++) {
				err = block_phys(w->inode, blk + i, &p0);
				if (!err)
					err = w->fn(w->arg, blk + i, 1, p0, p0 == 0);
				if (err)
					return err;
			}
			*n = len;
			return 0;
		}
		err = count_extents(w->inode, blk, len, &count);
		if (err)
			return err;
		if (count == 0) {
			*n = len;
			return w->fn(w->arg, blk, len, 0, true);
		}
		err = block_phys(w->inode, blk, &p0);
		if (err)
			return err;
		if (p0 == 0) {
			err = data_from(w, blk, &d);
			if (err)
				return err;
			if (d > blk) {
				*n = min(len, d - blk);
				return w->fn(w->arg, blk, *n, 0, true);
			}
		} else if (count == 1) {
			err = block_phys(w->inode, blk + len - 1, &p1);
			if (err)
				return err;
			if (p1 == p0 + len - 1) {
				*n = len;
				return w->fn(w->arg, blk, len, p0, false);
			}
		}
		len /= 2;
	}
}

static int walk_runs(struct file *f, u64 first, u64 last,
		     int (*fn)(void *arg, u64 blk, u64 n, u64 phys, bool zero), void *arg)
{
	struct run_walk w = { .f = f, .inode = file_inode(f), .fn = fn, .arg = arg };
	u64 b = first, n, want = 0;
	int err = 0;

	while (b <= last) {
		/* try twice the last run's length first (a file's extents tend to be alike) */
		n = want ? min(want, last - b + 1) : last - b + 1;
		err = walk_one(&w, b, &n);
		if (err)
			break;
		b += n;
		want = n > (U64_MAX >> 2) ? 0 : 2 * n;
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		cond_resched();
	}
	if (w.seek)
		fput(w.seek);
	return err;
}

/* vpipe_file_map's runs: segments of the request [off, end) */
struct map_walk {
	struct vpipe_fmap *m;
	unsigned int bits;
	u64 off, end;
};

static int map_push(void *arg, u64 blk, u64 n, u64 phys, bool zero)
{
	struct map_walk *mw = arg;
	const unsigned int bits = mw->bits;
	u64 from = max(mw->off, blk << bits), to = min(mw->end, (blk + n) << bits);

	mw->m->blocks += n;
	return seg_push(mw->m, zero ? 0 : (phys << bits) + (from - (blk << bits)), to - from, zero);
}

int vpipe_file_map(struct file *f, u64 off, u64 len, struct vpipe_fmap *m)
{
	struct inode *inode = file_inode(f);
	struct map_walk mw = { .m = m, .bits = inode->i_blkbits, .off = off, .end = off + len };
	u64 part;
	int err;

	vpipe_fmap_free(m);
	m->blocks = 0;
	err = vpipe_file_disk(f, &m->vdev, &part);
	if (err)
		return err;
	err = vpipe_file_mappable(f);
	if (err)
		return err;
	if (off > U64_MAX - len || off + len > (u64)i_size_read(inode))
		return -EINVAL;
	if (len == 0)
		return 0;
	/* delayed allocations resolved first: an extent counted must not move under bmap() */
	err = filemap_write_and_wait(f->f_mapping);
	if (!err)
		err = walk_runs(f, off >> mw.bits, (off + len - 1) >> mw.bits, map_push, &mw);
	if (err) {
		vpipe_fmap_free(m);
		return err;
	}
	add_partition(m, part);
	return 0;
}

/* ---- holds ------------------------------------------------------------------------------- */

struct vpipe_hold {
	struct list_head node;
	struct inode *inode;
	int refs;
	bool we_set;          /* we set S_IMMUTABLE (the file was not immutable by itself) */
	struct mutex lift;
};

static DEFINE_MUTEX(holds_mu);
static LIST_HEAD(holds);
static int holds_count;

static struct vpipe_hold *hold_find(struct inode *inode)
{
	struct vpipe_hold *h;

	list_for_each_entry(h, &holds, node)
		if (h->inode == inode)
			return h;
	return NULL;
}

int vpipe_hold_acquire(struct file *f, bool destination, struct vpipe_hold **out)
{
	struct inode *inode = file_inode(f);
	struct vpipe_hold *h;

	mutex_lock(&holds_mu);
	h = hold_find(inode);
	if (h) {
		if (destination && !h->we_set) {
			mutex_unlock(&holds_mu);
			return -EPERM;
		}
		h->refs++;
		goto done;
	}
	if (destination && (IS_IMMUTABLE(inode) || IS_APPEND(inode))) {
		mutex_unlock(&holds_mu);
		return -EPERM;
	}
	h = kzalloc(sizeof(*h), GFP_KERNEL);
	if (!h) {
		mutex_unlock(&holds_mu);
		return -ENOMEM;
	}
	mutex_init(&h->lift);
	h->inode = igrab(inode);
	if (!h->inode) {
		kfree(h);
		mutex_unlock(&holds_mu);
		return -ESTALE;
	}
	h->refs = 1;
	if (!IS_IMMUTABLE(inode)) {
		/* writers, truncate and fallocate now fail with EPERM, from any descriptor */
		inode_set_flags(inode, S_IMMUTABLE, S_IMMUTABLE);
		h->we_set = true;
	}
	list_add(&h->node, &holds);
	holds_count++;
done:
	mutex_unlock(&holds_mu);
	*out = h;
	return 0;
}

void vpipe_hold_release(struct vpipe_hold *h)
{
	if (!h)
		return;
	mutex_lock(&holds_mu);
	if (--h->refs > 0) {
		mutex_unlock(&holds_mu);
		return;
	}
	list_del(&h->node);
	holds_count--;
	mutex_unlock(&holds_mu);
	if (h->we_set)
		inode_set_flags(h->inode, 0, S_IMMUTABLE);
	iput(h->inode);
	kfree(h);
}

int vpipe_holds_active(void)
{
	return READ_ONCE(holds_count);
}

int vpipe_hold_lift(struct file *f, int (*fn)(void *), void *arg)
{
	struct inode *inode = file_inode(f);
	struct vpipe_hold *h;
	int ret;

	mutex_lock(&holds_mu);
	h = hold_find(inode);
	if (h) {
		if (!h->we_set) {
			mutex_unlock(&holds_mu);
			return -EPERM;   /* immutable by itself: not ours to lift */
		}
		h->refs++;       /* pinned: a concurrent last release must not clear under us */
	}
	mutex_unlock(&holds_mu);
	if (!h) {
		if (IS_IMMUTABLE(inode) || IS_APPEND(inode))
			return -EPERM;
		return fn(arg);
	}
	mutex_lock(&h->lift);
	inode_set_flags(inode, 0, S_IMMUTABLE);
	ret = fn(arg);
	inode_set_flags(inode, S_IMMUTABLE, S_IMMUTABLE);
	mutex_unlock(&h->lift);
	vpipe_hold_release(h);
	return ret;
}

/* ---- destination blocks --------------------------------------------------------------------- */

struct prep_job {
	struct file *f;
	u64 off, end, block;
	struct vpipe_dprep *p;
};

/* for_each_unwritten's state: the zero run being gathered (U64_MAX: none) */
struct unwritten_walk {
	unsigned int bits;
	u64 to, run, total;
	int (*fn)(void *, u64, u64);
	void *arg;
};

static int unwritten_end(struct unwritten_walk *u, u64 end)
{
	u64 start = u->run;

	u->run = U64_MAX;
	u->total += end - start;
	return u->fn ? u->fn(u->arg, start, end) : 0;
}

static int unwritten_step(void *arg, u64 blk, u64 n, u64 phys, bool zero)
{
	struct unwritten_walk *u = arg;

	if (zero && u->run == U64_MAX)
		u->run = blk << u->bits;
	if (!zero && u->run != U64_MAX)
		return unwritten_end(u, blk << u->bits);
	return 0;
}

/* calls fn for every run [start, end) of blocks in [from, to) (block-aligned byte offsets)
 * that read as zeros without being written (holes, unwritten); *total: their bytes */
static int for_each_unwritten(struct file *f, u64 from, u64 to,
			      int (*fn)(void *, u64, u64), void *arg, u64 *total)
{
	struct unwritten_walk u = { .bits = file_inode(f)->i_blkbits, .to = to, .run = U64_MAX,
				    .fn = fn, .arg = arg };
	int err = 0;

	if (to > from)
		err = walk_runs(f, from >> u.bits, (to - 1) >> u.bits, unwritten_step, &u);
	if (!err && u.run != U64_MAX)
		err = unwritten_end(&u, to);
	if (total)
		*total = u.total;
	return err;
}

/* O_DIRECT zeros from the shared zero page (no page cache, no data through the guest) */
static int write_zeros_direct(struct file *wf, u64 start, u64 end)
{
	enum { NVEC = 256 };
	struct bio_vec *bv;
	u64 pos = start;
	u32 i;
	int err = 0;

	bv = kmalloc_array(NVEC, sizeof(*bv), GFP_KERNEL);
	if (!bv)
		return -ENOMEM;
	for (i = 0; i < NVEC; i++) {
		bv[i].bv_page = ZERO_PAGE(0);
		bv[i].bv_len = PAGE_SIZE;
		bv[i].bv_offset = 0;
	}
	while (pos < end) {
		u64 n = min_t(u64, end - pos, (u64)NVEC * PAGE_SIZE);
		u32 nvec = DIV_ROUND_UP(n, PAGE_SIZE);
		struct iov_iter it;
		loff_t p = pos;
		ssize_t w;

		bv[nvec - 1].bv_len = n - (u64)(nvec - 1) * PAGE_SIZE;
		iov_iter_bvec(&it, ITER_SOURCE, bv, nvec, n);
		w = vfs_iter_write(wf, &it, &p, 0);
		bv[nvec - 1].bv_len = PAGE_SIZE;
		if (w < 0) {
			err = w;
			break;
		}
		if (w == 0) {
			err = -EIO;
			break;
		}
		pos += w;
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
	}
	kfree(bv);
	return err;
}

struct zero_ctx {
	struct file *wf;
	struct vpipe_dprep *p;
};

static int zero_run(void *arg, u64 start, u64 end)
{
	struct zero_ctx *z = arg;
	int err = write_zeros_direct(z->wf, start, end);

	if (!err) {
		z->p->zero_filled += end - start;
		z->p->paths |= VPIPE_PATH_ZERO_FILL;
	}
	return err;
}

static int give_back(struct file *f, u64 keep, u64 alloc_end, u64 block)
{
	u64 from = round_up(keep, block);
	long err = vfs_truncate(&f->f_path, keep);

	if (err)
		return err;
	if (alloc_end > from)
		vfs_fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, from, alloc_end - from);
	return 0;
}

static int prepare_lifted(void *arg)
{
	struct prep_job *j = arg;
	struct inode *inode = file_inode(j->f);
	struct vpipe_dprep *p = j->p;
	const u64 astart = round_down(j->off, j->block), aend = round_up(j->end, j->block);
	struct zero_ctx z = { .p = p };
	struct file *wf = NULL;
	u64 need = 0, phys;
	int err;

	/* 1. the block holding an unaligned old EOF: if it holds data, zeros past the old EOF to
	 *    its end, flushed (growing the file later exposes zeros, never stale bytes) */
	if (p->old_size % j->block && j->end > p->old_size) {
		u64 eofb = round_down(p->old_size, j->block);

		err = block_phys(inode, eofb >> inode->i_blkbits, &phys);
		if (err)
			return err;
		if (phys) {
			struct file *bf = dentry_open(&j->f->f_path, O_WRONLY | O_LARGEFILE,
						      current_cred());
			loff_t pos = p->old_size;
			size_t n = eofb + j->block - p->old_size;
			void *zeros;
			ssize_t w;

			if (IS_ERR(bf))
				return PTR_ERR(bf);
			zeros = kzalloc(n, GFP_KERNEL);
			w = zeros ? kernel_write(bf, zeros, n, &pos) : -ENOMEM;
			kfree(zeros);
			err = w < 0 ? (int)w : (w != n ? -EIO : 0);
			if (!err)
				err = vfs_fsync_range(bf, eofb, eofb + j->block - 1, 1);
			fput(bf);
			if (err)
				goto fail;
			p->zero_filled += n;
			p->paths |= VPIPE_PATH_ZERO_FILL;
		}
	}

	/* 2. which blocks still read as zeros without being written? */
	err = for_each_unwritten(j->f, astart, aend, NULL, NULL, &need);
	if (err)
		goto fail;
	if (need) {
		/* 3. one allocation (contiguous blocks), then zeros into every unwritten block */
		err = vfs_fallocate(j->f, FALLOC_FL_KEEP_SIZE, astart, aend - astart);
		if (err)
			goto fail;
		wf = dentry_open(&j->f->f_path, O_WRONLY | O_DIRECT | O_LARGEFILE, current_cred());
		if (IS_ERR(wf)) {
			err = PTR_ERR(wf);
			wf = NULL;
			goto fail;
		}
		z.wf = wf;
		err = for_each_unwritten(j->f, astart, aend, zero_run, &z, NULL);
		if (err)
			goto fail;
	}
	/* commit the allocation and the unwritten -> written conversions */
	err = vfs_fsync_range(j->f, astart, aend - 1, 1);
	if (err)
		goto fail;
	/* the postcondition, checked: never hand out a block the filesystem reads as zeros */
	err = for_each_unwritten(j->f, astart, aend, NULL, NULL, &need);
	if (!err && need) {
		pr_err("vpipe: %llu byte(s) still unwritten after preparation\n", need);
		err = -EIO;
	}
	if (err)
		goto fail;
	if (wf)
		fput(wf);
	return 0;
fail:
	if (wf)
		fput(wf);
	give_back(j->f, p->old_size, aend, j->block);
	return err;
}

int vpipe_dest_prepare(struct file *f, u64 off, u64 len, struct vpipe_dprep *p)
{
	struct inode *inode = file_inode(f);
	struct prep_job j;
	struct fileattr fa = {};
	u64 block, lo;
	int err;

	memset(p, 0, sizeof(*p));
	if (!S_ISREG(inode->i_mode))
		return -EINVAL;
	if (!(f->f_mode & FMODE_WRITE))
		return -EBADF;
	if (off > LLONG_MAX || len > (u64)LLONG_MAX - off)
		return -EINVAL;
	err = vpipe_file_mappable(f);
	if (err)
		return err;
	if (vfs_fileattr_get(f->f_path.dentry, &fa))
		return -EOPNOTSUPP;
	if (fa.flags & FS_APPEND_FL)
		return -EPERM;
	if (fa.flags & FS_JOURNAL_DATA_FL)
		return -EOPNOTSUPP;   /* data would also live in the journal */
	p->old_size = i_size_read(inode);
	if (len == 0)
		return 0;
	block = i_blocksize(inode);
	/* dirty pages of these blocks reach the disk first: written back later they would
	 * overwrite dom0's data (and delalloc would hide the blocks) */
	lo = min(round_down(off, block), round_down(p->old_size, block));
	err = vpipe_file_flush(f, lo, round_up(off + len, block) - lo);
	if (err)
		return err;
	j = (struct prep_job){ f, off, off + len, block, p };
	err = vpipe_hold_lift(f, prepare_lifted, &j);
	return err;
}

struct finish_job {
	struct file *f;
	u64 new_size, alloc_end, block;
	bool short_write;
};

static int finish_lifted(void *arg)
{
	struct finish_job *j = arg;

	if (j->short_write)
		return give_back(j->f, j->new_size, j->alloc_end, j->block);
	return vfs_truncate(&j->f->f_path, j->new_size);
}

int vpipe_dest_finish(struct file *f, u64 off, u64 len, u64 written, const struct vpipe_dprep *p)
{
	struct inode *inode = file_inode(f);
	struct finish_job j;
	int dropped, err;

	if (len == 0)
		return 0;
	if (written > len)
		written = len;
	j.f = f;
	j.block = i_blocksize(inode);
	j.new_size = max(p->old_size, off + written);
	j.alloc_end = round_up(off + len, j.block);
	j.short_write = written < len;
	/* first the cache, then the size: truncating inside a block reads that block through
	 * the page cache and must see dom0's data, not a stale page */
	dropped = invalidate_inode_pages2_range(f->f_mapping, off >> PAGE_SHIFT,
						(off + len - 1) >> PAGE_SHIFT);
	if (dropped && dropped != -EBUSY)
		return dropped;
	if ((u64)i_size_read(inode) != j.new_size || j.short_write) {
		err = vpipe_hold_lift(f, finish_lifted, &j);
		if (err)
			return err;
	}
	err = vfs_fsync(f, 1);
	if (err)
		return err;
	if (dropped)
		pr_warn_ratelimited("vpipe: cached pages of a destination stay resident (mapped?)\n");
	return dropped;
}

/* ---- the cache rule ------------------------------------------------------------------------ */

int vpipe_file_cached_runs(struct file *f, u64 off, u64 len, u64 size, struct vpipe_range *out, int max)
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
				out[n++] = (struct vpipe_range){ run, r_end - run };
			run = U64_MAX;
		}
		idx = max(next, idx + 1);
		if ((idx & 4095) == 0)
			cond_resched();
	}
	if (run != U64_MAX && end - run > threshold && n < max)
		out[n++] = (struct vpipe_range){ run, end - run };
	return n;
}

int vpipe_file_range_cached(struct file *f, u64 off, u64 len)
{
	struct address_space *mapping = f->f_mapping;
	struct folio_batch fb;
	pgoff_t first, last, idx, next;
	u64 total, allowed, missing = 0;
	unsigned int i;
	int verdict = -1;

	if (!len || off + len < off)
		return 0;
	first = off >> PAGE_SHIFT;
	last = (off + len - 1) >> PAGE_SHIFT;
	total = (u64)last - first + 1;
	/* pages that may be absent (or not up to date) with the rule still met */
	allowed = total - DIV_ROUND_UP(total * VPIPE_CACHE_RULE_EIGHTHS, 8);
	/* Only the folios present are visited, a batch at a time, and the walk stops as soon as
	 * too many are missing: a cold 64 MiB file costs one lookup, not 16384 (each an emulated
	 * xarray walk on a guest that shares its CPU). */
	idx = next = first;
	folio_batch_init(&fb);
	while (verdict < 0 && idx <= last && filemap_get_folios(mapping, &idx, last, &fb)) {
		for (i = 0; i < folio_batch_count(&fb); i++) {
			struct folio *folio = fb.folios[i];
			pgoff_t s = max_t(pgoff_t, folio->index, next);
			pgoff_t e = min_t(u64, (u64)folio->index + folio_nr_pages(folio), (u64)last + 1);

			if (e <= s)
				continue;
			missing += s - next;   /* the gap before this folio */
			next = e;
			if (folio_test_dirty(folio) || folio_test_writeback(folio)) {
				verdict = 0;	/* dirty data: flushed and offloaded instead */
				break;
			}
			if (!folio_test_uptodate(folio))
				missing += e - s;
			if (missing > allowed) {
				verdict = 0;
				break;
			}
		}
		folio_batch_release(&fb);
		cond_resched();
		if (idx == 0)
			break;	/* wrapped past the largest index */
	}
	if (verdict < 0)
		verdict = missing + ((u64)last + 1 - next) <= allowed;
	return verdict;
}

struct gcopy {
	struct file *in, *out;
	u64 in_off, out_off, len;
	u64 *copied;
	void *buf;
};

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

int vpipe_file_guest_copy(struct file *in, u64 in_off, struct file *out, u64 out_off, u64 len,
			  u64 *copied)
{
	struct gcopy g = { in, out, in_off, out_off, len, copied, NULL };
	int r;

	g.buf = kvmalloc(1u << 20, GFP_KERNEL);
	if (!g.buf)
		return -ENOMEM;
	r = vpipe_hold_lift(out, guest_copy_lifted, &g);
	kvfree(g.buf);
	return r;
}
