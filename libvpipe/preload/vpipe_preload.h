/* SPDX-License-Identifier: MIT */
/*
 * vpipe_preload.h -- what libvpipe-preload.so counts, for programs (and tests) that look.
 *
 * libvpipe-preload.so is an LD_PRELOAD library: it turns sendfile()/sendfile64() (file -> TCP
 * socket), copy_file_range() (file -> file) and, with VPIPE_PRELOAD_SPLICE=1, splice() between
 * a file or TCP socket and a TCP socket into libvpipe operations when both descriptors qualify
 * and the length reaches libvpipe's offload threshold; every other call goes to libc untouched.
 * Environment:
 *   VPIPE_PRELOAD_NONBLOCK=pass   calls on O_NONBLOCK sockets go to libc (default: "sync", the
 *                                 offload completes before the call returns)
 *   VPIPE_PRELOAD_SPLICE=1        splice() is considered too (off by default)
 *   VPIPE_PRELOAD_STATS=path      the counters as one JSON line per process at exit, appended
 *                                 ("%p" in the path: the process id)
 *   VPIPE_PRELOAD_LOG=1           a line on stderr per call handed to libvpipe, counters at exit
 *   VPIPE_PRELOAD_RECHECK_MS=n    how long "no guest component" is believed (default 1000; tests: 0)
 * A program that is preloaded finds vpipe_preload_get_stats with dlsym(RTLD_DEFAULT, ...).
 */
#ifndef VPIPE_PRELOAD_H
#define VPIPE_PRELOAD_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* the calls the preload interposes */
enum vpipe_preload_call {
	VPIPE_PRELOAD_SENDFILE = 0,      /* sendfile and sendfile64 */
	VPIPE_PRELOAD_COPY_FILE_RANGE = 1,
	VPIPE_PRELOAD_SPLICE = 2,
	VPIPE_PRELOAD_CALLS_ = 3
};

/* why a call went to libc untouched */
enum vpipe_preload_pass {
	VPIPE_PASS_NOT_ELIGIBLE = 0,   /* descriptor kinds vPipe does not move (pipe, unix socket, UDP, ...) */
	VPIPE_PASS_ARGUMENTS = 1,      /* libc decides: bad descriptor, access mode, O_APPEND, flags,
	                                * negative offset, overlapping ranges, unconnected socket */
	VPIPE_PASS_BELOW_THRESHOLD = 2, /* shorter than vpipe_min_offload() (after clamping at EOF) */
	VPIPE_PASS_AT_EOF = 3,         /* nothing to move: the offset is at or past the source's end */
	VPIPE_PASS_NONBLOCK = 4,       /* O_NONBLOCK socket and VPIPE_PRELOAD_NONBLOCK=pass */
	VPIPE_PASS_NO_COMPONENT = 5,   /* no /dev/vpipe and no agent socket (checked at most once a second) */
	VPIPE_PASS_NOT_VM_DISK = 6,    /* a filesystem libvpipe already said is not on a VM disk (ENXIO) */
	VPIPE_PASS_SPLICE_OFF = 7,     /* splice without VPIPE_PRELOAD_SPLICE=1 */
	VPIPE_PASS_REASONS_ = 8
};

struct vpipe_preload_stats {
	uint64_t calls[VPIPE_PRELOAD_CALLS_];    /* interposed calls made by the program */
	uint64_t passed[VPIPE_PRELOAD_CALLS_][VPIPE_PASS_REASONS_];
	uint64_t handed[VPIPE_PRELOAD_CALLS_];   /* given to libvpipe */
	/* of handed: how libvpipe's call went (vpipe_last_result) */
	uint64_t offloaded[VPIPE_PRELOAD_CALLS_];    /* dom0 moved the bytes */
	uint64_t lib_fallback[VPIPE_PRELOAD_CALLS_]; /* libvpipe moved them in the guest (see reasons) */
	uint64_t lib_failed[VPIPE_PRELOAD_CALLS_];   /* -1 with errno */
	uint64_t bytes_moved[VPIPE_PRELOAD_CALLS_];  /* returned to the program by handed calls */
	uint64_t bytes_dom0[VPIPE_PRELOAD_CALLS_];   /* of those, moved by dom0 (vpipe_result.offloaded) */
	uint64_t bytes_guest[VPIPE_PRELOAD_CALLS_];  /* of those, moved by the guest (fallback, cache rule) */
	uint64_t epoll_rearmed;   /* epoll registrations taken off before a hand-over and put back after */
	uint64_t epoll_lost;      /* ... that could not be put back (errno logged) */
	uint64_t reentrant;       /* calls libvpipe itself made (its fallback), sent to libc */
};

/* 0, or -1 on NULL. */
int vpipe_preload_get_stats(struct vpipe_preload_stats *out);

/* The fallback reasons libvpipe gave for handed calls (vpipe_result.reason) and how often:
 * fills up to `max` entries, returns how many there are. */
int vpipe_preload_get_reasons(const char **reasons, uint64_t *counts, int max);

#ifdef __cplusplus
}
#endif

#endif /* VPIPE_PRELOAD_H */
