/* SPDX-License-Identifier: MIT */
/*
 * libvpipe-preload.so: sendfile/sendfile64, copy_file_range and (opt-in) splice of an unmodified
 * program turned into vPipe operations through libvpipe's public API (vpipe.h). What qualifies,
 * and everything else, is described in vpipe_preload.h and the README ("Unmodified programs").
 *
 * Rules this file keeps:
 *   - A call that is not handed to libvpipe is the libc call itself, with the program's own
 *     arguments (dlsym(RTLD_NEXT)): its return value, errno, partial counts and offset updates
 *     are libc's. Every argument libc would reject is left to libc to reject.
 *   - A handed call returns what libvpipe moved and updates offsets the way the real call would:
 *     sendfile with offset == NULL advances the file position, with an offset pointer *offset
 *     and not the position; copy_file_range likewise for each side.
 *   - libvpipe's own fallback calls sendfile/copy_file_range; they reach this file too (we
 *     interpose the global symbols) and go straight to libc (a per-thread guard).
 *   - A socket handed to dom0 comes back as a new socket on the same descriptor number (dup3):
 *     the program's epoll registrations of it (tracked here through epoll_ctl and close) are
 *     taken off before and put back, same events and data, after.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <vpipe/vpipe.h>

#include "vpipe_preload.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_RW_COUNT ((size_t)INT_MAX & ~(size_t)4095) /* what the kernel moves per call at most */

/* ---- the real functions ---------------------------------------------------------------------- */

typedef ssize_t (*sendfile_fn)(int, int, off_t *, size_t);
typedef ssize_t (*cfr_fn)(int, loff_t *, int, loff_t *, size_t, unsigned int);
typedef ssize_t (*splice_fn)(int, loff_t *, int, loff_t *, size_t, unsigned int);
typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);
typedef int (*close_fn)(int);

static void *real(const char *name, void **slot) {
	void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
	if (!p) {
		p = dlsym(RTLD_NEXT, name);
		__atomic_store_n(slot, p, __ATOMIC_RELEASE);
	}
	return p;
}
static void *r_sendfile, *r_sendfile64, *r_cfr, *r_splice, *r_epoll_ctl, *r_close;
#define REAL(type, name, slot) ((type)real(name, &slot))

/* ---- configuration and counters ------------------------------------------------------------ */

static int g_nonblock_pass;  /* VPIPE_PRELOAD_NONBLOCK=pass */
static int g_splice;         /* VPIPE_PRELOAD_SPLICE=1 */
static int g_log;            /* VPIPE_PRELOAD_LOG=1 */
static int g_log_fd = 2;     /* stderr as it was at start (programs close theirs in atexit handlers) */
static char g_stats_path[4096];

static struct vpipe_preload_stats g_st;
static __thread int t_inside;  /* this thread is inside libvpipe */

#define INC(x) __atomic_fetch_add(&(x), 1, __ATOMIC_RELAXED)
#define ADD(x, n) __atomic_fetch_add(&(x), (uint64_t)(n), __ATOMIC_RELAXED)

/* libvpipe's fallback and failure reasons (static strings) and their counts */
#define MAX_REASONS 32
static pthread_mutex_t g_reason_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *g_reason[MAX_REASONS];
static uint64_t g_reason_n[MAX_REASONS];

static void count_reason(const char *why) {
	if (!why || !*why) return;
	pthread_mutex_lock(&g_reason_mu);
	int i = 0;
	while (i < MAX_REASONS && g_reason[i] && strcmp(g_reason[i], why) != 0) ++i;
	if (i < MAX_REASONS) {
		g_reason[i] = why;
		g_reason_n[i]++;
	}
	pthread_mutex_unlock(&g_reason_mu);
}

static const char *const k_call_name[VPIPE_PRELOAD_CALLS_] = {"sendfile", "copy_file_range", "splice"};
static const char *const k_pass_name[VPIPE_PASS_REASONS_] = {
	"not_eligible", "arguments", "below_threshold", "at_eof",
	"nonblock", "no_component", "not_vm_disk", "splice_off"};

static ssize_t pass_count(int call, int reason) {
	INC(g_st.passed[call][reason]);
	return 0;
}

/* ---- is a guest component there (checked at most once a second) --------------------------- */

static int64_t now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t g_recheck_ms = 1000;             /* VPIPE_PRELOAD_RECHECK_MS */
static int64_t g_component_checked = INT64_MIN / 2;  /* ms */
static int g_component_present;
static int64_t g_component_down_until;         /* libvpipe said: no component / no engine */

static int component_present(void) {
	const int64_t now = now_ms();
	if (now < __atomic_load_n(&g_component_down_until, __ATOMIC_RELAXED)) return 0;
	if (now - __atomic_load_n(&g_component_checked, __ATOMIC_RELAXED) < g_recheck_ms)
		return __atomic_load_n(&g_component_present, __ATOMIC_RELAXED);
	int present = access("/dev/vpipe", F_OK) == 0;
	if (!present) {
		const char *p = getenv("VPIPE_AGENT_SOCKET");
		struct stat st;
		present = stat(p && *p ? p : "/run/vpipe/agent.sock", &st) == 0 && S_ISSOCK(st.st_mode);
	}
	__atomic_store_n(&g_component_present, present, __ATOMIC_RELAXED);
	__atomic_store_n(&g_component_checked, now, __ATOMIC_RELAXED);
	return present;
}

/* filesystems (device numbers) libvpipe said are not on a VM disk (ENXIO) */
#define MAX_NOT_VM 16
static dev_t g_not_vm[MAX_NOT_VM];
static int g_not_vm_n;
static pthread_mutex_t g_not_vm_mu = PTHREAD_MUTEX_INITIALIZER;

static int not_vm_disk(dev_t d) {
	int n = __atomic_load_n(&g_not_vm_n, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; ++i)
		if (g_not_vm[i] == d) return 1;
	return 0;
}
static void mark_not_vm_disk(dev_t d) {
	pthread_mutex_lock(&g_not_vm_mu);
	if (!not_vm_disk(d) && g_not_vm_n < MAX_NOT_VM) {
		g_not_vm[g_not_vm_n] = d;
		__atomic_store_n(&g_not_vm_n, g_not_vm_n + 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&g_not_vm_mu);
}

/* ---- epoll registrations of the program ---------------------------------------------------- */

struct ep_reg {
	int epfd;
	struct epoll_event ev;
	struct ep_reg *next;
};
static pthread_mutex_t g_ep_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ep_reg **g_ep;        /* by descriptor number */
static unsigned char *g_ep_is_epfd; /* by descriptor number: used as an epoll instance */
static int g_ep_cap;
static int g_ep_used;               /* anything tracked at all (close's fast path) */

static int ep_grow(int fd) {
	if (fd < g_ep_cap) return 0;
	int cap = g_ep_cap ? g_ep_cap : 1024;
	while (cap <= fd) cap *= 2;
	struct ep_reg **n = realloc(g_ep, sizeof(*n) * (size_t)cap);
	if (!n) return -1;
	g_ep = n;
	unsigned char *e = realloc(g_ep_is_epfd, (size_t)cap);
	if (!e) return -1;
	g_ep_is_epfd = e;
	memset(g_ep + g_ep_cap, 0, sizeof(*n) * (size_t)(cap - g_ep_cap));
	memset(g_ep_is_epfd + g_ep_cap, 0, (size_t)(cap - g_ep_cap));
	g_ep_cap = cap;
	return 0;
}

/* forget (epfd, fd); epfd < 0: every registration of fd */
static void ep_forget_locked(int fd, int epfd) {
	if (fd < 0 || fd >= g_ep_cap) return;
	struct ep_reg **pp = &g_ep[fd];
	while (*pp) {
		if (epfd < 0 || (*pp)->epfd == epfd) {
			struct ep_reg *d = *pp;
			*pp = d->next;
			free(d);
		} else {
			pp = &(*pp)->next;
		}
	}
}

static void ep_remember(int epfd, int fd, const struct epoll_event *ev) {
	pthread_mutex_lock(&g_ep_mu);
	if (ep_grow(fd > epfd ? fd : epfd) == 0) {
		struct ep_reg *r = g_ep[fd];
		while (r && r->epfd != epfd) r = r->next;
		if (!r && (r = calloc(1, sizeof(*r)))) {
			r->epfd = epfd;
			r->next = g_ep[fd];
			g_ep[fd] = r;
		}
		if (r) r->ev = *ev;
		g_ep_is_epfd[epfd] = 1;
		__atomic_store_n(&g_ep_used, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&g_ep_mu);
}

static void ep_closed(int fd) {
	if (!__atomic_load_n(&g_ep_used, __ATOMIC_RELAXED) || fd < 0) return;
	pthread_mutex_lock(&g_ep_mu);
	if (fd < g_ep_cap) {
		ep_forget_locked(fd, -1);
		if (g_ep_is_epfd[fd]) {  /* an epoll instance went away: its registrations with it */
			g_ep_is_epfd[fd] = 0;
			for (int i = 0; i < g_ep_cap; ++i)
				if (g_ep[i]) ep_forget_locked(i, fd);
		}
	}
	pthread_mutex_unlock(&g_ep_mu);
}

#define MAX_TAKEN 8
struct ep_taken {
	int n;
	int epfd[MAX_TAKEN];
	struct epoll_event ev[MAX_TAKEN];
};

/* Takes fd out of every epoll set the program put it in (the registration is kept in our table:
 * the program still thinks it is there). A registration the kernel no longer has is forgotten. */
static void ep_take(int fd, struct ep_taken *t) {
	t->n = 0;
	if (!__atomic_load_n(&g_ep_used, __ATOMIC_RELAXED)) return;
	epoll_ctl_fn ctl = REAL(epoll_ctl_fn, "epoll_ctl", r_epoll_ctl);
	pthread_mutex_lock(&g_ep_mu);
	if (fd < g_ep_cap) {
		struct ep_reg **pp = &g_ep[fd];
		while (*pp) {
			struct ep_reg *r = *pp;
			if (t->n < MAX_TAKEN && ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL) == 0) {
				t->epfd[t->n] = r->epfd;
				t->ev[t->n] = r->ev;
				t->n++;
				pp = &r->next;
			} else {
				*pp = r->next;  /* stale (closed behind our back): not ours to re-add */
				free(r);
			}
		}
	}
	pthread_mutex_unlock(&g_ep_mu);
}

static void ep_put_back(int fd, const struct ep_taken *t) {
	if (!t->n) return;
	epoll_ctl_fn ctl = REAL(epoll_ctl_fn, "epoll_ctl", r_epoll_ctl);
	for (int i = 0; i < t->n; ++i) {
		struct epoll_event ev = t->ev[i];
		int r = ctl(t->epfd[i], EPOLL_CTL_ADD, fd, &ev);
		if (r < 0 && errno == EEXIST) {
			ev = t->ev[i];
			r = ctl(t->epfd[i], EPOLL_CTL_MOD, fd, &ev);
		}
		if (r == 0) {
			INC(g_st.epoll_rearmed);
		} else {
			INC(g_st.epoll_lost);
			dprintf(2, "vpipe-preload: fd %d could not be put back into epoll set %d: %s\n", fd, t->epfd[i],
			        strerror(errno));
		}
	}
}

/* ---- descriptor checks ----------------------------------------------------------------------- */

/* 1: a TCP socket vPipe may take; 0: something else; -1: not open. A socket with an upper-layer
 * protocol (kTLS: the kernel encrypts what sendfile sends) is something else: dom0 would send
 * the file in the clear. */
static int is_tcp(int fd) {
	int proto = 0;
	socklen_t len = sizeof(proto);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0) return errno == EBADF ? -1 : 0;
	if (proto != IPPROTO_TCP) return 0;
	char ulp[16] = "";
	len = sizeof(ulp);
	if (getsockopt(fd, IPPROTO_TCP, TCP_ULP, ulp, &len) == 0 && len > 0 && ulp[0]) return 0;
	return 1;
}

/* A connection that can send (anything else: libc tells the program what is wrong). */
static int tcp_can_send(int fd) {
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return 0;
	return ti.tcpi_state == TCP_ESTABLISHED || ti.tcpi_state == TCP_CLOSE_WAIT;
}

static int readable_file(int fd) {
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_ACCMODE) != O_WRONLY && !(fl & O_PATH);
}

static int nonblocking(int fd) {
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

/* ---- handing an operation to libvpipe ------------------------------------------------------ */

enum op { OP_F2S, OP_F2F, OP_S2S };

/* Runs the operation in libvpipe with the sockets out of the program's epoll sets, counts how it
 * went and returns libvpipe's answer (errno preserved). */
static ssize_t hand(int call, enum op op, int in_fd, int out_fd, uint64_t in_off, uint64_t out_off, size_t len,
                    dev_t in_dev, dev_t out_dev) {
	INC(g_st.handed[call]);
	struct ep_taken tin = {0}, tout = {0};
	if (op == OP_S2S) ep_take(in_fd, &tin);
	if (op != OP_F2F) ep_take(out_fd, &tout);
	t_inside = 1;
	ssize_t r;
	switch (op) {
	case OP_F2S: r = vpipe_file_to_socket_fd(in_fd, out_fd, (off_t)in_off, len); break;
	case OP_F2F: r = vpipe_file_to_file_fd(in_fd, out_fd, (off_t)in_off, len, (off_t)out_off); break;
	default: r = vpipe_socket_to_socket_fd(in_fd, out_fd, len); break;
	}
	int err = errno;
	struct vpipe_result res;
	memset(&res, 0, sizeof(res));
	vpipe_last_result(&res);
	t_inside = 0;
	ep_put_back(in_fd, &tin);
	ep_put_back(out_fd, &tout);

	if (r >= 0) ADD(g_st.bytes_moved[call], r);
	ADD(g_st.bytes_dom0[call], res.offloaded);
	ADD(g_st.bytes_guest[call], res.guest_copied);
	if (res.path == VPIPE_RESULT_OFFLOADED) {
		INC(g_st.offloaded[call]);
	} else if (res.path == VPIPE_RESULT_FALLBACK) {
		INC(g_st.lib_fallback[call]);
		count_reason(res.reason);
		/* the next calls like this one go to libc directly */
		if (res.error == ENOENT || res.error == ECONNREFUSED || res.error == EHOSTDOWN)
			__atomic_store_n(&g_component_down_until, now_ms() + g_recheck_ms, __ATOMIC_RELAXED);
		if (res.error == ENXIO) {
			/* which file is not on a VM disk libvpipe does not say: both, when they share one */
			if (op == OP_F2S || in_dev == out_dev) mark_not_vm_disk(in_dev);
		}
	} else {
		INC(g_st.lib_failed[call]);
		count_reason(res.reason);
	}
	if (g_log)
		dprintf(g_log_fd, "vpipe-preload: %s fd %d -> fd %d, %zu bytes at %llu: %zd (%s%s%s)\n", k_call_name[call], in_fd,
		        out_fd, len, (unsigned long long)in_off, r,
		        res.path == VPIPE_RESULT_OFFLOADED ? "offloaded"
		        : res.path == VPIPE_RESULT_FALLBACK ? "libvpipe fallback"
		                                           : "failed",
		        res.reason && *res.reason ? ": " : "", res.reason ? res.reason : "");
	errno = err;
	return r;
}

/* ---- sendfile -------------------------------------------------------------------------------- */

static ssize_t do_sendfile(int out_fd, int in_fd, off_t *offset, size_t count, sendfile_fn libc) {
	if (t_inside) {
		INC(g_st.reentrant);
		return libc(out_fd, in_fd, offset, count);
	}
	const int C = VPIPE_PRELOAD_SENDFILE;
	INC(g_st.calls[C]);
	/* the common case of a server first, without a system call: a small body */
	const uint64_t min = vpipe_min_offload();
	if (count == 0 || count < min) return pass_count(C, VPIPE_PASS_BELOW_THRESHOLD), libc(out_fd, in_fd, offset, count);
	struct stat st;
	if (fstat(in_fd, &st) != 0) return pass_count(C, VPIPE_PASS_ARGUMENTS), libc(out_fd, in_fd, offset, count);
	const int tcp = is_tcp(out_fd);
	if (tcp < 0) return pass_count(C, VPIPE_PASS_ARGUMENTS), libc(out_fd, in_fd, offset, count);
	if (!S_ISREG(st.st_mode) || !tcp) return pass_count(C, VPIPE_PASS_NOT_ELIGIBLE), libc(out_fd, in_fd, offset, count);
	off_t start = offset ? *offset : lseek(in_fd, 0, SEEK_CUR);
	if (start < 0 || !readable_file(in_fd) || !tcp_can_send(out_fd))
		return pass_count(C, VPIPE_PASS_ARGUMENTS), libc(out_fd, in_fd, offset, count);
	if (start >= st.st_size) return pass_count(C, VPIPE_PASS_AT_EOF), libc(out_fd, in_fd, offset, count);
	size_t len = count > MAX_RW_COUNT ? MAX_RW_COUNT : count;
	if ((uint64_t)(st.st_size - start) < len) len = (size_t)(st.st_size - start);
	if (len < min) return pass_count(C, VPIPE_PASS_BELOW_THRESHOLD), libc(out_fd, in_fd, offset, count);
	if (g_nonblock_pass && nonblocking(out_fd)) return pass_count(C, VPIPE_PASS_NONBLOCK), libc(out_fd, in_fd, offset, count);
	if (!component_present()) return pass_count(C, VPIPE_PASS_NO_COMPONENT), libc(out_fd, in_fd, offset, count);
	if (not_vm_disk(st.st_dev)) return pass_count(C, VPIPE_PASS_NOT_VM_DISK), libc(out_fd, in_fd, offset, count);

	ssize_t r = hand(C, OP_F2S, in_fd, out_fd, (uint64_t)start, 0, len, st.st_dev, 0);
	if (r > 0) {
		if (offset) {
			*offset = start + r;  /* the file position stays */
		} else {
			int err = errno;
			lseek(in_fd, start + r, SEEK_SET);
			errno = err;
		}
	}
	return r;
}

EXPORT ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
	return do_sendfile(out_fd, in_fd, offset, count, REAL(sendfile_fn, "sendfile", r_sendfile));
}

EXPORT ssize_t sendfile64(int out_fd, int in_fd, off64_t *offset, size_t count) {
	/* off64_t is off_t on every 64-bit ABI this project builds for */
	_Static_assert(sizeof(off64_t) == sizeof(off_t), "64-bit off_t");
	return do_sendfile(out_fd, in_fd, (off_t *)offset, count, REAL(sendfile_fn, "sendfile64", r_sendfile64));
}

/* ---- copy_file_range ------------------------------------------------------------------------- */

EXPORT ssize_t copy_file_range(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len, unsigned int flags) {
	cfr_fn libc = REAL(cfr_fn, "copy_file_range", r_cfr);
	if (t_inside) {
		INC(g_st.reentrant);
		return libc(fd_in, off_in, fd_out, off_out, len, flags);
	}
	const int C = VPIPE_PRELOAD_COPY_FILE_RANGE;
	INC(g_st.calls[C]);
#define PASS(reason) return pass_count(C, reason), libc(fd_in, off_in, fd_out, off_out, len, flags)
	const uint64_t min = vpipe_min_offload();
	if (len == 0 || len < min) PASS(VPIPE_PASS_BELOW_THRESHOLD);
	if (flags != 0) PASS(VPIPE_PASS_ARGUMENTS);
	struct stat si, so;
	if (fstat(fd_in, &si) != 0 || fstat(fd_out, &so) != 0) PASS(VPIPE_PASS_ARGUMENTS);
	if (!S_ISREG(si.st_mode) || !S_ISREG(so.st_mode)) PASS(VPIPE_PASS_NOT_ELIGIBLE);
	const int ofl = fcntl(fd_out, F_GETFL);
	if (!readable_file(fd_in) || ofl < 0 || (ofl & O_ACCMODE) == O_RDONLY || (ofl & (O_PATH | O_APPEND)))
		PASS(VPIPE_PASS_ARGUMENTS);
	const loff_t ioff = off_in ? *off_in : lseek(fd_in, 0, SEEK_CUR);
	const loff_t ooff = off_out ? *off_out : lseek(fd_out, 0, SEEK_CUR);
	if (ioff < 0 || ooff < 0) PASS(VPIPE_PASS_ARGUMENTS);
	if (ioff >= si.st_size) PASS(VPIPE_PASS_AT_EOF);
	size_t n = len > MAX_RW_COUNT ? MAX_RW_COUNT : len;
	if ((uint64_t)(si.st_size - ioff) < n) n = (size_t)(si.st_size - ioff);
	/* overlapping ranges of one file, or a destination past the largest offset: libc's EINVAL/EFBIG */
	if ((uint64_t)ooff + n > (uint64_t)LLONG_MAX) PASS(VPIPE_PASS_ARGUMENTS);
	if (si.st_dev == so.st_dev && si.st_ino == so.st_ino && ioff < ooff + (loff_t)len && ooff < ioff + (loff_t)len)
		PASS(VPIPE_PASS_ARGUMENTS);
	if (n < min) PASS(VPIPE_PASS_BELOW_THRESHOLD);
	if (!component_present()) PASS(VPIPE_PASS_NO_COMPONENT);
	if (not_vm_disk(si.st_dev) || not_vm_disk(so.st_dev)) PASS(VPIPE_PASS_NOT_VM_DISK);
#undef PASS
	ssize_t r = hand(C, OP_F2F, fd_in, fd_out, (uint64_t)ioff, (uint64_t)ooff, n, si.st_dev, so.st_dev);
	if (r > 0) {
		int err = errno;
		if (off_in) *off_in = ioff + r; else lseek(fd_in, ioff + r, SEEK_SET);
		if (off_out) *off_out = ooff + r; else lseek(fd_out, ooff + r, SEEK_SET);
		errno = err;
	}
	return r;
}

/* ---- splice (opt-in) --------------------------------------------------------------------------
 * Linux's splice needs a pipe at one end; between a file or TCP socket and a TCP socket it fails
 * with EINVAL. With VPIPE_PRELOAD_SPLICE=1 exactly that call is given a meaning: up to `len`
 * bytes from the file (at *off_in, or its position) or the socket to the socket, moved by dom0.
 * Calls with a pipe at one end are always libc's. */

EXPORT ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len, unsigned int flags) {
	splice_fn libc = REAL(splice_fn, "splice", r_splice);
	if (t_inside) {
		INC(g_st.reentrant);
		return libc(fd_in, off_in, fd_out, off_out, len, flags);
	}
	const int C = VPIPE_PRELOAD_SPLICE;
	INC(g_st.calls[C]);
#define PASS(reason) return pass_count(C, reason), libc(fd_in, off_in, fd_out, off_out, len, flags)
	if (!g_splice) PASS(VPIPE_PASS_SPLICE_OFF);
	const uint64_t min = vpipe_min_offload();
	if (len == 0 || len < min) PASS(VPIPE_PASS_BELOW_THRESHOLD);
	struct stat si;
	if (fstat(fd_in, &si) != 0) PASS(VPIPE_PASS_ARGUMENTS);
	const int out_tcp = is_tcp(fd_out);
	if (out_tcp < 0) PASS(VPIPE_PASS_ARGUMENTS);
	const int in_tcp = S_ISSOCK(si.st_mode) ? is_tcp(fd_in) : 0;
	if (!out_tcp || !(S_ISREG(si.st_mode) || in_tcp > 0)) PASS(VPIPE_PASS_NOT_ELIGIBLE);
	if (off_out || (in_tcp > 0 && off_in) || !tcp_can_send(fd_out)) PASS(VPIPE_PASS_ARGUMENTS);
	if (g_nonblock_pass && ((flags & SPLICE_F_NONBLOCK) || nonblocking(fd_out) || (in_tcp > 0 && nonblocking(fd_in))))
		PASS(VPIPE_PASS_NONBLOCK);
	size_t n = len > MAX_RW_COUNT ? MAX_RW_COUNT : len;
	loff_t start = 0;
	if (!in_tcp) {
		start = off_in ? *off_in : lseek(fd_in, 0, SEEK_CUR);
		if (start < 0 || !readable_file(fd_in)) PASS(VPIPE_PASS_ARGUMENTS);
		if (start >= si.st_size) PASS(VPIPE_PASS_AT_EOF);
		if ((uint64_t)(si.st_size - start) < n) n = (size_t)(si.st_size - start);
		if (n < min) PASS(VPIPE_PASS_BELOW_THRESHOLD);
		if (not_vm_disk(si.st_dev)) PASS(VPIPE_PASS_NOT_VM_DISK);
	}
	if (!component_present()) PASS(VPIPE_PASS_NO_COMPONENT);
#undef PASS
	if (in_tcp) return hand(C, OP_S2S, fd_in, fd_out, 0, 0, n, 0, 0);
	ssize_t r = hand(C, OP_F2S, fd_in, fd_out, (uint64_t)start, 0, n, si.st_dev, 0);
	if (r > 0) {
		int err = errno;
		if (off_in) *off_in = start + r; else lseek(fd_in, start + r, SEEK_SET);
		errno = err;
	}
	return r;
}

/* ---- epoll and close: tracking only ---------------------------------------------------------- */

EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
	int r = REAL(epoll_ctl_fn, "epoll_ctl", r_epoll_ctl)(epfd, op, fd, event);
	if (r == 0 && !t_inside && fd >= 0 && epfd >= 0) {
		if ((op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) && event) {
			ep_remember(epfd, fd, event);
		} else if (op == EPOLL_CTL_DEL) {
			int err = errno;
			pthread_mutex_lock(&g_ep_mu);
			ep_forget_locked(fd, epfd);
			pthread_mutex_unlock(&g_ep_mu);
			errno = err;
		}
	}
	return r;
}

EXPORT int close(int fd) {
	ep_closed(fd);
	close_fn c = REAL(close_fn, "close", r_close);
	return c ? c(fd) : (int)syscall(SYS_close, fd);
}

/* ---- counters out ---------------------------------------------------------------------------- */

EXPORT int vpipe_preload_get_stats(struct vpipe_preload_stats *out) {
	if (!out) {
		errno = EINVAL;
		return -1;
	}
	/* relaxed reads field by field: counters, not a snapshot */
	const uint64_t *src = (const uint64_t *)&g_st;
	uint64_t *dst = (uint64_t *)out;
	for (size_t i = 0; i < sizeof(g_st) / sizeof(uint64_t); ++i) dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
	return 0;
}

EXPORT int vpipe_preload_get_reasons(const char **reasons, uint64_t *counts, int max) {
	pthread_mutex_lock(&g_reason_mu);
	int n = 0;
	while (n < MAX_REASONS && g_reason[n]) {
		if (n < max) {
			if (reasons) reasons[n] = g_reason[n];
			if (counts) counts[n] = g_reason_n[n];
		}
		++n;
	}
	pthread_mutex_unlock(&g_reason_mu);
	return n;
}

struct buf {
	char *p;
	size_t len, cap;
};
__attribute__((format(printf, 2, 3))) static void put(struct buf *b, const char *fmt, ...) {
	if (b->len >= b->cap) return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n > 0) b->len = b->len + (size_t)n < b->cap ? b->len + (size_t)n : b->cap;
}

static void put_json_string(struct buf *b, const char *s) {
	put(b, "\"");
	for (; *s; ++s) {
		if (*s == '"' || *s == '\\') put(b, "\\%c", *s);
		else if ((unsigned char)*s < 0x20) put(b, "\\u%04x", *s);
		else put(b, "%c", *s);
	}
	put(b, "\"");
}

static void dump_stats(void) {
	struct vpipe_preload_stats s;
	vpipe_preload_get_stats(&s);
	uint64_t total = 0;
	for (int c = 0; c < VPIPE_PRELOAD_CALLS_; ++c) total += s.calls[c];
	if (!total || (!g_stats_path[0] && !g_log)) return;
	char text[8192];
	struct buf b = {text, 0, sizeof(text) - 2};
	put(&b, "{\"pid\":%d", (int)getpid());
	for (int c = 0; c < VPIPE_PRELOAD_CALLS_; ++c) {
		put(&b, ",\"%s\":{\"calls\":%llu,\"handed\":%llu,\"offloaded\":%llu,\"lib_fallback\":%llu,\"lib_failed\":%llu,"
		        "\"bytes_moved\":%llu,\"bytes_dom0\":%llu,\"bytes_guest\":%llu,\"passed\":{",
		    k_call_name[c], (unsigned long long)s.calls[c], (unsigned long long)s.handed[c],
		    (unsigned long long)s.offloaded[c], (unsigned long long)s.lib_fallback[c],
		    (unsigned long long)s.lib_failed[c], (unsigned long long)s.bytes_moved[c],
		    (unsigned long long)s.bytes_dom0[c], (unsigned long long)s.bytes_guest[c]);
		for (int p = 0; p < VPIPE_PASS_REASONS_; ++p)
			put(&b, "%s\"%s\":%llu", p ? "," : "", k_pass_name[p], (unsigned long long)s.passed[c][p]);
		put(&b, "}}");
	}
	put(&b, ",\"epoll_rearmed\":%llu,\"epoll_lost\":%llu,\"reentrant\":%llu,\"libvpipe_reasons\":{",
	    (unsigned long long)s.epoll_rearmed, (unsigned long long)s.epoll_lost, (unsigned long long)s.reentrant);
	const char *why[MAX_REASONS];
	uint64_t n[MAX_REASONS];
	int k = vpipe_preload_get_reasons(why, n, MAX_REASONS);
	for (int i = 0; i < k && i < MAX_REASONS; ++i) {
		put(&b, "%s", i ? "," : "");
		put_json_string(&b, why[i]);
		put(&b, ":%llu", (unsigned long long)n[i]);
	}
	put(&b, "}}");
	text[b.len++] = '\n';
	if (g_log) dprintf(g_log_fd, "vpipe-preload: %.*s", (int)b.len, text);
	if (g_stats_path[0]) {
		char path[sizeof(g_stats_path) + 16];
		char *p = strstr(g_stats_path, "%p");
		if (p) snprintf(path, sizeof(path), "%.*s%d%s", (int)(p - g_stats_path), g_stats_path, (int)getpid(), p + 2);
		else snprintf(path, sizeof(path), "%s", g_stats_path);
		int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0) {
			if (write(fd, text, b.len) < 0) dprintf(2, "vpipe-preload: cannot write %s: %s\n", path, strerror(errno));
			REAL(close_fn, "close", r_close)(fd);
		} else {
			dprintf(2, "vpipe-preload: cannot open %s: %s\n", path, strerror(errno));
		}
	}
}

/* ---- set-up ------------------------------------------------------------------------------------ */

static void fork_prepare(void) { pthread_mutex_lock(&g_ep_mu); }
static void fork_parent(void) { pthread_mutex_unlock(&g_ep_mu); }
static void fork_child(void) { pthread_mutex_unlock(&g_ep_mu); }

__attribute__((constructor)) static void preload_init(void) {
	const char *nb = getenv("VPIPE_PRELOAD_NONBLOCK");
	g_nonblock_pass = nb && strcmp(nb, "pass") == 0;
	const char *sp = getenv("VPIPE_PRELOAD_SPLICE");
	g_splice = sp && *sp && strcmp(sp, "0") != 0;
	const char *lg = getenv("VPIPE_PRELOAD_LOG");
	g_log = lg && *lg && strcmp(lg, "0") != 0;
	if (g_log) {
		int fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
		if (fd >= 0) g_log_fd = fd;
	}
	const char *path = getenv("VPIPE_PRELOAD_STATS");
	const char *rc = getenv("VPIPE_PRELOAD_RECHECK_MS");
	if (rc && *rc) g_recheck_ms = strtoll(rc, NULL, 10);
	if (path && *path) snprintf(g_stats_path, sizeof(g_stats_path), "%s", path);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
	atexit(dump_stats);
}
