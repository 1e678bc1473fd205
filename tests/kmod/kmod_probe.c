// SPDX-License-Identifier: MIT
/*
 * kmod_probe -- runs inside a plain QEMU guest (no Xen) against vpipe.ko built with VPIPE_TEST=1.
 * Checks the application ABI without an engine (exact errno, counters, handles) and prints the
 * module's extent mapping of files on an ext4 partition ("MAP" lines) for the host to compare
 * with debugfs's view of the same image (check_maps.py). Ends with "PROBE RESULT: PASS|FAIL".
 *
 *   kmod_probe all      everything (files on /mnt, vda1 registered as vdev 51712)
 *   kmod_probe engine   file -> file byte-exact through the test build's stand-in engine
 *                       (vpipe.ko loaded with test_engine_disk=/dev/vda)
 *   kmod_probe stats    only: /dev/vpipe answers STATS
 *   kmod_probe conformance  the conformance corpus (tests/conformance/corpus.h) against the
 *                       module and its stand-in engine, scripted through the debug ioctls
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <vpipe/abi/ioctl.h>

#include "corpus.h"
#include "vpipe_debug.h"

static int fails, checks;

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		int e_ = errno;                                                            \
		checks++;                                                                  \
		if (cond) {                                                                \
			printf("ok   " __VA_ARGS__);                                           \
			printf("\n");                                                      \
		} else {                                                                   \
			fails++;                                                           \
			printf("FAIL " __VA_ARGS__);                                       \
			printf(" (errno %d %s)\n", e_, strerror(e_));                      \
		}                                                                          \
	} while (0)

static int dev = -1;

/* one VPIPE_IOC_OP without a handle: 0 or -errno */
static int run_op(uint32_t opc, int in, int out, uint64_t in_off, uint64_t out_off, uint64_t len,
		  struct vpipe_ioc_op *res)
{
	struct vpipe_ioc_op op;

	memset(&op, 0, sizeof(op));
	op.op = opc;
	op.handle = VPIPE_NO_HANDLE;
	op.in_fd = in;
	op.out_fd = out;
	op.in_offset = in_off;
	op.out_offset = out_off;
	op.length = len;
	int r = ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0;
	if (res)
		*res = op;
	return r;
}

static void expect(const char *what, int got, int want)
{
	checks++;
	if (got == want) {
		printf("ok   %s -> %s\n", what, want ? strerror(-want) : "0");
	} else {
		fails++;
		printf("FAIL %s -> %d (%s), want %d (%s)\n", what, got, strerror(-got), want,
		       strerror(-want));
	}
}

static int stats(struct vpipe_ioc_stats *s)
{
	memset(s, 0xff, sizeof(*s));
	return ioctl(dev, VPIPE_IOC_STATS, s);
}

static int tcp_pair(const char *addr, int *client, int *server)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	inet_pton(AF_INET, addr, &a.sin_addr);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &al) < 0)
		return -1;
	*client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*client < 0)
		return -1;
	if (!strcmp(addr, "10.9.9.1")) {
		/* the peer has an address of its own (10.9.9.2): the VM's side is the server end */
		struct sockaddr_in p = { .sin_family = AF_INET };

		inet_pton(AF_INET, "10.9.9.2", &p.sin_addr);
		if (bind(*client, (struct sockaddr *)&p, sizeof(p)) < 0)
			return -1;
	}
	if (connect(*client, (struct sockaddr *)&a, sizeof(a)) < 0)
		return -1;
	*server = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	close(l);
	return *server < 0 ? -1 : 0;
}

/* prints the module's mapping of [off, off+len) of path: MAP path off len vdev part d:l:z ... */
static int print_map(const char *path, uint64_t off, uint64_t len, int prepare)
{
	struct vpipe_dbg_seg segs[4096];
	struct vpipe_dbg_map m;
	int fd = open(path, prepare ? O_RDWR : O_RDONLY);

	if (fd < 0)
		return -errno;
	memset(&m, 0, sizeof(m));
	m.fd = fd;
	m.max = 4096;
	m.offset = off;
	m.length = len;
	m.segs = (uintptr_t)segs;
	m.flags = prepare ? 1 : 0;
	int r = ioctl(dev, VPIPE_IOC_DBG_MAP, &m) < 0 ? -errno : 0;
	close(fd);
	if (r < 0)
		return r;
	if (m.nr > m.max)
		return -E2BIG;
	printf("MAP %s %llu %llu %u %llu", path, (unsigned long long)off, (unsigned long long)len,
	       m.vdev, (unsigned long long)m.partition_offset);
	for (uint32_t i = 0; i < m.nr; i++)
		printf(" %llu:%llu:%u", (unsigned long long)segs[i].disk_offset,
		       (unsigned long long)segs[i].length, segs[i].zero);
	printf("\n");
	if (prepare)
		printf("PREPARED %s zero_filled=%llu\n", path, (unsigned long long)m.zero_filled);
	return (int)m.nr;
}

static void fill(char *buf, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(seed * 131 + i * 7 + (i >> 9));
}

static int write_at(int fd, unsigned seed, size_t n, off_t at)
{
	char *buf = malloc(n);

	fill(buf, n, seed);
	ssize_t w = pwrite(fd, buf, n, at);
	free(buf);
	return w == (ssize_t)n ? 0 : -1;
}

static void abi_checks(void)
{
	struct vpipe_ioc_stats s;
	struct vpipe_ioc_op op;
	int nfail = 0;

	/* counters, no engine */
	CHECK(stats(&s) == 0 && s.engine_connected == 0 && s.handles_open == 0 &&
		      s.ops_failed == 0 && s.ring_requests == 0,
	      "STATS: engine_connected=0, counters zero");

	int src = open("/mnt/big.bin", O_RDONLY | O_CLOEXEC);
	int dst = open("/mnt/out.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int dst_ro = open("/mnt/out.bin", O_RDONLY | O_CLOEXEC);
	int dst_app = open("/mnt/out.bin", O_WRONLY | O_APPEND | O_CLOEXEC);
	int src_wo = open("/mnt/big.bin", O_WRONLY | O_CLOEXEC);
	int tmpf = open("/tmp/notondisk", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	CHECK(src >= 0 && dst >= 0 && dst_ro >= 0 && dst_app >= 0 && src_wo >= 0 && tmpf >= 0,
	      "test files open");
	write_at(tmpf, 1, 8192, 0);

	/* handles */
	struct vpipe_ioc_create cr = { .in_fd = src, .out_fd = dst };
	CHECK(ioctl(dev, VPIPE_IOC_CREATE, &cr) == 0 && cr.handle >= 0, "CREATE -> handle %d",
	      cr.handle);
	CHECK(stats(&s) == 0 && s.handles_open == 1, "STATS: handles_open=1");
	memset(&op, 0, sizeof(op));
	op.op = VPIPE_IOC_FILE_TO_FILE;
	op.handle = cr.handle;
	op.in_fd = op.out_fd = -1;
	op.length = 4096;
	expect("FILE_TO_FILE via handle, no engine",
	       ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0, -EHOSTDOWN);
	nfail++;
	int32_t h = cr.handle;
	CHECK(ioctl(dev, VPIPE_IOC_DESTROY, &h) == 0, "DESTROY");
	expect("DESTROY again", ioctl(dev, VPIPE_IOC_DESTROY, &h) < 0 ? -errno : 0, -EBADF);
	op.handle = h;
	expect("OP with a destroyed handle", ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0,
	       -EBADF);
	nfail++;
	struct vpipe_ioc_create bad = { .in_fd = 999, .out_fd = dst };
	expect("CREATE with a closed fd", ioctl(dev, VPIPE_IOC_CREATE, &bad) < 0 ? -errno : 0,
	       -EBADF);
	struct vpipe_ioc_create badf = { .in_fd = src, .out_fd = dst, .flags = 1 };
	expect("CREATE with flags", ioctl(dev, VPIPE_IOC_CREATE, &badf) < 0 ? -errno : 0,
	       -EINVAL);
	CHECK(stats(&s) == 0 && s.handles_open == 0, "STATS: handles_open=0");
	expect("unknown ioctl", ioctl(dev, _IO('V', 99)) < 0 ? -errno : 0, -ENOTTY);

	/* file -> file errors, in the agent's order */
	expect("FILE_TO_FILE, no engine", run_op(1, src, dst, 0, 0, 1 << 20, NULL), -EHOSTDOWN);
	nfail++;
	expect("FILE_TO_FILE, read-only destination", run_op(1, src, dst_ro, 0, 0, 4096, NULL),
	       -EBADF);
	nfail++;
	expect("FILE_TO_FILE, O_APPEND destination", run_op(1, src, dst_app, 0, 0, 4096, NULL),
	       -EINVAL);
	nfail++;
	expect("FILE_TO_FILE, write-only source", run_op(1, src_wo, dst, 0, 0, 4096, NULL),
	       -EBADF);
	nfail++;
	expect("FILE_TO_FILE, source on tmpfs", run_op(1, tmpf, dst, 0, 0, 4096, NULL), -ENXIO);
	nfail++;
	expect("FILE_TO_FILE, destination on tmpfs", run_op(1, src, tmpf, 0, 0, 4096, NULL),
	       -ENXIO);
	nfail++;
	expect("FILE_TO_FILE, closed descriptor", run_op(1, 999, dst, 0, 0, 4096, NULL), -EBADF);
	nfail++;
	expect("FILE_TO_FILE, in_offset > INT64_MAX",
	       run_op(1, src, dst, 1ull << 63, 0, 4096, NULL), -EINVAL);
	nfail++;
	expect("unknown op 7", run_op(7, src, dst, 0, 0, 4096, NULL), -EINVAL);
	nfail++;
	memset(&op, 0, sizeof(op));
	op.op = 1;
	op.handle = VPIPE_NO_HANDLE;
	op.in_fd = src;
	op.out_fd = dst;
	op.length = 1;
	op.reserved0 = 1;
	expect("reserved0 != 0", ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0, -EINVAL);
	nfail++;
	op.reserved0 = 0;
	op.flags = 0x80;
	expect("unknown flag", ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0, -EINVAL);
	nfail++;
	CHECK(op.new_in_fd == -1 && op.new_out_fd == -1, "no descriptors handed back on errors");

	/* sockets */
	int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int unconn = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int lst = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in la = { .sin_family = AF_INET };
	inet_pton(AF_INET, "10.9.9.1", &la.sin_addr);
	bind(lst, (struct sockaddr *)&la, sizeof(la));
	listen(lst, 1);
	int lo_c = -1, lo_s = -1, c = -1, sv = -1, c2 = -1, sv2 = -1;
	CHECK(tcp_pair("127.0.0.1", &lo_c, &lo_s) == 0, "loopback TCP pair");
	CHECK(tcp_pair("10.9.9.1", &c, &sv) == 0, "TCP pair on 10.9.9.1 (not loopback)");
	CHECK(tcp_pair("10.9.9.1", &c2, &sv2) == 0, "second TCP pair on 10.9.9.1");
	expect("FILE_TO_SOCKET, UDP socket", run_op(2, src, udp, 0, 0, 4096, NULL), -EINVAL);
	nfail++;
	expect("FILE_TO_SOCKET, unconnected TCP", run_op(2, src, unconn, 0, 0, 4096, NULL),
	       -ENOTCONN);
	nfail++;
	expect("FILE_TO_SOCKET, listening TCP", run_op(2, src, lst, 0, 0, 4096, NULL), -ENOTCONN);
	nfail++;
	expect("FILE_TO_SOCKET, loopback connection", run_op(2, src, lo_c, 0, 0, 4096, NULL),
	       -EOPNOTSUPP);
	nfail++;
	expect("FILE_TO_SOCKET, regular file as socket", run_op(2, src, dst, 0, 0, 4096, NULL),
	       -EINVAL);
	nfail++;
	expect("FILE_TO_FILE, socket as destination", run_op(1, src, c, 0, 0, 4096, NULL),
	       -EINVAL);
	nfail++;
	expect("FILE_TO_SOCKET, source on tmpfs", run_op(2, tmpf, c, 0, 0, 4096, NULL), -ENXIO);
	nfail++;
	expect("FILE_TO_SOCKET, no engine", run_op(2, src, c, 0, 0, 4096, NULL), -EHOSTDOWN);
	nfail++;
	expect("SOCKET_TO_FILE, no engine", run_op(3, sv, dst, 0, 0, 4096, NULL), -EHOSTDOWN);
	nfail++;
	expect("SOCKET_TO_SOCKET, no engine", run_op(4, sv, c2, 0, 0, 4096, NULL), -EHOSTDOWN);
	nfail++;
	/* the connections were not touched: they still carry data */
	char b = 0;
	CHECK(send(c, "x", 1, 0) == 1 && recv(sv, &b, 1, 0) == 1 && b == 'x' &&
		      send(sv2, "y", 1, 0) == 1 && recv(c2, &b, 1, 0) == 1 && b == 'y',
	      "sockets still usable after refused operations");

	CHECK(stats(&s) == 0 && s.ops_failed == (uint64_t)nfail && s.ops[1] == 0 && s.ops[2] == 0 &&
		      s.ops[3] == 0 && s.ops[4] == 0 && s.engine_connected == 0 &&
		      s.ring_requests == 0,
	      "STATS: ops_failed=%d (got %llu), ops[] zero, no ring requests", nfail,
	      (unsigned long long)s.ops_failed);
	int fds[] = { src, dst, dst_ro, dst_app, src_wo, tmpf, udp, unconn, lst, lo_c, lo_s, c, sv, c2, sv2 };
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		close(fds[i]);
}

static void map_checks(void)
{
	/* files the guest makes: data, an unwritten extent, holes, fragmentation */
	int fd = open("/mnt/mixed.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write_at(fd, 2, 8192, 0) == 0 && fallocate(fd, 0, 65536, 131072) == 0 &&
		      write_at(fd, 3, 4096, 524288) == 0 && ftruncate(fd, 1 << 20) == 0,
	      "mixed.bin: data, unwritten extent, holes (dirty, not flushed)");
	close(fd);
	int f1 = open("/mnt/frag1.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	int f2 = open("/mnt/frag2.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	int ok = f1 >= 0 && f2 >= 0;
	for (int i = 0; ok && i < 48; i++) {
		ok = write_at(f1, 10 + i, 4096, (off_t)i * 4096) == 0 && fsync(f1) == 0 &&
		     write_at(f2, 90 + i, 4096, (off_t)i * 4096) == 0 && fsync(f2) == 0;
	}
	CHECK(ok, "frag1.bin / frag2.bin interleaved with fsync");
	close(f1);
	close(f2);
	/* the unaligned tail: i_size not a multiple of the block */
	int t = open("/mnt/tail.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(t >= 0 && write_at(t, 5, 10000, 0) == 0, "tail.bin: 10000 bytes, not flushed");
	close(t);

	struct {
		const char *path;
		uint64_t off, len;
	} maps[] = {
		{ "/mnt/big.bin", 0, 5000000 },      { "/mnt/big.bin", 12345, 4 << 20 },
		{ "/mnt/sparse.bin", 0, 4 << 20 },   { "/mnt/sparse.bin", 409000, 2000000 },
		{ "/mnt/mixed.bin", 0, 1 << 20 },    { "/mnt/mixed.bin", 100, 600000 },
		{ "/mnt/frag1.bin", 0, 48 * 4096 }, { "/mnt/frag2.bin", 5000, 100000 },
		{ "/mnt/tail.bin", 0, 10000 },
	};
	for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
		int n = print_map(maps[i].path, maps[i].off, maps[i].len, 0);
		errno = n < 0 ? -n : 0;
		CHECK(n > 0, "DBG_MAP %s [%llu, +%llu): %d segment(s)", maps[i].path,
		      (unsigned long long)maps[i].off, (unsigned long long)maps[i].len, n);
	}
	int n = print_map("/mnt/big.bin", 4000000, 2000000, 0);
	expect("DBG_MAP past EOF", n < 0 ? n : 0, -EINVAL);
	n = print_map("/tmp/notondisk", 0, 4096, 0);
	expect("DBG_MAP of a tmpfs file", n < 0 ? n : 0, -ENXIO);

	/* destination preparation: grow tail.bin by 3 MiB past its unaligned EOF */
	n = print_map("/mnt/tail.bin", 10000, 3 << 20, 1);
	errno = n < 0 ? -n : 0;
	CHECK(n > 0, "prepare tail.bin [10000, +3 MiB) as a destination");
	struct stat st;
	t = open("/mnt/tail.bin", O_RDONLY);
	char *buf = malloc(10000 + (3 << 20)), *want = malloc(10000);
	fill(want, 10000, 5);
	ssize_t r = t >= 0 ? pread(t, buf, 10000 + (3 << 20), 0) : -1;
	int zeros = 1;
	for (ssize_t i = 10000; i < r; i++)
		zeros &= buf[i] == 0;
	CHECK(t >= 0 && fstat(t, &st) == 0 && st.st_size == 10000 + (3 << 20) &&
		      r == st.st_size && memcmp(buf, want, 10000) == 0 && zeros,
	      "tail.bin after preparation: size %lld, old bytes intact, zeros after",
	      (long long)st.st_size);
	close(t);
	free(buf);
	free(want);
	/* preparing blocks that hold data writes nothing and changes nothing */
	n = print_map("/mnt/frag1.bin", 4096, 8192, 1);
	errno = n < 0 ? -n : 0;
	CHECK(n > 0, "prepare written blocks of frag1.bin");
	/* the whole prepared file, for the host: no unwritten extent may remain in it */
	print_map("/mnt/tail.bin", 0, 10000 + (3 << 20), 0);
}


/* ---- with the test build's stand-in engine (test_engine_disk=/dev/vda) -------------------- */

static char *slurp(const char *path, size_t *n)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	char *b;

	if (fd < 0 || fstat(fd, &st) < 0)
		return NULL;
	b = malloc(st.st_size + 1);
	*n = pread(fd, b, st.st_size, 0);
	close(fd);
	return b;
}

static int f2f(const char *from, const char *to, uint64_t in_off, uint64_t out_off, uint64_t len,
	       uint32_t flags, struct vpipe_ioc_op *res, int create)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0644);
	struct vpipe_ioc_op op;
	int r;

	memset(&op, 0, sizeof(op));
	op.op = VPIPE_IOC_FILE_TO_FILE;
	op.handle = VPIPE_NO_HANDLE;
	op.in_fd = in;
	op.out_fd = out;
	op.in_offset = in_off;
	op.out_offset = out_off;
	op.length = len;
	op.flags = flags;
	r = ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0;
	*res = op;
	close(in);
	close(out);
	printf("     op %s[%llu] -> %s[%llu] len %llu: r=%d moved=%llu offloaded=%llu guest=%llu zero_filled=%llu requests=%u paths=%#x\n",
	       from, (unsigned long long)in_off, to, (unsigned long long)out_off,
	       (unsigned long long)len, r, (unsigned long long)op.moved,
	       (unsigned long long)op.offloaded, (unsigned long long)op.guest_copied,
	       (unsigned long long)op.zero_filled, op.requests, op.paths);
	return r;
}

static int set_param(const char *name, const char *val)
{
	char path[128];
	snprintf(path, sizeof(path), "/sys/module/vpipe/parameters/%s", name);
	int fd = open(path, O_WRONLY);
	int ok = fd >= 0 && write(fd, val, strlen(val)) == (ssize_t)strlen(val);
	if (fd >= 0)
		close(fd);
	return ok ? 0 : -1;
}

static void drop_caches(void)
{
	sync();
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, "3", 1) != 1)
			perror("drop_caches");
		close(fd);
	}
}


/* one socket operation as libvpipe does it: restored sockets replace the descriptors */
static int sock_op(uint32_t opc, int *in, int *out, uint64_t out_off, uint64_t len,
		   struct vpipe_ioc_op *res)
{
	struct vpipe_ioc_op op;
	int r;

	memset(&op, 0, sizeof(op));
	op.op = opc;
	op.handle = VPIPE_NO_HANDLE;
	op.in_fd = *in;
	op.out_fd = *out;
	op.out_offset = out_off;
	op.length = len;
	op.new_in_fd = op.new_out_fd = -1;
	r = ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0;
	if (op.new_in_fd >= 0) {
		dup3(op.new_in_fd, *in, O_CLOEXEC);
		close(op.new_in_fd);
	}
	if (op.new_out_fd >= 0) {
		dup3(op.new_out_fd, *out, O_CLOEXEC);
		close(op.new_out_fd);
	}
	printf("     sock op %u len %llu: r=%d moved=%llu offloaded=%llu guest=%llu requests=%u new_in=%d new_out=%d\n",
	       opc, (unsigned long long)len, r, (unsigned long long)op.moved,
	       (unsigned long long)op.offloaded, (unsigned long long)op.guest_copied, op.requests,
	       op.new_in_fd, op.new_out_fd);
	*res = op;
	return r;
}

/* a and b are the two ends of one connection: bytes flow both ways */
static int talk(int a, int b, const char *tag)
{
	char buf[64];
	size_t n = strlen(tag);
	ssize_t r;

	if (send(a, tag, n, 0) != (ssize_t)n)
		return -1;
	r = recv(b, buf, sizeof(buf), 0);
	if (r != (ssize_t)n || memcmp(buf, tag, n))
		return -1;
	if (send(b, tag, n, 0) != (ssize_t)n)
		return -1;
	r = recv(a, buf, sizeof(buf), 0);
	return r == (ssize_t)n && !memcmp(buf, tag, n) ? 0 : -1;
}

/* The stand-in engine answers socket requests -EOPNOTSUPP without taking the connections
 * over: the module must freeze the sockets WITH their queues, carry them in the request, and
 * give every socket back restored from its own frozen state, as a new descriptor -- the
 * connections keep working and nothing queued is lost. */
static void socket_checks(void)
{
	struct vpipe_ioc_op op;
	int c = -1, sv = -1, c2 = -1, sv2 = -1;
	char *data = malloc(10000), *got, buf[4000];
	size_t n;

	fill(data, 10000, 42);
	CHECK(tcp_pair("10.9.9.1", &c, &sv) == 0 && tcp_pair("10.9.9.1", &c2, &sv2) == 0,
	      "TCP pairs on 10.9.9.1");
	/* the VM's ends are the servers (sv, sv2, on 10.9.9.1, the engine's identity); c and c2
	 * are their peers */
	/* a.-c.: the stand-in engine refuses socket requests (as an engine without shadow sockets
	 * does): each connection must come back to the guest intact */
	struct vpipe_dbg_script refuse = { 1 /* ANS_STATUS */, EOPNOTSUPP, 0 }, ok = { 0, 0, 0 };
	CHECK(ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &refuse) == 0, "engine script: refuse socket requests");
	/* a. unread bytes at the source travel with it: refused, they come back unread */
	CHECK(send(c, data, 3000, 0) == 3000, "3000 bytes queued at the source");
	usleep(100000);
	int f = open("/mnt/s2f.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	int r = sock_op(VPIPE_IOC_SOCKET_TO_FILE, &sv, &f, 0, 10000, &op);
	CHECK(r == -EOPNOTSUPP && op.moved == 0 && op.guest_copied == 0 && op.requests == 1 &&
		      op.new_in_fd >= 0,
	      "socket->file refused by the engine: EOPNOTSUPP, source restored as fd %d", op.new_in_fd);
	close(f);
	got = slurp("/mnt/s2f.bin", &n);
	CHECK(got && n == 0, "s2f.bin: nothing written, prepared blocks given back (size %zu)", n);
	free(got);
	CHECK(recv(sv, buf, 3000, MSG_WAITALL) == 3000 && !memcmp(buf, data, 3000),
	      "the 3000 unread bytes are still queued, byte-exact");
	CHECK(talk(c, sv, "after-a") == 0, "restored source connection usable");

	/* b. file -> socket refused by dom0, with unsent bytes of the application queued */
	r = sock_op(VPIPE_IOC_FILE_TO_SOCKET, &(int){ open("/mnt/big.bin", O_RDONLY) }, &sv, 0, 100000, &op);
	close(op.in_fd);
	CHECK(r == -EOPNOTSUPP && op.moved == 0 && op.requests == 1 && op.new_out_fd >= 0,
	      "file->socket refused by the engine: EOPNOTSUPP, destination restored as fd %d",
	      op.new_out_fd);
	CHECK(talk(c, sv, "after-b") == 0, "restored destination connection usable");

	/* b2. file -> socket's whole-range cache rule at its boundary: at least 7 eighths of the
	 * pages cached and clean and the guest sends them itself (-EALREADY before any hand-over,
	 * the socket untouched); fewer and dom0 gets the request (refused here: -EOPNOTSUPP). big.bin
	 * is 5000000 B, 1221 pages: up to 1221 - ceil(1221 * 7 / 8) = 152 may be missing. Gaps at
	 * the start and at the end: the walk visits present pages only and must count both. */
	{
		static const struct { off_t from, len; int want; const char *what; } gaps[] = {
			{ 0, 152, -EALREADY, "152 of 1221 pages missing at the start" },
			{ 0, 153, -EOPNOTSUPP, "153 missing at the start" },
			{ 1068, 0, -EOPNOTSUPP, "153 missing at the end" },
			{ 1069, 0, -EALREADY, "152 missing at the end" },
		};
		int bf = open("/mnt/big.bin", O_RDONLY | O_CLOEXEC);

		CHECK(bf >= 0 && fsync(bf) == 0, "big.bin clean");
		for (size_t i = 0; i < sizeof(gaps) / sizeof(gaps[0]); i++) {
			free(slurp("/mnt/big.bin", &n));
			CHECK(posix_fadvise(bf, gaps[i].from * 4096, gaps[i].len * 4096, POSIX_FADV_DONTNEED) == 0,
			      "evicted pages %lld +%lld", (long long)gaps[i].from, (long long)gaps[i].len);
			r = sock_op(VPIPE_IOC_FILE_TO_SOCKET, &bf, &sv, 0, 5000000, &op);
			CHECK(r == gaps[i].want && op.moved == 0 &&
				      op.requests == (gaps[i].want == -EALREADY ? 0u : 1u) &&
				      (gaps[i].want == -EALREADY) == (op.new_out_fd < 0) && talk(c, sv, "after-b2") == 0,
			      "cache rule, %s: %s, %u request(s), the socket usable", gaps[i].what, strerror(-r),
			      op.requests);
		}
		close(bf);
	}

	/* c. socket -> socket: both frozen, both restored; unread bytes of the destination too */
	CHECK(send(c2, data, 700, 0) == 700, "700 bytes unread at the destination");
	usleep(100000);
	r = sock_op(VPIPE_IOC_SOCKET_TO_SOCKET, &sv, &sv2, 0, 100000, &op);
	CHECK(r == -EOPNOTSUPP && op.moved == 0 && op.requests == 1 && op.new_in_fd >= 0 &&
		      op.new_out_fd >= 0,
	      "socket->socket refused by the engine: both restored");
	CHECK(recv(sv2, buf, 700, MSG_WAITALL) == 700 && !memcmp(buf, data, 700),
	      "the destination's 700 unread bytes are still queued");
	CHECK(talk(c, sv, "after-c1") == 0 && talk(c2, sv2, "after-c2") == 0,
	      "both connections usable");

	/* d. a source whose peer closed: what is queued is copied locally, then EOF */
	CHECK(ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &ok) == 0, "engine script: answer normally again");
	CHECK(send(c, data, 500, 0) == 500 && shutdown(c, SHUT_WR) == 0, "500 bytes then FIN");
	usleep(100000);
	f = open("/mnt/s2f3.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	r = sock_op(VPIPE_IOC_SOCKET_TO_FILE, &sv, &f, 0, 10000, &op);
	CHECK(r == 0 && op.moved == 500 && op.guest_copied == 500 && op.requests == 0,
	      "peer closed: 500 bytes copied locally");
	r = sock_op(VPIPE_IOC_SOCKET_TO_FILE, &sv, &f, 500, 10000, &op);
	CHECK(r == 0 && op.moved == 0, "then 0 (EOF)");
	close(f);
	got = slurp("/mnt/s2f3.bin", &n);
	CHECK(got && n == 500 && !memcmp(got, data, 500), "s2f3.bin byte-exact");
	free(got);
	int fds[] = { c, sv, c2, sv2 };
	for (size_t i = 0; i < 4; i++)
		close(fds[i]);
	free(data);
}


static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* requests in flight together, and a process killed while dom0 works for it */
static void async_checks(size_t nb, const char *big)
{
	struct vpipe_ioc_op op;
	size_t nc;
	char *c;

	/* 5 requests of 1 MiB, each answered 300 ms later: they overlap in the slots */
	set_param("chunk_mib", "1");
	set_param("test_engine_delay_ms", "300");
	double t0 = now_s();
	int r = f2f("/mnt/big.bin", "/mnt/copy9.bin", 0, 0, nb, 0, &op, 1);
	double dt = now_s() - t0;
	CHECK(r == 0 && op.moved == nb && op.requests == 5 && dt < 1.2,
	      "5 requests in flight together: %.2f s (serial would be >= 1.5 s)", dt);
	c = slurp("/mnt/copy9.bin", &nc);
	CHECK(c && nc == nb && !memcmp(c, big, nb), "copy9.bin byte-exact");
	free(c);
	set_param("chunk_mib", "64");

	/* SIGKILL while the engine works: the process exits only after the answer */
	set_param("test_engine_delay_ms", "2000");
	pid_t pid = fork();
	if (pid == 0) {
		f2f("/mnt/big.bin", "/mnt/copy10.bin", 0, 0, nb, 0, &op, 1);
		_exit(0);
	}
	usleep(700000);
	t0 = now_s();
	kill(pid, SIGKILL);
	int st = 0;
	waitpid(pid, &st, 0);
	dt = now_s() - t0;
	CHECK(WIFSIGNALED(st) && dt > 0.8,
	      "killed during the request: exited %.2f s after SIGKILL, once the engine answered", dt);
	set_param("test_engine_delay_ms", "0");
	int fd = open("/mnt/big.bin", O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, big, 10, 0) == 10, "the killed process's hold is released");
	close(fd);
	c = slurp("/mnt/copy10.bin", &nc);
	CHECK(c && nc == nb && !memcmp(c, big, nb),
	      "copy10.bin complete and byte-exact (the operation finished for the dead process)");
	free(c);
}

/* polls a condition the module reaches on its own (a reconnect, a request posted) */
static int until(int (*cond)(void *), void *arg, double max_s)
{
	double t0 = now_s();

	while (!cond(arg)) {
		if (now_s() - t0 > max_s)
			return -1;
		usleep(5000);
	}
	return 0;
}

static int is_connected(void *arg __attribute__((unused)))
{
	struct vpipe_ioc_stats s;

	return stats(&s) == 0 && s.engine_connected == 1;
}

static int posted_since(void *arg)
{
	struct vpipe_ioc_stats s;

	return stats(&s) == 0 && s.ring_requests > *(uint64_t *)arg;
}

/* file -> socket of [0, len) of path, the cache rule off (the file is cached by now) */
static int f2s(const char *path, int *sock, uint64_t len, struct vpipe_ioc_op *res)
{
	int in = open(path, O_RDONLY | O_CLOEXEC), r;
	struct vpipe_ioc_op op;

	memset(&op, 0, sizeof(op));
	op.op = VPIPE_IOC_FILE_TO_SOCKET;
	op.handle = VPIPE_NO_HANDLE;
	op.in_fd = in;
	op.out_fd = *sock;
	op.length = len;
	op.flags = VPIPE_OPF_NO_CACHE_RULE;
	op.new_in_fd = op.new_out_fd = -1;
	r = ioctl(dev, VPIPE_IOC_OP, &op) < 0 ? -errno : 0;
	if (op.new_out_fd >= 0) {
		dup3(op.new_out_fd, *sock, O_CLOEXEC);
		close(op.new_out_fd);
	}
	close(in);
	printf("     f2s %s len %llu: r=%d moved=%llu requests=%u new_out=%d\n", path,
	       (unsigned long long)len, r, (unsigned long long)op.moved, op.requests, op.new_out_fd);
	*res = op;
	return r;
}

static long file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* An engine that stops answering (test_engine_withhold: it takes requests, NOPs too, and never
 * answers) is declared unresponsive after request_timeout_ms: the channel is torn down and
 * reconnected, what was in flight fails as when the engine dies (docs/faults.md), a killed
 * caller exits, nothing stays held. An engine that is slow but alive (answers the watchdog's
 * NOPs) is not cut short. */
static void timeout_checks(size_t nb, const char *big)
{
	const double T = 1.0, slack = 2.0;   /* request_timeout_ms=1000; TCG is slow */
	struct vpipe_ioc_stats s0, s1;
	struct vpipe_ioc_op op;
	uint64_t posted;
	size_t nc;
	char *c;
	int fd, st = 0, cl = -1, sv = -1;

	CHECK(set_param("request_timeout_ms", "1000") == 0 && set_param("test_engine_withhold", "Y") == 0,
	      "request_timeout_ms=1000, the stand-in engine withholds its answers");
	CHECK(stats(&s0) == 0, "STATS before");

	/* 1. a caller: the channel's error within the bound, the destination unchanged */
	double t0 = now_s();
	int r = f2f("/mnt/big.bin", "/mnt/copy11.bin", 0, 0, nb, 0, &op, 1);
	double dt = now_s() - t0;
	CHECK(r == -ECANCELED && op.moved == 0 && dt >= 0.9 * T && dt <= T + slack,
	      "unanswered file->file: -ECANCELED after %.2f s (bound %.1f s)", dt, T);
	CHECK(file_size("/mnt/copy11.bin") == 0, "copy11.bin keeps its old size (0)");
	fd = open("/mnt/big.bin", O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, big, 10, 0) == 10, "the source's hold is released");
	close(fd);
	CHECK(until(is_connected, NULL, 5) == 0, "the stand-in engine is connected again");

	/* 2. a caller SIGKILLed while its request is unanswered exits within the bound */
	CHECK(stats(&s1) == 0, "STATS");
	posted = s1.ring_requests;
	pid_t pid = fork();
	if (pid == 0) {
		f2f("/mnt/big.bin", "/mnt/copy12.bin", 0, 0, nb, 0, &op, 1);
		_exit(0);
	}
	CHECK(until(posted_since, &posted, 10) == 0, "the child's request is posted");
	t0 = now_s();
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	dt = now_s() - t0;
	CHECK(WIFSIGNALED(st) && dt <= T + slack, "SIGKILLed caller exited %.2f s after the kill (bound %.1f s)", dt, T);
	fd = open("/mnt/big.bin", O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, big, 10, 0) == 10, "the killed caller's hold is released");
	close(fd);
	CHECK(file_size("/mnt/copy12.bin") == 0, "copy12.bin keeps its old size (0)");
	CHECK(until(is_connected, NULL, 5) == 0, "connected again");

	/* 3. a socket whose state is unknown (dom0 may have taken it): ECONNABORTED, reset */
	CHECK(tcp_pair("10.9.9.1", &cl, &sv) == 0, "TCP pair on 10.9.9.1");
	t0 = now_s();
	r = f2s("/mnt/big.bin", &sv, 100000, &op);
	dt = now_s() - t0;
	CHECK(r == -ECONNABORTED && op.new_out_fd >= 0 && dt <= T + slack,
	      "unanswered file->socket: -ECONNABORTED after %.2f s, the socket replaced", dt);
	errno = 0;
	CHECK(send(sv, "x", 1, MSG_NOSIGNAL) < 0 && (errno == ECONNRESET || errno == EPIPE),
	      "the replaced socket is reset (send: %s)", strerror(errno));
	CHECK(stats(&s1) == 0 && s1.engine_timeouts - s0.engine_timeouts == 3 &&
		      s1.ops_failed - s0.ops_failed == 3,
	      "STATS: engine_timeouts +%llu, failed +%llu (the three unanswered operations)",
	      (unsigned long long)(s1.engine_timeouts - s0.engine_timeouts),
	      (unsigned long long)(s1.ops_failed - s0.ops_failed));
	close(cl);
	close(sv);

	/* 4. slow but alive: a socket request answered after 2.5 timeouts is not cut short (the
	 * engine answers the watchdog's NOPs); the refused hand-over gives the socket back intact */
	struct vpipe_dbg_script refuse = { 1 /* ANS_STATUS */, EOPNOTSUPP, 0 }, ok = { 0, 0, 0 };
	CHECK(set_param("test_engine_withhold", "N") == 0 && set_param("test_engine_delay_ms", "2500") == 0 &&
		      ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &refuse) == 0 && until(is_connected, NULL, 5) == 0,
	      "engine answers again, 2.5 s late, refusing socket requests");
	CHECK(tcp_pair("10.9.9.1", &cl, &sv) == 0, "TCP pair on 10.9.9.1");
	t0 = now_s();
	r = f2s("/mnt/big.bin", &sv, 100000, &op);
	dt = now_s() - t0;
	CHECK(r == -EOPNOTSUPP && dt >= 2.4, "slow engine: its own answer (-EOPNOTSUPP) after %.2f s", dt);
	CHECK(talk(sv, cl, "after a slow answer") == 0, "the socket still carries data both ways");
	CHECK(stats(&s0) == 0 && s0.engine_timeouts == s1.engine_timeouts, "STATS: no timeout for a slow engine");
	close(cl);
	close(sv);

	/* 5. the next operation goes through */
	CHECK(set_param("test_engine_delay_ms", "0") == 0 && ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &ok) == 0 &&
		      until(is_connected, NULL, 5) == 0, "engine script: ok");
	CHECK(f2f("/mnt/big.bin", "/mnt/copy13.bin", 0, 0, nb, 0, &op, 1) == 0 && op.moved == nb,
	      "file->file after the reconnects");
	c = slurp("/mnt/copy13.bin", &nc);
	CHECK(c && nc == nb && !memcmp(c, big, nb), "copy13.bin byte-exact");
	free(c);
	set_param("request_timeout_ms", "60000");
}

/* ---- asynchronous operations (VPIPE_IOC_SUBMIT / CANCEL, read(), poll(): vpipe_async.c) ---- */

static int submit(int q, uint64_t tag, uint32_t opc, int in, int out, uint64_t len)
{
	struct vpipe_ioc_submit s;

	memset(&s, 0, sizeof(s));
	s.tag = tag;
	s.op.op = opc;
	s.op.handle = VPIPE_NO_HANDLE;
	s.op.in_fd = in;
	s.op.out_fd = out;
	s.op.length = len;
	s.op.flags = VPIPE_OPF_NO_CACHE_RULE;
	return ioctl(q, VPIPE_IOC_SUBMIT, &s) < 0 ? -errno : 0;
}

/* waits (poll) for the queue's next completion: 0, or -1 when none came within max_ms */
static int next_completion(int q, struct vpipe_ioc_completion *c, int max_ms)
{
	struct pollfd p = { q, POLLIN, 0 };

	if (poll(&p, 1, max_ms) != 1 || !(p.revents & POLLIN))
		return -1;
	if (read(q, c, sizeof(*c)) != (ssize_t)sizeof(*c))
		return -1;
	printf("     completion tag %llu: result %d moved %llu requests %u new_in %d new_out %d\n",
	       (unsigned long long)c->tag, c->result, (unsigned long long)c->op.moved, c->op.requests,
	       c->op.new_in_fd, c->op.new_out_fd);
	return 0;
}

/* a held source is immutable: opening it for writing fails (EPERM) until the hold ends */
static int is_writable(void *path)
{
	int fd = open(path, O_WRONLY);

	if (fd >= 0)
		close(fd);
	return fd >= 0;
}

struct stats_goal {
	struct vpipe_ioc_stats base;
	uint64_t ops1, failed;
};

static int stats_reached(void *arg)
{
	struct stats_goal *g = arg;
	struct vpipe_ioc_stats s;

	return stats(&s) == 0 && s.ops[1] - g->base.ops[1] >= g->ops1 &&
	       s.ops_failed - g->base.ops_failed >= g->failed;
}

/* Each open of /dev/vpipe is a queue: a submit returns while the engine still works, the
 * completion is read when poll() says so, restored sockets arrive as descriptors of the
 * reader, a cancel stops a copy between its stages with an exact prefix, closing the queue
 * with an operation in flight releases everything. */
static void kasync_checks(size_t nb, const char *big)
{
	struct vpipe_ioc_completion c, cs[2];
	struct vpipe_ioc_stats s0, s1;
	struct pollfd p;
	int q = open("/dev/vpipe", O_RDWR | O_CLOEXEC | O_NONBLOCK), in, out, cl = -1, sv = -1, r;
	const size_t big_n = 40u << 20;   /* three 16 MiB stages */
	size_t nc;
	char *buf, *got;

	CHECK(q >= 0 && stats(&s0) == 0, "a queue: an open of /dev/vpipe");
	/* the copies of the other checks make room for a 40 MiB source and its copy */
	for (int i = 1; i <= 13; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/mnt/copy%d.bin", i);
		unlink(path);
	}
	errno = 0;
	CHECK(read(q, &c, sizeof(c)) < 0 && errno == EAGAIN, "nothing waiting: read EAGAIN");
	CHECK(read(q, &c, sizeof(c) - 1) < 0 && errno == EINVAL, "a buffer shorter than a record: EINVAL");
	p = (struct pollfd){ q, POLLIN, 0 };
	CHECK(poll(&p, 1, 0) == 0, "nothing waiting: poll reports nothing");
	CHECK(submit(q, 1, 99, 0, 1, 10) == -EINVAL, "a bad operation is refused at submit: EINVAL");
	CHECK(submit(q, 1, VPIPE_IOC_FILE_TO_FILE, 1000, 1001, 10) == -EBADF, "closed descriptors: EBADF");

	/* 1. file -> file: the submit returns while dom0 (2 s late) has not answered */
	CHECK(set_param("test_engine_delay_ms", "2000") == 0, "the engine answers 2 s late");
	in = open("/mnt/big.bin", O_RDONLY | O_CLOEXEC);
	out = open("/mnt/acopy1.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	r = submit(q, 7, VPIPE_IOC_FILE_TO_FILE, in, out, nb);
	errno = 0;
	CHECK(r == 0 && read(q, &c, sizeof(c)) < 0 && errno == EAGAIN,
	      "submit accepted (%d) and returned before the answer (read: EAGAIN)", r);
	CHECK(submit(q, 7, VPIPE_IOC_FILE_TO_FILE, in, out, nb) == -EEXIST, "the same tag again: EEXIST");
	CHECK(ioctl(q, VPIPE_IOC_CANCEL, &(uint64_t){ 99 }) < 0 && errno == ENOENT, "cancel of an unknown tag: ENOENT");
	close(in);
	close(out);   /* the operation holds its own references */
	CHECK(next_completion(q, &c, 30000) == 0 && c.tag == 7 && c.result == 0 && c.op.moved == nb &&
		      c.op.offloaded == nb && c.op.new_in_fd == -1 && c.op.new_out_fd == -1,
	      "completion 7: the whole copy, offloaded");
	got = slurp("/mnt/acopy1.bin", &nc);
	CHECK(got && nc == nb && !memcmp(got, big, nb), "acopy1.bin byte-exact");
	free(got);
	unlink("/mnt/acopy1.bin");
	CHECK(is_writable("/mnt/big.bin"), "the source's hold is released");

	/* 2. a socket comes back through the completion, as a descriptor of the reader */
	struct vpipe_dbg_script refuse = { 1 /* ANS_STATUS */, EOPNOTSUPP, 0 }, ok = { 0, 0, 0 };
	CHECK(set_param("test_engine_delay_ms", "0") == 0 && ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &refuse) == 0,
	      "engine script: refuse socket requests");
	CHECK(tcp_pair("10.9.9.1", &cl, &sv) == 0, "TCP pair on 10.9.9.1");
	in = open("/mnt/big.bin", O_RDONLY | O_CLOEXEC);
	r = submit(q, 8, VPIPE_IOC_FILE_TO_SOCKET, in, sv, 100000);
	close(in);
	CHECK(r == 0 && next_completion(q, &c, 30000) == 0 && c.tag == 8 && c.result == -EOPNOTSUPP &&
		      c.op.moved == 0 && c.op.new_out_fd >= 0 && fcntl(c.op.new_out_fd, F_GETFD) == FD_CLOEXEC,
	      "completion 8: refused, the socket restored as our fd %d (O_CLOEXEC)", c.op.new_out_fd);
	if (c.op.new_out_fd >= 0) {
		dup3(c.op.new_out_fd, sv, O_CLOEXEC);
		close(c.op.new_out_fd);
	}
	CHECK(talk(cl, sv, "after an async hand-over") == 0, "the restored connection carries data both ways");
	close(cl);
	close(sv);
	CHECK(ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &ok) == 0, "engine script: ok");

	/* 3. cancel between stages: the copy stops with an exact prefix */
	buf = malloc(big_n);
	fill(buf, big_n, 77);
	in = open("/mnt/big40.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(in >= 0 && write(in, buf, big_n) == (ssize_t)big_n && fsync(in) == 0, "big40.bin: 40 MiB written");
	close(in);
	drop_caches();
	uint64_t posted;
	CHECK(stats(&s1) == 0 && set_param("chunk_mib", "16") == 0 && set_param("test_engine_delay_ms", "3000") == 0,
	      "16 MiB stages, answers 3 s late");
	posted = s1.ring_requests + 1;   /* two stages go to dom0 before the first answer */
	in = open("/mnt/big40.bin", O_RDONLY | O_CLOEXEC);
	out = open("/mnt/acopy2.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	r = submit(q, 9, VPIPE_IOC_FILE_TO_FILE, in, out, big_n);
	close(in);
	close(out);
	CHECK(r == 0 && until(posted_since, &posted, 20) == 0, "submitted; two stages with dom0");
	CHECK(ioctl(q, VPIPE_IOC_CANCEL, &(uint64_t){ 9 }) == 0, "cancel 9: asked");
	CHECK(next_completion(q, &c, 60000) == 0 && c.tag == 9 && c.result == -ECANCELED &&
		      c.op.moved > 0 && c.op.moved < big_n && c.op.moved % (16u << 20) == 0,
	      "completion 9: -ECANCELED after %llu bytes (whole stages)", (unsigned long long)c.op.moved);
	got = slurp("/mnt/acopy2.bin", &nc);
	CHECK(got && nc == c.op.moved && !memcmp(got, buf, nc), "acopy2.bin: exactly that prefix (%zu bytes)", nc);
	free(got);
	unlink("/mnt/acopy2.bin");
	CHECK(is_writable("/mnt/big40.bin"), "the source's hold is released");

	/* 4. two at once, read in one call */
	CHECK(set_param("test_engine_delay_ms", "500") == 0, "answers 0.5 s late");
	for (uint64_t t = 10; t <= 11; t++) {
		char path[64];
		snprintf(path, sizeof(path), "/mnt/acopy%llu.bin", (unsigned long long)t);
		in = open("/mnt/big.bin", O_RDONLY | O_CLOEXEC);
		out = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		CHECK(submit(q, t, VPIPE_IOC_FILE_TO_FILE, in, out, nb) == 0, "submit %llu", (unsigned long long)t);
		close(in);
		close(out);
	}
	double t0 = now_s();
	ssize_t n = 0;
	while (n < (ssize_t)sizeof(cs) && now_s() - t0 < 30) {
		p = (struct pollfd){ q, POLLIN, 0 };
		if (poll(&p, 1, 1000) == 1) {
			ssize_t m = read(q, (char *)cs + n, sizeof(cs) - n);
			if (m > 0)
				n += m;
		}
	}
	CHECK(n == (ssize_t)sizeof(cs) && cs[0].result == 0 && cs[1].result == 0 && cs[0].op.moved == nb &&
		      cs[1].op.moved == nb && cs[0].tag + cs[1].tag == 21,
	      "both completions read (%zd bytes)", n);
	unlink("/mnt/acopy10.bin");
	unlink("/mnt/acopy11.bin");

	/* 5. closing the queue with an operation in flight: it is cancelled, nothing stays held */
	in = open("/mnt/big40.bin", O_RDONLY | O_CLOEXEC);
	out = open("/mnt/acopy3.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(stats(&s1) == 0 && submit(q, 12, VPIPE_IOC_FILE_TO_FILE, in, out, big_n) == 0, "submit 12");
	close(in);
	close(out);
	posted = s1.ring_requests;
	CHECK(until(posted_since, &posted, 20) == 0, "12 is with dom0");
	close(q);
	CHECK(until(is_writable, "/mnt/big40.bin", 30) == 0, "queue closed: the source's hold is released");
	got = slurp("/mnt/acopy3.bin", &nc);
	CHECK(got && nc < big_n && !memcmp(got, buf, nc), "acopy3.bin: a prefix (%zu bytes)", nc);
	free(got);
	unlink("/mnt/acopy3.bin");
	unlink("/mnt/big40.bin");
	free(buf);
	set_param("test_engine_delay_ms", "0");
	set_param("chunk_mib", "64");
	/* the worker counts after it let go of the source: wait for the count, then check it */
	struct stats_goal goal = { s0, 3, 3 };
	CHECK(until(stats_reached, &goal, 10) == 0 && stats(&s1) == 0 && s1.ops[1] - s0.ops[1] == 3 &&
		      s1.ops_failed - s0.ops_failed == 3,
	      "STATS: ops[1] +%llu (7, 10, 11), failed +%llu (8, 9, 12)",
	      (unsigned long long)(s1.ops[1] - s0.ops[1]), (unsigned long long)(s1.ops_failed - s0.ops_failed));
}

static void engine_checks(void)
{
	struct vpipe_ioc_stats s0, s1;
	struct vpipe_ioc_op op;
	size_t nb = 0, nc = 0, n2 = 0;
	char *big, *c;

	CHECK(stats(&s0) == 0 && s0.engine_connected == 1, "STATS: the stand-in engine is connected");
	big = slurp("/mnt/big.bin", &nb);
	CHECK(big && nb == 5000000, "big.bin read (%zu bytes)", nb);
	drop_caches();

	/* 1. a whole file into a new one */
	CHECK(f2f("/mnt/big.bin", "/mnt/copy1.bin", 0, 0, nb, 0, &op, 1) == 0 && op.moved == nb &&
		      op.offloaded == nb && op.guest_copied == 0 && op.requests >= 1 &&
		      (op.paths & VPIPE_PATH_OFFLOAD) && op.zero_filled >= nb,
	      "file->file into a new file: moved %llu, zero-filled %llu",
	      (unsigned long long)op.moved, (unsigned long long)op.zero_filled);
	c = slurp("/mnt/copy1.bin", &nc);
	CHECK(c && nc == nb && !memcmp(c, big, nb), "copy1.bin byte-exact (%zu bytes)", nc);
	free(c);

	/* 2. a length past EOF: short count */
	CHECK(f2f("/mnt/big.bin", "/mnt/copy2.bin", 1000000, 0, 10 << 20, 0, &op, 1) == 0 &&
		      op.moved == nb - 1000000,
	      "length past EOF: short count %llu", (unsigned long long)op.moved);
	c = slurp("/mnt/copy2.bin", &nc);
	CHECK(c && nc == nb - 1000000 && !memcmp(c, big + 1000000, nc), "copy2.bin byte-exact");
	free(c);

	/* 3. unaligned offsets and length inside an existing file: the rest stays */
	int fd = open("/mnt/copy3.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write_at(fd, 7, 4 << 20, 0) == 0 && fsync(fd) == 0, "copy3.bin: 4 MiB pattern");
	close(fd);
	char *pat = malloc(4 << 20);
	fill(pat, 4 << 20, 7);
	CHECK(f2f("/mnt/big.bin", "/mnt/copy3.bin", 12345, 777, 3000001, 0, &op, 0) == 0 &&
		      op.moved == 3000001 && op.zero_filled == 0,
	      "unaligned overwrite inside a file: moved %llu, zero-filled %llu",
	      (unsigned long long)op.moved, (unsigned long long)op.zero_filled);
	c = slurp("/mnt/copy3.bin", &nc);
	CHECK(c && nc == (4 << 20) && !memcmp(c, pat, 777) &&
		      !memcmp(c + 777, big + 12345, 3000001) &&
		      !memcmp(c + 777 + 3000001, pat + 777 + 3000001, (4 << 20) - 777 - 3000001),
	      "copy3.bin: head and tail intact, middle byte-exact");
	free(c);

	/* 4. holes and unwritten extents read as zeros */
	char *sp = slurp("/mnt/sparse.bin", &n2);
	CHECK(f2f("/mnt/sparse.bin", "/mnt/copy4.bin", 0, 0, n2, 0, &op, 1) == 0 && op.moved == n2,
	      "sparse source");
	c = slurp("/mnt/copy4.bin", &nc);
	CHECK(c && sp && nc == n2 && !memcmp(c, sp, n2), "copy4.bin byte-exact (holes as zeros)");
	free(c);
	free(sp);
	sp = slurp("/mnt/mixed.bin", &n2);
	CHECK(f2f("/mnt/mixed.bin", "/mnt/copy5.bin", 0, 0, n2, 0, &op, 1) == 0 && op.moved == n2,
	      "source with an unwritten extent");
	c = slurp("/mnt/copy5.bin", &nc);
	CHECK(c && sp && nc == n2 && !memcmp(c, sp, n2), "copy5.bin byte-exact");
	free(c);
	free(sp);

	/* 5. one file, disjoint ranges, growing it with a gap; overlapping ranges refused */
	CHECK(f2f("/mnt/copy1.bin", "/mnt/copy1.bin", 0, 6 << 20, 1 << 20, 0, &op, 0) == 0 &&
		      op.moved == (1 << 20),
	      "same file, disjoint ranges, past EOF");
	c = slurp("/mnt/copy1.bin", &nc);
	int gap0 = 1;
	for (size_t i = nb; c && i < (6u << 20); i++)
		gap0 &= c[i] == 0;
	CHECK(c && nc == (7u << 20) && !memcmp(c, big, nb) && gap0 &&
		      !memcmp(c + (6 << 20), big, 1 << 20),
	      "copy1.bin: old bytes, zero gap, copied tail");
	free(c);
	expect("same file, overlapping ranges",
	       f2f("/mnt/copy1.bin", "/mnt/copy1.bin", 0, 4096, 1 << 20, 0, &op, 0), -EINVAL);

	/* 6. the cache rule: a clean cached source is served by the guest */
	CHECK(set_param("cache_rule_f2f", "Y") == 0, "cache_rule_f2f=Y");
	free(slurp("/mnt/big.bin", &nc));   /* now cached and clean */
	CHECK(f2f("/mnt/big.bin", "/mnt/copy6.bin", 0, 0, nb, 0, &op, 1) == 0 && op.moved == nb &&
		      op.guest_copied == nb && op.offloaded == 0 && (op.paths & VPIPE_PATH_GUEST_CACHE),
	      "cache rule: guest copied %llu", (unsigned long long)op.guest_copied);
	c = slurp("/mnt/copy6.bin", &nc);
	CHECK(c && nc == nb && !memcmp(c, big, nb), "copy6.bin byte-exact");
	free(c);
	CHECK(f2f("/mnt/big.bin", "/mnt/copy7.bin", 0, 0, nb, VPIPE_OPF_NO_CACHE_RULE, &op, 1) == 0 &&
		      op.offloaded == nb && op.guest_copied == 0,
	      "VPIPE_OPF_NO_CACHE_RULE: offloaded %llu", (unsigned long long)op.offloaded);
	set_param("cache_rule_f2f", "N");

	/* 7. chunking: 1 MiB per request */
	CHECK(set_param("chunk_mib", "1") == 0, "chunk_mib=1");
	CHECK(f2f("/mnt/big.bin", "/mnt/copy8.bin", 0, 0, nb, 0, &op, 1) == 0 && op.moved == nb &&
		      op.requests == 5,
	      "chunked: %u requests", op.requests);
	c = slurp("/mnt/copy8.bin", &nc);
	CHECK(c && nc == nb && !memcmp(c, big, nb), "copy8.bin byte-exact");
	free(c);
	set_param("chunk_mib", "64");

	/* 8. holds are released: the source takes writes again */
	fd = open("/mnt/big.bin", O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, big, 10, 0) == 10, "source writable after the operations");
	close(fd);

	socket_checks();
	async_checks(nb, big);
	/* failed: the three refused hand-overs, the four cache-rule boundary checks (two left to
	 * the guest, two refused) and the killed process's copy; socket -> file: the
	 * local drain and its EOF; guest copies: the cache-rule copy and the local drain */
	CHECK(stats(&s1) == 0 && s1.ops[1] - s0.ops[1] == 11 && s1.ops_failed - s0.ops_failed == 8 && s1.ops[3] - s0.ops[3] == 2 &&
		      s1.bytes_offloaded > s0.bytes_offloaded && s1.bytes_guest_cache - s0.bytes_guest_cache == nb + 500 &&
		      s1.ring_requests > s0.ring_requests && s1.bytes_zero_filled > s0.bytes_zero_filled &&
		      s1.extents_mapped > s0.extents_mapped,
	      "STATS: ops[1] +%llu, failed +%llu, offloaded %llu, guest %llu, requests %llu, zero-filled %llu",
	      (unsigned long long)(s1.ops[1] - s0.ops[1]), (unsigned long long)(s1.ops_failed - s0.ops_failed),
	      (unsigned long long)s1.bytes_offloaded, (unsigned long long)s1.bytes_guest_cache,
	      (unsigned long long)s1.ring_requests, (unsigned long long)s1.bytes_zero_filled);
	timeout_checks(nb, big);
	kasync_checks(nb, big);
	free(big);
	free(pat);
}

/* ---- the conformance corpus (tests/conformance/corpus.h) against the module ------------ */

static int cf_vm_pair(void *ctx __attribute__((unused)), int *vm, int *peer)
{
	return tcp_pair("10.9.9.1", peer, vm);
}

static int cf_lo_pair(void *ctx __attribute__((unused)), int *vm, int *peer)
{
	return tcp_pair("127.0.0.1", peer, vm);
}

static int cf_connected(void)
{
	struct vpipe_ioc_stats s;

	return stats(&s) == 0 ? (int)s.engine_connected : -1;
}

static int cf_script(void *ctx __attribute__((unused)), const struct vc_script *sc)
{
	struct vpipe_dbg_script d = { sc->ans, sc->err, sc->moved };
	int want = sc->ans != VC_ANS_DOWN, i;

	if (ioctl(dev, VPIPE_IOC_DBG_SCRIPT, &d) < 0)
		return -1;
	for (i = 0; i < 500 && cf_connected() != want; i++)
		usleep(10000);
	return cf_connected() == want ? 0 : -1;
}

#define CF_BUF (4u << 20)
static uint8_t *cf_buf;
static struct vc_req cf_reqs[64];

static int cf_requests(void *ctx __attribute__((unused)), const struct vc_req **out, int *n)
{
	struct vpipe_dbg_reqs q = { (uint64_t)(uintptr_t)cf_buf, CF_BUF, 0, 0, 0 };
	uint32_t off = 0, i;
	int k, j;

	if (ioctl(dev, VPIPE_IOC_DBG_REQS, &q) < 0 || q.lost)
		return -1;
	for (i = 0; i < q.count && i < 64; i++) {
		struct vpipe_dbg_rec rec;
		struct vc_req *r = &cf_reqs[i];

		memcpy(&rec, cf_buf + off, sizeof(rec));
		off += sizeof(rec);
		memset(r, 0, sizeof(*r));
		r->ring = rec.ring;
		r->verdict = rec.verdict;
		if (rec.stream_len >= sizeof(r->h))
			memcpy(&r->h, cf_buf + off, sizeof(r->h));
		r->segs = (struct vpipe_segment *)(cf_buf + off + sizeof(r->h));
		off += rec.stream_len;
		for (k = 0; k < 2; k++)
			for (j = 0; j < 3; j++) {
				r->carry[k][j] = cf_buf + off;
				r->carry_len[k][j] = rec.carry_len[k][j];
				off += rec.carry_len[k][j];
			}
	}
	*out = cf_reqs;
	*n = (int)q.count;
	return 0;
}

static int cf_call(void *ctx __attribute__((unused)), struct vpipe_ioc_op *op, int in, int out, const void *head,
		   const void *tail)
{
	int r;

	op->handle = VPIPE_NO_HANDLE;
	op->in_fd = in;
	op->out_fd = out;
	op->head = (uint64_t)(uintptr_t)head;
	op->tail = (uint64_t)(uintptr_t)tail;
	op->new_in_fd = op->new_out_fd = -1;
	r = ioctl(dev, VPIPE_IOC_OP, op) < 0 ? -errno : 0;
	/* as libvpipe does: restored sockets take the application's descriptor numbers */
	if (op->new_in_fd >= 0) {
		dup3(op->new_in_fd, in, O_CLOEXEC);
		close(op->new_in_fd);
	}
	if (op->new_out_fd >= 0) {
		dup3(op->new_out_fd, out, O_CLOEXEC);
		close(op->new_out_fd);
	}
	return r;
}

static void conformance(void)
{
	struct vc_env env = {
		.dir = "/mnt", .offdisk = "/tmp", .vdev = 51712, .part_off = 1 << 20,
		.vm_pair = cf_vm_pair, .lo_pair = cf_lo_pair, .script = cf_script,
		.requests = cf_requests, .call = cf_call,
	};
	size_t i;

	cf_buf = malloc(CF_BUF);
	for (i = 0; i < vc_corpus_len; i++) {
		char why[512];
		int r = vc_run(&env, &vc_corpus[i], why, sizeof(why));

		checks++;
		if (r) {
			fails++;
			printf("CONFORMANCE %s: FAIL %s\n", vc_corpus[i].name, why);
		} else {
			printf("CONFORMANCE %s: ok\n", vc_corpus[i].name);
		}
	}
	free(cf_buf);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "all";
	struct vpipe_ioc_stats s;

	setvbuf(stdout, NULL, _IOLBF, 0);
	dev = open("/dev/vpipe", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0, "open /dev/vpipe");
	if (dev < 0)
		goto out;
	CHECK(stats(&s) == 0 &&
		      s.engine_connected == (!strcmp(mode, "engine") || !strcmp(mode, "conformance")),
	      "VPIPE_IOC_STATS works, engine_connected=%llu", (unsigned long long)s.engine_connected);
	if (!strcmp(mode, "all")) {
		abi_checks();
		map_checks();
	} else if (!strcmp(mode, "engine")) {
		engine_checks();
	} else if (!strcmp(mode, "conformance")) {
		conformance();
	}
	close(dev);
out:
	printf("PROBE RESULT: %s (%d checks, %d failed)\n", fails ? "FAIL" : "PASS", checks, fails);
	return fails ? 1 : 0;
}
