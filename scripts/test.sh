#!/usr/bin/env bash
# The whole test suite: unit tests, then the lab integration tests (namespaces, loop-mounted
# ext4, the engine and agents for real). Root on a Debian 12 host; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
# the patched lighttpd of patches/lighttpd (tests/lab/lighttpd): Debian's source, patched, built
# against build/lib/libvpipe.so; a no-op when it is up to date
patches/lighttpd/build.sh --build-dir build
# the patched Pound of patches/pound (tests/lab/pound): Debian trixie's pound 4.16-3, SHA-256
# checked, patched, built against build/lib/libvpipe.so; a no-op when it is up to date. A failed
# fetch (no archive, no network) is reported and the Pound tests skip, saying so. When the
# archive fetch fails (build.sh's status 3: Debian's pool drops a version once a newer one
# replaces it) and the upstream mirror of github.com/graygnuorg/pound exists on this machine,
# its tag v4.16 is built instead (--git checks the tag's commit; Debian's patches are not applied).
pound_git=/work/.mirror/graygnuorg+pound/repo
pound_rc=0
patches/pound/build.sh --build-dir build || pound_rc=$?
if [ "$pound_rc" = 3 ] && [ -d "$pound_git" ]; then
  echo "test.sh: no Debian archive of Pound: building upstream's v4.16 from $pound_git" >&2
  pound_rc=0
  patches/pound/build.sh --build-dir build --git "$pound_git" || pound_rc=$?
fi
[ "$pound_rc" = 0 ] || echo "test.sh: patches/pound/build.sh failed: the Pound lab tests will skip" >&2
# Lab tests share /run/vpipe-lab, so they hold the "lab" resource lock; unit tests run in parallel.
rc=0
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 1800 -LE xen "$@" || rc=$?
# Sanitizers (~5 min on 2 cores; SKIP_SANITIZERS=1 skips them). The unit tests under ASan +
# UBSan in build-san (only what `ctest -L unit` runs is built); any report fails the test. The
# preload tests LD_PRELOAD libvpipe-preload.so, which puts the sanitizer runtime after it in the
# library list: verify_asan_link_order=0 lets them run (the preload is instrumented too).
if [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
  cmake -S . -B build-san -G Ninja -DVPIPE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-san -j"$(nproc)" --target unit_tests
  ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-san --output-on-failure -j"$(nproc)" --timeout 600 -L unit || rc=$?
  # The libFuzzer targets (clang, build-fuzz), 20 s each over their seed corpora: a crash,
  # sanitizer report, leak or timeout fails the test (the input is kept in build-fuzz/fuzz-work).
  bench/fuzz.sh --time 20 --out - || rc=$?
fi
# The Xen suite (label "xen", real Xen under QEMU, a few minutes) runs last, on its own.
ctest --test-dir build --output-on-failure --timeout 1800 -L xen "$@" || rc=$?
exit $rc
