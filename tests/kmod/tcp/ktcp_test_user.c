// SPDX-License-Identifier: GPL-2.0
/*
 * ktcp_test: runs inside the QEMU guest (tests/kmod/tcp/run.sh) against the test module
 * vpipe_ktcp_test, which wraps guest-module/kmod/vpipe_tcp.c and vpipe_block.c (protocol v2:
 * freeze captures the send queue -- unacknowledged bytes, the never transmitted tail marked --
 * and the unread receive queue without waiting for the peer; restore takes the frozen state
 * and queues (flags 0) or "dom0's" final state and queues (VPIPE_EPF_VALID), here handed in
 * from userspace). Without an argument both ends of every connection live in the guest
 * (10.77.0.1 <-> 10.77.0.2 on lo; 127/8 only for the loopback check); "veth": the peer is in
 * netns "peer" behind a veth pair. "c" is the application's socket that gets frozen/restored,
 * "s" its peer. Prints "KTCP RESULT: PASS" or "KTCP RESULT: FAIL"; exit status 0 on pass.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ktcp_test_ioctl.h"

static int kt = -1;
static int failures;
static unsigned short next_port = 20000;
static uint64_t fr_ns[64], rs_ns[64];
static int n_fr, n_rs;

#define CHECK(cond, ...)                                                                  \
	do {                                                                              \
		if (!(cond)) {                                                            \
			printf("FAIL %s:%d: %s: ", __func__, __LINE__, #cond);            \
			printf(__VA_ARGS__);                                              \
			printf("\n");                                                     \
			fflush(stdout);                                                   \
			failures++;                                                       \
			return -1;                                                        \
		}                                                                         \
	} while (0)

static uint8_t pat(uint64_t off, uint32_t seed) { return (uint8_t)((off * 2654435761u + seed) >> 7); }

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0)
		return -errno;
	return ti.tcpi_state;
}

/* Tcp: OutRsts of /proc/net/snmp (RSTs this stack sent) */
static long out_rsts(void)
{
	FILE *f = fopen("/proc/net/snmp", "r");
	char hdr[1024], val[1024];
	long r = -1;
	if (!f)
		return -1;
	while (fgets(hdr, sizeof(hdr), f)) {
		if (strncmp(hdr, "Tcp:", 4) || !fgets(val, sizeof(val), f))
			continue;
		char *hs, *vs, *h = strtok_r(hdr, " \n", &hs), *v = strtok_r(val, " \n", &vs);
		while (h && v) {
			if (!strcmp(h, "OutRsts"))
				r = atol(v);
			h = strtok_r(NULL, " \n", &hs);
			v = strtok_r(NULL, " \n", &vs);
		}
		break;
	}
	fclose(f);
	return r;
}

static struct kt_stats stats(void)
{
	struct kt_stats s = {0};
	ioctl(kt, KT_IOC_STATS, &s);
	return s;
}

/* Topology. "lo": both ends in the guest's netns (10.77.0.1 <-> 10.77.0.2 on lo). "veth": the
 * peer lives in netns "peer" behind a veth pair (guest 10.78.0.2, peer 10.78.0.1), like a
 * client behind the VM's vif: the guest's netfilter/conntrack see real in/out traffic. */
static int veth, ns_guest = -1, ns_peer = -1;

/* a socket created in the peer's netns (veth mode) or the guest's */
static int socket_in(int in_peer, int family)
{
	if (in_peer && veth && setns(ns_peer, CLONE_NEWNET) < 0)
		return -1;
	int fd = socket(family, SOCK_STREAM, 0);
	if (in_peer && veth && setns(ns_guest, CLONE_NEWNET) < 0) {
		perror("setns back");
		exit(2);
	}
	return fd;
}

/* a connected pair c (the guest's client) -> s (the accepted end); family 4 or 6; loop:
 * 127.0.0.1; guest_server: in veth mode the listener (and s) is in the guest and c in the
 * peer's netns (by default s is the peer) */
static int make_pair_ex(int *c, int *s, int family, int loop, int srv_rcvbuf, int guest_server)
{
	unsigned short port = next_port++;
	int one = 1;
	const int af = family == 6 ? AF_INET6 : AF_INET;
	const int remote = !loop && family == 4;	/* may cross the veth */
	int l = socket_in(remote && !guest_server, af);
	*c = *s = -1;
	if (l < 0)
		return -1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (srv_rcvbuf)
		setsockopt(l, SOL_SOCKET, SO_RCVBUF, &srv_rcvbuf, sizeof(srv_rcvbuf));
	if (family == 6) {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
		a.sin6_addr = in6addr_loopback;
		if (bind(l, (void *)&a, sizeof(a)) || listen(l, 4))
			goto fail;
		*c = socket(AF_INET6, SOCK_STREAM, 0);
		if (connect(*c, (void *)&a, sizeof(a)))
			goto fail;
	} else {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
		struct sockaddr_in b = {.sin_family = AF_INET};
		const char *srv = loop ? "127.0.0.1" : !veth ? "10.77.0.1" : guest_server ? "10.78.0.2" : "10.78.0.1";
		const char *cli = loop ? "127.0.0.1" : !veth ? "10.77.0.2" : guest_server ? "10.78.0.1" : "10.78.0.2";
		inet_pton(AF_INET, srv, &a.sin_addr);
		inet_pton(AF_INET, cli, &b.sin_addr);
		if (bind(l, (void *)&a, sizeof(a)) || listen(l, 4))
			goto fail;
		*c = socket_in(remote && guest_server, AF_INET);
		if (*c < 0 || bind(*c, (void *)&b, sizeof(b)) || connect(*c, (void *)&a, sizeof(a)))
			goto fail;
	}
	*s = accept(l, NULL, NULL);
	if (*s < 0)
		goto fail;
	close(l);
	return 0;
fail:
	printf("make_pair: %s\n", strerror(errno));
	close(l);
	if (*c >= 0)
		close(*c);
	return -1;
}

static int make_pair(int *c, int *s) { return make_pair_ex(c, s, 4, 0, 0, 0); }

static int kcheck(int fd, int *fin)
{
	struct kt_check a = {.fd = fd};
	if (ioctl(kt, KT_IOC_CHECK, &a) < 0)
		return -1000 - errno;
	if (fin)
		*fin = a.peer_fin;
	return a.result;
}

/* the queues of the last freeze of each slot, as the module copies them out */
#define QCAP (8u << 20)
static uint8_t *qs[KT_SLOTS], *qr[KT_SLOTS];

static int kfreeze(int fd, unsigned slot, struct kt_freeze *out)
{
	struct kt_freeze a = {.fd = fd, .slot = slot};
	if (slot < KT_SLOTS) {
		a.sndq = (uintptr_t)qs[slot];
		a.rcvq = (uintptr_t)qr[slot];
		a.sndq_cap = a.rcvq_cap = QCAP;
	}
	if (ioctl(kt, KT_IOC_FREEZE, &a) < 0)
		return -1000 - errno;
	if (a.result == 0 && n_fr < 64)
		fr_ns[n_fr++] = a.ns;
	if (a.result == 0 && (a.st.sndq_len > QCAP || a.st.rcvq_len > QCAP)) {
		printf("frozen queues %u/%u larger than the test's buffers\n", a.st.sndq_len, a.st.rcvq_len);
		return -3000;
	}
	if (out)
		*out = a;
	return a.result;
}

/* restore slot (flags 0: the frozen state and queues; VALID: st with sndq/rcvq, "dom0's");
 * on success dup2 the new socket over app_fd (what libvpipe does) */
static int krestore_ex(unsigned slot, int app_fd, uint32_t flags, const struct vpipe_tcp_state *st,
		       const void *sndq, const void *rcvq)
{
	struct kt_restore a;
	memset(&a, 0, sizeof(a));
	a.slot = slot;
	a.flags = flags;
	if (st)
		a.st = *st;
	a.sndq = (uintptr_t)sndq;
	a.rcvq = (uintptr_t)rcvq;
	if (ioctl(kt, KT_IOC_RESTORE, &a) < 0)
		return -1000 - errno;
	if (a.result)
		return a.result;
	if (n_rs < 64)
		rs_ns[n_rs++] = a.ns;
	int fl = fcntl(a.new_fd, F_GETFD);
	if (!(fl & FD_CLOEXEC)) {
		printf("new fd without FD_CLOEXEC\n");
		return -2000;
	}
	if (dup2(a.new_fd, app_fd) < 0)
		return -errno;
	close(a.new_fd);
	return 0;
}

static int krestore(unsigned slot, int app_fd) { return krestore_ex(slot, app_fd, 0, NULL, NULL, NULL); }

/* VALID with the frozen state and the queues the freeze gave out (what the core passes back
 * when dom0 returns the connection as it got it) */
static int krestore_same(unsigned slot, int app_fd, const struct kt_freeze *fz)
{
	return krestore_ex(slot, app_fd, VPIPE_EPF_VALID, &fz->st, qs[slot], qr[slot]);
}

/* blocks / unblocks the 4-tuple of the connected socket fd, seen from fd's side */
static int kblock(int fd, int on)
{
	struct kt_block a = {.fd = fd, .on = (uint32_t)on};
	return ioctl(kt, KT_IOC_BLOCK, &a) < 0 ? -errno : 0;
}

static int recv_exact(int fd, uint8_t *buf, size_t n, int timeout_ms)
{
	size_t got = 0;
	while (got < n) {
		struct pollfd p = {fd, POLLIN, 0};
		int pr = poll(&p, 1, timeout_ms);
		if (pr <= 0)
			return pr == 0 ? -ETIMEDOUT : -errno;
		ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
		if (r == 0)
			return -EPIPE;
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		got += r;
	}
	return 0;
}

static int send_exact(int fd, const uint8_t *buf, size_t n)
{
	size_t off = 0;
	while (off < n) {
		ssize_t w = send(fd, buf + off, n - off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += w;
	}
	return 0;
}

/* n pattern bytes from -> to (writer in a child), verified byte-exact; 0 or -1 */
static int transfer(int from, int to, size_t n, uint32_t seed)
{
	pid_t pid = fork();
	if (pid == 0) {
		uint8_t buf[65536];
		size_t off = 0;
		while (off < n) {
			size_t k = n - off < sizeof(buf) ? n - off : sizeof(buf);
			for (size_t i = 0; i < k; i++)
				buf[i] = pat(off + i, seed);
			if (send_exact(from, buf, k))
				_exit(1);
			off += k;
		}
		_exit(0);
	}
	uint8_t buf[65536];
	size_t off = 0;
	int bad = 0;
	while (off < n) {
		size_t k = n - off < sizeof(buf) ? n - off : sizeof(buf);
		if (recv_exact(to, buf, k, 10000)) {
			bad = 1;
			break;
		}
		for (size_t i = 0; i < k; i++)
			if (buf[i] != pat(off + i, seed)) {
				printf("mismatch at %zu\n", off + i);
				bad = 1;
				break;
			}
		if (bad)
			break;
		off += k;
	}
	int st = 0;
	if (bad)
		kill(pid, SIGKILL); /* a writer stuck in send() */
	waitpid(pid, &st, 0);
	if (bad || !WIFEXITED(st) || WEXITSTATUS(st)) {
		printf("transfer of %zu bytes failed at %zu\n", n, off);
		return -1;
	}
	return 0;
}

static int fill(uint8_t *b, size_t n, uint64_t base, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = pat(base + i, seed);
	return 0;
}

static int verify(const uint8_t *b, size_t n, uint64_t base, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		if (b[i] != pat(base + i, seed))
			return -1;
	return 0;
}

static int wait_inq(int fd, int want)
{
	for (int i = 0; i < 2000; i++) {
		int q = 0;
		ioctl(fd, SIOCINQ, &q);
		if (q >= want)
			return q;
		usleep(1000);
	}
	return -1;
}

static int inq(int fd)
{
	int q = -1;
	return ioctl(fd, SIOCINQ, &q) < 0 ? -errno : q;
}

/* bytes not acknowledged by the peer / of them never transmitted */
static int outq(int fd)
{
	int q = -1;
	return ioctl(fd, SIOCOUTQ, &q) < 0 ? -errno : q;
}

static int outq_nsd(int fd)
{
	int q = -1;
	return ioctl(fd, SIOCOUTQNSD, &q) < 0 ? -errno : q;
}

/* waits until everything the socket sent is acknowledged */
static int wait_acked(int fd, int timeout_ms)
{
	for (int i = 0; i < timeout_ms; i++) {
		if (outq(fd) == 0)
			return 0;
		usleep(1000);
	}
	return -1;
}

/* the peer saw neither FIN nor RST: ESTABLISHED and nothing to read */
static int peer_quiet(int s)
{
	char ch;
	if (tcp_state(s) != TCP_ESTABLISHED)
		return 0;
	ssize_t r = recv(s, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
	return r < 0 && errno == EAGAIN;
}

/* ------------------------------------------------------------------------------------------ */

static int t_checks(void)
{
	int c, s, fin = -1, r;
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	CHECK((r = kcheck(u, NULL)) == -EINVAL, "udp %d", r);
	CHECK((r = kfreeze(u, 0, NULL)) == -EINVAL, "freeze udp %d", r);
	close(u);
	int un[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, un);
	CHECK((r = kcheck(un[0], NULL)) == -EINVAL, "unix %d", r);
	CHECK((r = kfreeze(un[0], 0, NULL)) == -EINVAL, "freeze unix %d", r);
	close(un[0]);
	close(un[1]);
	int pf = open("/proc/self/stat", O_RDONLY);
	CHECK((r = kcheck(pf, NULL)) == -EINVAL, "file %d", r);
	close(pf);
	int t = socket(AF_INET, SOCK_STREAM, 0);
	CHECK((r = kcheck(t, NULL)) == -ENOTCONN, "unconnected %d", r);
	CHECK((r = kfreeze(t, 0, NULL)) == -ENOTCONN, "freeze unconnected %d", r);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(next_port++)};
	inet_pton(AF_INET, "10.77.0.1", &a.sin_addr);
	CHECK(bind(t, (void *)&a, sizeof(a)) == 0 && listen(t, 1) == 0, "listen");
	CHECK((r = kcheck(t, NULL)) == -ENOTCONN, "listener %d", r);
	CHECK((r = kfreeze(t, 0, NULL)) == -ENOTCONN, "freeze listener %d", r);
	close(t);

	CHECK(make_pair_ex(&c, &s, 4, 1, 0, 0) == 0, "loop pair");
	CHECK((r = kcheck(c, NULL)) == -EOPNOTSUPP, "127.0.0.1 %d", r);
	close(c);
	close(s);
	if (make_pair_ex(&c, &s, 6, 0, 0, 0) == 0) {
		CHECK((r = kcheck(c, NULL)) == -EOPNOTSUPP, "ipv6 %d", r);
		CHECK((r = kfreeze(c, 0, NULL)) == -EOPNOTSUPP, "freeze ipv6 %d", r);
		close(c);
		close(s);
	} else {
		printf("note: no IPv6 in the guest, IPv6 check skipped\n");
	}
	CHECK(make_pair(&c, &s) == 0, "pair");
	CHECK((r = kcheck(c, &fin)) == 0 && fin == 0, "established %d fin %d", r, fin);
	shutdown(s, SHUT_WR);
	for (int i = 0; i < 1000 && tcp_state(c) != TCP_CLOSE_WAIT; i++)
		usleep(1000);
	CHECK((r = kcheck(c, &fin)) == 0 && fin == 1, "close_wait %d fin %d", r, fin);
	close(c);
	close(s);
	CHECK(stats().blocked == 0, "blocked left");
	printf("ok checks: UDP/unix/file -EINVAL, unconnected/listener -ENOTCONN, loopback/IPv6 -EOPNOTSUPP, CLOSE_WAIT peer_fin\n");
	return 0;
}

/* freeze -> restore(NULL): options copied, both directions byte-exact, no RST/FIN */
static int t_roundtrip(void)
{
	int c, s, r, one = 1;
	CHECK(make_pair(&c, &s) == 0, "pair");
	int idle = 77, intvl = 11, cnt = 5, sndbuf = 300000, ut = 12345, tos = 0x10;
	struct timeval tv = {3, 500000};
	struct linger lg = {1, 7};
	setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(c, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(c, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(c, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	setsockopt(c, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof(ut));
	setsockopt(c, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
	setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	int mark = 42;
	setsockopt(c, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
	int got_sndbuf = 0;
	socklen_t l = sizeof(int);
	getsockopt(c, SOL_SOCKET, SO_SNDBUF, &got_sndbuf, &l);

	CHECK(transfer(c, s, 1 << 20, 1) == 0, "before c->s");
	CHECK(transfer(s, c, 1 << 20, 2) == 0, "before s->c");
	struct sockaddr_in cl, cp;
	socklen_t al = sizeof(cl);
	getsockname(c, (void *)&cl, &al);
	al = sizeof(cp);
	getpeername(c, (void *)&cp, &al);

	long rst0 = out_rsts();
	struct kt_freeze fz;
	CHECK((r = kfreeze(c, 0, &fz)) == 0, "freeze %d", r);
	CHECK(fz.st.family == VPIPE_AF_INET && fz.st.local_port == cl.sin_port &&
		      fz.st.remote_port == cp.sin_port && !memcmp(fz.st.local_addr, &cl.sin_addr, 4) &&
		      !memcmp(fz.st.remote_addr, &cp.sin_addr, 4),
	      "tuple in state");
	CHECK(fz.st.sndq_len == 0 && fz.st.sndq_unsent == 0 && fz.st.rcvq_len == 0, "queues %u/%u/%u",
	      fz.st.sndq_len, fz.st.sndq_unsent, fz.st.rcvq_len);
	CHECK(fz.st.mss >= 64 && (fz.st.options & VPIPE_TCPOPT_TIMESTAMP), "mss %u opts %u", fz.st.mss,
	      fz.st.options);
	CHECK(stats().blocked == 1, "blocked %u", stats().blocked);
	/* the application's descriptor is on a dead, unconnected socket now */
	al = sizeof(cp);
	CHECK(getpeername(c, (void *)&cp, &al) < 0 && errno == ENOTCONN, "old socket still connected");
	usleep(50000);
	CHECK(peer_quiet(s), "peer saw FIN/RST during freeze (state %d)", tcp_state(s));
	CHECK(out_rsts() == rst0, "RST sent");

	CHECK((r = krestore(0, c)) == 0, "restore %d", r);
	CHECK(stats().blocked == 0, "still blocked");
	CHECK(tcp_state(c) == TCP_ESTABLISHED, "state %d", tcp_state(c));

	/* options */
	int v = 0;
	struct timeval tv2;
	struct linger lg2;
	l = sizeof(v);
	getsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &v, &l);
	CHECK(v == 1, "keepalive");
	getsockopt(c, IPPROTO_TCP, TCP_KEEPIDLE, &v, &l);
	CHECK(v == 77, "keepidle %d", v);
	getsockopt(c, IPPROTO_TCP, TCP_KEEPINTVL, &v, &l);
	CHECK(v == 11, "keepintvl %d", v);
	getsockopt(c, IPPROTO_TCP, TCP_KEEPCNT, &v, &l);
	CHECK(v == 5, "keepcnt %d", v);
	getsockopt(c, IPPROTO_TCP, TCP_NODELAY, &v, &l);
	CHECK(v == 1, "nodelay");
	getsockopt(c, SOL_SOCKET, SO_SNDBUF, &v, &l);
	CHECK(v == got_sndbuf, "sndbuf %d != %d", v, got_sndbuf);
	getsockopt(c, IPPROTO_TCP, TCP_USER_TIMEOUT, &v, &l);
	CHECK(v == 12345, "user timeout %d", v);
	getsockopt(c, IPPROTO_IP, IP_TOS, &v, &l);
	CHECK(v == 0x10, "tos %d", v);
	getsockopt(c, SOL_SOCKET, SO_REUSEADDR, &v, &l);
	CHECK(v == 1, "reuseaddr %d", v);
	getsockopt(c, SOL_SOCKET, SO_MARK, &v, &l);
	CHECK(v == 42, "mark %d", v);
	l = sizeof(tv2);
	getsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv2, &l);
	CHECK(tv2.tv_sec == 3 && tv2.tv_usec / 1000 == 500, "rcvtimeo %ld.%06ld", (long)tv2.tv_sec,
	      (long)tv2.tv_usec);
	l = sizeof(lg2);
	getsockopt(c, SOL_SOCKET, SO_LINGER, &lg2, &l);
	CHECK(lg2.l_onoff == 1 && lg2.l_linger == 7, "linger");

	double t0 = now_ms();
	CHECK(transfer(c, s, 4 << 20, 3) == 0, "after c->s");
	CHECK(transfer(s, c, 4 << 20, 4) == 0, "after s->c");
	double t1 = now_ms();
	CHECK(out_rsts() == rst0, "RST sent");
	/* a second round trip on the restored socket */
	CHECK((r = kfreeze(c, 1, NULL)) == 0, "freeze 2 %d", r);
	CHECK((r = krestore(1, c)) == 0, "restore 2 %d", r);
	CHECK(transfer(c, s, 65536, 5) == 0 && transfer(s, c, 65536, 6) == 0, "after 2nd");
	CHECK(out_rsts() == rst0, "RST sent");
	close(c);
	close(s);
	printf("ok roundtrip: 1 MiB each way before, freeze/restore, options copied, 4 MiB each way after (%.0f ms), 2nd round trip, OutRsts unchanged\n",
	       t1 - t0);
	return 0;
}

/* unread receive queue: frozen into fz->unread byte-exact, readable by the application after
 * the restore (3000 bytes and 200000 bytes restored from the frozen state, 200000 bytes
 * restored VALID from the state and queues the freeze gave out) */
static int t_unread(void)
{
	int c, s, r;
	static uint8_t big[1 << 20];
	static const struct { size_t n; int valid; } rounds[] = {{3000, 0}, {200000, 0}, {200000, 1}};
	for (unsigned round = 0; round < 3; round++) {
		size_t n = rounds[round].n;
		uint32_t seed = 7 + round;
		CHECK(make_pair(&c, &s) == 0, "pair");
		if (n > 100000) { /* room for all of it (the restored socket keeps the locked size) */
			int rb = 1 << 20;
			setsockopt(c, SOL_SOCKET, SO_RCVBUF, &rb, sizeof(rb));
		}
		fill(big, n, 0, seed);
		CHECK(send_exact(s, big, n) == 0, "send");
		CHECK(wait_inq(c, n) == (int)n, "inq");
		struct kt_freeze fz;
		CHECK((r = kfreeze(c, 0, &fz)) == 0, "freeze %d", r);
		CHECK(fz.st.rcvq_len == n && fz.st.sndq_len == 0 && fz.st.sndq_unsent == 0 && !fz.peer_fin,
		      "rcvq %u sndq %u/%u != %zu", fz.st.rcvq_len, fz.st.sndq_len, fz.st.sndq_unsent, n);
		CHECK(verify(qr[0], n, 0, seed) == 0, "frozen unread bytes differ");
		int rb0 = 0, rb1 = 0;
		socklen_t l = sizeof(int);
		getsockopt(c, SOL_SOCKET, SO_RCVBUF, &rb0, &l);
		if (rounds[round].valid)
			r = krestore_same(0, c, &fz);
		else
			r = krestore(0, c);
		CHECK(r == 0, "restore %d", r);
		getsockopt(c, SOL_SOCKET, SO_RCVBUF, &rb1, &l);
		CHECK(n <= 100000 || rb1 == rb0, "SO_RCVBUF %d != %d", rb1, rb0);
		CHECK(inq(c) == (int)n, "restored receive queue holds %d, not %zu", inq(c), n);
		memset(big, 0, n);
		CHECK(recv_exact(c, big, n, 5000) == 0 && verify(big, n, 0, seed) == 0, "unread bytes");
		CHECK(inq(c) == 0, "more than the unread bytes: %d", inq(c));
		CHECK(transfer(c, s, 100000, 8) == 0 && transfer(s, c, 100000, 9) == 0, "after");
		close(c);
		close(s);
	}
	printf("ok unread: 3000 and 200000 unread bytes frozen byte-exact and readable after restore (frozen state; VALID with the carried rcvq)\n");
	return 0;
}

/*
 * Bytes the application wrote that the peer has not acknowledged. The PEER's tuple is blocked:
 * c's segments leave c's stack (they count as transmitted) and are lost before s, and s sends
 * nothing, so nothing is acknowledged; s's window limits what c transmits, the rest stays
 * unsent. freeze must not wait: it captures all of it (the transmitted part and the unsent
 * tail), and the restore must deliver it to the peer exactly once, in order, byte-exact (the
 * restored socket retransmits the transmitted part, the unsent part goes out after the
 * unblock). Variants: restore of the frozen state; VALID with the same state and the carried
 * queues; a locked SO_SNDBUF filled to the brim (non-blocking writes until EAGAIN); writes up
 * to TCP_NOTSENT_LOWAT (until EAGAIN). The restored socket keeps SO_SNDBUF / the low mark.
 */
static int t_sndq(void)
{
	static uint8_t buf[1 << 21];
	static const char *what[] = {"frozen state", "VALID + carried queues", "full locked sndbuf",
				     "TCP_NOTSENT_LOWAT reached"};
	enum { NV = 4 };
	double ms[NV];
	uint32_t lens[NV], unsent[NV];
	for (int v = 0; v < NV; v++) {
		int c, s, r;
		const uint32_t seed = 40 + v;
		CHECK(make_pair(&c, &s) == 0, "pair");
		CHECK(transfer(c, s, 20000, 50) == 0 && transfer(s, c, 20000, 51) == 0, "warm-up");
		CHECK(wait_acked(c, 2000) == 0 && wait_acked(s, 2000) == 0, "warm-up not acknowledged (%d %d)",
		      outq(c), outq(s));
		int sb = v == 2 ? 262144 : 1 << 20, sb0 = 0, lowat = 16384;
		socklen_t l = sizeof(sb0);
		setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sb, sizeof(sb));
		getsockopt(c, SOL_SOCKET, SO_SNDBUF, &sb0, &l);
		if (v == 3)
			setsockopt(c, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
		long rst0 = out_rsts();
		CHECK((r = kblock(s, 1)) == 0, "block the peer's tuple: %s", strerror(-r));
		fcntl(c, F_SETFL, O_NONBLOCK);
		size_t n = 0;
		const int brim = v >= 2; /* until EAGAIN */
		const size_t want = brim ? sizeof(buf) : 300000;
		fill(buf, want, 0, seed);
		while (n < want) {
			ssize_t w = send(c, buf + n, want - n, MSG_NOSIGNAL);
			if (w <= 0)
				break;
			n += w;
		}
		CHECK(brim ? n < want : n == want, "wrote %zu of %zu (%s)", n, want, strerror(errno));
		fcntl(c, F_SETFL, 0);
		usleep(300000); /* the first flight, the tail loss probe and a first RTO are over */
		int q = outq(c), nsd = outq_nsd(c);
		CHECK(q == (int)n && nsd > 0 && nsd < q, "outq %d unsent %d of %zu written", q, nsd, n);
		CHECK(inq(s) == 0, "the peer got %d bytes through the block", inq(s));

		struct kt_freeze fz;
		CHECK((r = kfreeze(c, 0, &fz)) == 0, "freeze with %zu unacknowledged bytes: %d", n, r);
		CHECK(fz.ns < 1000000000ull, "freeze took %.0f ms (it must not wait)", fz.ns / 1e6);
		CHECK(fz.st.sndq_len == n && fz.st.sndq_unsent == (uint32_t)nsd && fz.st.rcvq_len == 0,
		      "sndq %u unsent %u rcvq %u, expected %zu / %d / 0", fz.st.sndq_len, fz.st.sndq_unsent,
		      fz.st.rcvq_len, n, nsd);
		CHECK(verify(qs[0], n, 0, seed) == 0, "frozen send queue bytes differ");
		CHECK(out_rsts() == rst0, "RST");
		CHECK((r = kblock(s, 0)) == 0, "unblock the peer's tuple: %s", strerror(-r));
		CHECK(stats().blocked == 1, "blocked %u", stats().blocked);

		double t0 = now_ms();
		if (v == 1)
			r = krestore_same(0, c, &fz);
		else
			r = krestore(0, c);
		CHECK(r == 0, "restore %d", r);
		CHECK(stats().blocked == 0, "still blocked");
		l = sizeof(sb);
		getsockopt(c, SOL_SOCKET, SO_SNDBUF, &sb, &l);
		CHECK(sb == sb0, "SO_SNDBUF %d != %d", sb, sb0);
		int lw = 0;
		l = sizeof(lw);
		getsockopt(c, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lw, &l);
		CHECK(lw == (v == 3 ? lowat : 0), "TCP_NOTSENT_LOWAT %d", lw);
		/* exactly once, in order: the n bytes, then the stream goes on where it was */
		static uint8_t in[1 << 21];
		memset(in, 0, n);
		CHECK(recv_exact(s, in, n, 15000) == 0, "the peer did not get the %zu bytes (%d queued)", n,
		      inq(s));
		ms[v] = now_ms() - t0;
		CHECK(verify(in, n, 0, seed) == 0, "the peer got other bytes");
		CHECK(wait_acked(c, 5000) == 0, "restored socket: %d bytes still unacknowledged", outq(c));
		CHECK(inq(s) == 0, "%d bytes more than were written", inq(s));
		CHECK(transfer(c, s, 100000, 52) == 0 && transfer(s, c, 100000, 53) == 0, "after");
		CHECK(out_rsts() == rst0, "RST");
		lens[v] = fz.st.sndq_len;
		unsent[v] = fz.st.sndq_unsent;
		close(c);
		close(s);
	}
	for (int v = 0; v < NV; v++)
		printf("timing sndq %s: %u bytes unacknowledged (%u never transmitted) delivered %.0f ms after the restore\n",
		       what[v], lens[v], unsent[v], ms[v]);
	printf("ok sndq: freeze with unacknowledged bytes returns at once with them; restore delivers them exactly once, byte-exact (frozen state, VALID, full locked sndbuf, notsent low mark)\n");
	return 0;
}

/* The peer does not read (small receive buffer): the application's writes fill its send
 * buffer. freeze returns at once with the queue (what the peer did not acknowledge, most of it
 * never transmitted); once restored, the connection delivers everything when the peer reads
 * and keeps working. */
static int t_stalled(void)
{
	int c, s, r;
	CHECK(make_pair_ex(&c, &s, 4, 0, 4096, 0) == 0, "pair");
	int sb = 65536; /* on lo the autotuned buffer would take all of buf */
	setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sb, sizeof(sb));
	fcntl(c, F_SETFL, O_NONBLOCK);
	static uint8_t buf[1 << 20];
	fill(buf, sizeof(buf), 0, 24);
	size_t sent = 0;
	for (;;) {
		ssize_t w = send(c, buf + sent, sizeof(buf) - sent, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		sent += w;
	}
	CHECK(sent > 0 && sent < sizeof(buf), "sent %zu", sent);
	fcntl(c, F_SETFL, 0);
	/* settled: what s holds plus what c still has is everything */
	int q = -1, in_s = -1;
	for (int i = 0; i < 2000; i++) {
		q = outq(c);
		in_s = inq(s);
		if (q + in_s == (int)sent)
			break;
		usleep(1000);
	}
	CHECK(q + in_s == (int)sent && q > 0, "outq %d + peer's inq %d != %zu", q, in_s, sent);
	int nsd = outq_nsd(c);
	struct kt_freeze fz;
	CHECK((r = kfreeze(c, 0, &fz)) == 0, "freeze %d", r);
	CHECK(fz.ns < 1000000000ull, "freeze took %.0f ms", fz.ns / 1e6);
	CHECK(fz.st.sndq_len == (uint32_t)q && fz.st.sndq_unsent == (uint32_t)nsd && fz.st.sndq_unsent > 0,
	      "sndq %u unsent %u, expected %d / %d", fz.st.sndq_len, fz.st.sndq_unsent, q, nsd);
	CHECK(verify(qs[0], q, sent - q, 24) == 0, "frozen send queue bytes differ");
	CHECK((r = krestore(0, c)) == 0, "restore %d", r);
	CHECK(stats().blocked == 0, "blocked");
	static uint8_t in[1 << 20];
	double t0 = now_ms();
	CHECK(recv_exact(s, in, sent, 10000) == 0 && verify(in, sent, 0, 24) == 0, "data after restore");
	double t1 = now_ms();
	CHECK(wait_acked(c, 5000) == 0 && inq(s) == 0, "outq %d, %d bytes too many", outq(c), inq(s));
	fill(buf, 100, sent, 24);
	CHECK(send(c, buf, 100, MSG_NOSIGNAL) == 100, "still usable");
	CHECK(recv_exact(s, in, 100, 5000) == 0 && verify(in, 100, sent, 24) == 0, "stream goes on");
	close(c);
	close(s);
	printf("ok stalled: peer not reading, %zu bytes written, freeze took %.1f ms with %u unacknowledged (%u never sent), all delivered in %.0f ms once the peer reads\n",
	       sent, fz.ns / 1e6, fz.st.sndq_len, fz.st.sndq_unsent, t1 - t0);
	return 0;
}

/* restore at a state advanced by dom0: N bytes in dom0's send queue, transmitted (the guest
 * retransmits them) or never transmitted (sent as ordinary data after the unblock) or both;
 * dom0's receive queue (the frozen unread bytes + what dom0 received) and PEER_FIN */
static int t_carry(void)
{
	int c, s, r;
	const uint32_t N = 20000;
	static uint8_t carry[65536], buf[65536];
	static const uint32_t unsent_of[3] = {0, 20000, 8000};
	double ms[3];
	for (int v = 0; v < 3; v++) {
		CHECK(make_pair(&c, &s) == 0, "pair");
		CHECK(transfer(c, s, 10000, 10) == 0, "warm");
		CHECK(wait_acked(c, 2000) == 0, "warm-up not acknowledged");
		struct kt_freeze fz;
		CHECK((r = kfreeze(c, 0, &fz)) == 0, "freeze %d", r);
		CHECK(fz.st.sndq_len == 0 && fz.st.rcvq_len == 0, "queues %u %u", fz.st.sndq_len, fz.st.rcvq_len);
		struct vpipe_tcp_state fin = fz.st;
		fin.snd_seq += N;
		fin.sndq_len = N;
		fin.sndq_unsent = unsent_of[v];
		fill(carry, N, 10000, 10); /* continues the stream c->s */
		double t0 = now_ms();
		CHECK((r = krestore_ex(0, c, VPIPE_EPF_VALID, &fin, carry, NULL)) == 0, "restore %d", r);
		memset(buf, 0, N);
		CHECK(recv_exact(s, buf, N, 10000) == 0, "carry not delivered (unsent %u)", unsent_of[v]);
		ms[v] = now_ms() - t0;
		CHECK(verify(buf, N, 10000, 10) == 0, "carry bytes differ (unsent %u)", unsent_of[v]);
		CHECK(wait_acked(c, 5000) == 0 && inq(s) == 0, "outq %d, %d bytes too many", outq(c), inq(s));
		CHECK(transfer(c, s, 100000, 11) == 0 && transfer(s, c, 100000, 12) == 0, "after");
		close(c);
		close(s);
	}

	/* receive side: 3000 bytes queued at the freeze; while frozen the peer sends 1000 more and
	 * its FIN, which "dom0" took: its rcvq is the 3000 + the 1000 (rcv_seq before the FIN);
	 * its sndq 2000 bytes it sent and the peer has not acknowledged */
	CHECK(make_pair(&c, &s) == 0, "pair");
	fill(buf, 4000, 0, 13);
	CHECK(send_exact(s, buf, 3000) == 0 && wait_inq(c, 3000) == 3000, "queue");
	struct kt_freeze fz;
	CHECK((r = kfreeze(c, 0, &fz)) == 0 && fz.st.rcvq_len == 3000, "freeze %d rcvq %u", r, fz.st.rcvq_len);
	CHECK(verify(qr[0], 3000, 0, 13) == 0, "frozen unread bytes differ");
	CHECK(send_exact(s, buf + 3000, 1000) == 0 && shutdown(s, SHUT_WR) == 0, "peer send + FIN");
	static uint8_t rq[4000];
	memcpy(rq, qr[0], 3000);
	memcpy(rq + 3000, buf + 3000, 1000);
	struct vpipe_tcp_state fin = fz.st;
	fin.rcv_seq += 1000;
	fin.rcvq_len = 4000;
	fin.snd_seq += 2000;
	fin.sndq_len = 2000;
	fill(carry, 2000, 0, 14);
	CHECK((r = krestore_ex(0, c, VPIPE_EPF_VALID | VPIPE_EPF_PEER_FIN, &fin, carry, rq)) == 0,
	      "restore %d", r);
	CHECK(inq(c) == 4000, "restored receive queue %d, not dom0's 4000 (frozen bytes prepended?)", inq(c));
	memset(buf, 0, 4000);
	CHECK(recv_exact(c, buf, 4000, 5000) == 0 && verify(buf, 4000, 0, 13) == 0, "rcvq");
	char ch;
	CHECK(recv(c, &ch, 1, MSG_DONTWAIT) == 0, "no EOF after PEER_FIN");
	CHECK(recv_exact(s, buf, 2000, 10000) == 0 && verify(buf, 2000, 0, 14) == 0, "sndq carry");
	CHECK(transfer(c, s, 50000, 15) == 0, "half-closed c->s");
	CHECK(wait_acked(s, 5000) == 0, "the peer's retransmitted bytes and FIN not acknowledged (%d)", outq(s));
	close(c);
	CHECK(recv_exact(s, buf, 1, 5000) == -EPIPE, "peer EOF after close");
	close(s);
	printf("ok carry: %u dom0 send-queue bytes delivered: transmitted (retransmission) %.0f ms, never transmitted %.0f ms, split %.0f ms; dom0's rcvq alone, PEER_FIN gives EOF\n",
	       N, ms[0], ms[1], ms[2]);
	return 0;
}

/* the peer's segments of a frozen tuple are held, not dropped nor answered, and reach the
 * restored socket when the block goes (not only at the peer's next retransmission) */
static int t_hold(void)
{
	int c, s, r;
	uint8_t buf[500];
	CHECK(make_pair(&c, &s) == 0, "pair");
	long rst0 = out_rsts();
	CHECK((r = kfreeze(c, 0, NULL)) == 0, "freeze %d", r);
	struct kt_stats k0 = stats();
	fill(buf, sizeof(buf), 0, 16);
	CHECK(send_exact(s, buf, sizeof(buf)) == 0, "peer send");
	usleep(600000); /* first transmission + at least one retransmission */
	struct kt_stats k1 = stats();
	CHECK(k1.dropped == k0.dropped, "%llu incoming segments dropped, not held",
	      (unsigned long long)(k1.dropped - k0.dropped));
	CHECK(k1.reinjected == k0.reinjected, "re-injected while blocked");
	CHECK(out_rsts() == rst0, "RST while frozen");
	double t0 = now_ms();
	CHECK((r = krestore(0, c)) == 0, "restore %d", r);
	memset(buf, 0, sizeof(buf));
	CHECK(recv_exact(c, buf, sizeof(buf), 10000) == 0 && verify(buf, sizeof(buf), 0, 16) == 0, "delivered");
	double t1 = now_ms();
	uint64_t reinjected = stats().reinjected - k1.reinjected;
	CHECK(reinjected >= 2, "re-injected %llu (the transmission and its retransmission)",
	      (unsigned long long)reinjected);
	CHECK(out_rsts() == rst0, "RST");
	CHECK(transfer(c, s, 100000, 17) == 0, "after");
	close(c);
	close(s);
	printf("ok hold: %llu held segments of the frozen tuple re-injected, peer's data arrived %.0f ms after restore\n",
	       (unsigned long long)reinjected, t1 - t0);
	return 0;
}

static int t_reset_release(void)
{
	int c, s, r;
	CHECK(make_pair(&c, &s) == 0, "pair");
	long rst0 = out_rsts();
	CHECK((r = kfreeze(c, 0, NULL)) == 0, "freeze %d", r);
	CHECK((r = krestore_ex(0, c, VPIPE_EPF_RESET, NULL, NULL, NULL)) == 0, "restore reset %d", r);
	CHECK(stats().blocked == 0, "blocked");
	char ch;
	errno = 0;
	CHECK(recv(c, &ch, 1, 0) < 0 && errno == ECONNRESET, "recv errno %d", errno);
	CHECK(recv(c, &ch, 1, 0) == 0, "then EOF");
	CHECK(send(c, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "send errno %d", errno);
	CHECK(out_rsts() == rst0 && tcp_state(s) == TCP_ESTABLISHED, "RST sent by the guest");
	close(c);
	close(s);

	/* release (process died) of a socket frozen with both queues: nothing reaches the peer */
	static uint8_t buf[5000];
	CHECK(make_pair(&c, &s) == 0, "pair");
	fill(buf, 500, 0, 60);
	CHECK(send_exact(s, buf, 500) == 0 && wait_inq(c, 500) == 500, "unread");
	CHECK(wait_acked(s, 2000) == 0, "not acknowledged"); /* no retransmission later */
	CHECK(kblock(s, 1) == 0, "block the peer's tuple");
	fill(buf, 5000, 0, 61);
	CHECK(send_exact(c, buf, 5000) == 0, "send");
	usleep(20000);
	rst0 = out_rsts();
	struct kt_freeze fz;
	CHECK((r = kfreeze(c, 2, &fz)) == 0, "freeze %d", r);
	CHECK(fz.st.sndq_len == 5000 && fz.st.rcvq_len == 500, "queues %u %u", fz.st.sndq_len, fz.st.rcvq_len);
	CHECK(kblock(s, 0) == 0, "unblock");
	CHECK(ioctl(kt, KT_IOC_RELEASE, &(uint32_t){2}) == 0, "release");
	CHECK(stats().blocked == 0, "blocked after release");
	close(c);
	usleep(50000);
	CHECK(stats().blocked == 0, "blocked");
	CHECK(peer_quiet(s) && out_rsts() == rst0, "peer saw data/FIN/RST after release (state %d, inq %d)",
	      tcp_state(s), inq(s));
	close(s);

	/* a restore that fails still releases: VALID with a send queue but no bytes, and with
	 * more unsent bytes than the queue holds, are -EINVAL; the tuple is unblocked, the slot
	 * empty, the descriptor on the dead socket */
	for (int v = 0; v < 2; v++) {
		CHECK(make_pair(&c, &s) == 0, "pair");
		rst0 = out_rsts();
		CHECK((r = kfreeze(c, 3, &fz)) == 0, "freeze %d", r);
		struct vpipe_tcp_state bad = fz.st;
		bad.snd_seq += 100;
		bad.sndq_len = 100;
		bad.sndq_unsent = v ? 101 : 0;
		fill(buf, 100, 0, 62);
		CHECK((r = krestore_ex(3, c, VPIPE_EPF_VALID, &bad, v ? buf : NULL, NULL)) == -EINVAL,
		      "bad restore %d", r);
		CHECK(stats().blocked == 0, "blocked after a failed restore");
		CHECK((r = krestore(3, c)) == -1000 - ENOENT, "slot not released: %d", r);
		struct sockaddr_in pa;
		socklen_t al = sizeof(pa);
		CHECK(getpeername(c, (void *)&pa, &al) < 0 && errno == ENOTCONN, "descriptor connected");
		close(c);
		usleep(20000);
		CHECK(peer_quiet(s) && out_rsts() == rst0, "peer saw FIN/RST");
		close(s);
	}
	printf("ok reset/release: RESET gives ECONNRESET then EOF/EPIPE; release (with queues) and close send nothing; a failed restore releases\n");
	return 0;
}

/* CLOSE_WAIT freeze (restored from the frozen state and VALID), take_unread, send_all, a VALID
 * receive queue shorter than the frozen one (the caller delivered part of it itself) */
static int t_misc(void)
{
	int c, s, r;
	uint8_t buf[70000];
	struct kt_freeze fz;
	char ch;
	for (int v = 0; v < 2; v++) {
		CHECK(make_pair(&c, &s) == 0, "pair");
		fill(buf, 100, 0, 18);
		CHECK(send_exact(s, buf, 100) == 0, "send");
		shutdown(s, SHUT_WR);
		for (int i = 0; i < 1000 && tcp_state(c) != TCP_CLOSE_WAIT; i++)
			usleep(1000);
		CHECK((r = kfreeze(c, 0, &fz)) == 0 && fz.peer_fin == 1 && fz.st.rcvq_len == 100,
		      "freeze cw %d fin %u rcvq %u", r, fz.peer_fin, fz.st.rcvq_len);
		CHECK(verify(qr[0], 100, 0, 18) == 0, "frozen unread bytes differ");
		CHECK((r = v ? krestore_same(0, c, &fz) : krestore(0, c)) == 0, "restore %d", r);
		memset(buf, 0, 100);
		CHECK(recv_exact(c, buf, 100, 5000) == 0 && verify(buf, 100, 0, 18) == 0, "cw unread");
		CHECK(recv(c, &ch, 1, MSG_DONTWAIT) == 0, "cw EOF");
		CHECK(transfer(c, s, 30000, 19) == 0, "cw c->s");
		close(c);
		CHECK(recv_exact(s, buf, 1, 5000) == -EPIPE, "peer EOF after close");
		close(s);
	}

	CHECK(make_pair(&c, &s) == 0, "pair");
	fill(buf, 1000, 0, 20);
	CHECK(send_exact(s, buf, 1000) == 0 && wait_inq(c, 1000) == 1000, "send");
	memset(buf, 0, 1000);
	struct kt_io io = {.fd = c, .len = 4096, .buf = (uintptr_t)buf};
	CHECK(ioctl(kt, KT_IOC_TAKE_UNREAD, &io) == 0 && io.result == 1000 && verify(buf, 1000, 0, 20) == 0,
	      "take_unread %lld", (long long)io.result);
	io.len = 4096;
	CHECK(ioctl(kt, KT_IOC_TAKE_UNREAD, &io) == 0 && io.result == 0, "take_unread empty %lld",
	      (long long)io.result);
	fill(buf, 65536, 0, 21);
	io.len = 65536;
	CHECK(ioctl(kt, KT_IOC_SEND_ALL, &io) == 0 && io.result == 0, "send_all %lld", (long long)io.result);
	memset(buf, 0, 65536);
	CHECK(recv_exact(s, buf, 65536, 5000) == 0 && verify(buf, 65536, 0, 21) == 0, "send_all bytes");
	/* "dom0" consumed 600 of the 1000 unread bytes: its rcvq is the last 400 */
	fill(buf, 1000, 0, 22);
	CHECK(send_exact(s, buf, 1000) == 0 && wait_inq(c, 1000) == 1000, "send");
	CHECK(wait_acked(s, 2000) == 0, "not acknowledged");
	CHECK((r = kfreeze(c, 0, &fz)) == 0 && fz.st.rcvq_len == 1000, "freeze %d rcvq %u", r, fz.st.rcvq_len);
	struct vpipe_tcp_state fin = fz.st;
	fin.rcvq_len = 400;
	CHECK((r = krestore_ex(0, c, VPIPE_EPF_VALID, &fin, qs[0], qr[0] + 600)) == 0, "restore %d", r);
	CHECK(inq(c) == 400, "restored receive queue %d", inq(c));
	memset(buf, 0, 400);
	CHECK(recv_exact(c, buf, 400, 5000) == 0 && verify(buf, 400, 600, 22) == 0, "rest of unread");
	CHECK(transfer(s, c, 10000, 23) == 0 && transfer(c, s, 10000, 24) == 0, "after");
	close(c);
	close(s);
	printf("ok misc: CLOSE_WAIT freeze/restore (unread + EOF; frozen state and VALID), take_unread, send_all, VALID rcvq shorter than the frozen one\n");
	return 0;
}

/* the application's socket is the accepted one (its listener still open, SO_REUSEADDR):
 * freeze + restore of the server side, O_NONBLOCK kept, the listener keeps accepting; and
 * two frozen connections at once (socket -> socket) */
static int t_server(void)
{
	int c, s, c2, s2, r;
	CHECK(make_pair_ex(&c, &s, 4, 0, 0, 1) == 0 && make_pair(&c2, &s2) == 0, "pairs");
	/* a listener on the accepted socket's port, like a server that keeps serving */
	struct sockaddr_in la;
	socklen_t al = sizeof(la);
	getsockname(s, (void *)&la, &al);
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	CHECK(bind(l, (void *)&la, sizeof(la)) == 0 && listen(l, 4) == 0, "listener on %d: %s",
	      ntohs(la.sin_port), strerror(errno));
	fcntl(s, F_SETFL, O_NONBLOCK);
	long rst0 = out_rsts();
	CHECK((r = kfreeze(s, 0, NULL)) == 0, "freeze server side %d", r);
	CHECK((r = kfreeze(c2, 1, NULL)) == 0, "freeze 2nd %d", r);
	CHECK(stats().blocked == 2, "blocked %u", stats().blocked);
	CHECK((r = krestore(1, c2)) == 0, "restore 2nd %d", r);
	CHECK((r = krestore(0, s)) == 0, "restore server side %d", r);
	CHECK(fcntl(s, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	fcntl(s, F_SETFL, 0);
	CHECK(transfer(s, c, 200000, 25) == 0 && transfer(c, s, 200000, 26) == 0, "server side after");
	CHECK(transfer(c2, s2, 200000, 27) == 0 && transfer(s2, c2, 200000, 28) == 0, "2nd after");
	/* the listener still works */
	int c3 = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(c3, (void *)&la, sizeof(la)) == 0, "connect to listener: %s", strerror(errno));
	int s3 = accept(l, NULL, NULL);
	CHECK(s3 >= 0 && transfer(c3, s3, 1000, 29) == 0, "new connection");
	CHECK(out_rsts() == rst0, "RST");
	close(c3);
	close(s3);
	close(l);
	close(c);
	close(s);
	close(c2);
	close(s2);
	printf("ok server: accepted socket (listener open) frozen/restored with O_NONBLOCK, two frozen at once, listener keeps accepting\n");
	return 0;
}

/* A firewalled guest: conntrack tracks the flow and INVALID segments are dropped. dom0's
 * traffic never passes the guest, so after the hand-back both sequence spaces are far past
 * what conntrack saw. Simulated in one netns: the frozen state is restored into a "shadow"
 * whose traffic conntrack does not see (untracked), 8 MiB move, the shadow is frozen and its
 * state (VALID) restored into the application's descriptor. */
static int t_conntrack(void)
{
	int c, s, r, sh;
	struct kt_ct ct;
	memset(&ct, 0, sizeof(ct));
	ct.on = 1;
	CHECK(ioctl(kt, KT_IOC_CT_TRACK, &ct) == 0, "conntrack on: %s", strerror(errno));
	CHECK(make_pair(&c, &s) == 0, "pair");
	CHECK(transfer(c, s, 100000, 30) == 0 && transfer(s, c, 100000, 31) == 0, "tracked");
	struct kt_freeze fz, fz2;
	CHECK((r = kfreeze(c, 0, &fz)) == 0, "freeze %d", r);
	ct.on = 1;
	ct.st = fz.st;
	CHECK(ioctl(kt, KT_IOC_CT_DOM0, &ct) == 0, "dom0 phase");
	struct kt_stats k0 = stats();
	sh = socket(AF_INET, SOCK_STREAM, 0);
	CHECK((r = krestore(0, sh)) == 0, "shadow %d", r);
	CHECK(transfer(sh, s, 8 << 20, 32) == 0 && transfer(s, sh, 4 << 20, 33) == 0, "dom0 phase bytes");
	CHECK((r = kfreeze(sh, 1, &fz2)) == 0, "freeze shadow %d", r);
	CHECK(fz2.st.snd_seq - fz.st.snd_seq == 8u << 20 && fz2.st.rcv_seq - fz.st.rcv_seq == 4u << 20,
	      "seqs moved %u %u", fz2.st.snd_seq - fz.st.snd_seq, fz2.st.rcv_seq - fz.st.rcv_seq);
	ct.on = 0;
	CHECK(ioctl(kt, KT_IOC_CT_DOM0, &ct) == 0, "dom0 phase off");
	struct kt_stats k1 = stats();
	CHECK(k1.ct_untracked > k0.ct_untracked && k1.ct_invalid_dropped == k0.ct_invalid_dropped,
	      "untracked %llu invalid %llu", (unsigned long long)(k1.ct_untracked - k0.ct_untracked),
	      (unsigned long long)(k1.ct_invalid_dropped - k0.ct_invalid_dropped));
	/* dom0's final state with the queues the shadow had (the module copied them out) */
	CHECK((r = krestore_same(1, c, &fz2)) == 0, "restore %d", r);
	int bad = transfer(c, s, 1 << 20, 34) || transfer(s, c, 1 << 20, 35);
	struct kt_stats k2 = stats();
	ct.on = 0;
	ioctl(kt, KT_IOC_CT_TRACK, &ct);
	close(c);
	close(s);
	close(sh);
	CHECK(!bad && k2.ct_invalid_dropped == k1.ct_invalid_dropped,
	      "after the hand-back: transfer %s, %llu segments INVALID", bad ? "failed" : "ok",
	      (unsigned long long)(k2.ct_invalid_dropped - k1.ct_invalid_dropped));
	printf("ok conntrack: seqs moved by 8/4 MiB behind conntrack's back, restored flow passes \"ct state invalid drop\" (0 INVALID)\n");
	return 0;
}

static void summary(const char *what, uint64_t *v, int n)
{
	uint64_t mn = ~0ull, mx = 0, sum = 0;
	for (int i = 0; i < n; i++) {
		mn = v[i] < mn ? v[i] : mn;
		mx = v[i] > mx ? v[i] : mx;
		sum += v[i];
	}
	if (!n)
		return;
	printf("timing %s: n=%d min %.1f us avg %.1f us max %.1f us; each (us):", what, n, mn / 1e3,
	       sum / 1e3 / n, mx / 1e3);
	for (int i = 0; i < n; i++)
		printf(" %.0f", v[i] / 1e3);
	printf("\n");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "veth")) {
		veth = 1;
		ns_guest = open("/proc/self/ns/net", O_RDONLY);
		ns_peer = open("/run/netns/peer", O_RDONLY);
		if (ns_guest < 0 || ns_peer < 0) {
			printf("netns: %s\nKTCP RESULT: FAIL\n", strerror(errno));
			return 1;
		}
		next_port = 30000;
	}
	printf("topology: %s\n", veth ? "veth (peer in its own netns)" : "lo (both ends in the guest)");
	for (int i = 0; i < KT_SLOTS; i++) {
		qs[i] = malloc(QCAP);
		qr[i] = malloc(QCAP);
		if (!qs[i] || !qr[i]) {
			printf("malloc\nKTCP RESULT: FAIL\n");
			return 1;
		}
	}
	kt = open("/dev/vpipe_ktcp_test", O_RDWR);
	if (kt < 0) {
		printf("open /dev/vpipe_ktcp_test: %s\nKTCP RESULT: FAIL\n", strerror(errno));
		return 1;
	}
	t_checks();
	t_roundtrip();
	t_unread();
	t_sndq();
	t_stalled();
	t_carry();
	t_hold();
	t_reset_release();
	t_misc();
	t_server();
	t_conntrack();
	summary("freeze", fr_ns, n_fr);
	summary("restore", rs_ns, n_rs);
	if (stats().blocked != 0) {
		printf("FAIL: %u tuples still blocked\n", stats().blocked);
		failures++;
	}
	printf("KTCP RESULT%s: %s (%d failures)\n", veth ? " veth" : "", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
