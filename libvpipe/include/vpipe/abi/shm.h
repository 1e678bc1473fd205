/* SPDX-License-Identifier: MIT */
/*
 * vpipe/abi/shm.h -- the shm transport: how a guest component hands its ring to dom0 when
 * there is no hypervisor (the lab, tests). It replaces Xen's grant tables, event channels and
 * xenstore handshake; the ring layout on top is identical (vpipe/abi/ring.h).
 *
 *  guest                                           dom0 engine
 *   memfd: page 0 = ring, pages 1..N = descriptor area
 *   seal it (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
 *   eventfd kick_dom0, eventfd kick_guest
 *   connect(channel socket of THIS VM) ---------->  accept; the socket the guest reached
 *   vpipe_shm_hello + SCM_RIGHTS{memfd,           identifies the VM (nothing the guest says does)
 *                   kick_dom0, kick_guest} ----->  check magic/version, seals, size; mmap
 *                                    <---------    vpipe_shm_welcome {status, ...}
 *   ... ring traffic, eventfd kicks both ways ...
 *   socket EOF (either side) = channel gone; the engine drops the VM's in-flight work.
 *
 * Descriptor pages are named in vpipe_request.page[] by their index in the descriptor area
 * (0..N-1). Seals matter: without F_SEAL_SHRINK a guest could truncate the memfd under the
 * engine and kill it with SIGBUS.
 */
#ifndef VPIPE_ABI_SHM_H
#define VPIPE_ABI_SHM_H

#include <stdint.h>

#define VPIPE_SHM_MAGIC 0x4d485356u /* "VSHM" */
#define VPIPE_SHM_MAX_DESC_PAGES 4096u

struct vpipe_shm_hello {
	uint32_t magic;        /* VPIPE_SHM_MAGIC */
	uint16_t version;      /* VPIPE_PROTOCOL_VERSION */
	uint16_t reserved0;
	uint32_t ring_pages;   /* must be 1 */
	uint32_t desc_pages;   /* 1..VPIPE_SHM_MAX_DESC_PAGES */
};

struct vpipe_shm_welcome {
	uint32_t magic;        /* VPIPE_SHM_MAGIC */
	uint16_t version;      /* the engine's protocol version */
	uint16_t reserved0;
	int32_t status;        /* 0, or -errno: the channel is refused and closed */
	uint32_t max_inflight; /* requests the engine works on at once for this VM */
};

#endif /* VPIPE_ABI_SHM_H */
