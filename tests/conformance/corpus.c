// SPDX-License-Identifier: MIT
/*
 * corpus.c -- the conformance corpus: the cases and the runner (see corpus.h).
 */
#define _GNU_SOURCE
#include "corpus.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define F2F VPIPE_IOC_FILE_TO_FILE
#define F2S VPIPE_IOC_FILE_TO_SOCKET
/* file -> socket cases test the offload: the cache rule (a source range wholly in the page
 * cache goes the classic path) is off, except where a case tests it */
#define NCR VPIPE_OPF_NO_CACHE_RULE
#define S2F VPIPE_IOC_SOCKET_TO_FILE
#define S2S VPIPE_IOC_SOCKET_TO_SOCKET
#define OFF VPIPE_PATH_OFFLOAD
#define GC VPIPE_PATH_GUEST_CACHE
/* destination blocks allocated: zero-fill, or FALLOC_FL_WRITE_ZEROES where the kernel and the
 * device have it (an environment's property, not a behaviour: either bit satisfies it) */
#define ALLOC 0x80000000u
#define KIB 1024ull
#define MIB (1024ull * 1024)
#define OK_ANS { VC_ANS_OK, 0, 0 }
#define NO_REQ { VC_ANS_OK, 0, 0 }
#define ST(e) { VC_ANS_STATUS, e, 0 }
#define USABLE VC_POST_SOCK_USABLE

/* name, op, src, dst, layout, src_size, dst_size, in_off, out_off, length, flags, head, tail,
 * unread, script, err, moved, paths, requests, guest, hdtr, dst_size_after, post */
const struct vc_case vc_corpus[] = {
	/* ---- descriptors and arguments: refused before anything moves (no request) ---------- */
	{ "f2f_src_socket", F2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 0, USABLE },
	{ "f2f_src_directory", F2F, VC_DIR, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 0, 0 },
	{ "f2f_src_writeonly", F2F, VC_FILE_WRONLY, VC_FILE, VC_DENSE, 8192, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EBADF, 0, 0, 0, 0, 0, 0, 0 },
	{ "f2f_dst_readonly", F2F, VC_FILE, VC_FILE_RDONLY, VC_DENSE, 8192, 100, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EBADF, 0, 0, 0, 0, 0, 100, VC_POST_DST_UNTOUCHED },
	{ "f2f_dst_append", F2F, VC_FILE, VC_FILE_APPEND, VC_DENSE, 8192, 100, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 100, VC_POST_DST_UNTOUCHED },
	{ "f2f_same_file_overlap", F2F, VC_FILE, VC_FILE_SAME, VC_DENSE, 64 * KIB, 0, 0, 4096, 8192, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, -1, 0 },
	{ "f2f_src_offdisk", F2F, VC_FILE_OFFDISK, VC_FILE, VC_DENSE, 8192, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, ENXIO, 0, 0, 0, 0, 0, 0, 0 },
	{ "f2f_dst_offdisk", F2F, VC_FILE, VC_FILE_OFFDISK, VC_DENSE, 8192, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, ENXIO, 0, 0, 0, 0, 0, -1, 0 },
	{ "f2f_head_given", F2F, VC_FILE, VC_FILE, VC_DENSE, 8192, 0, 0, 0, 4096, 0, 10, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 0, 0 },
	{ "f2f_offset_past_eof", F2F, VC_FILE, VC_FILE, VC_DENSE, 8192, 0, 9000, 0, 4096, 0, 0, 0, 0, NO_REQ, 0, 0, 0, 0, 0, 0, 0, 0 },
	{ "f2f_engine_down", F2F, VC_FILE, VC_FILE, VC_DENSE, 8192, 0, 0, 0, 4096, 0, 0, 0, 0, { VC_ANS_DOWN, 0, 0 }, EHOSTDOWN, 0, 0, 0, 0, 0, 0, VC_POST_DST_UNTOUCHED },
	{ "f2s_dst_udp", F2S, VC_FILE, VC_SOCK_UDP, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, -1, 0 },
	{ "f2s_dst_listening", F2S, VC_FILE, VC_SOCK_LISTEN, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, ENOTCONN, 0, 0, 0, 0, 0, -1, 0 },
	{ "f2s_dst_unconnected", F2S, VC_FILE, VC_SOCK_UNCONN, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, ENOTCONN, 0, 0, 0, 0, 0, -1, 0 },
	{ "f2s_dst_loopback", F2S, VC_FILE, VC_SOCK_LOOP, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, EOPNOTSUPP, 0, 0, 0, 0, 0, -1, USABLE },
	{ "f2s_dst_peer_closed", F2S, VC_FILE, VC_SOCK_PEER_FIN, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, EOPNOTSUPP, 0, 0, 0, 0, 0, -1, 0 },
	{ "f2s_src_socket", F2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, -1, USABLE },
	{ "f2s_src_offdisk", F2S, VC_FILE_OFFDISK, VC_SOCK, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, NO_REQ, ENXIO, 0, 0, 0, 0, 0, -1, USABLE },
	{ "f2s_head_too_long", F2S, VC_FILE, VC_SOCK, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, VPIPE_HDTR_MAX + 1, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, -1, USABLE },
	{ "f2s_engine_down", F2S, VC_FILE, VC_SOCK, VC_DENSE, 8192, 0, 0, 0, 4096, NCR, 0, 0, 0, { VC_ANS_DOWN, 0, 0 }, EHOSTDOWN, 0, 0, 0, 0, 0, -1, USABLE },
	{ "f2s_offset_past_eof", F2S, VC_FILE, VC_SOCK, VC_DENSE, 8192, 0, 8192, 0, 4096, NCR, 0, 0, 0, NO_REQ, 0, 0, 0, 0, 0, 0, -1, USABLE },
	{ "s2f_src_file", S2F, VC_FILE, VC_FILE, VC_DENSE, 8192, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 0, 0 },
	{ "s2f_src_udp", S2F, VC_SOCK_UDP, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 0, 0 },
	{ "s2f_dst_readonly", S2F, VC_SOCK, VC_FILE_RDONLY, 0, 0, 100, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EBADF, 0, 0, 0, 0, 0, 100, VC_POST_DST_UNTOUCHED | USABLE },
	{ "s2f_dst_append", S2F, VC_SOCK, VC_FILE_APPEND, 0, 0, 100, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 100, VC_POST_DST_UNTOUCHED | USABLE },
	{ "s2f_dst_offdisk", S2F, VC_SOCK, VC_FILE_OFFDISK, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, ENXIO, 0, 0, 0, 0, 0, -1, USABLE },
	{ "s2f_tail_given", S2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 5, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, 0, USABLE },
	{ "s2f_src_listening", S2F, VC_SOCK_LISTEN, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, ENOTCONN, 0, 0, 0, 0, 0, 0, 0 },
	{ "s2f_length_zero", S2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NO_REQ, 0, 0, 0, 0, 0, 0, 0, USABLE },
	{ "s2f_peer_closed_drains", S2F, VC_SOCK_PEER_FIN, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 500, NO_REQ, 0, 500, GC, 0, 500, 0, 500, 0 },
	{ "s2f_peer_closed_empty", S2F, VC_SOCK_PEER_FIN, VC_FILE, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, 0, 0, GC, 0, 0, 0, 0, 0 },
	{ "s2s_src_udp", S2S, VC_SOCK_UDP, VC_SOCK, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EINVAL, 0, 0, 0, 0, 0, -1, 0 },
	{ "s2s_dst_listening", S2S, VC_SOCK, VC_SOCK_LISTEN, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, ENOTCONN, 0, 0, 0, 0, 0, -1, 0 },
	{ "s2s_dst_loopback", S2S, VC_SOCK, VC_SOCK_LOOP, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EOPNOTSUPP, 0, 0, 0, 0, 0, -1, USABLE },
	{ "s2s_dst_peer_closed", S2S, VC_SOCK, VC_SOCK_PEER_FIN, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, NO_REQ, EOPNOTSUPP, 0, 0, 0, 0, 0, -1, 0 },
	{ "s2s_engine_down", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 4096, 0, 0, 0, 0, { VC_ANS_DOWN, 0, 0 }, EHOSTDOWN, 0, 0, 0, 0, 0, -1, USABLE },

	/* ---- file -> file: requests and what they name --------------------------------------- */
	{ "f2f_one_byte", F2F, VC_FILE, VC_FILE, VC_DENSE, 1, 0, 0, 0, 1, 0, 0, 0, 0, OK_ANS, 0, 1, OFF | ALLOC, 1, 0, 0, 1, VC_POST_FILE_EXACT },
	{ "f2f_block", F2F, VC_FILE, VC_FILE, VC_DENSE, 4096, 0, 0, 0, 4096, 0, 0, 0, 0, OK_ANS, 0, 4096, OFF | ALLOC, 1, 0, 0, 4096, VC_POST_FILE_EXACT },
	{ "f2f_block_minus_one", F2F, VC_FILE, VC_FILE, VC_DENSE, 4095, 0, 0, 0, 4095, 0, 0, 0, 0, OK_ANS, 0, 4095, OFF | ALLOC, 1, 0, 0, 4095, VC_POST_FILE_EXACT },
	{ "f2f_mib_plus_one", F2F, VC_FILE, VC_FILE, VC_DENSE, MIB + 1, 0, 0, 0, MIB + 1, 0, 0, 0, 0, OK_ANS, 0, MIB + 1, OFF | ALLOC, 1, 0, 0, MIB + 1, VC_POST_FILE_EXACT },
	{ "f2f_sparse_source", F2F, VC_FILE, VC_FILE, VC_SPARSE, 512 * KIB, 0, 0, 0, 512 * KIB, 0, 0, 0, 0, OK_ANS, 0, 512 * KIB, OFF | ALLOC, 1, 0, 0, 512 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_unwritten_source", F2F, VC_FILE, VC_FILE, VC_UNWRITTEN, 512 * KIB, 0, 0, 0, 512 * KIB, 0, 0, 0, 0, OK_ANS, 0, 512 * KIB, OFF | ALLOC, 1, 0, 0, 512 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_fragmented_source", F2F, VC_FILE, VC_FILE, VC_FRAG, 256 * KIB, 0, 0, 0, 256 * KIB, 0, 0, 0, 0, OK_ANS, 0, 256 * KIB, OFF | ALLOC, 1, 0, 0, 256 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_unaligned_into_existing", F2F, VC_FILE, VC_FILE, VC_DENSE, 300 * KIB, 200 * KIB, 12345, 777, 100001, 0, 0, 0, 0, OK_ANS, 0, 100001, OFF, 1, 0, 0, 200 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_append_past_eof", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 10000, 0, 10000, 64 * KIB, 0, 0, 0, 0, OK_ANS, 0, 64 * KIB, OFF | ALLOC, 1, 0, 0, 10000 + 64 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_length_past_eof", F2F, VC_FILE, VC_FILE, VC_DENSE, 100000, 0, 50000, 0, 1 * MIB, 0, 0, 0, 0, OK_ANS, 0, 50000, OFF | ALLOC, 1, 0, 0, 50000, VC_POST_FILE_EXACT },
	{ "f2f_same_file_apart", F2F, VC_FILE, VC_FILE_SAME, VC_DENSE, 256 * KIB, 0, 0, 128 * KIB, 64 * KIB, 0, 0, 0, 0, OK_ANS, 0, 64 * KIB, OFF, 1, 0, 0, 256 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_no_cache_rule_flag", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, VPIPE_OPF_NO_CACHE_RULE, 0, 0, 0, OK_ANS, 0, 64 * KIB, OFF | ALLOC, 1, 0, 0, 64 * KIB, VC_POST_FILE_EXACT },

	/* ---- file -> file: the engine's answers, right and wrong ----------------------------- */
	{ "f2f_engine_eio", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, ST(EIO), EIO, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },
	{ "f2f_engine_enospc", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, ST(ENOSPC), ENOSPC, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },
	{ "f2f_engine_erange", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, ST(ERANGE), ERANGE, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },
	{ "f2f_engine_short", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, { VC_ANS_SHORT, 0, 20000 }, 0, 20000, OFF | ALLOC, 1, 0, 0, 20000, VC_POST_FILE_EXACT },
	{ "f2f_engine_short_into_existing", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 100 * KIB, 0, 0, 64 * KIB, 0, 0, 0, 0, { VC_ANS_SHORT, 0, 30000 }, 0, 30000, OFF, 1, 0, 0, 100 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_engine_status_positive", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, { VC_ANS_BOGUS_STATUS, 0, 0 }, EIO, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },
	{ "f2f_engine_moved_too_much", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, { VC_ANS_BOGUS_MOVED, 0, 0 }, 0, 64 * KIB, OFF | ALLOC, 1, 0, 0, 64 * KIB, VC_POST_FILE_EXACT },
	{ "f2f_engine_unknown_id", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, { VC_ANS_BOGUS_ID, 0, 0 }, ECANCELED, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },
	{ "f2f_engine_rsp_prod_past", F2F, VC_FILE, VC_FILE, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, { VC_ANS_BOGUS_PROD, 0, 0 }, ECANCELED, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },

	/* ---- sockets: freeze with the queues, the request, the restore ------------------------ */
	{ "f2s_refused", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, ST(EOPNOTSUPP), EOPNOTSUPP, 0, OFF, 1, 0, 0, -1, USABLE },
	/* the cache rule: the source range is clean in the page cache (the harness wrote and
	 * synced it): no hand-over, the caller's classic path is cheaper */
	{ "f2s_cached_range", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, 0, 0, 0, 0, NO_REQ, EALREADY, 0, 0, 0, 0, 0, -1, USABLE },
	{ "f2s_echo", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, OK_ANS, 0, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_echo_moved", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_ECHO, 0, 4096 }, 0, 4096, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_echo_moved_too_much", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_ECHO, 0, 1 << 30 }, 0, 64 * KIB, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_length_past_eof", F2S, VC_FILE, VC_SOCK, VC_DENSE, 10000, 0, 4000, 0, 1 * MIB, NCR, 0, 0, 0, OK_ANS, 0, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_fragmented", F2S, VC_FILE, VC_SOCK, VC_FRAG, 256 * KIB, 0, 100, 0, 200 * KIB, NCR, 0, 0, 0, OK_ANS, 0, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_head_tail_echo", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 200, 7, 0, OK_ANS, 0, 0, OFF, 1, 0, 200, -1, USABLE | VC_POST_HEAD_ONCE },
	{ "f2s_head_refused", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 300, 0, 0, ST(EOPNOTSUPP), EOPNOTSUPP, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_unread_at_destination", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 3000, OK_ANS, 0, 0, OFF, 1, 0, 0, -1, USABLE | VC_POST_UNREAD_BACK },
	{ "f2s_reset", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_RESET, 0, 0 }, ECONNRESET, 0, OFF, 1, 0, 0, -1, VC_POST_RESET },
	{ "f2s_bad_tuple", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_BAD_TUPLE, 0, 0 }, EIO, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_queues_beyond_room", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_BIG_QUEUES, 0, 0 }, EIO, 0, OFF, 1, 0, 0, -1, USABLE },
	/* dom0 died: holding the connection (nothing can be restored), or after handing it back
	 * (what it recorded with the final state counts, although no response came) */
	{ "f2s_engine_died_holding", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_TAKEN_LOST, 0, 0 }, ECONNABORTED, 0, OFF, 1, 0, 0, -1, VC_POST_RESET },
	{ "f2s_engine_died_after_hand_back", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_VALID_LOST, 0, 4096 }, 0, 4096, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_engine_died_after_hand_back_all_moved", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, { VC_ANS_VALID_LOST, 0, 64 * KIB }, 0, 64 * KIB, OFF, 1, 0, 0, -1, USABLE },
	{ "f2s_engine_timedout", F2S, VC_FILE, VC_SOCK, VC_DENSE, 64 * KIB, 0, 0, 0, 64 * KIB, NCR, 0, 0, 0, ST(ETIMEDOUT), ETIMEDOUT, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "s2f_refused_unread_back", S2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 10000, 0, 0, 0, 3000, ST(EOPNOTSUPP), EOPNOTSUPP, 0, OFF | ALLOC, 1, 0, 0, 0, USABLE | VC_POST_UNREAD_BACK },
	{ "s2f_echo_unread_back", S2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 10000, 0, 0, 0, 2000, OK_ANS, 0, 0, OFF | ALLOC, 1, 0, 0, 0, USABLE | VC_POST_UNREAD_BACK },
	{ "s2f_echo_into_existing", S2F, VC_SOCK, VC_FILE, 0, 0, 50000, 0, 4096, 8192, 0, 0, 0, 0, OK_ANS, 0, 0, OFF, 1, 0, 0, 50000, USABLE | VC_POST_DST_UNTOUCHED },
	{ "s2f_reset", S2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 0, { VC_ANS_RESET, 0, 0 }, ECONNRESET, 0, OFF | ALLOC, 1, 0, 0, 0, 0 },
	{ "s2f_engine_unknown_id", S2F, VC_SOCK, VC_FILE, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 1000, { VC_ANS_BOGUS_ID, 0, 0 }, ECANCELED, 0, OFF | ALLOC, 1, 0, 0, 0, USABLE | VC_POST_UNREAD_BACK },
	{ "s2s_refused", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 0, ST(EOPNOTSUPP), EOPNOTSUPP, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "s2s_echo_unread_source", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 1500, OK_ANS, 0, 0, OFF, 1, 0, 0, -1, USABLE | VC_POST_UNREAD_BACK },
	{ "s2s_head_tail_echo", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 99, 3, 0, OK_ANS, 0, 0, OFF, 1, 0, 99, -1, USABLE | VC_POST_HEAD_ONCE },
	{ "s2s_reset", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 0, { VC_ANS_RESET, 0, 0 }, ECONNRESET, 0, OFF, 1, 0, 0, -1, VC_POST_RESET },
	{ "s2s_bad_tuple", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 0, { VC_ANS_BAD_TUPLE, 0, 0 }, EIO, 0, OFF, 1, 0, 0, -1, USABLE },
	{ "s2s_engine_died_holding", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 0, { VC_ANS_TAKEN_LOST, 0, 0 }, ECONNABORTED, 0, OFF, 1, 0, 0, -1, VC_POST_RESET },
	{ "s2s_rsp_prod_past", S2S, VC_SOCK, VC_SOCK, 0, 0, 0, 0, 0, 8192, 0, 0, 0, 0, { VC_ANS_BOGUS_PROD, 0, 0 }, ECANCELED, 0, OFF, 1, 0, 0, -1, USABLE },
};

const size_t vc_corpus_len = sizeof(vc_corpus) / sizeof(vc_corpus[0]);

/* ---- the runner ------------------------------------------------------------------------- */

struct run {
	const struct vc_env *env;
	const struct vc_case *c;
	char *why;
	size_t why_len;
	int failed;
	char src_path[512], dst_path[512];
	int in, out;               /* the caller's descriptors */
	int in_peer, out_peer;     /* socket peers */
	uint8_t *dst_before;
	uint64_t dst_before_len;
	struct sockaddr_in name[2], peer_name[2];   /* the socket endpoints' tuples before the call */
};

static void fail(struct run *r, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	if (r->failed++)
		return;   /* the first difference explains the case */
	va_start(ap, fmt);
	n = (size_t)vsnprintf(r->why, r->why_len, fmt, ap);
	va_end(ap);
	(void)n;
}

static uint8_t pat(unsigned seed, uint64_t i)
{
	uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed << 32);

	x ^= x >> 29;
	return (uint8_t)(x * 0xBF58476D1CE4E5B9ull >> 56);
}

static int write_pat(int fd, unsigned seed, uint64_t off, uint64_t len)
{
	uint8_t buf[65536];
	uint64_t done = 0;

	while (done < len) {
		size_t n = (size_t)(len - done < sizeof(buf) ? len - done : sizeof(buf));
		size_t i;

		for (i = 0; i < n; i++)
			buf[i] = pat(seed, off + done + i);
		if (pwrite(fd, buf, n, (off_t)(off + done)) != (ssize_t)n)
			return -1;
		done += n;
	}
	return 0;
}

/* creates the source file with its layout; returns its descriptor opened O_RDWR */
static int make_source(const char *path, int layout, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	uint64_t o;

	if (fd < 0)
		return -1;
	switch (layout) {
	case VC_SPARSE:   /* 8 KiB written, 24 KiB hole, ... */
		for (o = 0; o < size; o += 32 * KIB)
			if (write_pat(fd, 1, o, size - o < 8 * KIB ? size - o : 8 * KIB))
				goto bad;
		if (ftruncate(fd, (off_t)size))
			goto bad;
		break;
	case VC_UNWRITTEN:  /* written half, then a fallocated (unwritten) stretch, then data */
		if (write_pat(fd, 1, 0, size / 2) || fallocate(fd, 0, (off_t)(size / 2), (off_t)(size / 4)) ||
		    write_pat(fd, 1, size * 3 / 4, size - size * 3 / 4))
			goto bad;
		break;
	case VC_FRAG: {     /* 4 KiB pieces interleaved with another file, each made durable */
		char other[600];
		int of;

		snprintf(other, sizeof(other), "%s.other", path);
		of = open(other, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (of < 0)
			goto bad;
		for (o = 0; o < size; o += 4096) {
			if (write_pat(fd, 1, o, size - o < 4096 ? size - o : 4096) || fsync(fd) ||
			    write_pat(of, 9, o, 4096) || fsync(of))
				break;
		}
		close(of);
		unlink(other);
		break;
	}
	default:
		if (write_pat(fd, 1, 0, size))
			goto bad;
	}
	if (fsync(fd))
		goto bad;
	return fd;
bad:
	close(fd);
	return -1;
}

static int read_all(int fd, uint8_t *buf, size_t n, int ms)
{
	size_t got = 0;

	while (got < n) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t r;

		if (poll(&p, 1, ms) <= 0)
			return -1;
		r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/* waits until fd has n bytes queued to read */
static int wait_queued(int fd, int n)
{
	int i, q = 0;

	for (i = 0; i < 400; i++) {
		if (ioctl(fd, FIONREAD, &q) == 0 && q >= n)
			return 0;
		usleep(5000);
	}
	return -1;
}

/* waits (bounded) until the peer's FIN has reached fd: CLOSE_WAIT */
static int wait_close_wait(int fd)
{
	int i;

	for (i = 0; i < 400; i++) {
		struct tcp_info ti;
		socklen_t l = sizeof(ti);

		if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) == 0 && ti.tcpi_state == 8)
			return 0;
		usleep(5000);
	}
	return -1;
}

static int talk(int a, int b, const char *tag)
{
	uint8_t buf[64];
	size_t n = strlen(tag);

	if (send(a, tag, n, MSG_NOSIGNAL) != (ssize_t)n || read_all(b, buf, n, 3000) ||
	    memcmp(buf, tag, n))
		return -1;
	if (send(b, tag, n, MSG_NOSIGNAL) != (ssize_t)n || read_all(a, buf, n, 3000) ||
	    memcmp(buf, tag, n))
		return -1;
	return 0;
}

static int open_socket_ep(struct run *r, int kind, int *vm, int *peer)
{
	const struct vc_env *e = r->env;

	*vm = *peer = -1;
	switch (kind) {
	case VC_SOCK:
	case VC_SOCK_PEER_FIN:
		return e->vm_pair(e->ctx, vm, peer);
	case VC_SOCK_LOOP:
		return e->lo_pair(e->ctx, vm, peer);
	case VC_SOCK_UDP:
		*vm = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		return *vm < 0 ? -1 : 0;
	case VC_SOCK_LISTEN: {
		struct sockaddr_in a = { .sin_family = AF_INET };

		*vm = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		return *vm < 0 || bind(*vm, (struct sockaddr *)&a, sizeof(a)) || listen(*vm, 1) ? -1 : 0;
	}
	case VC_SOCK_UNCONN:
		*vm = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		return *vm < 0 ? -1 : 0;
	default:
		return -1;
	}
}

static int open_file_ep(struct run *r, int kind, int source)
{
	const struct vc_case *c = r->c;
	const char *path = source ? r->src_path : r->dst_path;
	int fd;

	if (kind == VC_DIR)
		return open(r->env->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (source) {
		fd = make_source(path, c->layout, c->src_size);
		if (fd < 0)
			return -1;
		close(fd);
		return open(path, (kind == VC_FILE_WRONLY ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
	}
	if (kind == VC_FILE_SAME)
		return open(r->src_path, O_RDWR | O_CLOEXEC);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write_pat(fd, 2, 0, c->dst_size) || fsync(fd)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	if (kind == VC_FILE_RDONLY)
		return open(path, O_RDONLY | O_CLOEXEC);
	if (kind == VC_FILE_APPEND)
		return open(path, O_RDWR | O_APPEND | O_CLOEXEC);
	return open(path, O_RDWR | O_CLOEXEC);
}

static int is_socket(int kind)
{
	return kind >= VC_SOCK && kind <= VC_SOCK_PEER_FIN;
}

/* ---- the descriptor against the environment -------------------------------------------- */

/* appends a piece, merged with the previous one when the ring would merge them */
static int push_seg(struct vpipe_segment *out, uint32_t max, uint32_t *n, uint64_t disk, uint64_t len,
		    int zero)
{
	struct vpipe_segment *last = *n ? &out[*n - 1] : NULL;

	if (last && ((zero && last->flags) ||
		     (!zero && !last->flags && last->disk_offset + last->length == disk))) {
		last->length += (uint32_t)len;
		return 0;
	}
	if (*n == max)
		return -1;
	memset(&out[*n], 0, sizeof(out[0]));
	out[*n].disk_offset = zero ? 0 : disk;
	out[*n].length = (uint32_t)len;
	out[*n].flags = zero ? VPIPE_SEG_ZERO : 0;
	(*n)++;
	return 0;
}

/* The segments [off, off + len) of fd must be on the ring, from FIEMAP: extents trimmed to the
 * range, holes and unwritten extents as ZERO segments, neighbours merged. */
static int expected_segments(int fd, uint64_t off, uint64_t len, uint64_t part, struct vpipe_segment *out,
			     uint32_t max, uint32_t *n)
{
	struct {
		struct fiemap fm;
		struct fiemap_extent ext[256];
	} q;
	uint64_t pos = off, end = off + len;

	*n = 0;
	while (pos < end) {
		uint32_t i;
		int last = 0;

		memset(&q, 0, sizeof(q));
		q.fm.fm_start = pos;
		q.fm.fm_length = end - pos;
		q.fm.fm_extent_count = 256;
		if (ioctl(fd, FS_IOC_FIEMAP, &q.fm) < 0)
			return -1;
		if (q.fm.fm_mapped_extents == 0)
			return push_seg(out, max, n, 0, end - pos, 1);   /* a hole to the end */
		for (i = 0; i < q.fm.fm_mapped_extents && pos < end; i++) {
			const struct fiemap_extent *x = &q.ext[i];
			uint64_t xs = x->fe_logical, xe = x->fe_logical + x->fe_length, e2;

			last = (x->fe_flags & FIEMAP_EXTENT_LAST) != 0;
			if (xe <= pos)
				continue;
			if (x->fe_flags & FIEMAP_EXTENT_DELALLOC)
				return -1;
			if (xs > pos) {   /* a hole before it */
				uint64_t h = (xs < end ? xs : end) - pos;

				if (push_seg(out, max, n, 0, h, 1))
					return -1;
				pos += h;
				if (pos >= end)
					break;
			}
			e2 = xe < end ? xe : end;
			if (push_seg(out, max, n, part + x->fe_physical + (pos - xs), e2 - pos,
				     (x->fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0))
				return -1;
			pos = e2;
		}
		if (last && pos < end) {
			if (push_seg(out, max, n, 0, end - pos, 1))   /* a hole to the end */
				return -1;
			pos = end;
		}
	}
	return 0;
}

static int segs_equal(const struct vpipe_segment *a, const struct vpipe_segment *b, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		if (a[i].disk_offset != b[i].disk_offset || a[i].length != b[i].length ||
		    a[i].flags != b[i].flags || a[i].reserved0 != b[i].reserved0)
			return 0;
	return 1;
}

static void check_file_ep(struct run *r, const struct vc_req *q, int source, int fd, uint64_t off)
{
	const struct vpipe_endpoint *ep = source ? &q->h.src : &q->h.dst;
	struct vpipe_segment want[512];
	uint32_t n = 0;

	if (ep->kind != VPIPE_EP_FILE || ep->vdev != r->env->vdev) {
		fail(r, "%s endpoint: kind %u vdev %u, want a file on vdev %u", source ? "source" : "destination",
		     ep->kind, ep->vdev, r->env->vdev);
		return;
	}
	if (expected_segments(fd, off, q->ring.length, r->env->part_off, want, 512, &n)) {
		fail(r, "FIEMAP of the %s failed", source ? "source" : "destination");
		return;
	}
	if (n != ep->nr_segments || !segs_equal(want, q->segs + ep->first_segment, n))
		fail(r, "%s segments: %u on the ring, FIEMAP says %u (first: %llu+%u / %llu+%u)",
		     source ? "source" : "destination", ep->nr_segments, n,
		     ep->nr_segments ? (unsigned long long)q->segs[ep->first_segment].disk_offset : 0ull,
		     ep->nr_segments ? q->segs[ep->first_segment].length : 0u,
		     n ? (unsigned long long)want[0].disk_offset : 0ull, n ? want[0].length : 0u);
}

static void check_socket_ep(struct run *r, const struct vc_req *q, int source)
{
	const struct vpipe_endpoint *ep = source ? &q->h.src : &q->h.dst;
	const struct vpipe_tcp_state *t = &ep->tcp;
	const struct vc_case *c = r->c;
	const int i = source ? 0 : 1;
	const struct sockaddr_in *l = &r->name[i], *p = &r->peer_name[i];
	uint32_t head = source ? 0 : c->head_len, tail = source ? 0 : c->tail_len, j;
	/* the unread bytes were queued at the socket source, else at the socket destination */
	const uint32_t unread = (source || !is_socket(c->src)) ? c->unread : 0;

	if (ep->kind != VPIPE_EP_SOCKET) {
		fail(r, "%s endpoint is not a socket", source ? "source" : "destination");
		return;
	}
	/* the connection the socket had before the call */
	if (t->family != VPIPE_AF_INET || memcmp(t->local_addr, &l->sin_addr, 4) ||
	    memcmp(t->remote_addr, &p->sin_addr, 4) || t->local_port != l->sin_port ||
	    t->remote_port != p->sin_port) {
		fail(r, "%s socket: the request names another connection", source ? "source" : "destination");
		return;
	}
	if (t->rcvq_len != unread || q->carry_len[i][1] != unread) {
		fail(r, "%s socket: %u unread bytes carried, the connection had %u", source ? "source" : "destination",
		     t->rcvq_len, unread);
		return;
	}
	for (j = 0; j < unread; j++)
		if (q->carry[i][1][j] != pat(7, j)) {
			fail(r, "%s socket: carried receive queue differs at byte %u", source ? "source" : "destination", j);
			return;
		}
	if (t->sndq_len < head || t->sndq_unsent < head || q->carry_len[i][0] != t->sndq_len) {
		fail(r, "%s socket: send queue %u (unsent %u) cannot hold the %u-byte head", source ? "source" : "destination",
		     t->sndq_len, t->sndq_unsent, head);
		return;
	}
	for (j = 0; j < head; j++)
		if (q->carry[i][0][t->sndq_len - head + j] != pat(5, j)) {
			fail(r, "the head is not at the end of the carried send queue (byte %u)", j);
			return;
		}
	if (ep->tail_len != tail || q->carry_len[i][2] != tail) {
		fail(r, "tail: %u carried, %u given", ep->tail_len, tail);
		return;
	}
	for (j = 0; j < tail; j++)
		if (q->carry[i][2][j] != pat(6, j)) {
			fail(r, "the tail differs at byte %u", j);
			return;
		}
	if (t->carry_offset % 8 || t->carry_offset < q->ring.desc_bytes)
		fail(r, "carry_offset %u: not 8-aligned after the stream (%u)", t->carry_offset,
		     q->ring.desc_bytes);
}

static void check_request(struct run *r, const struct vc_req *q, uint64_t stream_off)
{
	const struct vc_case *c = r->c;
	static const uint32_t kinds[5][2] = { { 0, 0 }, { 1, 1 }, { 1, 2 }, { 2, 1 }, { 2, 2 } };

	if (q->verdict) {
		fail(r, "the engine's validator refused the request: %d", q->verdict);
		return;
	}
	if (q->ring.op != c->op || q->h.magic != VPIPE_DESC_MAGIC || q->h.version != VPIPE_PROTOCOL_VERSION ||
	    q->h.src.kind != kinds[c->op][0] || q->h.dst.kind != kinds[c->op][1]) {
		fail(r, "request: op %u, endpoint kinds %u/%u", q->ring.op, q->h.src.kind, q->h.dst.kind);
		return;
	}
	if (q->h.src.kind == VPIPE_EP_FILE)
		check_file_ep(r, q, 1, r->in, c->in_off + stream_off);
	else
		check_socket_ep(r, q, 1);
	if (q->h.dst.kind == VPIPE_EP_FILE) {
		/* the destination's blocks stay where the request named them only if all of its
		 * bytes landed (a short count gives the surplus back) */
		if (c->op == F2F && (c->script.ans == VC_ANS_OK || c->script.ans == VC_ANS_BOGUS_MOVED))
			check_file_ep(r, q, 0, r->out, c->out_off + stream_off);
	} else {
		check_socket_ep(r, q, 0);
	}
}

/* ---- after the call -------------------------------------------------------------------- */

static void check_post(struct run *r, const struct vpipe_ioc_op *op)
{
	const struct vc_case *c = r->c;
	struct stat st;

	if (c->dst_size_after >= 0 && !is_socket(c->dst)) {
		if (fstat(r->out, &st) || st.st_size != c->dst_size_after)
			fail(r, "destination size %lld, want %lld", (long long)st.st_size,
			     (long long)c->dst_size_after);
	}
	if ((c->post & VC_POST_FILE_EXACT) && op->moved) {
		uint64_t i;
		uint8_t *b = malloc(op->moved);

		if (!b || pread(r->out, b, op->moved, (off_t)c->out_off) != (ssize_t)op->moved) {
			fail(r, "cannot read the destination back");
		} else {
			for (i = 0; i < op->moved; i++) {
				uint64_t s = c->in_off + i;
				int hole = c->layout == VC_SPARSE && (s % (32 * KIB)) >= 8 * KIB;
				int unwr = c->layout == VC_UNWRITTEN && s >= c->src_size / 2 &&
					   s < c->src_size / 2 + c->src_size / 4;
				uint8_t want = (hole || unwr) ? 0 : pat(1, s);

				if (b[i] != want) {
					fail(r, "destination byte %llu is %u, the source's is %u",
					     (unsigned long long)(c->out_off + i), b[i], want);
					break;
				}
			}
		}
		free(b);
		/* bytes before the destination offset are untouched */
		if (c->dst != VC_FILE_SAME && c->out_off && c->dst_size && r->dst_before) {
			uint64_t n = c->out_off < c->dst_size ? c->out_off : c->dst_size;
			uint8_t *a = malloc(n);

			if (!a || pread(r->out, a, n, 0) != (ssize_t)n || memcmp(a, r->dst_before, n))
				fail(r, "the destination's bytes before the offset changed");
			free(a);
		}
	}
	if ((c->post & VC_POST_DST_UNTOUCHED) && r->dst_before) {
		uint8_t *a = malloc(r->dst_before_len + 1);
		int fd = open(r->dst_path, O_RDONLY | O_CLOEXEC);
		ssize_t n = fd >= 0 ? pread(fd, a, r->dst_before_len + 1, 0) : -1;

		if (!a || n != (ssize_t)r->dst_before_len || memcmp(a, r->dst_before, r->dst_before_len))
			fail(r, "the destination changed (%zd bytes now, %llu before)", n,
			     (unsigned long long)r->dst_before_len);
		if (fd >= 0)
			close(fd);
		free(a);
	}
	if (c->post & VC_POST_UNREAD_BACK) {
		int vm = is_socket(c->src) && !is_socket(c->dst) ? r->in : r->out;
		uint8_t *b = malloc(c->unread);
		uint32_t i;

		if (c->op == S2S)
			vm = r->in;
		if (!b || read_all(vm, b, c->unread, 3000)) {
			fail(r, "the %u unread bytes are gone", c->unread);
		} else {
			for (i = 0; i < c->unread && !r->failed; i++)
				if (b[i] != pat(7, i))
					fail(r, "unread byte %u changed", i);
		}
		free(b);
	}
	if (c->post & VC_POST_HEAD_ONCE) {
		uint8_t b[VPIPE_HDTR_MAX + 8];
		uint32_t i;

		if (read_all(r->out_peer, b, c->head_len, 3000)) {
			fail(r, "the peer did not receive the %u-byte head", c->head_len);
		} else {
			for (i = 0; i < c->head_len; i++)
				if (b[i] != pat(5, i)) {
					fail(r, "head byte %u differs at the peer", i);
					break;
				}
		}
	}
	if (c->post & VC_POST_SOCK_USABLE) {
		if (is_socket(c->src) && r->in_peer >= 0 && talk(r->in, r->in_peer, "conformance-in"))
			fail(r, "the source connection does not carry bytes both ways");
		if (is_socket(c->dst) && r->out_peer >= 0 && talk(r->out, r->out_peer, "conformance-out"))
			fail(r, "the destination connection does not carry bytes both ways");
	}
	if (c->post & VC_POST_RESET) {
		char b;
		ssize_t s = send(r->out, "z", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		ssize_t v = recv(r->out, &b, 1, MSG_DONTWAIT);

		if (s == 1 && v != 0 && !(v < 0 && (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN)))
			fail(r, "the destination socket still works after a reset");
	}
}

int vc_run(const struct vc_env *env, const struct vc_case *c, char *why, size_t why_len)
{
	struct run r;
	struct vpipe_ioc_op op;
	const struct vc_req *reqs = NULL;
	uint8_t head[VPIPE_HDTR_MAX + 1], tail[64];
	int n = 0, ret, i;
	uint32_t want_paths;
	uint64_t off;

	memset(&r, 0, sizeof(r));
	r.env = env;
	r.c = c;
	r.why = why;
	r.why_len = why_len;
	r.in = r.out = r.in_peer = r.out_peer = -1;
	why[0] = 0;
	snprintf(r.src_path, sizeof(r.src_path), "%s/%s.src",
		 c->src == VC_FILE_OFFDISK ? env->offdisk : env->dir, c->name);
	snprintf(r.dst_path, sizeof(r.dst_path), "%s/%s.dst",
		 c->dst == VC_FILE_OFFDISK ? env->offdisk : env->dir, c->name);

	/* the endpoints */
	if (is_socket(c->src))
		ret = open_socket_ep(&r, c->src, &r.in, &r.in_peer);
	else
		ret = (r.in = open_file_ep(&r, c->src, 1)) < 0 ? -1 : 0;
	if (!ret && is_socket(c->dst))
		ret = open_socket_ep(&r, c->dst, &r.out, &r.out_peer);
	else if (!ret)
		ret = (r.out = open_file_ep(&r, c->dst, 0)) < 0 ? -1 : 0;
	if (ret) {
		fail(&r, "setting up the endpoints failed: %s", strerror(errno));
		goto out;
	}
	if (!is_socket(c->dst) && c->dst != VC_FILE_SAME && c->dst_size) {
		r.dst_before = malloc(c->dst_size);
		r.dst_before_len = c->dst_size;
		if (r.dst_before && pread(r.out, r.dst_before, c->dst_size, 0) != (ssize_t)c->dst_size)
			fail(&r, "cannot read the destination");
	}
	/* bytes the VM end has received and not read: at the source (its stream's first bytes),
	 * else at a socket destination */
	if (c->unread) {
		int vm = is_socket(c->src) ? r.in : r.out, peer = is_socket(c->src) ? r.in_peer : r.out_peer;
		uint8_t *b = malloc(c->unread);
		uint32_t j;

		if (c->op == S2S) {   /* both: the source's first, the destination's too */
			vm = r.in;
			peer = r.in_peer;
		}
		for (j = 0; b && j < c->unread; j++)
			b[j] = pat(7, j);
		if (!b || send(peer, b, c->unread, 0) != (ssize_t)c->unread || wait_queued(vm, (int)c->unread))
			fail(&r, "queueing %u unread bytes failed", c->unread);
		free(b);
	}
	if (c->src == VC_SOCK_PEER_FIN && shutdown(r.in_peer, SHUT_WR))
		fail(&r, "shutdown");
	if (c->dst == VC_SOCK_PEER_FIN && shutdown(r.out_peer, SHUT_WR))
		fail(&r, "shutdown");
	if ((c->src == VC_SOCK_PEER_FIN && wait_close_wait(r.in)) ||
	    (c->dst == VC_SOCK_PEER_FIN && wait_close_wait(r.out)))
		fail(&r, "the peer's FIN did not arrive");
	for (i = 0; i < (int)sizeof(head); i++)
		head[i] = pat(5, (uint64_t)i);
	for (i = 0; i < (int)sizeof(tail); i++)
		tail[i] = pat(6, (uint64_t)i);
	for (i = 0; i < 2; i++) {
		int fd = i ? r.out : r.in;
		socklen_t l1 = sizeof(r.name[i]), l2 = sizeof(r.peer_name[i]);

		if (is_socket(i ? c->dst : c->src)) {
			getsockname(fd, (struct sockaddr *)&r.name[i], &l1);
			getpeername(fd, (struct sockaddr *)&r.peer_name[i], &l2);
		}
	}
	if (r.failed)
		goto out;

	/* the call, behind the engine's script */
	if (env->script(env->ctx, &c->script)) {
		fail(&r, "the engine cannot be scripted");
		goto out;
	}
	memset(&op, 0, sizeof(op));
	op.op = c->op;
	op.in_offset = c->in_off;
	op.out_offset = c->out_off;
	op.length = c->length;
	op.flags = c->flags;
	op.head_len = c->head_len;
	op.tail_len = c->tail_len;
	ret = env->call(env->ctx, &op, r.in, r.out, head, tail);
	if (env->requests(env->ctx, &reqs, &n))
		n = -1;

	/* what the caller sees */
	want_paths = c->paths & ~ALLOC;
	if (ret != -c->err)
		fail(&r, "returned %d (%s), want %d (%s)", ret, strerror(-ret), -c->err, strerror(c->err));
	else if (c->moved != VC_ANY && op.moved != c->moved)
		fail(&r, "moved %llu, want %llu", (unsigned long long)op.moved, (unsigned long long)c->moved);
	else if ((op.paths & ~(VPIPE_PATH_ZERO_FILL | VPIPE_PATH_WRITE_ZEROES)) != want_paths ||
		 (!(c->paths & ALLOC) != !(op.paths & (VPIPE_PATH_ZERO_FILL | VPIPE_PATH_WRITE_ZEROES))))
		fail(&r, "paths %#x, want %#x%s", op.paths, want_paths,
		     (c->paths & ALLOC) ? " + block allocation" : "");
	else if (n != c->requests)
		fail(&r, "the engine received %d request(s), want %d", n, c->requests);
	else if (op.guest_copied != c->guest)
		fail(&r, "guest copied %llu, want %llu", (unsigned long long)op.guest_copied,
		     (unsigned long long)c->guest);
	else if (op.hdtr_moved != c->hdtr)
		fail(&r, "head+tail written %llu, want %llu", (unsigned long long)op.hdtr_moved,
		     (unsigned long long)c->hdtr);
	/* what the engine was told */
	for (i = 0, off = 0; i < n && !r.failed; i++) {
		check_request(&r, &reqs[i], off);
		off += reqs[i].ring.length;
	}
	if (!r.failed)
		check_post(&r, &op);
out:
	if (r.in >= 0)
		close(r.in);
	if (r.out >= 0)
		close(r.out);
	if (r.in_peer >= 0)
		close(r.in_peer);
	if (r.out_peer >= 0)
		close(r.out_peer);
	free(r.dst_before);
	unlink(r.src_path);
	unlink(r.dst_path);
	return r.failed ? -1 : 0;
}

const char *vc_describe(const struct vc_case *c)
{
	static char buf[256];
	static const char *ops[] = { "?", "file->file", "file->socket", "socket->file", "socket->socket" };

	snprintf(buf, sizeof(buf), "%s: %s len %llu -> %s", c->name, ops[c->op <= 4 ? c->op : 0],
		 (unsigned long long)c->length, c->err ? strerror(c->err) : "ok");
	return buf;
}
