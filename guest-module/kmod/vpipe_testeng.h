/* SPDX-License-Identifier: GPL-2.0 */
/* vpipe_testeng.h -- test builds only: dom0 stand-in for plain QEMU (see vpipe_testeng.c). */
#ifndef VPIPE_KMOD_TESTENG_H
#define VPIPE_KMOD_TESTENG_H

#include <linux/types.h>

struct vpipe_sring;

bool vpipe_testeng_active(void);
int vpipe_testeng_start(void);
void vpipe_testeng_stop(void);
/* the ring the frontend just set up (the engine is its back end) */
void vpipe_testeng_attach(struct vpipe_sring *sring);
/* the frontend notified "dom0": take the requests published */
void vpipe_testeng_kick(void);
/* the ring is going away: running requests end, nothing more is answered */
void vpipe_testeng_quiesce(void);
/* the conformance corpus's debug ioctls (vpipe_debug.h) */
struct vpipe_dbg_script;
struct vpipe_dbg_reqs;
long vpipe_testeng_script(const struct vpipe_dbg_script *s);
long vpipe_testeng_requests(struct vpipe_dbg_reqs *q);

#endif
