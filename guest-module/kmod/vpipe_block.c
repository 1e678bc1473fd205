// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_block.c -- the guest's flow block (see vpipe_block.h): a table of blocked 4-tuples and
 * a netfilter hook in every network namespace that holds their incoming segments (re-injected
 * when the flow is unblocked) and drops their outgoing ones.
 */
#include <linux/hashtable.h>
#include <linux/ip.h>
#include <linux/jhash.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/netfilter.h>
#include <linux/skbuff.h>
#include <linux/netfilter_ipv4.h>
#include <linux/slab.h>
#include <linux/tcp.h>
#include <net/ip.h>
#include <net/net_namespace.h>
#include <net/netns/hash.h>

#include "vpipe_block.h"

struct vt_flow {
	struct hlist_node node;
	struct rcu_head rcu;
	const struct net *net;	/* no reference: the frozen socket keeps its netns alive */
	__be32 laddr, raddr;
	__be16 lport, rport;
	unsigned int users;
	/* incoming segments held while blocked, each with a reference on its skb->dev; under
	 * held.lock, which also guards `dead` (set once the flow left the table: a hook that
	 * found the flow just before must not queue behind the final re-injection) */
	struct sk_buff_head held;
	bool dead;
};

/* per flow; past it the peer's segments are dropped (it retransmits them) */
#define VT_HOLD_MAX 256

#define VT_HASH_BITS 6
static DEFINE_HASHTABLE(vt_flows, VT_HASH_BITS);
static DEFINE_SPINLOCK(vt_flows_lock);
static atomic_t vt_nr_flows = ATOMIC_INIT(0);
static atomic64_t vt_dropped = ATOMIC64_INIT(0);
static atomic64_t vt_reinjected = ATOMIC64_INIT(0);

static u32 vt_hash(const struct net *net, __be32 laddr, __be16 lport, __be32 raddr, __be16 rport)
{
	return jhash_3words((__force u32)laddr, (__force u32)raddr,
			    ((__force u32)lport << 16) | (__force u32)rport, net_hash_mix(net));
}

/* under rcu_read_lock or vt_flows_lock */
static struct vt_flow *vt_lookup(const struct net *net, __be32 laddr, __be16 lport,
				 __be32 raddr, __be16 rport)
{
	struct vt_flow *f;
	u32 h = vt_hash(net, laddr, lport, raddr, rport);

	hash_for_each_possible_rcu(vt_flows, f, node, h) {
		if (f->net == net && f->laddr == laddr && f->lport == lport &&
		    f->raddr == raddr && f->rport == rport)
			return f;
	}
	return NULL;
}

int vpipe_block_add(const struct net *net, __be32 laddr, __be16 lport, __be32 raddr, __be16 rport)
{
	struct vt_flow *f, *n = kzalloc(sizeof(*n), GFP_KERNEL);

	if (!n)
		return -ENOMEM;
	spin_lock_bh(&vt_flows_lock);
	f = vt_lookup(net, laddr, lport, raddr, rport);
	if (f) {
		f->users++;
		spin_unlock_bh(&vt_flows_lock);
		kfree(n);
		return 0;
	}
	n->net = net;
	n->laddr = laddr;
	n->raddr = raddr;
	n->lport = lport;
	n->rport = rport;
	n->users = 1;
	skb_queue_head_init(&n->held);
	hash_add_rcu(vt_flows, &n->node, vt_hash(net, laddr, lport, raddr, rport));
	atomic_inc(&vt_nr_flows);
	spin_unlock_bh(&vt_flows_lock);
	return 0;
}

/* Takes the flow's held segments (the flow is out of the table: nothing new is queued). */
static void vt_take_held(struct vt_flow *f, struct sk_buff_head *out)
{
	spin_lock_bh(&f->held.lock);
	f->dead = true;
	skb_queue_splice_init(&f->held, out);
	spin_unlock_bh(&f->held.lock);
}

/*
 * Re-injects segments where a received frame enters the stack (netif_rx: the skb's data is at
 * the network header, as after eth_type_trans), so they pass every hook again -- conntrack
 * included -- and reach the restored socket. BH stays off across the loop: one CPU's backlog,
 * arrival order kept.
 */
static void vt_reinject(struct sk_buff_head *q)
{
	struct sk_buff *skb;

	local_bh_disable();
	while ((skb = __skb_dequeue(q))) {
		struct net_device *dev = skb->dev;

		netif_rx(skb);
		dev_put(dev);
		atomic64_inc(&vt_reinjected);
	}
	local_bh_enable();
}

static void vt_purge(struct sk_buff_head *q)
{
	struct sk_buff *skb;

	while ((skb = __skb_dequeue(q))) {
		struct net_device *dev = skb->dev;

		kfree_skb(skb);
		dev_put(dev);
		atomic64_inc(&vt_dropped);
	}
}

void vpipe_block_del(const struct net *net, __be32 laddr, __be16 lport, __be32 raddr,
		       __be16 rport)
{
	struct vt_flow *f;
	struct sk_buff_head q;

	__skb_queue_head_init(&q);
	spin_lock_bh(&vt_flows_lock);
	f = vt_lookup(net, laddr, lport, raddr, rport);
	if (f && --f->users == 0) {
		hash_del_rcu(&f->node);
		atomic_dec(&vt_nr_flows);
	} else {
		f = NULL;
	}
	spin_unlock_bh(&vt_flows_lock);
	if (!f)
		return;
	vt_take_held(f, &q);
	kfree_rcu(f, rcu);
	vt_reinject(&q);
}

/* Holds an incoming segment of a blocked flow: NF_STOLEN, or NF_DROP when the flow is full. */
static unsigned int vt_hold(struct vt_flow *f, struct sk_buff *skb)
{
	unsigned int verdict = NF_STOLEN;

	spin_lock(&f->held.lock);
	if (f->dead) {
		verdict = NF_ACCEPT;	/* unblocked meanwhile: on its way */
	} else if (skb_queue_len(&f->held) >= VT_HOLD_MAX || !skb->dev) {
		verdict = NF_DROP;
	} else {
		dev_hold(skb->dev);
		__skb_queue_tail(&f->held, skb);
	}
	spin_unlock(&f->held.lock);
	return verdict;
}

static unsigned int vt_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	const bool in = state->hook == NF_INET_PRE_ROUTING;
	const struct iphdr *iph;
	struct tcphdr _th;
	const struct tcphdr *th;
	struct vt_flow *f;
	unsigned int verdict;

	if (likely(atomic_read(&vt_nr_flows) == 0))
		return NF_ACCEPT;
	iph = ip_hdr(skb);
	if (iph->protocol != IPPROTO_TCP || (ntohs(iph->frag_off) & IP_OFFSET))
		return NF_ACCEPT;
	th = skb_header_pointer(skb, ip_hdrlen(skb), sizeof(_th), &_th);
	if (!th)
		return NF_ACCEPT;
	rcu_read_lock();
	if (in)
		f = vt_lookup(state->net, iph->daddr, th->dest, iph->saddr, th->source);
	else
		f = vt_lookup(state->net, iph->saddr, th->source, iph->daddr, th->dest);
	/* the peer's segments wait for the restored socket; the VM's own never leave */
	verdict = !f ? NF_ACCEPT : in ? vt_hold(f, skb) : NF_DROP;
	rcu_read_unlock();
	if (verdict == NF_DROP)
		atomic64_inc(&vt_dropped);
	return verdict;
}

/* after defragmentation (-400), before raw tables and conntrack */
static const struct nf_hook_ops vt_nf_ops[] = {
	{
		.hook = vt_hook,
		.pf = NFPROTO_IPV4,
		.hooknum = NF_INET_PRE_ROUTING,
		.priority = NF_IP_PRI_RAW - 1,
	},
	{
		.hook = vt_hook,
		.pf = NFPROTO_IPV4,
		.hooknum = NF_INET_LOCAL_OUT,
		.priority = NF_IP_PRI_RAW - 1,
	},
};

static int __net_init vt_net_init(struct net *net)
{
	return nf_register_net_hooks(net, vt_nf_ops, ARRAY_SIZE(vt_nf_ops));
}

static void __net_exit vt_net_exit(struct net *net)
{
	struct vt_flow *f;
	struct hlist_node *tmp;
	int bkt;

	nf_unregister_net_hooks(net, vt_nf_ops, ARRAY_SIZE(vt_nf_ops));
	/* nothing should be left (a frozen socket pins its netns); be safe anyway */
	spin_lock_bh(&vt_flows_lock);
	hash_for_each_safe(vt_flows, bkt, tmp, f, node) {
		if (f->net == net) {
			struct sk_buff_head q;

			__skb_queue_head_init(&q);
			hash_del_rcu(&f->node);
			atomic_dec(&vt_nr_flows);
			vt_take_held(f, &q);
			vt_purge(&q);
			kfree_rcu(f, rcu);
		}
	}
	spin_unlock_bh(&vt_flows_lock);
}

static struct pernet_operations vt_net_ops = {
	.init = vt_net_init,
	.exit = vt_net_exit,
};

int vpipe_block_init(void)
{
	return register_pernet_subsys(&vt_net_ops);
}

void vpipe_block_exit(void)
{
	unregister_pernet_subsys(&vt_net_ops);
	rcu_barrier();	/* kfree_rcu of the flows */
}

unsigned int vpipe_block_count(void)
{
	return atomic_read(&vt_nr_flows);
}

u64 vpipe_block_dropped(void)
{
	return atomic64_read(&vt_dropped);
}

u64 vpipe_block_reinjected(void)
{
	return atomic64_read(&vt_reinjected);
}
