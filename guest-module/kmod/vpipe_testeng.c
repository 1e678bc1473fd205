// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_testeng.c -- TEST BUILDS ONLY (VPIPE_TEST=1): a stand-in for dom0 inside the guest, so
 * that the module's file -> file path (descriptor streams, chunking, destination preparation,
 * cache invalidation, size update) can be checked byte-exact on plain QEMU without Xen.
 *
 * With test_engine_disk=/dev/vda (the whole disk behind vdev_map) the "engine" is connected and
 * executes FILE_TO_FILE requests itself: it validates the descriptor stream like dom0 (magic,
 * version, kinds, slices, segment sums, ZERO only in sources, inside the disk) and copies the
 * bytes with reads and writes of the raw disk, then flushes -- what dom0 does to the image.
 * The disk's own page cache is dropped before and after, so it never serves stale sectors.
 * Socket requests are answered -EOPNOTSUPP. The real engine is vpiped on Xen (tests/xen).
 */
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/pagemap.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>

#include "vpipe.h"
#include "vpipe_testeng.h"

static char *test_engine_disk;
module_param(test_engine_disk, charp, 0444);
MODULE_PARM_DESC(test_engine_disk, "TEST BUILD: execute file->file requests on this raw disk");

static unsigned int test_engine_delay_ms;
module_param(test_engine_delay_ms, uint, 0644);
MODULE_PARM_DESC(test_engine_delay_ms, "TEST BUILD: the stand-in engine answers this much later");

bool vpipe_testeng_active(void)
{
	return test_engine_disk && *test_engine_disk;
}

struct cursor {
	const struct vpipe_segment *seg;
	u32 n, i;
	u64 used;     /* bytes of seg[i] consumed */
};

static int copy_stream(struct file *disk, u64 disk_size, const struct vpipe_segment *segs,
		       const struct vpipe_endpoint *src, const struct vpipe_endpoint *dst,
		       u64 length, u64 *moved)
{
	struct cursor s = { segs + src->first_segment, src->nr_segments, 0, 0 };
	struct cursor d = { segs + dst->first_segment, dst->nr_segments, 0, 0 };
	const size_t bufsz = 1u << 20;
	u8 *buf = kvmalloc(bufsz, GFP_KERNEL);
	int err = 0;

	if (!buf)
		return -ENOSPC;
	*moved = 0;
	while (*moved < length) {
		const struct vpipe_segment *ss = &s.seg[s.i], *ds = &d.seg[d.i];
		u64 n = min3((u64)bufsz, (u64)ss->length - s.used, (u64)ds->length - d.used);
		loff_t rp = ss->disk_offset + s.used, wp = ds->disk_offset + d.used;
		ssize_t r;

		if (s.i >= s.n || d.i >= d.n) {
			err = -EINVAL;
			break;
		}
		n = min(n, length - *moved);
		if (ss->flags & VPIPE_SEG_ZERO) {
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
		if (s.used == ss->length) {
			s.i++;
			s.used = 0;
		}
		if (d.used == ds->length) {
			d.i++;
			d.used = 0;
		}
	}
	kvfree(buf);
	if (!err)
		err = vfs_fsync(disk, 0);
	if (err)
		*moved = 0;   /* durable bytes only: the test engine reports all or nothing */
	(void)disk_size;
	return err;
}

static int check_file_ep(const struct vpipe_desc_header *h, const struct vpipe_endpoint *ep,
			 const struct vpipe_segment *segs, u64 length, u64 disk_size, bool dst)
{
	u64 sum = 0;
	u32 i;

	if (ep->kind != VPIPE_EP_FILE || !ep->nr_segments ||
	    (u64)ep->first_segment + ep->nr_segments > h->nr_segments)
		return -EINVAL;
	for (i = 0; i < ep->nr_segments; i++) {
		const struct vpipe_segment *s = &segs[ep->first_segment + i];

		if (!s->length || s->reserved0 || (s->flags & ~VPIPE_SEG_ZERO))
			return -EINVAL;
		if (s->flags & VPIPE_SEG_ZERO) {
			if (dst || s->disk_offset)
				return -EINVAL;
		} else if (s->disk_offset > disk_size || s->length > disk_size - s->disk_offset) {
			return -ERANGE;
		}
		/* alignment rule: inner destination boundaries on sectors */
		if (dst && i > 0 && (s->disk_offset % VPIPE_SECTOR_SIZE))
			return -EINVAL;
		if (dst && i + 1 < ep->nr_segments &&
		    ((s->disk_offset + s->length) % VPIPE_SECTOR_SIZE))
			return -EINVAL;
		sum += s->length;
	}
	return sum == length ? 0 : -EINVAL;
}

int vpipe_testeng_run(u8 op, u64 length, const void *stream, u32 desc_bytes, u64 *moved)
{
	const struct vpipe_desc_header *h = stream;
	const struct vpipe_segment *segs = (const void *)(h + 1);
	struct file *disk;
	u64 disk_size;
	int err;

	*moved = 0;
	if (READ_ONCE(test_engine_delay_ms))
		msleep(READ_ONCE(test_engine_delay_ms));
	if (op != VPIPE_OP_FILE_TO_FILE)
		return -EOPNOTSUPP;
	if (desc_bytes < sizeof(*h) || h->magic != VPIPE_DESC_MAGIC ||
	    h->version != VPIPE_PROTOCOL_VERSION || h->header_bytes != sizeof(*h) ||
	    h->reserved0 || h->nr_segments > VPIPE_DESC_MAX_SEGMENTS ||
	    sizeof(*h) + (u64)h->nr_segments * sizeof(*segs) > desc_bytes ||
	    length == 0 || length > VPIPE_MAX_REQUEST_LENGTH)
		return -EINVAL;
	disk = filp_open(test_engine_disk, O_RDWR | O_LARGEFILE, 0);
	if (IS_ERR(disk))
		return -EIO;
	disk_size = i_size_read(disk->f_mapping->host);   /* the block device inode */
	err = check_file_ep(h, &h->src, segs, length, disk_size, false);
	if (!err)
		err = check_file_ep(h, &h->dst, segs, length, disk_size, true);
	if (!err && h->src.vdev != h->dst.vdev)
		err = -EPERM;   /* one test disk */
	if (!err) {
		invalidate_mapping_pages(disk->f_mapping, 0, -1);
		err = copy_stream(disk, disk_size, segs, &h->src, &h->dst, length, moved);
		invalidate_mapping_pages(disk->f_mapping, 0, -1);
	}
	filp_close(disk, NULL);
	return err;
}
