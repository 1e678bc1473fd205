/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * compat.h -- what the guest core may use, the same in the kernel and in userspace: fixed-width
 * integers, errno values, memcpy/memset, and the barriers of the Xen ring. Nothing else: no
 * allocation (the ops table provides it), no locks (the callers hold theirs), no I/O.
 */
#ifndef VPIPE_CORE_COMPAT_H
#define VPIPE_CORE_COMPAT_H

#ifdef __KERNEL__
#include <linux/compiler.h>
#include <linux/errno.h>
#include <linux/string.h>
#include <linux/types.h>
#include <asm/barrier.h>
/* the consumer reads the producer index once, then the entries it publishes */
#define VC_READ_INDEX(p) READ_ONCE(p)
#define VC_RMB() virt_rmb()
/* a word another domain re-reads, visible before anything the caller does after it */
#define VC_STORE_MB(p, v) do { smp_store_release(&(p), (v)); virt_mb(); } while (0)
#else
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#define VC_READ_INDEX(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)
#define VC_RMB() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define VC_STORE_MB(p, v) do { __atomic_store_n(&(p), (v), __ATOMIC_RELEASE); \
			       __atomic_thread_fence(__ATOMIC_SEQ_CST); } while (0)
#endif

#include "vpipe/abi/ioctl.h"
#include "vpipe/abi/ring.h"

#define VC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VC_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VC_ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)
#define VC_INT64_MAX ((uint64_t)0x7fffffffffffffffull)

#endif /* VPIPE_CORE_COMPAT_H */
