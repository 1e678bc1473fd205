// SPDX-License-Identifier: MIT
/*
 * check.c -- see check.h. Freestanding C11: the kernel module's test builds compile it too.
 */
#ifdef __KERNEL__
#include <linux/errno.h>
#include <linux/string.h>
#else
#include <errno.h>
#include <string.h>
#endif

#include "check.h"

static int all_zero(const void *p, size_t n)
{
	const uint8_t *b = (const uint8_t *)p;
	size_t i;

	for (i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

static uint32_t expected_kind(uint8_t op, int source)
{
	switch (op) {
	case VPIPE_OP_FILE_TO_FILE:
		return VPIPE_EP_FILE;
	case VPIPE_OP_FILE_TO_SOCKET:
		return source ? VPIPE_EP_FILE : VPIPE_EP_SOCKET;
	case VPIPE_OP_SOCKET_TO_FILE:
		return source ? VPIPE_EP_SOCKET : VPIPE_EP_FILE;
	case VPIPE_OP_SOCKET_TO_SOCKET:
		return VPIPE_EP_SOCKET;
	default:
		return 0;
	}
}

/* pages an indirect request needs for area_pages area pages */
static uint32_t indirect_pages_for(uint32_t area_pages)
{
	return (area_pages + VPIPE_REFS_PER_PAGE - 1) / VPIPE_REFS_PER_PAGE;
}

int vpipe_check_request(const struct vpipe_request *req)
{
	uint64_t max_desc;
	unsigned i;

	if (req->reserved0 != 0)
		return -EINVAL;
	if (req->op == VPIPE_OP_NOP)
		return (req->flags == 0 && req->length == 0 && req->nr_pages == 0 &&
			req->desc_bytes == 0 && all_zero(req->page, sizeof(req->page))) ? 0 : -EINVAL;
	if (req->op >= VPIPE_OP_MAX_)
		return -EINVAL;
	if (req->flags & ~(VPIPE_REQF_INDIRECT | VPIPE_REQF_PREPARING))
		return -EINVAL;
	if ((req->flags & VPIPE_REQF_PREPARING) && req->op != VPIPE_OP_SOCKET_TO_FILE)
		return -EINVAL;
	if (req->length == 0 || req->length > VPIPE_MAX_REQUEST_LENGTH)
		return -EINVAL;
	if (req->nr_pages == 0 || req->nr_pages > VPIPE_DESC_MAX_PAGES)
		return -EINVAL;
	max_desc = (uint64_t)req->nr_pages * VPIPE_PAGE_SIZE;
	if (req->flags & VPIPE_REQF_INDIRECT)
		max_desc *= VPIPE_REFS_PER_PAGE;
	if (req->desc_bytes < sizeof(struct vpipe_desc_header) || req->desc_bytes > max_desc)
		return -EINVAL;
	for (i = req->nr_pages; i < VPIPE_DESC_MAX_PAGES; i++)
		if (req->page[i] != 0)
			return -EINVAL;
	return 0;
}

int vpipe_check_indirect(const struct vpipe_request *req, const void *ind, uint32_t *refs,
			 uint32_t *nr_refs)
{
	*nr_refs = 0;
	if (!(req->flags & VPIPE_REQF_INDIRECT) || req->nr_pages == 0 ||
	    req->nr_pages > VPIPE_DESC_MAX_PAGES)
		return -EINVAL;
	/* copied as bytes: the private copy may not be aligned for uint32_t */
	memcpy(refs, ind, (size_t)req->nr_pages * VPIPE_PAGE_SIZE);
	*nr_refs = (uint32_t)req->nr_pages * VPIPE_REFS_PER_PAGE;
	return 0;
}

static int check_file_ep(const struct vpipe_endpoint *ep, int source, int preparing, uint64_t length,
			 const void *desc, uint32_t nr_segments, const struct vpipe_check_ctx *ctx,
			 struct vpipe_checked_ep *out)
{
	struct vpipe_check_disk disk;
	uint64_t total = 0;
	uint32_t i;
	int r;

	if (ep->result_flags || ep->tail_len)
		return -EINVAL;
	/* a preparing destination's watermark is live: the guest may have raised it already */
	if (ep->prepared && (source || !preparing))
		return -EINVAL;
	if (ep->nr_segments == 0)
		return -EINVAL;
	/* 64-bit sum: both are u32 from the guest */
	if ((uint64_t)ep->first_segment + ep->nr_segments > nr_segments)
		return -EINVAL;
	r = ctx->disk(ctx->arg, ep->vdev, &disk);
	if (r)
		return -EPERM;
	if (!source && !disk.writable)
		return -EROFS;
	for (i = 0; i < ep->nr_segments; i++) {
		struct vpipe_segment s;
		int zero;

		vpipe_desc_segment(desc, ep->first_segment + i, &s);
		if (s.length == 0 || s.reserved0 != 0 || (s.flags & ~VPIPE_SEG_ZERO) != 0)
			return -EINVAL;
		zero = (s.flags & VPIPE_SEG_ZERO) != 0;
		if (zero) {
			if (!source || s.disk_offset != 0)
				return -EINVAL;
		} else {
			if (s.disk_offset > disk.size || s.length > disk.size - s.disk_offset)
				return -ERANGE;
			if (!source) {
				/* only the ends of a destination may fall inside a sector */
				if (i > 0 && s.disk_offset % VPIPE_SECTOR_SIZE != 0)
					return -EINVAL;
				if (i + 1 < ep->nr_segments &&
				    (s.disk_offset + s.length) % VPIPE_SECTOR_SIZE != 0)
					return -EINVAL;
			}
		}
		total += s.length; /* <= 2^22 segments * 2^32: no overflow */
	}
	if (total != length)
		return -EINVAL;
	out->kind = VPIPE_EP_FILE;
	out->vdev = ep->vdev;
	out->first_segment = ep->first_segment;
	out->nr_segments = ep->nr_segments;
	return 0;
}

static int valid_remote_ipv4(const uint8_t *a)
{
	int i;

	if (a[0] == 0 || a[0] == 127 || a[0] >= 224) /* 0/8, loopback, multicast and above */
		return 0;
	for (i = 4; i < 16; i++)
		if (a[i])
			return 0;
	return 1;
}

/* a carried queue is bounded by what a socket buffer can hold */
#define VPIPE_QUEUE_MAX (1u << 30)

static int check_socket_ep(const struct vpipe_endpoint *ep, int source,
			   const struct vpipe_check_ctx *ctx)
{
	const struct vpipe_tcp_state *t = &ep->tcp;

	if (ep->vdev || ep->first_segment || ep->nr_segments || ep->result_flags)
		return -EINVAL;
	if (ep->prepared || t->reserved0)
		return -EINVAL;
	if (source && ep->tail_len)
		return -EINVAL;   /* a tail goes out on a destination only */
	if (t->family != VPIPE_AF_INET && t->family != VPIPE_AF_INET6)
		return -EINVAL;
	if (t->local_port == 0 || t->remote_port == 0)
		return -EINVAL;
	if (t->options & ~(VPIPE_TCPOPT_SACK | VPIPE_TCPOPT_TIMESTAMP | VPIPE_TCPOPT_WSCALE))
		return -EINVAL;
	if (t->options & VPIPE_TCPOPT_WSCALE) {
		if (t->snd_wscale > 14 || t->rcv_wscale > 14)
			return -EINVAL;
	} else if (t->snd_wscale || t->rcv_wscale) {
		return -EINVAL;
	}
	if (t->mss < 64 || t->mss > 65535)
		return -EINVAL;
	if (t->sndq_len > VPIPE_QUEUE_MAX || t->rcvq_len > VPIPE_QUEUE_MAX ||
	    t->sndq_unsent > t->sndq_len)
		return -EINVAL;
	if (t->carry_offset % 8 != 0)
		return -EINVAL;
	/* the addresses: the VM's own, towards a unicast peer */
	if (t->family == VPIPE_AF_INET6)
		return -EPERM;   /* no VM has an IPv6 identity yet */
	if (!ctx->have_ipv4)
		return -EPERM;
	if (memcmp(t->local_addr, ctx->ipv4, 4) != 0 || !all_zero(t->local_addr + 4, 12))
		return -EPERM;
	if (!valid_remote_ipv4(t->remote_addr))
		return -EPERM;
	if (memcmp(t->remote_addr, t->local_addr, 4) == 0)
		return -EPERM;
	return 0;
}

int vpipe_check_desc(const struct vpipe_request *req, const void *desc, const uint32_t *refs,
		     uint32_t nr_refs, const struct vpipe_check_ctx *ctx, struct vpipe_checked *out)
{
	const int indirect = (req->flags & VPIPE_REQF_INDIRECT) != 0;
	struct vpipe_desc_header h;
	const struct vpipe_endpoint *eps[2];
	struct vpipe_checked_ep *outs[2];
	int src_file, dst_file, i, r;
	uint64_t area_end, prev;
	uint32_t k;

	memset(out, 0, sizeof(*out));
	r = vpipe_check_request(req);
	if (r)
		return r;
	if (req->op == VPIPE_OP_NOP)
		return 0;
	memcpy(&h, desc, sizeof(h));
	if (h.magic != VPIPE_DESC_MAGIC || h.version != VPIPE_PROTOCOL_VERSION ||
	    h.header_bytes != sizeof(struct vpipe_desc_header))
		return -EINVAL;
	/* the area: exactly one encoding for each size */
	if (!indirect) {
		if (h.area_pages != req->nr_pages)
			return -EINVAL;
	} else {
		if (h.area_pages <= VPIPE_DESC_MAX_PAGES || h.area_pages > VPIPE_AREA_MAX_PAGES ||
		    req->nr_pages != indirect_pages_for(h.area_pages) || !refs ||
		    nr_refs < h.area_pages)
			return -EINVAL;
		for (k = h.area_pages; k < nr_refs; k++)
			if (refs[k] != 0)
				return -EINVAL;
	}
	area_end = (uint64_t)h.area_pages * VPIPE_PAGE_SIZE;
	if (req->desc_bytes > area_end)
		return -EINVAL;
	if (h.nr_segments > VPIPE_AREA_MAX_SEGMENTS ||
	    sizeof(h) + (uint64_t)h.nr_segments * sizeof(struct vpipe_segment) > req->desc_bytes)
		return -EINVAL;
	if (h.src.kind != expected_kind(req->op, 1) || h.dst.kind != expected_kind(req->op, 0))
		return -EINVAL;
	out->area_pages = h.area_pages;
	out->nr_segments = h.nr_segments;

	src_file = h.src.kind == VPIPE_EP_FILE;
	dst_file = h.dst.kind == VPIPE_EP_FILE;
	if (src_file && dst_file) {
		/* disjoint slices of the segment array: one segment cannot describe both ends */
		uint64_t a0 = h.src.first_segment, a1 = a0 + h.src.nr_segments;
		uint64_t b0 = h.dst.first_segment, b1 = b0 + h.dst.nr_segments;

		if (a0 < b1 && b0 < a1)
			return -EINVAL;
	}
	if (src_file) {
		r = check_file_ep(&h.src, 1, 0, req->length, desc, h.nr_segments, ctx, &out->src);
		if (r)
			return r;
	}
	if (dst_file) {
		r = check_file_ep(&h.dst, 0, (req->flags & VPIPE_REQF_PREPARING) != 0, req->length,
				  desc, h.nr_segments, ctx, &out->dst);
		if (r)
			return r;
	}
	if (src_file && dst_file)
		return 0;

	/* socket endpoints: the flow must be the VM's own; the rooms lie inside the area, after
	 * the stream, in endpoint order, each at least VPIPE_CARRY_MIN and big enough for the
	 * bytes it carries in */
	eps[0] = &h.src;
	eps[1] = &h.dst;
	outs[0] = &out->src;
	outs[1] = &out->dst;
	prev = req->desc_bytes;
	for (i = 0; i < 2; i++) {
		if (eps[i]->kind != VPIPE_EP_SOCKET)
			continue;
		r = check_socket_ep(eps[i], i == 0, ctx);
		if (r)
			return r;
		if (eps[i]->tcp.carry_offset < prev || eps[i]->tcp.carry_offset >= area_end)
			return -EINVAL;
		outs[i]->kind = VPIPE_EP_SOCKET;
		outs[i]->carry_offset = eps[i]->tcp.carry_offset;
		prev = (uint64_t)eps[i]->tcp.carry_offset + VPIPE_CARRY_MIN;
	}
	if (prev > area_end)
		return -EINVAL;
	for (i = 0; i < 2; i++) {
		uint64_t end, carried;

		if (eps[i]->kind != VPIPE_EP_SOCKET)
			continue;
		end = (i == 0 && eps[1]->kind == VPIPE_EP_SOCKET) ? eps[1]->tcp.carry_offset : area_end;
		outs[i]->room = (uint32_t)(end - eps[i]->tcp.carry_offset);
		carried = (uint64_t)eps[i]->tcp.sndq_len + eps[i]->tcp.rcvq_len + eps[i]->tail_len;
		if (carried > outs[i]->room)
			return -EINVAL;
	}
	if (!src_file && !dst_file &&
	    h.src.tcp.local_port == h.dst.tcp.local_port &&
	    h.src.tcp.remote_port == h.dst.tcp.remote_port &&
	    memcmp(h.src.tcp.remote_addr, h.dst.tcp.remote_addr, 16) == 0)
		return -EINVAL;   /* one connection cannot be both ends */
	/* the segment array holds exactly the file endpoint's segments */
	if (h.nr_segments != (src_file ? h.src.nr_segments : dst_file ? h.dst.nr_segments : 0))
		return -EINVAL;
	if ((src_file && h.src.first_segment != 0) || (dst_file && h.dst.first_segment != 0))
		return -EINVAL;
	return 0;
}
