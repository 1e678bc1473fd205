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

struct kt_check {
	int32_t fd;        /* in */
	int32_t result;    /* out: 0 or -errno */
	uint32_t peer_fin; /* out */
	uint32_t pad;
};

struct kt_freeze {
	int32_t fd;        /* in */
	uint32_t slot;     /* in */
	int32_t result;    /* out */
	uint32_t unread_len; /* out */
	uint64_t ns;       /* out: time spent in vpipe_tcp_freeze */
	struct vpipe_tcp_state st; /* out */
	uint32_t peer_fin; /* out */
	uint32_t pad;
};

struct kt_restore {
	uint32_t slot;     /* in */
	uint32_t flags;    /* in: VPIPE_EPF_* */
	uint32_t use_final;/* in: pass `final` (else NULL) */
	uint32_t carry_len;/* in */
	uint64_t carry;    /* in: user pointer to carry bytes (sndq then rcvq) */
	struct vpipe_tcp_state final; /* in */
	uint32_t move_unread_to_carry; /* in: move the last N unread bytes to the carry rcvq
	                                * (simulates dom0 returning received bytes) */
	int32_t result;    /* out */
	int32_t new_fd;    /* out */
	uint32_t pad;
	uint64_t ns;       /* out */
};

struct kt_io {
	int32_t fd;        /* in */
	uint32_t len;      /* in */
	uint64_t buf;      /* in: user pointer */
	int64_t result;    /* out */
};

struct kt_stats {
	uint64_t dropped;
	uint32_t blocked;
	uint32_t pad;
	uint64_t ct_invalid_dropped; /* segments of the watched tuple conntrack called INVALID */
	uint64_t ct_untracked;       /* segments of the watched tuple kept from conntrack */
};

/* conntrack scenario: tracking on in the caller's netns, a watched tuple whose INVALID
 * segments are dropped (what "ct state invalid drop" does), and a "dom0" phase whose
 * segments conntrack does not see (they do not pass through the guest on Xen) */
struct kt_ct {
	uint32_t on;        /* KT_IOC_CT_TRACK: 1 on / 0 off; KT_IOC_CT_DOM0: dom0 phase on/off */
	uint32_t pad;
	struct vpipe_tcp_state st; /* KT_IOC_CT_DOM0: the watched tuple */
};

#define KT_IOC_CHECK _IOWR('k', 1, struct kt_check)
#define KT_IOC_FREEZE _IOWR('k', 2, struct kt_freeze)
#define KT_IOC_RESTORE _IOWR('k', 3, struct kt_restore)
#define KT_IOC_RELEASE _IOW('k', 4, uint32_t)
#define KT_IOC_TAKE_UNREAD _IOWR('k', 5, struct kt_io)
#define KT_IOC_SEND_ALL _IOWR('k', 6, struct kt_io)
#define KT_IOC_STATS _IOR('k', 7, struct kt_stats)
#define KT_IOC_DROP_UNREAD _IOW('k', 8, struct kt_io)  /* fd = slot, len = n */
#define KT_IOC_CT_TRACK _IOW('k', 9, struct kt_ct)
#define KT_IOC_CT_DOM0 _IOW('k', 10, struct kt_ct)

#endif
