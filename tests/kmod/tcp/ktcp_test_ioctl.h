/* SPDX-License-Identifier: GPL-2.0 */
/* ioctls of the test-only module vpipe_ktcp_test (/dev/vpipe_ktcp_test); never in vpipe.ko */
#ifndef KTCP_TEST_IOCTL_H
#define KTCP_TEST_IOCTL_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <stdint.h>
#include <sys/ioctl.h>
#endif
#include "vpipe/abi/ring.h"

#define KT_SLOTS 4
/* largest queue the module copies in for a VALID restore */
#define KT_QUEUE_MAX (64u << 20)

struct kt_check {
	int32_t fd;        /* in */
	int32_t result;    /* out: 0 or -errno */
	uint32_t peer_fin; /* out */
	uint32_t pad;
};

/* vpipe_tcp_freeze() into a slot; the frozen queues are copied out when buffers are given
 * (min(queue, cap) bytes; st says how long the queues are) */
struct kt_freeze {
	int32_t fd;        /* in */
	uint32_t slot;     /* in */
	uint64_t sndq;     /* in: user buffer for fz->sndq (st.sndq_len bytes), or 0 */
	uint64_t rcvq;     /* in: user buffer for fz->unread (st.rcvq_len bytes), or 0 */
	uint32_t sndq_cap; /* in: its size */
	uint32_t rcvq_cap; /* in */
	int32_t result;    /* out */
	uint32_t peer_fin; /* out */
	uint64_t ns;       /* out: time spent in vpipe_tcp_freeze */
	struct vpipe_tcp_state st; /* out: sndq_len, sndq_unsent, rcvq_len included */
};

/* vpipe_tcp_restore() of a slot. flags = VPIPE_EPF_*: 0 restores the frozen state with its own
 * queues (st/sndq/rcvq ignored, res->st is NULL); VALID restores from st with st.sndq_len bytes
 * at sndq and st.rcvq_len bytes at rcvq (a 0 pointer passes NULL, which restore must refuse
 * when the length is not 0). */
struct kt_restore {
	uint32_t slot;     /* in */
	uint32_t flags;    /* in */
	struct vpipe_tcp_state st; /* in (VALID) */
	uint64_t sndq;     /* in (VALID): user pointer */
	uint64_t rcvq;     /* in (VALID): user pointer */
	int32_t result;    /* out */
	int32_t new_fd;    /* out */
	uint64_t ns;       /* out */
};

struct kt_io {
	int32_t fd;        /* in */
	uint32_t len;      /* in */
	uint64_t buf;      /* in: user pointer */
	int64_t result;    /* out */
};

struct kt_stats {
	uint64_t dropped;            /* vpipe_block_dropped() */
	uint32_t blocked;            /* vpipe_block_count() */
	uint32_t pad;
	uint64_t ct_invalid_dropped; /* segments of the watched tuple conntrack called INVALID */
	uint64_t ct_untracked;       /* segments of the watched tuple kept from conntrack */
	uint64_t reinjected;         /* vpipe_block_reinjected(): held segments re-injected */
};

/* conntrack scenario: tracking on in the caller's netns, a watched tuple whose INVALID
 * segments are dropped (what "ct state invalid drop" does), and a "dom0" phase whose
 * segments conntrack does not see (they do not pass through the guest on Xen) */
struct kt_ct {
	uint32_t on;        /* KT_IOC_CT_TRACK: 1 on / 0 off; KT_IOC_CT_DOM0: dom0 phase on/off */
	uint32_t pad;
	struct vpipe_tcp_state st; /* KT_IOC_CT_DOM0: the watched tuple */
};

/* a lossy link for a connected socket's 4-tuple, seen from that socket (in its netns), dropping both ways:
 * blocking the PEER's tuple makes the application's segments leave its stack (they count as
 * transmitted) and get lost on the way in, and keeps the peer from sending anything (no ACK) */
struct kt_block {
	int32_t fd;         /* in: a connected TCP socket */
	uint32_t on;        /* in: 1 block, 0 unblock */
};

#define KT_IOC_CHECK _IOWR('k', 1, struct kt_check)
#define KT_IOC_FREEZE _IOWR('k', 2, struct kt_freeze)
#define KT_IOC_RESTORE _IOWR('k', 3, struct kt_restore)
#define KT_IOC_RELEASE _IOW('k', 4, uint32_t)
#define KT_IOC_TAKE_UNREAD _IOWR('k', 5, struct kt_io)
#define KT_IOC_SEND_ALL _IOWR('k', 6, struct kt_io)
#define KT_IOC_STATS _IOR('k', 7, struct kt_stats)
#define KT_IOC_BLOCK _IOW('k', 8, struct kt_block)
#define KT_IOC_CT_TRACK _IOW('k', 9, struct kt_ct)
#define KT_IOC_CT_DOM0 _IOW('k', 10, struct kt_ct)

#endif
