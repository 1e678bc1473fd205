/* tests/xen/tlscheck.c -- the Xen suite's stress probe, run in a loop by PV domUs that share one
 * physical CPU (domU role `stress`). A short-lived process that checks that its user register
 * state survives being descheduled by Xen and by the guest kernel:
 *   - the FS base: arch_prctl(ARCH_GET_FS) at start and end, the TCB's self pointer read through
 *     %fs:0 and, when the guest kernel enabled FSGSBASE, RDFSBASE/RDGSBASE, checked while it runs;
 *   - a %fs-relative TLS variable driven by an LCG and mirrored in a register;
 *   - %xmm15 (and %ymm15 when AVX is usable) held across a spin loop (FPU/XSAVE state).
 * Static (glibc), so that every start sets up TLS itself. Exit 0 if all held, 1 with a line on
 * stderr otherwise (a lost FS base usually kills it first: a SIGSEGV at a small address).
 *
 * usage: tlscheck [ROUNDS]     (default 16; each round ~4096 TLS steps and a register spin)
 *        tlscheck --info       prints "fsgsbase=0|1 avx=0|1" as the guest sees them */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef HWCAP2_FSGSBASE
#define HWCAP2_FSGSBASE (1 << 1)
#endif

static __thread volatile uint64_t tls_word = 0x5eed;  /* .tdata: copied from the TLS image */
static __thread volatile uint64_t tls_zero[8];        /* .tbss: must start zeroed */

static uint64_t arch_get(int code) {
  unsigned long v = 0;
  if (syscall(SYS_arch_prctl, code, &v) != 0) return ~0ull;
  return v;
}
static uint64_t fs_self(void) {
  uint64_t v;
  __asm__ volatile("mov %%fs:0, %0" : "=r"(v));
  return v;
}
static uint64_t rd_fsbase(void) {
  uint64_t v;
  __asm__ volatile("rdfsbase %0" : "=r"(v));
  return v;
}
static uint64_t rd_gsbase(void) {
  uint64_t v;
  __asm__ volatile("rdgsbase %0" : "=r"(v));
  return v;
}
static int have_avx(void) {  /* CPUID.AVX and the OS saves YMM state (XCR0 bits 1 and 2) */
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_AVX) || !(c & bit_OSXSAVE)) return 0;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6) == 6;
}
/* loads PAT into %xmm15 (or both halves of %ymm15), spins N times, returns what is there after */
static uint64_t hold_xmm(uint64_t pat, uint64_t n) {
  uint64_t out;
  __asm__ volatile("movq %[p], %%xmm15\n\t"
                   "1: dec %[n]\n\t"
                   "jnz 1b\n\t"
                   "movq %%xmm15, %[o]"
                   : [o] "=r"(out), [n] "+r"(n)
                   : [p] "r"(pat)
                   : "xmm15", "cc");
  return out;
}
static uint64_t hold_ymm_high(uint64_t pat, uint64_t n) {
  uint64_t out;
  __asm__ volatile("movq %[p], %%xmm15\n\t"
                   "vinserti128 $1, %%xmm15, %%ymm15, %%ymm15\n\t"
                   "1: dec %[n]\n\t"
                   "jnz 1b\n\t"
                   "vextracti128 $1, %%ymm15, %%xmm15\n\t"
                   "movq %%xmm15, %[o]\n\t"
                   "vzeroupper"
                   : [o] "=r"(out), [n] "+r"(n)
                   : [p] "r"(pat)
                   : "xmm15", "cc");
  return out;
}

static int fail(const char *what, uint64_t got, uint64_t want, unsigned long round) {
  fprintf(stderr, "tlscheck[%d]: %s is %#llx, want %#llx (round %lu)\n", (int)getpid(), what,
          (unsigned long long)got, (unsigned long long)want, round);
  return 1;
}

int main(int argc, char **argv) {
  int fsgs = (getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE) != 0;
  /* vinserti128 is AVX2; without it the YMM check is skipped */
  unsigned a, b, c, d;
  int avx2 = have_avx() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX2);
  if (argc > 1 && strcmp(argv[1], "--info") == 0) {
    printf("fsgsbase=%d avx2=%d\n", fsgs, avx2);
    return 0;
  }
  unsigned long rounds = argc > 1 ? strtoul(argv[1], NULL, 0) : 16;

  uint64_t base = arch_get(ARCH_GET_FS);
  if (base == 0 || base == ~0ull) return fail("FS base at start", base, 1, 0);
  if (fs_self() != base) return fail("%fs:0 (TCB self) at start", fs_self(), base, 0);
  uint64_t tls_addr = (uint64_t)(uintptr_t)&tls_word;
  if (tls_addr >= base || base - tls_addr > 65536) return fail("&tls_word", tls_addr, base, 0);
  if (tls_word != 0x5eed) return fail("initial tls_word", tls_word, 0x5eed, 0);
  for (int i = 0; i < 8; i++)
    if (tls_zero[i] != 0) return fail("initial tls_zero", tls_zero[i], 0, 0);

  uint64_t pat = 0x9e3779b97f4a7c15ull * (uint64_t)(getpid() + 1);
  uint64_t mirror = pat;
  tls_word = pat;
  for (unsigned long r = 0; r < rounds; r++) {
    for (int i = 0; i < 4096; i++) {
      uint64_t v = tls_word * 6364136223846793005ull + 1442695040888963407ull;
      tls_word = v;
      mirror = mirror * 6364136223846793005ull + 1442695040888963407ull;
      if (tls_word != mirror) return fail("tls_word", tls_word, mirror, r);
    }
    if (fs_self() != base) return fail("%fs:0 (TCB self)", fs_self(), base, r);
    if (fsgs && rd_fsbase() != base) return fail("RDFSBASE", rd_fsbase(), base, r);
    if (fsgs && rd_gsbase() != 0) return fail("RDGSBASE", rd_gsbase(), 0, r);
    uint64_t x = hold_xmm(mirror ^ r, 20000);
    if (x != (mirror ^ r)) return fail("%xmm15 after a spin", x, mirror ^ r, r);
    if (avx2) {
      x = hold_ymm_high(~mirror, 20000);
      if (x != ~mirror) return fail("%ymm15[255:128] after a spin", x, ~mirror, r);
    }
  }
  uint64_t end = arch_get(ARCH_GET_FS);
  if (end != base) return fail("FS base at the end", end, base, rounds);
  uint64_t gs = arch_get(ARCH_GET_GS);
  if (gs != 0) return fail("GS base at the end", gs, 0, rounds);
  return 0;
}
