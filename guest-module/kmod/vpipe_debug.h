/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_debug.h -- test-only ioctls of vpipe.ko (built with VPIPE_TEST=1; tests/kmod uses them
 * to check the in-kernel extent mapping and destination preparation against FIEMAP/debugfs).
 * Not part of the application ABI.
 */
#ifndef VPIPE_KMOD_DEBUG_H
#define VPIPE_KMOD_DEBUG_H

#ifdef __KERNEL__
#include <linux/ioctl.h>
#include <linux/types.h>
#else
#include <stdint.h>
#include <sys/ioctl.h>
#endif

#include "vpipe/abi/ring.h"

struct vpipe_dbg_seg {
	uint64_t disk_offset;   /* on the whole virtual disk (partition offset included) */
	uint64_t length;
	uint32_t zero;          /* hole / unwritten */
	uint32_t pad;
};

struct vpipe_dbg_map {
	int32_t fd;             /* in: a regular file */
	uint32_t max;           /* in: room in segs */
	uint64_t offset;        /* in */
	uint64_t length;        /* in */
	uint64_t segs;          /* in: user pointer to struct vpipe_dbg_seg[max] */
	uint32_t vdev;          /* out */
	uint32_t nr;            /* out: segments (may exceed max: then only max were written) */
	uint64_t partition_offset; /* out */
	uint64_t blocks;        /* out: blocks looked up */
	uint64_t flags;         /* in: 1 = prepare the range as a destination first (then finish) */
	uint64_t zero_filled;   /* out (flags & 1) */
};

#define VPIPE_IOC_DBG_MAP _IOWR('V', 0x40, struct vpipe_dbg_map)

/* The stand-in engine's script (the conformance corpus, tests/conformance/corpus.h: ans is an
 * enum vc_ans): how it answers the requests from now on. Also forgets what it recorded. */
struct vpipe_dbg_script {
	int32_t ans;
	int32_t err;
	uint64_t moved;
};
#define VPIPE_IOC_DBG_SCRIPT _IOW('V', 0x41, struct vpipe_dbg_script)

/* The requests the stand-in engine took since the last script, each as a record: this header,
 * then stream_len bytes of the descriptor stream, then the carried bytes (source send queue,
 * receive queue, tail, then the destination's). */
struct vpipe_dbg_rec {
	struct vpipe_request ring;
	int32_t verdict;          /* the validator's (common/protocol/check.c) */
	uint32_t stream_len;
	uint32_t carry_len[2][3];
	uint32_t pad;
};
struct vpipe_dbg_reqs {
	uint64_t buf;             /* in: user buffer */
	uint32_t len;             /* in: its size */
	uint32_t count;           /* out: records */
	uint32_t used;            /* out: bytes written */
	uint32_t lost;            /* out: records that did not fit the engine's buffer */
};
#define VPIPE_IOC_DBG_REQS _IOWR('V', 0x42, struct vpipe_dbg_reqs)

#endif
