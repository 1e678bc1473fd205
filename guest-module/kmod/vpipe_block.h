/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_block.h -- the guest's flow block: while one of the VM's connections is handed over (frozen
 * here, live in a dom0 shadow socket, then restored here), the guest's own stack must neither see
 * nor answer the flow's segments -- a socket in repair mode still accepts and acknowledges data
 * (which would then be lost), a disconnected one answers with RST.
 *
 * A hash table of blocked 4-tuples per network namespace, and a netfilter hook at PRE_ROUTING and
 * LOCAL_OUT (after defragmentation, before raw and conntrack) in every namespace. The peer's
 * segments of a blocked tuple are held (up to 256 per flow) and re-injected by vpipe_block_del,
 * once the restored socket exists: the hand-back has a window in which dom0 no longer steers the
 * flow and the guest has not restored it yet, and a dropped segment costs the peer a
 * retransmission timeout (>= 200 ms). The VM's own segments of a blocked tuple are dropped.
 * A held segment keeps a reference on its device: unregistering the device waits for the
 * hand-over (milliseconds). Entries are refcounted: one tuple may be blocked twice (both ends
 * of a local connection). The kernel twin of the agent's nftables set (guest_flow_block.h).
 */
#ifndef VPIPE_KMOD_BLOCK_H
#define VPIPE_KMOD_BLOCK_H

#include <linux/types.h>

struct net;

int vpipe_block_init(void);     /* registers the hook in every netns (pernet) */
void vpipe_block_exit(void);

/* l = the VM's side, r = the peer; network byte order. 0 or -ENOMEM. */
int vpipe_block_add(const struct net *net, __be32 laddr, __be16 lport, __be32 raddr, __be16 rport);
void vpipe_block_del(const struct net *net, __be32 laddr, __be16 lport, __be32 raddr, __be16 rport);

/* vpipe_block_del re-injects the flow's held segments: call it once the restored socket is
 * hashed (or the frozen one restored), so they find it. */

/* introspection (metrics, tests): blocked 4-tuples now, segments dropped and re-injected since
 * load */
unsigned int vpipe_block_count(void);
u64 vpipe_block_dropped(void);
u64 vpipe_block_reinjected(void);

#endif
