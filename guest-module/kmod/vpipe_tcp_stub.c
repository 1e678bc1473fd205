// SPDX-License-Identifier: GPL-2.0
/*
 * vpipe_tcp_stub.c -- stands in for vpipe_tcp.c when a tree does not have it (Kbuild picks
 * one): every socket endpoint answers -EOPNOTSUPP, so libvpipe falls back visibly.
 */
#include <linux/errno.h>

#include "vpipe_tcp.h"

int vpipe_tcp_init(void)
{
	return 0;
}

void vpipe_tcp_exit(void)
{
}

int vpipe_tcp_check(struct file *f, bool *peer_fin)
{
	*peer_fin = false;
	return -EOPNOTSUPP;
}

ssize_t vpipe_tcp_take_unread(struct file *f, void *buf, size_t max)
{
	return -EOPNOTSUPP;
}

int vpipe_tcp_send_all(struct file *f, const void *buf, size_t len)
{
	return -EOPNOTSUPP;
}

int vpipe_tcp_freeze(struct file *f, struct vpipe_frozen_sock *fz)
{
	memset(fz, 0, sizeof(*fz));
	return -EOPNOTSUPP;
}

void vpipe_tcp_drop_unread(struct vpipe_frozen_sock *fz, u32 n)
{
}

int vpipe_tcp_restore(struct vpipe_frozen_sock *fz, const struct vpipe_tcp_state *final,
		      const u8 *carry, u32 result_flags, int *new_fd)
{
	*new_fd = -1;
	return -EOPNOTSUPP;
}

void vpipe_tcp_release(struct vpipe_frozen_sock *fz)
{
}

unsigned int vpipe_tcp_blocked(void)
{
	return 0;
}

u64 vpipe_tcp_dropped(void)
{
	return 0;
}
