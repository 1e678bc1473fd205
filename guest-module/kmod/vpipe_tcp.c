// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_tcp.c -- TCP endpoints inside the guest kernel (see vpipe_tcp.h): check, freeze with the
 * queues, restore. The flow block they rely on is vpipe_block.c.
 *
 * The same mechanics as common/tcp (TCP_REPAIR from userspace), done from inside the kernel:
 * TCP_REPAIR / TCP_REPAIR_QUEUE / TCP_QUEUE_SEQ / TCP_REPAIR_OPTIONS / TCP_REPAIR_WINDOW go
 * through tcp_setsockopt() with kernel pointers; the state is read from struct tcp_sock under
 * lock_sock the way do_tcp_getsockopt() computes it. TCP_REPAIR needs CAP_NET_ADMIN in the
 * socket's user namespace (sockopt_ns_capable() looks at current's credentials): the calling
 * application usually lacks it, so those calls run under the kernel's credentials.
 *
 * Linux 6.1 behaviour relied upon (net/ipv4/tcp*.c, 6.1.192):
 *  - TCP_REPAIR is refused only for listeners; ON sets SK_FORCE_REUSE, OFF sets SK_NO_REUSE
 *    (we put the application's SO_REUSEADDR back afterwards);
 *  - in repair mode with no queue selected send() is -EINVAL and recv() -EPERM, so once the
 *    socket is in repair mode the application can no longer change its queues;
 *  - tcp_disconnect() of a repair-mode socket sends neither FIN nor RST;
 *  - connect() in repair mode goes straight to ESTABLISHED (no SYN);
 *  - send() with TCP_RECV_QUEUE selected appends one skb (<= MAX_SKB_FRAGS pages) per call;
 *    with TCP_SEND_QUEUE it queues the bytes as already sent (retransmitted on RTO);
 *  - TCP_REPAIR_WINDOW is validated against rcv_nxt: it goes after the receive queue.
 *  - a socket in repair mode still accepts and ACKs incoming segments: the 4-tuple is
 *    blocked by our netfilter hook before the socket is frozen;
 *  - the retransmit queue (an rbtree) and the write queue hold the bytes from snd_una to
 *    write_seq; snd_nxt splits them into transmitted and not yet transmitted.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/file.h>
#include <linux/fdtable.h>
#include <linux/cred.h>
#include <linux/net.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/sched/signal.h>
#include <net/net_namespace.h>
#include <net/sock.h>
#include <net/inet_sock.h>
#include <net/inet_connection_sock.h>
#include <net/tcp.h>
#include <net/ip.h>
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
#include <net/netfilter/nf_conntrack.h>
#include <net/netfilter/nf_conntrack_core.h>
#include <net/netfilter/nf_conntrack_zones.h>
#endif

#include "vpipe_block.h"
#include "vpipe_tcp.h"

#define VT_LOCAL_IO_TIMEOUT_MS 30000	/* vpipe_tcp_send_all */
#define VT_REFILL_MIN_CHUNK 4096u

static const struct cred *vt_cred;	/* kernel credentials for TCP_REPAIR */

int vpipe_tcp_init(void)
{
	int r;

	vt_cred = prepare_kernel_cred(NULL);
	if (!vt_cred)
		return -ENOMEM;
	r = vpipe_block_init();
	if (r) {
		put_cred(vt_cred);
		vt_cred = NULL;
	}
	return r;
}

void vpipe_tcp_exit(void)
{
	vpipe_block_exit();
	put_cred(vt_cred);
	vt_cred = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                     */

static int vt_setopt(struct sock *sk, int name, const void *val, unsigned int len)
{
	const struct cred *old = override_creds(vt_cred);
	int r = tcp_setsockopt(sk, SOL_TCP, name, KERNEL_SOCKPTR((void *)val), len);

	revert_creds(old);
	return r;
}

static int vt_setint(struct sock *sk, int name, int v)
{
	return vt_setopt(sk, name, &v, sizeof(v));
}

/* a TCP socket of AF_INET/AF_INET6 behind f, or NULL */
static struct socket *vt_tcp_socket(struct file *f)
{
	struct socket *sock = f ? sock_from_file(f) : NULL;
	struct sock *sk;

	if (!sock || !sock->sk)
		return NULL;
	sk = sock->sk;
	if (sk->sk_type != SOCK_STREAM || sk->sk_protocol != IPPROTO_TCP ||
	    (sk->sk_family != AF_INET && sk->sk_family != AF_INET6))
		return NULL;
	return sock;
}

int vpipe_tcp_check(struct file *f, bool *peer_fin)
{
	struct socket *sock = vt_tcp_socket(f);
	struct sock *sk;
	int state, err;

	*peer_fin = false;
	if (!sock)
		return -EINVAL;
	sk = sock->sk;
	state = READ_ONCE(sk->sk_state);
	if (state == TCP_LISTEN)
		return -ENOTCONN;
	err = READ_ONCE(sk->sk_err);
	if (err)
		return -err;
	if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
		return -ENOTCONN;
	if (sk->sk_family != AF_INET || READ_ONCE(inet_csk(sk)->icsk_ulp_ops))
		return -EOPNOTSUPP;	/* IPv6, or a ULP (kTLS, ...) whose state repair can't carry */
	if (ipv4_is_loopback(READ_ONCE(inet_sk(sk)->inet_saddr)) ||
	    ipv4_is_loopback(READ_ONCE(inet_sk(sk)->inet_daddr)))
		return -EOPNOTSUPP;
	/* CLOSE_WAIT, or a FIN consumed in dom0 by an earlier operation (the socket was restored
	 * ESTABLISHED with the receive side shut: the peer will not send it again) */
	*peer_fin = state == TCP_CLOSE_WAIT || (READ_ONCE(sk->sk_shutdown) & RCV_SHUTDOWN);
	return 0;
}

ssize_t vpipe_tcp_take_unread(struct file *f, void *buf, size_t max)
{
	struct socket *sock = vt_tcp_socket(f);
	struct msghdr msg = { .msg_flags = MSG_DONTWAIT };
	struct kvec iov = { .iov_base = buf, .iov_len = max };
	int r;

	if (!sock)
		return -EINVAL;
	if (max == 0)
		return 0;
	r = kernel_recvmsg(sock, &msg, &iov, 1, min_t(size_t, max, INT_MAX), MSG_DONTWAIT);
	if (r == -EAGAIN)
		return 0;
	return r;
}

int vpipe_tcp_send_all(struct file *f, const void *buf, size_t len)
{
	struct socket *sock = vt_tcp_socket(f);
	unsigned long deadline = jiffies + msecs_to_jiffies(VT_LOCAL_IO_TIMEOUT_MS);
	size_t off = 0;

	if (!sock)
		return -EINVAL;
	while (off < len) {
		struct msghdr msg = { .msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL };
		struct kvec iov = { .iov_base = (void *)buf + off, .iov_len = len - off };
		int w = kernel_sendmsg(sock, &msg, &iov, 1, min_t(size_t, len - off, INT_MAX));

		if (w > 0) {
			off += w;
			continue;
		}
		if (w == 0)
			w = -EIO;
		if (w != -EAGAIN)
			return w;
		if (fatal_signal_pending(current))
			return -EINTR;
		if (time_after(jiffies, deadline))
			return -ETIMEDOUT;
		usleep_range(200, 1000);
	}
	return 0;
}

/* Copies the unread part of the receive queue (copied_seq .. rcv_nxt, FIN excluded) into buf,
 * which holds len bytes. Under lock_sock. Returns 0 or -EIO when the queue does not hold
 * exactly len bytes. */
static int vt_copy_rcvq(struct sock *sk, u8 *buf, u32 len)
{
	struct tcp_sock *tp = tcp_sk(sk);
	struct sk_buff *skb;
	u32 seq = tp->copied_seq, done = 0;

	skb_queue_walk(&sk->sk_receive_queue, skb) {
		u32 offset, used;

		if (done == len)
			break;
		if (before(seq, TCP_SKB_CB(skb)->seq))
			return -EIO;
		offset = seq - TCP_SKB_CB(skb)->seq;
		if (unlikely(TCP_SKB_CB(skb)->tcp_flags & TCPHDR_SYN))
			offset--;
		if (offset >= skb->len)
			continue;
		used = min_t(u32, skb->len - offset, len - done);
		if (skb_copy_bits(skb, offset, buf + done, used))
			return -EIO;
		done += used;
		seq += used;
	}
	return done == len ? 0 : -EIO;
}

/* bytes of the receive queue the application has not read (tcp_inq without urgent data) */
static u32 vt_unread_len(struct sock *sk)
{
	struct tcp_sock *tp = tcp_sk(sk);
	u32 n = tp->rcv_nxt - tp->copied_seq;

	if (n && sock_flag(sk, SOCK_DONE))
		n--;	/* the FIN */
	return n;
}

/* ------------------------------------------------------------------------------------------ */
/* freeze                                                                                      */

/* Copies the send queue (snd_una .. write_seq: the retransmit queue, then the write queue) into
 * buf, which holds len bytes. Under lock_sock. 0 or -EIO when the queues do not hold exactly
 * len bytes. A partly acknowledged head segment keeps its acknowledged bytes in the skb: they
 * are skipped by sequence number. */
static int vt_copy_skb_from(struct sk_buff *skb, u32 *seq, u8 *buf, u32 len, u32 *done)
{
	u32 start = TCP_SKB_CB(skb)->seq, off, n;

	if (!skb->len || !before(*seq, start + skb->len))
		return 0;	/* empty (a FIN alone) or entirely acknowledged */
	if (before(*seq, start))
		return -EIO;	/* a hole: not the queue we think */
	off = *seq - start;
	n = min_t(u32, skb->len - off, len - *done);
	if (skb_copy_bits(skb, off, buf + *done, n))
		return -EIO;
	*done += n;
	*seq += n;
	return 0;
}

static int vt_copy_sndq(struct sock *sk, u8 *buf, u32 len)
{
	struct tcp_sock *tp = tcp_sk(sk);
	struct sk_buff *skb;
	u32 seq = tp->snd_una, done = 0;

	skb_rbtree_walk(skb, &sk->tcp_rtx_queue)
		if (vt_copy_skb_from(skb, &seq, buf, len, &done))
			return -EIO;
	skb_queue_walk(&sk->sk_write_queue, skb)
		if (vt_copy_skb_from(skb, &seq, buf, len, &done))
			return -EIO;
	return done == len ? 0 : -EIO;
}

/* Reads the frozen connection with its queues. Under lock_sock, in repair mode, with the flow
 * blocked and the backlog processed. */
static int vt_capture(struct sock *sk, struct vpipe_frozen_sock *fz)
{
	struct tcp_sock *tp = tcp_sk(sk);
	struct inet_sock *inet = inet_sk(sk);
	struct vpipe_tcp_state *st = &fz->st;
	u32 n, q;

	if (sk->sk_state != TCP_ESTABLISHED && sk->sk_state != TCP_CLOSE_WAIT)
		return -ENOTCONN;
	/* urgent data in the stream: the byte is out of band, not worth handling */
	if (tp->urg_data && !sock_flag(sk, SOCK_URGINLINE) &&
	    !before(tp->urg_seq, tp->copied_seq) && before(tp->urg_seq, tp->rcv_nxt))
		return -EOPNOTSUPP;

	memset(st, 0, sizeof(*st));
	st->family = VPIPE_AF_INET;
	memcpy(st->local_addr, &inet->inet_saddr, 4);
	memcpy(st->remote_addr, &inet->inet_daddr, 4);
	st->local_port = inet->inet_sport;
	st->remote_port = inet->inet_dport;
	if (tcp_is_sack(tp))
		st->options |= VPIPE_TCPOPT_SACK;
	if (tp->rx_opt.tstamp_ok)
		st->options |= VPIPE_TCPOPT_TIMESTAMP;
	if (tp->rx_opt.wscale_ok) {
		st->options |= VPIPE_TCPOPT_WSCALE;
		st->snd_wscale = tp->rx_opt.snd_wscale;
		st->rcv_wscale = tp->rx_opt.rcv_wscale;
	}
	st->mss = tp->rx_opt.mss_clamp;	/* TCP_MAXSEG in repair mode */
	st->timestamp = tcp_time_stamp_raw() + tp->tsoffset;	/* TCP_TIMESTAMP */
	st->snd_wl1 = tp->snd_wl1;	/* TCP_REPAIR_WINDOW */
	st->snd_wnd = tp->snd_wnd;
	st->max_window = tp->max_window;
	st->rcv_wnd = tp->rcv_wnd;
	st->rcv_wup = tp->rcv_wup;
	st->snd_seq = tp->write_seq;	/* TCP_QUEUE_SEQ, send queue */
	st->rcv_seq = tp->rcv_nxt;	/* TCP_QUEUE_SEQ, receive queue (a FIN counted) */
	fz->peer_fin = sk->sk_state == TCP_CLOSE_WAIT || (sk->sk_shutdown & RCV_SHUTDOWN);

	/* what the application sent that the peer has not acknowledged: carried along, the
	 * part never transmitted marked as such (SIOCOUTQ, SIOCOUTQNSD) */
	q = tp->write_seq - tp->snd_una;
	if (q) {
		fz->sndq = kvmalloc(q, GFP_KERNEL);
		if (!fz->sndq)
			return -ENOMEM;
		if (vt_copy_sndq(sk, fz->sndq, q))
			goto eio;
		st->sndq_len = q;
		st->sndq_unsent = tp->write_seq - tp->snd_nxt;
	}
	n = vt_unread_len(sk);
	if (n) {
		fz->unread = kvmalloc(n, GFP_KERNEL);
		if (!fz->unread)
			goto nomem;
		if (vt_copy_rcvq(sk, fz->unread, n))
			goto eio;
		st->rcvq_len = n;
	}
	return 0;
eio:
	vpipe_tcp_free_queues(fz);
	return -EIO;
nomem:
	vpipe_tcp_free_queues(fz);
	return -ENOMEM;
}

void vpipe_tcp_free_queues(struct vpipe_frozen_sock *fz)
{
	kvfree(fz->sndq);
	kvfree(fz->unread);
	fz->sndq = NULL;
	fz->unread = NULL;
}

static void vt_state_tuple(const struct vpipe_tcp_state *st, __be32 *laddr, __be16 *lport,
			   __be32 *raddr, __be16 *rport)
{
	memcpy(laddr, st->local_addr, 4);
	memcpy(raddr, st->remote_addr, 4);
	*lport = st->local_port;
	*rport = st->remote_port;
}

static void vt_fz_unblock(struct vpipe_frozen_sock *fz)
{
	__be32 la, ra;
	__be16 lp, rp;
	struct socket *sock;

	if (!fz->blocked)
		return;
	sock = sock_from_file(fz->file);
	vt_state_tuple(&fz->st, &la, &lp, &ra, &rp);
	vpipe_block_del(sock_net(sock->sk), la, lp, ra, rp);
	fz->blocked = false;
}

/* leaves repair mode quietly (no window probe) with the application's SO_REUSEADDR back */
static void vt_leave_repair(struct sock *sk, unsigned char reuse)
{
	vt_setint(sk, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
	lock_sock(sk);
	sk->sk_reuse = reuse;
	release_sock(sk);
}

int vpipe_tcp_freeze(struct file *f, struct vpipe_frozen_sock *fz)
{
	struct socket *sock = vt_tcp_socket(f);
	struct sockaddr unspec = { .sa_family = AF_UNSPEC };
	struct sock *sk;
	struct net *net;
	__be32 la, ra;
	__be16 lp, rp;
	unsigned char reuse;
	int r;

	memset(fz, 0, sizeof(*fz));
	if (!sock)
		return -EINVAL;
	sk = sock->sk;
	if (sk->sk_family != AF_INET || READ_ONCE(inet_csk(sk)->icsk_ulp_ops))
		return -EOPNOTSUPP;
	net = sock_net(sk);

	lock_sock(sk);
	la = inet_sk(sk)->inet_saddr;
	ra = inet_sk(sk)->inet_daddr;
	lp = inet_sk(sk)->inet_sport;
	rp = inet_sk(sk)->inet_dport;
	reuse = sk->sk_reuse;
	release_sock(sk);

	r = vpipe_block_add(net, la, lp, ra, rp);
	if (r)
		return r;
	/* segments of the flow that passed the hook before the block are still being processed
	 * (softirq, an RCU read side): wait for them, then let release_sock() run the socket's
	 * backlog. Expedited: a normal grace period costs ~10 ms. */
	synchronize_rcu_expedited();
	r = vt_setint(sk, TCP_REPAIR, TCP_REPAIR_ON);
	if (r) {
		vpipe_block_del(net, la, lp, ra, rp);
		/* a listener or a socket that closed meanwhile */
		return r == -EPERM ? -ENOTCONN : r;
	}
	lock_sock(sk);
	release_sock(sk);	/* flushes the backlog */
	lock_sock(sk);
	r = vt_capture(sk, fz);
	release_sock(sk);
	if (r) {
		/* leave quietly: nothing was changed */
		vt_leave_repair(sk, reuse);
		vpipe_block_del(net, la, lp, ra, rp);
		memset(fz, 0, sizeof(*fz));	/* vt_capture may have filled st */
		return r;
	}

	/* the tuple is free now: no FIN, no RST (repair-mode disconnect) */
	r = kernel_connect(sock, &unspec, sizeof(unspec), 0);
	if (r) {
		vt_leave_repair(sk, reuse);
		vpipe_block_del(net, la, lp, ra, rp);
		vpipe_tcp_free_queues(fz);
		memset(fz, 0, sizeof(*fz));
		return r;
	}
	/* an ordinary unconnected socket again, with the application's options */
	vt_leave_repair(sk, reuse);

	fz->file = get_file(f);
	fz->blocked = true;
	fz->app_reuse = reuse;
	return 0;
}

void vpipe_tcp_release(struct vpipe_frozen_sock *fz)
{
	if (!fz->file)
		return;
	vt_fz_unblock(fz);
	vpipe_tcp_free_queues(fz);
	fput(fz->file);
	memset(fz, 0, sizeof(*fz));
}

/* ------------------------------------------------------------------------------------------ */
/* restore                                                                                     */

/* Refills the selected queue. The receive queue takes one skb per call (short counts, -ENOMEM
 * for an allocation that is too large: halve the chunk). */
static int vt_refill(struct socket *sock, const u8 *data, u32 len)
{
	u32 off = 0, chunk = len;

	while (off < len) {
		struct msghdr msg = { .msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL };
		struct kvec iov = { .iov_base = (void *)(data + off) };
		int w;

		iov.iov_len = min(chunk, len - off);
		w = kernel_sendmsg(sock, &msg, &iov, 1, iov.iov_len);
		if (w > 0) {
			off += w;
			continue;
		}
		if ((w == -ENOMEM || w == -ENOBUFS) && chunk > VT_REFILL_MIN_CHUNK) {
			chunk /= 2;
			continue;
		}
		return w ? w : -EIO;
	}
	return 0;
}

/* the application's options, from the old socket (now unconnected) to the new one */
static void vt_copy_options(struct sock *from, struct sock *to, u8 app_reuse)
{
	struct tcp_sock *ft = tcp_sk(from), *tt = tcp_sk(to);
	char ca[TCP_CA_NAME_MAX];
	bool keepalive, nodelay, cork, linger;
	int keepidle, keepintvl, keepcnt, lingertime, sndbuf, rcvbuf, rcvlowat, notsent, priority;
	unsigned int user_timeout, tos, mark;
	long rcvtimeo, sndtimeo;
	u8 userlocks;

	lock_sock(from);
	keepalive = sock_flag(from, SOCK_KEEPOPEN);
	keepidle = ft->keepalive_time;
	keepintvl = ft->keepalive_intvl;
	keepcnt = ft->keepalive_probes;
	nodelay = ft->nonagle & TCP_NAGLE_OFF;
	cork = ft->nonagle & TCP_NAGLE_CORK;
	linger = sock_flag(from, SOCK_LINGER);
	lingertime = from->sk_lingertime;
	userlocks = from->sk_userlocks;
	sndbuf = from->sk_sndbuf;
	rcvbuf = from->sk_rcvbuf;
	rcvlowat = from->sk_rcvlowat;
	rcvtimeo = from->sk_rcvtimeo;
	sndtimeo = from->sk_sndtimeo;
	notsent = ft->notsent_lowat;
	user_timeout = inet_csk(from)->icsk_user_timeout;
	priority = from->sk_priority;
	tos = inet_sk(from)->tos;
	mark = from->sk_mark;
	strscpy(ca, inet_csk(from)->icsk_ca_ops->name, sizeof(ca));
	release_sock(from);

	if (keepidle)
		tcp_sock_set_keepidle(to, keepidle / HZ);
	if (keepintvl)
		tcp_sock_set_keepintvl(to, keepintvl / HZ);
	if (keepcnt)
		tcp_sock_set_keepcnt(to, keepcnt);
	if (keepalive)
		sock_set_keepalive(to);
	if (nodelay)
		tcp_sock_set_nodelay(to);
	if (user_timeout)
		tcp_sock_set_user_timeout(to, user_timeout);
	if (tos != inet_sk(to)->tos)
		ip_sock_set_tos(to, tos);
	if (priority != to->sk_priority)	/* after the TOS, which sets it too */
		sock_set_priority(to, priority);
	if (mark != to->sk_mark)
		sock_set_mark(to, mark);
	if (strncmp(ca, inet_csk(to)->icsk_ca_ops->name, sizeof(ca)))
		vt_setopt(to, TCP_CONGESTION, ca, strnlen(ca, sizeof(ca)));

	lock_sock(to);
	if (linger) {
		sock_set_flag(to, SOCK_LINGER);
		to->sk_lingertime = lingertime;
	}
	/* buffers only when the application set them (autotuning stays on otherwise); never
	 * below what the restored queues already take */
	if (userlocks & SOCK_SNDBUF_LOCK) {
		to->sk_userlocks |= SOCK_SNDBUF_LOCK;
		WRITE_ONCE(to->sk_sndbuf, max(sndbuf, READ_ONCE(to->sk_wmem_queued)));
		to->sk_write_space(to);
	}
	if (userlocks & SOCK_RCVBUF_LOCK) {
		to->sk_userlocks |= SOCK_RCVBUF_LOCK;
		WRITE_ONCE(to->sk_rcvbuf, max(rcvbuf, atomic_read(&to->sk_rmem_alloc)));
	}
	WRITE_ONCE(to->sk_rcvlowat, rcvlowat);
	WRITE_ONCE(to->sk_rcvtimeo, rcvtimeo);
	WRITE_ONCE(to->sk_sndtimeo, sndtimeo);
	WRITE_ONCE(tt->notsent_lowat, notsent);
	to->sk_reuse = app_reuse;
	release_sock(to);
	if (cork)
		tcp_sock_set_cork(to, true);
}

/* The new socket gets a file; the caller decides where its descriptor goes (the calling
 * process's table for a blocking call, the completion of an asynchronous one: vpipe_ops.c). */
static int vt_file(struct socket *sock, unsigned int f_flags, struct file **new_file)
{
	struct file *file = sock_alloc_file(sock, f_flags & O_NONBLOCK, NULL);	/* releases sock on error */

	if (IS_ERR(file))
		return PTR_ERR(file);
	*new_file = file;
	return 0;
}

/* A TCP socket that behaves like one reset by its peer: ECONNRESET once, then EOF / EPIPE. */
static int vt_make_reset(struct net *net, unsigned int f_flags, struct file **new_file)
{
	struct socket *sock;
	int r = __sock_create(net, AF_INET, SOCK_STREAM, IPPROTO_TCP, &sock, 0);

	if (r)
		return r;
	lock_sock(sock->sk);
	WRITE_ONCE(sock->sk->sk_err, ECONNRESET);
	WRITE_ONCE(sock->sk->sk_shutdown, SHUTDOWN_MASK);
	release_sock(sock->sk);
	return vt_file(sock, f_flags, new_file);
}

/* Builds the connection `s` (sndq/rcvq = s->sndq_len / s->rcvq_len bytes) in a new socket of
 * net, in repair mode. */
static int vt_build(struct net *net, struct sock *app, const struct vpipe_tcp_state *s,
		    const u8 *sndq, const u8 *rcvq, struct socket **out)
{
	struct sockaddr_in local = { .sin_family = AF_INET }, remote = { .sin_family = AF_INET };
	struct tcp_repair_opt opts[4];
	struct tcp_repair_window w;
	struct socket *sock;
	struct sock *sk;
	unsigned int n = 0;
	int r, bound_if;

	r = __sock_create(net, AF_INET, SOCK_STREAM, IPPROTO_TCP, &sock, 0);
	if (r)
		return r;
	sk = sock->sk;
	r = vt_setint(sk, TCP_REPAIR, TCP_REPAIR_ON);
	if (r)
		goto fail;
	/* what routing looks at, before connect(): the device, the mark, the TOS */
	bound_if = READ_ONCE(app->sk_bound_dev_if);
	if (bound_if) {
		r = sock_bindtoindex(sk, bound_if, true);
		if (r)
			goto fail;
	}
	if (READ_ONCE(app->sk_mark))
		sock_set_mark(sk, READ_ONCE(app->sk_mark));
	if (READ_ONCE(inet_sk(app)->tos))
		ip_sock_set_tos(sk, READ_ONCE(inet_sk(app)->tos));
	memcpy(&local.sin_addr, s->local_addr, 4);
	local.sin_port = s->local_port;
	memcpy(&remote.sin_addr, s->remote_addr, 4);
	remote.sin_port = s->remote_port;
	r = kernel_bind(sock, (struct sockaddr *)&local, sizeof(local));
	if (r)
		goto fail;

	/* queue sequence numbers (only while CLOSE): the first byte of each queue */
	if ((r = vt_setint(sk, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)) ||
	    (r = vt_setint(sk, TCP_QUEUE_SEQ, (int)(s->rcv_seq - s->rcvq_len))) ||
	    (r = vt_setint(sk, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)) ||
	    (r = vt_setint(sk, TCP_QUEUE_SEQ, (int)(s->snd_seq - s->sndq_len))) ||
	    (r = vt_setint(sk, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)))
		goto fail;

	r = kernel_connect(sock, (struct sockaddr *)&remote, sizeof(remote), 0);
	if (r)
		goto fail;

	opts[n].opt_code = TCPOPT_MSS;
	opts[n++].opt_val = s->mss;
	if (s->options & VPIPE_TCPOPT_SACK) {
		opts[n].opt_code = TCPOPT_SACK_PERM;
		opts[n++].opt_val = 0;
	}
	if (s->options & VPIPE_TCPOPT_WSCALE) {
		opts[n].opt_code = TCPOPT_WINDOW;
		opts[n++].opt_val = s->snd_wscale | ((u32)s->rcv_wscale << 16);
	}
	if (s->options & VPIPE_TCPOPT_TIMESTAMP) {
		opts[n].opt_code = TCPOPT_TIMESTAMP;
		opts[n++].opt_val = 0;
	}
	r = vt_setopt(sk, TCP_REPAIR_OPTIONS, opts, n * sizeof(opts[0]));
	if (r)
		goto fail;
	if (s->options & VPIPE_TCPOPT_TIMESTAMP) {
		r = vt_setint(sk, TCP_TIMESTAMP, (int)s->timestamp);
		if (r)
			goto fail;
	}

	/* room for the queues without pinning the buffer sizes (autotuning stays on) */
	lock_sock(sk);
	if (s->rcvq_len)
		WRITE_ONCE(sk->sk_rcvbuf, max_t(u64, sk->sk_rcvbuf,
						min_t(u64, 2ull * s->rcvq_len + (256u << 10), INT_MAX)));
	if (s->sndq_len)
		WRITE_ONCE(sk->sk_sndbuf, max_t(u64, sk->sk_sndbuf,
						min_t(u64, 2ull * s->sndq_len + (256u << 10), INT_MAX)));
	release_sock(sk);

	if (s->rcvq_len) {
		if ((r = vt_setint(sk, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)) ||
		    (r = vt_refill(sock, rcvq, s->rcvq_len)))
			goto fail;
	}
	/* only the transmitted part goes in here (it counts as in flight); the rest is sent as
	 * ordinary data once the flow reaches the socket (vpipe_tcp_restore) */
	if (s->sndq_len > s->sndq_unsent) {
		if ((r = vt_setint(sk, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)) ||
		    (r = vt_refill(sock, sndq, s->sndq_len - s->sndq_unsent)))
			goto fail;
	}
	r = vt_setint(sk, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
	if (r)
		goto fail;

	w.snd_wl1 = s->snd_wl1;
	w.snd_wnd = s->snd_wnd;
	w.max_window = s->max_window;
	w.rcv_wnd = s->rcv_wnd;
	w.rcv_wup = s->rcv_wup;
	r = vt_setopt(sk, TCP_REPAIR_WINDOW, &w, sizeof(w));
	if (r)
		goto fail;
	*out = sock;
	return 0;
fail:
	/* still in repair mode (or never connected): closes without FIN/RST */
	sock_release(sock);
	return r;
}

/*
 * The guest's conntrack, when something uses it (a firewall), last saw the connection at the
 * freeze; dom0 moved both sequence spaces on. Its TCP window tracking would call the restored
 * connection's segments INVALID, and a firewall that drops INVALID (firewalld, many rule
 * sets) would stall it. The entry is made liberal in both directions (what
 * nf_conntrack_tcp_be_liberal does globally). nf_conntrack is looked up at run time: not
 * loaded means nothing tracks the flow, and vpipe.ko does not pull it in.
 */
static void vt_conntrack_liberal(struct net *net, const struct vpipe_tcp_state *s)
{
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
	typeof(&nf_conntrack_find_get) find = symbol_get(nf_conntrack_find_get);
	struct nf_conntrack_tuple t;
	struct nf_conntrack_tuple_hash *h;
	struct nf_conn *ct;

	if (!find)
		return;
	memset(&t, 0, sizeof(t));
	t.src.l3num = AF_INET;
	memcpy(&t.src.u3.ip, s->remote_addr, 4);
	t.src.u.tcp.port = s->remote_port;
	memcpy(&t.dst.u3.ip, s->local_addr, 4);
	t.dst.u.tcp.port = s->local_port;
	t.dst.protonum = IPPROTO_TCP;
	t.dst.dir = IP_CT_DIR_ORIGINAL;
	h = find(net, &nf_ct_zone_dflt, &t);
	if (h) {
		ct = nf_ct_tuplehash_to_ctrack(h);
		spin_lock_bh(&ct->lock);
		ct->proto.tcp.seen[0].flags |= IP_CT_TCP_FLAG_BE_LIBERAL;
		ct->proto.tcp.seen[1].flags |= IP_CT_TCP_FLAG_BE_LIBERAL;
		spin_unlock_bh(&ct->lock);
		nf_conntrack_put(&ct->ct_general);
	}
	symbol_put(nf_conntrack_find_get);
#endif
}

/* queues the never-transmitted bytes as ordinary data */
static int vt_send_unsent(struct socket *sock, const u8 *data, u32 len)
{
	struct sock *sk = sock->sk;
	struct tcp_sock *tp = tcp_sk(sk);
	u32 off = 0, lowat;
	int sndbuf, r = 0;

	/* The application's SO_SNDBUF (when it locked one) and TCP_NOTSENT_LOWAT are back on the
	 * socket (vt_copy_options): the bytes fitted the old socket's limits, but they may take
	 * more in the new socket's skbs, and MSG_DONTWAIT would fail the restore with -EAGAIN.
	 * Both limits are lifted while the bytes are queued. */
	lock_sock(sk);
	sndbuf = sk->sk_sndbuf;
	lowat = tp->notsent_lowat;
	WRITE_ONCE(tp->notsent_lowat, UINT_MAX);
	WRITE_ONCE(sk->sk_sndbuf, max_t(u64, sndbuf, min_t(u64, (u64)READ_ONCE(sk->sk_wmem_queued) +
						     2ull * len + (256u << 10), INT_MAX)));
	release_sock(sk);
	while (off < len) {
		struct msghdr msg = { .msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL };
		struct kvec iov = { .iov_base = (void *)(data + off), .iov_len = len - off };
		int w = kernel_sendmsg(sock, &msg, &iov, 1, iov.iov_len);

		if (w <= 0) {
			r = w ? w : -EIO;
			break;
		}
		off += w;
	}
	lock_sock(sk);
	WRITE_ONCE(sk->sk_sndbuf, sndbuf);
	WRITE_ONCE(tp->notsent_lowat, lowat);
	release_sock(sk);
	return r;
}

int vpipe_tcp_restore(struct vpipe_frozen_sock *fz, const struct vpipe_restore *res,
		      struct file **new_file)
{
	struct socket *app_sock, *sock = NULL;
	struct vpipe_tcp_state s;
	const u8 *sndq, *rcvq;
	unsigned int f_flags;
	struct net *net;
	bool shut_rd;
	int r;

	*new_file = NULL;
	if (!fz->file)
		return -EINVAL;
	app_sock = sock_from_file(fz->file);
	net = sock_net(app_sock->sk);
	f_flags = READ_ONCE(fz->file->f_flags);

	if (res->flags & VPIPE_EPF_RESET) {
		vt_fz_unblock(fz);
		r = vt_make_reset(net, f_flags, new_file);
		goto out;
	}
	/* dom0's final state (checked by the core against the frozen one), or the frozen one */
	if (res->flags & VPIPE_EPF_VALID) {
		s = *res->st;
		sndq = res->sndq;
		rcvq = res->rcvq;
		/* a FIN we had taken before the freeze, or one dom0 consumed */
		shut_rd = fz->peer_fin || (res->flags & VPIPE_EPF_PEER_FIN);
	} else {
		s = fz->st;
		sndq = fz->sndq;
		rcvq = fz->unread;
		shut_rd = fz->peer_fin;
	}
	if ((s.sndq_len && !sndq) || (s.rcvq_len && !rcvq) || s.sndq_unsent > s.sndq_len) {
		r = -EINVAL;
		goto out_unblock;
	}
	s.carry_offset = 0;

	r = vt_build(net, app_sock->sk, &s, sndq, rcvq, &sock);
	if (r)
		goto out_unblock;
	vt_copy_options(app_sock->sk, sock->sk, fz->app_reuse);
	if (res->flags & VPIPE_EPF_VALID)
		vt_conntrack_liberal(net, &s);
	if (shut_rd)
		kernel_sock_shutdown(sock, SHUT_RD);	/* the application reads EOF */
	/* the flow reaches the new socket; then leave repair mode with a window probe so that
	 * a peer stalled during the hand-over resumes at once */
	vt_fz_unblock(fz);
	r = vt_setint(sock->sk, TCP_REPAIR, TCP_REPAIR_OFF);
	if (r) {
		sock_release(sock);
		goto out;
	}
	lock_sock(sock->sk);
	sock->sk->sk_reuse = fz->app_reuse;	/* REPAIR_OFF cleared it */
	release_sock(sock->sk);
	/* what was never transmitted goes out now, as ordinary data */
	if (s.sndq_unsent) {
		r = vt_send_unsent(sock, sndq + (s.sndq_len - s.sndq_unsent), s.sndq_unsent);
		if (r) {
			sock_release(sock);
			goto out;
		}
	}
	r = vt_file(sock, f_flags, new_file);
	goto out;

out_unblock:
	vt_fz_unblock(fz);
out:
	vpipe_tcp_release(fz);
	return r;
}
