/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe.h -- what the parts of vpipe.ko share: counters, tunables, the operation entry point.
 *
 *   vpipe_main.c    module init/exit, /dev/vpipe, ioctl dispatch, handles
 *   vpipe_ops.c     the guest core's ops table (guest-module/core) for the kernel: runs one op
 *   vpipe_async.c   asynchronous operations: per-open queues, a workqueue, completions by read()
 *   vpipe_front.c   the Xen frontend (xenbus device "vpipe"): ring, persistent area, event channel
 *   vpipe_file.c    files -> extents of the VM's virtual disks, holds, destination blocks
 *   vpipe_tcp.c     TCP connections: check, freeze with the queues, restore
 *   vpipe_block.c   the guest's flow block (netfilter hook)
 *   vpipe_testeng.c test builds only: the stand-in engine behind the same ring
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
	atomic64_t engine_timeouts;   /* the engine declared unresponsive (vpipe_front.c) */
};
extern struct vpipe_counters vpipe_stats;

/* module parameters (the agent's configuration keys of the same names) */
extern unsigned int vpipe_chunk_mib;   /* file -> file: MiB per ring request and stage */
extern unsigned int vpipe_room_kib;    /* largest carry room of a socket endpoint */
extern unsigned int vpipe_area_pages;  /* pages shared with dom0 for the life of the channel */
extern unsigned int vpipe_request_timeout_ms; /* the engine must answer within this (vpipe_front.c) */

/* What an asynchronous operation (VPIPE_IOC_SUBMIT, vpipe_async.c) brings to vpipe_run_op: its
 * cancel request and the slots its restored sockets wait in until the completion is read. */
#define VPIPE_ASYNC_FILES 8
struct vpipe_op_async {
	bool cancel;                                /* WRITE_ONCE by CANCEL / the queue's release */
	struct file *files[VPIPE_ASYNC_FILES];      /* restored sockets; *new_in / *new_out index them */
};

/* One application operation (VPIPE_IOC_OP): op->op/offsets/length/flags in, result fields out;
 * head / tail: op->head_len / op->tail_len bytes in kernel memory. async NULL (a blocking call,
 * in the caller's process): *new_in / *new_out are descriptors installed for restored sockets
 * (or -1). async set (a kworker): they are indexes into async->files (or -1). 0 or -errno. */
int vpipe_run_op(struct file *in, struct file *out, struct vpipe_ioc_op *op, const u8 *head,
		 const u8 *tail, struct vpipe_op_async *async, int *new_in, int *new_out);

#endif
