/*
 * vpipe-xen-testfront: a userspace stand-in for the vpipe.ko frontend, run in a PV domU to test
 * vpiped's Xen backend on its own (docs/protocol.md 5): the xenbus handshake with a ring granted
 * through gntalloc and an event channel from /dev/xen/evtchn, NOP round trips, a request naming
 * a grant dom0 may not copy (-EINVAL), optionally a file->file copy of raw disk ranges, a ring
 * whose req_prod overflows (the backend must drop the ring and go back to InitWait), a
 * reconnect, and Closed at the end. Needs the domU modules xen-gntalloc and xen-evtchn.
 *
 * usage: vpipe-xen-testfront [--nops N] [--copy VDEV:SRC:DST:LEN] [--no-overflow] [--timeout S]
 * Prints "TESTFRONT <check> OK|FAIL (...)" lines; exit 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* first: it supplies the ring barriers Xen's headers would otherwise define as wmb()/mb() */
#include <vpipe/abi/ring.h>

#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>

static struct xs_handle *xs;
static char fe[128], be[160];
static int timeout_s = 30;
static int failures;

static void check(const char *name, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(const char *name, int ok, const char *fmt, ...)
{
	char detail[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	printf("TESTFRONT %s %s (%s)\n", name, ok ? "OK" : "FAIL", detail);
	fflush(stdout);
	if (!ok)
		failures++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *xread(const char *dir, const char *key)
{
	char path[256];
	unsigned len;
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	return xs_read(xs, XBT_NULL, path, &len);
}

static int xwrite(const char *dir, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int xwrite(const char *dir, const char *key, const char *fmt, ...)
{
	char path[256], val[64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	snprintf(path, sizeof(path), "%s/%s", dir, key);
	return xs_write(xs, XBT_NULL, path, val, strlen(val)) ? 0 : -1;
}

static int state_of(const char *dir)
{
	char *s = xread(dir, "state");
	int v = s ? atoi(s) : -1;
	free(s);
	return v;
}

/* Waits until the backend's state is `want` (or, with want < 0, anything but -want). */
static int wait_backend(int want, double *waited)
{
	double t0 = now();
	for (;;) {
		int s = state_of(be);
		if (want >= 0 ? s == want : s != -want) {
			if (waited)
				*waited = now() - t0;
			return s;
		}
		if (now() - t0 > timeout_s)
			return -1000 + s;
		usleep(20000);
	}
}

struct conn {
	xengntshr_handle *gs;
	xenevtchn_handle *xce;
	struct vpipe_sring *sring;
	void *desc;
	uint32_t ring_ref, desc_ref;
	evtchn_port_t port;
	vpipe_front_ring_t front;
	uint64_t next_id;
};

static int connect_ring(struct conn *c, double *handshake)
{
	double t0 = now();
	memset(c, 0, sizeof(*c));
	c->next_id = 1;
	c->gs = xengntshr_open(NULL, 0);
	c->xce = xenevtchn_open(NULL, 0);
	if (!c->gs || !c->xce) {
		check("open-devices", 0, "gntalloc/evtchn: %s (modprobe xen-gntalloc xen-evtchn)", strerror(errno));
		return -1;
	}
	c->sring = xengntshr_share_pages(c->gs, 0, 1, &c->ring_ref, 1);
	c->desc = xengntshr_share_pages(c->gs, 0, 1, &c->desc_ref, 1);
	if (!c->sring || !c->desc) {
		check("share-pages", 0, "%s", strerror(errno));
		return -1;
	}
	SHARED_RING_INIT(c->sring);
	FRONT_RING_INIT(&c->front, c->sring, VPIPE_PAGE_SIZE);
	int port = xenevtchn_bind_unbound_port(c->xce, 0);
	if (port < 0) {
		check("evtchn", 0, "%s", strerror(errno));
		return -1;
	}
	c->port = port;
	xwrite(fe, "ring-ref", "%u", c->ring_ref);
	xwrite(fe, "event-channel", "%u", c->port);
	xwrite(fe, "protocol-version", "%u", VPIPE_PROTOCOL_VERSION);
	xwrite(fe, "state", "3");
	int s = wait_backend(4, NULL);
	if (s != 4) {
		check("handshake", 0, "backend state %d, not Connected", s < -900 ? s + 1000 : s);
		return -1;
	}
	xwrite(fe, "state", "4");
	*handshake = now() - t0;
	return 0;
}

static void disconnect_ring(struct conn *c)
{
	if (c->xce) {
		if (c->port)
			xenevtchn_unbind(c->xce, c->port);
		xenevtchn_close(c->xce);
	}
	if (c->gs) {
		if (c->sring)
			xengntshr_unshare(c->gs, c->sring, 1);
		if (c->desc)
			xengntshr_unshare(c->gs, c->desc, 1);
		xengntshr_close(c->gs);
	}
	memset(c, 0, sizeof(*c));
}

/* Posts one request and waits for its response. 0, or -ETIMEDOUT. */
static int call(struct conn *c, struct vpipe_request *req, struct vpipe_response *rsp)
{
	int notify;
	req->id = c->next_id++;
	*RING_GET_REQUEST(&c->front, c->front.req_prod_pvt) = *req;
	c->front.req_prod_pvt++;
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&c->front, notify);
	if (notify)
		xenevtchn_notify(c->xce, c->port);
	double t0 = now();
	for (;;) {
		int more;
		RING_FINAL_CHECK_FOR_RESPONSES(&c->front, more);
		if (more) {
			*rsp = *RING_GET_RESPONSE(&c->front, c->front.rsp_cons);
			c->front.rsp_cons++;
			if (rsp->id != req->id)
				return -EPROTO;
			return 0;
		}
		struct pollfd p = {xenevtchn_fd(c->xce), POLLIN, 0};
		if (poll(&p, 1, 200) > 0) {
			int port = xenevtchn_pending(c->xce);
			if (port >= 0)
				xenevtchn_unmask(c->xce, port);
		}
		if (now() - t0 > timeout_s)
			return -ETIMEDOUT;
	}
}

static void nops(struct conn *c, int n, const char *name)
{
	struct vpipe_request req;
	struct vpipe_response rsp;
	double best = 1e9, total = 0;
	int ok = 0;
	for (int i = 0; i < n; i++) {
		memset(&req, 0, sizeof(req));
		req.op = VPIPE_OP_NOP;
		double t0 = now();
		int r = call(c, &req, &rsp);
		double dt = now() - t0;
		if (r == 0 && rsp.status == 0) {
			ok++;
			total += dt;
			if (dt < best)
				best = dt;
		} else {
			check(name, 0, "NOP %d: call %d status %d", i, r, r ? 0 : rsp.status);
			return;
		}
	}
	check(name, ok == n, "%d NOP round trips, avg %.1f us, min %.1f us", ok, total / ok * 1e6, best * 1e6);
}

static void bad_grant(struct conn *c)
{
	struct vpipe_request req;
	struct vpipe_response rsp;
	memset(&req, 0, sizeof(req));
	req.op = VPIPE_OP_FILE_TO_FILE;
	req.length = 4096;
	req.nr_pages = 1;
	req.desc_bytes = sizeof(struct vpipe_desc_header);
	req.page[0] = c->desc_ref + 100000; /* never granted */
	int r = call(c, &req, &rsp);
	check("bad-grant", r == 0 && rsp.status == -EINVAL && rsp.moved == 0,
	      "ungranted ref %u: call %d status %d", req.page[0], r, r ? 0 : rsp.status);
}

static void copy(struct conn *c, uint32_t vdev, uint64_t src, uint64_t dst, uint32_t len)
{
	struct vpipe_desc_header *h = c->desc;
	struct vpipe_segment *seg = (struct vpipe_segment *)(h + 1);
	memset(c->desc, 0, VPIPE_PAGE_SIZE);
	h->magic = VPIPE_DESC_MAGIC;
	h->version = VPIPE_PROTOCOL_VERSION;
	h->header_bytes = sizeof(*h);
	h->nr_segments = 2;
	h->src.kind = VPIPE_EP_FILE;
	h->src.vdev = vdev;
	h->src.first_segment = 0;
	h->src.nr_segments = 1;
	h->dst.kind = VPIPE_EP_FILE;
	h->dst.vdev = vdev;
	h->dst.first_segment = 1;
	h->dst.nr_segments = 1;
	seg[0].disk_offset = src;
	seg[0].length = len;
	seg[1].disk_offset = dst;
	seg[1].length = len;
	struct vpipe_request req;
	struct vpipe_response rsp;
	memset(&req, 0, sizeof(req));
	req.op = VPIPE_OP_FILE_TO_FILE;
	req.length = len;
	req.nr_pages = 1;
	req.desc_bytes = sizeof(*h) + 2 * sizeof(*seg);
	req.page[0] = c->desc_ref;
	double t0 = now();
	int r = call(c, &req, &rsp);
	double dt = now() - t0;
	check("file-to-file", r == 0 && rsp.status == 0 && rsp.moved == len,
	      "vdev %u [%" PRIu64 ",+%u) -> [%" PRIu64 ",+%u): call %d status %d moved %" PRIu64 " in %.3f s (%.1f MiB/s)",
	      vdev, src, len, dst, len, r, r ? 0 : rsp.status, r ? 0 : rsp.moved, dt, len / dt / 1048576.0);
	/* and a disk this VM does not have */
	h->src.vdev = h->dst.vdev = vdev + 1;
	r = call(c, &req, &rsp);
	check("foreign-disk", r == 0 && rsp.status == -EPERM, "vdev %u: status %d", vdev + 1, r ? 0 : rsp.status);
}

int main(int argc, char **argv)
{
	int n_nops = 200, overflow = 1;
	int have_copy = 0;
	unsigned vdev = 0;
	unsigned long long src = 0, dst = 0, len = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--nops") && i + 1 < argc)
			n_nops = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--copy") && i + 1 < argc)
			have_copy = sscanf(argv[++i], "%u:%llu:%llu:%llu", &vdev, &src, &dst, &len) == 4;
		else if (!strcmp(argv[i], "--no-overflow"))
			overflow = 0;
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			timeout_s = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: %s [--nops N] [--copy VDEV:SRC:DST:LEN] [--no-overflow] [--timeout S]\n", argv[0]);
			return 2;
		}
	}
	xs = xs_open(0);
	if (!xs) {
		perror("xs_open");
		return 1;
	}
	char *domid = xs_read(xs, XBT_NULL, "domid", NULL);
	if (!domid) {
		perror("xenstore domid");
		return 1;
	}
	snprintf(fe, sizeof(fe), "/local/domain/%s/device/vpipe/0", domid);
	free(domid);

	/* vpiped creates our device: wait for it and for its InitWait */
	double t0 = now();
	char *b;
	while (!(b = xread(fe, "backend"))) {
		if (now() - t0 > timeout_s) {
			check("device", 0, "no %s/backend after %d s: is vpiped --xen running?", fe, timeout_s);
			return 1;
		}
		usleep(50000);
	}
	snprintf(be, sizeof(be), "%s", b);
	free(b);
	double waited;
	int s = wait_backend(2, &waited);
	char *ver = xread(be, "protocol-version"), *maxp = xread(be, "max-desc-pages");
	check("device", s == 2, "%s -> %s, backend state %d, protocol-version %s, max-desc-pages %s",
	      fe, be, s, ver ? ver : "-", maxp ? maxp : "-");
	free(ver);
	free(maxp);
	if (s != 2)
		return 1;

	struct conn c;
	double hs;
	if (connect_ring(&c, &hs) < 0)
		return 1;
	check("connect", 1, "ring-ref %u event-channel %u, Connected after %.3f s", c.ring_ref, c.port, hs);
	nops(&c, n_nops, "nop");
	bad_grant(&c);
	nops(&c, 1, "nop-after-bad-grant");
	if (have_copy)
		copy(&c, vdev, src, dst, (uint32_t)len);

	if (overflow) {
		/* claim 100 requests more than the ring has: the backend must drop the ring */
		c.sring->req_prod = c.front.req_prod_pvt + 100;
		xen_wmb();
		xenevtchn_notify(c.xce, c.port);
		s = wait_backend(-4, &waited);
		check("overflow-drops-ring", s == 2, "backend state %d %.3f s after req_prod overflow", s, waited);
		/* 5d: backend left Connected -> tear down, Initialising, reconnect */
		disconnect_ring(&c);
		xwrite(fe, "state", "1");
		if (connect_ring(&c, &hs) < 0)
			return 1;
		check("reconnect", 1, "ring-ref %u event-channel %u, Connected after %.3f s", c.ring_ref, c.port, hs);
		nops(&c, 10, "nop-after-reconnect");
	}

	/* module unload: Closed; the backend unmaps and waits again */
	xwrite(fe, "state", "6");
	s = wait_backend(2, &waited);
	check("closed", s == 2, "backend state %d %.3f s after frontend Closed", s, waited);
	disconnect_ring(&c);
	printf("TESTFRONT done: %d failure(s)\n", failures);
	return failures ? 1 : 0;
}
