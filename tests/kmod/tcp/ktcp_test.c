// SPDX-License-Identifier: GPL-2.0
/*
 * Test-only module: exposes guest-module/kmod/vpipe_tcp.c (and its flow block, vpipe_block.c)
 * through /dev/vpipe_ktcp_test so that tests/kmod/tcp/ktcp_test (userspace) can drive
 * check/freeze/restore/release on real sockets in a QEMU guest: the frozen queues go out to
 * userspace, a VALID restore takes dom0's state and queues from userspace. Never part of
 * vpipe.ko.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/uaccess.h>
#include <linux/ktime.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <net/ip.h>
#include <net/inet_sock.h>
#include <net/net_namespace.h>
#include <net/sock.h>
#include <net/netfilter/nf_conntrack.h>

#include "vpipe_block.h"
#include "vpipe_tcp.h"
#include "ktcp_test_ioctl.h"

static DEFINE_MUTEX(kt_lock);
static struct vpipe_frozen_sock kt_slot[KT_SLOTS];

/* ---- conntrack scenario ---- */
static struct net *kt_ct_net;		/* tracking enabled here (nf_ct_netns_get) */
static bool kt_ct_dom0;			/* untrack the watched tuple */
static __be32 kt_ct_a, kt_ct_b;		/* watched tuple, either direction */
static __be16 kt_ct_pa, kt_ct_pb;
static atomic64_t kt_ct_invalid = ATOMIC64_INIT(0), kt_ct_untracked = ATOMIC64_INIT(0);

static bool kt_watched(const struct sk_buff *skb)
{
	const struct iphdr *iph = ip_hdr(skb);
	struct tcphdr _th;
	const struct tcphdr *th;

	if (iph->protocol != IPPROTO_TCP || !kt_ct_pa)
		return false;
	th = skb_header_pointer(skb, ip_hdrlen(skb), sizeof(_th), &_th);
	if (!th)
		return false;
	return (iph->saddr == kt_ct_a && th->source == kt_ct_pa && iph->daddr == kt_ct_b &&
		th->dest == kt_ct_pb) ||
	       (iph->saddr == kt_ct_b && th->source == kt_ct_pb && iph->daddr == kt_ct_a &&
		th->dest == kt_ct_pa);
}

/* before conntrack: the dom0 phase is invisible to the guest's conntrack */
static unsigned int kt_untrack_hook(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	if (READ_ONCE(kt_ct_dom0) && !skb_get_nfct(skb) && kt_watched(skb)) {
		nf_ct_set(skb, NULL, IP_CT_UNTRACKED);
		atomic64_inc(&kt_ct_untracked);
	}
	return NF_ACCEPT;
}

/* after conntrack: "ct state invalid drop" for the watched tuple */
static unsigned int kt_invalid_hook(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	if (!skb_get_nfct(skb) && kt_watched(skb)) {
		atomic64_inc(&kt_ct_invalid);
		return NF_DROP;
	}
	return NF_ACCEPT;
}

static const struct nf_hook_ops kt_ct_ops[] = {
	{ .hook = kt_untrack_hook, .pf = NFPROTO_IPV4, .hooknum = NF_INET_LOCAL_OUT,
	  .priority = NF_IP_PRI_RAW },
	{ .hook = kt_untrack_hook, .pf = NFPROTO_IPV4, .hooknum = NF_INET_PRE_ROUTING,
	  .priority = NF_IP_PRI_RAW },
	{ .hook = kt_invalid_hook, .pf = NFPROTO_IPV4, .hooknum = NF_INET_LOCAL_OUT,
	  .priority = NF_IP_PRI_CONNTRACK + 1 },
	{ .hook = kt_invalid_hook, .pf = NFPROTO_IPV4, .hooknum = NF_INET_PRE_ROUTING,
	  .priority = NF_IP_PRI_CONNTRACK + 1 },
};

static void kt_ct_off(void)
{
	if (!kt_ct_net)
		return;
	nf_unregister_net_hooks(kt_ct_net, kt_ct_ops, ARRAY_SIZE(kt_ct_ops));
	nf_ct_netns_put(kt_ct_net, NFPROTO_IPV4);
	put_net(kt_ct_net);
	kt_ct_net = NULL;
	kt_ct_dom0 = false;
	kt_ct_pa = 0;
}

static long kt_ct_on(void)
{
	struct net *net = current->nsproxy->net_ns;
	int r;

	if (kt_ct_net)
		return -EBUSY;
	r = nf_ct_netns_get(net, NFPROTO_IPV4);
	if (r)
		return r;
	r = nf_register_net_hooks(net, kt_ct_ops, ARRAY_SIZE(kt_ct_ops));
	if (r) {
		nf_ct_netns_put(net, NFPROTO_IPV4);
		return r;
	}
	kt_ct_net = get_net(net);
	return 0;
}

/* a VALID restore's queue from userspace (NULL when the pointer is 0: restore must refuse it
 * if len is not 0) */
static int kt_queue_in(u64 uptr, u32 len, u8 **out)
{
	*out = NULL;
	if (!uptr || !len)
		return 0;
	if (len > KT_QUEUE_MAX)
		return -EINVAL;
	*out = kvmalloc(len, GFP_KERNEL);
	if (!*out)
		return -ENOMEM;
	if (copy_from_user(*out, u64_to_user_ptr(uptr), len)) {
		kvfree(*out);
		*out = NULL;
		return -EFAULT;
	}
	return 0;
}

static long kt_restore(struct kt_restore *a)
{
	struct vpipe_frozen_sock *fz = &kt_slot[a->slot];
	struct vpipe_restore res = { .flags = a->flags };
	struct file *nf = NULL;
	u8 *sndq = NULL, *rcvq = NULL;
	u64 t0;
	int r;

	if (!fz->file)
		return -ENOENT;
	if (a->flags & VPIPE_EPF_VALID) {
		r = kt_queue_in(a->sndq, a->st.sndq_len, &sndq);
		if (!r)
			r = kt_queue_in(a->rcvq, a->st.rcvq_len, &rcvq);
		if (r) {
			kvfree(sndq);
			return r;
		}
		res.st = &a->st;
		res.sndq = sndq;
		res.rcvq = rcvq;
	}
	t0 = ktime_get_ns();
	a->result = vpipe_tcp_restore(fz, &res, &nf);
	/* the restored socket as a new O_CLOEXEC descriptor of the caller (vpipe_ops.c does
	 * the same for a blocking call) */
	a->new_fd = -1;
	if (nf) {
		int fd = get_unused_fd_flags(O_CLOEXEC);

		if (fd < 0) {
			fput(nf);
			if (!a->result)
				a->result = fd;
		} else {
			fd_install(fd, nf);
			a->new_fd = fd;
		}
	}
	a->ns = ktime_get_ns() - t0;
	kvfree(sndq);
	kvfree(rcvq);
	return 0;
}

/* ---- KT_IOC_BLOCK: a lossy link for one tuple ----
 * The tuple's segments are dropped both ways, as if lost in the network (the flow block would
 * hold the incoming ones and re-inject them at unblock): the test's own hook, ahead of the flow
 * block's, in every namespace. */
struct kt_blk {
	struct net *net;	/* a reference: the entry may outlive the socket */
	__be32 la, ra;
	__be16 lp, rp;
};
static struct kt_blk kt_blk[KT_SLOTS];
static DEFINE_SPINLOCK(kt_blk_lock);
static atomic_t kt_nr_blk = ATOMIC_INIT(0);

static unsigned int kt_loss_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	const bool in = state->hook == NF_INET_PRE_ROUTING;
	const struct iphdr *iph;
	struct tcphdr _th;
	const struct tcphdr *th;
	bool hit = false;
	int i;

	if (likely(!atomic_read(&kt_nr_blk)))
		return NF_ACCEPT;
	iph = ip_hdr(skb);
	if (iph->protocol != IPPROTO_TCP)
		return NF_ACCEPT;
	th = skb_header_pointer(skb, ip_hdrlen(skb), sizeof(_th), &_th);
	if (!th)
		return NF_ACCEPT;
	spin_lock_bh(&kt_blk_lock);
	for (i = 0; i < KT_SLOTS && !hit; i++) {
		const struct kt_blk *e = &kt_blk[i];

		if (e->net != state->net)
			continue;
		hit = in ? (iph->daddr == e->la && th->dest == e->lp && iph->saddr == e->ra &&
			    th->source == e->rp)
			 : (iph->saddr == e->la && th->source == e->lp && iph->daddr == e->ra &&
			    th->dest == e->rp);
	}
	spin_unlock_bh(&kt_blk_lock);
	return hit ? NF_DROP : NF_ACCEPT;
}

static const struct nf_hook_ops kt_loss_ops[] = {
	{ .hook = kt_loss_hook, .pf = NFPROTO_IPV4, .hooknum = NF_INET_PRE_ROUTING,
	  .priority = NF_IP_PRI_RAW - 2 },
	{ .hook = kt_loss_hook, .pf = NFPROTO_IPV4, .hooknum = NF_INET_LOCAL_OUT,
	  .priority = NF_IP_PRI_RAW - 2 },
};

static int __net_init kt_loss_net_init(struct net *net)
{
	return nf_register_net_hooks(net, kt_loss_ops, ARRAY_SIZE(kt_loss_ops));
}

static void __net_exit kt_loss_net_exit(struct net *net)
{
	nf_unregister_net_hooks(net, kt_loss_ops, ARRAY_SIZE(kt_loss_ops));
}

static struct pernet_operations kt_loss_net_ops = {
	.init = kt_loss_net_init,
	.exit = kt_loss_net_exit,
};

static long kt_block(const struct kt_block *a)
{
	struct kt_blk b = {};
	struct socket *sock;
	struct file *f;
	int i, slot = -1, r = 0;

	f = fget(a->fd);
	if (!f)
		return -EBADF;
	sock = sock_from_file(f);
	if (!sock || !sock->sk || sock->sk->sk_family != AF_INET ||
	    sock->sk->sk_protocol != IPPROTO_TCP) {
		fput(f);
		return -EINVAL;
	}
	lock_sock(sock->sk);
	b.la = inet_sk(sock->sk)->inet_saddr;
	b.ra = inet_sk(sock->sk)->inet_daddr;
	b.lp = inet_sk(sock->sk)->inet_sport;
	b.rp = inet_sk(sock->sk)->inet_dport;
	release_sock(sock->sk);
	b.net = sock_net(sock->sk);
	fput(f);
	spin_lock_bh(&kt_blk_lock);
	for (i = 0; i < KT_SLOTS; i++) {
		struct kt_blk *e = &kt_blk[i];

		if (!e->net) {
			if (slot < 0)
				slot = i;
			continue;
		}
		if (e->net == b.net && e->la == b.la && e->ra == b.ra && e->lp == b.lp &&
		    e->rp == b.rp)
			break;
	}
	if (a->on) {
		if (i < KT_SLOTS) {
			r = -EEXIST;
		} else if (slot < 0) {
			r = -ENOSPC;
		} else {
			b.net = get_net(b.net);
			kt_blk[slot] = b;
			atomic_inc(&kt_nr_blk);
		}
		b.net = NULL;
	} else if (i == KT_SLOTS) {
		r = -ENOENT;
		b.net = NULL;
	} else {
		b.net = kt_blk[i].net;
		memset(&kt_blk[i], 0, sizeof(kt_blk[i]));
		atomic_dec(&kt_nr_blk);
	}
	spin_unlock_bh(&kt_blk_lock);
	if (b.net)
		put_net(b.net);
	if (a->on && !r)
		synchronize_rcu();	/* segments already past the hook are through */
	return r;
}

static void kt_block_clear(void)
{
	int i;

	for (i = 0; i < KT_SLOTS; i++) {
		struct kt_blk *e = &kt_blk[i];

		if (!e->net)
			continue;
		put_net(e->net);
		memset(e, 0, sizeof(*e));
	}
	atomic_set(&kt_nr_blk, 0);
}

/* the frozen queues to userspace (as much as the buffers take) */
static int kt_queue_out(u64 uptr, u32 cap, const u8 *q, u32 len)
{
	if (!uptr || !len || !cap)
		return 0;
	return copy_to_user(u64_to_user_ptr(uptr), q, min(cap, len)) ? -EFAULT : 0;
}

static long kt_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	void __user *up = (void __user *)arg;
	long r = 0;

	mutex_lock(&kt_lock);
	switch (cmd) {
	case KT_IOC_CHECK: {
		struct kt_check a;
		struct file *f;
		bool fin = false;

		if (copy_from_user(&a, up, sizeof(a))) {
			r = -EFAULT;
			break;
		}
		f = fget(a.fd);
		if (!f) {
			r = -EBADF;
			break;
		}
		a.result = vpipe_tcp_check(f, &fin);
		a.peer_fin = fin;
		fput(f);
		if (copy_to_user(up, &a, sizeof(a)))
			r = -EFAULT;
		break;
	}
	case KT_IOC_FREEZE: {
		struct kt_freeze a;
		struct file *f;
		u64 t0;

		if (copy_from_user(&a, up, sizeof(a))) {
			r = -EFAULT;
			break;
		}
		if (a.slot >= KT_SLOTS || kt_slot[a.slot].file) {
			r = -EBUSY;
			break;
		}
		f = fget(a.fd);
		if (!f) {
			r = -EBADF;
			break;
		}
		t0 = ktime_get_ns();
		a.result = vpipe_tcp_freeze(f, &kt_slot[a.slot]);
		a.ns = ktime_get_ns() - t0;
		fput(f);
		a.st = kt_slot[a.slot].st;
		a.peer_fin = kt_slot[a.slot].peer_fin;
		if (!a.result &&
		    (kt_queue_out(a.sndq, a.sndq_cap, kt_slot[a.slot].sndq, a.st.sndq_len) ||
		     kt_queue_out(a.rcvq, a.rcvq_cap, kt_slot[a.slot].unread, a.st.rcvq_len)))
			r = -EFAULT;
		if (copy_to_user(up, &a, sizeof(a)))
			r = -EFAULT;
		break;
	}
	case KT_IOC_RESTORE: {
		struct kt_restore *a = kmalloc(sizeof(*a), GFP_KERNEL);

		if (!a) {
			r = -ENOMEM;
			break;
		}
		if (copy_from_user(a, up, sizeof(*a))) {
			r = -EFAULT;
		} else if (a->slot >= KT_SLOTS) {
			r = -EINVAL;
		} else {
			r = kt_restore(a);
			if (!r && copy_to_user(up, a, sizeof(*a)))
				r = -EFAULT;
		}
		kfree(a);
		break;
	}
	case KT_IOC_RELEASE: {
		u32 slot;

		if (get_user(slot, (u32 __user *)up)) {
			r = -EFAULT;
			break;
		}
		if (slot >= KT_SLOTS) {
			r = -EINVAL;
			break;
		}
		vpipe_tcp_release(&kt_slot[slot]);
		break;
	}
	case KT_IOC_BLOCK: {
		struct kt_block a;

		if (copy_from_user(&a, up, sizeof(a)))
			r = -EFAULT;
		else
			r = kt_block(&a);
		break;
	}
	case KT_IOC_TAKE_UNREAD:
	case KT_IOC_SEND_ALL: {
		struct kt_io a;
		struct file *f;
		void *buf;

		if (copy_from_user(&a, up, sizeof(a))) {
			r = -EFAULT;
			break;
		}
		if (a.len > (16u << 20)) {
			r = -EINVAL;
			break;
		}
		buf = kvmalloc(a.len ? a.len : 1, GFP_KERNEL);
		if (!buf) {
			r = -ENOMEM;
			break;
		}
		f = fget(a.fd);
		if (!f) {
			kvfree(buf);
			r = -EBADF;
			break;
		}
		if (cmd == KT_IOC_TAKE_UNREAD) {
			a.result = vpipe_tcp_take_unread(f, buf, a.len);
			if (a.result > 0 && copy_to_user(u64_to_user_ptr(a.buf), buf, a.result))
				r = -EFAULT;
		} else if (copy_from_user(buf, u64_to_user_ptr(a.buf), a.len)) {
			r = -EFAULT;
		} else {
			a.result = vpipe_tcp_send_all(f, buf, a.len);
		}
		fput(f);
		kvfree(buf);
		if (!r && copy_to_user(up, &a, sizeof(a)))
			r = -EFAULT;
		break;
	}
	case KT_IOC_CT_TRACK:
	case KT_IOC_CT_DOM0: {
		struct kt_ct a;

		if (copy_from_user(&a, up, sizeof(a))) {
			r = -EFAULT;
			break;
		}
		if (cmd == KT_IOC_CT_TRACK) {
			if (a.on)
				r = kt_ct_on();
			else
				kt_ct_off();
			break;
		}
		memcpy(&kt_ct_a, a.st.local_addr, 4);
		memcpy(&kt_ct_b, a.st.remote_addr, 4);
		kt_ct_pb = a.st.remote_port;
		WRITE_ONCE(kt_ct_pa, a.st.local_port);
		WRITE_ONCE(kt_ct_dom0, a.on);
		break;
	}
	case KT_IOC_STATS: {
		struct kt_stats s = { .dropped = vpipe_block_dropped(),
				      .blocked = vpipe_block_count(),
				      .ct_invalid_dropped = atomic64_read(&kt_ct_invalid),
				      .ct_untracked = atomic64_read(&kt_ct_untracked),
				      .reinjected = vpipe_block_reinjected() };

		if (copy_to_user(up, &s, sizeof(s)))
			r = -EFAULT;
		break;
	}
	default:
		r = -ENOTTY;
	}
	mutex_unlock(&kt_lock);
	return r;
}

static const struct file_operations kt_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = kt_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice kt_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vpipe_ktcp_test",
	.fops = &kt_fops,
};

static int __init kt_init(void)
{
	int r = vpipe_tcp_init();

	if (r)
		return r;
	r = register_pernet_subsys(&kt_loss_net_ops);
	if (r) {
		vpipe_tcp_exit();
		return r;
	}
	r = misc_register(&kt_dev);
	if (r) {
		unregister_pernet_subsys(&kt_loss_net_ops);
		vpipe_tcp_exit();
	}
	return r;
}

static void __exit kt_exit(void)
{
	int i;

	misc_deregister(&kt_dev);
	kt_ct_off();
	for (i = 0; i < KT_SLOTS; i++)
		vpipe_tcp_release(&kt_slot[i]);
	unregister_pernet_subsys(&kt_loss_net_ops);
	kt_block_clear();
	vpipe_tcp_exit();
}

module_init(kt_init);
module_exit(kt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vPipe: test hook for vpipe_tcp.c (tests only)");
