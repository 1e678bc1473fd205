// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/* desc.c -- see desc.h */
#include "desc.h"

void vpipe_ext_index(struct vpipe_extents *x, uint64_t *ends)
{
	uint32_t i, n = 0;
	uint64_t pos = 0;

	for (i = 0; i < x->nr; i++) {
		struct vpipe_seg s = x->segs[i];

		if (!s.length)
			continue;
		if (s.zero)
			s.disk_offset = 0;
		if (n) {
			struct vpipe_seg *last = &x->segs[n - 1];

			if (last->zero == s.zero &&
			    (s.zero || last->disk_offset + last->length == s.disk_offset)) {
				last->length += s.length;
				continue;
			}
		}
		x->segs[n++] = s;
	}
	x->nr = n;
	x->ends = ends;
	for (i = 0; i < n; i++)
		ends[i] = pos += x->segs[i].length;
}

uint64_t vpipe_ext_total(const struct vpipe_extents *x)
{
	return x->nr ? x->ends[x->nr - 1] : 0;
}

/* index of the segment holding stream byte pos (first end beyond it) */
static uint32_t find(const struct vpipe_extents *x, uint64_t pos)
{
	uint32_t lo = 0, hi = x->nr;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (x->ends[mid] <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* walks the ring segments of stream bytes [from, to); writes them when out != NULL */
static uint64_t emit(const struct vpipe_extents *x, uint64_t from, uint64_t to,
		     struct vpipe_segment *out)
{
	uint64_t n = 0;
	uint32_t i;

	for (i = find(x, from); i < x->nr && from < to; i++) {
		const struct vpipe_seg *s = &x->segs[i];
		const uint64_t seg_start = x->ends[i] - s->length;
		const uint64_t piece_end = VC_MIN(x->ends[i], to);
		uint64_t disk = s->zero ? 0 : s->disk_offset + (from - seg_start);
		uint64_t left = piece_end - from;

		while (left) {
			uint64_t take = left;

			if (take > VPIPE_SEG_MAX_LEN)
				take = s->zero ? VPIPE_SEG_MAX_LEN :
					((disk + VPIPE_SEG_MAX_LEN) & ~(uint64_t)4095) - disk;
			if (out) {
				memset(&out[n], 0, sizeof(out[n]));
				out[n].length = (uint32_t)take;
				if (s->zero)
					out[n].flags = VPIPE_SEG_ZERO;
				else
					out[n].disk_offset = disk;
			}
			n++;
			if (!s->zero)
				disk += take;
			left -= take;
		}
		from = piece_end;
	}
	return n;
}

uint64_t vpipe_ext_count(const struct vpipe_extents *x, uint64_t from, uint64_t to)
{
	return emit(x, from, to, NULL);
}

uint32_t vpipe_ext_slice(const struct vpipe_extents *x, uint64_t from, uint64_t to,
			 struct vpipe_segment *out)
{
	return (uint32_t)emit(x, from, to, out);
}

uint64_t vpipe_f2f_cut(const struct vpipe_extents *src, const struct vpipe_extents *dst,
		       uint64_t p, uint64_t length, uint64_t chunk, uint32_t max_segments)
{
	uint64_t q = VC_MIN(length, p + chunk);
	const uint32_t si = find(src, p), di = find(dst, p), half = max_segments / 2;

	if (vpipe_ext_count(src, p, q) + vpipe_ext_count(dst, p, q) > max_segments) {
		/* cut where neither side needs more than half the descriptor's segments */
		uint64_t cut = q;

		if (si + half - 1 < src->nr)
			cut = VC_MIN(cut, src->ends[si + half - 1]);
		if (di + half - 1 < dst->nr)
			cut = VC_MIN(cut, dst->ends[di + half - 1]);
		q = cut;
	}
	return q;
}

void vpipe_desc_header_init(struct vpipe_desc_header *h, uint32_t nr_segments, uint32_t area_pages)
{
	memset(h, 0, sizeof(*h));
	h->magic = VPIPE_DESC_MAGIC;
	h->version = VPIPE_PROTOCOL_VERSION;
	h->header_bytes = sizeof(*h);
	h->nr_segments = nr_segments;
	h->area_pages = area_pages;
}

uint32_t vpipe_desc_f2f(const struct vpipe_extents *src, const struct vpipe_extents *dst, uint64_t p,
			uint64_t q, uint32_t area_pages, void *buf)
{
	struct vpipe_segment *segs = (struct vpipe_segment *)((uint8_t *)buf + sizeof(struct vpipe_desc_header));
	struct vpipe_desc_header h;
	uint32_t ns, nd;

	ns = vpipe_ext_slice(src, p, q, segs);
	nd = vpipe_ext_slice(dst, p, q, segs + ns);
	vpipe_desc_header_init(&h, ns + nd, area_pages);
	h.src.kind = VPIPE_EP_FILE;
	h.src.vdev = src->vdev;
	h.src.first_segment = 0;
	h.src.nr_segments = ns;
	h.dst.kind = VPIPE_EP_FILE;
	h.dst.vdev = dst->vdev;
	h.dst.first_segment = ns;
	h.dst.nr_segments = nd;
	memcpy(buf, &h, sizeof(h));
	return (uint32_t)(sizeof(h) + (uint64_t)(ns + nd) * sizeof(struct vpipe_segment));
}

/* ---- socket requests ------------------------------------------------------------------------ */

static uint64_t carried_in(const struct vpipe_sock_in *ep)
{
	return (uint64_t)ep->st->sndq_len + ep->head_len + ep->st->rcvq_len + ep->tail_len;
}

uint64_t vpipe_room_for(const struct vpipe_sock_in *ep, uint64_t length, int source, uint32_t room_max)
{
	uint64_t want, max = VC_MAX(room_max, VPIPE_ROOM_MIN);

	if (source)
		want = length;                        /* the receive window it needs */
	else
		want = length + length / 3 + 16384;   /* dom0 keeps a quarter for the peer's window */
	want = VC_MIN(VC_MAX(want, (uint64_t)VPIPE_ROOM_MIN), max);
	return VC_ALIGN8(VC_MAX(carried_in(ep) + want, (uint64_t)VPIPE_CARRY_MIN));
}

static void add_piece(struct vpipe_sock_layout *l, uint64_t off, const void *src, uint64_t len)
{
	if (!len)
		return;
	l->piece[l->npieces].off = off;
	l->piece[l->npieces].src = src;
	l->piece[l->npieces].len = len;
	l->npieces++;
}

static void socket_ep(struct vpipe_endpoint *ep, const struct vpipe_sock_in *in, uint64_t off,
		      struct vpipe_sock_layout *l)
{
	ep->kind = VPIPE_EP_SOCKET;
	ep->tcp = *in->st;
	/* the head joins the send queue as bytes never transmitted */
	ep->tcp.sndq_len += in->head_len;
	ep->tcp.sndq_unsent += in->head_len;
	ep->tcp.snd_seq += in->head_len;
	ep->tcp.carry_offset = (uint32_t)off;
	ep->tcp.reserved0 = 0;
	ep->tail_len = in->tail_len;
	add_piece(l, off, in->sndq, in->st->sndq_len);
	off += in->st->sndq_len;
	add_piece(l, off, in->head, in->head_len);
	off += in->head_len;
	add_piece(l, off, in->rcvq, in->st->rcvq_len);
	off += in->st->rcvq_len;
	add_piece(l, off, in->tail, in->tail_len);
}

int vpipe_desc_socket(uint8_t op, const struct vpipe_extents *file, uint64_t file_off, uint64_t len,
		      const struct vpipe_sock_in *src, const struct vpipe_sock_in *dst, uint32_t room_max,
		      void *stream, struct vpipe_sock_layout *out)
{
	struct vpipe_segment *segs =
		(struct vpipe_segment *)((uint8_t *)stream + sizeof(struct vpipe_desc_header));
	struct vpipe_desc_header h;
	uint64_t nseg = file ? vpipe_ext_count(file, file_off, file_off + len) : 0;
	uint64_t off, end;
	int last = -1;

	memset(out, 0, sizeof(*out));
	if (nseg > VPIPE_AREA_MAX_SEGMENTS)
		return -E2BIG;
	out->desc_bytes = (uint32_t)(sizeof(h) + nseg * sizeof(struct vpipe_segment));
	off = VC_ALIGN8(out->desc_bytes);
	if (src) {
		out->room_off[0] = off;
		off += vpipe_room_for(src, len, 1, room_max);
		out->room[0] = (uint32_t)(off - out->room_off[0]);
		last = 0;
	}
	if (dst) {
		out->room_off[1] = off;
		off += vpipe_room_for(dst, len, 0, room_max);
		out->room[1] = (uint32_t)(off - out->room_off[1]);
		last = 1;
	}
	end = (off + VPIPE_PAGE_SIZE - 1) / VPIPE_PAGE_SIZE * VPIPE_PAGE_SIZE;
	if (end > VPIPE_AREA_MAX_BYTES || last < 0)
		return -E2BIG;
	out->room[last] += (uint32_t)(end - off);   /* the last room takes the page's rest */
	out->area_bytes = end;

	if (file)
		vpipe_ext_slice(file, file_off, file_off + len, segs);
	vpipe_desc_header_init(&h, (uint32_t)nseg, (uint32_t)(end / VPIPE_PAGE_SIZE));
	add_piece(out, 0, stream, out->desc_bytes);
	switch (op) {
	case VPIPE_OP_FILE_TO_SOCKET:
		h.src.kind = VPIPE_EP_FILE;
		h.src.vdev = file->vdev;
		h.src.nr_segments = (uint32_t)nseg;
		socket_ep(&h.dst, dst, out->room_off[1], out);
		break;
	case VPIPE_OP_SOCKET_TO_FILE:
		socket_ep(&h.src, src, out->room_off[0], out);
		h.dst.kind = VPIPE_EP_FILE;
		h.dst.vdev = file->vdev;
		h.dst.nr_segments = (uint32_t)nseg;
		break;
	case VPIPE_OP_SOCKET_TO_SOCKET:
		socket_ep(&h.src, src, out->room_off[0], out);
		socket_ep(&h.dst, dst, out->room_off[1], out);
		break;
	default:
		return -EINVAL;
	}
	memcpy(stream, &h, sizeof(h));
	return 0;
}

static int state_sane(const struct vpipe_tcp_state *s, const struct vpipe_tcp_state *frozen)
{
	if (s->family != frozen->family || s->local_port != frozen->local_port ||
	    s->remote_port != frozen->remote_port ||
	    memcmp(s->local_addr, frozen->local_addr, 16) || memcmp(s->remote_addr, frozen->remote_addr, 16))
		return 0;
	if (s->options & ~(VPIPE_TCPOPT_SACK | VPIPE_TCPOPT_TIMESTAMP | VPIPE_TCPOPT_WSCALE))
		return 0;
	if ((s->options & VPIPE_TCPOPT_WSCALE) && (s->snd_wscale > 14 || s->rcv_wscale > 14))
		return 0;
	if (s->mss < 64 || s->mss > 65535 || s->sndq_unsent > s->sndq_len || s->reserved0)
		return 0;
	return 1;
}

int vpipe_desc_result(const struct vpipe_desc_header *h, int source, const struct vpipe_tcp_state *frozen,
		      uint64_t room_off, uint32_t room, struct vpipe_sock_result *out)
{
	const struct vpipe_endpoint *ep = source ? &h->src : &h->dst;
	const uint32_t flags = ep->result_flags;

	memset(out, 0, sizeof(*out));
	if ((flags & (VPIPE_EPF_TAKEN | VPIPE_EPF_VALID | VPIPE_EPF_RESET)) == VPIPE_EPF_TAKEN) {
		/* taken over and never answered for: the frozen state is stale */
		out->flags = VPIPE_EPF_RESET | VPIPE_EPF_TAKEN;
		return 0;
	}
	if (flags & VPIPE_EPF_RESET) {
		out->flags = VPIPE_EPF_RESET;
		return 0;
	}
	if (!(flags & VPIPE_EPF_VALID))
		return 0;
	if (!state_sane(&ep->tcp, frozen) || ep->tcp.carry_offset != room_off ||
	    (uint64_t)ep->tcp.sndq_len + ep->tcp.rcvq_len > room)
		return -EPROTO;
	out->flags = flags & (VPIPE_EPF_VALID | VPIPE_EPF_PEER_FIN | VPIPE_EPF_TAIL_SENT);
	out->st = ep->tcp;
	out->carry_off = room_off;
	out->moved = ep->prepared;   /* VPIPE_EP_RESULT_MOVED; the caller clamps it to the length */
	return 0;
}
