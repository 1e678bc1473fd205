#!/usr/bin/env bash
# The whole test suite: unit tests, then the lab integration tests (namespaces, loop-mounted
# ext4, the engine and agents for real). Root on a Debian 12 host; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
# the patched lighttpd of patches/lighttpd (tests/lab/lighttpd): Debian's source, patched, built
# against build/lib/libvpipe.so; a no-op when it is up to date
patches/lighttpd/build.sh --build-dir build
# Lab tests share /run/vpipe-lab, so they hold the "lab" resource lock; unit tests run in parallel.
rc=0
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 1800 -LE xen "$@" || rc=$?
# The Xen suite (label "xen", real Xen under QEMU, a few minutes) runs last, on its own.
ctest --test-dir build --output-on-failure --timeout 1800 -L xen "$@" || rc=$?
exit $rc
