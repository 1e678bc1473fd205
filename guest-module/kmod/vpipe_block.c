// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_block.c -- the guest's flow block (see vpipe_block.h): a table of blocked 4-tuples and
 * a netfilter hook in every network namespace that drops their segments, both ways.
 */
#include <linux/hashtable.h>
#include <linux/ip.h>
#include <linux/jhash.h>
#include <linux/module.h>
#include <linux/netfilter.h>
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
};

#define VT_HASH_BITS 6
static DEFINE_HASHTABLE(vt_flows, VT_HASH_BITS);
static DEFINE_SPINLOCK(vt_flows_lock);
static atomic_t vt_nr_flows = ATOMIC_INIT(0);
static atomic64_t vt_dropped = ATOMIC64_INIT(0);

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
	hash_add_rcu(vt_flows, &n->node, vt_hash(net, laddr, lport, raddr, rport));
	atomic_inc(&vt_nr_flows);
	spin_unlock_bh(&vt_flows_lock);
	return 0;
}

void vpipe_block_del(const struct net *net, __be32 laddr, __be16 lport, __be32 raddr,
		       __be16 rport)
{
	struct vt_flow *f;

	spin_lock_bh(&vt_flows_lock);
	f = vt_lookup(net, laddr, lport, raddr, rport);
	if (f && --f->users == 0) {
		hash_del_rcu(&f->node);
		atomic_dec(&vt_nr_flows);
		kfree_rcu(f, rcu);
	}
	spin_unlock_bh(&vt_flows_lock);
}

static unsigned int vt_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	const bool in = state->hook == NF_INET_PRE_ROUTING;
	const struct iphdr *iph;
	struct tcphdr _th;
	const struct tcphdr *th;
	bool hit;

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
		hit = vt_lookup(state->net, iph->daddr, th->dest, iph->saddr, th->source);
	else
		hit = vt_lookup(state->net, iph->saddr, th->source, iph->daddr, th->dest);
	rcu_read_unlock();
	if (!hit)
		return NF_ACCEPT;
	atomic64_inc(&vt_dropped);
	return NF_DROP;
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
			hash_del_rcu(&f->node);
			atomic_dec(&vt_nr_flows);
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
