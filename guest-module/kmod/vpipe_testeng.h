/* SPDX-License-Identifier: GPL-2.0 */
/* vpipe_testeng.h -- test builds only: dom0 stand-in for plain QEMU (see vpipe_testeng.c). */
#ifndef VPIPE_KMOD_TESTENG_H
#define VPIPE_KMOD_TESTENG_H

#include <linux/types.h>

bool vpipe_testeng_active(void);
/* executes one request's descriptor stream: 0 or a negative status, *moved */
int vpipe_testeng_run(u8 op, u64 length, const void *stream, u32 desc_bytes, u64 *moved);

#endif
