/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe.h -- what the parts of vpipe.ko share: counters, tunables, the operation entry points.
 *
 *   vpipe_main.c   module init/exit, /dev/vpipe, ioctl dispatch, handles, counters
 *   vpipe_front.c  the Xen frontend (xenbus device "vpipe"): ring, grants, event channel
 *   vpipe_file.c   files -> extents of the VM's virtual disks, holds, destination blocks
 *   vpipe_op.c     descriptor streams, file -> file
 *   vpipe_sock.c   file -> socket, socket -> file, socket -> socket (with vpipe_tcp.c)
 */
#ifndef VPIPE_KMOD_H
#define VPIPE_KMOD_H

#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/types.h>

#include "vpipe/abi/ioctl.h"
#include "vpipe/abi/ring.h"

/* counters reported by VPIPE_IOC_STATS (the agent's AgentStats, field by field) */
struct vpipe_counters {
	atomic64_t ops[5];
	atomic64_t ops_failed;
	atomic64_t bytes_offloaded;
	atomic64_t bytes_guest_cache;
	atomic64_t bytes_zero_filled;
	atomic64_t bytes_write_zeroes;
	atomic64_t ring_requests;
	atomic64_t extents_mapped;
	atomic64_t handles_open;
};
extern struct vpipe_counters vpipe_stats;

/* bytes per ring request (and per socket hand-over); module parameter chunk_mb */
u64 vpipe_chunk_bytes(void);

/* one application operation: op->op/offsets/length/flags in, result fields out.
 * *new_in / *new_out: descriptors installed for restored sockets (or -1). 0 or -errno. */
int vpipe_file_to_file(struct file *in, struct file *out, struct vpipe_ioc_op *op);
int vpipe_socket_op(struct file *in, struct file *out, struct vpipe_ioc_op *op,
		    int *new_in, int *new_out);

/* vpipe_op.c helpers shared with vpipe_sock.c */
struct vpipe_fmap;
/* the descriptor stream of one socket request (always VPIPE_DESC_MAX_PAGES pages): header +
 * the file endpoint's segments covering stream bytes [file_off, file_off + len) */
int vpipe_build_socket_desc(u8 op, const struct vpipe_fmap *file, u64 file_off, u64 len,
			    const struct vpipe_tcp_state *src, const struct vpipe_tcp_state *dst,
			    void *buf, u32 *desc_bytes);
/* max file segments a socket request carries (rooms for dom0's results are kept free) */
u32 vpipe_max_socket_segments(void);

#endif
