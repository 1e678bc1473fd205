#!/usr/bin/env bash
# The whole test suite: unit tests, then the lab integration tests (namespaces, loop-mounted
# ext4, the engine and agents for real). Root on a Debian 12 host; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
# Lab tests share /run/vpipe-lab, so they hold the "lab" resource lock; unit tests run in parallel.
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 1800 "$@"
