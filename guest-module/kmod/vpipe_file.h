/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_file.h -- files on the VM's virtual disks, in the kernel (the agent's agent/files/).
 *
 *   disk      which virtual disk (vdev) a file lives on and where its partition starts
 *   flush     the disk holds what the page cache holds for a range (delalloc resolved)
 *   map       a byte range -> segments on the whole virtual disk (bmap per block, coalesced:
 *             holes and unwritten blocks are zero segments, partition offset included)
 *   hold      the inode is kept still for the operation (S_IMMUTABLE, refcounted per inode)
 *   dest      destination blocks made written before dom0 writes them; afterwards the page
 *             cache of the range is invalidated and the size set (docs/append.md)
 */
#ifndef VPIPE_KMOD_FILE_H
#define VPIPE_KMOD_FILE_H

#include <linux/fs.h>
#include <linux/types.h>

#include "vpipe_core.h"

/* a mapped range: vpipe_seg entries (guest-module/core/desc.h), stream order */
struct vpipe_fmap {
	u32 vdev;
	u32 nr, cap;
	struct vpipe_seg *segs;    /* kvmalloc'd */
	u32 blocks;                /* blocks looked up */
};

void vpipe_fmap_free(struct vpipe_fmap *m);

/* module parameter vdev_map ("vda=51712,..."): disks that count as the VM's besides
 * xen-blkfront's (tests on plain QEMU) */
extern char *vpipe_vdev_map;

/* 0 and the disk, or -ENXIO (not on one of the VM's virtual disks). */
int vpipe_file_disk(struct file *f, u32 *vdev, u64 *partition_offset);

/* regular file on a filesystem whose blocks we can name (ext2/3/4 driver), with no inline,
 * encrypted, compressed or verity data: 0, -EINVAL (not regular), -EOPNOTSUPP */
int vpipe_file_mappable(struct file *f);

/* a source's range: dirty pages written back and waited for (no commit, no cache flush) */
int vpipe_file_writeback(struct file *f, u64 off, u64 len);
int vpipe_file_flush(struct file *f, u64 off, u64 len);

/* Maps exactly [off, off+len) (inside i_size). 0 or -errno (-ENXIO, -EOPNOTSUPP, -EINVAL). */
int vpipe_file_map(struct file *f, u64 off, u64 len, struct vpipe_fmap *m);

struct vpipe_hold;
int vpipe_hold_acquire(struct file *f, bool destination, struct vpipe_hold **out);
void vpipe_hold_release(struct vpipe_hold *h);
/* runs fn(arg) with our hold of the inode lifted (serialized per inode) */
int vpipe_hold_lift(struct file *f, int (*fn)(void *), void *arg);
int vpipe_holds_active(void);

int vpipe_dest_prepare(struct file *f, u64 off, u64 len, struct vpipe_dprep *p);
int vpipe_dest_finish(struct file *f, u64 off, u64 len, u64 written, const struct vpipe_dprep *p);

/* the paper's cache rule: runs of CLEAN resident pages of [off, off+len) longer than
 * max(1 MiB, size / 10), at most max of them */
int vpipe_file_cached_runs(struct file *f, u64 off, u64 len, u64 size, struct vpipe_range *out, int max);
/* file -> socket's cache rule: 1 when no page of [off, off + len) is dirty and at least
 * VPIPE_CACHE_RULE_EIGHTHS eighths of them are cached and up to date, else 0 */
int vpipe_file_range_cached(struct file *f, u64 off, u64 len);
/* copies a range the page cache holds (cache rule), the destination's hold lifted */
int vpipe_file_guest_copy(struct file *in, u64 in_off, struct file *out, u64 out_off, u64 len,
			  u64 *copied);

#endif
