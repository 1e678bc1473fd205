/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vpipe_async.h -- asynchronous operations of vpipe.ko (VPIPE_IOC_SUBMIT / VPIPE_IOC_CANCEL,
 * abi/ioctl.h; docs/protocol.md section 1b).
 *
 * Each open of /dev/vpipe is a queue. A submit hands the operation (its structure, head and tail
 * copied, the descriptors' files referenced, the submitter's credentials) to the module's
 * workqueue and returns at once; a kworker runs it with the same code as a blocking call
 * (vpipe_run_op), its cancel flag standing for the blocking caller's fatal signal. The
 * completion waits in the queue: poll() reports POLLIN, read() returns whole
 * struct vpipe_ioc_completion records and installs the operation's restored sockets as new
 * O_CLOEXEC descriptors of the reader (a kworker has no descriptor table of the application's,
 * so they cannot be installed earlier). Closing the queue cancels what is in flight; completions
 * nobody will read are dropped, their restored sockets closed -- as the agent does for a
 * connection that goes away.
 */
#ifndef VPIPE_KMOD_ASYNC_H
#define VPIPE_KMOD_ASYNC_H
#include <linux/fs.h>
#include <linux/poll.h>
#include <linux/types.h>

#include "vpipe.h"

struct vpipe_aq;

int vpipe_async_init(void);    /* the workqueue */
void vpipe_async_exit(void);   /* waits for the last worker to return */

struct vpipe_aq *vpipe_aq_new(void);
/* the queue's file is released: cancel what is in flight, drop what waits */
void vpipe_aq_close(struct vpipe_aq *q);

/* Queues one operation. On 0 the operation owns head, tail, in and out (it frees and puts them);
 * on error the caller keeps them. -EAGAIN (VPIPE_ASYNC_MAX operations in flight or waiting to
 * be read), -EEXIST (the tag is in flight), -ENOMEM. */
int vpipe_aq_submit(struct vpipe_aq *q, u64 tag, const struct vpipe_ioc_op *op, u8 *head, u8 *tail,
		    struct file *in, struct file *out);
/* 0: asked (the completion tells how it ended), -ENOENT: no such operation in flight */
int vpipe_aq_cancel(struct vpipe_aq *q, u64 tag);
ssize_t vpipe_aq_read(struct vpipe_aq *q, char __user *buf, size_t count, bool nonblock);
__poll_t vpipe_aq_poll(struct vpipe_aq *q, struct file *f, poll_table *pt);

#endif
